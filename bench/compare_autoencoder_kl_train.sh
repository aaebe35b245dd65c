#!/bin/bash
# Training throughput of a KL-f4 autoencoder (blocks 64, 128, 128; one ResNet per block; 4 latent channels;
# attention on) on random 64 x 64 crops of ../shared/data/photos, batch 16, 2 threads: elbo, then its PyTorch twin
# (bench/autoencoder_kl_train.py: diffusers' AutoencoderKL with the same loss), alternating, ROUNDS rounds.
# elbo's figure is summary.json's images_per_second (optimisation only, its first step included); PyTorch's leaves
# out 2 warm-up steps. Extra flags for both: ELBO_FLAGS / TORCH_FLAGS (e.g. a discriminator from step 0).
# Usage: cargo build --release && bash bench/compare_autoencoder_kl_train.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PHOTOS=${PHOTOS:-../shared/data/photos}
OUT=$(mktemp -d)
for round in $(seq 1 "${ROUNDS:-2}"); do
  ./target/release/elbo train --architecture autoencoder-kl --data "$PHOTOS" --max-steps 12 --eval-every 1000 \
    --held-out-crops 1 --threads 2 --out "$OUT/elbo-$round" --quiet ${ELBO_FLAGS:-} > /dev/null
  python3 -c "import json,sys; print('elbo', $round, json.load(open(sys.argv[1]))['images_per_second'])" \
    "$OUT/elbo-$round/summary.json"
  python3 bench/autoencoder_kl_train.py --photos "$PHOTOS" --held-out astronaut.png --steps 12 --warmup 2 \
    --threads 2 --eval-per-photo 1 ${TORCH_FLAGS:-} 2> /dev/null | tail -1 |
    python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print('pytorch', $round, d['images_per_s'])"
done
rm -rf "$OUT"
