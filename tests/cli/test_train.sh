#!/usr/bin/env bash
# End-to-end tests of `vmoe train` on small slices of the installed Fashion-MNIST:
# the written model works in classify/route/eval, the same seed gives the same file,
# an interrupted run resumed gives the uninterrupted run's file, and bad input (broken
# dataset files, labels that do not match the images, a resume file of another
# architecture, nonsense flags) gives a one-line error and overwrites nothing.
#   bash tests/cli/test_train.sh VMOE_BINARY WORKDIR
set -uo pipefail
vmoe=$(realpath "${1:?usage: test_train.sh VMOE_BINARY WORKDIR}")
work=${2:?usage: test_train.sh VMOE_BINARY WORKDIR}
source_dir=${VMOE_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
fmnist=/usr/share/datasets/fashion-mnist
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
source "$(dirname "$(realpath "$0")")/common/expect.sh"
rm -rf "$work"
mkdir -p "$work"
cd "$work" || exit 1

if [ ! -e "$fmnist/train-images-idx3-ubyte.gz" ]; then
  echo "FAIL: $fmnist is missing (scripts/setup.sh installs dataset-fashion-mnist)"
  exit 1
fi

tiny=(--data fashion-mnist:train --test-limit 256 --limit 512 --batch 64 --seed 5)
dense=(--arch vit-fmnist --layers 2)
moe=(--arch vmoe-fmnist --layers 2 --moe-layers 0,1)

# --- a tiny V-MoE: the file is a model the other commands use ---------------------------
expect 0 "train a tiny V-MoE for 2 epochs" -- "$vmoe" train "${tiny[@]}" "${moe[@]}" --epochs 2 -o moe.safetensors --log moe.csv
[ -s moe.safetensors ] || fail "no model written"
[ -s moe.safetensors.train ] || fail "no training state written"
[ "$(wc -l <moe.csv)" = 3 ] || fail "log should hold a header and 2 epochs: $(cat moe.csv)"
head -1 moe.csv | grep -q "^epoch,loss,aux_importance,aux_load,train_accuracy,test_accuracy,lr,seconds,images_per_s,expert_load$" ||
  fail "log header: $(head -1 moe.csv)"
ls | grep -q "\.tmp" && fail "temporary files left behind: $(ls)"
sample="$source_dir/data/samples/fmnist_0_ankle-boot.png"
expect 0 "classify with the trained model" -- "$vmoe" classify "$sample" -m moe.safetensors --json
grep -q '"top"' out.txt || fail "classify --json has no top list: $(head -c 200 out.txt)"
expect 0 "route with the trained model" -- "$vmoe" route "$sample" -m moe.safetensors -o routes
[ -n "$(ls routes 2>/dev/null)" ] || fail "route wrote nothing"
expect 0 "eval with the trained model" -- "$vmoe" eval -m moe.safetensors --data fashion-mnist:test --limit 128

# --- same seed, same run -----------------------------------------------------------------
expect 0 "the same run again" -- "$vmoe" train "${tiny[@]}" "${moe[@]}" --epochs 2 -o moe2.safetensors
cmp -s moe.safetensors moe2.safetensors || fail "same seed gave a different model"

# --- Ctrl-C after epoch 1, then --resume: the uninterrupted run's model -----------------
expect 0 "uninterrupted dense run" -- "$vmoe" train "${tiny[@]}" "${dense[@]}" --epochs 2 -o full.safetensors
"$vmoe" train "${tiny[@]}" "${dense[@]}" --epochs 2 -o cut.safetensors --log cut.csv 2>cut.err &
pid=$!
for _ in $(seq 600); do
  [ -e cut.csv ] && [ "$(wc -l <cut.csv)" -ge 2 ] && break
  sleep 0.05
done
kill -INT "$pid" 2>/dev/null
wait "$pid"
code=$?
if [ "$(wc -l <cut.csv)" = 2 ]; then
  [ "$code" != 0 ] || fail "an interrupted run should exit non-zero"
  grep -q "interrupted" cut.err || fail "no interruption message: $(cat cut.err)"
  expect 0 "resume the interrupted run" -- "$vmoe" train --resume cut.safetensors.train -o cut.safetensors --log cut.csv
  cmp -s full.safetensors cut.safetensors || fail "resumed run differs from the uninterrupted one"
  [ "$(wc -l <cut.csv)" = 3 ] || fail "resumed log should hold 2 epochs: $(cat cut.csv)"
else
  echo "note: the run finished before the interrupt arrived; resume not exercised"
fi

# --- Soft-MoE: the logit scale starts at sqrt(D) unless --soft-scale-init says otherwise ----
# (a learning rate of 1e-9 leaves the scale where it started, to within 1e-6)
soft_scales() {  # soft_scales MODEL: the Router/scale values, one per line
  /usr/bin/python3 - "$1" <<'PY'
import json, struct, sys
with open(sys.argv[1], 'rb') as f:
    n = struct.unpack('<Q', f.read(8))[0]
    header = json.loads(f.read(n))
    for name, t in sorted(header.items()):
        if name.endswith('Router/scale'):
            f.seek(8 + n + t['data_offsets'][0])
            print('%.6f' % struct.unpack('<f', f.read(4))[0])
PY
}
soft=(--arch softmoe-fmnist --layers 2 --moe-layers 1 --limit 64 --batch 32 --test-data none --epochs 1 --lr 1e-9)
expect 0 "a Soft-MoE with the default scale" -- "$vmoe" train --data fashion-mnist:train "${soft[@]}" -o soft.safetensors
[ "$(soft_scales soft.safetensors)" = "9.797959" ] || fail "default Soft-MoE scale is not sqrt(96): $(soft_scales soft.safetensors)"
expect 0 "a Soft-MoE with --soft-scale-init 1" -- "$vmoe" train --data fashion-mnist:train "${soft[@]}" --soft-scale-init 1 -o soft1.safetensors
[ "$(soft_scales soft1.safetensors)" = "1.000000" ] || fail "--soft-scale-init 1 gave $(soft_scales soft1.safetensors)"

# --- issue 11: shared experts, narrower experts and the balance bias train and load ------
# Two steps at rate 0.25: every bias value is a sum of two steps of -0.25, 0 or +0.25, not
# all zero; the aux losses are off unless asked for; the state keeps the rate.
variants=(--arch vmoe-fmnist --layers 2 --moe-layers 1 --limit 64 --batch 32 --test-data none --epochs 1)
expect 0 "shared experts, expert MLP 48, balance bias" -- "$vmoe" train --data fashion-mnist:train "${variants[@]}" \
  --shared-experts 1 --expert-mlp-dim 48 --balance bias --balance-rate 0.25 -o var.safetensors
/usr/bin/python3 - var.safetensors var.safetensors.train <<'PY' || fail "the variant model's tensors or state are not as expected"
import json, struct, sys
def header(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        return json.loads(f.read(n)), f.read()
h, data = header(sys.argv[1])
b = 'Encoder/encoderblock_1/Moe/'
assert h[b + 'Shared/Dense_0/kernel']['shape'] == [1, 96, 48], h[b + 'Shared/Dense_0/kernel']
assert h[b + 'Mlp/Dense_1/kernel']['shape'] == [8, 48, 96]
assert h['Encoder/encoderblock_0/Mlp/Dense_0/kernel']['shape'] == [96, 192]  # dense blocks keep mlp_dim
t = h[b + 'Router/balance_bias']
begin, end = t['data_offsets']
bias = struct.unpack('<8f', data[begin:end])
assert all(v in (-0.5, -0.25, 0.0, 0.25, 0.5) for v in bias) and any(bias), bias
settings = json.loads(header(sys.argv[2])[0]['__metadata__']['vmoe.train'])['settings']
assert settings['importance_weight'] == 0 and settings['load_weight'] == 0 and settings['balance_rate'] == 0.25, settings
PY

# --- training capacity factors taken in turn: one factor is the same run as that --------
# --capacity-factor (same weights), and 0.25,4 trains a different model than 0.25 alone.
mix=(--data fashion-mnist:train --arch vmoe-fmnist --layers 2 --moe-layers 0,1 --limit 256 --batch 32 --test-data none --epochs 1 --seed 3)
expect 0 "train at factor 0.25" -- "$vmoe" train "${mix[@]}" --capacity-factor 0.25 -o mix_cf.safetensors
expect 0 "train at factors [0.25]" -- "$vmoe" train "${mix[@]}" --train-capacity-factors 0.25 -o mix_one.safetensors
expect 0 "train at factors 0.25,4 in turn" -- "$vmoe" train "${mix[@]}" --train-capacity-factors 0.25,4 -o mix_two.safetensors
/usr/bin/python3 - mix_cf.safetensors mix_one.safetensors mix_two.safetensors mix_two.safetensors.train <<'PY' || fail "training capacity factors are not taken in turn"
import json, struct, sys
def read(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        return json.loads(f.read(n)), f.read()
(_, cf), (_, one), (h2, two) = read(sys.argv[1]), read(sys.argv[2]), read(sys.argv[3])
assert cf == one, "--train-capacity-factors 0.25 did not train as --capacity-factor 0.25"
assert one != two, "--train-capacity-factors 0.25,4 trained the same weights as 0.25 alone"
assert json.loads(h2['__metadata__']['vmoe.config'])['moe']['capacity_factor'] == 1.05, "the model's own factor changed"
settings = json.loads(read(sys.argv[4])[0]['__metadata__']['vmoe.train'])['settings']
assert settings['capacity_factors'] == [0.25, 4], settings
PY
expect 0 "info on the variant model" -- "$vmoe" info var.safetensors
grep -q "8 experts + 1 shared, k 2.*balance bias" out.txt || fail "info does not show the variant: $(cat out.txt)"
grep -q "MLP 192 (experts 48)" out.txt || fail "info does not show the expert MLP size: $(cat out.txt)"
expect 0 "classify with the variant model" -- "$vmoe" classify "$sample" -m var.safetensors --capacity-factor 0.5

# --- bad input: one-line errors, nothing overwritten ------------------------------------
cp moe.safetensors before.safetensors
expect 2 "resume file of another architecture" -- "$vmoe" train --resume moe.safetensors.train --arch softmoe-fmnist -o moe.safetensors
mentions "resume file of another architecture" "different architecture"
cmp -s moe.safetensors before.safetensors || fail "a refused resume overwrote the model"

mkdir broken
gzip -dc "$fmnist/train-images-idx3-ubyte.gz" | head -c 100000 >broken/train-images-idx3-ubyte
cp "$fmnist/train-labels-idx1-ubyte.gz" broken/
expect 1 "truncated training images" -- "$vmoe" train "${moe[@]}" --data fashion-mnist:train --data-dir broken --test-data none --epochs 1 -o broken.safetensors
mentions "truncated training images" "train-images-idx3-ubyte"
[ -e broken.safetensors ] && fail "a failed run wrote a model"

mkdir mismatch
cp "$fmnist/train-images-idx3-ubyte.gz" mismatch/
cp "$fmnist/t10k-labels-idx1-ubyte.gz" mismatch/train-labels-idx1-ubyte.gz
expect 1 "labels that do not match the images" -- "$vmoe" train "${moe[@]}" --data fashion-mnist:train --data-dir mismatch --test-data none --epochs 1 -o mismatch.safetensors
mentions "labels that do not match the images" "labels"
[ -e mismatch.safetensors ] && fail "a failed run wrote a model"

mkdir empty
expect 1 "missing dataset files" -- "$vmoe" train "${moe[@]}" --data fashion-mnist:train --data-dir empty --test-data none --epochs 1 -o missing.safetensors
mentions "missing dataset files" "empty"

expect 1 "unknown data spec" -- "$vmoe" train "${moe[@]}" --data mnist:train --epochs 1 -o x.safetensors
expect 2 "zero epochs" -- "$vmoe" train "${moe[@]}" --data fashion-mnist:train --epochs 0 -o x.safetensors
expect 2 "unknown router" -- "$vmoe" train "${moe[@]}" --data fashion-mnist:train --router random -o x.safetensors
expect 2 "--soft-scale-init on a dense model" -- "$vmoe" train "${dense[@]}" --data fashion-mnist:train --soft-scale-init 8 -o x.safetensors
mentions "--soft-scale-init on a dense model" "Soft-MoE"
expect 2 "no architecture" -- "$vmoe" train --data fashion-mnist:train -o x.safetensors
expect 1 "resume file that does not exist" -- "$vmoe" train --resume nowhere.train -o x.safetensors
printf 'not a training state' >junk.train
expect 1 "resume file that is not a training state" -- "$vmoe" train --resume junk.train -o x.safetensors
[ -e x.safetensors ] && fail "a refused run wrote a model"

# --- resume states at a position the data cannot reach, or with corrupt generators -----
# Variants of the committed mid-epoch seed (a real state saved by SIGINT after step 3 of
# 5: fashion-mnist:train, --limit 160, --batch 32). Each is resumed as M.train with -o M
# next to a model M: one line, exit 1, M and M.train byte for byte as they were, no
# temporary or lock file. `timeout -k`: an all-zero generator state used to parse and
# then hang the run at its first step (uniform_int_distribution rejecting zeros forever),
# and SIGTERM alone does not end a step that never finishes (train stops between steps).
mid="$source_dir/tests/fuzz/corpus/train_state/mid-epoch.train"
state_variant() {  # state_variant OUT PYTHON-EDIT: mid-epoch.train with its vmoe.train run edited as `r`
  python3 - "$mid" "$1" "$2" <<'PY'
import json, struct, sys
src, out, edit = sys.argv[1:]
with open(src, 'rb') as f:
    n = struct.unpack('<Q', f.read(8))[0]
    header = json.loads(f.read(n))
    data = f.read()
r = json.loads(header['__metadata__']['vmoe.train'])
exec(edit)
header['__metadata__']['vmoe.train'] = json.dumps(r)
text = json.dumps(header).encode()
text += b' ' * (-len(text) % 8)
with open(out, 'wb') as f:
    f.write(struct.pack('<Q', len(text)) + text + data)
PY
}
refused_resume() {  # refused_resume DESCRIPTION TEXT PYTHON-EDIT
  rm -rf resume && mkdir resume
  state_variant resume/r.safetensors.train "$3" || { fail "$1: could not write the variant"; return; }
  cp moe.safetensors resume/r.safetensors
  cp resume/r.safetensors.train resume/state.before && cp resume/r.safetensors resume/model.before
  expect 1 "$1" -- timeout -k 10 120 "$vmoe" train --resume resume/r.safetensors.train -o resume/r.safetensors
  mentions "$1" "$2"
  cmp -s resume/r.safetensors resume/model.before || fail "$1: the refused resume overwrote the model"
  cmp -s resume/r.safetensors.train resume/state.before || fail "$1: the refused resume overwrote the state"
  [ "$(ls resume | sort | tr '\n' ' ')" = "model.before r.safetensors r.safetensors.train state.before " ] ||
    fail "$1: files left behind: $(ls resume)"
}
if [ -e "$mid" ]; then
  state_variant good.train "pass"
  expect 0 "the unedited mid-epoch state resumes" -- timeout -k 10 300 "$vmoe" train --resume good.train -o good.safetensors
  # (a) positions: beyond the data (160 images -> 64 = 2 steps per epoch, the state is 3
  # steps in), beyond the epoch's steps (7 of 5), and a step no data reaches at all.
  refused_resume "resume with a position beyond the data" "with 2 steps per epoch does not reach: the training data changed" \
    "r['settings']['limit'] = 64"
  refused_resume "resume at a step beyond the epoch" "which fashion-mnist:train with 5 steps per epoch does not reach" \
    "r['epoch_step'] = 7; r['step'] = 7"
  refused_resume "resume at a step no data reaches" "is a position no data reaches" "r['step'] = 9"
  refused_resume "resume of a later epoch at a step no data reaches" "is a position no data reaches" \
    "r['settings']['epochs'] = 3; r['epochs_done'] = 2; r['step'] = 8"
  # (b) generator states: too short, garbage bytes, a negative word, a position past the
  # 312 words, all zero, not a string.
  refused_resume "resume with a short data generator" 'bad "data_rng" (not a generator state' "r['data_rng'] = '1 2 3'"
  refused_resume "resume with a garbage noise generator" 'bad "noise_rng" (not a generator state' \
    "r['noise_rng'] = '\\xff\\x01 garbage ' * 200"
  refused_resume "resume with a negative generator word" 'bad "data_rng" (not a generator state' \
    "w = r['data_rng'].split(); w[5] = '-1'; r['data_rng'] = ' '.join(w)"
  refused_resume "resume with a generator position past its words" 'position 999 is past its 312 words' \
    "w = r['data_rng'].split(); w[-1] = '999'; r['data_rng'] = ' '.join(w)"
  refused_resume "resume with an all-zero generator" 'bad "noise_rng" (not a generator state: all zero' \
    "r['noise_rng'] = ' '.join(['0'] * 312 + ['312'])"
  refused_resume "resume with a generator that is not a string" 'data_rng' "r['data_rng'] = 12"
else
  fail "$mid is missing"
fi

if [ "$failures" != 0 ]; then
  echo "$failures failure(s)"
  exit 1
fi
echo "all train CLI tests passed"
