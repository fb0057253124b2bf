#!/usr/bin/env bash
# variants_table.sh OUTDIR [EPOCHS]
# Issue 11's comparison: trains each routing variant from scratch on Fashion-MNIST with the
# same budget (EPOCHS, default 1; batch 128, lr 2e-3, seed 1 as the bundled models, but
# a 0.2-epoch warm-up so that short budgets still decay the learning rate),
# then evaluates every model on the 10k test split at capacity factors 1.0 / 0.5 / 0.25
# in groups of 8 images (the top-2 model also with each BPR scorer and vanilla order).
# Writes OUTDIR/NAME.safetensors, OUTDIR/NAME.csv (training log), OUTDIR/eval.csv (one
# `vmoe eval --format csv` row per model x setting) and prints the markdown table.
# Every variant costs the same per token as the top-2 V-MoE (two 192-wide expert MLPs,
# or the dense 384-wide MLP), except where the table says otherwise.
# Resumable: a variant whose model file exists is not trained again; an existing eval.csv
# row is not recomputed. JOBS (default 2) trainings run at once, each on one thread.
# VMOE (default build/vmoe).
set -euo pipefail
[[ $# -ge 1 ]] || { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
out=$1
epochs=${2:-1}
vmoe=${VMOE:-build/vmoe}
jobs=${JOBS:-2}
mkdir -p "$out"

# name | training flags
variants=(
  "dense|--arch vit-fmnist"
  "top2|--arch vmoe-fmnist"
  "learned|--arch vmoe-fmnist --priority learned --priority-penalty 0.002"
  "experts_choice|--arch ec-fmnist"
  "soft|--arch softmoe-fmnist"
  "shared|--arch vmoe-fmnist --k 1 --shared-experts 1"
  "topk_softmax|--arch vmoe-fmnist --gating topk_softmax"
  "overflow_next|--arch vmoe-fmnist --overflow next"
  "bias|--arch vmoe-fmnist --balance bias"
)

train_one() {
  local name=$1 flags=$2
  [[ -s $out/$name.safetensors ]] && return 0
  rm -f "$out/$name.csv"
  # shellcheck disable=SC2086
  nice -n 5 "$vmoe" train --data fashion-mnist:train $flags --epochs "$epochs" --warmup-epochs 0.2 --batch 128 --lr 2e-3 --seed 1 \
    --threads 1 --log "$out/$name.csv" -o "$out/$name.safetensors" >"$out/$name.log" 2>&1 ||
    { echo "variants_table: training $name failed (see $out/$name.log); the table leaves it out" >&2; rm -f "$out/$name.csv"; }
  return 0
}

running=0
for v in "${variants[@]}"; do
  train_one "${v%%|*}" "${v#*|}" &
  running=$((running + 1))
  if [[ $running -ge $jobs ]]; then wait -n; running=$((running - 1)); fi
done
wait

eval_csv=$out/eval.csv
row() {  # row KEY ARGS...: one eval row, tagged with KEY, unless eval.csv has it already
  local key=$1
  shift
  [[ -s $eval_csv ]] && grep -q "^$key," "$eval_csv" && return 0
  local csv
  csv=$("$vmoe" eval --data fashion-mnist:test --format csv "$@")
  [[ -s $eval_csv ]] || echo "key,$(head -1 <<<"$csv")" >"$eval_csv"
  echo "$key,$(tail -1 <<<"$csv")" >>"$eval_csv"
}
for v in "${variants[@]}"; do
  name=${v%%|*}
  m=$out/$name.safetensors
  [[ -s $m ]] || continue
  case $name in
    dense) row "$name" -m "$m" ;;
    soft) row "$name" -m "$m" ;;  # slots are per group of the trained size: no factor to vary
    *)
      for c in 1.0 0.5 0.25; do
        row "$name@$c" -m "$m" --group-images 8 --capacity-factor $c
        if [[ $name == top2 ]]; then
          for p in sum_gates entropy random; do
            row "$name/$p@$c" -m "$m" --group-images 8 --capacity-factor $c --priority $p
          done
          row "$name/vanilla@$c" -m "$m" --group-images 8 --capacity-factor $c --routing vanilla
        fi
      done
      ;;
  esac
done

/usr/bin/python3 - "$out" "$eval_csv" <<'PY'
import csv, os, sys
out, path = sys.argv[1], sys.argv[2]
rows = {r["key"]: r for r in csv.DictReader(open(path))}
def minutes(name):
    log = os.path.join(out, name + ".csv")
    return sum(float(r["seconds"]) for r in csv.DictReader(open(log))) / 60 if os.path.exists(log) else float("nan")
def mean(field):
    xs = [float(x) for x in field.split(";") if x] if field else []
    return sum(xs) / len(xs) if xs else float("nan")
print("| variant | top-1 @1.0 | @0.5 | @0.25 | fg kept >=1 @0.5 | @0.25 | training minutes |")
print("|---|---|---|---|---|---|---|")
labels = {}
for key in rows:
    base = key.split("@")[0]
    labels.setdefault(base, None)
for base in labels:
    name = base.split("/")[0]
    cells = []
    for c in ("1.0", "0.5", "0.25"):
        r = rows.get(f"{base}@{c}") or rows.get(base)
        cells.append(f"{100 * float(r['top1']):.2f}" if r else "")
    fg = []
    for c in ("0.5", "0.25"):
        r = rows.get(f"{base}@{c}")
        fg.append(f"{100 * mean(r['foreground_kept_any_per_layer']):.1f}%" if r and r["foreground_kept_any_per_layer"] else "n/a")
    print(f"| {base} | {' | '.join(cells)} | {' | '.join(fg)} | {minutes(name):.1f} |")
PY
