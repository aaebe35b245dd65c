#!/usr/bin/env python3
"""PyTorch peer for `elbo eval`: the importance-weighted bound of an elbo run's own model, in PyTorch.

Loads RUN/config.json and RUN/model.safetensors (MLP encoder/decoder, Bernoulli decoder), evaluates
log p_K(x) = log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x) on the first N test images of an MNIST-style IDX directory
(binarized as the run was trained: a fixed stochastic draw for dynamic binarization), in chunks of at most
--max-rows decoder rows, and prints one JSON line: the mean negative IWAE bound, its standard error and
examples/s. The same weights in both programs make it a cross-check of elbo's figure (different noise, so the two
agree within a few standard errors) as well as a speed peer.

usage: python3 bench/torch_iwae_reference.py --run RUN --data DIR [--k 1000] [--examples 1000] [--threads 2]
Needs: pip install torch numpy safetensors.
"""
import argparse, gzip, json, math, os, struct, time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def read_idx(directory, name):
    for path in (os.path.join(directory, name), os.path.join(directory, name + '.gz')):
        if os.path.exists(path):
            with (gzip.open if path.endswith('.gz') else open)(path, 'rb') as f:
                data = f.read()
            dims = struct.unpack('>' + 'I' * data[3], data[4:4 + 4 * data[3]])
            return np.frombuffer(data, np.uint8, offset=4 + 4 * data[3]).reshape(dims[0], -1)
    raise FileNotFoundError(name)


ACTIVATIONS = {'relu': F.relu, 'tanh': torch.tanh, 'silu': F.silu, 'softplus': F.softplus}


def mlp(weights, prefix, count, activation, h):
    for i in range(count):
        h = activation(F.linear(h, weights[f'{prefix}.hidden.{i}.weight'], weights[f'{prefix}.hidden.{i}.bias']))
    return h


def log_weights(weights, config, x, k):
    """[batch, k] log w = log p(x|z) + log p(z) - log q(z|x)."""
    model, act = config['model'], ACTIVATIONS[config['model']['activation']]
    h = mlp(weights, 'encoder', len(model['encoder_hidden']), act, x)
    mu = F.linear(h, weights['encoder.mu.weight'], weights['encoder.mu.bias'])
    log_var = F.linear(h, weights['encoder.log_var.weight'], weights['encoder.log_var.bias'])
    eps = torch.randn(x.shape[0], k, mu.shape[1])
    z = mu.unsqueeze(1) + torch.exp(0.5 * log_var).unsqueeze(1) * eps
    logits = F.linear(mlp(weights, 'decoder', len(model['decoder_hidden']), act, z),
                      weights['decoder.output.weight'], weights['decoder.output.bias'])
    log_px = -F.binary_cross_entropy_with_logits(logits, x.unsqueeze(1).expand_as(logits), reduction='none').sum(-1)
    log_pz = (-0.5 * (math.log(2 * math.pi) + z ** 2)).sum(-1)
    log_qz = (-0.5 * (math.log(2 * math.pi) + log_var.unsqueeze(1) + eps ** 2)).sum(-1)
    return log_px + log_pz - log_qz


@torch.no_grad()
def iwae(weights, config, x, k, max_rows):
    chunk = min(k, max_rows)
    per_batch = max(1, max_rows // chunk)
    results = []
    for start in range(0, x.shape[0], per_batch):
        xb = x[start:start + per_batch]
        lw = torch.cat([log_weights(weights, config, xb, min(chunk, k - done)) for done in range(0, k, chunk)], 1)
        results.append(torch.logsumexp(lw.double(), 1) - math.log(k))
    return torch.cat(results)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--run', required=True)
    ap.add_argument('--data', required=True)
    ap.add_argument('--k', type=int, default=1000)
    ap.add_argument('--examples', type=int, default=1000)
    ap.add_argument('--max-rows', type=int, default=16384)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--seed', type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    with open(os.path.join(a.run, 'config.json')) as f:
        config = json.load(f)
    assert config['model']['likelihood']['kind'] == 'bernoulli', 'this peer implements the Bernoulli decoder'
    weights = load_file(os.path.join(a.run, 'model.safetensors'))
    x = torch.from_numpy(read_idx(a.data, 't10k-images-idx3-ubyte')[:a.examples].astype(np.float32) / 255)
    binarization = config['training']['binarization']['kind']
    if binarization == 'dynamic':
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(a.seed))
    elif binarization == 'static':
        x = (x > config['training']['binarization']['threshold']).float()
    start = time.perf_counter()
    log_px = iwae(weights, config, x, a.k, a.max_rows)
    seconds = time.perf_counter() - start
    print(json.dumps({'peer': 'torch', 'k': a.k, 'examples': x.shape[0], 'negative_iwae': round(-log_px.mean().item(), 4),
                      'standard_error': round(log_px.std().item() / math.sqrt(x.shape[0]), 4),
                      'seconds': round(seconds, 3), 'examples_per_s': round(x.shape[0] / seconds, 2)}))


if __name__ == '__main__':
    main()
