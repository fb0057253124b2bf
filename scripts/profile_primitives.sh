#!/usr/bin/env bash
# Where a forward pass spends its oneDNN time: runs `vmoe bench` with ONEDNN_VERBOSE=1 and
# sums each primitive's execution times, per pass, grouped by kind, implementation,
# post-ops and shape (the row count, which varies per expert, shown as M). Prints the
# bench's own per-stage times first; what the stages hold beyond the oneDNN sum is our
# code (attention kernel, routing, dispatch/combine). Verbose mode adds a little per call.
#   scripts/profile_primitives.sh MODEL BATCH [vmoe bench options...]
# Environment: VMOE (binary, default build/vmoe), SECONDS_PER (default 2), TOP (rows, 25).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 MODEL BATCH [vmoe bench options...]" >&2; exit 2; }
model=$1 batch=$2
shift 2
raw=$(mktemp)
trap 'rm -f "$raw"' EXIT
ONEDNN_VERBOSE=1 "${VMOE:-build/vmoe}" bench -m "$model" --batch "$batch" --seconds "${SECONDS_PER:-2}" \
  --no-ceiling "$@" > "$raw" 2>&1
grep -E '^(batch|throughput) ' "$raw"
grep -A12 '^stages' "$raw" | grep ' ms ' || true
# Every pass, the two warm-up ones included, executes the same primitives.
passes=$(($(grep -oE '[0-9]+ timed passes' "$raw" | cut -d' ' -f1) + 2))
awk -F, -v passes="$passes" -v top="${TOP:-25}" '
  /^onednn_verbose,exec/ {
    shape = $(NF - 1); sub(/^[0-9]+x/, "Mx", shape)
    key = $4 " " $5 " " $8 " " shape
    ms[key] += $NF; calls[key]++; total += $NF
  }
  END {
    n = 0
    for (k in ms) order[++n] = k
    for (i = 1; i <= n; i++)  # by time, largest first
      for (j = i + 1; j <= n; j++)
        if (ms[order[j]] > ms[order[i]]) { t = order[i]; order[i] = order[j]; order[j] = t }
    printf "oneDNN: %.2f ms per pass in %d primitive shapes\n", total / passes, n
    for (i = 1; i <= n && i <= top; i++)
      printf "%9.2f ms/pass %6.1f calls/pass  %s\n", ms[order[i]] / passes, calls[order[i]] / passes, order[i]
  }' "$raw"
