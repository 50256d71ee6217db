"""LeNet-5 on the digits, data parallel over MPI ranks with DistributedDataParallel.

Every rank holds a replica of the model and trains on its share of each global batch
(DistributedSampler); backward averages the gradients over the ranks, bucket by bucket while it
runs, so the replicas stay identical. fit() runs unchanged: the logged metrics are averaged over
the ranks, and only rank 0 prints and writes files. The checkpoint is the plain model's state
dict, which a single process loads without MPI.

    mpirun -n 2 python examples/ddp_lenet.py                          # 2 processes, this machine
    mpirun -n 8 --hostfile hosts python examples/ddp_lenet.py         # several machines
    python examples/ddp_lenet.py                                      # 1 process works too
"""
from __future__ import annotations

import os

import _common
from lenet_digits import build_model

import fastdl
import fastdl.distributed as dist
from fastdl import data, nn, optim, train
from fastdl.data import DistributedSampler

NAME = "ddp_lenet"


def local_ranks() -> int:
    """How many ranks share this machine (Open MPI and MPICH tell their processes)."""
    for var in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def run(epochs: int = 20, fast: bool = False, seed: int = 0, out: str | None = None, threads=None,
        batch_size: int = 64) -> dict:
    dist.init_process_group("mpi")
    rank, world = dist.get_rank(), dist.get_world_size()
    if threads is None:  # share the cores among the ranks of this machine
        threads = max(1, (os.cpu_count() or 1) // local_ranks())
    out = _common.setup(NAME, seed, out, threads)
    if batch_size % world:
        raise ValueError(f"{NAME}: the global batch {batch_size} must divide evenly over {world} ranks")
    splits = data.digits(size=28, transform=data.transforms.RandomCrop(28, padding=2))
    train_set = data.Subset(splits.train, range(128)) if fast else splits.train
    sampler = DistributedSampler(train_set, shuffle=True, seed=seed)
    train_loader = data.DataLoader(train_set, batch_size=batch_size // world, sampler=sampler, seed=seed)
    val_loader = data.DataLoader(splits.val, batch_size=256,
                                 sampler=DistributedSampler(splits.val, shuffle=False))
    model = nn.parallel.DistributedDataParallel(build_model())
    epochs = 1 if fast else epochs
    optimizer = optim.Adam(model.parameters(), lr=2e-3)
    scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    checkpoint = os.path.join(out, "checkpoint.safetensors")
    history = train.fit(model, nn.CrossEntropyLoss(), optimizer, train_loader, val_loader, epochs=epochs,
                        metrics=["accuracy"], verbose=0 if fast else 1,
                        callbacks=[train.LRSchedulerCallback(scheduler),
                                   train.ModelCheckpoint(checkpoint, monitor="val_loss")])
    test = train.evaluate(model, nn.CrossEntropyLoss(),
                          data.DataLoader(splits.test, batch_size=256,
                                          sampler=DistributedSampler(splits.test, shuffle=False)),
                          metrics=["accuracy"])
    metrics = {"ranks": world, "test_accuracy": test["accuracy"], "test_loss": test["loss"],
               "epochs_run": len(history)}
    if rank == 0:
        fastdl.save(model.module.state_dict(), os.path.join(out, "lenet.safetensors"))
        history.plot(os.path.join(out, "curves.png"), title=f"LeNet-5 on 28×28 digits, {world} ranks")
        _common.report(NAME, metrics, out)
    dist.destroy_process_group()
    return metrics


def main(argv=None):
    p = _common.parser(__doc__.splitlines()[0], epochs=20)
    p.add_argument("--batch-size", type=int, default=64, help="global batch, split over the ranks (default 64)")
    args = p.parse_args(argv)
    return run(args.epochs, args.fast, args.seed, args.out, args.threads, args.batch_size)


if __name__ == "__main__":
    main()
