#!/bin/bash
# Training throughput of a KL-f4 autoencoder (blocks 64, 128, 128; one ResNet per block; 4 latent channels;
# attention on) on random 64 x 64 crops of ../shared/data/photos, batch 16, 2 threads: elbo, then its PyTorch twin
# (bench/autoencoder_kl_train.py: diffusers' AutoencoderKL with the same loss), alternating, ROUNDS rounds.
# Both figures leave out the first 2 steps (warm-up: the first step faults in the memory both programs keep
# using): elbo's from metrics.csv's wall clock after step 2 (data, step and logging, as PyTorch's loop times
# them), with summary.json's images_per_second (optimisation only, every step) beside it; PyTorch's --warmup 2. Extra flags for both: ELBO_FLAGS / TORCH_FLAGS (e.g. a discriminator from step 0).
# Usage: cargo build --release && bash bench/compare_autoencoder_kl_train.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PHOTOS=${PHOTOS:-../shared/data/photos}
OUT=$(mktemp -d)
for round in $(seq 1 "${ROUNDS:-2}"); do
  ./target/release/elbo train --architecture autoencoder-kl --data "$PHOTOS" --max-steps 12 --eval-every 1000 \
    --held-out-crops 1 --threads 2 --out "$OUT/elbo-$round" --quiet ${ELBO_FLAGS:-} > /dev/null
  python3 - "$OUT/elbo-$round" "$round" <<'PY'
import csv, json, sys
run, rnd = sys.argv[1], sys.argv[2]
steps = [r for r in csv.DictReader(open(run + "/metrics.csv")) if r["kind"] == "step"]
wall = {int(r["step"]): float(r["wall_seconds"]) for r in steps}
last, batch = max(wall), json.load(open(run + "/config.json"))["training"]["batch_size"]
steady = (last - 2) * batch / (wall[last] - wall[2])
every = json.load(open(run + "/summary.json"))["images_per_second"]
print("elbo", rnd, steady, f"(every step, the first included: {every:.3f})")
PY
  python3 bench/autoencoder_kl_train.py --photos "$PHOTOS" --held-out astronaut.png --steps 12 --warmup 2 \
    --threads 2 --eval-per-photo 1 ${TORCH_FLAGS:-} 2> /dev/null | tail -1 |
    python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print('pytorch', $round, d['images_per_s'])"
done
rm -rf "$OUT"
