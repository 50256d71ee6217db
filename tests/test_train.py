"""fastdl.train: fit() reaching a known loss, metrics and history, early stopping, checkpoint resume
reproducing the uninterrupted run exactly, NaN detection, and the callbacks' files."""
import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastdl
from fastdl import nn, optim
from fastdl.data import DataLoader, TensorDataset
from fastdl.train import (Accuracy, Callback, CSVLogger, EarlyStopping, FunctionMetric, History,
                          LRSchedulerCallback, ModelCheckpoint, NonFiniteLossError, ProgressBar, evaluate, fit)


def blobs(n=120, seed=0, classes=3, dim=4):
    """Well separated Gaussian blobs: a classifier reaches 100% on them."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)) * 4
    y = rng.integers(0, classes, n)
    x = (centres[y] + rng.standard_normal((n, dim)) * 0.5).astype(np.float32)
    return x, y.astype(np.int64)


def mlp(seed=0, dropout=0.2):
    fastdl.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3))


def params(model):
    return {k: np.array(v.numpy()) for k, v in model.state_dict().items()}


def test_fit_reaches_the_least_squares_minimum():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((256, 3)).astype(np.float32)
    w_true = np.array([[1.5, -2.0, 0.5]], np.float32)
    y = x @ w_true.T + 0.25
    fastdl.manual_seed(0)
    model = nn.Linear(3, 1)
    history = fit(model, nn.MSELoss(), optim.SGD(model.parameters(), lr=0.1),
                  DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, seed=0), epochs=40, verbose=0)
    assert history["loss"][-1] < 1e-6
    np.testing.assert_allclose(model.weight.numpy(), w_true, atol=1e-3)
    np.testing.assert_allclose(model.bias.numpy(), [0.25], atol=1e-3)


def test_fit_history_metrics_and_validation():
    x, y = blobs()
    model = mlp()
    train = DataLoader(TensorDataset(x[:90], y[:90]), batch_size=16, shuffle=True, seed=0)
    val = DataLoader(TensorDataset(x[90:], y[90:]), batch_size=7)
    history = fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=0.01), train, val,
                  epochs=15, metrics=["accuracy"], verbose=0)
    assert isinstance(history, History) and len(history) == 15 and history.epochs == list(range(1, 16))
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"}
    assert history["val_accuracy"][-1] == 1.0 and history["loss"][-1] < history["loss"][0] / 5
    assert history["lr"] == [0.01] * 15
    logs = evaluate(model, nn.CrossEntropyLoss(), val, metrics=["accuracy"])
    assert logs["loss"] == pytest.approx(history["val_loss"][-1], rel=1e-6)
    assert model.training  # evaluate restores the mode it found


def test_evaluate_weights_batches_by_size():
    x, y = blobs(n=10)
    model = mlp(dropout=0.0)
    loss = nn.CrossEntropyLoss()
    whole = evaluate(model, loss, DataLoader(TensorDataset(x, y), batch_size=10), metrics=["accuracy"])
    parts = evaluate(model, loss, DataLoader(TensorDataset(x, y), batch_size=3), metrics=["accuracy"])
    assert whole["loss"] == pytest.approx(parts["loss"], rel=1e-5)
    assert whole["accuracy"] == parts["accuracy"]


def test_metrics():
    m = Accuracy()
    m.update(np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), np.array([1, 1, 1]))
    m.update(np.array([[0.0, 1.0]]), np.array([1]))
    assert m.compute() == 0.75
    binary = Accuracy()
    binary.update(np.array([[2.0], [-1.0], [0.5]]), np.array([[1.0], [0.0], [0.0]]))
    assert binary.compute() == pytest.approx(2 / 3)
    seq = Accuracy(ignore_index=-1)
    seq.update(np.eye(3)[None].repeat(2, 0), np.array([[0, 1, -1], [0, 0, 2]]))
    assert seq.compute() == pytest.approx(4 / 5)
    mae = FunctionMetric("mae", lambda o, t: np.abs(o - t).mean())
    mae.update(np.zeros(3), np.ones(3))
    mae.update(np.zeros(1), np.full(1, 5.0))
    assert mae.compute() == 2.0
    with pytest.raises(ValueError, match="do not match"):
        Accuracy().update(np.zeros((4, 3)), np.zeros(5))


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_begin(self, trainer):
        self.events.append("begin")

    def on_epoch_end(self, trainer, epoch, logs):
        self.events.append(epoch)

    def on_train_end(self, trainer):
        self.events.append("end")


def test_early_stopping_restores_the_best_weights():
    # Validation labels are the opposite of the training labels: the better the model fits the
    # training set, the worse it does on validation, so the best epoch is the first.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    train = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, seed=1)
    val = DataLoader(TensorDataset(x, 1 - y), batch_size=64)

    def run(epochs, callbacks):
        model = mlp(dropout=0.0)
        history = fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.2), train, val,
                      epochs=epochs, callbacks=callbacks, verbose=0)
        train.load_state_dict({"generator": np.random.default_rng(1).bit_generator.state})
        return model, history

    recorder = Recorder()
    stopper = EarlyStopping(monitor="val_loss", patience=3)
    model, history = run(20, [stopper, recorder])
    assert history.stopped_early and history.best_epoch == 1 and len(history) == 4
    assert recorder.events == ["begin", 1, 2, 3, 4, "end"]
    best_only, _ = run(1, [])
    for k, v in params(best_only).items():
        np.testing.assert_array_equal(params(model)[k], v)


def _resume_setup(seed_model=0):
    x, y = blobs(n=100)
    model = mlp(seed=seed_model, dropout=0.3)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    train = DataLoader(TensorDataset(x[:80], y[:80]), batch_size=8, shuffle=True)  # global generator
    val = DataLoader(TensorDataset(x[80:], y[80:]), batch_size=8)
    return model, opt, train, val, [LRSchedulerCallback(sched), EarlyStopping(patience=50)]


def test_checkpoint_resume_reproduces_the_uninterrupted_run(tmp_path):
    fastdl.manual_seed(123)
    model, opt, train, val, cbs = _resume_setup()
    whole = fit(model, nn.CrossEntropyLoss(), opt, train, val, epochs=6, callbacks=cbs, metrics=["accuracy"],
                verbose=0)
    expected = params(model)

    path = tmp_path / "run.ckpt"
    fastdl.manual_seed(123)
    model, opt, train, val, cbs = _resume_setup()
    fit(model, nn.CrossEntropyLoss(), opt, train, val, epochs=3, metrics=["accuracy"], verbose=0,
        callbacks=cbs + [ModelCheckpoint(path)])
    assert path.exists()

    fastdl.manual_seed(999)  # the checkpoint restores the random state, whatever happened since
    model, opt, train, val, cbs = _resume_setup(seed_model=7)
    resumed = fit(model, nn.CrossEntropyLoss(), opt, train, val, epochs=6, metrics=["accuracy"], verbose=0,
                  callbacks=cbs + [ModelCheckpoint(path)], resume_from=path)
    assert resumed.epochs == whole.epochs
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert resumed[key] == whole[key], key
    for k, v in expected.items():
        np.testing.assert_array_equal(params(model)[k], v, err_msg=k)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 3)


def test_model_checkpoint_best_only_and_epoch_names(tmp_path):
    x, y = blobs(n=60)
    model = mlp()
    best = ModelCheckpoint(tmp_path / "best.ckpt", monitor="val_accuracy", save_best_only=True)
    every = ModelCheckpoint(str(tmp_path / "e{epoch}.ckpt"), every=2)
    loader = DataLoader(TensorDataset(x, y), batch_size=20, shuffle=True, seed=0)
    history = fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.05), loader, loader,
                  epochs=5, callbacks=[best, every], metrics=["accuracy"], verbose=0)
    assert every.saved == [str(tmp_path / "e2.ckpt"), str(tmp_path / "e4.ckpt")]
    improvements = [i for i, v in enumerate(history["val_accuracy"]) if v > max(history["val_accuracy"][:i], default=-1)]
    assert len(best.saved) == len(improvements)
    leftovers = [p for p in os.listdir(tmp_path) if not p.endswith(".ckpt")]
    assert leftovers == []  # atomic writes leave no temporary files


def test_nan_loss_stops_naming_the_step():
    x, y = blobs(n=40)
    x[13, 2] = np.nan  # sample 13 is in batch 4 (batch size 4, no shuffle)
    model = mlp()
    before = None

    class Snapshot(Callback):
        def on_batch_end(self, trainer, step, loss):
            nonlocal before
            before = params(trainer.model)

    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 1, step 4 \(global step 4\)") as info:
        fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1),
            DataLoader(TensorDataset(x, y), batch_size=4), epochs=2, callbacks=[Snapshot()], verbose=0)
    assert info.value.step == 4 and info.value.epoch == 1
    after = params(model)
    assert all(np.isfinite(v).all() for v in after.values())
    assert all(np.array_equal(after[k], before[k]) for k in after)  # no update from the bad step


def test_divergence_is_caught():
    x, y = blobs(n=64)
    model = mlp(dropout=0.0)
    with pytest.raises(NonFiniteLossError, match="became (nan|inf)"):
        fit(model, nn.MSELoss(), optim.SGD(model.parameters(), lr=1e6),
            DataLoader(TensorDataset(x, np.eye(3, dtype=np.float32)[y] * 1e3), batch_size=8), epochs=20,
            verbose=0)


def test_csv_logger_progress_bar_and_plot(tmp_path):
    pytest.importorskip("tqdm", reason="ProgressBar needs tqdm")
    pytest.importorskip("matplotlib", reason="History.plot needs matplotlib")
    x, y = blobs(n=50)
    model = mlp()
    out = io.StringIO()
    log = tmp_path / "log.csv"
    loader = DataLoader(TensorDataset(x, y), batch_size=10, shuffle=True, seed=0)
    history = fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=0.01), loader, loader,
                  epochs=3, metrics=["accuracy"], callbacks=[CSVLogger(log), ProgressBar(file=out)], verbose=0)
    rows = list(csv.reader(open(log)))
    assert rows[0] == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"] and len(rows) == 4
    assert float(rows[3][1]) == pytest.approx(history["loss"][-1], rel=1e-5)
    text = out.getvalue()
    assert "epoch 3/3" in text and "5/5" in text and "step" in text and "val_accuracy" in text
    png = history.plot(tmp_path / "curves.png", title="blobs")
    assert os.path.getsize(png) > 5000
    with pytest.raises(ValueError, match="empty"):
        History().plot(tmp_path / "none.png")


def test_history_best_and_state():
    h = History()
    for e, (a, b) in enumerate([(1.0, 0.5), (0.5, 0.9), (0.2, 0.7)], 1):
        h.append(e, {"val_loss": a, "val_accuracy": b})
    assert h.best("val_loss") == (3, 0.2) and h.best("val_accuracy") == (2, 0.9)
    h2 = History()
    h2.load_state_dict(h.state_dict())
    assert h2.history == h.history and h2.epochs == [1, 2, 3]
    with pytest.raises(KeyError, match="no 'loss'"):
        h["loss"]


def test_fit_bad_arguments():
    x, y = blobs(n=8)
    model = mlp()
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="epochs"):
        fit(model, nn.CrossEntropyLoss(), opt, loader, epochs=0)
    with pytest.raises(TypeError, match="Callback"):
        fit(model, nn.CrossEntropyLoss(), opt, loader, callbacks=[print])
    with pytest.raises(ValueError, match="unknown metric"):
        fit(model, nn.CrossEntropyLoss(), opt, loader, metrics=["f1"])
    with pytest.raises(KeyError, match="pass val_loader"):
        fit(model, nn.CrossEntropyLoss(), opt, loader, callbacks=[EarlyStopping()], verbose=0)
    with pytest.raises(ValueError, match="batch_fn"):
        fit(model, nn.CrossEntropyLoss(), opt, [(x, y, y)], verbose=0)


def test_bench_train_rows(threads):
    from fastdl.train import benchmark

    torch = benchmark._torch()
    torch_threads = torch.get_num_threads() if torch is not None else None
    fastdl.set_num_threads(1)
    if torch is not None:
        torch.set_num_threads(1)
    try:
        row = benchmark.bench_mlp(epochs=2)
    finally:
        if torch is not None:
            torch.set_num_threads(torch_threads)
    assert row.unit == "ms/epoch" and row.speed["fastdl"] > 0 and 0.5 < row.quality["fastdl"] <= 1.0
    if "torch" in row.speed:
        assert row.speedup() > 0 and 0.5 < row.quality["torch"] <= 1.0
    assert "MLP" in benchmark.format_table([row])


def test_fit_sets_the_samplers_epoch():
    class Recording(list):
        def __init__(self, n):
            super().__init__(range(n))
            self.epochs = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

    x, y = blobs(n=12)
    sampler = Recording(12)
    model = mlp()
    fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1),
        DataLoader(TensorDataset(x, y), batch_size=4, sampler=sampler), epochs=3, verbose=0)
    assert sampler.epochs == [1, 2, 3]


FIT_ON_TWO_RANKS = '''
import json, sys
import numpy as np
import fastdl
from fastdl import distributed as dist, nn, optim
from fastdl.data import DataLoader, DistributedSampler, TensorDataset
from fastdl.train import CSVLogger, ModelCheckpoint, fit

dist.init_process_group("mpi")
rank = dist.get_rank()
rng = np.random.default_rng(0)
x = rng.standard_normal((40, 4)).astype(np.float32)
y = (x[:, 0] > 0).astype(np.int64)
fastdl.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
ds = TensorDataset(x, y)
ckpt = ModelCheckpoint(sys.argv[1] + "/ckpt")
history = fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1),
              DataLoader(ds, batch_size=5, sampler=DistributedSampler(ds, seed=1)),
              DataLoader(ds, batch_size=8, sampler=DistributedSampler(ds, shuffle=False)), epochs=2,
              metrics=["accuracy"], callbacks=[ckpt, CSVLogger(sys.argv[1] + "/log.csv")], verbose=1)
logs = {k: v for k, v in history.history.items() if k != "time"}
print("RESULT", rank, json.dumps({"logs": logs, "saved": len(ckpt.saved)}), flush=True)
dist.destroy_process_group()
'''


def test_fit_on_two_ranks_averages_and_writes_once(tmp_path):
    from .test_distributed import mpirun_command, require_mpi

    require_mpi()
    script = tmp_path / "fit_two_ranks.py"
    script.write_text(FIT_ON_TWO_RANKS)
    python_dir = os.path.dirname(os.path.dirname(os.path.abspath(fastdl.__file__)))
    env = dict(os.environ, PYTHONPATH=python_dir, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(mpirun_command(2) + [sys.executable, str(script), str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            _, rank, payload = line.split(" ", 2)
            results[int(rank)] = json.loads(payload)
    assert sorted(results) == [0, 1]
    assert results[0]["logs"] == results[1]["logs"]          # averaged over both ranks' samples
    assert results[0]["saved"] == results[1]["saved"] == 2  # every rank decides; rank 0 writes
    assert (tmp_path / "ckpt").exists()
    assert proc.stdout.count("epoch 2/2") == 1              # only rank 0 prints
    assert len(open(tmp_path / "log.csv").read().splitlines()) == 3
