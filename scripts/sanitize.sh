#!/usr/bin/env bash
# scripts/sanitize.sh [FUZZ_SECONDS]: the sanitizer stage. Builds the whole project with
# -fsanitize=address,undefined (GCC) in build-asan/, runs the full test suite there (every
# unit, CLI and Python test then runs the instrumented binaries), then a short fuzz run
# of every target (scripts/fuzz.sh, FUZZ_SECONDS each, default 30). Green = exit 0.
# Takes ~40 minutes on 2 cores (docs/RELIABILITY.md): not part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzz_seconds=${1:-30}

scripts/setup.sh >/dev/null 2>&1 || scripts/setup.sh  # the packages (and the ordinary build)
# Build type "Sanitize" has no flags of its own: -O1 (sanitizers' advice; it compiles about
# twice as fast as -O2 with instrumentation), asserts on.
flags="-O1 -g -march=x86-64-v3 -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Sanitize -DCMAKE_CXX_FLAGS="$flags" >/dev/null
start=$(date +%s)
cmake --build build-asan -j"$(nproc)" >&2
built=$(date +%s)
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
(cd build-asan && ctest --output-on-failure -j"$(nproc)")
tested=$(date +%s)
scripts/fuzz.sh "$fuzz_seconds"
done_at=$(date +%s)
echo "sanitize: build $((built - start)) s, test suite $((tested - built)) s, fuzz $((done_at - tested)) s: green"
