"""A character-level LSTM language model on Python standard-library source code.

Each character is a token (fastdl.data.char_corpus: ~550k characters, ~95 symbols); the model
reads 64 characters and predicts each next one: embedding (32) → LSTM (256) → linear → softmax over
the vocabulary. Truncated backpropagation through time over windows of 64 steps, gradient clipping
(global norm 1) against exploding gradients, Adam. Reports the validation loss (nats per character;
uniform guessing would be ln 95 ≈ 4.55) and prints samples generated character by character.

    python examples/char_lstm.py           # or: fastdl train char_lstm
"""
from __future__ import annotations

import os
import sys

import _common
import numpy as np

import fastdl
from fastdl import data, nn, optim, train

NAME = "char_lstm"


class CharModel(nn.Module):
    """Embedding → recurrent layer (``cell``: "lstm", "gru" or "rnn") → logits over the vocabulary."""

    def __init__(self, vocab_size: int, cell: str = "lstm", embed: int = 32, hidden: int = 256):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed)
        layer = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
        self.rnn = layer(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x, state=None):
        out, state = self.rnn(self.embed(x), state)
        return self.head(out), state


def lm_batch(model, batch):
    """(logits (B·T, V), targets (B·T,)) for cross-entropy over every position."""
    x, y = batch
    logits, _ = model(x)
    return logits.reshape(-1, logits.shape[-1]), y.reshape(-1)


def sample(model, tokenizer, prompt: str, length: int, temperature: float = 0.8, seed: int = 0) -> str:
    """Generate ``length`` characters after ``prompt``, feeding each sampled one back in."""
    rng = np.random.default_rng(seed)
    model.eval()
    out = list(prompt)
    with fastdl.no_grad():
        logits, state = model(fastdl.tensor(tokenizer.encode(prompt)[None]))
        for _ in range(length):
            p = (logits[0, -1] / temperature).softmax(-1).numpy().astype(np.float64)
            nxt = int(rng.choice(p.size, p=p / p.sum()))
            out.append(tokenizer.chars[nxt])
            logits, state = model(fastdl.tensor(np.array([[nxt]])), state)
    return "".join(out)


def run_char_model(name: str, cell: str, epochs: int, fast: bool, seed: int, out, threads, title: str) -> dict:
    out = _common.setup(name, seed, out, threads)
    corpus = data.char_corpus(max_chars=60_000 if fast else None)
    seq_len, batch_size = 64, 64
    train_set = data.SequenceDataset(corpus.train, seq_len)
    val_set = data.SequenceDataset(corpus.val, seq_len)
    if fast:
        train_set, val_set = data.Subset(train_set, range(128)), data.Subset(val_set, range(64))
    model = CharModel(corpus.vocab_size, cell)
    optimizer = optim.Adam(model.parameters(), lr=3e-3)
    epochs = 1 if fast else epochs
    scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    history = train.fit(model, nn.CrossEntropyLoss(), optimizer,
                        data.DataLoader(train_set, batch_size=batch_size, shuffle=True, seed=seed),
                        data.DataLoader(val_set, batch_size=256), epochs=epochs, batch_fn=lm_batch,
                        clip_grad_norm=1.0, callbacks=[train.LRSchedulerCallback(scheduler)],
                        verbose=0 if fast else 1)
    history.plot(os.path.join(out, "curves.png"), title=title)
    for i, prompt in enumerate(("def ", "class ")):
        text = sample(model, corpus.tokenizer, prompt, 40 if fast else 300, seed=seed + i)
        print(f"--- sample after {prompt!r} ---\n{text}")
    return _common.report(name, {"val_loss": history["val_loss"][-1], "train_loss": history["loss"][-1],
                                 "val_bits_per_char": history["val_loss"][-1] / np.log(2)}, out)


def run(epochs: int = 4, fast: bool = False, seed: int = 0, out: str | None = None, threads=None) -> dict:
    return run_char_model(NAME, "lstm", epochs, fast, seed, out, threads, "character LSTM on Python source")


def main(argv=None):
    args = _common.parse(__doc__, argv, epochs=4)
    return run(args.epochs, args.fast, args.seed, args.out, args.threads)


if __name__ == "__main__":
    main(sys.argv)
