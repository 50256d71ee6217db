"""fastdl.data: datasets, DataLoader coverage and reproducibility (with and without workers),
transforms, tokenizers and the bundled data."""
import numpy as np
import pytest

import fastdl
from fastdl import data
from fastdl.data import (ConcatDataset, DataLoader, Dataset, SequenceDataset, Subset, TensorDataset,
                         random_split, transforms)


def _ids(loader, column=1):
    return [np.asarray(b[column].numpy()).tolist() for b in loader]


class PerSample(Dataset):
    """A dataset with no get_batch: the loader calls __getitem__ once per sample."""

    def __init__(self, n, transform=None):
        self.x = np.arange(n * 4, dtype=np.float32).reshape(n, 1, 2, 2)
        self.transform = transform

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i] if self.transform is None else self.transform(self.x[i])
        return x, i


# ---- datasets ------------------------------------------------------------------------------------

def test_tensor_dataset_samples_and_batches():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    ds = TensorDataset(x, np.arange(6))
    assert len(ds) == 6
    xi, yi = ds[-1]
    assert xi.tolist() == [10.0, 11.0] and yi == 5
    xb, yb = ds.get_batch(np.array([3, 0]))
    assert xb.tolist() == [[6, 7], [0, 1]] and yb.tolist() == [3, 0]


def test_tensor_dataset_accepts_tensors():
    ds = TensorDataset(fastdl.from_numpy(np.ones((3, 2), np.float32)))
    assert ds[0][0].shape == (2,)


@pytest.mark.parametrize("arrays,words", [
    ((np.zeros(3), np.zeros(4)), "differ in length"),
    ((np.float32(1.0),), "scalar"),
    ((), "at least one"),
])
def test_tensor_dataset_bad_inputs(arrays, words):
    with pytest.raises(ValueError, match=words):
        TensorDataset(*arrays)


def test_index_errors():
    ds = TensorDataset(np.zeros(3))
    with pytest.raises(IndexError, match="out of range"):
        ds[3]
    with pytest.raises(TypeError, match="integer"):
        ds[1.5]
    with pytest.raises(IndexError, match="out of range"):
        Subset(ds, [0, 3])


def test_subset_and_concat():
    a, b = TensorDataset(np.arange(3)), TensorDataset(np.arange(10, 14))
    c = a + b
    assert isinstance(c, ConcatDataset) and len(c) == 7
    assert [int(c[i][0]) for i in range(7)] == [0, 1, 2, 10, 11, 12, 13]
    s = Subset(c, [6, 0, 3])
    assert [int(s[i][0]) for i in range(3)] == [13, 0, 10]
    assert not hasattr(s, "get_batch")  # ConcatDataset has none to forward
    s2 = Subset(b, [2, 1])
    assert s2.get_batch(np.array([1, 0]))[0].tolist() == [11, 12]


@pytest.mark.parametrize("lengths,sizes", [([7, 3], [7, 3]), ([0.7, 0.3], [7, 3]), ([0.5, 0.25, 0.25], [6, 2, 2]),
                                           ([1 / 3] * 3, [4, 3, 3]), ([10, 0], [10, 0])])
def test_random_split(lengths, sizes):
    ds = TensorDataset(np.arange(10))
    parts = random_split(ds, lengths, seed=3)
    assert [len(p) for p in parts] == sizes
    assert sorted(np.concatenate([p.indices for p in parts]).tolist()) == list(range(10))
    again = random_split(ds, lengths, generator=np.random.default_rng(3))
    assert all(np.array_equal(p.indices, q.indices) for p, q in zip(parts, again))


@pytest.mark.parametrize("lengths", [[5, 4], [11, -1], [0.5, 0.6], [2.5, 7.5]])
def test_random_split_bad_lengths(lengths):
    with pytest.raises(ValueError, match="random_split"):
        random_split(TensorDataset(np.arange(10)), lengths, seed=0)


def test_random_split_uses_global_generator():
    ds = TensorDataset(np.arange(50))
    fastdl.manual_seed(5)
    a = random_split(ds, [25, 25])[0].indices
    fastdl.manual_seed(5)
    b = random_split(ds, [25, 25])[0].indices
    assert np.array_equal(a, b)


# ---- DataLoader ----------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 7, 64])
@pytest.mark.parametrize("batch_size", [1, 3, 7, 64, 65])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_loader_covers_every_sample_once(n, batch_size, shuffle, drop_last):
    ds = TensorDataset(np.arange(n, dtype=np.float32), np.arange(n))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, seed=0)
    for _ in range(2):
        batches = _ids(loader)
        assert len(batches) == len(loader)
        assert all(len(b) == batch_size for b in batches[:-1] if b)
        seen = [i for b in batches for i in b]
        if drop_last:
            assert len(seen) == (n // batch_size) * batch_size and len(set(seen)) == len(seen)
            assert all(len(b) == batch_size for b in batches)
        else:
            assert sorted(seen) == list(range(n))
        if not shuffle:
            assert seen == sorted(seen)


def test_loader_batches_are_tensors_with_dtypes():
    ds = TensorDataset(np.zeros((5, 3), np.float32), np.arange(5))
    xb, yb = next(iter(DataLoader(ds, batch_size=2)))
    assert isinstance(xb, fastdl.Tensor) and isinstance(yb, fastdl.Tensor)
    assert xb.dtype == fastdl.float32 and yb.dtype == fastdl.int64 and tuple(xb.shape) == (2, 3)


def test_loader_same_seed_same_batches_and_epochs_differ():
    ds = TensorDataset(np.arange(100), np.arange(100))
    a = DataLoader(ds, batch_size=8, shuffle=True, seed=11)
    b = DataLoader(ds, batch_size=8, shuffle=True, seed=11)
    ea1, ea2 = _ids(a), _ids(a)
    assert ea1 == _ids(b) and ea2 == _ids(b)
    assert ea1 != ea2
    assert _ids(DataLoader(ds, batch_size=8, shuffle=True, seed=12)) != ea1


def test_loader_global_seed():
    ds = TensorDataset(np.arange(40), np.arange(40))
    fastdl.manual_seed(7)
    first = _ids(DataLoader(ds, batch_size=8, shuffle=True))
    fastdl.manual_seed(7)
    assert _ids(DataLoader(ds, batch_size=8, shuffle=True)) == first


def test_loader_draws_epoch_order_at_iter():
    ds = TensorDataset(np.arange(30), np.arange(30))
    loader = DataLoader(ds, batch_size=5, shuffle=True, seed=1)
    first, second = iter(loader), iter(loader)
    second = [b[1].tolist() for b in second]
    first = [b[1].tolist() for b in first]
    reference = DataLoader(ds, batch_size=5, shuffle=True, seed=1)
    assert [first, second] == [_ids(reference), _ids(reference)]


def test_loader_state_dict_resumes_the_permutations():
    ds = TensorDataset(np.arange(50), np.arange(50))
    loader = DataLoader(ds, batch_size=10, shuffle=True, seed=4)
    _ids(loader)
    state = loader.state_dict()
    expected = [_ids(loader), _ids(loader)]
    resumed = DataLoader(ds, batch_size=10, shuffle=True, seed=999)
    resumed.load_state_dict(state)
    assert [_ids(resumed), _ids(resumed)] == expected
    with pytest.raises(ValueError, match="no generator"):
        DataLoader(ds).load_state_dict(state)


def test_per_sample_path_matches_batch_path():
    aug = transforms.Compose([transforms.RandomCrop(2, padding=1), transforms.GaussianNoise(0.1)])
    per = PerSample(13, transform=aug)
    fast = TensorDataset(per.x, np.arange(13), transform=aug)
    for a, b in zip(DataLoader(per, batch_size=4, shuffle=True, seed=2),
                    DataLoader(fast, batch_size=4, shuffle=True, seed=2)):
        assert a[1].tolist() == b[1].tolist()
        assert a[0].shape == b[0].shape


@pytest.mark.parametrize("num_workers", [1, 2, 3])
def test_workers_give_the_same_batches_as_the_main_process(num_workers):
    aug = transforms.Compose([transforms.RandomCrop(2, padding=1), transforms.RandomHorizontalFlip(),
                              transforms.GaussianNoise(0.5)])
    for ds in (TensorDataset(PerSample(11).x, np.arange(11), transform=aug), PerSample(11, transform=aug)):
        here = DataLoader(ds, batch_size=3, shuffle=True, seed=8)
        there = DataLoader(ds, batch_size=3, shuffle=True, seed=8, num_workers=num_workers)
        for _ in range(2):
            for (xa, ya), (xb, yb) in zip(here, there, strict=True):
                assert ya.tolist() == yb.tolist()
                np.testing.assert_array_equal(xa.numpy(), xb.numpy())


def _worker_report(samples):
    info = data.get_worker_info()
    return (info.id, info.num_workers, info.seed, float(np.random.rand()), float(data.rng().random()),
            [s[1] for s in samples])


def test_workers_are_seeded_distinctly_and_reproducibly():
    ds = PerSample(12)
    runs = [list(DataLoader(ds, batch_size=2, shuffle=True, seed=5, num_workers=3, collate_fn=_worker_report))
            for _ in range(2)]
    assert runs[0] == runs[1]
    batches = runs[0]
    assert [b[0] for b in batches] == [0, 1, 2, 0, 1, 2]
    assert all(b[1] == 3 for b in batches)
    seeds = {b[0]: b[2] for b in batches}
    assert len(set(seeds.values())) == 3
    # NumPy's legacy global generator is seeded per worker too: no two workers draw the same numbers.
    assert len({b[3] for b in batches}) == 6
    assert len({b[4] for b in batches}) == 6
    assert sorted(i for b in batches for i in b[5]) == list(range(12))
    assert data.get_worker_info() is None


class Failing(PerSample):
    def __getitem__(self, i):
        if i == 5:
            raise KeyError("sample five is broken")
        return super().__getitem__(i)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_errors_are_raised_in_the_main_process(num_workers):
    loader = DataLoader(Failing(8), batch_size=2, num_workers=num_workers)
    with pytest.raises((KeyError, RuntimeError), match="sample five is broken"):
        list(loader)


def test_worker_init_fn_failure_is_reported():
    def bad_init(worker_id):
        raise OSError(f"cannot init {worker_id}")

    with pytest.raises(RuntimeError, match="cannot init"):
        list(DataLoader(PerSample(4), batch_size=2, num_workers=2, worker_init_fn=bad_init))


def test_breaking_out_of_a_worker_loop_stops_the_workers():
    loader = DataLoader(PerSample(40), batch_size=2, num_workers=2)
    for _ in zip(range(2), loader):
        pass
    assert _ids(loader) == [[2 * i, 2 * i + 1] for i in range(20)]


@pytest.mark.parametrize("kwargs,error,words", [
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"batch_size": 2.5}, ValueError, "batch_size"),
    ({"num_workers": -1}, ValueError, "num_workers"),
    ({"seed": 1, "generator": np.random.default_rng(1)}, ValueError, "either"),
    ({"generator": 3}, TypeError, "Generator"),
])
def test_loader_bad_arguments(kwargs, error, words):
    with pytest.raises(error, match=words):
        DataLoader(TensorDataset(np.zeros(4)), **kwargs)


def test_collate_structures():
    batch = data.collate_arrays([{"x": np.zeros(2), "n": 1, "s": "a"}, {"x": np.ones(2), "n": 2, "s": "b"}])
    assert batch["x"].shape == (2, 2) and batch["n"].dtype == np.int64 and batch["s"] == ["a", "b"]
    x, f = data.collate_arrays([(np.zeros(1), 0.5), (np.zeros(1), 1.5)])
    assert f.dtype == np.float32
    with pytest.raises(ValueError, match="different shapes"):
        data.collate_arrays([np.zeros(2), np.zeros(3)])
    with pytest.raises(ValueError, match="different lengths"):
        data.collate_arrays([(1, 2), (1,)])
    xb = DataLoader(PerSample(3), batch_size=3, collate_fn=data.default_collate)
    assert isinstance(next(iter(xb))[0], fastdl.Tensor)


# ---- transforms ----------------------------------------------------------------------------------

def test_normalize():
    x = np.stack([np.full((2, 2), 3.0), np.full((2, 2), 5.0)]).astype(np.float32)
    out = transforms.Normalize([1.0, 1.0], [2.0, 4.0])(x)
    assert out.dtype == np.float32 and out[0, 0, 0] == 1.0 and out[1, 0, 0] == 1.0
    assert transforms.Normalize(1.0, 2.0)(np.array([3], np.int64)).dtype == np.float32
    with pytest.raises(ValueError, match="channel"):
        transforms.Normalize([0.0, 0.0, 0.0], [1.0, 1.0, 1.0]).batch(np.zeros((1, 2, 3, 3)))
    with pytest.raises(ValueError, match="positive"):
        transforms.Normalize(0.0, 0.0)


def test_random_crop_is_a_window_of_the_padded_image():
    x = np.arange(2 * 25, dtype=np.float32).reshape(2, 1, 5, 5)
    fastdl.manual_seed(0)
    out = transforms.RandomCrop(5, padding=2).batch(x)
    assert out.shape == x.shape
    for sample, crop in zip(x, out):
        padded = np.pad(sample, [(0, 0), (2, 2), (2, 2)])
        assert any(np.array_equal(padded[:, t:t + 5, l:l + 5], crop) for t in range(5) for l in range(5))
    assert transforms.RandomCrop((2, 3))(x[0]).shape == (1, 2, 3)
    with pytest.raises(ValueError, match="larger"):
        transforms.RandomCrop(7).batch(x)
    with pytest.raises(ValueError, match="padding"):
        transforms.RandomCrop(3, padding=-1)


def test_flip_and_noise():
    x = np.arange(6, dtype=np.float32).reshape(2, 1, 3)
    assert np.array_equal(transforms.RandomHorizontalFlip(1.0).batch(x), x[..., ::-1])
    assert np.array_equal(transforms.RandomHorizontalFlip(0.0).batch(x), x)
    fastdl.manual_seed(0)
    flipped = transforms.RandomHorizontalFlip(0.5).batch(np.tile(x[:1], (400, 1, 1)))
    share = float((flipped[:, 0, 0] == 2).mean())
    assert 0.4 < share < 0.6
    noisy = transforms.GaussianNoise(0.5).batch(np.zeros((200, 50), np.float32))
    assert noisy.dtype == np.float32 and abs(noisy.std() - 0.5) < 0.02 and abs(noisy.mean()) < 0.02
    clipped = transforms.GaussianNoise(1.0, clip=(0.0, 1.0)).batch(np.zeros((10, 10), np.float32))
    assert clipped.min() >= 0 and clipped.max() <= 1
    with pytest.raises(ValueError, match="std"):
        transforms.GaussianNoise(-1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        transforms.RandomHorizontalFlip(2.0)


# ---- text ----------------------------------------------------------------------------------------

def test_char_tokenizer_round_trip_and_errors():
    tok = data.CharTokenizer("abc\nxyz é")
    text = "zyx\n é cab"
    ids = tok.encode(text)
    assert ids.dtype == np.int64 and ids.max() < tok.vocab_size
    assert tok.decode(ids) == text
    assert tok.decode(fastdl.from_numpy(ids)) == text
    assert tok.encode("").size == 0
    with pytest.raises(ValueError, match="'q' is not in the vocabulary"):
        tok.encode("abq")
    with pytest.raises(ValueError, match="ids must be in"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="non-empty"):
        data.CharTokenizer("")


def test_words():
    ids, vocab, counts = data.words("The cat, the CAT and a_1 dog 42", min_count=2)
    assert vocab == ["cat", "the"] and counts.tolist() == [2, 2] and ids.tolist() == [1, 0, 1, 0]
    ids, vocab, _ = data.words("x y_2 x", lower=False)
    assert [vocab[i] for i in ids] == ["x", "y_2", "x"]


def test_sequence_dataset():
    ds = SequenceDataset(np.arange(10), seq_len=4, stride=2)
    assert len(ds) == 3
    x, y = ds[2]
    assert x.tolist() == [4, 5, 6, 7] and y.tolist() == [5, 6, 7, 8]
    xb, yb = next(iter(DataLoader(ds, batch_size=3)))
    assert tuple(xb.shape) == (3, 4) and np.array_equal(xb.numpy()[:, 1:], yb.numpy()[:, :-1])
    with pytest.raises(ValueError, match="too few"):
        SequenceDataset(np.arange(3), seq_len=3)
    with pytest.raises(ValueError, match="1-D"):
        SequenceDataset(np.zeros((2, 5)), seq_len=2)
    with pytest.raises(IndexError):
        ds[3]


@pytest.mark.parametrize("model", ["bpe", "wordpiece"])
def test_subword_tokenizer(model):
    pytest.importorskip("tokenizers", reason="the subword tokenizer needs the optional 'tokenizers' library")
    corpus = data.char_corpus(max_chars=60_000).text
    tok = data.SubwordTokenizer.train(corpus, vocab_size=300, model=model)
    assert tok.vocab_size <= 300
    ids = tok.encode("def function(self, value):\n    return value")
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < tok.vocab_size
    # Frequent words are one token, rare ones several; decoding restores the text up to spacing.
    assert len(tok.tokens("return")) == 1 and len(tok.tokens("xylophone")) > 1
    assert "".join(tok.decode(ids).split()) == "deffunction(self,value):returnvalue"
    # ids index an embedding table of vocab_size rows: text -> ids -> vectors.
    table = np.random.default_rng(0).standard_normal((tok.vocab_size, 8))
    assert table[ids].shape == (ids.size, 8)
    with pytest.raises(ValueError, match="bpe"):
        data.SubwordTokenizer.train(corpus, model="unigram")


# ---- bundled data --------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [8, 28])
def test_digits(size):
    s = data.digits(size=size)
    train, val, test = s
    assert (len(train), len(val), len(test)) == (1258, 270, 269)
    x, y = train.arrays
    assert x.dtype == np.float32 and x.shape[1:] == (1, size, size) and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9
    all_y = np.concatenate([train.arrays[1], val.arrays[1], test.arrays[1]])
    assert np.bincount(all_y).tolist() == np.bincount(np.concatenate([d.arrays[1] for d in data.digits()])).tolist()
    for part in (val, test):
        counts = np.bincount(part.arrays[1], minlength=10)
        assert counts.min() >= 25  # stratified: every class in every split
    again = data.digits(size=size)
    assert np.array_equal(again.val.arrays[0], val.arrays[0])
    if size == 28:
        assert np.all(x[:, :, :4] == 0) and np.all(x[:, :, 24:] == 0)  # MNIST-like 4-pixel frame


def test_digits_options():
    s = data.digits(val_fraction=0.2, test_fraction=0.0, flatten=True, seed=1)
    assert s.test is None and len(list(s)) == 2 and s.train.arrays[0].shape[1] == 64
    assert len(s.val) == 359  # 20% of each class, rounded per class
    aug = transforms.GaussianNoise(0.1)
    s = data.digits(transform=aug)
    assert s.train.transform is aug and s.val.transform is None
    with pytest.raises(ValueError, match="size"):
        data.digits(size=16)
    with pytest.raises(ValueError, match="fraction"):
        data.digits(val_fraction=0.5, test_fraction=0.5)


def test_char_corpus_is_deterministic():
    a, b = data.char_corpus(), data.char_corpus()
    assert a.sha256 == b.sha256 and a.text == b.text
    assert len(a.text) > 300_000
    assert set(a.text) <= set(chr(c) for c in range(32, 127)) | {"\n"}
    assert a.train.size + a.val.size == len(a.text)
    assert abs(a.val.size / len(a.text) - 0.1) < 1e-3
    assert a.tokenizer.decode(a.val[:50]) == a.text[a.train.size:a.train.size + 50]
    assert a.text.startswith("# " + data.CORPUS_FILES[0])
    small = data.char_corpus(val_fraction=0.5, max_chars=1000)
    assert len(small.text) == 1000 and small.val.size == 500
    with pytest.raises(ValueError, match="val_fraction"):
        data.char_corpus(val_fraction=1.0)


def test_karate_club():
    g = data.karate_club()
    a = g.adjacency()
    assert a.shape == (34, 34) and np.array_equal(a, a.T) and a.trace() == 34
    assert (a.sum() - 34) / 2 == 78
    assert g.labels[0] == 0 and g.labels[33] == 1 and g.labels.sum() == 17
    nx = pytest.importorskip("networkx", reason="networkx cross-checks the karate club graph")
    ref = nx.karate_club_graph()
    assert {tuple(sorted(e)) for e in ref.edges()} == {tuple(sorted(e)) for e in g.edges.tolist()}
    assert [0 if ref.nodes[i]["club"] == "Mr. Hi" else 1 for i in range(34)] == g.labels.tolist()


def test_loader_with_a_sampler():
    ds = TensorDataset(np.arange(10, dtype=np.float32), np.arange(10))
    parts = []
    for rank in range(3):
        sampler = data.DistributedSampler(ds, num_replicas=3, rank=rank, shuffle=True, seed=1)
        sampler.set_epoch(2)
        loader = DataLoader(ds, batch_size=3, sampler=sampler)
        assert len(loader) == 2
        parts.append([i for b in _ids(loader) for i in b])
    assert [len(p) for p in parts] == [4, 4, 4]
    assert sorted(set(i for p in parts for i in p)) == list(range(10))  # two padded repeats
    assert _ids(DataLoader(ds, batch_size=4, sampler=[9, 0, 5])) == [[9, 0, 5]]
    with pytest.raises(ValueError, match="exclude each other"):
        DataLoader(ds, sampler=[0, 1], shuffle=True)
