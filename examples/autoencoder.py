"""A denoising autoencoder and a variational autoencoder (VAE) on the 8×8 digits.

Denoising autoencoder: corrupt each image with Gaussian noise, and train encoder (64 → 128 → 16)
and decoder (16 → 128 → 64) to reconstruct the clean image; the code must capture the digit's
shape, not the noise. VAE (Kingma & Welling, 2014): the encoder outputs a mean μ and log-variance
log σ² of a Gaussian over a 2-D latent z; the reparameterisation z = μ + σ ⊙ ε, ε ~ N(0, I) makes
sampling differentiable; the loss is the reconstruction cross-entropy plus the KL divergence
KL(N(μ, σ²) ‖ N(0, I)) = −½ Σ (1 + log σ² − μ² − σ²). Decoding z ~ N(0, I) generates new digits.
Saves clean / noisy / denoised rows and VAE reconstructions and samples as images.

    python examples/autoencoder.py         # or: fastdl train autoencoder
"""
from __future__ import annotations

import os
import sys

import _common
import numpy as np

import fastdl
from fastdl import data, nn, optim, train

NAME = "autoencoder"
F = nn.functional


class Denoiser(nn.Module):
    def __init__(self, code: int = 16):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, code), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(code, 128), nn.ReLU(), nn.Linear(128, 64))

    def forward(self, x):
        return self.decoder(self.encoder(x))  # logits of the clean pixels


class VAE(nn.Module):
    def __init__(self, latent: int = 2, hidden: int = 256):
        super().__init__()
        self.latent = latent
        self.encoder = nn.Sequential(nn.Linear(64, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, 64))

    def forward(self, x):
        h = self.encoder(x)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + (0.5 * logvar).exp() * fastdl.randn(*mu.shape)  # the reparameterisation trick
        return self.decoder(z), mu, logvar


def vae_loss(output, target):
    """Per-image reconstruction cross-entropy (summed over pixels) plus KL, averaged over the batch."""
    logits, mu, logvar = output
    recon = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / target.shape[0]
    kl = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum() / target.shape[0]
    return recon + kl


def denoise_batch(model, batch):
    """Input: the noisy images (the dataset's transform adds the noise); target: the clean ones."""
    noisy, clean = batch
    return model(noisy), clean


def run(epochs: int = 60, fast: bool = False, seed: int = 0, out: str | None = None, threads=None) -> dict:
    out = _common.setup(NAME, seed, out, threads)
    splits = data.digits(size=8, flatten=True, test_fraction=0.0)
    x_train, x_val = splits.train.arrays[0], splits.val.arrays[0]
    if fast:
        x_train, x_val = x_train[:128], x_val[:64]
    epochs = 2 if fast else epochs
    noise = data.transforms.GaussianNoise(0.3, clip=(0.0, 1.0))
    verbose = 0 if fast else 1

    print("denoising autoencoder")
    dae = Denoiser()
    noisy_train = data.TensorDataset(x_train, x_train, transform=noise)
    noisy_val = data.TensorDataset(noise.batch(x_val), x_val)
    dae_history = train.fit(dae, nn.BCEWithLogitsLoss(), optim.Adam(dae.parameters(), lr=2e-3),
                            data.DataLoader(noisy_train, batch_size=64, shuffle=True, seed=seed),
                            data.DataLoader(noisy_val, batch_size=256), epochs=epochs, batch_fn=denoise_batch,
                            verbose=verbose)
    dae_history.plot(os.path.join(out, "denoiser_curves.png"), title="denoising autoencoder")

    print("variational autoencoder")
    vae = VAE()
    vae_history = train.fit(vae, vae_loss, optim.Adam(vae.parameters(), lr=2e-3),
                            data.DataLoader(data.TensorDataset(x_train), batch_size=64, shuffle=True, seed=seed),
                            data.DataLoader(data.TensorDataset(x_val), batch_size=256), epochs=epochs,
                            verbose=verbose)
    vae_history.plot(os.path.join(out, "vae_curves.png"), title="VAE (loss = reconstruction + KL)")

    dae.eval(), vae.eval()
    with fastdl.no_grad():
        clean, noisy = x_val[:12], noisy_val.arrays[0][:12]
        denoised = dae(fastdl.tensor(noisy)).sigmoid().numpy()
        recon = vae(fastdl.tensor(clean))[0].sigmoid().numpy()
        samples = vae.decoder(fastdl.randn(12, vae.latent)).sigmoid().numpy()
    shape = (-1, 8, 8)
    _common.image_grid(os.path.join(out, "denoising.png"),
                       [clean.reshape(shape), noisy.reshape(shape), denoised.reshape(shape)],
                       ["clean", "noisy (σ = 0.3)", "denoised"])
    _common.image_grid(os.path.join(out, "vae.png"), [clean.reshape(shape), recon.reshape(shape), samples.reshape(shape)],
                       ["input", "VAE reconstruction", "VAE samples from z ~ N(0, I)"])
    mse_noisy = float(((noisy_val.arrays[0] - x_val) ** 2).mean())
    with fastdl.no_grad():
        mse_denoised = float(((dae(fastdl.tensor(noisy_val.arrays[0])).sigmoid().numpy() - x_val) ** 2).mean())
    print(f"pixel MSE on validation: noisy {mse_noisy:.4f}, denoised {mse_denoised:.4f}")
    return _common.report(NAME, {"noisy_mse": mse_noisy, "denoised_mse": mse_denoised,
                                 "vae_val_loss": vae_history["val_loss"][-1]}, out)


def main(argv=None):
    args = _common.parse(__doc__, argv, epochs=60)
    return run(args.epochs, args.fast, args.seed, args.out, args.threads)


if __name__ == "__main__":
    main(sys.argv)
