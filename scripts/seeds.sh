#!/usr/bin/env bash
# seeds.sh OUTDIR — issue 22's multi-seed comparison at equal active compute per token.
# Trains every arm with each seed in SEEDS, evaluates each model on the 10k Fashion-MNIST
# test split at capacity factors 1.0, 0.5 and 0.25 in groups of 8 images, then aggregates
# mean, standard deviation and a 95% confidence interval per arm and setting
# (scripts/aggregate_seeds.py: OUTDIR/summary.csv, OUTDIR/comparisons.csv, OUTDIR/seeds.png).
#
# Arms (each MoE block as vmoe-fmnist: 8 experts of MLP 192, top-2 = the dense MLP's 384):
#   dense        vit-fmnist from scratch, EPOCHS
#   vmoe         vmoe-fmnist from scratch, EPOCHS; evaluated with BPR (max_gate) and vanilla
#   soft         softmoe-fmnist from scratch, EPOCHS
#   ec           ec-fmnist (experts-choice) from scratch, EPOCHS
#   up_softmax   the seed's dense model upcycled (every block, 8 experts, k 2, MLP split 2),
#                then UP_EPOCHS more with raw softmax gates (V-MoE)
#   up_topk      the same with renormalised top-k gates (--gating topk_softmax)
#   dense_cont   the seed's dense model continued for UP_EPOCHS (the upcycling baseline)
#
# Budget (defaults): SEEDS="1 2 3", EPOCHS=3, UP_EPOCHS=1: 4 x 3 x 3 + 3 x 3 x 1 = 45
# training epochs, about 90-100 minutes of both cores on a quiet 2-core machine (one
# epoch of vmoe-fmnist ~2 min). Each model is evaluated as soon as it is trained, and its
# rows in RESULTS/eval.csv are what counts: a run whose rows are all there is never
# trained again, even when its model file is gone (a new clone); an interrupted training
# continues from its state file (vmoe train --resume). So commit RESULTS and run the
# script again, in the background, until it prints the summary (also in a later session):
#   RESULTS=docs/results/seeds nohup scripts/seeds.sh /tmp/seeds > seeds.log 2>&1 &
# Env: VMOE (default build/vmoe), RESULTS (default OUTDIR), SEEDS, EPOCHS, UP_EPOCHS,
# LIMIT (training images, for a smoke run), TEST_LIMIT (test images), THREADS (default 2),
# ARMS (default all).
set -euo pipefail
[[ $# -ge 1 ]] || { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
out=$1
vmoe=${VMOE:-build/vmoe}
seeds=${SEEDS:-1 2 3}
epochs=${EPOCHS:-3}
up_epochs=${UP_EPOCHS:-1}
threads=${THREADS:-2}
arms=${ARMS:-dense vmoe soft ec up_softmax up_topk dense_cont}
results=${RESULTS:-$out}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out" "$results"
limit=()
[[ -n ${LIMIT:-} ]] && limit=(--limit "$LIMIT")
test_limit=()
[[ -n ${TEST_LIMIT:-} ]] && test_limit=(--limit "$TEST_LIMIT")

# Same recipe as the bundled models (batch 128, lr 2e-3), a 0.2-epoch warm-up so short
# budgets still decay the learning rate; continued runs take lr 5e-4 as in docs/RESULTS.md.
common=(--data fashion-mnist:train --batch 128 --test-data none --threads "$threads" "${limit[@]}")

# train NAME SEED FLAGS...: resumable, leaves NAME.done when finished.
train() {
  local name=$1 seed=$2; shift 2
  local model=$out/$name.safetensors
  [[ -e $out/$name.done ]] && return 0
  if [[ -s $model.train ]]; then
    echo "[$(date +%H:%M)] $name: resuming" >&2
    "$vmoe" train --resume "$model.train" -o "$model" --threads "$threads" >>"$out/$name.log" 2>&1
  else
    echo "[$(date +%H:%M)] $name: training" >&2
    rm -f "$model" "$out/$name.csv"
    "$vmoe" train "${common[@]}" --seed "$seed" --log "$out/$name.csv" "$@" -o "$model" >>"$out/$name.log" 2>&1
  fi
  touch "$out/$name.done"
}

# Evaluations: one `vmoe eval --format csv` row per (model, setting), arm, seed and setting
# in front. Settings: the factor ("1.0", "0.5", "0.25") for routed arms, "all" where
# nothing is dropped (dense, Soft-MoE); vmoe is evaluated with BPR (max_gate) and, as the
# arm vmoe_vanilla, in token order.
evals=$results/eval.csv
has_row() { grep -q "^$1,$2,$3," "$evals" 2>/dev/null; }
settings_of() {
  case $1 in
    dense | dense_cont | soft) echo all ;;
    *) echo 1.0 0.5 0.25 ;;
  esac
}
evaluated() {  # ARM SEED: every row of the run is in eval.csv
  local setting
  for setting in $(settings_of "$1"); do
    has_row "$1" "$2" "$setting" || return 1
    if [[ $1 == vmoe ]]; then has_row vmoe_vanilla "$2" "$setting" || return 1; fi
  done
  return 0
}
evaluate_one() {  # MODEL ARM SEED SETTING FLAGS...
  local model=$1 arm=$2 seed=$3 setting=$4; shift 4
  has_row "$arm" "$seed" "$setting" && return 0
  local output
  output=$("$vmoe" eval -m "$model" --data fashion-mnist:test --group-images 8 --format csv "${test_limit[@]}" "$@")
  [[ -s $evals ]] || echo "arm,seed,setting,$(head -n 1 <<<"$output")" >"$evals"
  echo "$arm,$seed,$setting,$(tail -n 1 <<<"$output")" >>"$evals"
}
evaluate() {  # ARM SEED
  local arm=$1 seed=$2 model=$out/$1-s$2.safetensors setting
  for setting in $(settings_of "$arm"); do
    case $arm in
      dense | dense_cont | soft) evaluate_one "$model" "$arm" "$seed" all ;;
      ec) evaluate_one "$model" ec "$seed" "$setting" --capacity-factor "$setting" ;;
      *)
        evaluate_one "$model" "$arm" "$seed" "$setting" --capacity-factor "$setting" --routing bpr
        # An if, not `[[ ]] &&`: as a function's last command a false test is its status,
        # and set -e then ends the script (it stopped after the first upcycled arm).
        if [[ $arm == vmoe ]]; then
          evaluate_one "$model" vmoe_vanilla "$seed" "$setting" --capacity-factor "$setting" --routing vanilla
        fi
        ;;
    esac
  done
}

for seed in $seeds; do
  for arm in $arms; do
    evaluated "$arm" "$seed" && continue
    name=$arm-s$seed
    case $arm in
      dense) train "$name" "$seed" --arch vit-fmnist --epochs "$epochs" --warmup-epochs 0.2 ;;
      vmoe) train "$name" "$seed" --arch vmoe-fmnist --epochs "$epochs" --warmup-epochs 0.2 ;;
      soft) train "$name" "$seed" --arch softmoe-fmnist --epochs "$epochs" --warmup-epochs 0.2 ;;
      ec) train "$name" "$seed" --arch ec-fmnist --epochs "$epochs" --warmup-epochs 0.2 ;;
      up_softmax | up_topk | dense_cont)
        # The seed's dense model (trained again, deterministically, if only its rows survive).
        [[ -s $out/dense-s$seed.safetensors ]] || rm -f "$out/dense-s$seed.done"
        train "dense-s$seed" "$seed" --arch vit-fmnist --epochs "$epochs" --warmup-epochs 0.2
        start=$out/dense-s$seed.safetensors
        if [[ $arm != dense_cont ]]; then
          start=$out/upcycled-s$seed.safetensors
          [[ -s $start ]] || "$vmoe" upcycle -m "$out/dense-s$seed.safetensors" --moe-layers 0 1 2 3 4 5 --experts 8 --k 2 \
            --mlp-split 2 --seed "$seed" -o "$start" >>"$out/upcycle.log" 2>&1
        fi
        gating=()
        [[ $arm == up_topk ]] && gating=(--gating topk_softmax)
        train "$name" "$seed" --init-from "$start" --epochs "$up_epochs" --lr 5e-4 --warmup-epochs 0.2 "${gating[@]}" ;;
      *) echo "seeds.sh: unknown arm $arm" >&2; exit 2 ;;
    esac
    evaluate "$arm" "$seed"
  done
done

python3 "$here/aggregate_seeds.py" "$evals" --out "$results"
