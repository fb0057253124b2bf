#!/usr/bin/env bash
# The README's first command: set up, build, classify a bundled sample with the bundled
# default model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

model=data/models/vmoe-fmnist.safetensors
if [ ! -f "$model" ]; then
  # No trained model is bundled yet: make a randomly initialised one so the pipeline
  # runs end to end, and say so plainly.
  model=build/untrained-vmoe-fmnist.safetensors
  build/vmoe init --arch vmoe-fmnist --seed 0 -o "$model"
  echo "demo: NOTE: no trained model bundled yet; using an UNTRAINED random model ($model): its predictions are noise." >&2
fi
sample=data/samples/fmnist_0_ankle-boot.png
[ -f "$sample" ] || sample=$(ls data/samples/fmnist_*.png | head -1)
set -x
build/vmoe info -m "$model"
build/vmoe classify "$sample" -m "$model" --top 3
