#!/usr/bin/env bash
# Installs what is missing (Debian packages only), then configures and builds vmoe in
# build/. Safe to run again: packages already present are not touched.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(g++ cmake make pkg-config libopencv-dev libdnnl-dev libcli11-dev libfmt-dev catch2 nlohmann-json3-dev
          zlib1g-dev dataset-fashion-mnist gnuplot-nox python3 python3-numpy python3-msgpack)
. scripts/lib/apt.sh
mapfile -t missing < <(apt_missing "${packages[@]}")
apt_install setup ${missing[@]+"${missing[@]}"}

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" >&2
