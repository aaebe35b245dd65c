#!/usr/bin/env python3
"""PyTorch twin of elbo's AutoencoderKL trainer: trains a diffusers AutoencoderKL on random crops of photos with the
LDM recipe (latent-diffusion's LPIPSWithDiscriminator; perceptual weight 0 unless --lpips), then reports speed and
quality.

Model: "KL-f4" by default, block_out_channels 64, 128, 128, one ResNet per block, 4 latent channels, attention in
the mid block (latent 4 x H/4 x W/4).

Data: training examples are fresh random --crop windows (uniform position, random horizontal flip) of the photos in
--photos, less --held-out, drawn round-robin in an order reshuffled every round; pixels p in [0, 1] go in as 2p - 1.
Evaluation uses --eval-crops (an [N, 3, S, S] .npy, uint8 in [0, 255] or float32 in [0, 1]; elbo writes one), or
else --eval-per-photo seeded crops of side --eval-size from each held-out photo (saved by --save-eval-crops as uint8).

Loss per step, batch B (LDM):
  posterior = encode(x); z = posterior.sample(); x_hat = decode(z)
  nll_loss = sum(|x - x_hat| / exp(logvar) + logvar) / B   (one learned scalar logvar, 0 at the start; LDM's own
             optimiser leaves it out, so it stays 0 there: --fixed-logvar does that)
             with --lpips FILE: |x - x_hat| + --perceptual-weight * LPIPS(x, x_hat) in its place (LDM's rec_loss),
             LPIPS the `lpips` package's VGG network (pip install lpips torchvision) with the weights of FILE
             (elbo's --lpips file, as scripts/export_lpips.py writes it)
  kl_loss  = sum(posterior.kl()) / B
  loss     = nll_loss + kl_weight * kl_loss + d_weight * factor * g_loss
with, from --discriminator-start on (factor 1, else 0 and no discriminator at all), taming's NLayerDiscriminator
(3 layers, 64 filters, BatchNorm, weights_init), g_loss = -mean(D(x_hat)) and the adaptive weight
d_weight = ||d nll_loss / d W|| / (||d g_loss / d W|| + 1e-4), clamped to [0, 1e4], detached, times
--discriminator-weight, W the decoder's conv_out weight. The discriminator's step (its own Adam) then takes
hinge 0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat)))) or vanilla 0.5 * (mean(softplus(-D(x))) +
mean(softplus(D(x_hat)))) on the same batch and the same x_hat (LDM runs the autoencoder a second time for it).
Both optimisers: Adam, --lr, betas (0.5, 0.9).

Metrics on the evaluation crops, posterior mean, no sampling: PSNR (pixels clamp((x + 1) / 2), 10 log10(1 / MSE),
mean over images), SSIM (Gaussian window 11 x 11, sigma 1.5, valid positions only, C1 = 0.01^2, C2 = 0.03^2, mean
over channels then images), rate (mean KL in bits per image pixel and per latent value), latent shape and the
ratio of input values to latent values, 3 H W / (C h w).

Output: one JSON line on stdout at the end (settings, images/s of the training steps after --warmup steps, not
counting evaluation, peak RSS, final metrics and those of every --eval-every); evaluations along the way also go to
stderr. --log FILE.csv: one row per step (step, nll_loss, l1 = mean |x - x_hat|, kl = kl_loss, logvar, g_loss,
d_loss, d_weight (empty before the discriminator starts), seconds = that step's wall time).
--save DIR: the trained model by save_pretrained (safetensors).

Usage: python3 bench/autoencoder_kl_train.py --photos /work/shared/data/photos --held-out astronaut.png \
           [--steps 1000] [--threads 2] [--batch 16] [--crop 64] [--discriminator-start 500] \
           [--eval-crops FILE.npy | --save-eval-crops FILE.npy] [--log FILE.csv] [--save DIR]
"""

import argparse
import csv
import json
import math
import os
import random
import resource
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderKL
from PIL import Image

EXTENSIONS = (".png", ".jpg", ".jpeg")


def load_photos(folder, held_out):
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(EXTENSIONS))
    missing = set(held_out) - set(names)
    if missing:
        sys.exit(f"held-out photos not in {folder}: {sorted(missing)}")
    load = lambda n: np.asarray(Image.open(os.path.join(folder, n)).convert("RGB"))  # H x W x 3 uint8
    train = {n: load(n) for n in names if n not in held_out}
    test = {n: load(n) for n in names if n in held_out}
    return train, test


class Crops:
    """Random crop windows with a random horizontal flip, photos round-robin in a freshly shuffled order."""

    def __init__(self, photos, crop, seed):
        self.photos, self.crop, self.rng, self.order = list(photos.values()), crop, random.Random(seed), []
        for photo in self.photos:
            if min(photo.shape[:2]) < crop:
                sys.exit(f"a photo of {photo.shape[1]} x {photo.shape[0]} is smaller than the crop")

    def batch(self, size):
        out = np.empty((size, self.crop, self.crop, 3), np.uint8)
        for i in range(size):
            if not self.order:
                self.order = list(range(len(self.photos)))
                self.rng.shuffle(self.order)
            photo = self.photos[self.order.pop()]
            top = self.rng.randint(0, photo.shape[0] - self.crop)
            left = self.rng.randint(0, photo.shape[1] - self.crop)
            window = photo[top:top + self.crop, left:left + self.crop]
            out[i] = window[:, ::-1] if self.rng.random() < 0.5 else window
        return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255


def eval_crops(photos, size, per_photo, seed):
    rng = np.random.default_rng(seed)
    crops = []
    for photo in photos.values():
        for _ in range(per_photo):
            top = rng.integers(0, photo.shape[0] - size + 1)
            left = rng.integers(0, photo.shape[1] - size + 1)
            crops.append(photo[top:top + size, left:left + size].transpose(2, 0, 1))
    return np.stack(crops)


def as_unit(crops):
    if crops.dtype == np.uint8:
        return torch.from_numpy(crops).float() / 255
    return torch.from_numpy(crops.astype(np.float32))


class NLayerDiscriminator(nn.Sequential):
    """taming-transformers' PatchGAN discriminator (BatchNorm, no bias before it), with its weights_init."""

    def __init__(self, input_nc=3, ndf=64, n_layers=3):
        layers = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False), nn.BatchNorm2d(ndf * mult),
                       nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        super().__init__(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)


def discriminator_loss(kind, real, fake):
    if kind == "hinge":
        return 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())
    return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())


def ssim(a, b):
    """Mean SSIM of [N, C, H, W] images in [0, 1]: Gaussian 11 x 11 window, sigma 1.5, valid positions."""
    a, b = a.double(), b.double()
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5 ** 2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(a.shape[1], 1, 11, 11)
    blur = lambda t: F.conv2d(t, window, groups=a.shape[1])
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean(dim=(2, 3)).mean(dim=1).mean().item()


@torch.no_grad()
def evaluate(model, crops, batch):
    model.eval()
    psnr, ssims, kl, count = [], [], [], len(crops)
    for i in range(0, count, batch):
        x = crops[i:i + batch]
        posterior = model.encode(2 * x - 1).latent_dist
        x_hat = ((model.decode(posterior.mean).sample + 1) / 2).clamp(0, 1)
        mse = ((x_hat - x) ** 2).mean(dim=(1, 2, 3)).double()
        psnr += (10 * torch.log10(1 / mse)).tolist()
        ssims.append(ssim(x_hat, x) * len(x))
        kl += posterior.kl().tolist()
    model.train()
    c, h, w = posterior.mean.shape[1:]
    height, width = crops.shape[2:]
    bits = float(np.mean(kl)) / math.log(2)
    return {"psnr": float(np.mean(psnr)), "ssim": sum(ssims) / count, "kl_nats": float(np.mean(kl)),
            "bits_per_pixel": bits / (height * width), "bits_per_latent_value": bits / (c * h * w),
            "latent_shape": [c, h, w], "input_to_latent_ratio": 3 * height * width / (c * h * w),
            "eval_images": count, "eval_side": [height, width]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", required=True)
    p.add_argument("--held-out", default="", help="comma-separated file names left out of training")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--kl-weight", type=float, default=1e-6)
    p.add_argument("--fixed-logvar", action="store_true", help="keep logvar at 0 (LDM's optimiser leaves it out)")
    p.add_argument("--discriminator-start", type=int, help="step the discriminator starts at (default: never)")
    p.add_argument("--discriminator-weight", type=float, default=0.5)
    p.add_argument("--discriminator-loss", choices=["hinge", "vanilla"], default="hinge")
    p.add_argument("--lpips", help="LPIPS weights (safetensors): add LDM's perceptual term")
    p.add_argument("--perceptual-weight", type=float, default=1.0)
    p.add_argument("--channels", default="64,128,128", help="block_out_channels")
    p.add_argument("--layers", type=int, default=1, help="layers_per_block")
    p.add_argument("--latent", type=int, default=4, help="latent_channels")
    p.add_argument("--groups", type=int, default=32, help="norm_num_groups")
    p.add_argument("--no-attention", action="store_true", help="mid_block_add_attention=False")
    p.add_argument("--eval-crops", help="[N, 3, S, S] .npy (uint8 in [0, 255] or float32 in [0, 1])")
    p.add_argument("--save-eval-crops", help="write the seeded held-out crops here (uint8 .npy)")
    p.add_argument("--eval-size", type=int, default=128)
    p.add_argument("--eval-per-photo", type=int, default=8)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--warmup", type=int, default=3, help="first steps left out of images/s")
    p.add_argument("--log", help="per-step CSV")
    p.add_argument("--save", help="save_pretrained directory for the trained model")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    held_out = [n for n in args.held_out.split(",") if n]
    train, test = load_photos(args.photos, held_out)
    data = Crops(train, args.crop, args.seed)
    if args.eval_crops:
        crops = np.load(args.eval_crops)
    elif test:
        crops = eval_crops(test, args.eval_size, args.eval_per_photo, args.seed)
    else:
        crops = None
    if crops is not None and args.save_eval_crops:
        np.save(args.save_eval_crops, crops)
    crops = None if crops is None else as_unit(crops)

    channels = [int(c) for c in args.channels.split(",")]
    model = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=channels,
                          layers_per_block=args.layers, latent_channels=args.latent, norm_num_groups=args.groups,
                          down_block_types=["DownEncoderBlock2D"] * len(channels),
                          up_block_types=["UpDecoderBlock2D"] * len(channels),
                          mid_block_add_attention=not args.no_attention, sample_size=args.crop)
    model.train()
    logvar = nn.Parameter(torch.zeros(()), requires_grad=not args.fixed_logvar)
    params = list(model.parameters()) + ([] if args.fixed_logvar else [logvar])
    optimizer = torch.optim.Adam(params, lr=args.lr, betas=(0.5, 0.9))
    start = args.discriminator_start
    if start is not None:
        disc = NLayerDiscriminator().train()
        disc_optimizer = torch.optim.Adam(disc.parameters(), lr=args.lr, betas=(0.5, 0.9))
    last_layer = model.decoder.conv_out.weight
    perceptual = None
    if args.lpips:
        import lpips
        from safetensors.torch import load_file
        perceptual = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False).eval()
        missing = perceptual.load_state_dict(load_file(args.lpips), strict=False).missing_keys
        # the scaling layer's constants are buffers of the package's own; lins.k is another name of lin k
        if any(not key.startswith(("scaling_layer.", "lins.")) for key in missing):
            raise SystemExit(f"{args.lpips}: missing LPIPS tensors {missing}")
        for parameter in perceptual.parameters():
            parameter.requires_grad_(False)

    log = open(args.log, "w", newline="") if args.log else None
    writer = csv.writer(log) if log else None
    if writer:
        writer.writerow(["step", "nll_loss", "l1", "kl", "logvar", "g_loss", "d_loss", "d_weight", "seconds"])
    evals, timed, timed_images = [], 0.0, 0
    for step in range(args.steps):
        began = time.perf_counter()
        x = 2 * data.batch(args.batch) - 1
        posterior = model.encode(x).latent_dist
        x_hat = model.decode(posterior.sample()).sample
        rec = l1 = (x - x_hat).abs()
        if perceptual is not None:
            rec = rec + args.perceptual_weight * perceptual(x.contiguous(), x_hat.contiguous())
        nll_loss = (rec / torch.exp(logvar) + logvar).sum() / args.batch
        kl_loss = posterior.kl().sum() / args.batch
        loss = nll_loss + args.kl_weight * kl_loss
        g_loss = d_loss = d_weight = None
        if start is not None and step >= start:
            g_loss = -disc(x_hat).mean()
            nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
            g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
            d_weight = (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0, 1e4).detach() * args.discriminator_weight
            loss = loss + d_weight * g_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if g_loss is not None:
            disc_optimizer.zero_grad(set_to_none=True)
            d_loss = discriminator_loss(args.discriminator_loss, disc(x), disc(x_hat.detach()))
            d_loss.backward()
            disc_optimizer.step()
        seconds = time.perf_counter() - began
        if step >= args.warmup:
            timed, timed_images = timed + seconds, timed_images + args.batch
        if writer:
            value = lambda t: "" if t is None else f"{t.item():.6g}"
            writer.writerow([step + 1, f"{nll_loss.item():.6g}", f"{l1.mean().item():.6g}",
                             f"{kl_loss.item():.6g}", f"{logvar.item():.6g}", value(g_loss), value(d_loss),
                             value(d_weight), f"{seconds:.4f}"])
        if args.eval_every and crops is not None and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            evals.append(dict(step=step + 1, **evaluate(model, crops, args.batch)))
            print(json.dumps(evals[-1]), file=sys.stderr, flush=True)
    if log:
        log.close()

    result = {"impl": "pytorch", "settings": vars(args), "torch": torch.__version__,
              "parameters": sum(p.numel() for p in model.parameters()),
              "images_per_s": timed_images / timed if timed else None, "timed_steps": args.steps - args.warmup,
              "final": {"nll_loss": nll_loss.item(), "l1": l1.mean().item(), "kl": kl_loss.item(),
                        "logvar": logvar.item()}}
    if crops is not None:
        result["eval"] = dict(step=args.steps, **evaluate(model, crops, args.batch))
        result["evals"] = evals
    if args.save:
        model.save_pretrained(args.save, safe_serialization=True)
    result["peak_rss"] = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} kB"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
