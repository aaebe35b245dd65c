#!/usr/bin/env python3
"""Side by side: elbo's convolutional VAE against its PyTorch twin (bench/torch_conv_reference.py), same machine,
back to back, alternating.

Both train the disentanglement architecture (64x64 grey input, four 4x4 stride-2 convolutions of 32, 32, 64, 64
channels, dense 256, 10 latent dimensions, the mirrored decoder, Bernoulli logits, Adam 1e-3, batch 64) on the same
images: `--count` 64x64 sprites-like discs written to train.npy/test.npy. Prints the images/s of the last epoch of
each run, medians over `--repeats`, and the ratio elbo / torch for each PyTorch mode.

usage: python3 bench/compare_conv.py [--count 3200] [--epochs 2] [--modes eager] [--repeats 2] [--threads 2]
Needs: a release build (cargo build --release) and `pip install torch numpy`.
"""
import argparse, csv, json, os, statistics, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWIN = os.path.join(ROOT, 'bench', 'torch_conv_reference.py')


def discs(count, seed):
    """`count` 64x64 uint8 images of one filled disc each, at random places and sizes."""
    import numpy as np
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    centres, radii = rng.integers(10, 54, (count, 2)), rng.integers(4, 12, count)
    inside = ((yy[None] - centres[:, :1, None]) ** 2 + (xx[None] - centres[:, 1:, None]) ** 2) < radii[:, None, None] ** 2
    return (inside * 255).astype(np.uint8)


def run_elbo(args, data, out):
    command = [os.path.join(ROOT, 'target', 'release', 'elbo'), 'train', '--data', data, '--architecture', 'conv',
               '--latent-dim', '10', '--batch-size', '64', '--lr', '1e-3', '--epochs', str(args.epochs),
               '--threads', str(args.threads), '--seed', '1', '--quiet', '--out', out]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, 'metrics.csv')) as f:
        rows = [r for r in csv.DictReader(f) if r['kind'] == 'epoch' and r['split'] == 'train']
    return float(rows[-1]['examples_per_second'])


def run_torch(args, data, mode):
    command = [sys.executable, TWIN, '--data', data, '--epochs', str(args.epochs), '--mode', mode,
               '--threads', str(args.threads), '--seed', '1']
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])['train_examples_per_s']


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--count', type=int, default=3200)
    ap.add_argument('--epochs', type=int, default=2)
    ap.add_argument('--modes', default='eager')
    ap.add_argument('--repeats', type=int, default=2)
    ap.add_argument('--threads', type=int, default=2)
    args = ap.parse_args()
    import numpy as np
    with tempfile.TemporaryDirectory() as scratch:
        data = os.path.join(scratch, 'discs')
        os.makedirs(data)
        np.save(os.path.join(data, 'train.npy'), discs(args.count, 1))
        np.save(os.path.join(data, 'test.npy'), discs(max(args.count // 10, 64), 2))
        speeds = {'elbo': []}
        modes = args.modes.split(',')
        for repeat in range(args.repeats):
            speeds['elbo'].append(run_elbo(args, data, os.path.join(scratch, f'elbo-{repeat}')))
            for mode in modes:
                speeds.setdefault(mode, []).append(run_torch(args, data, mode))
            print('repeat', repeat + 1, {k: round(v[-1], 1) for k, v in speeds.items()}, flush=True)
        elbo = statistics.median(speeds['elbo'])
        print(f'elbo: {elbo:.1f} images/s (median of {args.repeats}, last epoch of {args.epochs})')
        for mode in modes:
            torch_speed = statistics.median(speeds[mode])
            print(f'torch {mode}: {torch_speed:.1f} images/s; elbo / torch {mode} = {elbo / torch_speed:.2f}')


if __name__ == '__main__':
    main()
