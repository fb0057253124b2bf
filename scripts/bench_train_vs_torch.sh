#!/usr/bin/env bash
# Training speed against PyTorch (issue 23, item 4): per model, `vmoe bench --train` and
# the same model trained in PyTorch (scripts/bench_vs_torch.py --train: train mode, cross-
# entropy, AdamW, the importance loss for top-k layers) run back to back, ROUNDS times in
# turn, at batch BATCH; prints each side's best images/s and the median of the per-round
# ratios, with the matmul ceiling `vmoe bench` measured in the first round.
#   scripts/bench_train_vs_torch.sh [MODEL.safetensors ...]   (default: the bundled three)
# Environment: VMOE (binary, default build/vmoe), ROUNDS (3), SECONDS_PER (4), BATCH (128).
# PyTorch is Debian's python3-torch with OpenBLAS (libopenblas0-openmp through
# LD_LIBRARY_PATH) and passive thread waits, as in scripts/bench_all.sh; its forward pass is
# checked against vmoe's logits before the first round.
set -euo pipefail
cd "$(dirname "$0")/.."
vmoe=${VMOE:-build/vmoe}
rounds=${ROUNDS:-3}
secs=${SECONDS_PER:-4}
batch=${BATCH:-128}
py=/usr/bin/python3
openblas=/usr/lib/x86_64-linux-gnu/openblas-openmp
[ -x "$vmoe" ] || { echo "bench_train_vs_torch.sh: no vmoe binary at $vmoe (build first, or set VMOE)" >&2; exit 2; }
$py -c "import torch" 2>/dev/null || { echo "bench_train_vs_torch.sh: PyTorch is missing: apt-get install python3-torch" >&2; exit 2; }
[ -e "$openblas/libblas.so.3" ] || { echo "bench_train_vs_torch.sh: OpenBLAS is missing: apt-get install libopenblas0-openmp" >&2; exit 2; }
[ $# -gt 0 ] || set -- data/models/vit-fmnist.safetensors data/models/vmoe-fmnist.safetensors data/models/softmoe-fmnist.safetensors
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
field() { $py -c "import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])['$1'])"; }
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# training at batch $batch, $rounds rounds of $secs s per side; PyTorch $($py -c 'import torch; print(torch.__version__)'), OpenBLAS, 2 threads"
echo "| model | vmoe images/s (best) | % of ceiling (round 1) | PyTorch images/s (best) | vmoe/PyTorch per round: median [min, max] |"
echo "|---|---|---|---|---|"
for model in "$@"; do
  check=(--check "$vmoe")
  vs=() ts=() share=""
  for r in $(seq "$rounds"); do
    ceiling=(--no-ceiling)
    [ "$r" = 1 ] && ceiling=()
    "$vmoe" bench --train -m "$model" --batch "$batch" --seconds "$secs" ${ceiling[@]+"${ceiling[@]}"} --json > "$tmp/v.json"
    vs+=("$(field images_per_s < "$tmp/v.json")")
    [ "$r" = 1 ] && share=$($py -c "import json,sys; print(json.load(sys.stdin)['matmul_ceiling']['percent'])" < "$tmp/v.json")
    OMP_WAIT_POLICY=passive LD_LIBRARY_PATH=$openblas $py scripts/bench_vs_torch.py -m "$model" --train \
      --batch "$batch" --seconds "$secs" --threads 2 "${check[@]}" > "$tmp/t.json"
    check=()
    ts+=("$(field images_per_s < "$tmp/t.json")")
  done
  $py - "$(basename "$model" .safetensors)" "${vs[*]}" "${ts[*]}" "$share" <<'PY'
import statistics, sys
name, vs, ts, share = sys.argv[1], list(map(float, sys.argv[2].split())), list(map(float, sys.argv[3].split())), sys.argv[4]
ratios = [v / t for v, t in zip(vs, ts)]
share = '%.0f%%' % float(share) if share else ''
print('| %s | %.1f | %s | %.1f | %.2fx [%.2f, %.2f] |' % (name, max(vs), share, max(ts), statistics.median(ratios), min(ratios), max(ratios)))
PY
done
