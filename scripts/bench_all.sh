#!/usr/bin/env bash
# Re-measures the figures of docs/BENCHMARKS.md on this machine: `vmoe bench` of every
# bundled model at batch 64 and 256 (with the matmul ceiling once), and the wall time and
# peak memory of evaluating the 10k Fashion-MNIST test split. Run on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
vmoe=${VMOE:-build/vmoe}
echo "# $(date -u +%Y-%m-%d) $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
"$vmoe" bench -m data/models/vmoe-fmnist.safetensors --batch 64 --seconds 1 | grep ceiling || true
for model in data/models/*.safetensors; do
  for batch in 64 256; do
    echo "## $model batch $batch"
    "$vmoe" bench -m "$model" --batch "$batch" --seconds 5 --no-ceiling | sed -n '1,12p'
  done
  echo "## $model eval fashion-mnist:test"
  /usr/bin/time -f "wall %e s, peak RSS %M KB" "$vmoe" eval -m "$model" --data fashion-mnist:test --format csv
done
