#!/usr/bin/env bash
# A/B timing of two vmoe binaries on a shared, noisy machine: for each model and batch,
# the two binaries run `vmoe bench` back to back, ROUNDS times in turn (default 3, each
# SECONDS_PER seconds, default 1.5), and the best images/s of each is printed.
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
echo "| model | batch | old images/s | new images/s | new/old |"
echo "|---|---|---|---|---|"
for spec in "$@"; do
  model=${spec%%:*}
  for b in $(echo "${spec#*:}" | tr , ' '); do
    best_old=0 best_new=0
    for _ in $(seq "$rounds"); do
      o=$(ips "$old" "$model" "$b"); n=$(ips "$new" "$model" "$b")
      best_old=$(/usr/bin/python3 -c "print(max($best_old, $o))"); best_new=$(/usr/bin/python3 -c "print(max($best_new, $n))")
    done
    /usr/bin/python3 -c "print('| $(basename "$model" .safetensors) | $b | %.1f | %.1f | %.2f |' % ($best_old, $best_new, $best_new / $best_old))"
  done
done
