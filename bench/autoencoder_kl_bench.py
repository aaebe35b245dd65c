#!/usr/bin/env python3
"""CPU encode and decode throughput of a diffusers AutoencoderKL: elbo against diffusers, same weights, same
threads, alternating runs, one image at a time, each measurement in its own process (so peak RSS is its own).

The model is Stable Diffusion's VAE architecture (block_out_channels 128, 256, 512, 512; 2 ResNets per block;
4 latent channels; sample_size 256, so 512 x 512 images run as 3 x 3 tiles) with random weights, written once by
diffusers' save_pretrained to bench/.autoencoder_kl_sd (not committed). Timing does not depend on the values.

Usage: cargo build --release --example autoencoder_kl_bench
       python3 bench/autoencoder_kl_bench.py [--threads 2] [--rounds N]
       python3 bench/autoencoder_kl_bench.py --count-flops   # the arithmetic of one image, to set speeds against
                                                             # the cores' peak (bench/fma_peak.c)
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, ".autoencoder_kl_sd")
ELBO = os.path.join(HERE, "..", "target", "release", "examples", "autoencoder_kl_bench")
CASES = [(256, False, 3, 3), (512, True, 1, 2)]  # (side, tiled, timed repeats per run, rounds)


def make_model():
    if os.path.exists(os.path.join(MODEL, "config.json")):
        return
    import torch
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    model = AutoencoderKL(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
                          down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                          norm_num_groups=32, sample_size=256)
    model.save_pretrained(MODEL)


def torch_worker(side, tiled, repeats, threads):
    import torch
    from diffusers import AutoencoderKL
    torch.set_num_threads(threads)
    model = AutoencoderKL.from_pretrained(MODEL, torch_dtype=torch.float32).eval()
    if tiled:
        model.enable_tiling()
    x = torch.rand(1, 3, side, side) * 2 - 1
    z = torch.randn(1, 4, side // 8, side // 8)

    def rate(work):
        work()  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            work()
        return repeats / (time.perf_counter() - start)

    with torch.inference_mode():
        encode = rate(lambda: model.encode(x).latent_dist.mean)
        decode = rate(lambda: model.decode(z).sample)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"impl": "diffusers", "side": side, "tiled": tiled, "encode_images_per_s": encode,
                      "decode_images_per_s": decode, "peak_rss": f"{peak} kB"}))


def count_flops():
    """Floating-point operations of one encode and one decode per case (diffusers' own model, tiled where the case
    is), counted by torch.utils.flop_counter: the convolutions' and products' 2 x multiply-adds, which is all but a
    few percent of the work (GroupNorm, SiLU and the softmax are not counted)."""
    import torch
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode
    model = AutoencoderKL.from_pretrained(MODEL, torch_dtype=torch.float32).eval()
    for side, tiled, _, _ in CASES:
        (model.enable_tiling if tiled else model.disable_tiling)()
        x, z = torch.rand(1, 3, side, side) * 2 - 1, torch.randn(1, 4, side // 8, side // 8)
        counts = {}
        with torch.inference_mode():
            for name, work in (("encode", lambda: model.encode(x).latent_dist.mean), ("decode", lambda: model.decode(z).sample)):
                with FlopCounterMode(display=False) as counter:
                    work()
                counts[f"{name}_gflop"] = counter.get_total_flops() / 1e9
        print(json.dumps({"side": side, "tiled": tiled, **counts}), flush=True)


def run(command, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, help="rounds per case (default: 3 at 256, 2 at 512 tiled)")
    parser.add_argument("--sides", default="256,512", help="which cases to run: 256 (whole), 512 (tiled)")
    parser.add_argument("--worker", nargs=3)
    parser.add_argument("--count-flops", action="store_true", help="print each case's GFLOP per image and stop")
    args = parser.parse_args()
    if args.count_flops:
        make_model()
        return count_flops()
    if args.worker:
        side, tiled, repeats = args.worker
        return torch_worker(int(side), tiled == "1", int(repeats), args.threads)
    make_model()
    for side, tiled, repeats, rounds in CASES:
        if str(side) not in args.sides.split(","):
            continue
        for round_ in range(args.rounds or rounds):
            elbo = [ELBO, MODEL, str(side), str(repeats)] + (["tiled"] if tiled else [])
            torch = [sys.executable, __file__, "--threads", str(args.threads), "--worker", str(side),
                     "1" if tiled else "0", str(repeats)]
            for name, command in (("elbo", elbo), ("diffusers", torch)):
                result = run(command, args.threads)
                result["round"] = round_
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
