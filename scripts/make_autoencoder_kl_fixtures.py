#!/usr/bin/env python3
"""Builds the small random-weight diffusers AutoencoderKL fixtures of tests/autoencoder_kl.rs.

Each fixture is a diffusers directory written by `save_pretrained` (config.json and
diffusion_pytorch_model.safetensors) plus expected.safetensors: diffusers' own outputs for fixed inputs, computed in
float32 from the weights as saved (so a model saved in f16 or bf16 is compared at those rounded weights):

  x              the input images, in [-1, 1]
  mean, logvar   the posterior of x (logvar clamped to [-30, 20] by diffusers)
  z              a fixed latent
  decoded        the decoder's image of z
  and, for the tiled fixture, with enable_tiling(): tiled_mean, tiled_logvar of x, tiled_decoded of z.

Usage: pip install diffusers safetensors torch; python3 scripts/make_autoencoder_kl_fixtures.py [OUT]
(OUT defaults to tests/fixtures/autoencoder_kl). Rerunning rewrites the same files: every random number is seeded.
"""

import json
import os
import sys

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file

FIXTURES = {
    # 2 blocks, attention on, odd channel counts, non-square input, stored in f32
    "two_blocks_attention": dict(
        config=dict(block_out_channels=[9, 15], layers_per_block=1, latent_channels=3, norm_num_groups=3,
                    sample_size=16, scaling_factor=0.5),
        dtype=torch.float32, x=(2, 3, 16, 24), legacy=False),
    # 3 blocks, no attention, 2 ResNets per block, stored in f16
    "three_blocks_no_attention_f16": dict(
        config=dict(block_out_channels=[8, 12, 20], layers_per_block=2, latent_channels=4, norm_num_groups=4,
                    mid_block_add_attention=False, sample_size=32, scaling_factor=0.18215, shift_factor=0.1),
        dtype=torch.float16, x=(1, 3, 24, 16), legacy=False),
    # 2 blocks, attention under the legacy names (query/key/value/proj_attn), no quant convs, gelu, stored in bf16,
    # one input channel
    "legacy_attention_bf16": dict(
        config=dict(block_out_channels=[10, 15], layers_per_block=1, latent_channels=2, norm_num_groups=5,
                    in_channels=1, out_channels=1, act_fn="gelu", use_quant_conv=False, use_post_quant_conv=False,
                    sample_size=8),
        dtype=torch.bfloat16, x=(1, 1, 8, 12), legacy=True),
    # tiling: tiles of 16 pixels / 8 latent positions over a 40 x 48 image (4 x 4 tiles)
    "tiled": dict(
        config=dict(block_out_channels=[8, 12], layers_per_block=1, latent_channels=4, norm_num_groups=4,
                    sample_size=16),
        dtype=torch.float32, x=(1, 3, 40, 48), legacy=False, tiled=True),
}

BLOCKS = {"down_block_types": "DownEncoderBlock2D", "up_block_types": "UpDecoderBlock2D"}
LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def build(spec, seed):
    config = dict(spec["config"])
    for field, block in BLOCKS.items():
        config[field] = [block] * len(config["block_out_channels"])
    torch.manual_seed(seed)
    model = AutoencoderKL(**config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            # move every weight off its initial value (GroupNorm starts at 1 and 0) so the tests have teeth
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def rename_legacy(path):
    tensors = load_file(path)
    renamed = {}
    for name, tensor in tensors.items():
        for new, old in LEGACY.items():
            name = name.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        renamed[name] = tensor
    save_file(renamed, path, metadata={"format": "pt"})


def expected(model, spec, seed):
    generator = torch.Generator().manual_seed(seed + 1000)
    x = torch.rand(spec["x"], generator=generator) * 2 - 1
    factor = 2 ** (len(model.config.block_out_channels) - 1)
    z_shape = (spec["x"][0], model.config.latent_channels, spec["x"][2] // factor, spec["x"][3] // factor)
    z = torch.randn(z_shape, generator=generator)
    out = {"x": x, "z": z}
    with torch.no_grad():
        posterior = model.encode(x).latent_dist
        out["mean"], out["logvar"] = posterior.mean, posterior.logvar
        out["decoded"] = model.decode(z).sample
        if spec.get("tiled"):
            model.enable_tiling()
            posterior = model.encode(x).latent_dist
            out["tiled_mean"], out["tiled_logvar"] = posterior.mean, posterior.logvar
            out["tiled_decoded"] = model.decode(z).sample
    return {name: tensor.contiguous().float() for name, tensor in out.items()}


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join("tests", "fixtures", "autoencoder_kl")
    for seed, (name, spec) in enumerate(FIXTURES.items()):
        directory = os.path.join(root, name)
        model = build(spec, seed)
        model.to(spec["dtype"]).save_pretrained(directory)
        weights = os.path.join(directory, "diffusion_pytorch_model.safetensors")
        # the reference: the saved (rounded) weights, computed in float32
        reference = AutoencoderKL.from_pretrained(directory, torch_dtype=torch.float32).eval()
        if spec["legacy"]:
            rename_legacy(weights)
        save_file(expected(reference, spec, seed), os.path.join(directory, "expected.safetensors"))
        with open(os.path.join(directory, "config.json")) as f:
            print(name, json.load(f)["block_out_channels"], os.path.getsize(weights), "bytes of weights")


if __name__ == "__main__":
    main()
