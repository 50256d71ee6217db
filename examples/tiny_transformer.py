"""A decoder-only transformer (a tiny GPT) on the character corpus.

Tokens are embedded and added to sinusoidal positional encodings (Vaswani et al., 2017:
PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(…)), since attention itself ignores order.
Two pre-norm blocks of causal multi-head self-attention (4 heads: position p attends only to
positions ≤ p) and a feed-forward layer, each wrapped in a residual connection; a final layer norm
and a linear map to the vocabulary. AdamW with warm-up then cosine decay, gradient clipping.
Reports the validation loss and prints a sample.

    python examples/tiny_transformer.py    # or: fastdl train tiny_transformer
"""
from __future__ import annotations

import math
import os
import sys

import _common
import numpy as np

import fastdl
from fastdl import data, nn, optim, train

NAME = "tiny_transformer"


def sinusoidal_encoding(length: int, dim: int) -> np.ndarray:
    """(length, dim) float32 table of the sinusoidal positional encodings."""
    pos = np.arange(length)[:, None]
    freq = np.exp(-math.log(10000.0) * np.arange(0, dim, 2) / dim)
    pe = np.zeros((length, dim), np.float32)
    pe[:, 0::2] = np.sin(pos * freq)
    pe[:, 1::2] = np.cos(pos * freq)
    return pe


class TinyGPT(nn.Module):
    def __init__(self, vocab_size: int, context: int, dim: int = 128, heads: int = 4, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.pe = fastdl.tensor(sinusoidal_encoding(context, dim))
        block = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.1, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)
        self.scale = math.sqrt(dim)

    def forward(self, x):
        t = x.shape[1]
        h = self.embed(x) * self.scale + self.pe[:t]
        h = self.blocks(h, is_causal=True, mask=nn.Transformer.generate_square_subsequent_mask(t))
        return self.head(self.norm(h))


def lm_batch(model, batch):
    x, y = batch
    logits = model(x)
    return logits.reshape(-1, logits.shape[-1]), y.reshape(-1)


def sample(model, tokenizer, prompt: str, length: int, context: int, temperature: float = 0.8, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    ids = list(tokenizer.encode(prompt))
    model.eval()
    with fastdl.no_grad():
        for _ in range(length):
            window = np.array([ids[-context:]])
            p = (model(fastdl.tensor(window))[0, -1] / temperature).softmax(-1).numpy().astype(np.float64)
            ids.append(int(rng.choice(p.size, p=p / p.sum())))
    return tokenizer.decode(np.array(ids))


def run(epochs: int = 3, fast: bool = False, seed: int = 0, out: str | None = None, threads=None) -> dict:
    out = _common.setup(NAME, seed, out, threads)
    context = 64
    corpus = data.char_corpus(max_chars=60_000 if fast else None)
    train_set = data.SequenceDataset(corpus.train, context)
    val_set = data.SequenceDataset(corpus.val, context)
    if fast:
        train_set, val_set = data.Subset(train_set, range(64)), data.Subset(val_set, range(32))
    train_loader = data.DataLoader(train_set, batch_size=32, shuffle=True, seed=seed)
    model = TinyGPT(corpus.vocab_size, context)
    epochs = 1 if fast else epochs
    optimizer = optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    total = epochs * len(train_loader)
    warmup = max(1, total // 20)
    scheduler = optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    history = train.fit(model, nn.CrossEntropyLoss(), optimizer, train_loader, data.DataLoader(val_set, batch_size=128),
                        epochs=epochs, batch_fn=lm_batch, clip_grad_norm=1.0, verbose=0 if fast else 1,
                        callbacks=[train.LRSchedulerCallback(scheduler, per_batch=True)])
    history.plot(os.path.join(out, "curves.png"), title="tiny decoder-only transformer")
    print(f"--- sample ---\n{sample(model, corpus.tokenizer, 'def ', 40 if fast else 300, context, seed=seed)}")
    return _common.report(NAME, {"val_loss": history["val_loss"][-1], "train_loss": history["loss"][-1]}, out)


def main(argv=None):
    args = _common.parse(__doc__, argv, epochs=3)
    return run(args.epochs, args.fast, args.seed, args.out, args.threads)


if __name__ == "__main__":
    main(sys.argv)
