#!/bin/bash
# scripts/sweep_capacity.sh writes sweep.csv (documented columns, both routings, every
# factor) and sweep.png. Uses an untrained model and a small generated image folder.
# usage: bash test_sweep_capacity.sh VMOE_BINARY WORKDIR
set -u
VMOE=${1:?usage: test_sweep_capacity.sh VMOE_BINARY WORKDIR}
WORK=${2:?usage: test_sweep_capacity.sh VMOE_BINARY WORKDIR}
SRC=${VMOE_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
rm -rf "$WORK" && mkdir -p "$WORK" || exit 1
"$VMOE" init --arch vmoe-fmnist -o "$WORK/model.safetensors" 2>/dev/null || { echo "FAIL: init"; exit 1; }
/usr/bin/python3 - "$SRC/scripts" "$WORK/data" <<'PY' || { echo "FAIL: image folder"; exit 1; }
import os, random, sys
sys.path.insert(0, sys.argv[1])
from extract_samples import CLASSES, png_grey, slug
rng = random.Random(1)
for name in CLASSES:
    os.makedirs(os.path.join(sys.argv[2], slug(name)), exist_ok=True)
    for i in range(2):
        png_grey(os.path.join(sys.argv[2], slug(name), f"{i}.png"), 28, 28, bytes(rng.randrange(256) for _ in range(784)))
PY
plot=(--no-plot)
command -v gnuplot >/dev/null 2>&1 && plot=()
VMOE=$VMOE bash "$SRC/scripts/sweep_capacity.sh" "$WORK/model.safetensors" --data "$WORK/data" --factors "0.25 1.0 2" \
  --out "$WORK/out" --batch 8 "${plot[@]}" 2>"$WORK/log" || { echo "FAIL: sweep exited non-zero"; cat "$WORK/log"; exit 1; }
/usr/bin/python3 - "$WORK/out/sweep.csv" <<'PY' || { echo "FAIL: sweep.csv"; exit 1; }
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
for k in ("routing", "capacity_factor", "top1", "dropped", "images_per_s", "processed_tokens"):
    assert all(r[k] != "" for r in rows), k
got = sorted((r["routing"], float(r["capacity_factor"])) for r in rows)
want = sorted((r, f) for r in ("bpr", "vanilla") for f in (0.25, 1.0, 2.0))
assert got == want, got
assert all(r["images"] == "20" for r in rows)
PY
if [[ ${#plot[@]} -eq 0 ]]; then
  [[ -s $WORK/out/sweep.png ]] && [[ $(head -c 8 "$WORK/out/sweep.png" | od -An -c | tr -d ' ') == '211PNG\r\n032\n' ]] ||
    { echo "FAIL: sweep.png missing or not a PNG"; exit 1; }
fi
# Bad usage: a missing model is an error, not an empty csv.
if VMOE=$VMOE bash "$SRC/scripts/sweep_capacity.sh" "$WORK/nope.safetensors" --out "$WORK/bad" 2>/dev/null; then
  echo "FAIL: sweep on a missing model succeeded"; exit 1
fi
echo "sweep_capacity checks passed"
