#!/usr/bin/env bash
# images/s against the batch size (issue 23's small-batch cliff), interleaved: in each of
# ROUNDS rounds (default 3) every model runs `vmoe bench` at every batch for SECONDS_PER
# seconds (default 1), so a burst of load hits all cells alike; prints the median of the
# rounds (and min-max) per cell. THREADS="1 2" adds a --threads run per value (default:
# none, vmoe's own choice).
#   scripts/bench_batches.sh [MODEL.safetensors ...]     (default: the three bundled models)
# Environment: VMOE (default build/vmoe), BATCHES (default "1 2 4 8 16"), ROUNDS,
# SECONDS_PER, THREADS.
set -euo pipefail
cd "$(dirname "$0")/.."
vmoe=${VMOE:-build/vmoe}
rounds=${ROUNDS:-3}
secs=${SECONDS_PER:-1}
batches=${BATCHES:-1 2 4 8 16}
threads=${THREADS:-default}
[ $# -gt 0 ] || set -- data/models/vit-fmnist.safetensors data/models/vmoe-fmnist.safetensors \
  data/models/softmoe-fmnist.safetensors
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), load at start $(cut -d' ' -f1-3 /proc/loadavg), $rounds rounds x ${secs} s, median (min-max)"
for r in $(seq "$rounds"); do
  for m in "$@"; do
    for t in $threads; do
      for b in $batches; do
        opt=()
        [ "$t" != default ] && opt=(--threads "$t")
        "$vmoe" bench -m "$m" --batch "$b" --seconds "$secs" --no-ceiling --json ${opt[@]+"${opt[@]}"} |
          /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['images_per_s'])" \
          >>"$tmp/$(basename "$m" .safetensors).$t.$b"
      done
    done
  done
done
echo "# load at end $(cut -d' ' -f1-3 /proc/loadavg)"
head="| model | threads |"
for b in $batches; do head+=" batch $b |"; done
echo "$head"
echo "$head" | sed 's/[^|]*|/---|/g; s/^---|/|/'
for m in "$@"; do
  n=$(basename "$m" .safetensors)
  for t in $threads; do
    row="| $n | $t |"
    for b in $batches; do
      row+=$(/usr/bin/python3 -c "
import statistics, sys
v = [float(x) for x in open(sys.argv[1])]
print(' %.0f (%.0f-%.0f) |' % (statistics.median(v), min(v), max(v)))" "$tmp/$n.$t.$b")
    done
    echo "$row"
  done
done
