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
run 2 "routing foo" classify "$GOOD" -m "$MODEL" --routing foo
run 2 "top 0" classify "$GOOD" -m "$MODEL" --top 0
run 2 "group images 0" classify "$GOOD" -m "$MODEL" --group-images 0
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

run nonzero "unknown architecture" init --arch nope -o "$WORK/x.safetensors"
for name in vmoe-s32 vmoe-b16 soft-s16 vit-fmnist vmoe-fmnist ec-fmnist softmoe-fmnist; do
  grep -qF "$name" "$ERR" || fail "unknown architecture: the message does not list $name"
done
[ ! -e "$WORK/x.safetensors" ] || fail "unknown architecture still wrote a file"

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
