#!/usr/bin/env bash
# Non-finite values (issue 24, D10): a model file holding NaN or an infinity is refused
# when loaded, naming the tensor and the first bad index; a forward pass whose values
# overflow at run time (finite weights, huge scale) names the block and stage that went
# non-finite first instead of printing results; training stops with one line when the
# loss or a gradient is not finite and keeps the state before that step.
#   bash tests/cli/test_nonfinite.sh VMOE_BINARY WORKDIR
set -uo pipefail
vmoe=$(realpath "${1:?usage: test_nonfinite.sh VMOE_BINARY WORKDIR}")
work=${2:?usage: test_nonfinite.sh VMOE_BINARY WORKDIR}
source_dir=${VMOE_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
source "$(dirname "$(realpath "$0")")/common/expect.sh"
rm -rf "$work"
mkdir -p "$work"
cd "$work" || exit 1
sample="$source_dir/data/samples/fmnist_0_ankle-boot.png"

# edit MODEL OUT TENSOR EXPR: OUT is MODEL with tensor TENSOR's values v replaced by EXPR
# (a Python expression of v and i, the flat index), e.g. "float('nan')" or "v * 1e38".
edit() {
  /usr/bin/python3 - "$@" <<'PY'
import json, math, struct, sys
src, dst, name, expr = sys.argv[1:5]
with open(src, 'rb') as f:
    n = struct.unpack('<Q', f.read(8))[0]
    raw = f.read(n)
    header = json.loads(raw)
    data = bytearray(f.read())
begin, end = header[name]['data_offsets']
count = (end - begin) // 4
values = struct.unpack('<%df' % count, data[begin:end])
new = [eval(expr, {'math': math}, {'v': v, 'i': i}) for i, v in enumerate(values)]
data[begin:end] = struct.pack('<%df' % count, *new)
with open(dst, 'wb') as f:
    f.write(struct.pack('<Q', n))
    f.write(raw)
    f.write(data)
PY
}

expect 0 "a V-MoE" -- "$vmoe" init --arch vmoe-fmnist --seed 3 -o moe.safetensors
expect 0 "a dense ViT" -- "$vmoe" init --arch vit-fmnist --seed 3 -o vit.safetensors
router=Encoder/encoderblock_0/Moe/Router/dense/kernel
mlp=Encoder/encoderblock_2/Mlp/Dense_0/kernel

# --- loading: NaN / +inf / -inf anywhere ------------------------------------------------
edit moe.safetensors nan.safetensors "$router" "float('nan')"  # D10's file: the whole router kernel NaN
for cmd in "classify $sample -m nan.safetensors" "route $sample -m nan.safetensors -o routes" \
           "eval -m nan.safetensors --data fashion-mnist:test --limit 8" "info nan.safetensors"; do
  # shellcheck disable=SC2086
  expect 1 "NaN router kernel: $cmd" -- "$vmoe" $cmd
  mentions "NaN router kernel: $cmd" "tensor \"$router\" holds NaN at index [0, 0]"
done
[ -e routes ] && fail "route wrote pictures of a NaN model"
edit moe.safetensors inf.safetensors Encoder/encoderblock_3/Moe/Mlp/Dense_1/kernel "float('inf') if i == 1000 else v"
expect 1 "one +inf weight" -- "$vmoe" classify "$sample" -m inf.safetensors
mentions "one +inf weight" "holds +inf at index [0, 10, 40]"  # 1000 = 10 * 96 + 40 in (8, 192, 96)
edit vit.safetensors ninf.safetensors head/bias "-float('inf') if i == 9 else v"
expect 1 "one -inf weight" -- "$vmoe" classify "$sample" -m ninf.safetensors
mentions "one -inf weight" "tensor \"head/bias\" holds -inf at index [9]"
expect 1 "--init-from a NaN model" -- "$vmoe" train --data fashion-mnist:train --init-from nan.safetensors --limit 64 --batch 32 --test-data none --epochs 1 -o x.safetensors
mentions "--init-from a NaN model" "holds NaN"

# --- run time: finite weights whose activations overflow -----------------------------------
edit moe.safetensors loud.safetensors "$router" "math.copysign(3e38, v)"  # router logits overflow: gates NaN
expect 0 "a huge but finite router loads" -- "$vmoe" info loud.safetensors
expect 1 "router logits overflow" -- "$vmoe" classify "$sample" -m loud.safetensors
mentions "router logits overflow" "block 0, router logits"
expect 1 "router logits overflow in route" -- "$vmoe" route "$sample" -m loud.safetensors -o loud_routes
mentions "router logits overflow in route" "block 0, router logits"
[ -e loud_routes ] && [ -n "$(ls loud_routes)" ] && fail "route wrote pictures of an overflowing forward pass"
edit vit.safetensors loud_mlp.safetensors "$mlp" "math.copysign(3e38, v)"  # the MLP's output overflows in block 2
expect 1 "MLP overflow" -- "$vmoe" eval -m loud_mlp.safetensors --data fashion-mnist:test --limit 16
mentions "MLP overflow" "block 2, MLP"

# --- training: a non-finite loss stops the run, the last state stays -----------------------
tiny=(--data fashion-mnist:train --limit 128 --batch 32 --test-data none --seed 1)
expect 0 "a good epoch" -- "$vmoe" train "${tiny[@]}" --arch vit-fmnist --layers 2 --epochs 1 -o good.safetensors
cp good.safetensors good.copy
cp good.safetensors.train good.train.copy
edit good.safetensors huge_head.safetensors head/kernel "math.copysign(3e38, v)"  # logits overflow: the loss is not finite
expect 1 "a loss that is not finite" -- "$vmoe" train "${tiny[@]}" --init-from huge_head.safetensors --epochs 1 -o good.safetensors
mentions "a loss that is not finite" "training stopped: the loss is"
mentions "a loss that is not finite" "step 1 of epoch 1"
cmp -s good.safetensors good.copy || fail "a diverged run replaced the model"
cmp -s good.safetensors.train good.train.copy || fail "a run diverging at its first step replaced the state"
ls | grep -q "\.tmp\." && fail "temporary files left: $(ls)"

if [ "$failures" != 0 ]; then
  echo "$failures failure(s)"
  exit 1
fi
echo "all non-finite tests passed"
