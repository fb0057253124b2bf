#!/usr/bin/env bash
# Installs what is missing (Debian packages only), then configures and builds vmoe in
# build/. Safe to run again: packages already present are not touched.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(g++ cmake make pkg-config libopencv-dev libdnnl-dev libcli11-dev libfmt-dev catch2 nlohmann-json3-dev
          zlib1g-dev dataset-fashion-mnist gnuplot-nox python3 python3-numpy python3-msgpack
          chromium-headless-shell)
# Node.js and npm for the browser test of `vmoe report` (tests/browser), from Debian
# unless some node is already installed (e.g. NodeSource's, which bundles its own npm).
command -v node >/dev/null || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)
. scripts/lib/apt.sh
mapfile -t missing < <(apt_missing "${packages[@]}")
apt_install setup ${missing[@]+"${missing[@]}"}

# puppeteer-core at the version of tests/browser/package-lock.json; --ignore-scripts: it
# downloads no browser, the test drives the system's chromium-headless-shell.
# node_modules/.vmoe-lock is the lock file it was installed from.
if ! cmp -s tests/browser/package-lock.json tests/browser/node_modules/.vmoe-lock; then
  echo "setup: installing puppeteer-core into tests/browser/node_modules (npm ci)" >&2
  (cd tests/browser && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2 &&
   cp package-lock.json node_modules/.vmoe-lock)
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" >&2
