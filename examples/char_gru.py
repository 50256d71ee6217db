"""The character-level language model of char_lstm with a GRU instead of an LSTM.

A GRU (Cho et al., 2014) merges the LSTM's input and forget gates into one update gate z and has
no separate cell state: h' = (1 − z) ⊙ n + z ⊙ h, with the candidate n = tanh(W x + r ⊙ (U h)),
r the reset gate. Fewer parameters per unit; similar results on character modelling. Same data,
clipping and optimizer as char_lstm; reports the validation loss and prints samples.

    python examples/char_gru.py            # or: fastdl train char_gru
"""
from __future__ import annotations

import _common
import char_lstm
import sys

NAME = "char_gru"


def run(epochs: int = 4, fast: bool = False, seed: int = 0, out: str | None = None, threads=None) -> dict:
    return char_lstm.run_char_model(NAME, "gru", epochs, fast, seed, out, threads, "character GRU on Python source")


def main(argv=None):
    args = _common.parse(__doc__, argv, epochs=4)
    return run(args.epochs, args.fast, args.seed, args.out, args.threads)


if __name__ == "__main__":
    main(sys.argv)
