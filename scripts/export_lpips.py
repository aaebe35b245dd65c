#!/usr/bin/env python3
"""Saves the LPIPS network (Zhang et al. 2018, VGG16 trunk, version 0.1: the perceptual term of latent diffusion's
autoencoder loss) as one safetensors file for `elbo train --lpips FILE` and `elbo eval --lpips FILE`.

elbo downloads nothing; this script runs on a machine of yours that can: the `lpips` package ships its five linear
layers, and torchvision downloads the ImageNet VGG16 weights the first time.

    pip install lpips torchvision safetensors
    python3 scripts/export_lpips.py lpips_vgg.safetensors

The names are the `lpips` package's own (`net.slice1.0.weight`, ..., `lin0.model.1.weight`), which is also the
layout of taming-transformers' LPIPS, so a state dict saved from either loads.
"""
import sys

import lpips
from safetensors.torch import save_file


def main():
    if len(sys.argv) != 2:
        raise SystemExit('usage: export_lpips.py OUT.safetensors')
    model = lpips.LPIPS(net='vgg', version='0.1', verbose=False).eval()
    tensors = {name: value.detach().float().contiguous() for name, value in model.state_dict().items()
               if name.startswith(('net.', 'lin'))}
    save_file(tensors, sys.argv[1])
    print(f'wrote {len(tensors)} tensors to {sys.argv[1]}')


if __name__ == '__main__':
    main()
