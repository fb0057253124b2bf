#!/usr/bin/env bash
# f32 against bf16 inference (issue 23, item 5), interleaved: in each of ROUNDS rounds
# (default 2) every model and batch runs `vmoe bench` once per variant for SECONDS_PER
# seconds (default 3), then the f32 and bf16 matmul ceilings are measured, so a burst of
# load hits all cells alike. Prints the median images/s of the rounds (min-max), bf16/f32,
# and each variant's GFLOP/s against its own ceiling.
#   scripts/bench_precision.sh [MODEL[:BATCH,BATCH...] ...]
# MODEL is a file or an architecture name (`vmoe init --list`; created once, seed 1, in
# $CACHE, default ~/.cache/vmoe-bench/models). Default: vmoe-s32:8 vmoe-b16:8.
# Environment: VMOE (default build/vmoe), ROUNDS, SECONDS_PER, CACHE, VARIANTS (default
# "f32 bf16"; "f32-plain" is f32 with VMOE_F32_PLAIN=1, weights not packed).
set -euo pipefail
cd "$(dirname "$0")/.."
vmoe=${VMOE:-build/vmoe}
rounds=${ROUNDS:-2}
secs=${SECONDS_PER:-3}
cache=${CACHE:-$HOME/.cache/vmoe-bench/models}
variants=${VARIANTS:-f32 bf16}
[ $# -gt 0 ] || set -- vmoe-s32:8 vmoe-b16:8
if ! grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo; then
  echo "bench_precision: this CPU has no native bf16 (avx512_bf16 or AMX); nothing to compare" >&2
  exit 1
fi
model_file() {  # a path, or an architecture created once in the cache
  if [ -f "$1" ]; then echo "$1"; return; fi
  mkdir -p "$cache"
  local f="$cache/$1-seed1.safetensors"
  [ -s "$f" ] || "$vmoe" init --arch "$1" --seed 1 -o "$f" >&2
  echo "$f"
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
py=/usr/bin/python3
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load at start $(cut -d' ' -f1-3 /proc/loadavg), $rounds rounds x ${secs} s, median (min-max)"
for r in $(seq "$rounds"); do
  for spec in "$@"; do
    name=${spec%%:*}
    batches=${spec#*:}
    [ "$batches" = "$spec" ] && batches=8
    file=$(model_file "$name")
    n=$(basename "$name" .safetensors)
    for b in ${batches//,/ }; do
      for v in $variants; do
        env=()
        precision=$v
        [ "$v" = f32-plain ] && env=(VMOE_F32_PLAIN=1) && precision=f32
        env ${env[@]+"${env[@]}"} "$vmoe" bench -m "$file" --batch "$b" --seconds "$secs" --no-ceiling --json \
          --precision "$precision" | $py -c "import json,sys; j=json.load(sys.stdin); print(j['images_per_s'], j['gflops_per_s'])" \
          >>"$tmp/$n.$b.$v"
      done
    done
  done
  for p in f32 bf16; do
    "$vmoe" bench -m "$(model_file "${1%%:*}")" --batch 1 --seconds 0 --json --precision "$p" |
      $py -c "import json,sys; print(json.load(sys.stdin)['matmul_ceiling']['gflops_per_s'])" >>"$tmp/ceiling.$p"
  done
done
echo "# load at end $(cut -d' ' -f1-3 /proc/loadavg)"
$py - "$tmp" "$variants" "$@" <<'PY'
import statistics, sys, os
tmp, variants, specs = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
ceil = {p: statistics.median(float(x) for x in open(f"{tmp}/ceiling.{p}")) for p in ("f32", "bf16")}
print(f"ceilings (median of rounds): f32 {ceil['f32']:.0f} GFLOP/s, bf16 {ceil['bf16']:.0f} GFLOP/s")
head = "| model | batch |" + "".join(f" {v} images/s |" for v in variants) + " bf16 / f32 |" + "".join(f" {v} % of its ceiling |" for v in variants)
print(head)
print("|" + "---|" * (head.count("|") - 1))
for spec in specs:
    name = spec.split(":")[0]
    batches = spec.split(":")[1].split(",") if ":" in spec else ["8"]
    n = os.path.basename(name).removesuffix(".safetensors")
    for b in batches:
        cells, med, pct = [], {}, []
        for v in variants:
            rows = [tuple(map(float, line.split())) for line in open(f"{tmp}/{n}.{b}.{v}")]
            ips = [r[0] for r in rows]
            med[v] = statistics.median(ips)
            cells.append(f" {med[v]:.1f} ({min(ips):.1f}-{max(ips):.1f}) |")
            c = ceil["bf16" if v == "bf16" else "f32"]
            pct.append(f" {100 * statistics.median(r[1] for r in rows) / c:.0f}% |")
        ratio = f" {med['bf16'] / med['f32']:.2f}x |" if "bf16" in med and "f32" in med else " |"
        print(f"| {n} | {b} |" + "".join(cells) + ratio + "".join(pct))
PY
