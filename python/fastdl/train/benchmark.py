"""``fastdl bench train``: the same models trained with fastdl and with PyTorch in the same run.

Each model is defined twice, layer for layer (same sizes, initialisation scheme, optimizer and
hyper-parameters, batch size and data), and trained by the same plain loop (forward, loss,
zero_grad, backward, step) with each library's own DataLoader. Speed: the median time of an
epoch (MLP, LeNet-5), or tokens per second over the timed steps (char-LSTM, tiny transformer),
warm-up excluded; on one thread measured in process CPU time, so that other jobs on a shared
machine do not count. Quality: the test accuracy, or the validation loss, after the same training.
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

__all__ = ["run", "format_table"]

# On one thread the process's CPU time is the measure (robust when other jobs share the CPU);
# with more threads, wall time (CPU time would add the threads up).
_CLOCK = {"clock": time.perf_counter}


def _clock() -> float:
    return _CLOCK["clock"]()


@dataclasses.dataclass
class Row:
    model: str
    unit: str               # "ms/epoch" (lower is better) or "tokens/s" (higher is better)
    speed: dict             # library -> value
    quality_name: str       # "test accuracy" (higher is better) or "val loss" (lower is better)
    quality: dict           # library -> value

    def speedup(self):
        if "torch" not in self.speed:
            return None
        fd, th = self.speed["fastdl"], self.speed["torch"]
        return th / fd if self.unit == "ms/epoch" else fd / th


def _torch():
    try:
        import torch
    except Exception:
        return None
    return torch


# ---- models, once per library -------------------------------------------------------------------

def _mlp(nn):
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 128), nn.ReLU(),
                         nn.Dropout(0.2), nn.Linear(128, 10))


def _lenet(nn):
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84),
                         nn.ReLU(), nn.Linear(84, 10))


def _char_lstm(nn, vocab):
    class CharLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, 32)
            self.rnn = nn.LSTM(32, 256, batch_first=True)
            self.head = nn.Linear(256, vocab)

        def forward(self, x):
            return self.head(self.rnn(self.embed(x))[0])

    return CharLSTM()


def _transformer(lib, vocab, context, pe, causal_mask, dim=128):
    nn = lib.nn

    class TinyGPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            layer = nn.TransformerEncoderLayer(dim, 4, dim_feedforward=4 * dim, dropout=0.1, activation="gelu",
                                               batch_first=True, norm_first=True)
            # PyTorch's fast path for padded batches does not apply here (no padding): turned off.
            extra = {"enable_nested_tensor": False} if lib.name == "torch" else {}
            self.blocks = nn.TransformerEncoder(layer, 2, **extra)
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, vocab)
            self.pe = pe
            self.mask = causal_mask

        def forward(self, x):
            t = x.shape[1]
            h = self.embed(x) * math.sqrt(dim) + self.pe[:t]
            return self.head(self.norm(self.blocks(h, mask=self.mask, is_causal=True)))

    return TinyGPT()


# ---- the two libraries behind one interface -------------------------------------------------------

class _Lib:
    """What a training loop needs from a library: tensors, seeding, loaders, modules, optimizers."""

    def __init__(self, name):
        self.name = name
        if name == "torch":
            import torch

            self.m = torch
            self.nn = torch.nn
            self.optim = torch.optim
        else:
            import fastdl
            from fastdl import nn, optim

            self.m, self.nn, self.optim = fastdl, nn, optim

    def seed(self, s):
        self.m.manual_seed(s)

    def tensor(self, a):
        return self.m.from_numpy(np.ascontiguousarray(a))

    def loader(self, arrays, batch_size, seed, shuffle=True):
        if self.name == "torch":
            from torch.utils.data import DataLoader, TensorDataset

            g = self.m.Generator().manual_seed(seed)
            return DataLoader(TensorDataset(*[self.tensor(a) for a in arrays]), batch_size=batch_size,
                              shuffle=shuffle, generator=g)
        from ..data import DataLoader, TensorDataset

        return DataLoader(TensorDataset(*arrays), batch_size=batch_size, shuffle=shuffle, seed=seed)

    def no_grad(self):
        return self.m.no_grad()

    def clip(self, params, max_norm):
        self.nn.utils.clip_grad_norm_(params, max_norm)


def _step(lib, model, opt, loss_fn, x, y, clip=None):
    out = model(x)
    loss = loss_fn(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    opt.zero_grad()
    loss.backward()
    if clip is not None:
        lib.clip(model.parameters(), clip)
    opt.step()
    return loss


def _accuracy(lib, model, x, y) -> float:
    model.eval()
    with lib.no_grad():
        pred = model(lib.tensor(x)).numpy().argmax(1)
    model.train()
    return float((pred == y).mean())


def _val_loss(lib, model, loss_fn, x, y) -> float:
    model.eval()
    with lib.no_grad():
        out = model(lib.tensor(x))
        loss = float(loss_fn(out.reshape(-1, out.shape[-1]), lib.tensor(y).reshape(-1)).item())
    model.train()
    return loss


def _image_run(lib, make, splits, epochs, batch_size, lr_args, seed):
    lib.seed(seed)
    model = make(lib.nn)
    opt = lib.optim.SGD(model.parameters(), **lr_args)
    loss_fn = lib.nn.CrossEntropyLoss()
    (xtr, ytr), (xte, yte) = splits
    loader = lib.loader((xtr, ytr), batch_size, seed)
    times = []
    model.train()
    for _ in range(epochs):
        t0 = _clock()
        for xb, yb in loader:
            _step(lib, model, opt, loss_fn, xb, yb)
        times.append(_clock() - t0)
    return 1e3 * float(np.median(times[1:] if len(times) > 1 else times)), _accuracy(lib, model, xte, yte)


def _lm_run(lib, make, corpus, steps, batch_size, seq_len, lr, seed, warmup=5):
    lib.seed(seed)
    model = make(lib)
    opt = lib.optim.Adam(model.parameters(), lr=lr)
    loss_fn = lib.nn.CrossEntropyLoss()
    from ..data import SequenceDataset

    train = SequenceDataset(corpus.train, seq_len)
    val = SequenceDataset(corpus.val, seq_len)
    xv, yv = val.get_batch(np.arange(min(len(val), 64)))
    rng = np.random.default_rng(seed)
    batches = [train.get_batch(rng.integers(0, len(train), batch_size)) for _ in range(steps)]
    model.train()
    t0 = None
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            t0 = _clock()
        _step(lib, model, opt, loss_fn, lib.tensor(x), lib.tensor(y), clip=1.0)
    elapsed = _clock() - t0
    return (steps - warmup) * batch_size * seq_len / elapsed, _val_loss(lib, model, loss_fn, xv, yv)


# ---- the benchmark ----------------------------------------------------------------------------------

def _libs():
    return ["fastdl"] + (["torch"] if _torch() is not None else [])


def bench_mlp(epochs: int, seed: int = 0) -> Row:
    from ..data import digits

    s = digits(size=8, flatten=True)
    splits = (s.train.arrays, s.test.arrays)
    lr = {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}
    res = {lib: _image_run(_Lib(lib), _mlp, splits, epochs, 32, lr, seed) for lib in _libs()}
    return Row(f"MLP 64-256-128-10, digits 8x8, batch 32, {epochs} epochs", "ms/epoch",
               {k: v[0] for k, v in res.items()}, "test accuracy", {k: v[1] for k, v in res.items()})


def bench_lenet(epochs: int, seed: int = 0) -> Row:
    from ..data import digits

    s = digits(size=28)
    splits = (s.train.arrays, s.test.arrays)
    lr = {"lr": 0.05, "momentum": 0.9}
    res = {lib: _image_run(_Lib(lib), _lenet, splits, epochs, 32, lr, seed) for lib in _libs()}
    return Row(f"LeNet-5, digits 28x28, batch 32, {epochs} epochs", "ms/epoch",
               {k: v[0] for k, v in res.items()}, "test accuracy", {k: v[1] for k, v in res.items()})


def bench_char_lstm(steps: int, seed: int = 0) -> Row:
    from ..data import char_corpus

    corpus = char_corpus()
    res = {lib: _lm_run(_Lib(lib), lambda L: _char_lstm(L.nn, corpus.vocab_size), corpus, steps, 64, 64, 3e-3, seed)
           for lib in _libs()}
    return Row(f"char-LSTM emb 32, H 256, batch 64 x 64 chars, {steps} steps", "tokens/s",
               {k: v[0] for k, v in res.items()}, "val loss", {k: v[1] for k, v in res.items()})


def bench_transformer(steps: int, seed: int = 0) -> Row:
    from ..data import char_corpus

    corpus = char_corpus()
    context, dim = 64, 128
    pos = np.arange(context)[:, None]
    freq = np.exp(-math.log(10000.0) * np.arange(0, dim, 2) / dim)
    pe = np.zeros((context, dim), np.float32)
    pe[:, 0::2], pe[:, 1::2] = np.sin(pos * freq), np.cos(pos * freq)
    mask = np.triu(np.full((context, context), -np.inf, np.float32), 1)

    def make(L):
        return _transformer(L, corpus.vocab_size, context, L.tensor(pe), L.tensor(mask), dim)

    res = {lib: _lm_run(_Lib(lib), make, corpus, steps, 32, context, 1e-3, seed) for lib in _libs()}
    return Row(f"tiny transformer d 128, 2 layers, 4 heads, batch 32 x 64, {steps} steps", "tokens/s",
               {k: v[0] for k, v in res.items()}, "val loss", {k: v[1] for k, v in res.items()})


def run(threads: int = 2, quick: bool = False, full: bool = False, printer=print) -> list[Row]:
    """Run the four comparisons on ``threads`` threads for both libraries; print and return rows.
    ``quick``: a few steps each (a smoke test); ``full``: longer runs for the quality columns."""
    from .. import get_num_threads, set_num_threads

    amounts = (3, 2, 8, 8) if quick else (60, 20, 400, 400) if full else (30, 8, 100, 100)
    torch = _torch()
    saved = get_num_threads()
    set_num_threads(threads)
    _CLOCK["clock"] = time.process_time if threads == 1 else time.perf_counter
    if torch is not None:
        torch.set_num_threads(threads)
    rows = []
    try:
        printer(f"# {'process CPU time' if threads == 1 else 'wall time'}, {threads} thread(s)")
        printer(format_header())
        for fn, amount in zip((bench_mlp, bench_lenet, bench_char_lstm, bench_transformer), amounts):
            rows.append(fn(amount))
            printer(format_row(rows[-1]))
    finally:
        set_num_threads(saved)
        _CLOCK["clock"] = time.perf_counter
    return rows


def format_header() -> str:
    return f"{'model':<66} {'unit':>9} {'fastdl':>9} {'torch':>9} {'speed-up':>9}  {'quality':<14} {'fastdl':>7} {'torch':>7}"


def format_row(row: Row) -> str:
    fmt = "{:.1f}" if row.unit == "ms/epoch" else "{:.0f}"
    th = row.speed.get("torch")
    up = row.speedup()
    q_fd, q_th = row.quality["fastdl"], row.quality.get("torch")
    return (f"{row.model:<66} {row.unit:>9} {fmt.format(row.speed['fastdl']):>9} "
            f"{fmt.format(th) if th is not None else '-':>9} {f'{up:.2f}x' if up else '-':>9}  "
            f"{row.quality_name:<14} {q_fd:>7.4f} {f'{q_th:.4f}' if q_th is not None else '-':>7}")


def format_table(rows: list[Row]) -> str:
    return "\n".join([format_header()] + [format_row(r) for r in rows])
