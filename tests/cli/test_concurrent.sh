#!/usr/bin/env bash
# Concurrent runs (issue 24): two `vmoe route -o SAME/` runs of different models at once
# leave every picture complete and equal to what one of the runs writes alone, and no
# temporary or probe files. (`vmoe eval` writes only to stdout; two `vmoe train` runs on
# one output are refused by a lock: tests/cli/test_crash_resume.sh.)
#   bash tests/cli/test_concurrent.sh VMOE_BINARY WORKDIR
set -uo pipefail
vmoe=$(realpath "${1:?usage: test_concurrent.sh VMOE_BINARY WORKDIR}")
work=${2:?usage: test_concurrent.sh VMOE_BINARY WORKDIR}
source_dir=${VMOE_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
source "$(dirname "$(realpath "$0")")/common/expect.sh"
rm -rf "$work"
mkdir -p "$work"
cd "$work" || exit 1

images=("$source_dir"/data/samples/fmnist_0_ankle-boot.png)
expect 0 "model A" -- "$vmoe" init --arch vmoe-fmnist --seed 1 -o a.safetensors
expect 0 "model B" -- "$vmoe" init --arch vmoe-fmnist --seed 2 -o b.safetensors
expect 0 "A alone" -- "$vmoe" route "${images[@]}" -m a.safetensors -o alone_a
expect 0 "B alone" -- "$vmoe" route "${images[@]}" -m b.safetensors -o alone_b
[ "$(ls alone_a | wc -l)" -ge 4 ] || fail "route wrote too few pictures to test with: $(ls alone_a)"

for round in 1 2; do
  "$vmoe" route "${images[@]}" -m a.safetensors -o same >/dev/null 2>a.err &
  first=$!
  "$vmoe" route "${images[@]}" -m b.safetensors -o same >/dev/null 2>b.err &
  second=$!
  wait "$first" || fail "round $round: run A failed: $(cat a.err)"
  wait "$second" || fail "round $round: run B failed: $(cat b.err)"
  [ "$(ls same | sort)" = "$(ls alone_a | sort)" ] || fail "round $round: files differ from a single run's: $(ls -a same)"
  for f in same/*; do
    name=$(basename "$f")
    cmp -s "$f" "alone_a/$name" || cmp -s "$f" "alone_b/$name" || fail "round $round: $name is neither run's picture"
  done
  ls -a same | grep -q "\.tmp\.\|vmoe-probe" && fail "round $round: temporary files left: $(ls -a same)"
done
echo "ok: concurrent route runs leave whole pictures of one run each"

if [ "$failures" != 0 ]; then
  echo "$failures failure(s)"
  exit 1
fi
echo "all concurrency tests passed"
