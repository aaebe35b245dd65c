#!/usr/bin/env python3
"""Side by side: elbo against the PyTorch reference VAE, on the same machine, back to back.

Runs `elbo train` (784-400-20 MLP, ReLU, Bernoulli on grey pixels, Adam 1e-3, batch 128, seed 1) and
`../shared/bench/torch_vae_reference.py --mode MODE` alternately, `--repeats` times each, then prints per-epoch test
negative ELBO of both, examples/s of both (medians), and the ratio elbo / torch.

usage: python3 bench/compare_reference.py [--data ../shared/data/mnist] [--epochs 10] [--modes eager]
                                          [--repeats 1] [--threads 2]
Needs: a release build (cargo build --release) and `pip install torch numpy`.
"""
import argparse, csv, json, os, statistics, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(ROOT, '..', 'shared', 'bench', 'torch_vae_reference.py')


def run_elbo(args, out):
    command = [os.path.join(ROOT, 'target', 'release', 'elbo'), 'train', '--data', args.data, '--epochs',
               str(args.epochs), '--threads', str(args.threads), '--seed', '1', '--quiet', '--out', out]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, 'metrics.csv')) as f:
        rows = [r for r in csv.DictReader(f) if r['kind'] == 'epoch']
    test = [float(r['negative_elbo']) for r in rows if r['split'] == 'test']
    speed = [float(r['examples_per_second']) for r in rows if r['split'] == 'train']
    with open(os.path.join(out, 'summary.json')) as f:
        summary = json.load(f)
    return test, speed, summary['train_examples_per_second']


def run_torch(args, mode):
    command = [sys.executable, REFERENCE, '--data', args.data, '--epochs', str(args.epochs), '--mode', mode,
               '--threads', str(args.threads), '--seed', '1']
    lines = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()
    test = [float(l.split('test nelbo ')[1].split()[0]) for l in lines if l.startswith('epoch ')]
    speed = [float(l.split('ex/s ')[1]) for l in lines if l.startswith('epoch ')]
    return test, speed, json.loads(lines[-1])['train_examples_per_s']


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--data', default=os.path.join(ROOT, '..', 'shared', 'data', 'mnist'))
    ap.add_argument('--epochs', type=int, default=10)
    ap.add_argument('--modes', default='eager', help='comma-separated: eager,fused,compile')
    ap.add_argument('--repeats', type=int, default=1)
    ap.add_argument('--threads', type=int, default=2)
    args = ap.parse_args()
    results = {'elbo': []}
    modes = args.modes.split(',')
    for mode in modes:
        results['torch-' + mode] = []
    with tempfile.TemporaryDirectory() as scratch:
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
    print('| peer | train examples/s (median of %d) | elbo / peer |' % args.repeats)
    print('|---|---|---|')
    for name, speed in speeds.items():
        print(f'| {name} | {speed:,.0f} | {speeds["elbo"] / speed:.2f}x |')


if __name__ == '__main__':
    main()
