#!/usr/bin/env python3
"""Side by side: elbo's convolutional VAE against its PyTorch twin (bench/torch_conv_reference.py), same machine,
back to back, alternating.

Both train the disentanglement architecture (64x64 grey input, four 4x4 stride-2 convolutions of 32, 32, 64, 64
channels, dense 256, 10 latent dimensions, the mirrored decoder, Bernoulli logits, Adam 1e-3, batch 64) on the same
images: `--count` 64x64 sprites-like discs written to train.npy/test.npy. Prints the images/s of the last epoch of
each run, medians over `--repeats`, and the ratio elbo / torch for each PyTorch mode.
--model rgb32 trains the other row of the benchmark matrix instead: 32 x 32 RGB images (a disc of one random
colour on a background of another), elbo's preset for that size (two 4x4 stride-2 convolutions of 32 and 64
channels, dense 256, the mirrored decoder) with a Gaussian decoder and one learned log-variance
(`--likelihood gaussian --gaussian-variance shared`; the twin's `--likelihood gaussian-shared`).

usage: python3 bench/compare_conv.py [--model disc64|rgb32] [--count 3200] [--epochs 2] [--modes eager]
                                     [--repeats 2] [--threads 2] [--torch-isa native|avx2] [--tcvae 6]
--tcvae B trains both as beta-TCVAEs with total correlation weight B (elbo's `--objective tcvae --tc-beta B`).
--torch-isa avx2 caps PyTorch at AVX2 (bench/torch_isa.py); with ELBO_SIMD=avx2 in the environment both programs
run as on an AVX2-only CPU.
Needs: a release build (cargo build --release) and `pip install torch numpy`.
"""
import argparse, csv, json, os, statistics, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bench'))
from torch_isa import ISAS, torch_isa_env  # noqa: E402
TWIN = os.path.join(ROOT, 'bench', 'torch_conv_reference.py')


def discs(count, seed):
    """`count` 64x64 uint8 images of one filled disc each, at random places and sizes."""
    import numpy as np
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    centres, radii = rng.integers(10, 54, (count, 2)), rng.integers(4, 12, count)
    inside = ((yy[None] - centres[:, :1, None]) ** 2 + (xx[None] - centres[:, 1:, None]) ** 2) < radii[:, None, None] ** 2
    return (inside * 255).astype(np.uint8)


def coloured_discs(count, seed, side=32):
    """`count` side x side x 3 uint8 images: a disc of one random colour on a background of another."""
    import numpy as np
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    centres, radii = rng.integers(side // 6, side - side // 6, (count, 2)), rng.integers(side // 10, side // 4, count)
    inside = ((yy[None] - centres[:, :1, None]) ** 2 + (xx[None] - centres[:, 1:, None]) ** 2) < radii[:, None, None] ** 2
    disc, background = rng.integers(0, 256, (count, 1, 1, 3)), rng.integers(0, 256, (count, 1, 1, 3))
    return np.where(inside[..., None], disc, background).astype(np.uint8)


MODELS = {
    # name: (images, elbo's likelihood flags, the twin's likelihood flags)
    'disc64': (discs, [], []),
    'rgb32': (coloured_discs, ['--likelihood', 'gaussian', '--gaussian-variance', 'shared'],
              ['--likelihood', 'gaussian-shared']),
}


def run_elbo(args, data, out):
    command = [os.path.join(ROOT, 'target', 'release', 'elbo'), 'train', '--data', data, '--architecture', 'conv',
               '--latent-dim', '10', '--batch-size', '64', '--lr', '1e-3', '--epochs', str(args.epochs),
               '--threads', str(args.threads), '--seed', '1', '--quiet', '--out', out] + MODELS[args.model][1] + \
        (['--objective', 'tcvae', '--tc-beta', str(args.tcvae)] if args.tcvae is not None else [])
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, 'metrics.csv')) as f:
        rows = [r for r in csv.DictReader(f) if r['kind'] == 'epoch' and r['split'] == 'train']
    return float(rows[-1]['examples_per_second'])


def run_torch(args, data, mode):
    command = [sys.executable, TWIN, '--data', data, '--epochs', str(args.epochs), '--mode', mode,
               '--threads', str(args.threads), '--seed', '1'] + MODELS[args.model][2] + \
        (['--objective', 'tcvae', '--tc-beta', str(args.tcvae)] if args.tcvae is not None else [])
    env = torch_isa_env(args.torch_isa)
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(output.strip().splitlines()[-1])['train_examples_per_s']


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--model', default='disc64', choices=sorted(MODELS))
    ap.add_argument('--count', type=int, default=3200)
    ap.add_argument('--epochs', type=int, default=2)
    ap.add_argument('--modes', default='eager')
    ap.add_argument('--repeats', type=int, default=2)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--torch-isa', default='native', choices=ISAS, help="cap PyTorch's kernels (bench/torch_isa.py)")
    ap.add_argument('--tcvae', type=float, help='train both as beta-TCVAEs with this total correlation weight')
    args = ap.parse_args()
    capability = subprocess.run([sys.executable, '-c', 'import torch; print(torch.backends.cpu.get_cpu_capability())'],
                                capture_output=True, text=True, env=torch_isa_env(args.torch_isa)).stdout.strip()
    print(f"elbo: ELBO_SIMD={os.environ.get('ELBO_SIMD') or '(unset: widest)'}; PyTorch: --torch-isa "
          f"{args.torch_isa}, get_cpu_capability() = {capability}", flush=True)
    import numpy as np
    with tempfile.TemporaryDirectory() as scratch:
        data = os.path.join(scratch, 'discs')
        os.makedirs(data)
        images = MODELS[args.model][0]
        np.save(os.path.join(data, 'train.npy'), images(args.count, 1))
        np.save(os.path.join(data, 'test.npy'), images(max(args.count // 10, 64), 2))
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
