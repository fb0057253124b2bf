#!/usr/bin/env bash
# Crash-safe training (issue 24): a run killed with SIGKILL at random moments, some of
# them while a checkpoint is being written, and resumed each time from its state file,
# ends with a model byte-identical to the uninterrupted run's (same seed, same threads).
# tests/support/early_thread.cpp's slow fsync (VMOE_TEST_SLOW_FSYNC_MS) keeps each write
# open long enough to be hit on purpose. Also: two runs on the same output, and a stale
# lock file from a killed run.
#   bash tests/cli/test_crash_resume.sh VMOE_BINARY WORKDIR   (VMOE_TEST_PRELOAD: the library)
set -uo pipefail
vmoe=$(realpath "${1:?usage: test_crash_resume.sh VMOE_BINARY WORKDIR}")
work=${2:?usage: test_crash_resume.sh VMOE_BINARY WORKDIR}
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

# A V-MoE with router noise and augmentation: every source of randomness is in play.
# 256 images in batches of 32: 8 steps an epoch, 2 epochs, a checkpoint every step.
run=(--data fashion-mnist:train --limit 256 --batch 32 --test-limit 64 --seed 7 --arch vmoe-fmnist --layers 2
     --moe-layers 0,1 --noise-std 1 --epochs 2 --checkpoint-every 1)
expect 0 "uninterrupted run" -- "$vmoe" train "${run[@]}" -o full.safetensors

temp_exists() { compgen -G "$1.tmp.*" >/dev/null; }
wait_for() {  # wait_for SECONDS CONDITION...: polls until the condition holds or time is up
  local tries=$(($1 * 100))
  shift
  for _ in $(seq "$tries"); do
    "$@" && return 0
    sleep 0.01
  done
  return 1
}

# start: a fresh run, or the resume of the state left by the last kill
start() {
  if [ -e cut.safetensors.train ]; then
    LD_PRELOAD=$preload VMOE_TEST_SLOW_FSYNC_MS=150 "$vmoe" train --resume cut.safetensors.train \
      --checkpoint-every 1 -o cut.safetensors 2>>cut.err &
  else
    LD_PRELOAD=$preload VMOE_TEST_SLOW_FSYNC_MS=150 "$vmoe" train "${run[@]}" -o cut.safetensors 2>>cut.err &
  fi
  pid=$!
}
kill_now() {  # SIGKILL; true if the run was still going
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  [ $? = 137 ]
}

state_step() {  # the optimizer step the state file is at, or "none"
  [ -e cut.safetensors.train ] || { echo none; return; }
  /usr/bin/python3 - cut.safetensors.train <<'PY'
import json, struct, sys
with open(sys.argv[1], 'rb') as f:
    n = struct.unpack('<Q', f.read(8))[0]
    run = json.loads(json.loads(f.read(n))['__metadata__']['vmoe.train'])
print('%d (epoch %d, step %d in it)' % (run['step'], run['epochs_done'] + 1, run.get('epoch_step', 0)))
PY
}

kills=0 during_writes=0 mid_epoch=0
# Temporary files of the running process only (earlier kills leave theirs behind).
writing_now() { compgen -G "cut.safetensors.tmp.$pid" >/dev/null || compgen -G "cut.safetensors.train.tmp.$pid" >/dev/null; }
state_write_after_one() { [ -e cut.safetensors.train ] && compgen -G "cut.safetensors.train.tmp.$pid" >/dev/null; }
model_write() { compgen -G "cut.safetensors.tmp.$pid" >/dev/null; }
# Kill 1: at a random moment of the first 0.3-1.2 s (loading, or the first steps).
# Kills 2-3: while a state file is being written, once one was written before.
# Kill 4: while a model file is being written at the end of an epoch.
# Kill 5: at a random moment again.
for plan in random state state model random; do
  start
  case $plan in
    random) sleep "0.$((RANDOM % 10 + 3))" ;;
    state) wait_for 60 state_write_after_one || fail "no state write seen" ;;
    model) wait_for 60 model_write || fail "no model write seen" ;;
  esac
  writing=0
  writing_now && writing=1
  if kill_now; then
    kills=$((kills + 1))
    during_writes=$((during_writes + writing))
    step=$(state_step)
    echo "kill $kills ($plan, during a write: $writing): the state is at step $step"
    case $step in *"step 0 in it"* | none) ;; *) mid_epoch=$((mid_epoch + 1)) ;; esac
  fi
done
[ "$kills" -ge 3 ] || fail "only $kills kills landed (the run finished too early)"
[ "$during_writes" -ge 2 ] || fail "only $during_writes kills landed during a write"
[ "$mid_epoch" -ge 2 ] || fail "only $mid_epoch kills left a state inside an epoch to resume from"
echo "ok: $kills kills, $during_writes during writes, $mid_epoch resumed from inside an epoch"

# Finish: resume until done (no kill).
if [ -e cut.safetensors.train ]; then
  expect 0 "resume to the end" -- "$vmoe" train --resume cut.safetensors.train -o cut.safetensors
else
  expect 0 "run to the end" -- "$vmoe" train "${run[@]}" -o cut.safetensors
fi
cmp -s full.safetensors cut.safetensors || fail "killed and resumed $kills times, the model differs from the uninterrupted run's"
temp_exists cut.safetensors && fail "temporary model files left: $(ls)"
temp_exists cut.safetensors.train && fail "temporary state files left: $(ls)"
[ -e cut.safetensors.lock ] && fail "the finished run left its lock file"

# --- two runs on the same output: the second is refused at once ---------------------------
LD_PRELOAD=$preload VMOE_TEST_SLOW_FSYNC_MS=1000 "$vmoe" train "${run[@]}" -o same.safetensors 2>same.err &
first=$!
echo "first run on same.safetensors: PID $first"
wait_for 30 temp_exists same.safetensors.train || fail "the first run never wrote"
expect 1 "a second run on the same output" -- "$vmoe" train "${run[@]}" -o same.safetensors
mentions "a second run on the same output" "same.safetensors is in use by another vmoe run (PID $first)"
expect 1 "a second run resuming onto the same output" -- "$vmoe" train --resume full.safetensors.train -o same.safetensors
kill -KILL "$first"
wait "$first" 2>/dev/null
[ -e same.safetensors.lock ] || fail "the killed run left no lock file (test cannot check a stale lock)"
expect 0 "a stale lock from a killed run does not block" -- "$vmoe" train --data fashion-mnist:train --limit 64 --batch 32 \
  --test-data none --arch vit-fmnist --layers 1 --epochs 1 -o same.safetensors
[ -e same.safetensors.lock ] && fail "the finished run left its lock file"

if [ "$failures" != 0 ]; then
  echo "$failures failure(s)"
  exit 1
fi
echo "all crash/resume tests passed"
