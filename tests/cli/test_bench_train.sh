#!/bin/bash
# vmoe bench --train (issue 23): JSON shape, the stages that must and must not take time
# for a V-MoE and a dense model, and the text form. Numbers are never asserted on.
# usage: bash test_bench_train.sh VMOE_BINARY WORKDIR
set -u
VMOE=${1:?usage: test_bench_train.sh VMOE_BINARY WORKDIR}
WORK=${2:?usage: test_bench_train.sh VMOE_BINARY WORKDIR}
SRC=${VMOE_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK" || exit 1
. "$SRC/tests/cli/common/expect.sh"

for model in vmoe-fmnist vit-fmnist; do
  if "$VMOE" bench --train -m "$SRC/data/models/$model.safetensors" --batch 4 --seconds 0 --no-ceiling --json > "$model.json"; then
    /usr/bin/python3 - "$model.json" "$model" <<'PY' || fail "$model: bench --train JSON"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["mode"] == "train" and j["batch"] == 4 and j["steps"] >= 3, j
assert j["images_per_s"] > 0 and j["gflops_per_s"] > 0 and j["gflops_per_image"] > 0, j
s = j["stage_ms_per_step"]
for part in ("forward", "backward"):
    st = s[part]
    assert set(st) == {"embedding", "attention", "norms", "router_dispatch", "experts", "dense_mlp", "head_loss"}, st
    assert st["attention"] > 0 and st["norms"] > 0, st
    if sys.argv[2].startswith("vmoe"):  # every block is MoE
        assert st["experts"] > 0 and st["router_dispatch"] > 0 and st["dense_mlp"] == 0, st
    else:
        assert st["experts"] == st["router_dispatch"] == 0 and st["dense_mlp"] > 0, st
assert s["optimizer"] > 0 and s["data"] > 0, s
PY
  else
    fail "$model: bench --train"
  fi
done
"$VMOE" bench --train --batch 2 --seconds 0 --no-ceiling > text.txt || fail "bench --train text"
grep -q "^throughput .*images/s" text.txt && grep -q "backward MoE experts" text.txt && grep -q "optimizer (clip + AdamW)" text.txt ||
  fail "bench --train text lines: $(cat text.txt)"
expect 2 "bench --train --batch 0" -- "$VMOE" bench --train --batch 0

echo "$failures failure(s)"
[[ $failures == 0 ]]
