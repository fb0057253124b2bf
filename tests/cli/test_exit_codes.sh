#!/bin/bash
# Exit codes and error messages of the CLI (DESIGN §5, §7): 0 success, 2 bad usage,
# 1 any other error with a one-line message, never a crash (>= 128) or a hang.
#   bash test_exit_codes.sh VMOE_BINARY WORKDIR
set -u

VMOE=${1:?usage: test_exit_codes.sh VMOE_BINARY WORKDIR}
WORK=${2:?usage: test_exit_codes.sh VMOE_BINARY WORKDIR}
PY=/usr/bin/python3
case "$VMOE" in /*) ;; *) VMOE="$PWD/$VMOE" ;; esac
[ -x "$VMOE" ] || { echo "not an executable: $VMOE" >&2; exit 1; }
rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK" || exit 1
unset VMOE_MODEL

failures=0
OUT="$WORK/out.txt"
ERR="$WORK/err.txt"

fail() {
  echo "FAIL: $*" >&2
  echo "  stdout: $(head -c 400 "$OUT" 2>/dev/null)" >&2
  echo "  stderr: $(head -c 400 "$ERR" 2>/dev/null)" >&2
  failures=$((failures + 1))
}

# run EXPECTED DESCRIPTION ARGS...: EXPECTED is a code, or "nonzero".
run() {
  local expected=$1 what=$2
  shift 2
  timeout 60 "$VMOE" "$@" >"$OUT" 2>"$ERR"
  code=$?
  if [ "$code" -eq 124 ]; then
    fail "$what: timed out (hang?): vmoe $*"
    return
  fi
  if [ "$code" -ge 128 ]; then
    fail "$what: crashed with exit $code (signal $((code - 128))): vmoe $*"
    return
  fi
  if [ "$expected" = nonzero ]; then
    if [ "$code" -ne 0 ]; then echo "ok: $what (exit $code)"; else fail "$what: expected a non-zero exit, got 0: vmoe $*"; fi
  elif [ "$code" -ne "$expected" ]; then
    fail "$what: expected exit $expected, got $code: vmoe $*"
  else
    echo "ok: $what (exit $code)"
  fi
}

# The error output is exactly one line and mentions $1.
one_line_mentioning() {
  local what=$1 needle=$2
  local lines
  lines=$(wc -l <"$ERR")
  [ "$lines" -eq 1 ] || fail "$what: expected a one-line error, got $lines lines"
  grep -qF -- "$needle" "$ERR" || fail "$what: error does not mention \"$needle\""
}

MODEL="$WORK/m.safetensors"
run 0 "init vmoe-fmnist" init --arch vmoe-fmnist -o "$MODEL" --seed 3
[ -s "$MODEL" ] || fail "init did not write $MODEL"
leftovers=$(find "$WORK" -name '*.tmp.*' | wc -l)
[ "$leftovers" -eq 0 ] || fail "init left $leftovers temporary file(s) behind"

# A valid 28x28 grey image (binary PGM, which OpenCV reads), and a corrupt "PNG".
GOOD="$WORK/good.pgm"
{ printf 'P5\n28 28\n255\n'; head -c 784 /dev/urandom; } >"$GOOD"
CORRUPT="$WORK/corrupt.png"
head -c 3000 /dev/urandom >"$CORRUPT"
WRONG_SIZE="$WORK/wide.pgm"
{ printf 'P5\n30 28\n255\n'; head -c 840 /dev/urandom; } >"$WRONG_SIZE"

# --- usage errors: 2 -------------------------------------------------------------------
run 2 "no arguments"
run 2 "unknown subcommand" frobnicate
run 2 "unknown option" classify "$GOOD" -m "$MODEL" --no-such-flag
run 2 "capacity factor 0" classify "$GOOD" -m "$MODEL" --capacity-factor 0
run 2 "capacity factor -1" classify "$GOOD" -m "$MODEL" --capacity-factor -1
run 2 "capacity factor -1 (= form)" classify "$GOOD" -m "$MODEL" --capacity-factor=-1
run 2 "capacity factor abc" classify "$GOOD" -m "$MODEL" --capacity-factor abc
# Routing variants (issue 11): unknown names, a scorer the model lacks, contradictions.
run 2 "priority nope" classify "$GOOD" -m "$MODEL" --priority nope
run 2 "priority learned without a scorer" classify "$GOOD" -m "$MODEL" --priority learned
run 2 "route priority learned without a scorer" route "$GOOD" -m "$MODEL" --priority learned --no-pictures
run 2 "eval overflow sideways" eval -m "$MODEL" --data fashion-mnist:test --overflow sideways
run 2 "train gating nope" train --arch vmoe-fmnist --gating nope -o "$WORK/t.safetensors"
run 2 "train dropless with a factor" train --arch vmoe-fmnist --dropless --capacity-factor 1 -o "$WORK/t.safetensors"
run 2 "train eval capacity factor 0" train --arch vmoe-fmnist --eval-capacity-factor 0 -o "$WORK/t.safetensors"
run 2 "train priority penalty -1" train --arch vmoe-fmnist --priority-penalty -1 -o "$WORK/t.safetensors"
run 2 "train priority on a soft router" train --arch softmoe-fmnist --priority entropy -o "$WORK/t.safetensors"
run 2 "routing foo" classify "$GOOD" -m "$MODEL" --routing foo
run 2 "top 0" classify "$GOOD" -m "$MODEL" --top 0
run 2 "group images 0" classify "$GOOD" -m "$MODEL" --group-images 0
run 2 "precision fp16" classify "$GOOD" -m "$MODEL" --precision fp16
# bf16 on a CPU without native bf16 (simulated by capping oneDNN's ISA, which works on
# any x86 machine): refused with one line naming the ISA, not run emulated and slow.
ONEDNN_MAX_CPU_ISA=AVX2 run 1 "bf16 without native bf16" classify "$GOOD" -m "$MODEL" --precision bf16
one_line_mentioning "bf16 without native bf16" "native bf16"
ONEDNN_MAX_CPU_ISA=AVX2 run 1 "eval bf16 without native bf16" eval -m "$MODEL" --data fashion-mnist:test --limit 8 --precision bf16
one_line_mentioning "eval bf16 without native bf16" "--precision f32"
ONEDNN_MAX_CPU_ISA=AVX2 run 0 "f32 with the ISA capped" classify "$GOOD" -m "$MODEL" --precision f32
run 2 "classify without images" classify -m "$MODEL"
run 2 "init without -o" init --arch vmoe-fmnist

# --- other errors: 1, one line saying what and where -------------------------------------
MISSING="$WORK/no-such-image.png"
run 1 "missing image" classify "$MISSING" -m "$MODEL"
one_line_mentioning "missing image" "no-such-image.png"
run 1 "corrupt image" classify "$CORRUPT" -m "$MODEL"
one_line_mentioning "corrupt image" "corrupt.png"
run 1 "image of the wrong size for resize none" classify "$WRONG_SIZE" -m "$MODEL"
one_line_mentioning "wrong size" "wide.pgm"
run 1 "a good image after a missing one" classify "$GOOD" "$MISSING" -m "$MODEL"

TRUNC="$WORK/truncated.safetensors"
head -c 1000 "$MODEL" >"$TRUNC"
run 1 "truncated model" classify "$GOOD" -m "$TRUNC"
one_line_mentioning "truncated model" "truncated.safetensors"
TINY="$WORK/tiny.safetensors"
printf 'abc' >"$TINY"
run 1 "3-byte model" classify "$GOOD" -m "$TINY"
one_line_mentioning "3-byte model" "tiny.safetensors"
ABSURD="$WORK/absurd.safetensors"
printf '\xff\xff\xff\xff\xff\xff\xff\x7f{}' >"$ABSURD"
run 1 "model with an absurd header length" classify "$GOOD" -m "$ABSURD"
one_line_mentioning "absurd header" "absurd.safetensors"
run 1 "missing model" classify "$GOOD" -m "$WORK/no-model.safetensors"
one_line_mentioning "missing model" "no-model.safetensors"
run 1 "an image as the model" classify "$GOOD" -m "$GOOD"
run 1 "info on a truncated model" info "$TRUNC"

run 2 "unknown architecture" init --arch nope -o "$WORK/x.safetensors"
for name in vmoe-s32 vmoe-b16 soft-s16 vit-fmnist vmoe-fmnist ec-fmnist softmoe-fmnist; do
  grep -qF "$name" "$ERR" || fail "unknown architecture: the message does not list $name"
done
[ ! -e "$WORK/x.safetensors" ] || fail "unknown architecture still wrote a file"

# --- hostile input (issue 12): one line, exit 1 or 2, nothing left behind, never a hang ----
# run_one CODE DESCRIPTION ARGS...: `run` plus exactly one line on stderr, no control characters.
run_one() {
  local code=$1 what=$2
  shift 2
  run "$code" "$what" "$@"
  local lines
  lines=$(wc -l <"$ERR")
  [ "$lines" -eq 1 ] || fail "$what: expected one line on stderr, got $lines"
  if LC_ALL=C grep -q $'[\x01-\x08\x0b-\x1f\x7f]' "$ERR"; then fail "$what: control characters on stderr"; fi
}
no_leftovers() {
  local n
  n=$(find "$WORK" -name '*.tmp.*' | wc -l)
  [ "$n" -eq 0 ] || fail "$1: left $n temporary file(s): $(find "$WORK" -name '*.tmp.*' | head -3)"
}

# 1. sizes: tokens per group and a config that wrapped in 32 bits.
run_one 2 "group images 1e9" classify "$GOOD" -m "$MODEL" --group-images 1000000000
run_one 2 "group images times tokens" classify "$GOOD" -m "$MODEL" --group-images 100000
run_one 2 "info: group images times tokens" info "$MODEL" --group-images 100000
run_one 2 "eval: group images times tokens" eval -m "$MODEL" --data "$WORK" --group-images 200000
# A model whose config says 5 x 858993469 with patch 1 (49 patches once wrapped).
$PY - "$MODEL" "$WORK/wrapped.safetensors" <<'PYEOF'
import json, struct, sys
src, dst = sys.argv[1], sys.argv[2]
data = open(src, "rb").read()
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
config = json.loads(header["__metadata__"]["vmoe.config"])
config["image"]["height"], config["image"]["width"], config["patch"] = 5, 858993469, [1, 1]
header["__metadata__"]["vmoe.config"] = json.dumps(config)
text = json.dumps(header).encode()
open(dst, "wb").write(struct.pack("<Q", len(text)) + text + data[8 + n:])
PYEOF
run_one 1 "config image 5x858993469 patch 1" info "$WORK/wrapped.safetensors"
grep -qF "more than the limit" "$ERR" || fail "wrapped config: the message does not state the limit"

# 2. -o over a symlink, a FIFO, a directory: refused, the target untouched.
ln -s "$GOOD" "$WORK/link.safetensors"
mkfifo "$WORK/out.fifo"
mkdir -p "$WORK/out.dir"
run_one 1 "init -o a symlink" init --arch vit-fmnist -o "$WORK/link.safetensors"
[ -L "$WORK/link.safetensors" ] || fail "init replaced the symlink"
run_one 1 "init -o a FIFO" init --arch vit-fmnist -o "$WORK/out.fifo"
[ -p "$WORK/out.fifo" ] || fail "init replaced the FIFO"
run_one 1 "init -o a directory" init --arch vit-fmnist -o "$WORK/out.dir"
run_one 1 "train -o a FIFO" train --arch vit-fmnist -o "$WORK/out.fifo" --epochs 1 --limit 8 --batch 8
no_leftovers "refused outputs"

# 3. temporary files: a dead process's NAME.tmp.PID is removed by the next write, and
# SIGTERM in the middle of writing removes ours.
sh -c 'exit 0' &
deadpid=$!
wait $deadpid
printf 'partial' >"$WORK/m3.safetensors.tmp.$deadpid"
run 0 "init over a stale temporary file" init --arch vit-fmnist -o "$WORK/m3.safetensors"
[ ! -e "$WORK/m3.safetensors.tmp.$deadpid" ] || fail "the stale temporary file of dead process $deadpid is still there"
"$VMOE" init --arch vmoe-s32 -o "$WORK/big.safetensors" 2>"$ERR" &
pid=$!
seen=no
for _ in $(seq 1 3000); do
  if compgen -G "$WORK/big.safetensors.tmp.*" >/dev/null; then seen=yes; break; fi
  kill -0 $pid 2>/dev/null || break
  sleep 0.01
done
kill -TERM $pid 2>/dev/null
wait $pid
code=$?
if [ "$seen" = yes ]; then
  [ "$code" -eq 143 ] || fail "SIGTERM while writing: exit $code, expected 143"
  [ ! -e "$WORK/big.safetensors" ] || fail "SIGTERM while writing left a (partial?) model"
  echo "ok: SIGTERM while writing (exit $code)"
else
  echo "note: the temporary file was never seen (write too fast); checked only that none is left"
fi
no_leftovers "SIGTERM while writing"
rm -f "$WORK/big.safetensors"

# 4. one line: truncated PNG (libpng prints its own lines), names with escape codes.
$PY - "$WORK" <<'PYEOF'
import struct, sys, zlib
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
raw = b"".join(b"\0" + bytes(range(28)) for _ in range(28))
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0)) +
       chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
open(sys.argv[1] + "/ok.png", "wb").write(png)
open(sys.argv[1] + "/cut.png", "wb").write(png[: len(png) * 2 // 3])
bad = bytearray(png); bad[45] ^= 0xFF  # inside IDAT: CRC error
open(sys.argv[1] + "/crc.png", "wb").write(bytes(bad))
PYEOF
run 0 "a good PNG" classify "$WORK/ok.png" -m "$MODEL"
run_one 1 "truncated PNG" classify "$WORK/cut.png" -m "$MODEL"
run_one 1 "PNG with a CRC error" classify "$WORK/crc.png" -m "$MODEL"
EVIL="$WORK/$(printf 'evil\033[2J\033]0;title\007\nname.png')"
cp "$GOOD" "$EVIL"
run_one 1 "escape codes in a file name" classify "$EVIL" "$MISSING" -m "$MODEL"
run_one 1 "a 100 kB name" classify "$WORK/$(head -c 100000 /dev/zero | tr '\0' 'a')" -m "$MODEL"
[ "$(wc -c <"$ERR")" -lt 2000 ] || fail "a 100 kB name: the message is $(wc -c <"$ERR") bytes"

# 5. FIFOs as model, image, dataset and resume file: refused at once.
run_one 1 "FIFO as model" classify "$GOOD" -m "$WORK/out.fifo"
run_one 1 "FIFO as image" classify "$WORK/out.fifo" -m "$MODEL"
run_one 1 "FIFO as info's model" info "$WORK/out.fifo"
run_one 1 "FIFO as resume state" train --resume "$WORK/out.fifo" -o "$WORK/r.safetensors"
mkdir -p "$WORK/ds/cat"
cp "$GOOD" "$WORK/ds/cat/a.pgm"
mkfifo "$WORK/ds/cat/b.pgm"
run_one 1 "FIFO in a dataset folder" eval -m "$MODEL" --data "$WORK/ds"
run_one 1 "FIFO as --merge file" eval --merge "$WORK/out.fifo"
run_one 1 "character device as image" classify /dev/zero -m "$MODEL"

# 6. nonsense numbers: refused as usage errors.
run_one 2 "train --lr inf" train --arch vit-fmnist --lr inf -o "$WORK/t.safetensors"
run_one 2 "train --lr 1e999" train --arch vit-fmnist --lr 1e999 -o "$WORK/t.safetensors"
run_one 2 "bench --seconds nan" bench -m "$MODEL" --seconds nan
run_one 2 "train --label-smoothing nan" train --arch vit-fmnist --label-smoothing nan -o "$WORK/t.safetensors"
run_one 2 "train with an unbounded model" train --arch vit-fmnist --hidden 16384 --heads 16 --mlp-dim 65536 -o "$WORK/t.safetensors"
grep -qF "parameters, more than the limit" "$ERR" || fail "unbounded model: the message does not state the limit"
no_leftovers "refused training runs"
[ ! -e "$WORK/t.safetensors" ] || fail "a refused training run wrote a model"

# 7. exit codes of bad numbers and names.
run_one 2 "capacity factor inf" classify "$GOOD" -m "$MODEL" --capacity-factor inf
run_one 2 "capacity factor nan" classify "$GOOD" -m "$MODEL" --capacity-factor nan
run_one 2 "capacity factor 1e-320" classify "$GOOD" -m "$MODEL" --capacity-factor 1e-320
grep -qF "too close to zero" "$ERR" || fail "1e-320: the message does not say why"
run_one 2 "capacity factor 1e300" classify "$GOOD" -m "$MODEL" --capacity-factor 1e300
run_one 2 "train --arch nope" train --arch nope -o "$WORK/t.safetensors"
# issue 11 variants: every new option refuses bad values with one line
run_one 2 "train --shared-experts -1" train --arch vmoe-fmnist --shared-experts -1 -o "$WORK/t.safetensors"
run_one 2 "train --shared-experts x" train --arch vmoe-fmnist --shared-experts x -o "$WORK/t.safetensors"
run_one 2 "train --shared-experts on a dense arch" train --arch vit-fmnist --shared-experts 1 -o "$WORK/t.safetensors"
run_one 2 "train --expert-mlp-dim 0" train --arch vmoe-fmnist --expert-mlp-dim 0 -o "$WORK/t.safetensors"
run_one 2 "train --expert-mlp-dim 1e9" train --arch vmoe-fmnist --expert-mlp-dim 1e9 -o "$WORK/t.safetensors"
run_one 2 "train --balance loss" train --arch vmoe-fmnist --balance loss -o "$WORK/t.safetensors"
run_one 2 "train --balance bias on Soft-MoE" train --arch softmoe-fmnist --balance bias -o "$WORK/t.safetensors"
grep -qF "top_k" "$ERR" || fail "--balance bias on Soft-MoE: the message does not name the router it needs"
run_one 2 "train --balance-rate nan" train --arch vmoe-fmnist --balance bias --balance-rate nan -o "$WORK/t.safetensors"
run_one 2 "train --balance-rate 2" train --arch vmoe-fmnist --balance bias --balance-rate 2 -o "$WORK/t.safetensors"
run_one 2 "train --balance-rate without --balance bias" train --arch vmoe-fmnist --balance-rate 0.01 -o "$WORK/t.safetensors"
run_one 2 "train --train-capacity-factors 0" train --arch vmoe-fmnist --train-capacity-factors 0.25,0 -o "$WORK/t.safetensors"
run_one 2 "train --train-capacity-factors x" train --arch vmoe-fmnist --train-capacity-factors 0.25,x -o "$WORK/t.safetensors"
run_one 2 "train --train-capacity-factors on a dense arch" train --arch vit-fmnist --train-capacity-factors 0.5 -o "$WORK/t.safetensors"
grep -qF "dense" "$ERR" || fail "--train-capacity-factors on a dense model: the message does not say why"
run_one 2 "train --train-capacity-factors on Soft-MoE" train --arch softmoe-fmnist --train-capacity-factors 0.5 -o "$WORK/t.safetensors"
run_one 2 "train --train-capacity-factors with --dropless" train --arch vmoe-fmnist --dropless --train-capacity-factors 0.5 -o "$WORK/t.safetensors"
run_one 2 "train 17 --train-capacity-factors" train --arch vmoe-fmnist --train-capacity-factors 1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1 -o "$WORK/t.safetensors"
[ ! -e "$WORK/t.safetensors" ] || fail "a refused variant run wrote a model"

# --- success -------------------------------------------------------------------------------
run 0 "classify" classify "$GOOD" -m "$MODEL"
grep -qF "good.pgm" "$OUT" || fail "classify output does not name the image"
run 0 "classify --json" classify "$GOOD" "$GOOD" -m "$MODEL" --json --top 3 --capacity-factor 0.5 --routing vanilla
$PY -c '
import json, sys
d = json.load(sys.stdin)
assert isinstance(d["model"], str), "model"
assert len(d["results"]) == 2, "two results"
for r in d["results"]:
    assert r["image"].endswith("good.pgm")
    assert len(r["top"]) == 3
    for t in r["top"]:
        assert isinstance(t["label"], str) and isinstance(t["index"], int) and 0 <= t["prob"] <= 1
    assert len(r["logits"]) == 10
    assert len(r["moe"]) >= 1 and all(isinstance(m["layer"], int) for m in r["moe"])
    for m in r["moe"]:
        assert isinstance(m["capacity"], int) and 0 <= m["dropped"] <= 1
' <"$OUT" || fail "classify --json is not the JSON of DESIGN §5"
run 0 "classify --group-images 2 with an odd count" classify "$GOOD" "$GOOD" "$GOOD" -m "$MODEL" --group-images 2 --json
$PY -c 'import json,sys; json.load(sys.stdin)' <"$OUT" || fail "classify --json (groups) is not JSON"
run 0 "info --json" info "$MODEL" --json
$PY -c 'import json,sys; json.load(sys.stdin)' <"$OUT" || fail "info --json is not JSON"
run 0 "info -m" info -m "$MODEL"
run 0 "init --list" init --list
grep -qF "vmoe-s32" "$OUT" || fail "init --list does not list vmoe-s32"
run 0 "--help" --help

# init overwrites atomically and leaves no temporary files.
run 0 "init again over the same file" init --arch softmoe-fmnist -o "$MODEL" --seed 4
run 0 "classify with the rewritten model" classify "$GOOD" -m "$MODEL"
leftovers=$(find "$WORK" -name '*.tmp.*' | wc -l)
[ "$leftovers" -eq 0 ] || fail "init left $leftovers temporary file(s) behind"
# A failed write (target in a missing folder) leaves nothing behind either.
run 1 "init into a missing folder" init --arch vit-fmnist -o "$WORK/no/such/dir/m.safetensors"
leftovers=$(find "$WORK" -name '*.tmp.*' | wc -l)
[ "$leftovers" -eq 0 ] || fail "failed init left $leftovers temporary file(s) behind"

if [ "$failures" -ne 0 ]; then
  echo "$failures failure(s)" >&2
  exit 1
fi
echo "all CLI exit-code checks passed"
