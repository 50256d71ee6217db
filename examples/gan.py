"""A generative adversarial network (GAN) on the 8×8 digits.

Goodfellow et al. (2014): a generator G maps noise z ~ N(0, I) to images; a discriminator D scores
images as real or generated. They play a minimax game: D minimises the cross-entropy of telling
real from fake, G maximises D's error on its samples (the non-saturating loss −log D(G(z))). Both
are MLPs with LeakyReLU; Adam with β₁ = 0.5 as in DCGAN; one-sided label smoothing (real = 0.9).
The loop is written out (two optimizers, alternating steps), since it is not one loss. Saves
generated digits at several points of training and the two losses' curves.

    python examples/gan.py                 # or: fastdl train gan
"""
from __future__ import annotations

import os
import sys

import _common
import numpy as np

import fastdl
from fastdl import data, nn, optim

NAME = "gan"
LATENT = 16


def generator() -> nn.Module:
    return nn.Sequential(nn.Linear(LATENT, 128), nn.LeakyReLU(0.2), nn.Linear(128, 256), nn.LeakyReLU(0.2),
                         nn.Linear(256, 64), nn.Sigmoid())


def discriminator() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.LeakyReLU(0.2), nn.Dropout(0.3), nn.Linear(256, 128),
                         nn.LeakyReLU(0.2), nn.Linear(128, 1))


def run(epochs: int = 150, fast: bool = False, seed: int = 0, out: str | None = None, threads=None) -> dict:
    out = _common.setup(NAME, seed, out, threads)
    images = data.digits(size=8, flatten=True, val_fraction=0.0, test_fraction=0.0).train.arrays[0]
    images = images[:128] if fast else images
    loader = data.DataLoader(data.TensorDataset(images), batch_size=64, shuffle=True, drop_last=True, seed=seed)
    G, D = generator(), discriminator()
    opt_g = optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    fixed_z = fastdl.randn(12, LATENT)
    epochs = 2 if fast else epochs
    snapshots, d_losses, g_losses = [], [], []
    for epoch in range(1, epochs + 1):
        d_sum = g_sum = 0.0
        for (real,) in loader:
            b = real.shape[0]
            # Discriminator: real images → 0.9 (label smoothing), generated → 0.
            fake = G(fastdl.randn(b, LATENT))
            d_loss = bce(D(real), fastdl.full((b, 1), 0.9)) + bce(D(fake.detach()), fastdl.zeros(b, 1))
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            # Generator: make D call its samples real.
            g_loss = bce(D(fake), fastdl.ones(b, 1))
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
            d_sum += d_loss.item()
            g_sum += g_loss.item()
        d_losses.append(d_sum / len(loader))
        g_losses.append(g_sum / len(loader))
        if epoch in (1, epochs // 4, epochs // 2, epochs):
            with fastdl.no_grad():
                snapshots.append((epoch, G(fixed_z).numpy().reshape(-1, 8, 8)))
        if not fast and epoch % 25 == 0:
            print(f"epoch {epoch}/{epochs}  D loss {d_losses[-1]:.4f}  G loss {g_losses[-1]:.4f}", flush=True)

    _common.image_grid(os.path.join(out, "samples.png"), [s for _, s in snapshots],
                       [f"epoch {e}" for e, _ in snapshots], title="GAN samples (the same z each row)")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(1, epochs + 1), d_losses, label="discriminator")
    ax.plot(np.arange(1, epochs + 1), g_losses, label="generator")
    ax.set_xlabel("epoch"), ax.set_ylabel("loss"), ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=110)
    plt.close(fig)
    G.eval(), D.eval()
    with fastdl.no_grad():
        d_fake = float(D(G(fastdl.randn(512, LATENT))).sigmoid().mean().item())
        d_real = float(D(fastdl.tensor(images)).sigmoid().mean().item())
    return _common.report(NAME, {"d_loss": d_losses[-1], "g_loss": g_losses[-1], "D(real)": d_real,
                                 "D(G(z))": d_fake}, out)


def main(argv=None):
    args = _common.parse(__doc__, argv, epochs=150)
    return run(args.epochs, args.fast, args.seed, args.out, args.threads)


if __name__ == "__main__":
    main(sys.argv)
