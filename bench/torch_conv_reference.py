#!/usr/bin/env python3
"""PyTorch twin of elbo's convolutional VAE (the disentanglement architecture), for side-by-side throughput.

Encoder: four 4x4 stride-2 convolutions (padding 1) of 32, 32, 64, 64 channels with ReLU, a 256-unit dense layer
(ReLU), and two linear heads (mu, log-variance). Decoder: dense 256 (ReLU), dense 64*4*4 (ReLU), then four 4x4
stride-2 transposed convolutions of 64, 32, 32 and C channels, ReLU between them, Bernoulli logits out. Loss per
example = binary cross-entropy from logits (sum over pixels) + closed-form KL; batch mean; one reparameterized
sample; Adam. These are the layers `elbo train --architecture conv` builds for 64 x 64 images; for smaller ones
(32 x 32) it has two convolutions of 32 and 64 channels, and so does this twin.
--likelihood gaussian-shared: a Gaussian decoder around the output with one learned log-variance (initialised at
0, as elbo's `--likelihood gaussian --gaussian-variance shared`): -log p(x|z) = 0.5 sum (log 2pi + log sigma^2 +
(x - m)^2 / sigma^2).
--objective tcvae: beta-TCVAE's loss instead (reconstruction + MI + --tc-beta x total correlation + dimension-wise
KL, minibatch-weighted sampling with the training set's size), as elbo's `--objective tcvae` and the MLP twin's
(bench/torch_matrix.py, whose KL part this script imports).

usage: python3 bench/torch_conv_reference.py --data DIR [--epochs 2] [--batch-size 64] [--latent-dim 10]
                                              [--lr 1e-3] [--mode eager|fused|compile] [--threads 2] [--seed 1]
                                              [--likelihood bernoulli|gaussian-shared]
                                              [--objective elbo|tcvae] [--tc-beta 6]
DIR holds train.npy (N x H x W or N x H x W x C, uint8 or float in [0, 1]). Prints one line per epoch
(`epoch E loss L ex/s S`) and a final JSON line. Needs: pip install torch numpy.
"""
import argparse, json, math, os, sys, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_matrix import tcvae_kl  # noqa: E402


class ConvVAE(nn.Module):
    def __init__(self, channels=1, side=64, latent_dim=10, widths=(32, 32, 64, 64), hidden=256):
        super().__init__()
        layers, previous = [], channels
        for width in widths:
            layers += [nn.Conv2d(previous, width, 4, 2, 1), nn.ReLU()]
            previous = width
        self.map_side = side // 2 ** len(widths)
        features = widths[-1] * self.map_side ** 2
        self.encoder = nn.Sequential(*layers, nn.Flatten(), nn.Linear(features, hidden), nn.ReLU())
        self.mu, self.log_var = nn.Linear(hidden, latent_dim), nn.Linear(hidden, latent_dim)
        self.to_grid = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, features), nn.ReLU())
        back, reversed_widths = [], list(reversed(widths)) + [channels]
        for index, (a, b) in enumerate(zip(reversed_widths, reversed_widths[1:])):
            back.append(nn.ConvTranspose2d(a, b, 4, 2, 1))
            if index + 2 < len(reversed_widths):
                back.append(nn.ReLU())
        self.decoder = nn.Sequential(*back)
        self.widths = widths

    def forward(self, x):
        h = self.encoder(x)
        mu, log_var = self.mu(h), self.log_var(h)
        z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)  # z = mu + sigma * eps, eps drawn outside
        grid = self.to_grid(z).view(-1, self.widths[-1], self.map_side, self.map_side)
        return self.decoder(grid), mu, log_var, z


def widths_for(side):
    """elbo's conv preset: the disentanglement widths from 64 pixels up, two layers below."""
    return (32, 32, 64, 64) if side >= 64 else (32, 64)


def loss_fn(output, x, posterior, decoder_log_var=None, tcvae=None):
    """The batch mean of reconstruction + KL; `tcvae` = (dataset size, tc_beta) takes beta-TCVAE's KL part."""
    mu, log_var, z = posterior
    if decoder_log_var is None:
        reconstruction = F.binary_cross_entropy_with_logits(output, x, reduction='none').flatten(1).sum(1)
    else:  # 0.5 * sum(log 2pi + log sigma^2 + (x - m)^2 / sigma^2)
        terms = math.log(2 * math.pi) + decoder_log_var + (x - output).pow(2) * torch.exp(-decoder_log_var)
        reconstruction = 0.5 * terms.flatten(1).sum(1)
    if tcvae is not None:
        return reconstruction.mean() + tcvae_kl(mu, log_var, z, *tcvae)
    kl = 0.5 * (log_var.exp() + mu.pow(2) - 1 - log_var).sum(1)
    return (reconstruction + kl).mean()


def load(directory):
    data = np.load(os.path.join(directory, 'train.npy'))
    data = data.astype(np.float32) / 255.0 if data.dtype == np.uint8 else data.astype(np.float32)
    if data.ndim == 3:
        data = data[:, None]
    else:
        data = data.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(data))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--data', required=True)
    ap.add_argument('--epochs', type=int, default=2)
    ap.add_argument('--batch-size', type=int, default=64)
    ap.add_argument('--latent-dim', type=int, default=10)
    ap.add_argument('--lr', type=float, default=1e-3)
    ap.add_argument('--mode', default='eager', choices=['eager', 'fused', 'compile'])
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--likelihood', default='bernoulli', choices=['bernoulli', 'gaussian-shared'])
    ap.add_argument('--objective', default='elbo', choices=['elbo', 'tcvae'])
    ap.add_argument('--tc-beta', type=float, default=6.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = load(args.data)
    model = ConvVAE(channels=data.shape[1], side=data.shape[2], latent_dim=args.latent_dim,
                    widths=widths_for(data.shape[2]))
    parameters = list(model.parameters())
    decoder_log_var = None
    if args.likelihood == 'gaussian-shared':
        decoder_log_var = nn.Parameter(torch.zeros(1))
        parameters.append(decoder_log_var)
    optimizer = torch.optim.Adam(parameters, lr=args.lr, fused=args.mode == 'fused' or None)
    step = torch.compile(model) if args.mode == 'compile' else model
    tcvae = (len(data), args.tc_beta) if args.objective == 'tcvae' else None
    speeds = []
    for epoch in range(1, args.epochs + 1):
        order, total, started = torch.randperm(len(data)), 0.0, time.perf_counter()
        for start in range(0, len(data), args.batch_size):
            x = data[order[start:start + args.batch_size]]
            output, *posterior = step(x)
            loss = loss_fn(output, x, posterior, decoder_log_var, tcvae)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(x)
        seconds = time.perf_counter() - started
        speeds.append(len(data) / seconds)
        print(f'epoch {epoch} loss {total / len(data):.3f} ex/s {speeds[-1]:.1f}', flush=True)
    print(json.dumps({'mode': args.mode, 'train_examples_per_s': speeds[-1], 'epochs': args.epochs}))


if __name__ == '__main__':
    main()
