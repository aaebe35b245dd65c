#!/usr/bin/env python3
"""Side by side: elbo against the PyTorch reference VAE, on the same machine, back to back.

Runs `elbo train` (784-400-20 MLP, ReLU, Bernoulli on grey pixels, Adam 1e-3, batch 128, seed 1) and
`../shared/bench/torch_vae_reference.py --mode MODE` alternately, `--repeats` times each, then prints per-epoch test
negative ELBO of both, examples/s of both (medians and each run), and the ratio elbo / torch (of the medians, and
run by run: each elbo run against the torch run right after it).

usage: python3 bench/compare_reference.py [--data ../shared/data/mnist] [--epochs 10] [--modes eager]
                                          [--repeats 1] [--threads 2] [--synthetic] [--elbo PATH]
--synthetic trains both on 60,000 uniform random examples (throughput only; elbo reads them from NPY files).
Peak resident memory (RSS) of each process is measured too.
Needs: a release build (cargo build --release) and `pip install torch numpy`.
"""
import argparse, csv, json, os, statistics, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(ROOT, '..', 'shared', 'bench', 'torch_vae_reference.py')


def run_measured(command, capture):
    """Runs a command; returns its standard output and its own peak resident memory (MiB)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE if capture else subprocess.DEVNULL, text=True)
    output = process.stdout.read() if capture else ''
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f'{command[0]} failed with status {status}')
    return output, usage.ru_maxrss / 1024


def synthetic_dir(scratch):
    import numpy as np
    directory = os.path.join(scratch, 'synthetic')
    os.makedirs(directory)
    rng = np.random.default_rng(1)
    np.save(os.path.join(directory, 'train.npy'), rng.random((60000, 784), dtype=np.float32))
    np.save(os.path.join(directory, 'test.npy'), rng.random((10000, 784), dtype=np.float32))
    return directory


def run_elbo(args, out):
    command = [args.elbo, 'train', '--data', args.data, '--epochs',
               str(args.epochs), '--threads', str(args.threads), '--seed', '1', '--quiet', '--out', out]
    _, rss = run_measured(command, capture=False)
    with open(os.path.join(out, 'metrics.csv')) as f:
        rows = [r for r in csv.DictReader(f) if r['kind'] == 'epoch']
    test = [float(r['negative_elbo']) for r in rows if r['split'] == 'test']
    speed = [float(r['examples_per_second']) for r in rows if r['split'] == 'train']
    with open(os.path.join(out, 'summary.json')) as f:
        summary = json.load(f)
    return test, speed, summary['train_examples_per_second'], rss


def run_torch(args, mode):
    command = [sys.executable, REFERENCE, '--data', args.data, '--epochs', str(args.epochs), '--mode', mode,
               '--threads', str(args.threads), '--seed', '1'] + (['--synthetic'] if args.synthetic else [])
    output, rss = run_measured(command, capture=True)
    lines = output.strip().splitlines()
    test = [float(l.split('test nelbo ')[1].split()[0]) for l in lines if l.startswith('epoch ')]
    speed = [float(l.split('ex/s ')[1]) for l in lines if l.startswith('epoch ')]
    return test, speed, json.loads(lines[-1])['train_examples_per_s'], rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--data', default=os.path.join(ROOT, '..', 'shared', 'data', 'mnist'))
    ap.add_argument('--epochs', type=int, default=10)
    ap.add_argument('--modes', default='eager', help='comma-separated: eager,fused,compile')
    ap.add_argument('--repeats', type=int, default=1)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--synthetic', action='store_true')
    ap.add_argument('--elbo', default=os.path.join(ROOT, 'target', 'release', 'elbo'),
                    help='the elbo binary (e.g. a build with --features openblas)')
    args = ap.parse_args()
    results = {'elbo': []}
    modes = args.modes.split(',')
    for mode in modes:
        results['torch-' + mode] = []
    with tempfile.TemporaryDirectory() as scratch:
        if args.synthetic:
            args.data = synthetic_dir(scratch)
        for repeat in range(args.repeats):
            results['elbo'].append(run_elbo(args, os.path.join(scratch, f'run{repeat}')))
            for mode in modes:
                results['torch-' + mode].append(run_torch(args, mode))
    print(f'| epoch | ' + ' | '.join(f'{name} test -ELBO' for name in results) + ' |')
    print('|---' * (len(results) + 1) + '|')
    for epoch in range(args.epochs):
        cells = [f'{statistics.median(r[0][epoch] for r in runs):.2f}' for runs in results.values()]
        print(f'| {epoch + 1} | ' + ' | '.join(cells) + ' |')
    speeds = {name: statistics.median(r[2] for r in runs) for name, runs in results.items()}
    print()
    print('| peer | train examples/s (median of %d) | elbo / peer | each run | elbo / peer, run by run | peak RSS, MiB |'
          % args.repeats)
    print('|---|---|---|---|---|---|')
    for name, runs in results.items():
        each = ', '.join(f'{r[2]:,.0f}' for r in runs)
        paired = ', '.join(f'{mine[2] / theirs[2]:.2f}x' for mine, theirs in zip(results['elbo'], runs))
        print(f'| {name} | {speeds[name]:,.0f} | {speeds["elbo"] / speeds[name]:.2f}x | {each} | {paired} | '
              f'{max(r[3] for r in runs):,.0f} |')

if __name__ == '__main__':
    main()
