"""The course examples: each runs in its fast mode (a few steps) and writes its metrics and curves;
the accuracy targets of the issue are checked by full runs marked slow."""
import json
import os
import subprocess
import sys

import pytest

from fastdl import cli

pytest.importorskip("matplotlib", reason="the examples save their curves with matplotlib")

EXAMPLES = ["perceptron", "mlp_digits", "char_lstm", "char_gru", "rnn_gradients", "word2vec", "autoencoder", "gan", "gnn",
            "regression", "seq2seq", "optimizers", "lenet_digits", "resnet_digits", "transfer", "tiny_transformer"]


def test_every_example_is_listed():
    listed = cli.list_examples()
    assert set(EXAMPLES) <= set(listed) and all(listed.values())


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_fast_mode(name, tmp_path):
    metrics = cli.load_example(name).run(fast=True, out=str(tmp_path))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert any(p.suffix == ".png" and p.stat().st_size > 2000 for p in tmp_path.iterdir())


def test_fastdl_train_command(tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-m", "fastdl.cli", "train", "optimizers", "--fast", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "optimizers: f_SGD" in proc.stdout and (tmp_path / "trajectories.png").exists()
    listing = subprocess.run([sys.executable, "-m", "fastdl.cli", "train", "list"], capture_output=True, text=True)
    assert listing.returncode == 0 and "mlp_digits" in listing.stdout
    graph = subprocess.run([sys.executable, "-m", "fastdl.cli", "train", "autodiff_graph"], capture_output=True, text=True)
    assert graph.returncode == 0, graph.stderr
    unknown = subprocess.run([sys.executable, "-m", "fastdl.cli", "train", "nonsense"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown example" in unknown.stderr


# ---- the targets (full runs) ---------------------------------------------------------------------

def _full(name, tmp_path, **kwargs):
    return cli.load_example(name).run(out=str(tmp_path), **kwargs)


@pytest.mark.slow
def test_mlp_digits_reaches_97_percent(tmp_path):
    assert _full("mlp_digits", tmp_path)["test_accuracy"] >= 0.97


@pytest.mark.slow
def test_lenet_digits_reaches_98_percent(tmp_path):
    assert _full("lenet_digits", tmp_path, threads=1)["test_accuracy"] >= 0.98


@pytest.mark.slow
def test_resnet_and_transfer_learn_the_digits(tmp_path):
    assert _full("resnet_digits", tmp_path / "resnet", epochs=8)["test_accuracy"] >= 0.95
    m = _full("transfer", tmp_path / "transfer", epochs=8)
    assert m["finetuned_test_accuracy"] >= 0.7 and m["scratch_test_accuracy"] >= 0.7


@pytest.mark.slow
def test_tiny_transformer_learns_the_corpus(tmp_path):
    # a uniform guess over the characters costs ln(vocabulary) ≈ 4.5 nats; one epoch gets to ≈ 2.3
    assert _full("tiny_transformer", tmp_path, epochs=1)["val_loss"] < 2.8


@pytest.mark.slow
def test_perceptron_and_xor(tmp_path):
    m = _full("perceptron", tmp_path)
    assert m["separable_accuracy"] == 1.0 and m["perceptron_epochs"] is not None and m["xor_mlp_accuracy"] == 1.0


@pytest.mark.slow
def test_regression_solutions_agree(tmp_path):
    m = _full("regression", tmp_path)
    assert m["max_abs_difference"] < 1e-4 and m["logistic_test_accuracy"] >= 0.99


@pytest.mark.slow
def test_gnn_classifies_the_club(tmp_path):
    assert _full("gnn", tmp_path)["test_accuracy"] >= 0.9


@pytest.mark.slow
def test_optimizers_reach_a_minimum(tmp_path):
    m = _full("optimizers", tmp_path)
    assert m["f_Adam"] < 1e-3 and m["f_momentum"] < 1e-3 and m["f_Nesterov"] < 1e-3


@pytest.mark.slow
def test_denoising_autoencoder_removes_noise(tmp_path):
    m = _full("autoencoder", tmp_path)
    assert m["denoised_mse"] < 0.5 * m["noisy_mse"]


@pytest.mark.slow
def test_rnn_gradients_vanish_and_explode(tmp_path):
    m = _full("rnn_gradients", tmp_path)
    assert m["tanh_rnn_ratio"] < 1e-10 and m["relu_rnn_ratio"] > 1e3 and 0.1 < m["lstm_ratio"] < 10
