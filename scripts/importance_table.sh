#!/usr/bin/env bash
# importance_table.sh OUTDIR — issue 22's importance table for one V-MoE model: for each
# processing order (BPR by max_gate, sum_gates, entropy, random; vanilla; BPR by
# importance itself = --priority oracle) and capacity factor (0.5, 0.25, 0.1; groups of 8
# images), `vmoe eval --importance` on SHARDS disjoint shards of the first LIMIT test
# images. Each shard is one replicate: OUTDIR/summary.csv has the mean over shards and a
# 95% confidence interval (Student t) of top-1, importance kept and the oracle order's
# importance kept. Resumable: rows already in OUTDIR/eval.csv are not run again.
# Order fitted_sN: BPR by a priority head fitted to importance on 1024 training images
# drawn with seed N (`vmoe fit-priority`, written once to OUTDIR/fitted-sN.safetensors,
# not committed: the same command gives it again); FITTED_SEEDS="1 2 3" adds those orders.
# Env: VMOE (default build/vmoe), MODEL (default: the bundled vmoe-fmnist), LIMIT (512),
# SHARDS (4), THREADS (1), ORDERS, FACTORS, FITTED_SEEDS (default none), FIT_IMAGES (1024).
set -euo pipefail
[[ $# -ge 1 ]] || { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
out=$1
vmoe=${VMOE:-build/vmoe}
here=$(cd "$(dirname "$0")" && pwd)
model=${MODEL:-$here/../data/models/vmoe-fmnist.safetensors}
limit=${LIMIT:-512}
shards=${SHARDS:-4}
threads=${THREADS:-1}
orders=${ORDERS:-max_gate sum_gates entropy random vanilla oracle}
for seed in ${FITTED_SEEDS:-}; do orders+=" fitted_s$seed"; done
factors=${FACTORS:-0.5 0.25 0.1}
mkdir -p "$out"
evals=$out/eval.csv
for factor in $factors; do
  for order in $orders; do
    for ((s = 0; s < shards; s++)); do
      grep -q "^$order,$factor,$s," "$evals" 2>/dev/null && continue
      flags=(--routing bpr --priority "$order")
      run_model=$model
      if [[ $order == vanilla ]]; then
        flags=(--routing vanilla)
      elif [[ $order == fitted_s* ]]; then
        run_model=$out/fitted-s${order#fitted_s}.safetensors
        [[ -s $run_model ]] || "$vmoe" fit-priority -m "$model" --images "${FIT_IMAGES:-1024}" --seed "${order#fitted_s}" \
          --threads "$threads" -o "$run_model" >&2
        flags=(--routing bpr --priority fitted)
      fi
      echo "[$(date +%H:%M)] $order at $factor, shard $s/$shards" >&2
      row=$("$vmoe" eval -m "$run_model" --data fashion-mnist:test --limit "$limit" --shard "$s/$shards" --group-images 8 \
        --capacity-factor "$factor" --threads "$threads" --importance --format csv "${flags[@]}")
      [[ -s $evals ]] || echo "order,factor,shard,$(head -n 1 <<<"$row")" >"$evals"
      echo "$order,$factor,$s,$(tail -n 1 <<<"$row")" >>"$evals"
    done
  done
done
python3 "$here/aggregate_importance.py" "$evals" --out "$out"
