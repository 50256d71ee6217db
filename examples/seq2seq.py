"""A sequence-to-sequence LSTM with attention that learns to reverse strings of digits.

Encoder: embedding → LSTM over the input "3 1 4 1 5"; decoder: an LSTM cell that at each step
attends over the encoder's outputs (Luong et al., 2015: scores e_s = h_dec · h_enc_s, weights
softmax(e) with padding masked out, context = Σ_s a_s h_enc_s) and predicts the next output digit
from [h_dec, context]. Training uses teacher forcing (the decoder is fed the true previous digit);
testing decodes greedily (it is fed its own previous prediction) until the end token. Strings have
4–9 digits. Prints the sequence accuracy (every digit right) on held-out strings.

    python examples/seq2seq.py             # or: fastdl train seq2seq
"""
from __future__ import annotations

import os
import sys

import _common
import numpy as np

import fastdl
from fastdl import data, nn, optim, train

NAME = "seq2seq"
PAD, BOS, EOS = 10, 11, 12
VOCAB = 13
MIN_LEN, MAX_LEN = 4, 9


def make_pairs(n: int, seed: int):
    """Source (n, MAX_LEN) padded digits, decoder input (BOS + reversed), target (reversed + EOS)."""
    rng = np.random.default_rng(seed)
    src = np.full((n, MAX_LEN), PAD, np.int64)
    dec_in = np.full((n, MAX_LEN + 1), PAD, np.int64)
    tgt = np.full((n, MAX_LEN + 1), PAD, np.int64)
    for i, length in enumerate(rng.integers(MIN_LEN, MAX_LEN + 1, n)):
        digits = rng.integers(0, 10, length)
        src[i, :length] = digits
        dec_in[i, 0], dec_in[i, 1:length + 1] = BOS, digits[::-1]
        tgt[i, :length], tgt[i, length] = digits[::-1], EOS
    return src, dec_in, tgt


class Seq2Seq(nn.Module):
    def __init__(self, dim: int = 64, hidden: int = 128):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim, padding_idx=PAD)
        self.encoder = nn.LSTM(dim, hidden, batch_first=True)
        self.cell = nn.LSTMCell(dim, hidden)
        self.out = nn.Linear(2 * hidden, VOCAB)

    def encode(self, src):
        enc, (h, c) = self.encoder(self.embed(src))
        mask = src == PAD                                           # (B, S): padding gets no attention
        return enc, (h[0], c[0]), mask

    def step(self, token, state, enc, mask):
        """One decoder step: (logits (B, V), new state)."""
        h, c = self.cell(self.embed(token), state)
        scores = (enc @ h.unsqueeze(-1)).squeeze(-1).masked_fill(mask, -1e9)   # (B, S)
        context = (scores.softmax(-1).unsqueeze(1) @ enc).squeeze(1)           # (B, H)
        return self.out(fastdl.cat([h, context], dim=-1)), (h, c)

    def forward(self, src, dec_in):
        """Teacher forcing: logits (B, T, V) for the decoder inputs ``dec_in`` (B, T)."""
        enc, state, mask = self.encode(src)
        logits = []
        for t in range(dec_in.shape[1]):
            step_logits, state = self.step(dec_in[:, t], state, enc, mask)
            logits.append(step_logits)
        return fastdl.stack(logits, dim=1)

    def greedy(self, src, steps: int) -> np.ndarray:
        """Greedy decoding: each step is fed the previous prediction. (B, steps) token ids."""
        enc, state, mask = self.encode(src)
        token = fastdl.full((src.shape[0],), BOS, dtype=fastdl.int64)
        out = []
        for _ in range(steps):
            logits, state = self.step(token, state, enc, mask)
            token = logits.argmax(-1)
            out.append(token.numpy())
        return np.stack(out, 1)


def seq_batch(model, batch):
    src, dec_in, tgt = batch
    logits = model(src, dec_in)
    return logits.reshape(-1, VOCAB), tgt.reshape(-1)


def sequence_accuracy(model, src, tgt) -> float:
    model.eval()
    with fastdl.no_grad():
        pred = model.greedy(fastdl.tensor(src), tgt.shape[1])
    keep = tgt != PAD
    return float(np.all((pred == tgt) | ~keep, axis=1).mean())


def run(epochs: int = 8, fast: bool = False, seed: int = 0, out: str | None = None, threads=None) -> dict:
    out = _common.setup(NAME, seed, out, threads)
    n_train = 256 if fast else 8000
    train_set = data.TensorDataset(*make_pairs(n_train, seed))
    val_set = data.TensorDataset(*make_pairs(1000, seed + 1))
    test_src, _, test_tgt = make_pairs(2000, seed + 2)
    model = Seq2Seq()
    optimizer = optim.Adam(model.parameters(), lr=3e-3)
    epochs = 1 if fast else epochs
    scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    history = train.fit(model, nn.CrossEntropyLoss(ignore_index=PAD), optimizer,
                        data.DataLoader(train_set, batch_size=128, shuffle=True, seed=seed),
                        data.DataLoader(val_set, batch_size=500), epochs=epochs, batch_fn=seq_batch,
                        metrics=[train.Accuracy(ignore_index=PAD)], clip_grad_norm=1.0,
                        callbacks=[train.LRSchedulerCallback(scheduler),
                                   train.EarlyStopping(monitor="val_loss", patience=5)],
                        verbose=0 if fast else 1)
    history.plot(os.path.join(out, "curves.png"), title="seq2seq with attention: reversing digits")
    accuracy = sequence_accuracy(model, test_src, test_tgt)
    with fastdl.no_grad():
        shown = model.greedy(fastdl.tensor(test_src[:3]), test_tgt.shape[1])
    for s, p in zip(test_src[:3], shown):
        src = "".join(str(d) for d in s if d < 10)
        pred = "".join(str(d) for d in p[:list(p).index(EOS)] if d < 10) if EOS in p else "".join(str(d) for d in p if d < 10)
        print(f"{src:>10} → {pred}")
    return _common.report(NAME, {"sequence_accuracy": accuracy, "val_token_accuracy": history["val_accuracy"][-1]}, out)


def main(argv=None):
    args = _common.parse(__doc__, argv, epochs=8)
    return run(args.epochs, args.fast, args.seed, args.out, args.threads)


if __name__ == "__main__":
    main(sys.argv)
