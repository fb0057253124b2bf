#!/usr/bin/env bash
# Takes docs/images/report.png, the picture of the `vmoe report` page in README.md and
# docs/ROUTE.md: the browser test's V-MoE page (two samples, factor 0.25, layer of the
# second MoE block, one patch pinned) in headless Chromium at 1280x900.
#   scripts/report_screenshot.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
node tests/browser/test_report.mjs --vmoe "$build/vmoe" --source . --work "$build/report-screenshot" \
  --screenshot docs/images/report.png
echo "wrote docs/images/report.png"
