#!/usr/bin/env bash
# scripts/sanitize.sh [FUZZ_SECONDS]: the sanitizer stage. Builds the whole project with
# clang -fsanitize=address,undefined in build-asan/ (the fuzz targets linked with
# libFuzzer, everything else with coverage hooks only), runs the full test suite there
# (every unit, CLI and Python test then runs the instrumented binaries; the fuzz targets
# replay their seed corpus), then fuzzes every target for FUZZ_SECONDS (default 30) with
# scripts/fuzz.sh, which reuses the same build. Green = exit 0.
# Takes about 45 minutes on 2 cores (docs/RELIABILITY.md): not part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzz_seconds=${1:-30}

scripts/setup.sh >/dev/null 2>&1 || scripts/setup.sh  # Debian packages (and the ordinary build)
start=$(date +%s)
VMOE_SANITIZE_ALL=1 scripts/fuzz.sh 0  # configures build-asan/ and builds everything in it
built=$(date +%s)
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
(cd build-asan && ctest --output-on-failure -j"$(nproc)")
tested=$(date +%s)
scripts/fuzz.sh "$fuzz_seconds"
done_at=$(date +%s)
echo "sanitize: build $((built - start)) s, test suite $((tested - built)) s, fuzz $((done_at - tested)) s: green"
