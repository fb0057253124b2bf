#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS] [TARGET...]: builds the fuzz targets (tests/fuzz/fuzz_*.cpp)
# with clang's libFuzzer plus AddressSanitizer and UndefinedBehaviorSanitizer in
# build-asan/ (the sanitizer stage's build, scripts/sanitize.sh), then runs each target
# for SECONDS (default 60; 0 = build only) starting from the committed seed corpus.
# Targets: safetensors config_json image idx train_state (default: all). New inputs go
# to build-asan/fuzz/corpus/TARGET, crashes to build-asan/fuzz/artifacts/, each run's log
# to build-asan/fuzz/logs/TARGET.log. Exits non-zero if any target found a crash.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors config_json image idx train_state)

# Debian's clang 14 with its libFuzzer/sanitizer runtimes and LLVM's OpenMP.
packages=(clang libclang-rt-14-dev libomp-dev)
. scripts/lib/apt.sh
mapfile -t missing < <(apt_missing "${packages[@]}")
apt_install fuzz ${missing[@]+"${missing[@]}"}

# -O1 (the sanitizers' advice; about twice as fast to compile as -O2 with instrumentation)
# and asserts on: build type "Sanitize" has no flags of its own. fuzzer-no-link adds the
# coverage hooks libFuzzer needs; only the fuzz targets link libFuzzer itself.
flags="-O1 -g -march=x86-64-v3 -fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CC=clang CXX=clang++ cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Sanitize -DVMOE_LIBFUZZER=ON \
  -DCMAKE_CXX_FLAGS="$flags" >/dev/null
if [ -n "${VMOE_SANITIZE_ALL:-}" ]; then
  cmake --build build-asan -j"$(nproc)" >&2
else
  cmake --build build-asan -j"$(nproc)" --target "${targets[@]/#/fuzz_}" >&2
fi
[ "$seconds" -gt 0 ] || exit 0

mkdir -p build-asan/fuzz/logs build-asan/fuzz/artifacts
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# As `vmoe` does before OpenCV loads (apps/vmoe/main.cpp): its decoders stop at our pixel limit.
export OPENCV_IO_MAX_IMAGE_PIXELS=${OPENCV_IO_MAX_IMAGE_PIXELS:-67108864}
status=0
for t in "${targets[@]}"; do
  mkdir -p "build-asan/fuzz/corpus/$t"
  log="build-asan/fuzz/logs/$t.log"
  # -rss_limit_mb: the limits we state (64 M pixels, 2^30 parameters, ...) keep honest
  # inputs well below it; an input that needs more is a finding.
  if "build-asan/tests/fuzz_$t" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2560 -print_final_stats=1 \
       -artifact_prefix="build-asan/fuzz/artifacts/$t-" "build-asan/fuzz/corpus/$t" "tests/fuzz/corpus/$t" >"$log" 2>&1; then
    result="no crash"
  else
    result="CRASH (see $log and build-asan/fuzz/artifacts/$t-*)"
    status=1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo "?")
  echo "fuzz: $t: ${seconds} s, $runs runs, coverage $cov edges, corpus $(ls "build-asan/fuzz/corpus/$t" | wc -l) new inputs: $result"
done
exit $status
