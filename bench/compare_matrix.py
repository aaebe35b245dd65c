#!/usr/bin/env python3
"""The benchmark matrix: `elbo train` against its PyTorch twin (bench/torch_matrix.py), row by row, alternating.

Every row trains on MNIST (grey pixels in [0, 1], not binarized) with batch 128, Adam 1e-3, seed 1, --threads 2:
  1  bernoulli      784-400-20 MLP, ReLU, Bernoulli decoder
  2  gauss-fixed    the same, Gaussian decoder, fixed sigma 1
  3  gauss-shared   the same, Gaussian decoder, one learned log-variance
  4  gauss-perdim   the same, Gaussian decoder, a learned log-variance per pixel
  5  categorical16  the same, softmax over 16 levels per pixel (x quantised as round(15 x))
  6  iwae5          row 1 trained on the importance-weighted bound, k = 5
  7  beta4-warmup   row 1 with beta 4, the KL weight rising linearly over the first epoch's steps
  8  freebits0.5    row 1 with free bits, 0.5 nats per latent dimension
  9  burda-tanh     784-200-200-50 MLP (encoder [200, 200], decoder [200, 200]), tanh, Bernoulli
  10 tcvae6         row 1 trained as a beta-TCVAE, total correlation weight 6 (elbo's fused step gathers the batch:
                 its estimator pairs every example of a batch with every other: one kernel over the whole batch)
  11 silu           row 1 with SiLU activations (whose derivative needs the layer's input, kept by the fused step)
For each row and each of --repeats rounds, elbo runs first, then each PyTorch mode of --modes, one after the other
(never at the same time). The speed of a run is its training examples/s, evaluation excluded, by --speed:
  steady  the median of the epochs after the first (the first alone with --epochs 1): leaves out warm-up and
          torch.compile's compilation (default)
  all     total examples / total training seconds over every epoch (elbo's summary.json figure)
Both programs are measured the same way. The table gives medians over the repeats, the ratio elbo / best PyTorch
mode (of the medians) and run by run (each elbo run against the best mode's run of the same round), the held-out
single-sample negative ELBO after the last epoch (median; for every row, also IWAE and beta 4, it is the plain
ELBO with beta 1), and the peak resident memory of each process (max over repeats, from os.wait4; PyTorch's includes
the libraries of the wheel installed, which from PyPI is the CUDA build, ~950 MiB for row 1 with no GPU in use).

usage: python3 bench/compare_matrix.py [--rows 1,2,5] [--epochs 2] [--repeats 1] [--modes eager,fused[,compile]]
          [--threads 2] [--data ../shared/data/mnist] [--elbo target/release/elbo] [--simd avx512|avx2|scalar|auto]
          [--step auto|graph|fused] [--speed steady|all] [--torch-denormals flush|keep] [--torch-isa native|avx2]
          [--json FILE]
--simd sets ELBO_SIMD in elbo's environment (auto: removes it); without --simd elbo inherits this environment.
--torch-isa avx2 caps PyTorch at AVX2 (bench/torch_isa.py): with --simd avx2, both run as on an AVX2-only CPU.
--torch-denormals flush (default) runs PyTorch with torch.set_flush_denormal(True): without it PyTorch slows down
10x or more where values decay into subnormal floats (row 9, tanh: ~3,300 against ~40,000 ex/s in eager mode, the
same numbers trained); elbo gets no such setting. keep shows PyTorch as it comes.
--step is passed to `elbo train --step`; without it elbo uses its own default. An elbo run that fails is reported
with its error output; one that cannot start (the binary missing or being replaced by a build) is retried.
Needs: a release build (cargo build --release) and `pip install torch numpy`.
"""
import argparse, csv, datetime, errno, hashlib, json, os, platform, re, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bench'))
from torch_isa import ISAS, torch_isa_env  # noqa: E402
TWIN = os.path.join(ROOT, 'bench', 'torch_matrix.py')

# id: (name, elbo train flags, torch_matrix.py flags); flags shared by all rows are added by the runners.
ROWS = {
    1: ('bernoulli', [], []),
    2: ('gauss-fixed', ['--likelihood', 'gaussian', '--gaussian-variance', 'fixed', '--gaussian-sigma', '1'],
        ['--likelihood', 'gaussian', '--variance', 'fixed', '--sigma', '1']),
    3: ('gauss-shared', ['--likelihood', 'gaussian', '--gaussian-variance', 'shared'],
        ['--likelihood', 'gaussian', '--variance', 'shared']),
    4: ('gauss-perdim', ['--likelihood', 'gaussian', '--gaussian-variance', 'per-dimension'],
        ['--likelihood', 'gaussian', '--variance', 'per-dimension']),
    5: ('categorical16', ['--likelihood', 'categorical', '--levels', '16'],
        ['--likelihood', 'categorical', '--levels', '16']),
    6: ('iwae5', ['--objective', 'iwae', '--train-iw-samples', '5'], ['--objective', 'iwae', '--iw-samples', '5']),
    7: ('beta4-warmup', ['--beta', '4', '--warmup-epochs', '1'], ['--beta', '4', '--warmup-epochs', '1']),
    8: ('freebits0.5', ['--free-bits', '0.5'], ['--free-bits', '0.5']),
    9: ('burda-tanh', ['--hidden', '200,200', '--decoder-hidden', '200,200', '--latent-dim', '50',
                       '--activation', 'tanh'],
        ['--hidden', '200,200', '--decoder-hidden', '200,200', '--latent-dim', '50', '--activation', 'tanh']),
    10: ('tcvae6', ['--objective', 'tcvae', '--tc-beta', '6'], ['--objective', 'tcvae', '--tc-beta', '6']),
    11: ('silu', ['--activation', 'silu'], ['--activation', 'silu']),
}


class RunFailed(Exception):
    pass


def run_measured(command, scratch, tag, env=None, retries=0):
    """Runs `command` with stdout and stderr to files; returns (stdout, stderr, its own peak RSS in MiB).
    A launch that fails because the binary is absent or being written (a build replacing it) is retried."""
    out_path, err_path = os.path.join(scratch, tag + '.out'), os.path.join(scratch, tag + '.err')
    for attempt in range(retries + 1):
        try:
            with open(out_path, 'w') as out, open(err_path, 'w') as err:
                process = subprocess.Popen(command, stdout=out, stderr=err, env=env, text=True)
                _, status, usage = os.wait4(process.pid, 0)
        except OSError as e:
            if attempt < retries and e.errno in (errno.ENOENT, errno.ETXTBSY, errno.EACCES, errno.ENOEXEC):
                print(f'  {command[0]} could not start ({e.strerror}); a build may be replacing it: retrying in 20 s',
                      file=sys.stderr, flush=True)
                time.sleep(20)
                continue
            raise RunFailed(f'{command[0]} could not start: {e}')
        with open(out_path) as f:
            stdout = f.read()
        with open(err_path) as f:
            stderr = f.read()
        code = os.waitstatus_to_exitcode(status)
        if code < 0 and attempt < retries:  # killed by a signal (e.g. SIGBUS from a binary truncated under it)
            print(f'  {command[0]} died of signal {-code}; retrying in 20 s', file=sys.stderr, flush=True)
            time.sleep(20)
            continue
        if code != 0:
            lines = (stderr or stdout).strip().splitlines()
            last = next((l for l in lines if 'error' in l.lower()), lines[-1] if lines else '(no output)')
            raise RunFailed(f'exited with status {code}: {last.strip()}\n  command: {" ".join(command)}\n'
                            '  its error output:\n' + '\n'.join('    ' + l for l in lines[-25:]))
        return stdout, stderr, usage.ru_maxrss / 1024
    raise RunFailed(f'{command[0]} could not be run after {retries + 1} attempts')


def speed_of(epoch_speeds, overall, how):
    if how == 'all':
        return overall
    return statistics.median(epoch_speeds[1:]) if len(epoch_speeds) > 1 else epoch_speeds[0]


def binary_stamp(path):
    """Size, mtime and a short SHA-256 of the binary, to notice a rebuild between runs."""
    try:
        st = os.stat(path)
        with open(path, 'rb') as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:12]
        return {'size': st.st_size, 'mtime': datetime.datetime.fromtimestamp(st.st_mtime).isoformat(timespec='seconds'),
                'sha256': digest}
    except OSError:
        return None


def elbo_env(args):
    env = dict(os.environ)
    if args.simd == 'auto':
        env.pop('ELBO_SIMD', None)
    elif args.simd:
        env['ELBO_SIMD'] = args.simd
    return env


def step_path(summary):
    """The step path elbo reports in summary.json: its "step" field ({"path", "shards", "reason"}), if any."""
    step = summary.get('step')
    if isinstance(step, dict) and 'path' in step:
        return f'{step["path"]}' + (f' x{step["shards"]}' if 'shards' in step else '')
    return step if isinstance(step, str) else 'n/a (no "step" in summary.json)'


def run_elbo(args, row, scratch, tag):
    out = os.path.join(scratch, tag)
    command = [args.elbo, 'train', '--data', args.data, '--epochs', str(args.epochs), '--batch-size',
               str(args.batch_size), '--lr', '1e-3', '--optimizer', 'adam', '--seed', '1', '--threads',
               str(args.threads), '--quiet', '--out', out] + ROWS[row][1]
    if args.step:
        command += ['--step', args.step]
    stamp = binary_stamp(args.elbo)
    stdout, _, rss = run_measured(command, scratch, tag, env=elbo_env(args), retries=3)
    with open(os.path.join(out, 'metrics.csv')) as f:
        rows = [r for r in csv.DictReader(f) if r['kind'] == 'epoch']
    held_out = [float(r['negative_elbo']) for r in rows if r['split'] != 'train']
    epoch_speeds = [float(r['examples_per_second']) for r in rows if r['split'] == 'train']
    with open(os.path.join(out, 'summary.json')) as f:
        summary = json.load(f)
    step = summary.get('step')
    return {'examples_per_s': speed_of(epoch_speeds, summary['train_examples_per_second'], args.speed),
            'epoch_examples_per_s': epoch_speeds, 'train_examples_per_s': summary['train_examples_per_second'],
            'test_nelbo': held_out[-1], 'test_nelbo_per_epoch': held_out, 'peak_rss_mib': rss,
            'step': step_path(summary), 'step_reason': step.get('reason') if isinstance(step, dict) else None,
            'simd': summary.get('simd') or 'n/a', 'summary': summary, 'binary': stamp,
            'stdout_tail': stdout.strip().splitlines()[-3:], 'command': command}


def run_torch(args, row, mode, scratch, tag):
    command = [sys.executable, TWIN, '--data', args.data, '--epochs', str(args.epochs), '--batch-size',
               str(args.batch_size), '--lr', '1e-3', '--seed', '1', '--threads', str(args.threads), '--mode', mode,
               '--quiet'] + (['--flush-denormal'] if args.torch_denormals == 'flush' else []) + ROWS[row][2]
    stdout, _, rss = run_measured(command, scratch, tag, env=torch_isa_env(args.torch_isa))
    result = json.loads(stdout.strip().splitlines()[-1])
    return {'examples_per_s': speed_of(result['epoch_examples_per_s'], result['train_examples_per_s'], args.speed),
            'epoch_examples_per_s': result['epoch_examples_per_s'], 'train_examples_per_s':
            result['train_examples_per_s'], 'test_nelbo': result['test_nelbo'], 'peak_rss_mib': rss,
            'result': result, 'command': command}


def cpu_info():
    model, flags = platform.processor() or 'unknown', set()
    try:
        text = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
        for line in text.splitlines():
            key, _, value = line.partition(':')
            if key.strip() == 'Model name':
                model = value.strip()
            elif key.strip() == 'Flags':
                flags = set(value.split())
    except (OSError, subprocess.CalledProcessError):
        pass
    if not flags and os.path.exists('/proc/cpuinfo'):
        with open('/proc/cpuinfo') as f:
            match = re.search(r'^flags\s*:(.*)$', f.read(), re.M)
            flags = set(match.group(1).split()) if match else set()
    return {'model': model, 'avx512f': 'avx512f' in flags, 'avx2': 'avx2' in flags, 'cores': os.cpu_count()}


def torch_info(isa):
    code = ('import json, torch; c = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")(); '
            'print(json.dumps({"version": torch.__version__, "cpu_capability": c}))')
    try:
        return json.loads(subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                                         check=True, env=torch_isa_env(isa)).stdout)
    except (subprocess.CalledProcessError, ValueError) as e:
        raise SystemExit(f'PyTorch is not usable from {sys.executable}: pip install torch numpy ({e})')


def preflight(args):
    """Fails early, with a clear message, when the binary is missing or does not know a flag we pass."""
    for attempt in range(4):
        if os.access(args.elbo, os.X_OK):
            break
        if attempt == 3:
            raise SystemExit(f'no elbo binary at {args.elbo}: build it (cargo build --release) or pass --elbo PATH')
        print(f'waiting for {args.elbo} (a build may be replacing it) ...', file=sys.stderr, flush=True)
        time.sleep(20)
    help_text = subprocess.run([args.elbo, 'train', '--help'], capture_output=True, text=True).stdout
    version = subprocess.run([args.elbo, '--version'], capture_output=True, text=True).stdout.strip()
    wanted = {flag for row in args.rows for flag in ROWS[row][1] if flag.startswith('--')}
    if args.step:
        wanted.add('--step')
    missing = sorted(flag for flag in wanted if not re.search(re.escape(flag) + r'(?![\w-])', help_text))
    if missing:
        hint = ''
        if '--step' in missing:
            hint = ('\n`--step` is not in this build of elbo (the flag is new): rebuild elbo, or run without --step '
                    'to use its default step path.')
        raise SystemExit(f'{args.elbo} train does not accept {", ".join(missing)} (not in `elbo train --help`).{hint}')
    if args.step:
        match = re.search(r'--step <\w+>.*?\[possible values: ([^\]]+)\]', help_text, re.S)
        if match and args.step not in [v.strip() for v in match.group(1).split(',')]:
            raise SystemExit(f'elbo train --step accepts {match.group(1)}, not {args.step}')
    return version


def median(values):
    return statistics.median(values) if values else float('nan')


def main():
    ap = argparse.ArgumentParser(description='elbo against its PyTorch twin, row by row (see the module docstring).')
    ap.add_argument('--data', default=os.path.join(ROOT, '..', 'shared', 'data', 'mnist'))
    ap.add_argument('--rows', default=','.join(map(str, ROWS)), help=f'comma-separated row numbers, 1-{len(ROWS)}')
    ap.add_argument('--epochs', type=int, default=2)
    ap.add_argument('--repeats', type=int, default=1)
    ap.add_argument('--modes', default='eager,fused', help='PyTorch modes, comma-separated: eager,fused,compile')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--batch-size', type=int, default=128)
    ap.add_argument('--elbo', default=os.path.join(ROOT, 'target', 'release', 'elbo'))
    ap.add_argument('--torch-isa', default='native', choices=ISAS, help="cap PyTorch's kernels (bench/torch_isa.py)")
    ap.add_argument('--simd', choices=['avx512', 'avx2', 'scalar', 'auto'], default=None,
                    help="ELBO_SIMD for elbo's runs (auto: unset); default: inherit the environment")
    ap.add_argument('--step', choices=['auto', 'graph', 'fused'], default=None,
                    help='passed as `elbo train --step`; default: not passed (elbo chooses)')
    ap.add_argument('--speed', choices=['steady', 'all'], default='steady')
    ap.add_argument('--torch-denormals', choices=['flush', 'keep'], default='flush',
                    help='flush: PyTorch runs with torch.set_flush_denormal(True) (default), as subnormal floats '
                         'slow it down by 10x or more on some rows (tanh); keep: PyTorch as it comes')
    ap.add_argument('--json', default=None, help='write every run and the summary to this file')
    args = ap.parse_args()
    args.elbo = os.path.abspath(args.elbo)
    args.data = os.path.abspath(args.data)
    try:
        args.rows = [int(r) for r in args.rows.split(',') if r.strip()]
    except ValueError:
        raise SystemExit(f'--rows takes numbers 1-{len(ROWS)}, comma-separated')
    if unknown := [r for r in args.rows if r not in ROWS]:
        raise SystemExit(f'no row {unknown}: rows are 1-{len(ROWS)}')
    modes = [m for m in args.modes.split(',') if m]
    if bad := [m for m in modes if m not in ('eager', 'fused', 'compile')]:
        raise SystemExit(f'unknown PyTorch mode {bad}: eager, fused, compile')

    cpu, torch_versions = cpu_info(), torch_info(args.torch_isa)
    version = preflight(args)
    simd = args.simd or os.environ.get('ELBO_SIMD') or 'auto'
    start_stamp = binary_stamp(args.elbo)
    print(f'CPU: {cpu["model"]}, {cpu["cores"]} logical cores; avx512f: {"yes" if cpu["avx512f"] else "no"}, '
          f'avx2: {"yes" if cpu["avx2"] else "no"}')
    print(f'elbo: {args.elbo} ({version}; built {start_stamp["mtime"]}, sha256 {start_stamp["sha256"]}); '
          f'SIMD path: ELBO_SIMD={simd}; --step {args.step or "(not passed: elbo default)"}')
    print(f'torch {torch_versions["version"]}, CPU capability {torch_versions["cpu_capability"]}; modes '
          f'{",".join(modes)}; denormals: {args.torch_denormals} (elbo: as the CPU does by default)')
    print(f'{args.epochs} epochs, batch {args.batch_size}, Adam 1e-3, seed 1, {args.threads} threads, '
          f'{args.repeats} repeat(s); speed = {args.speed} '
          f'({"median of epochs after the first" if args.speed == "steady" else "all epochs"}, training steps only)',
          flush=True)

    results = {}
    with tempfile.TemporaryDirectory(prefix='elbo-matrix-') as scratch:
        for row in args.rows:
            name = ROWS[row][0]
            entry = results[row] = {'name': name, 'elbo': [], **{mode: [] for mode in modes}, 'errors': []}
            for repeat in range(args.repeats):
                try:
                    entry['elbo'].append(run_elbo(args, row, scratch, f'elbo-{row}-{repeat}'))
                    r = entry['elbo'][-1]
                    print(f'row {row} {name} round {repeat + 1}: elbo {r["examples_per_s"]:,.0f} ex/s, '
                          f'-ELBO {r["test_nelbo"]:.2f}, step {r["step"]}', flush=True)
                except RunFailed as e:
                    entry['errors'].append(f'elbo: {e}')
                    print(f'row {row} {name}: elbo FAILED:\n{e}', file=sys.stderr, flush=True)
                for mode in modes:
                    try:
                        entry[mode].append(run_torch(args, row, mode, scratch, f'torch-{mode}-{row}-{repeat}'))
                        r = entry[mode][-1]
                        print(f'row {row} {name} round {repeat + 1}: torch {mode} {r["examples_per_s"]:,.0f} ex/s, '
                              f'-ELBO {r["test_nelbo"]:.2f}', flush=True)
                    except RunFailed as e:
                        entry['errors'].append(f'torch {mode}: {e}')
                        print(f'row {row} {name}: torch {mode} FAILED:\n{e}', file=sys.stderr, flush=True)

    rebuilt = sorted({json.dumps(r['binary']) for entry in results.values() for r in entry['elbo']})
    reported = sorted({r['simd'] for entry in results.values() for r in entry['elbo']})
    print(f'\nSIMD level elbo reports (summary.json "simd"): {", ".join(reported) or "n/a"} '
          f'(asked: ELBO_SIMD={simd})')
    for row, entry in results.items():
        reasons = sorted({r['step_reason'] or r['step'] for r in entry['elbo']})
        if reasons:
            print(f'row {row} {entry["name"]} step: {"; ".join(reasons)}')
    print()
    header = (['row', 'elbo step, simd', 'elbo ex/s'] + [f'torch {m} ex/s' for m in modes]
              + ['elbo / best torch', 'elbo / best, run by run', 'test -ELBO elbo', 'test -ELBO torch (best)',
                 'peak RSS MiB elbo', 'peak RSS MiB torch (best)'])
    print('| ' + ' | '.join(header) + ' |')
    print('|' + '---|' * len(header))
    for row, entry in results.items():
        speeds = {m: median([r['examples_per_s'] for r in entry[m]]) for m in ['elbo'] + modes}
        done = [m for m in modes if entry[m]]
        best = max(done, key=lambda m: speeds[m]) if done else None
        elbo_runs = entry['elbo']
        ratio = speeds['elbo'] / speeds[best] if best and elbo_runs else float('nan')
        pairs = ', '.join(f'{e["examples_per_s"] / t["examples_per_s"]:.2f}x'
                          for e, t in zip(elbo_runs, entry[best])) if best else ''
        entry['summary'] = {
            'elbo_examples_per_s': speeds['elbo'], **{f'torch_{m}_examples_per_s': speeds[m] for m in modes},
            'best_torch_mode': best, 'elbo_over_best_torch': ratio, 'elbo_over_best_torch_run_by_run':
            [e['examples_per_s'] / t['examples_per_s'] for e, t in zip(elbo_runs, entry[best])] if best else [],
            'elbo_over_torch_mode_run_by_run': {m: [e['examples_per_s'] / t['examples_per_s']
                                                    for e, t in zip(elbo_runs, entry[m])] for m in modes},
            'test_nelbo_elbo': median([r['test_nelbo'] for r in elbo_runs]),
            **{f'test_nelbo_torch_{m}': median([r['test_nelbo'] for r in entry[m]]) for m in modes},
            'peak_rss_mib_elbo': max((r['peak_rss_mib'] for r in elbo_runs), default=float('nan')),
            **{f'peak_rss_mib_torch_{m}': max((r['peak_rss_mib'] for r in entry[m]), default=float('nan'))
               for m in modes}}
        s = entry['summary']
        cells = [f'{row} {entry["name"]}', ', '.join(sorted({f'{r["step"]}, {r["simd"]}' for r in elbo_runs}))
                 or 'failed',
                 f'{speeds["elbo"]:,.0f}'] + [f'{speeds[m]:,.0f}' for m in modes] + [
                 f'{ratio:.2f}x ({best})' if best and elbo_runs else 'n/a', pairs,
                 f'{s["test_nelbo_elbo"]:.2f}', f'{s[f"test_nelbo_torch_{best}"]:.2f}' if best else 'n/a',
                 f'{s["peak_rss_mib_elbo"]:,.0f}', f'{s[f"peak_rss_mib_torch_{best}"]:,.0f}' if best else 'n/a']
        print('| ' + ' | '.join(cells) + ' |')
    failures = [(row, e) for row, entry in results.items() for e in entry['errors']]
    if failures:
        print(f'\n{len(failures)} run(s) failed: ' + '; '.join(f'row {row}: {e.splitlines()[0]}' for row, e in failures))
    if len(rebuilt) > 1:
        print('\nWARNING: the elbo binary changed during the matrix (a rebuild): the runs mix builds: ' + ', '.join(rebuilt))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'cpu': cpu, 'torch': torch_versions, 'elbo': {'path': args.elbo, 'version': version,
                       'binary': start_stamp, 'simd': simd, 'step_flag': args.step},
                       'settings': {'epochs': args.epochs, 'repeats': args.repeats, 'threads': args.threads,
                                    'batch_size': args.batch_size, 'modes': modes, 'speed': args.speed,
                                    'data': args.data, 'torch_denormals': args.torch_denormals},
                       'rows': {str(row): entry for row, entry in results.items()}}, f, indent=1)
        print(f'wrote {args.json}')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
