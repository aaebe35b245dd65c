#!/usr/bin/env python3
"""Writes tests/fixtures/lpips/expected.safetensors: LPIPS distances and one image gradient computed by the `lpips`
package itself (0.1.4, net='vgg', version 0.1), on a network whose weights follow a formula that the Rust test
writes again (`lpips_weight_value` in tests/lpips.rs), so the fixture holds no network, only images and figures.

    pip install lpips==0.1.4 torchvision scipy safetensors   # pnet_rand=True: nothing is downloaded
    python3 scripts/make_lpips_fixture.py

Weights: the tensor number t (in the order of NAMES) and the value index i (row-major) give
    conv weights  2 / sqrt(fan_in) * sin(0.37 i + 1.3 t)      (He scale: the variance of A sin is A^2 / 2)
    conv biases   0.01 * cos(0.11 i + 1.3 t)
    lin weights   0.05 * (1 + sin(0.29 i + 1.3 t))             (non-negative, as trained LPIPS lins are)
each computed in float64 and rounded to float32. Images (3 pairs, 3 x 32 x 32, in [-1, 1]):
    x[b, c, h, w] = 0.9 sin(0.21 h + 0.17 w + 0.5 c + 0.9 b)
    y = clip(x + 0.3 sin(1.3 h - 0.7 w + c + 2.1 b) * (b + 1) / 3, -1, 1)
The fixture: x, y, distance [3] = LPIPS(x, y), gradient [3, 3, 32, 32] = d sum(LPIPS(x, y)) / dy.
"""
import pathlib

import numpy as np
import torch
from safetensors.torch import save_file

import lpips

CONVS = [('net.slice1.0', 3, 64), ('net.slice1.2', 64, 64), ('net.slice2.5', 64, 128), ('net.slice2.7', 128, 128),
         ('net.slice3.10', 128, 256), ('net.slice3.12', 256, 256), ('net.slice3.14', 256, 256),
         ('net.slice4.17', 256, 512), ('net.slice4.19', 512, 512), ('net.slice4.21', 512, 512),
         ('net.slice5.24', 512, 512), ('net.slice5.26', 512, 512), ('net.slice5.28', 512, 512)]
LINS = [(f'lin{k}.model.1', c) for k, c in enumerate([64, 128, 256, 512, 512])]


def formula(t, shape, kind, fan_in=1):
    i = np.arange(int(np.prod(shape)), dtype=np.float64)
    if kind == 'weight':
        values = 2.0 / np.sqrt(fan_in) * np.sin(0.37 * i + 1.3 * t)
    elif kind == 'bias':
        values = 0.01 * np.cos(0.11 * i + 1.3 * t)
    else:
        values = 0.05 * (1.0 + np.sin(0.29 * i + 1.3 * t))
    return torch.from_numpy(values.astype(np.float32).reshape(shape))


def main():
    model = lpips.LPIPS(net='vgg', version='0.1', pretrained=True, pnet_rand=True, verbose=False).eval()
    state = model.state_dict()
    t = 0
    for name, cin, cout in CONVS:
        state[name + '.weight'] = formula(t, (cout, cin, 3, 3), 'weight', cin * 9)
        state[name + '.bias'] = formula(t + 1, (cout,), 'bias')
        t += 2
    for name, c in LINS:
        state[name + '.weight'] = formula(t, (1, c, 1, 1), 'lin')
        state[name.replace('lin', 'lins.') + '.weight'] = state[name + '.weight']
        t += 1
    model.load_state_dict(state)
    b, c, h, w = np.meshgrid(np.arange(3), np.arange(3), np.arange(32), np.arange(32), indexing='ij')
    x = 0.9 * np.sin(0.21 * h + 0.17 * w + 0.5 * c + 0.9 * b)
    y = np.clip(x + 0.3 * np.sin(1.3 * h - 0.7 * w + c + 2.1 * b) * (b + 1) / 3, -1, 1)
    x = torch.from_numpy(x.astype(np.float32))
    y = torch.from_numpy(y.astype(np.float32)).requires_grad_(True)
    distance = model(x, y).flatten()
    distance.sum().backward()
    out = pathlib.Path(__file__).resolve().parent.parent / 'tests/fixtures/lpips/expected.safetensors'
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({'x': x, 'y': y.detach(), 'distance': distance.detach(), 'gradient': y.grad}, str(out))
    print(out, distance.tolist(), float(y.grad.abs().mean()))


if __name__ == '__main__':
    main()
