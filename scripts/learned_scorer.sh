#!/usr/bin/env bash
# learned_scorer.sh OUTDIR — the `learned` row of issue 22's importance table. A learned
# scorer is part of a model (it scales the MoE output, docs/ROUTING.md §4.1), so it needs
# training: for each seed in SEEDS (default "1 2 3") the bundled vmoe-fmnist is continued
# for one epoch with `--priority learned --priority-penalty 0.002` and its training recipe
# (factors 0.25 and 1.05 in turn, groups of 8, lr 5e-4, one thread), written to
# OUTDIR/learned-sN.safetensors (not committed: the same command gives it again; its
# training log OUTDIR/learned-sN.csv is). Then importance_table.sh runs BPR by the learned
# score and by max_gate on that model into OUTDIR/sN/ (the oracle's importance kept comes
# with every row), and aggregate_importance.py --seeds writes OUTDIR/seeds.csv: each
# seed's model is one replicate, learned paired with max_gate on the same model.
# Resumable: finished models and rows are not run again. Env: VMOE, SEEDS, EPOCHS (1), and
# importance_table.sh's LIMIT, SHARDS, THREADS, FACTORS.
set -euo pipefail
[[ $# -ge 1 ]] || { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
out=$1
here=$(cd "$(dirname "$0")" && pwd)
vmoe=${VMOE:-$here/../build/vmoe}
mkdir -p "$out"
evals=()
for seed in ${SEEDS:-1 2 3}; do
  model=$out/learned-s$seed.safetensors
  if [[ ! -s $model ]]; then
    echo "[$(date +%H:%M)] training the learned scorer, seed $seed" >&2
    "$vmoe" train --init-from "$here/../data/models/vmoe-fmnist.safetensors" --data fashion-mnist:train \
      --priority learned --priority-penalty 0.002 --train-capacity-factors 0.25,1.05 --group-images 8 \
      --eval-capacity-factor 1.05 --warmup-epochs 0.2 --batch 128 --lr 5e-4 --epochs "${EPOCHS:-1}" --seed "$seed" \
      --threads "${THREADS:-1}" --test-data none --log "$out/learned-s$seed.csv" -o "$model"
    rm -f "$model.train"
  fi
  MODEL=$model ORDERS="learned max_gate" FITTED_SEEDS="" VMOE=$vmoe "$here/importance_table.sh" "$out/s$seed" >/dev/null
  evals+=("$out/s$seed/eval.csv")
done
python3 "$here/aggregate_importance.py" --seeds "${evals[@]}" --out "$out"
