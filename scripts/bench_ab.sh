#!/usr/bin/env bash
# A/B timing of two vmoe binaries on a shared, noisy machine: for each model and batch,
# the two binaries run `vmoe bench` back to back, ROUNDS times in turn (default 3, each
# SECONDS_PER seconds, default 1.5); the best images/s of each is printed, and the median
# of the per-round ratios.
# TRAIN=1 times training steps (`vmoe bench --train`) instead of inference passes.
#   scripts/bench_ab.sh OLD_BINARY NEW_BINARY MODEL:BATCH[,BATCH...] ...
set -euo pipefail
old=$1 new=$2
shift 2
rounds=${ROUNDS:-3}
secs=${SECONDS_PER:-1.5}
mode=()
[ "${TRAIN:-0}" = 1 ] && mode=(--train)
ips() { "$1" bench "${mode[@]}" -m "$2" --batch "$3" --seconds "$secs" --no-ceiling --json |
        /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['images_per_s'])"; }
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), load $(cut -d' ' -f1-3 /proc/loadavg), best of $rounds x ${secs} s${mode:+, training}"
echo "| model | batch | old images/s | new images/s | new/old (best) | new/old per round: median [min, max] |"
echo "|---|---|---|---|---|---|"
for spec in "$@"; do
  model=${spec%%:*}
  for b in $(echo "${spec#*:}" | tr , ' '); do
    olds=() news=()
    for _ in $(seq "$rounds"); do
      olds+=("$(ips "$old" "$model" "$b")"); news+=("$(ips "$new" "$model" "$b")")
    done
    # Each round's pair ran back to back, so its ratio is less exposed to the machine's
    # slow and fast phases than the best of each column.
    /usr/bin/python3 - "$(basename "$model" .safetensors)" "$b" "${olds[*]}" "${news[*]}" <<'PY'
import statistics, sys
name, batch, olds, news = sys.argv[1], sys.argv[2], list(map(float, sys.argv[3].split())), list(map(float, sys.argv[4].split()))
ratios = [n / o for o, n in zip(olds, news)]
print('| %s | %s | %.1f | %.1f | %.2f | %.2f [%.2f, %.2f] |' % (name, batch, max(olds), max(news), max(news) / max(olds),
      statistics.median(ratios), min(ratios), max(ratios)))
PY
  done
done
