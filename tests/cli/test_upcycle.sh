#!/usr/bin/env bash
# `vmoe upcycle` on the bundled dense model, then classify/route/eval on the result
# (issue 14 acceptance); the zero-router top-k model at capacity factor E/k gives the dense
# model's logits; `vmoe train --init-from` continues from a model file and refuses
# mismatched architecture flags; `--resize none|stretch|resize_small_crop` on classify,
# route and eval, with bad values refused (exit 2, one line), and the size-mismatch
# message naming what to do.
#   bash tests/cli/test_upcycle.sh VMOE_BINARY WORKDIR
set -uo pipefail
vmoe=$(realpath "${1:?usage: test_upcycle.sh VMOE_BINARY WORKDIR}")
work=${2:?usage: test_upcycle.sh VMOE_BINARY WORKDIR}
source_dir=${VMOE_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
source "$(dirname "$(realpath "$0")")/common/expect.sh"
rm -rf "$work"
mkdir -p "$work"
cd "$work" || exit 1

logits() {  # logits JSON_FILE: the first result's logits, one per line
  /usr/bin/python3 -c 'import json,sys; print("\n".join(str(v) for v in json.load(open(sys.argv[1]))["results"][0]["logits"]))' "$1"
}
max_diff() {  # max_diff FILE FILE: largest absolute difference of two logit lists
  paste "$1" "$2" | awk '{d = $1 - $2; if (d < 0) d = -d; if (d > m) m = d} END {printf "%.6g\n", m}'
}

dense="$source_dir/data/models/vit-fmnist.safetensors"
boot="$source_dir/data/samples/fmnist_0_ankle-boot.png"
photo="$source_dir/data/samples/chelsea.png"

# --- upcycle the bundled dense model, use the result -------------------------------------
expect 0 "upcycle vit-fmnist, blocks 1,3,5, 8 experts top-2" -- \
  "$vmoe" upcycle -m "$dense" --moe-layers 1,3,5 --experts 8 --k 2 -o up.safetensors
ls -a | grep -q "\.tmp" && fail "temporary files left behind: $(ls -a)"
expect 0 "info of the upcycled model" -- "$vmoe" info up.safetensors
grep -q "top_k router, 8 experts, k 2" out.txt || fail "info does not show the MoE layers: $(cat out.txt)"
expect 0 "classify with the upcycled model" -- "$vmoe" classify -m up.safetensors "$boot" --json
expect 0 "route with the upcycled model" -- "$vmoe" route -m up.safetensors "$boot" --no-pictures --json
expect 0 "eval of the upcycled model on 64 test images" -- "$vmoe" eval -m up.safetensors --data fashion-mnist:test --limit 64

# Zero router: every gate is 1/E, every token picks experts 0 and 1; at factor E/k = 4
# nothing is dropped and the logits are the dense model's; at the config's 1.05 they move.
expect 0 "dense logits" -- "$vmoe" classify -m "$dense" "$boot" --json
logits out.txt >dense.txt
expect 0 "upcycled logits at capacity factor 4" -- "$vmoe" classify -m up.safetensors "$boot" --json --capacity-factor 4
logits out.txt >up4.txt
d=$(max_diff dense.txt up4.txt)
awk -v d="$d" 'BEGIN {exit !(d < 1e-4)}' || fail "upcycled logits differ from the dense ones by $d at factor 4"
expect 0 "upcycled logits at capacity factor 1.05" -- "$vmoe" classify -m up.safetensors "$boot" --json
logits out.txt >up1.txt
d=$(max_diff dense.txt up1.txt)
awk -v d="$d" 'BEGIN {exit !(d > 1e-3)}' || fail "dropping tokens did not change the logits ($d)"
# Split MLPs (every block, expert MLP 192) keep the active compute and the function.
expect 0 "upcycle with --mlp-split 2" -- \
  "$vmoe" upcycle -m "$dense" --moe-layers 0,1,2,3,4,5 --experts 8 --k 2 --mlp-split 2 -o split.safetensors
expect 0 "split logits at capacity factor 4" -- "$vmoe" classify -m split.safetensors "$boot" --json --capacity-factor 4
logits out.txt >split4.txt
d=$(max_diff dense.txt split4.txt)
awk -v d="$d" 'BEGIN {exit !(d < 1e-4)}' || fail "split upcycled logits differ from the dense ones by $d"
expect 0 "upcycle to experts-choice" -- "$vmoe" upcycle -m "$dense" --moe-layers 1 --router experts_choice -o ec.safetensors
expect 0 "upcycle to soft" -- "$vmoe" upcycle -m "$dense" --moe-layers 5 --router soft --slots 2 --seed 3 -o soft.safetensors
expect 0 "classify with the soft upcycled model" -- "$vmoe" classify -m soft.safetensors "$boot"

expect 2 "upcycle an MoE model" -- "$vmoe" upcycle -m up.safetensors --moe-layers 1 -o x.safetensors
mentions "upcycle an MoE model" "already has MoE layers"
expect 2 "upcycle a block that does not exist" -- "$vmoe" upcycle -m "$dense" --moe-layers 9 -o x.safetensors
expect 2 "split without every block" -- "$vmoe" upcycle -m "$dense" --moe-layers 1,3 --mlp-split 2 -o x.safetensors
expect 2 "upcycle without --moe-layers" -- "$vmoe" upcycle -m "$dense" -o x.safetensors
expect 2 "upcycle with an unknown router" -- "$vmoe" upcycle -m "$dense" --moe-layers 1 --router random -o x.safetensors
expect 1 "upcycle a missing model" -- "$vmoe" upcycle -m nowhere.safetensors --moe-layers 1 -o x.safetensors
[ -e x.safetensors ] && fail "a refused upcycle wrote a model"

# --- train --init-from -------------------------------------------------------------------
tiny=(--data fashion-mnist:train --limit 256 --test-limit 128 --batch 64 --seed 2 --epochs 1)
expect 0 "train --init-from the upcycled model" -- "$vmoe" train "${tiny[@]}" --init-from up.safetensors -o cont.safetensors
expect 0 "the continued model classifies" -- "$vmoe" classify -m cont.safetensors "$boot"
expect 0 "--init-from with matching --arch flags" -- \
  "$vmoe" train "${tiny[@]}" --init-from "$dense" --arch vit-fmnist -o cont2.safetensors
expect 2 "--init-from with another architecture" -- \
  "$vmoe" train "${tiny[@]}" --init-from "$dense" --arch vit-fmnist --layers 2 -o x.safetensors
mentions "--init-from with another architecture" "num_layers"
expect 2 "--init-from and --resume" -- "$vmoe" train "${tiny[@]}" --init-from "$dense" --resume a.train -o x.safetensors
expect 2 "routing flags on a dense --init-from" -- "$vmoe" train "${tiny[@]}" --init-from "$dense" --capacity-factor 2 -o x.safetensors
expect 1 "--init-from a missing file" -- "$vmoe" train "${tiny[@]}" --init-from nowhere.safetensors -o x.safetensors
[ -e x.safetensors ] && fail "a refused run wrote a model"

# --- --resize ----------------------------------------------------------------------------
expect 1 "a photo on the 28x28 model" -- "$vmoe" classify -m "$dense" "$photo"
mentions "a photo on the 28x28 model" "--resize stretch"
mentions "a photo on the 28x28 model" "model made for photos"
expect 0 "--resize stretch fits the photo" -- "$vmoe" classify -m "$dense" "$photo" --resize stretch --json
expect 0 "--resize resize_small_crop fits the photo" -- "$vmoe" classify -m "$dense" "$photo" --resize resize_small_crop
expect 0 "route --resize stretch" -- "$vmoe" route -m up.safetensors "$photo" --resize stretch --no-pictures
expect 0 "eval --resize stretch (identity on 28x28)" -- "$vmoe" eval -m "$dense" --data fashion-mnist:test --limit 32 --resize stretch
expect 2 "--resize with a bad value" -- "$vmoe" classify -m "$dense" "$boot" --resize squash
expect 2 "route --resize with a bad value" -- "$vmoe" route -m up.safetensors "$boot" --resize 7
expect 2 "eval --resize with a bad value" -- "$vmoe" eval -m "$dense" --data fashion-mnist:test --resize ""

if [ "$failures" != 0 ]; then
  echo "$failures failure(s)"
  exit 1
fi
echo "all upcycle CLI tests passed"
