#!/usr/bin/env bash
# Signals (issue 24, D9): SIGINT, SIGTERM and SIGHUP during `vmoe train` stop it
# gracefully (state saved, "interrupted by SIG..." on stderr, exit status 128 + signal)
# whichever thread the kernel delivers them to, and during other commands remove the
# temporary file being written. Every run here has tests/support/early_thread.cpp
# LD_PRELOADed: a thread started before main with every signal unblocked, as OpenBLAS's
# pool is when OpenCV loads it, so the kernel delivers the signal to that thread.
#   bash tests/cli/test_signals.sh VMOE_BINARY WORKDIR   (VMOE_TEST_PRELOAD: the library)
set -uo pipefail
vmoe=$(realpath "${1:?usage: test_signals.sh VMOE_BINARY WORKDIR}")
work=${2:?usage: test_signals.sh VMOE_BINARY WORKDIR}
preload=${VMOE_TEST_PRELOAD:-}
if [ -z "$preload" ] || [ ! -f "$preload" ]; then
  echo "FAIL: set VMOE_TEST_PRELOAD to the built libvmoe_test_preload.so (tests/CMakeLists.txt does)"
  exit 1
fi
preload=$(realpath "$preload")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export ASAN_OPTIONS=${ASAN_OPTIONS:-}${ASAN_OPTIONS:+:}verify_asan_link_order=0
source "$(dirname "$(realpath "$0")")/common/expect.sh"
rm -rf "$work"
mkdir -p "$work"
cd "$work" || exit 1

tiny=(--data fashion-mnist:train --test-limit 128 --limit 512 --batch 64 --seed 5 --arch vit-fmnist --layers 2)

# wait_for CONDITION...: polls (up to 60 s) until the command succeeds.
wait_for() {
  for _ in $(seq 1200); do
    "$@" && return 0
    sleep 0.05
  done
  return 1
}
lines_at_least() { [ -e "$1" ] && [ "$(wc -l <"$1")" -ge "$2" ]; }
temp_exists() { compgen -G "$1.tmp.*" >/dev/null; }

expect 0 "uninterrupted run" -- "$vmoe" train "${tiny[@]}" --epochs 3 -o full.safetensors

# --- train: each stop signal, taken by the early thread --------------------------------
for sig in INT TERM HUP; do
  num=$(kill -l "$sig")
  LD_PRELOAD=$preload "$vmoe" train "${tiny[@]}" --epochs 3 -o "$sig.safetensors" --log "$sig.csv" 2>"$sig.err" &
  pid=$!
  wait_for lines_at_least "$sig.csv" 2 || fail "SIG$sig: epoch 1 never finished: $(cat "$sig.err")"
  grep -q libvmoe_test_preload "/proc/$pid/maps" 2>/dev/null || fail "SIG$sig: the preload library is not loaded"
  [ "$(ls "/proc/$pid/task" 2>/dev/null | wc -l)" -ge 2 ] || fail "SIG$sig: no early thread"
  before=$failures
  kill -"$sig" "$pid"
  wait "$pid"
  code=$?
  if [ "$(wc -l <"$sig.csv")" -ge 4 ]; then
    fail "SIG$sig: the run finished before the signal arrived (test too fast for this machine?)"
    continue
  fi
  [ "$code" = $((128 + num)) ] || fail "SIG$sig: exit status $code, expected $((128 + num)) (stderr: $(tail -c 300 "$sig.err"))"
  grep -q "^interrupted by SIG$sig " "$sig.err" || fail "SIG$sig: no 'interrupted by SIG$sig' message: $(tail -c 300 "$sig.err")"
  grep -q "vmoe: error" "$sig.err" && fail "SIG$sig: an interruption is not an error: $(cat "$sig.err")"
  [ -s "$sig.safetensors.train" ] || fail "SIG$sig: no training state saved"
  temp_exists "$sig.safetensors" && fail "SIG$sig: temporary files left: $(ls)"
  [ "$failures" = "$before" ] && echo "ok: SIG$sig during train stops gracefully (exit $code)"
done
# The interrupted run, resumed, is the uninterrupted run.
expect 0 "resume after SIGINT" -- "$vmoe" train --resume INT.safetensors.train -o INT.safetensors
cmp -s full.safetensors INT.safetensors || fail "the run interrupted by SIGINT and resumed differs from the uninterrupted one"

# --- a second signal ends the run at once ----------------------------------------------
LD_PRELOAD=$preload VMOE_TEST_SLOW_FSYNC_MS=2000 "$vmoe" train "${tiny[@]}" --epochs 3 -o twice.safetensors 2>twice.err &
pid=$!
wait_for temp_exists twice.safetensors || fail "second signal: no write seen"
kill -INT "$pid"
sleep 0.2
kill -INT "$pid"
wait "$pid"
code=$?
[ "$code" = 130 ] || fail "second SIGINT: exit status $code, expected 130"
temp_exists twice.safetensors && fail "second SIGINT: temporary files left: $(ls)"
echo "ok: a second SIGINT ends the run at once (exit $code)"

# --- other commands: the temporary file being written is removed -----------------------
for sig in INT TERM HUP; do
  num=$(kill -l "$sig")
  before=$failures
  LD_PRELOAD=$preload VMOE_TEST_SLOW_FSYNC_MS=3000 "$vmoe" init --arch vit-fmnist -o "init$sig.safetensors" 2>/dev/null &
  pid=$!
  wait_for temp_exists "init$sig.safetensors" || fail "init: no temporary file seen"
  kill -"$sig" "$pid"
  wait "$pid"
  code=$?
  [ "$code" = $((128 + num)) ] || fail "init, SIG$sig: exit status $code, expected $((128 + num))"
  temp_exists "init$sig.safetensors" && fail "init, SIG$sig: temporary file left: $(ls)"
  [ -e "init$sig.safetensors" ] && fail "init, SIG$sig: a half-written model appeared"
  [ "$failures" = "$before" ] && echo "ok: SIG$sig during init removes the temporary file"
done

if [ "$failures" != 0 ]; then
  echo "$failures failure(s)"
  exit 1
fi
echo "all signal tests passed"
