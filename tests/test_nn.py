"""nn: every layer against PyTorch with copied weights (values and gradients of input and
parameters, train and eval mode, running statistics), float64 finite-difference checks of the
layer ops, Module mechanics (registration, state dicts with PyTorch's keys, repr, dtype moves,
hooks, containers), initialisers, gradient utilities, and the layer error messages."""
from collections import OrderedDict

import numpy as np
import pytest

import fastdl
from fastdl import nn
from fastdl.autograd import gradcheck

from .helpers import assert_close, needs_torch, torch


pytestmark = pytest.mark.usefixtures("torch_one_thread")

F = fastdl.functional
DTYPES = [np.float32, np.float64]

# (layer name, constructor arguments, input shapes, reduction length for the tolerance)
LAYERS = [
    ("Linear", (5, 3), [(4, 5)], 5),
    ("Linear", (5, 3), [(2, 3, 5)], 5),
    ("Linear", (5, 3), [(5,)], 5),
    ("Linear", dict(in_features=7, out_features=1, bias=False), [(6, 7)], 7),
    ("Bilinear", (3, 4, 2), [(5, 3), (5, 4)], 12),
    ("Bilinear", dict(in1_features=2, in2_features=3, out_features=4, bias=False), [(2, 6, 2), (2, 6, 3)], 6),
    ("Flatten", (), [(2, 3, 4, 5)], 1),
    ("Flatten", (0, 2), [(2, 3, 4, 5)], 1),
    ("Unflatten", (1, (3, 4)), [(2, 12)], 1),
    ("Dropout", (0.3,), [(4, 6)], 1),
    ("Dropout2d", (0.3,), [(2, 3, 4, 4)], 1),
    ("BatchNorm1d", (4,), [(8, 4)], 8),
    ("BatchNorm1d", (4,), [(6, 4, 5)], 30),
    ("BatchNorm1d", dict(num_features=3, momentum=None), [(5, 3)], 5),
    ("BatchNorm1d", dict(num_features=3, affine=False, eps=1e-3), [(5, 3)], 5),
    ("BatchNorm1d", dict(num_features=3, track_running_stats=False), [(5, 3)], 5),
    ("BatchNorm2d", (3,), [(4, 3, 5, 5)], 100),
    ("BatchNorm2d", dict(num_features=2, momentum=0.5), [(1, 2, 3, 7)], 21),
    ("LayerNorm", (6,), [(3, 6)], 6),
    ("LayerNorm", ((4, 6),), [(2, 4, 6)], 24),
    ("LayerNorm", dict(normalized_shape=5, elementwise_affine=False), [(3, 2, 5)], 5),
    ("LayerNorm", dict(normalized_shape=5, bias=False, eps=1e-3), [(3, 5)], 5),
    ("GroupNorm", (2, 4), [(3, 4, 5)], 10),
    ("GroupNorm", dict(num_groups=1, num_channels=4, affine=False), [(2, 4, 3, 3)], 36),
    ("GroupNorm", (3, 3), [(2, 3, 2, 2)], 4),
    ("GroupNorm", dict(num_groups=2, num_channels=4, bias=False), [(2, 4, 3)], 6),
    ("BatchNorm2d", dict(num_features=2, bias=False), [(3, 2, 2, 2)], 12),
    ("Conv2d", (3, 5, 3), [(2, 3, 7, 9)], 27),
    ("Conv2d", dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, padding=1, dilation=(1, 2),
                    groups=2, bias=False), [(2, 4, 9, 8)], 12),
    ("Conv2d", dict(in_channels=2, out_channels=3, kernel_size=3, padding="same", dilation=2), [(1, 2, 6, 5)], 18),
    ("Conv2d", dict(in_channels=3, out_channels=3, kernel_size=3, groups=3, padding="valid"), [(2, 3, 5, 5)], 9),
    ("Conv2d", dict(in_channels=2, out_channels=4, kernel_size=3, padding=1, padding_mode="reflect"),
     [(2, 2, 5, 6)], 18),
    ("Conv2d", dict(in_channels=2, out_channels=4, kernel_size=(3, 5), padding=(1, 2), padding_mode="circular"),
     [(2, 2, 5, 6)], 30),
    ("Conv2d", dict(in_channels=2, out_channels=4, kernel_size=3, padding="same", padding_mode="replicate"),
     [(1, 2, 4, 4)], 18),
    ("ConvTranspose2d", dict(in_channels=4, out_channels=3, kernel_size=3, stride=2, padding=1, output_padding=1),
     [(2, 4, 5, 5)], 36),
    ("ConvTranspose2d", dict(in_channels=4, out_channels=6, kernel_size=(2, 3), groups=2, bias=False, dilation=2),
     [(1, 4, 3, 4)], 12),
    ("MaxPool2d", (2,), [(2, 3, 8, 8)], 1),
    ("MaxPool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), [(2, 3, 7, 6)], 1),
    ("MaxPool2d", dict(kernel_size=2, dilation=2), [(1, 2, 7, 7)], 1),
    ("AvgPool2d", (2,), [(2, 3, 8, 8)], 4),
    ("AvgPool2d", dict(kernel_size=3, stride=2, padding=1, count_include_pad=False, ceil_mode=True),
     [(2, 3, 7, 6)], 9),
    ("AvgPool2d", dict(kernel_size=2, divisor_override=3), [(1, 2, 4, 6)], 4),
    ("AdaptiveAvgPool2d", ((3, 2),), [(2, 3, 7, 5)], 12),
    ("AdaptiveAvgPool2d", (1,), [(2, 4, 5, 5)], 25),
    ("ReLU", (), [(3, 7)], 1),
    ("LeakyReLU", (0.2,), [(3, 7)], 1),
    ("ELU", (0.5,), [(3, 7)], 1),
    ("GELU", (), [(3, 7)], 1),
    ("GELU", dict(approximate="tanh"), [(3, 7)], 1),
    ("SiLU", (), [(3, 7)], 1),
    ("Sigmoid", (), [(3, 7)], 1),
    ("Tanh", (), [(3, 7)], 1),
    ("Softmax", dict(dim=1), [(3, 7)], 7),
    ("Softmax", (), [(2, 3, 4)], 2),
    ("LogSoftmax", dict(dim=-1), [(3, 7)], 7),
    ("Softplus", dict(beta=2.0, threshold=5.0), [(3, 7)], 1),
    ("Identity", (), [(3, 2)], 1),
]
LAYER_IDS = [f"{name}-{i}" for i, (name, *_ ) in enumerate(LAYERS)]


def build(lib, name, args):
    cls = getattr(lib, name)
    return cls(**args) if isinstance(args, dict) else cls(*args)


def copy_weights(ours, ref):
    """The PyTorch layer's parameters and buffers into ours (the torch-state-dict helper)."""
    result = ours.load_state_dict(ref.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []


def to_dtype(ours, ref, dtype):
    if dtype == np.float64:
        ours.double()
        ref.double()


def inputs_for(shapes, dtype, seed):
    rng = np.random.default_rng(seed)
    arrays = [(rng.standard_normal(s) * 2).astype(dtype) for s in shapes]
    return ([fastdl.tensor(a.copy(), requires_grad=True) for a in arrays],
            [torch.tensor(a.copy(), requires_grad=True) for a in arrays])


@needs_torch
@pytest.mark.filterwarnings("ignore:Implicit dimension choice")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name,args,shapes,k", LAYERS, ids=LAYER_IDS)
def test_layer_matches_torch(name, args, shapes, k, mode, dtype):
    torch.manual_seed(0)
    ref = build(torch.nn, name, args)
    ours = build(nn, name, args)
    to_dtype(ours, ref, dtype)
    copy_weights(ours, ref)
    if name.startswith("BatchNorm") and ref.track_running_stats:
        # Non-trivial running statistics for eval mode.
        ref.running_mean.uniform_(-1, 1)
        ref.running_var.uniform_(0.5, 2)
        copy_weights(ours, ref)
    ours.train(mode == "train")
    ref.train(mode == "train")
    stochastic = name.startswith("Dropout") and mode == "train"
    for call in range(2):
        xs, txs = inputs_for(shapes, dtype, seed=call)
        out = ours(*xs)
        assert out.dtype == dtype
        g = np.random.default_rng(10 + call).standard_normal(out.shape).astype(dtype)
        out.backward(fastdl.tensor(g))
        if stochastic:
            # The mask is ours: every output is 0 or x/(1 − p), and the gradient is the same mask.
            scale = 1.0 / (1.0 - ours.p)
            kept = out.data != 0
            assert_close(out.data[kept], xs[0].data[kept] * scale, dtype)
            assert_close(xs[0].grad.data, np.where(kept, g * scale, 0.0), dtype)
            if name == "Dropout2d":  # one decision per channel
                per_channel = kept.reshape(kept.shape[0], kept.shape[1], -1)
                assert (per_channel == per_channel[..., :1]).all()
            continue
        ref_out = ref(*txs)
        ref_out.backward(torch.from_numpy(g))
        assert out.shape == tuple(ref_out.shape)
        assert_close(out.data, ref_out.detach().numpy(), dtype, k)
        for x, tx in zip(xs, txs):
            assert_close(x.grad.data, tx.grad.numpy(), dtype, k * 4)
    if stochastic:
        return
    ours_params = dict(ours.named_parameters())
    for pname, p in ref.named_parameters():
        assert_close(ours_params[pname].grad.data, p.grad.numpy(), dtype, 4 * k * max(8, int(np.prod(shapes[0]))))
    for bname, b in ref.named_buffers():
        ours_buf = dict(ours.named_buffers())[bname]
        assert_close(ours_buf.data, b.numpy(), dtype, k)


@pytest.mark.parametrize("p", [0.0, 0.2, 0.7, 1.0])
def test_dropout_keeps_the_expected_fraction(p):
    fastdl.manual_seed(0)
    y = nn.Dropout(p)(fastdl.ones(200_000)).data
    assert abs((y == 0).mean() - p) < 0.01
    assert abs(y.mean() - 1.0) < 0.02 or p == 1.0


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding_idx", [None, 0, -1])
def test_embedding_matches_torch(dtype, padding_idx):
    torch.manual_seed(0)
    ref = torch.nn.Embedding(10, 4, padding_idx=padding_idx)
    ours = nn.Embedding(10, 4, padding_idx=padding_idx)
    to_dtype(ours, ref, dtype)
    copy_weights(ours, ref)
    idx = np.array([[0, 3, 3, 9], [9, 1, 0, 3]])
    out, ref_out = ours(fastdl.tensor(idx)), ref(torch.from_numpy(idx))
    assert_close(out.data, ref_out.detach().numpy(), dtype)
    g = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
    out.backward(fastdl.tensor(g))
    ref_out.backward(torch.from_numpy(g))
    assert_close(ours.weight.grad.data, ref.weight.grad.numpy(), dtype, 4)
    if padding_idx is not None:
        assert not ours.weight.data[padding_idx].any() or padding_idx == -1
        assert not ours.weight.grad.data[padding_idx].any()


@needs_torch
@pytest.mark.parametrize("num,count", [(7, 50), (2100, 2000)])  # the one-hot GEMM and the sorted scatter
@pytest.mark.parametrize("padding_idx", [None, 3])
def test_embedding_backward_paths_match_torch(num, count, padding_idx):
    torch.manual_seed(0)
    ref = torch.nn.Embedding(num, 5, padding_idx=padding_idx)
    ours = nn.Embedding(num, 5, padding_idx=padding_idx)
    copy_weights(ours, ref)
    idx = np.random.default_rng(0).integers(0, num, count)
    idx[::7] = 3  # many repeats of one index (the padding index when there is one)
    g = np.random.default_rng(1).standard_normal((count, 5)).astype(np.float32)
    ours(fastdl.tensor(idx)).backward(fastdl.tensor(g))
    ref(torch.from_numpy(idx)).backward(torch.from_numpy(g))
    assert_close(ours.weight.grad.data, ref.weight.grad.numpy(), np.float32, count)


@needs_torch
def test_embedding_max_norm_and_grad_scaling_match_torch():
    torch.manual_seed(0)
    ref = torch.nn.Embedding(6, 3, max_norm=1.0, scale_grad_by_freq=True)
    ours = nn.Embedding(6, 3, max_norm=1.0, scale_grad_by_freq=True)
    copy_weights(ours, ref)
    idx = np.array([1, 1, 4, 5, 1])
    out, ref_out = ours(fastdl.tensor(idx)), ref(torch.from_numpy(idx))
    assert_close(out.data, ref_out.detach().numpy(), np.float32, 3)
    assert_close(ours.weight.data, ref.weight.detach().numpy(), np.float32, 3)
    out.sum().backward()
    ref_out.sum().backward()
    assert_close(ours.weight.grad.data, ref.weight.grad.numpy(), np.float32)


@needs_torch
def test_embedding_from_pretrained():
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    emb = nn.Embedding.from_pretrained(fastdl.tensor(table))
    assert not emb.weight.requires_grad
    np.testing.assert_array_equal(emb(fastdl.tensor([2, 0])).data, table[[2, 0]])
    assert repr(emb) == repr(torch.nn.Embedding.from_pretrained(torch.from_numpy(table)))


# ---- float64 finite differences of the layer ops ---------------------------------------------------

def _rand(*shape, seed=0):
    return fastdl.tensor(np.random.default_rng(seed).standard_normal(shape), dtype=fastdl.float64,
                         requires_grad=True)


def _seeded_dropout(fn, p):
    def run(x):
        fastdl.manual_seed(5)
        return fn(x, p)
    return run


GRADCHECKS = {
    "batch_norm_train": lambda: ((lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True)),
                                 [_rand(4, 3, 2), _rand(3, seed=1), _rand(3, seed=2)]),
    "batch_norm_eval": lambda: ((lambda x, w, b: F.batch_norm(x, fastdl.zeros(3, dtype=fastdl.float64) + 0.3,
                                                               fastdl.ones(3, dtype=fastdl.float64) * 2, w, b)),
                                [_rand(4, 3), _rand(3, seed=1), _rand(3, seed=2)]),
    "layer_norm": lambda: ((lambda x, w, b: F.layer_norm(x, (2, 3), w, b)),
                           [_rand(4, 2, 3), _rand(2, 3, seed=1), _rand(2, 3, seed=2)]),
    "group_norm": lambda: ((lambda x, w, b: F.group_norm(x, 2, w, b)),
                           [_rand(2, 4, 3), _rand(4, seed=1), _rand(4, seed=2)]),
    "embedding": lambda: ((lambda w: F.embedding(fastdl.tensor([[1, 3], [3, 0]]), w)),
                          [_rand(4, 3)]),
    "bilinear": lambda: ((lambda a, b, w, c: F.bilinear(a, b, w, c)),
                         [_rand(3, 2), _rand(3, 4, seed=1), _rand(5, 2, 4, seed=2), _rand(5, seed=3)]),
    "dropout": lambda: (_seeded_dropout(F.dropout, 0.4), [_rand(3, 5)]),
    "dropout2d": lambda: (_seeded_dropout(F.dropout2d, 0.4), [_rand(2, 3, 2, 2)]),
    "cosine_similarity": lambda: ((lambda a, b: F.cosine_similarity(a, b)), [_rand(3, 4), _rand(3, 4, seed=1)]),
}


@pytest.mark.parametrize("name", sorted(GRADCHECKS))
def test_gradcheck(name):
    fn, inputs = GRADCHECKS[name]()
    assert gradcheck(fn, inputs)


# ---- Module mechanics -----------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self, lib):
        super().__init__()
        self.conv = lib.Sequential(lib.Linear(4, 8), lib.BatchNorm1d(8), lib.GELU())
        self.heads = lib.ModuleDict({"cls": lib.Linear(8, 3), "aux": lib.Linear(8, 1, bias=False)})
        self.layers = lib.ModuleList([lib.Linear(8, 8) for _ in range(3)] + [lib.LayerNorm(8)])
        self.emb = lib.Embedding(5, 4, padding_idx=0)
        self.drop = lib.Dropout(0.1)


class TorchBlock(torch.nn.Module if torch is not None else object):
    def __init__(self):
        super().__init__()
        lib = torch.nn
        self.conv = lib.Sequential(lib.Linear(4, 8), lib.BatchNorm1d(8), lib.GELU())
        self.heads = lib.ModuleDict({"cls": lib.Linear(8, 3), "aux": lib.Linear(8, 1, bias=False)})
        self.layers = lib.ModuleList([lib.Linear(8, 8) for _ in range(3)] + [lib.LayerNorm(8)])
        self.emb = lib.Embedding(5, 4, padding_idx=0)
        self.drop = lib.Dropout(0.1)


@needs_torch
def test_names_state_dict_and_repr_match_torch():
    ours, ref = Block(nn), TorchBlock()
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in ref.named_buffers()]
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in ref.named_modules()]
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert repr(ours).replace("Block", "TorchBlock") == repr(ref)
    copy_weights(ours, ref)
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        np.testing.assert_array_equal(a.data, b.numpy(), err_msg=name)


@needs_torch
@pytest.mark.parametrize("name,args,shapes,k", LAYERS, ids=LAYER_IDS)
def test_layer_repr_matches_torch(name, args, shapes, k):
    assert repr(build(nn, name, args)) == repr(build(torch.nn, name, args))


def test_registration_and_traversal():
    model = nn.Sequential(OrderedDict(fc=nn.Linear(3, 4), act=nn.ReLU(), out=nn.Linear(4, 2)))
    assert [n for n, _ in model.named_children()] == ["fc", "act", "out"]
    assert model.fc is model[0] and len(model) == 3 and isinstance(model[1:], nn.Sequential)
    assert sum(p.numel() for p in model.parameters()) == 3 * 4 + 4 + 4 * 2 + 2
    shared = nn.Linear(2, 2)
    tied = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(list(tied.parameters())) == 2 and list(tied.state_dict()) == ["0.weight", "0.bias", "2.weight",
                                                                            "2.bias"]
    m = nn.Module()
    m.w = nn.Parameter(fastdl.ones(2))
    m.register_buffer("stat", fastdl.zeros(2))
    m.register_buffer("scratch", fastdl.zeros(2), persistent=False)
    m.plain = fastdl.ones(1)
    assert list(m.state_dict()) == ["w", "stat"]
    assert [n for n, _ in m.named_buffers()] == ["stat", "scratch"]
    with pytest.raises(TypeError, match="cannot assign 'Tensor' as parameter 'w'"):
        m.w = fastdl.ones(2)
    del m.w
    assert "w" not in dict(m.named_parameters())
    with pytest.raises(AttributeError, match="'Module' object has no attribute 'w'"):
        m.w


def test_load_state_dict_strict_and_errors():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    sd = model.state_dict()
    sd_extra = dict(sd, extra=fastdl.ones(1))
    with pytest.raises(ValueError, match=r'Unexpected key\(s\) in state_dict: "extra"'):
        model.load_state_dict(sd_extra)
    partial = {k: v for k, v in sd.items() if k != "1.running_var"}
    with pytest.raises(ValueError, match=r'Missing key\(s\) in state_dict: "1.running_var"'):
        model.load_state_dict(partial)
    result = model.load_state_dict(partial, strict=False)
    assert result.missing_keys == ["1.running_var"] and result.unexpected_keys == []
    bad = dict(sd, **{"0.weight": fastdl.ones(2, 4)})
    with pytest.raises(ValueError, match=r"size mismatch for 0.weight: copying a param with shape \(2, 4\) from "
                                         r"checkpoint, the shape in current model is \(2, 3\)"):
        model.load_state_dict(bad)
    # Loading copies into the existing arrays (a state dict shares memory with the module).
    w = model[0].weight
    model.load_state_dict(dict(sd, **{"0.weight": np.full((2, 3), 7.0)}))
    assert model[0].weight is w and (w.data == 7).all() and w.dtype == np.float32


def test_to_dtype_keeps_parameters_and_modes():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2), nn.Dropout())
    params = list(model.parameters())
    model.double()
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    assert model[1].num_batches_tracked.dtype == np.int64
    assert model(fastdl.randn(4, 3, dtype=fastdl.float64)).dtype == np.float64
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    with pytest.raises(TypeError, match="floating point"):
        model.to(fastdl.int64)


def test_device_argument_places_parameters():
    assert nn.Linear(2, 3, device="cpu").weight.device == "cpu"
    if not fastdl.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            nn.Linear(2, 3, device="cuda")


def test_apply_zero_grad_requires_grad_and_hooks():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    model.apply(lambda m: nn.init.zeros_(m.weight) if isinstance(m, nn.Linear) else None)
    assert all((m.weight.data == 0).all() for m in model if isinstance(m, nn.Linear))
    model(fastdl.ones(2, 3)).sum().backward()
    assert model[1].bias.grad is not None
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    model[0].requires_grad_(False)
    model(fastdl.ones(2, 3)).sum().backward()
    assert model[0].weight.grad is None and model[1].weight.grad is not None
    seen = []
    handle = model[0].register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    pre = model.register_forward_pre_hook(lambda mod, args: (args[0] * 0,))
    out = model(fastdl.ones(5, 3))
    assert seen == [(5, 3)] and np.allclose(out.data, model[1].bias.data)
    handle.remove()
    pre.remove()
    model(fastdl.ones(5, 3))
    assert seen == [(5, 3)]


def test_containers():
    layers = nn.ModuleList([nn.Linear(2, 2)])
    layers.append(nn.ReLU())
    layers.extend([nn.Tanh()])
    layers.insert(1, nn.Sigmoid())
    assert [type(m).__name__ for m in layers] == ["Linear", "Sigmoid", "ReLU", "Tanh"]
    del layers[1]
    assert [type(m).__name__ for m in layers] == ["Linear", "ReLU", "Tanh"]
    assert type(layers[-1]).__name__ == "Tanh" and len(layers[:2]) == 2
    with pytest.raises(IndexError):
        layers[3]
    heads = nn.ModuleDict()
    heads["a"] = nn.Linear(2, 2)
    heads.update({"b": nn.Linear(2, 3)})
    assert list(heads) == ["a", "b"] and heads.pop("a").out_features == 2 and list(heads.keys()) == ["b"]
    seq = nn.Sequential(nn.Linear(2, 2))
    seq.append(nn.ReLU())
    seq.insert(0, nn.Identity())
    assert [type(m).__name__ for m in seq] == ["Identity", "Linear", "ReLU"]
    x = fastdl.ones(1, 2)
    assert nn.Identity()(x) is x
    assert repr(nn.Parameter(fastdl.ones(1))).startswith("Parameter containing:\ntensor(")


def test_deepcopy_gives_independent_parameters():
    import copy

    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    clone = copy.deepcopy(model)
    assert type(clone[0].weight) is nn.Parameter and clone[0].weight.requires_grad
    assert not np.shares_memory(clone[0].weight.data, model[0].weight.data)
    clone(fastdl.randn(5, 3))  # updates only the clone's running statistics
    assert not (clone[1].running_mean.data == model[1].running_mean.data).all()


@needs_torch
def test_module_list_repr_compresses_repeats_like_torch():
    ours = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)] + [nn.ReLU()])
    ref = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(3)] + [torch.nn.ReLU()])
    assert repr(ours) == repr(ref)


# ---- initialisation -----------------------------------------------------------------------------

@needs_torch
@pytest.mark.parametrize("shape", [(30, 20), (16, 8, 3, 3), (5, 7, 2)])
def test_fans_and_gains_match_torch(shape):
    assert nn.init._calculate_fan_in_and_fan_out(np.empty(shape)) == \
        torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    for name, param in [("linear", None), ("sigmoid", None), ("tanh", None), ("relu", None), ("leaky_relu", None),
                        ("leaky_relu", 0.2), ("selu", None), ("conv2d", None)]:
        assert nn.init.calculate_gain(name, param) == pytest.approx(torch.nn.init.calculate_gain(name, param))


@pytest.mark.parametrize("fn,kwargs,check", [
    ("uniform_", dict(a=-2.0, b=3.0), lambda w: w.min() >= -2 and w.max() <= 3 and abs(w.mean() - 0.5) < 0.05),
    ("normal_", dict(mean=1.0, std=0.5), lambda w: abs(w.mean() - 1) < 0.02 and abs(w.std() - 0.5) < 0.02),
    ("trunc_normal_", dict(std=1.0, a=-1.0, b=1.0), lambda w: w.min() >= -1 and w.max() <= 1),
    ("constant_", dict(val=0.3), lambda w: np.allclose(w, 0.3)),
    ("zeros_", {}, lambda w: not w.any()),
    ("ones_", {}, lambda w: (w == 1).all()),
    ("eye_", {}, lambda w: (w == np.eye(*w.shape)).all()),
    ("xavier_uniform_", dict(gain=2.0), lambda w: np.abs(w).max() <= 2 * np.sqrt(6 / 700)
     and abs(w.std() - 2 * np.sqrt(2 / 700)) < 0.01 * 2 * np.sqrt(2 / 700) * 5),
    ("xavier_normal_", {}, lambda w: abs(w.std() - np.sqrt(2 / 700)) < 0.05 * np.sqrt(2 / 700)),
    ("kaiming_uniform_", dict(nonlinearity="relu"),
     lambda w: np.abs(w).max() <= np.sqrt(6 / 300) and abs(w.std() - np.sqrt(2 / 300)) < 0.05 * np.sqrt(2 / 300)),
    ("kaiming_normal_", dict(mode="fan_out", nonlinearity="relu"),
     lambda w: abs(w.std() - np.sqrt(2 / 400)) < 0.05 * np.sqrt(2 / 400)),
    ("orthogonal_", dict(gain=1.5), lambda w: np.allclose(w.T @ w, 2.25 * np.eye(300), atol=1e-4)),
])
def test_initialisers(fn, kwargs, check):
    w = fastdl.empty(400, 300)
    assert getattr(nn.init, fn)(w, **kwargs) is w
    assert check(w.data.astype(np.float64))


@needs_torch
@pytest.mark.parametrize("name,args", [("Linear", (300, 200)), ("Bilinear", (30, 20, 10)), ("Embedding", (300, 20))])
def test_default_initialisation_matches_torch_distribution(name, args):
    torch.manual_seed(0)
    ref = build(torch.nn, name, args)
    ours = build(nn, name, args)
    for pname, p in ref.named_parameters():
        a, b = dict(ours.named_parameters())[pname].data, p.detach().numpy()
        if name != "Embedding":  # uniform: the same bound
            bound = 1 / np.sqrt(args[0])
            assert np.abs(a).max() <= bound and np.abs(b).max() <= bound
        if a.size >= 1000:
            assert abs(a.std() - b.std()) < 0.05 * b.std(), pname


def test_init_errors():
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        nn.init.xavier_uniform_(fastdl.empty(5))
    with pytest.raises(ValueError, match="Unsupported nonlinearity"):
        nn.init.calculate_gain("swish")
    with pytest.raises(ValueError, match="Mode fan_avg not supported"):
        nn.init.kaiming_normal_(fastdl.empty(3, 3), mode="fan_avg")


# ---- utilities ------------------------------------------------------------------------------------

@needs_torch
@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(s).astype(np.float32) for s in [(3, 4), (7,), (1,)]]
    ours = [nn.Parameter(fastdl.zeros(*g.shape)) for g in grads]
    ref = [torch.zeros(g.shape, requires_grad=True) for g in grads]
    for p, q, g in zip(ours, ref, grads):
        p.grad, q.grad = fastdl.tensor(g.copy()), torch.from_numpy(g.copy())
    total = nn.utils.clip_grad_norm_(ours, max_norm, norm_type)
    ref_total = torch.nn.utils.clip_grad_norm_(ref, max_norm, norm_type)
    assert float(total) == pytest.approx(float(ref_total), rel=1e-5)
    for p, q in zip(ours, ref):
        assert_close(p.grad.data, q.grad.numpy(), np.float32, 16)


def test_clip_grad_value_and_vector_conversion():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    model(fastdl.ones(4, 3) * 10).sum().backward()
    nn.utils.clip_grad_value_(model.parameters(), 0.1)
    assert all(np.abs(p.grad.data).max() <= 0.1 for p in model.parameters())
    vec = nn.utils.parameters_to_vector(model.parameters())
    assert vec.shape == (11,)
    nn.utils.vector_to_parameters(fastdl.arange(11, dtype=fastdl.float32), model.parameters())
    np.testing.assert_array_equal(model[0].weight.data.ravel(), np.arange(6))
    with pytest.raises(ValueError, match="vector has 3 elements, parameters have 11"):
        nn.utils.vector_to_parameters(fastdl.ones(3), model.parameters())
    with pytest.raises(ValueError, match="non-finite"):
        model[0].weight.grad = fastdl.tensor(np.full((2, 3), np.inf, np.float32))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0, error_if_nonfinite=True)


# ---- layer error messages ------------------------------------------------------------------------

def _x(*shape, dtype=np.float32):
    return fastdl.tensor(np.zeros(shape, dtype))


LAYER_ERRORS = [
    (lambda: nn.Linear(512, 10)(_x(32, 768)),
     r"Linear\(in_features=512, out_features=10, bias=True\) got input of shape \(32, 768\): "
     r"last dimension 768 != in_features 512"),
    (lambda: nn.Linear(4, 2)(_x()), r"Linear\(in_features=4.*\) got input of shape \(\)"),
    (lambda: nn.Bilinear(3, 4, 2)(_x(5, 3), _x(5, 5)), r"Bilinear\(in1_features=3.*input2 of shape \(5, 5\)"),
    (lambda: nn.BatchNorm1d(8)(_x(4, 6)),
     r"BatchNorm1d\(8, eps=1e-05.*\) got input of shape \(4, 6\): expected \(N, C\) or \(N, C, L\) with C = "
     r"num_features = 8"),
    (lambda: nn.BatchNorm2d(3)(_x(4, 3, 5)), r"BatchNorm2d\(3, .*\) got input of shape \(4, 3, 5\): expected "
                                             r"\(N, C, H, W\)"),
    (lambda: nn.BatchNorm1d(3)(_x(1, 3)), r"BatchNorm1d\(3.* expected more than 1 value per channel"),
    (lambda: nn.LayerNorm(8)(_x(2, 7)), r"LayerNorm\(\(8,\), .*\) got input of shape \(2, 7\): it must end with "
                                        r"normalized_shape \(8,\)"),
    (lambda: nn.GroupNorm(2, 4)(_x(3, 6, 5)), r"GroupNorm\(2, 4, .*\) got input of shape \(3, 6, 5\)"),
    (lambda: nn.Embedding(10, 3)(_x(2, 2)), r"Embedding\(10, 3\) got input of dtype float32 .*: indices must be "
                                            r"integers"),
    (lambda: nn.Embedding(10, 3)(fastdl.tensor([1, 12])), r"Embedding\(10, 3\) got index 12 out of range \[0, 10\)"),
    (lambda: nn.Flatten(2)(_x(3, 4)), r"Flatten\(start_dim=2, end_dim=-1\) got input of shape \(3, 4\): dimension "
                                      r"2 is out of range"),
    (lambda: nn.Unflatten(1, (3, 5))(_x(2, 12)), r"Unflatten\(dim=1, unflattened_size=\(3, 5\)\) got input of shape "
                                                 r"\(2, 12\): dimension 1 has 12 elements"),
    (lambda: nn.Dropout2d()(_x(4, 5)), r"Dropout2d\(p=0.5, inplace=False\) got input of shape \(4, 5\)"),
    (lambda: nn.Dropout(1.5), "dropout probability has to be between 0 and 1"),
    (lambda: nn.GroupNorm(3, 4), r"num_channels \(4\) must be divisible by num_groups \(3\)"),
    (lambda: nn.Embedding(5, 2, padding_idx=5), "padding_idx 5 must be within num_embeddings"),
    (lambda: nn.GELU(approximate="fast"), "approximate must be 'none' or 'tanh'"),
    (lambda: nn.Conv2d(3, 8, 3)(_x(2, 4, 8, 8)),
     r"Conv2d\(3, 8, kernel_size=\(3, 3\), stride=\(1, 1\)\) got input of shape \(2, 4, 8, 8\): expected "
     r"\(N, C_in, H, W\) or \(C_in, H, W\) with C_in = in_channels = 3"),
    (lambda: nn.Conv2d(3, 8, 3)(_x(3, 8)), r"Conv2d\(3, 8.* got input of shape \(3, 8\)"),
    (lambda: nn.Conv2d(4, 6, 3, groups=4), r"in_channels \(4\) and out_channels \(6\) must be divisible by groups"),
    (lambda: nn.Conv2d(2, 2, 3, stride=2, padding="same"), "padding='same' is not supported for strided"),
    (lambda: nn.Conv2d(2, 2, 3, padding_mode="mirror"), "padding_mode must be one of"),
    (lambda: nn.ConvTranspose2d(2, 2, 3, stride=2, output_padding=2), "output_padding .* must be smaller"),
    (lambda: nn.ConvTranspose2d(2, 3, 3, stride=2)(_x(1, 2, 4, 4), output_size=(1, 3, 20, 20)),
     r"ConvTranspose2d\(2, 3, .*\) got output_size \(20, 20\) for input of shape \(1, 2, 4, 4\)"),
    (lambda: nn.MaxPool2d(2)(_x(4, 4)), r"MaxPool2d\(kernel_size=2, .*\) got input of shape \(4, 4\)"),
    (lambda: nn.AdaptiveAvgPool2d(2)(_x(5)), r"AdaptiveAvgPool2d\(output_size=2\) got input of shape \(5,\)"),
]


@pytest.mark.parametrize("make,words", LAYER_ERRORS, ids=[str(i) for i in range(len(LAYER_ERRORS))])
def test_layer_errors(make, words):
    with pytest.raises(ValueError, match=words):
        make()


# ---- positional encoding --------------------------------------------------------------------------

@pytest.mark.parametrize("max_len,d_model", [(1, 1), (7, 6), (50, 9), (5000, 64)])
def test_sinusoidal_positional_encoding_matches_formula(max_len, d_model):
    pe = nn.sinusoidal_positional_encoding(max_len, d_model, dtype=np.float64).numpy()
    pos = np.arange(max_len)[:, None]
    i = np.arange(d_model)[None, :]
    angle = pos / 10000.0 ** ((i - i % 2) / d_model)
    expected = np.where(i % 2 == 0, np.sin(angle), np.cos(angle))
    np.testing.assert_allclose(pe, expected, atol=1e-9)


@pytest.mark.parametrize("batch_first", [False, True])
def test_positional_encoding_module(batch_first):
    module = nn.PositionalEncoding(8, dropout=0.0, max_len=20, batch_first=batch_first)
    shape = (3, 5, 8) if batch_first else (5, 3, 8)
    x = fastdl.randn(*shape, requires_grad=True)
    y = module(x)
    table = nn.sinusoidal_positional_encoding(20, 8).numpy()[:5]
    added = y.data - x.data
    expected = table[None] if batch_first else table[:, None]
    np.testing.assert_allclose(added, np.broadcast_to(expected, shape), atol=1e-6)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.data, 1.0)
    assert list(module.state_dict()) == []  # the table is not saved
    with pytest.raises(ValueError, match=r"PositionalEncoding\(d_model=8, max_len=20.*S ≤ max_len = 20"):
        module(fastdl.randn(3, 21, 8) if batch_first else fastdl.randn(21, 3, 8))


@needs_torch
def test_max_pool_indices_and_conv_transpose_output_size_match_torch():
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 6)).astype(np.float32)
    out, idx = nn.MaxPool2d(2, return_indices=True)(fastdl.tensor(x))
    ref, ref_idx = torch.nn.MaxPool2d(2, return_indices=True)(torch.from_numpy(x))
    np.testing.assert_array_equal(out.data, ref.numpy())
    np.testing.assert_array_equal(idx.data, ref_idx.numpy())
    torch.manual_seed(0)
    ref_up = torch.nn.ConvTranspose2d(3, 2, 3, stride=2)
    up = nn.ConvTranspose2d(3, 2, 3, stride=2)
    copy_weights(up, ref_up)
    y = up(fastdl.tensor(x), output_size=(16, 14))
    with torch.no_grad():
        y_ref = ref_up(torch.from_numpy(x), output_size=(16, 14))
    assert y.shape == (2, 2, 16, 14)
    assert_close(y.data, y_ref.numpy(), np.float32, 27)


# ---- transformer layers -----------------------------------------------------------------------------

def _masks(lib, L, N, causal_bool):
    if causal_bool:
        mask = np.triu(np.ones((L, L), bool), k=1)
    else:
        mask = np.triu(np.full((L, L), -np.inf, np.float32), k=1)
    padding = np.zeros((N, L), bool)
    padding[0, -2:] = True
    convert = torch.from_numpy if lib is torch else fastdl.tensor
    return convert(mask), convert(padding)


TRANSFORMER_CASES = [
    dict(batch_first=True, norm_first=False, activation="relu", masks=None),
    dict(batch_first=False, norm_first=True, activation="gelu", masks="float"),
    dict(batch_first=True, norm_first=True, activation="relu", masks="bool"),
]


@needs_torch
@pytest.mark.filterwarnings("ignore:enable_nested_tensor")
@pytest.mark.filterwarnings("ignore:Support for mismatched src_key_padding_mask and mask")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", TRANSFORMER_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_transformer_encoder_matches_torch(case, dtype):
    kwargs = dict(d_model=16, nhead=4, dim_feedforward=24, dropout=0.0, batch_first=case["batch_first"],
                  norm_first=case["norm_first"], activation=case["activation"])
    torch.manual_seed(0)
    ref = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(**kwargs), 2, norm=torch.nn.LayerNorm(16))
    ours = nn.TransformerEncoder(nn.TransformerEncoderLayer(**kwargs), 2, norm=nn.LayerNorm(16))
    to_dtype(ours, ref, dtype)
    copy_weights(ours, ref)
    L, N = 6, 3
    shape = (N, L, 16) if case["batch_first"] else (L, N, 16)
    (x,), (tx,) = inputs_for([shape], dtype, seed=1)
    fkw, tkw = {}, {}
    if case["masks"]:
        fm, fp = _masks(fastdl, L, N, case["masks"] == "bool")
        tm, tp = _masks(torch, L, N, case["masks"] == "bool")
        if case["masks"] == "float":
            fm, tm = fm.to(dtype), tm.to(torch.float64 if dtype == np.float64 else torch.float32)
        fkw, tkw = dict(mask=fm, src_key_padding_mask=fp), dict(mask=tm, src_key_padding_mask=tp)
    for mode in ("train", "eval"):
        ours.train(mode == "train")
        ref.train(mode == "train")
        out = ours(x, **fkw)
        ref_out = ref(tx, **tkw)
        assert_close(out.data, ref_out.detach().numpy(), dtype, 64)
    g = np.random.default_rng(2).standard_normal(out.shape).astype(dtype)
    ours.train()
    ref.train()
    ours(x, **fkw).backward(fastdl.tensor(g))
    ref(tx, **tkw).backward(torch.from_numpy(g))
    assert_close(x.grad.data, tx.grad.numpy(), dtype, 256)
    ours_params = dict(ours.named_parameters())
    for name, p in ref.named_parameters():
        assert_close(ours_params[name].grad.data, p.grad.numpy(), dtype, 1024)


@needs_torch
@pytest.mark.filterwarnings("ignore:enable_nested_tensor")
@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_decoder_and_full_model_match_torch(norm_first):
    kwargs = dict(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True, norm_first=norm_first)
    torch.manual_seed(0)
    ref = torch.nn.Transformer(num_encoder_layers=1, num_decoder_layers=2, **kwargs)
    ours = nn.Transformer(num_encoder_layers=1, num_decoder_layers=2, **kwargs)
    assert list(ours.state_dict()) == list(ref.state_dict())
    copy_weights(ours, ref)
    (src, tgt), (tsrc, ttgt) = inputs_for([(2, 7, 8), (2, 5, 8)], np.float32, seed=3)
    mask = nn.Transformer.generate_square_subsequent_mask(5)
    ref_mask = torch.nn.Transformer.generate_square_subsequent_mask(5)
    np.testing.assert_array_equal(mask.data, ref_mask.numpy())
    pad = np.zeros((2, 7), bool)
    pad[1, -3:] = True
    out = ours(src, tgt, tgt_mask=mask, src_key_padding_mask=fastdl.tensor(pad),
               memory_key_padding_mask=fastdl.tensor(pad), tgt_is_causal=True)
    ref_out = ref(tsrc, ttgt, tgt_mask=ref_mask, src_key_padding_mask=torch.from_numpy(pad),
                  memory_key_padding_mask=torch.from_numpy(pad), tgt_is_causal=True)
    assert_close(out.data, ref_out.detach().numpy(), np.float32, 64)
    out.sum().backward()
    ref_out.sum().backward()
    assert_close(src.grad.data, tsrc.grad.numpy(), np.float32, 512)
    assert_close(tgt.grad.data, ttgt.grad.numpy(), np.float32, 512)


def test_transformer_errors_and_copies():
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16)
    encoder = nn.TransformerEncoder(layer, 2)
    assert encoder.layers[0].linear1.weight is not encoder.layers[1].linear1.weight
    with pytest.raises(ValueError, match=r"TransformerEncoderLayer\(\) got src of shape \(5, 3, 6\): .*d_model = 8"):
        layer(fastdl.randn(5, 3, 6))
    with pytest.raises(ValueError, match="activation should be relu/gelu or a callable"):
        nn.TransformerEncoderLayer(8, 2, activation="swish")
    gelu_layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, activation=nn.GELU())
    assert "activation" in dict(gelu_layer.named_children())
