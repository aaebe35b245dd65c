#!/usr/bin/env python3
"""Checks that an AutoencoderKL elbo trained and saved in diffusers' layout loads in diffusers and gives elbo's
outputs.

1. AutoencoderKL.from_pretrained(MODEL_DIR) must load with no missing, unexpected or mismatched keys.
2. The images in --images (png, jpg, jpeg; sorted by file name; all of one size) are read as pixels p in [0, 1],
   given as 2p - 1, encoded to the posterior mean, and scaled to (mean - shift_factor) * scaling_factor (a shift_factor
   of None counts as 0) unless --unscaled; the result must match --elbo-latents (N x C x h x w float32 .npy, from
   `elbo encode --run MODEL_DIR --data DIR --out FILE.npy`) to --tolerance (max abs difference).
3. diffusers decodes elbo's latents (unscaled first, z / scaling_factor + shift_factor, unless --unscaled) to pixels
   clamp((x + 1) / 2); with --elbo-decoded (N x H x W x C in [0, 1], from `elbo decode --run MODEL_DIR --latents
   FILE.npy --out DIR/`, DIR/decoded.npy) they must match it to --decoded-tolerance (default: --tolerance).

Prints one line per check and exits 1 if any fails.

Usage: python3 scripts/check_diffusers_load.py MODEL_DIR --images DIR --elbo-latents FILE.npy [--unscaled]
           [--tolerance 1e-4] [--elbo-decoded FILE.npy] [--decoded-tolerance T]
"""

import argparse
import os
import sys

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

EXTENSIONS = (".png", ".jpg", ".jpeg")


def read_images(folder):
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(EXTENSIONS))
    if not names:
        sys.exit(f"no png/jpg/jpeg images in {folder}")
    pixels = [np.asarray(Image.open(os.path.join(folder, n)).convert("RGB"), np.float32) / 255 for n in names]
    if len({p.shape for p in pixels}) != 1:
        sys.exit(f"the images in {folder} differ in size: {sorted({p.shape for p in pixels})}")
    return names, torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)


def compare(what, ours, theirs, tolerance):
    if ours.shape != theirs.shape:
        print(f"FAIL {what}: shape {list(theirs.shape)} from elbo, {list(ours.shape)} from diffusers")
        return False
    diff = float(np.abs(ours.astype(np.float64) - theirs.astype(np.float64)).max())
    ok = diff <= tolerance
    print(f"{'ok  ' if ok else 'FAIL'} {what}: max abs difference {diff:.3g} (tolerance {tolerance:g}), "
          f"shape {list(ours.shape)}")
    return ok


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir")
    p.add_argument("--images", required=True, help="folder of the images elbo encoded")
    p.add_argument("--elbo-latents", required=True, help="N x C x h x w float32 .npy from elbo encode")
    p.add_argument("--elbo-decoded", help="N x H x W x C .npy in [0, 1] from elbo decode")
    p.add_argument("--unscaled", action="store_true", help="latents are the raw posterior mean")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--decoded-tolerance", type=float, help="for the decoded pixels (default: --tolerance)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    try:
        model, info = AutoencoderKL.from_pretrained(args.model_dir, torch_dtype=torch.float32,
                                                    output_loading_info=True)
    except Exception as error:  # diffusers raises on some key mismatches rather than listing them
        print(f"FAIL load: {type(error).__name__}: {error}")
        return 1
    model.eval()
    problems = {k: v for k, v in info.items() if v}
    ok = not problems
    print(f"{'ok  ' if ok else 'FAIL'} load {args.model_dir}: "
          + ("no missing, unexpected or mismatched keys" if ok else str(problems)))

    names, images = read_images(args.images)
    scale = model.config.scaling_factor
    shift = model.config.shift_factor or 0.0
    with torch.no_grad():
        mean = torch.cat([model.encode(2 * x[None] - 1).latent_dist.mean for x in images])
        latents = mean if args.unscaled else (mean - shift) * scale
    elbo_latents = np.load(args.elbo_latents)
    print(f"     {len(names)} images {names[0]} .. {names[-1]}, {list(images.shape[2:])} pixels; "
          f"{'unscaled' if args.unscaled else f'scaling_factor {scale:g}, shift_factor {shift:g}'}")
    ok &= compare("latents", latents.numpy(), elbo_latents, args.tolerance)

    z = torch.from_numpy(elbo_latents.astype(np.float32))
    if not args.unscaled:
        z = z / scale + shift
    with torch.no_grad():
        decoded = torch.cat([model.decode(zi[None]).sample for zi in z])
    decoded = ((decoded + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    if args.elbo_decoded:
        tolerance = args.tolerance if args.decoded_tolerance is None else args.decoded_tolerance
        ok &= compare("decoded", decoded, np.load(args.elbo_decoded), tolerance)
    else:
        print(f"     decoded elbo's latents to {list(decoded.shape)} (no --elbo-decoded to compare)")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
