#!/usr/bin/env bash
# The layer check (scripts/check_layers.sh) passes on the tree as it is, and fails, naming
# the file and the include, when a copy of the tree gains an upward include, a folder
# outside the layers, or a pair of folders that include each other.
# usage: test_check_layers.sh SOURCE_DIR WORK_DIR
set -euo pipefail
src=$1 work=$2
rm -rf "$work" && mkdir -p "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }

"$src/scripts/check_layers.sh" "$src" || fail "the tree itself has upward includes"

fresh_copy() {
  rm -rf "$work/tree" && mkdir -p "$work/tree/docs" "$work/tree/scripts"
  cp -r "$src/lib" "$src/apps" "$work/tree/"
  cp "$src/docs/ARCHITECTURE.md" "$work/tree/docs/"
  cp "$src/scripts/check_layers.sh" "$work/tree/scripts/"
}
expect_failure() {  # WHAT GREP...
  local what=$1; shift
  if "$work/tree/scripts/check_layers.sh" "$work/tree" > "$work/out" 2>&1; then fail "$what: the check passed"; fi
  for pattern in "$@"; do grep -qF -- "$pattern" "$work/out" || { cat "$work/out" >&2; fail "$what: no '$pattern' in the message"; }; done
}

# A copy passes as the tree does.
fresh_copy
"$work/tree/scripts/check_layers.sh" "$work/tree" || fail "an unchanged copy fails"

# The description includes the MoE layer above it (the cycle this check exists for).
fresh_copy
printf '#include "moe/moe_layer.hpp"\n' >> "$work/tree/lib/spec/cost.hpp"
expect_failure "spec -> moe" "lib/spec/cost.hpp:" '"moe/moe_layer.hpp"' "a higher layer"

# The bottom includes the top.
fresh_copy
sed -i '0,/#include/s//#include "viz\/canvas.hpp"\n#include/' "$work/tree/lib/core/error.cpp"
expect_failure "core -> viz" "lib/core/error.cpp:" '"viz/canvas.hpp"'

# A folder that is no layer.
fresh_copy
mkdir -p "$work/tree/lib/extra" && printf '#pragma once\n' > "$work/tree/lib/extra/thing.hpp"
expect_failure "unknown folder" "lib/extra" "not in the layers"

# train and viz sit side by side in the order; the lower must not include the higher.
fresh_copy
printf '#include "viz/canvas.hpp"\n' >> "$work/tree/lib/train/optimizer.hpp"
expect_failure "train -> viz" "lib/train/optimizer.hpp:" '"viz/canvas.hpp"'

echo "layer check: passes on the tree, catches 4 kinds of upward include"
