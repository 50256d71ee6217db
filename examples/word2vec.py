"""word2vec: skip-gram with negative sampling, and CBOW, on the words of the corpus.

Mikolov et al. (2013). Each word w has an input vector v_w and an output vector u_w. Skip-gram
predicts each context word o within 2 positions of a centre word c; negative sampling replaces the
softmax over the vocabulary by k = 5 binary decisions against words drawn from the unigram
distribution to the power 3/4: L = −log σ(u_o·v_c) − Σ_k log σ(−u_k·v_c). CBOW predicts the centre
word from the mean of its context vectors, with the same loss. Frequent words are subsampled.
Prints the nearest neighbours (cosine similarity) of a few query words for both models.

    python examples/word2vec.py            # or: fastdl train word2vec
"""
from __future__ import annotations

import os
import sys

import _common
import numpy as np

from fastdl import data, nn, optim, train

NAME = "word2vec"
QUERIES = ("true", "return", "list", "first", "key")


class SkipGram(nn.Module):
    """(centre (B,), context (B,), negatives (B, k)) → the negative-sampling loss."""

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.v = nn.Embedding(vocab, dim)
        self.u = nn.Embedding(vocab, dim)
        nn.init.uniform_(self.v.weight, -0.5 / dim, 0.5 / dim)
        nn.init.zeros_(self.u.weight)

    def centre(self, centre):
        return self.v(centre)

    def forward(self, centre, context, negatives):
        h = self.centre(centre)                                     # (B, D)
        pos = (self.u(context) * h).sum(-1)                        # (B,)
        neg = (self.u(negatives) @ h.unsqueeze(-1)).squeeze(-1)    # (B, k)
        return -(nn.functional.logsigmoid(pos).mean() + nn.functional.logsigmoid(-neg).sum(-1).mean())


class CBOW(SkipGram):
    """The mean of the context words' vectors predicts the centre word: here ``centre`` holds the
    context window (B, 2·window) and ``context`` the centre word."""

    def centre(self, window):
        return self.v(window).mean(1)


def skipgram_pairs(ids: np.ndarray, window: int):
    centres, contexts = [], []
    for off in range(1, window + 1):
        centres += [ids[:-off], ids[off:]]
        contexts += [ids[off:], ids[:-off]]
    return np.concatenate(centres), np.concatenate(contexts)


def cbow_windows(ids: np.ndarray, window: int):
    idx = np.arange(window, ids.size - window)
    offsets = np.concatenate([np.arange(-window, 0), np.arange(1, window + 1)])
    return ids[idx[:, None] + offsets], ids[idx]


def subsample(ids: np.ndarray, counts: np.ndarray, rng, t: float = 1e-3) -> np.ndarray:
    """Drop occurrences of frequent words with probability 1 − sqrt(t / frequency)."""
    freq = counts / counts.sum()
    keep = rng.random(ids.size) < np.minimum(1.0, np.sqrt(t / freq[ids]))
    return ids[keep]


def nearest(weights: np.ndarray, vocab: list, word: str, k: int = 5) -> list:
    unit = weights / np.maximum(np.linalg.norm(weights, axis=1, keepdims=True), 1e-8)
    sims = unit @ unit[vocab.index(word)]
    return [vocab[i] for i in np.argsort(-sims)[1:k + 1]]


def returned_loss(output, target):
    """The models return their loss themselves: fit's loss_fn passes it through."""
    return output


def batch_fn(model, batch):
    return model(*batch), None


def run(epochs: int = 3, fast: bool = False, seed: int = 0, out: str | None = None, threads=None) -> dict:
    out = _common.setup(NAME, seed, out, threads)
    corpus = data.char_corpus()
    ids, vocab, counts = data.words(corpus.text, min_count=5)
    rng = np.random.default_rng(seed)
    kept = subsample(ids, counts, rng)
    if fast:
        kept = kept[:3000]
    noise = counts ** 0.75 / (counts ** 0.75).sum()
    epochs = 1 if fast else epochs
    print(f"{ids.size} words, vocabulary {len(vocab)} (min count 5), {kept.size} after subsampling")
    results = {}
    for label, model_cls, (inputs, targets) in (("skip-gram", SkipGram, skipgram_pairs(kept, 2)),
                                                ("CBOW", CBOW, cbow_windows(kept, 2))):
        model = model_cls(len(vocab), 64)
        negatives = rng.choice(len(vocab), (targets.size, 5), p=noise)  # drawn once per pair
        loader = data.DataLoader(data.TensorDataset(inputs, targets, negatives), batch_size=512, shuffle=True,
                                 seed=seed)
        history = train.fit(model, returned_loss, optim.Adam(model.parameters(), lr=3e-3), loader, epochs=epochs,
                            batch_fn=batch_fn, verbose=0 if fast else 1)
        history.plot(os.path.join(out, f"{label}_loss.png"), title=f"word2vec {label}")
        weights = model.v.weight.numpy()
        for q in QUERIES:
            print(f"{label:>9}  {q:<8} → {', '.join(nearest(weights, vocab, q))}")
        results[f"{label}_loss"] = history["loss"][-1]
    return _common.report(NAME, results, out)


def main(argv=None):
    args = _common.parse(__doc__, argv, epochs=3)
    return run(args.epochs, args.fast, args.seed, args.out, args.threads)


if __name__ == "__main__":
    main(sys.argv)
