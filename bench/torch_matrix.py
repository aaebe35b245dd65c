#!/usr/bin/env python3
"""PyTorch twin of `elbo train` for the benchmark matrix (bench/compare_matrix.py): one script, every MLP variant.

The model and the loss are elbo's, term for term (src/model, src/objective, src/training/trainer.rs):
  encoder  x -> hidden layers (activation) -> two linear heads, mu and log sigma^2
  eps ~ N(0, I) drawn OUTSIDE the network (its own generator), z = mu + exp(0.5 log sigma^2) * eps
  decoder  z -> hidden layers (activation) -> one linear output layer (no output activation)
  -log p(x|z), per example, summed over dimensions:
    bernoulli    softplus(l) - x l from logits (grey targets in [0, 1]: binary cross-entropy with soft labels)
    gaussian     0.5 * (log 2pi + log s^2 + (x - m)^2 / s^2), m the output, log s^2 = 2 log sigma (fixed), one
                 learned scalar (shared), or one learned value per dimension (per-dimension); learned ones start at 0
    categorical  logsumexp_k l_{d,k} - l_{d,x_d}, the outputs read as [dims, levels], x_d = round(x_d (K - 1))
  KL per dimension  0.5 * (exp(lv) + mu^2 - 1 - lv), closed form
  elbo objective    loss = mean_n rec_n + w * KL, where w = beta * min(1, step / warmup_steps) (step from 1) and
                    KL = mean_n sum_j KL_nj, or with free bits lambda: sum_j max(lambda, mean_n KL_nj)
  iwae objective    loss = -mean_n logmeanexp_k log w_nk, log w = log p(x|z) + log p(z) - log q(z|x), k draws per
                    example (example-major, as elbo); beta, warm-up and free bits do not enter (as in elbo)
  tcvae objective   loss = mean_n rec_n + MI + tc_beta * TC + dimension-wise KL (src/objective/tcvae.rs): the KL
                    split by minibatch-weighted sampling over the whole batch (M rows, N training examples),
                    log q(z_i) ~ logsumexp_j log q(z_i | x_j) - log(N M), the same per dimension for the marginals;
                    MI = mean(log q(z_i|x_i) - log q(z_i)), TC = mean(log q(z_i) - sum_d log q(z_i,d)), dimension-wise
                    KL = mean(sum_d log q(z_i,d) - log p(z_i)); beta, warm-up and free bits do not enter (as in elbo)
  Adam (beta1 0.9, beta2 0.999, eps 1e-8), lr 1e-3; nn.Linear's default initialisation, U(+-1/sqrt(fan_in)) for
  weights and biases, which is elbo's; every epoch a fresh shuffle, the last batch partial (60000 = 468 x 128 + 96).
The held-out figure after each epoch is elbo's too: the single-sample negative ELBO (beta 1, no free bits) on the
test split, in batches of 1000, with noise from a separate generator.

Timing: each epoch's training loop only (shuffle, batch gather, forward, backward, Adam step); data loading,
model set-up and evaluation are outside it. examples/s per epoch is printed; the final JSON line has
  train_examples_per_s         all epochs: total examples / total training seconds (elbo's summary.json figure)
  steady_examples_per_s        the median of the epochs after the first (the first alone when --epochs 1); this
                               leaves out torch.compile's compilation and first-touch warm-up
  epoch_examples_per_s         each epoch's
  test_nelbo (test_recon, test_kl) after the last epoch.

--flush-denormal: subnormal floats are flushed to zero (FTZ/DAZ). Without it, PyTorch can slow down by 10x or more
when values decay into the subnormal range: measured on the tanh row (9), eager mode ran at ~3,300 ex/s against
~40,000 with the flag, and fused mode's first epoch dropped similarly; the numbers trained were identical
(test -ELBO 144.879 both ways). compare_matrix.py passes it by default (--torch-denormals flush).

--mode eager: plain PyTorch; fused: the same with Adam(fused=True); compile: torch.compile of the loss function
(forward + loss, backward through the compiled graph), Adam's default (foreach) implementation.

usage: python3 bench/torch_matrix.py [--data DIR] [--likelihood bernoulli|gaussian|categorical]
          [--variance fixed|shared|per-dimension] [--sigma 1] [--levels 256] [--objective elbo|iwae|tcvae] [--iw-samples 5]
          [--tc-beta 6]
          [--beta 1] [--warmup-steps N | --warmup-epochs E] [--free-bits LAMBDA] [--hidden 400] [--decoder-hidden ...]
          [--latent-dim 20] [--activation relu|tanh|silu|softplus] [--mode eager|fused|compile] [--threads 2]
          [--epochs 2] [--batch-size 128] [--lr 1e-3] [--seed 1] [--flush-denormal] [--synthetic] [--quiet]
DIR holds MNIST-style IDX files (train-images-idx3-ubyte[.gz], t10k-images-idx3-ubyte[.gz]); default
../shared/data/mnist beside the repository. --synthetic: 60000/10000 uniform random examples (throughput only).
Needs: pip install torch numpy.
"""
import argparse, gzip, json, math, os, statistics, struct, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LN_2PI = math.log(2 * math.pi)
ACTIVATIONS = {'relu': F.relu, 'tanh': torch.tanh, 'silu': F.silu, 'softplus': F.softplus}


def read_idx(path):
    for p in (path, path + '.gz'):
        if os.path.exists(p):
            with (gzip.open if p.endswith('.gz') else open)(p, 'rb') as f:
                b = f.read()
            nd = b[3]
            dims = struct.unpack('>' + 'I' * nd, b[4:4 + 4 * nd])
            return np.frombuffer(b, np.uint8, offset=4 + 4 * nd).reshape(dims[0], -1)
    raise FileNotFoundError(path)


def widths(text):
    return [int(w) for w in text.split(',') if w.strip()] if text else []


class Vae(nn.Module):
    def __init__(self, a, dim):
        super().__init__()
        self.act = ACTIVATIONS[a.activation]
        self.likelihood, self.levels, self.dim = a.likelihood, a.levels, dim
        enc, dec = widths(a.hidden), widths(a.decoder_hidden) if a.decoder_hidden else widths(a.hidden)[::-1]
        self.encoder = nn.ModuleList(nn.Linear(i, o) for i, o in zip([dim] + enc[:-1], enc))
        features = enc[-1] if enc else dim
        self.mu, self.log_var = nn.Linear(features, a.latent_dim), nn.Linear(features, a.latent_dim)
        self.decoder = nn.ModuleList(nn.Linear(i, o) for i, o in zip([a.latent_dim] + dec[:-1], dec))
        per_value = a.levels if a.likelihood == 'categorical' else 1
        self.output = nn.Linear(dec[-1] if dec else a.latent_dim, dim * per_value)
        self.fixed_log_var = None
        if a.likelihood == 'gaussian':
            if a.variance == 'fixed':
                self.fixed_log_var = 2 * math.log(a.sigma)
            else:  # learned, initialised at 0 as elbo's decoder.log_var
                self.dec_log_var = nn.Parameter(torch.zeros(1 if a.variance == 'shared' else dim))

    def encode(self, x):
        h = x
        for layer in self.encoder:
            h = self.act(layer(h))
        return self.mu(h), self.log_var(h)

    def decode(self, z):
        h = z
        for layer in self.decoder:
            h = self.act(layer(h))
        return self.output(h)

    def negative_log_prob(self, out, x):
        """-log p(x|z) per example, summed over dimensions: [rows]."""
        if self.likelihood == 'bernoulli':
            return F.binary_cross_entropy_with_logits(out, x, reduction='none').sum(-1)
        if self.likelihood == 'gaussian':
            squared = (x - out) ** 2
            if self.fixed_log_var is not None:
                lv = self.fixed_log_var
                return (0.5 * math.exp(-lv) * squared + 0.5 * (LN_2PI + lv)).sum(-1)
            lv = self.dec_log_var
            return (0.5 * (LN_2PI + lv + squared * torch.exp(-lv))).sum(-1)
        k = self.levels
        index = torch.round(x * (k - 1)).clamp(0, k - 1).long().unsqueeze(-1)
        log_probs = F.log_softmax(out.view(out.shape[0], self.dim, k), -1)
        return -log_probs.gather(-1, index).squeeze(-1).sum(-1)


def kl_per_dimension(mu, lv):
    return 0.5 * (torch.exp(lv) + mu * mu - lv) - 0.5


def elbo_terms(model, x, eps):
    """Single-sample terms: reconstruction [n], KL per dimension [n, latent]."""
    mu, lv = model.encode(x)
    z = mu + torch.exp(0.5 * lv) * eps
    return model.negative_log_prob(model.decode(z), x), kl_per_dimension(mu, lv)


def gaussian_log_density(z, mu, lv):
    """log N(z; mu, exp(lv)) per dimension."""
    return -0.5 * ((z - mu) ** 2 * torch.exp(-lv) + lv) - 0.5 * LN_2PI


def tcvae_kl(mu, lv, z, dataset_size, tc_beta):
    """beta-TCVAE's KL part, MI + tc_beta * TC + dimension-wise KL, by minibatch-weighted sampling over the batch."""
    log_nm = math.log(dataset_size * z.shape[0])
    pairwise = gaussian_log_density(z.unsqueeze(1), mu.unsqueeze(0), lv.unsqueeze(0))  # [M, M, d]
    log_qz = torch.logsumexp(pairwise.sum(-1), 1) - log_nm
    log_marginals = (torch.logsumexp(pairwise, 1) - log_nm).sum(-1)
    log_qz_x = gaussian_log_density(z, mu, lv).sum(-1)
    log_pz = (-0.5 * z * z - 0.5 * LN_2PI).sum(-1)
    return (log_qz_x - log_qz).mean() + tc_beta * (log_qz - log_marginals).mean() + (log_marginals - log_pz).mean()


def tcvae_loss(model, tc_beta, dataset_size):
    """beta-TCVAE's loss(x, eps, kl_weight), as elbo's (kl_weight unused)."""
    def loss(x, eps, kl_weight):
        mu, lv = model.encode(x)
        z = mu + torch.exp(0.5 * lv) * eps
        rec_mean = model.negative_log_prob(model.decode(z), x).mean()
        return rec_mean + tcvae_kl(mu, lv, z, dataset_size, tc_beta), rec_mean, kl_per_dimension(mu, lv).sum(-1).mean()
    return loss


def make_loss(model, a):
    """loss(x, eps, kl_weight) -> (loss, mean reconstruction, mean KL), as elbo's training step."""
    if a.objective == 'iwae':
        k = a.iw_samples

        def loss(x, eps, kl_weight):
            n = x.shape[0]
            mu, lv = model.encode(x)
            mu_k, lv_k = mu.repeat_interleave(k, 0), lv.repeat_interleave(k, 0)
            z = mu_k + torch.exp(0.5 * lv_k) * eps  # eps [n * k, latent], the draws of example 0 first
            rec = model.negative_log_prob(model.decode(z), x.repeat_interleave(k, 0))
            log_pz = (-0.5 * z * z - 0.5 * LN_2PI).sum(-1)
            log_qz = (-0.5 * ((z - mu_k) ** 2 * torch.exp(-lv_k) + lv_k) - 0.5 * LN_2PI).sum(-1)
            log_w = (log_pz - log_qz - rec).view(n, k)
            bound = torch.logsumexp(log_w, 1) - math.log(k)
            return -bound.mean(), rec.mean(), kl_per_dimension(mu, lv).sum(-1).mean()
        return loss

    if a.objective == 'tcvae':
        return tcvae_loss(model, a.tc_beta, a.dataset_size)

    free_bits = a.free_bits

    def loss(x, eps, kl_weight):
        rec, kl_dims = elbo_terms(model, x, eps)
        kl = kl_dims.sum(-1).mean()
        weighted = kl_dims.mean(0).clamp(min=free_bits).sum() if free_bits is not None else kl
        rec_mean = rec.mean()
        return rec_mean + kl_weight * weighted, rec_mean, kl
    return loss


@torch.no_grad()
def evaluate(model, test, latent_dim, generator):
    """Held-out single-sample negative ELBO (beta 1), batches of 1000: (nelbo, recon, kl) means."""
    rec_sum = kl_sum = 0.0
    for i in range(0, test.shape[0], 1000):
        x = test[i:i + 1000]
        rec, kl_dims = elbo_terms(model, x, torch.randn(x.shape[0], latent_dim, generator=generator).to(x.device))
        rec_sum += rec.sum().item()
        kl_sum += kl_dims.sum().item()
    m = test.shape[0]
    return (rec_sum + kl_sum) / m, rec_sum / m, kl_sum / m


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--data', default=os.path.join(ROOT, '..', 'shared', 'data', 'mnist'))
    ap.add_argument('--synthetic', action='store_true')
    ap.add_argument('--likelihood', default='bernoulli', choices=['bernoulli', 'gaussian', 'categorical'])
    ap.add_argument('--variance', default='fixed', choices=['fixed', 'shared', 'per-dimension'])
    ap.add_argument('--sigma', type=float, default=1.0, help='fixed Gaussian variance: the standard deviation')
    ap.add_argument('--levels', type=int, default=256)
    ap.add_argument('--objective', default='elbo', choices=['elbo', 'iwae', 'tcvae'])
    ap.add_argument('--tc-beta', type=float, default=6.0, help='tcvae: the weight of the total correlation')
    ap.add_argument('--iw-samples', type=int, default=5)
    ap.add_argument('--beta', type=float, default=1.0)
    ap.add_argument('--warmup-steps', type=int, default=None)
    ap.add_argument('--warmup-epochs', type=float, default=None,
                    help='warm-up over round(E * steps per epoch) steps, as elbo --warmup-epochs')
    ap.add_argument('--free-bits', type=float, default=None)
    ap.add_argument('--hidden', '--encoder-hidden', dest='hidden', default='400')
    ap.add_argument('--decoder-hidden', default=None, help="default: the encoder's, reversed")
    ap.add_argument('--latent-dim', type=int, default=20)
    ap.add_argument('--activation', default='relu', choices=sorted(ACTIVATIONS))
    ap.add_argument('--mode', default='eager', choices=['eager', 'fused', 'compile'])
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--device', default='cpu', help="where the model and data live: cpu, or cuda (the twin of elbo's "
                    "--device cuda; the noise is drawn on the CPU as before and copied over)")
    ap.add_argument('--epochs', type=int, default=2)
    ap.add_argument('--batch-size', '--batch', dest='batch_size', type=int, default=128)
    ap.add_argument('--lr', type=float, default=1e-3)
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--flush-denormal', action='store_true',
                    help='torch.set_flush_denormal(True): treat subnormal floats as 0 (see the module docstring)')
    ap.add_argument('--quiet', action='store_true', help='no per-epoch lines, only the final JSON line')
    a = ap.parse_args()
    if a.warmup_steps is not None and a.warmup_epochs is not None:
        ap.error('--warmup-steps and --warmup-epochs exclude each other')
    return a


def main():
    a = parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    if a.flush_denormal and not torch.set_flush_denormal(True):
        raise SystemExit('--flush-denormal: this CPU has no flush-to-zero support (SSE3 needed)')
    if a.synthetic:
        train, test = torch.rand(60000, 784), torch.rand(10000, 784)
    else:
        load = lambda name: torch.from_numpy(read_idx(os.path.join(a.data, name)).astype(np.float32) / 255)
        train, test = load('train-images-idx3-ubyte'), load('t10k-images-idx3-ubyte')
    train, test = train.to(a.device), test.to(a.device)
    n, dim, bs = train.shape[0], train.shape[1], a.batch_size
    steps_per_epoch = -(-n // bs)
    warmup = a.warmup_steps
    if a.warmup_epochs is not None:
        warmup = max(1, round(a.warmup_epochs * steps_per_epoch))
    a.dataset_size = n  # beta-TCVAE's N: the training set, as elbo's
    model = Vae(a, dim).to(a.device)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, betas=(0.9, 0.999), eps=1e-8, fused=(a.mode == 'fused'))
    loss_fn = make_loss(model, a)
    step_loss = torch.compile(loss_fn) if a.mode == 'compile' else loss_fn
    draws = a.iw_samples if a.objective == 'iwae' else 1
    noise = torch.Generator().manual_seed(a.seed + 1)  # training eps, outside the network
    eval_noise = torch.Generator().manual_seed(a.seed + 2)
    # a tensor, so that torch.compile does not specialise on its value
    kl_weight = torch.tensor(a.beta, device=a.device)

    step = 0
    train_s, epoch_speeds = 0.0, []
    t_start = time.perf_counter()
    for epoch in range(1, a.epochs + 1):
        model.train()
        tot = rec = kl = 0.0
        t0 = time.perf_counter()
        perm = torch.randperm(n).to(a.device)
        for i in range(0, n, bs):
            x = train[perm[i:i + bs]]
            rows = x.shape[0]
            step += 1
            if warmup:
                kl_weight.fill_(a.beta * min(1.0, step / warmup))
            eps = torch.randn(rows * draws, a.latent_dim, generator=noise).to(a.device)
            opt.zero_grad(set_to_none=True)
            loss, r, k = step_loss(x, eps, kl_weight)
            loss.backward()
            opt.step()
            tot += loss.item() * rows; rec += r.item() * rows; kl += k.item() * rows
        dt = time.perf_counter() - t0
        train_s += dt
        epoch_speeds.append(n / dt)
        model.eval()
        tl, tr, tk = evaluate(model, test, a.latent_dim, eval_noise)
        if not a.quiet:
            print(f'epoch {epoch} train loss {tot / n:.3f} (recon {rec / n:.3f} kl {kl / n:.3f}) '
                  f'test nelbo {tl:.3f} (recon {tr:.3f} kl {tk:.3f}) epoch_s {dt:.3f} ex/s {n / dt:.0f}', flush=True)
    steady = statistics.median(epoch_speeds[1:]) if len(epoch_speeds) > 1 else epoch_speeds[0]
    print(json.dumps({
        'peer': 'torch', 'torch': torch.__version__, 'device': a.device, 'mode': a.mode,
        'threads': torch.get_num_threads(),
        'cpu_capability': getattr(torch.backends.cpu, 'get_cpu_capability', lambda: None)(),
        'flush_denormal': a.flush_denormal,
        'likelihood': a.likelihood, 'variance': a.variance if a.likelihood == 'gaussian' else None,
        'levels': a.levels if a.likelihood == 'categorical' else None, 'objective': a.objective,
        'iw_samples': a.iw_samples if a.objective == 'iwae' else None,
        'tc_beta': a.tc_beta if a.objective == 'tcvae' else None, 'beta': a.beta, 'warmup_steps': warmup,
        'free_bits': a.free_bits, 'hidden': widths(a.hidden), 'decoder_hidden': widths(a.decoder_hidden or '')
        or widths(a.hidden)[::-1], 'latent_dim': a.latent_dim, 'activation': a.activation, 'epochs': a.epochs,
        'batch_size': bs, 'parameters': sum(p.numel() for p in model.parameters()),
        'train_examples_per_s': round(a.epochs * n / train_s, 1), 'steady_examples_per_s': round(steady, 1),
        'epoch_examples_per_s': [round(s, 1) for s in epoch_speeds],
        'test_nelbo': round(tl, 3), 'test_recon': round(tr, 3), 'test_kl': round(tk, 3),
        'train_seconds': round(train_s, 3), 'wall_s': round(time.perf_counter() - t_start, 2)}))


if __name__ == '__main__':
    main()
