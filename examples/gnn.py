"""A graph convolutional network (GCN) classifying the members of Zachary's karate club.

Kipf & Welling (2017): a layer mixes each node's features with its neighbours',
H' = σ(Â H W) with Â = D^{-1/2} (A + I) D^{-1/2} (self-loops added, symmetrically normalised).
Two layers (one-hot node features → 16 → 2 classes) let each prediction see the 2-hop
neighbourhood. Semi-supervised: only 4 members are labelled (the instructor, the administrator and
one more of each faction); the loss is the cross-entropy on those 4, and the accuracy is measured on
the other 30. Prints the test accuracy and saves the training curve and the graph coloured by
prediction.

    python examples/gnn.py                 # or: fastdl train gnn
"""
from __future__ import annotations

import os
import sys

import _common
import numpy as np

import fastdl
from fastdl import data, nn, optim, train

NAME = "gnn"
LABELLED = np.array([0, 1, 32, 33])


def normalized_adjacency(graph) -> np.ndarray:
    a = graph.adjacency(self_loops=True)
    d = 1.0 / np.sqrt(a.sum(1))
    return (a * d[:, None] * d[None, :]).astype(np.float32)


class GCN(nn.Module):
    def __init__(self, a_hat: np.ndarray, features: int, hidden: int, classes: int):
        super().__init__()
        self.a_hat = fastdl.tensor(a_hat)
        self.w1 = nn.Linear(features, hidden)
        self.w2 = nn.Linear(hidden, classes)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        h = (self.a_hat @ self.w1(self.dropout(x))).relu()
        return self.a_hat @ self.w2(self.dropout(h))


def node_batch(nodes):
    """fit's batch_fn for full-graph training: the whole graph goes through the model, and only
    the rows of ``nodes`` reach the loss."""
    def batch_fn(model, batch):
        x, y = batch
        return model(x)[fastdl.tensor(nodes)], y[fastdl.tensor(nodes)]
    return batch_fn


def run(epochs: int = 200, fast: bool = False, seed: int = 0, out: str | None = None, threads=None) -> dict:
    out = _common.setup(NAME, seed, out, threads)
    graph = data.karate_club()
    x = np.eye(graph.num_nodes, dtype=np.float32)  # no node features: each node is its own one-hot
    model = GCN(normalized_adjacency(graph), graph.num_nodes, 16, 2)
    whole_graph = [(fastdl.tensor(x), fastdl.tensor(graph.labels))]  # one "batch": the graph
    test_nodes = np.setdiff1d(np.arange(graph.num_nodes), LABELLED)
    history = train.fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4),
                        whole_graph, whole_graph, epochs=10 if fast else epochs, metrics=["accuracy"],
                        batch_fn=node_batch(LABELLED), verbose=0)
    test = train.evaluate(model, nn.CrossEntropyLoss(), whole_graph, metrics=["accuracy"], batch_fn=node_batch(test_nodes))
    history.plot(os.path.join(out, "curves.png"), keys=["loss"], title="GCN on the karate club (4 labels)")
    model.eval()
    with fastdl.no_grad():
        predicted = model(fastdl.tensor(x)).numpy().argmax(1)
    plot_graph(os.path.join(out, "graph.png"), graph, predicted)
    return _common.report(NAME, {"test_accuracy": test["accuracy"], "train_loss": history["loss"][-1]}, out)


def plot_graph(path, graph, predicted):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    # A spectral layout: the two eigenvectors of the normalised Laplacian after the constant one.
    a = graph.adjacency(self_loops=False)
    d = a.sum(1)
    lap = np.eye(len(a)) - a / np.sqrt(np.outer(d, d))
    pos = np.linalg.eigh(lap)[1][:, 1:3]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for i, j in graph.edges:
        ax.plot(*pos[[i, j]].T, color="lightgray", lw=0.8, zorder=1)
    ax.scatter(*pos.T, c=predicted, cmap="coolwarm", s=120, edgecolors=np.where(predicted == graph.labels, "k", "gold"),
               linewidths=np.where(np.isin(np.arange(len(a)), LABELLED), 3.0, 1.0), zorder=2)
    for i, p in enumerate(pos):
        ax.annotate(str(i + 1), p, ha="center", va="center", fontsize=6, zorder=3)
    ax.set_title("GCN predictions (thick: labelled; gold edge: wrong)")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = _common.parse(__doc__, argv, epochs=200)
    return run(args.epochs, args.fast, args.seed, args.out, args.threads)


if __name__ == "__main__":
    main(sys.argv)
