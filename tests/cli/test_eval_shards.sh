#!/bin/bash
# vmoe eval end to end: sharded runs merged with --merge give exactly the counts of one
# run (image folders and Fashion-MNIST, several group sizes), csv/json shapes, and clear
# errors with the right exit codes on bad input.
# usage: bash test_eval_shards.sh VMOE_BINARY WORKDIR
set -u
VMOE=${1:?usage: test_eval_shards.sh VMOE_BINARY WORKDIR}
WORK=${2:?usage: test_eval_shards.sh VMOE_BINARY WORKDIR}
SRC=${VMOE_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=/usr/bin/python3
rm -rf "$WORK" && mkdir -p "$WORK" || exit 1
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
ok() { echo "ok: $*"; }

MODEL=$WORK/model.safetensors
"$VMOE" init --arch vmoe-fmnist -o "$MODEL" --seed 3 2>/dev/null || { echo "FAIL: vmoe init"; exit 1; }

# Counts of two eval JSON files, everything but timing and shard bookkeeping, must be equal.
same_counts() {
  $PY - "$1" "$2" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
def strip(j):
    c = dict(j["counts"]); [c.pop(k) for k in ("seconds", "shards", "shard_count")]
    top = {k: j[k] for k in ("model", "data", "routing", "capacity_factor", "group_images", "images", "top1", "top5",
                             "dropped", "choices_dropped", "processed_tokens", "capacity", "classes",
                             "foreground_patches_per_image", "foreground_kept_all", "foreground_kept_any")}
    return c, top
if strip(a) != strip(b):
    print("  unsharded:", strip(a)); print("  merged:   ", strip(b)); sys.exit(1)
PY
}

# Runs eval unsharded and in N shards, merges, compares. Extra args go to every run.
check_shards() {
  local name=$1 n=$2; shift 2
  "$VMOE" eval -m "$MODEL" "$@" --format json > "$WORK/$name-full.json" || { fail "$name: unsharded eval"; return; }
  local parts=()
  for ((i = 0; i < n; i++)); do
    "$VMOE" eval -m "$MODEL" "$@" --shard "$i/$n" --format json > "$WORK/$name-$i.json" || { fail "$name: shard $i/$n"; return; }
    parts+=("$WORK/$name-$i.json")
  done
  # Merge in a scrambled order: the result must not depend on it.
  "$VMOE" eval --merge "${parts[@]:1}" "${parts[0]}" --format json > "$WORK/$name-merged.json" || { fail "$name: merge"; return; }
  if same_counts "$WORK/$name-full.json" "$WORK/$name-merged.json"; then ok "$name: $n shards merged == one run"; else fail "$name: merged counts differ"; fi
}

# Expects exit code $1 and a message matching $2 from the command that follows.
expect_error() {
  local code=$1 pattern=$2; shift 2
  local out rc
  out=$("$@" 2>&1 >/dev/null); rc=$?
  if [[ $rc -ne $code ]]; then fail "exit $rc (wanted $code) from: $* -- $out"; return; fi
  if ! grep -qE -- "$pattern" <<<"$out"; then fail "message '$out' lacks /$pattern/ from: $*"; return; fi
  if [[ $(wc -l <<<"$out") -ne 1 ]]; then fail "message is not one line: $out"; return; fi
  ok "exit $code: $out"
}

# A synthetic class-per-folder tree (random 28x28 grey PNGs) whose folders are the label
# slugs, so it runs without the Fashion-MNIST package.
make_folder() {  # DIR IMAGES_PER_CLASS [SIZE]
  $PY - "$SRC/scripts" "$@" <<'PY'
import os, random, sys
sys.path.insert(0, sys.argv[1])
from extract_samples import CLASSES, png_grey, slug
out, per, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 28
rng = random.Random(7)
for c, name in enumerate(CLASSES):
    os.makedirs(os.path.join(out, slug(name)), exist_ok=True)
    for i in range(per):
        png_grey(os.path.join(out, slug(name), f"img{i:03d}.png"), size, size,
                 bytes(rng.randrange(256) if rng.random() < 0.4 else 0 for _ in range(size * size)))
PY
}

FOLDER=$WORK/folder
make_folder "$FOLDER" 7 || { echo "FAIL: cannot build the image folder"; exit 1; }
check_shards folder-g1 3 --data "$FOLDER" --batch 16
check_shards folder-g4-vanilla 4 --data "$FOLDER" --batch 8 --group-images 4 --routing vanilla --capacity-factor 0.5
check_shards folder-limit 2 --data "$FOLDER" --limit 33 --group-images 2 --capacity-factor 0.3

if [[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]]; then
  check_shards fmnist-g1 3 --data fashion-mnist:test --limit 300
  check_shards fmnist-g8-bpr 5 --data fashion-mnist:test --limit 300 --group-images 8 --batch 64 --capacity-factor 0.5
  # The folder of PNGs extracted from the IDX files evaluates like the IDX images themselves.
  $PY "$SRC/scripts/extract_samples.py" --per-class 3 --layout folders --out "$WORK/fm-folder" 2>/dev/null
  "$VMOE" eval -m "$MODEL" --data "$WORK/fm-folder" --format json > "$WORK/fm-folder.json" &&
    ok "folder of extracted Fashion-MNIST PNGs evaluates" || fail "folder of extracted PNGs"
else
  echo "skip: Fashion-MNIST not installed (dataset-fashion-mnist)"
fi

# csv: one header line and one row with the documented columns.
"$VMOE" eval -m "$MODEL" --data "$FOLDER" --format csv > "$WORK/one.csv" || fail "csv eval"
if [[ $(wc -l < "$WORK/one.csv") -eq 2 ]] && head -1 "$WORK/one.csv" | tr ',' '\n' | grep -qx routing &&
   $PY - "$WORK/one.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
assert len(rows) == 1
r = rows[0]
for k in ("routing", "capacity_factor", "top1", "top5", "dropped", "images_per_s", "processed_tokens", "images"):
    assert r[k] != "", k
assert r["images"] == "70" and r["routing"] == "bpr", r
PY
then ok "csv has one header line and one row"; else fail "csv shape"; fi

# json: the DESIGN §5 keys.
$PY - "$WORK/folder-g1-full.json" <<'PY' && ok "json keys" || fail "json keys"
import json, sys
j = json.load(open(sys.argv[1]))
for k in ("model", "data", "routing", "capacity_factor", "images", "top1", "top5", "dropped", "images_per_s",
          "choices_dropped", "processed_tokens", "counts"):
    assert k in j, k
assert len(j["dropped"]) == len(j["moe_layers"]) >= 1 and j["images"] == 70
PY

# Foreground kept (issue 11): the keys, shares in [0, 1], at least one choice >= all choices,
# at a low factor with groups (drops happen), and the csv's old columns where they were.
"$VMOE" eval -m "$MODEL" --data "$FOLDER" --capacity-factor 0.25 --group-images 8 --format json > "$WORK/fg.json" ||
  fail "foreground eval"
$PY - "$WORK/fg.json" <<'PY' && ok "json foreground keys and shares" || fail "json foreground keys"
import json, sys
j = json.load(open(sys.argv[1]))
n = len(j["moe_layers"])
a, b = j["foreground_kept_all"], j["foreground_kept_any"]
assert len(a) == len(b) == n >= 1, (a, b)
assert all(0 <= x <= y <= 1 for x, y in zip(a, b)), (a, b)
assert min(a) < 1, ("nothing dropped at factor 0.25?", a)
assert 0 < j["foreground_patches_per_image"] <= 49, j["foreground_patches_per_image"]
for l in j["counts"]["layers"]:
    assert 0 <= l["foreground_kept_all"] <= l["foreground_kept_any"] <= l["foreground_tokens"], l
    assert l["foreground_tokens"] == j["counts"]["foreground_patches"], l
PY
"$VMOE" eval -m "$MODEL" --data "$FOLDER" --limit 16 --format csv > "$WORK/fg.csv" || fail "foreground csv"
$PY - "$WORK/fg.csv" <<'PY' && ok "csv: old columns in place, foreground columns appended" || fail "csv foreground columns"
import csv, sys
old = ("model,data,router,routing,capacity_factor,effective_capacity_factor,group_images,images,top1,top5,dropped,"
       "choices_dropped,processed_tokens,images_per_s,seconds,shard,dropped_per_layer,choices_dropped_per_layer").split(",")
rows = list(csv.reader(open(sys.argv[1])))
header, row = rows
assert header[:len(old)] == old, header
assert header[len(old):len(old) + 7] == ["foreground_patches_per_image", "foreground_kept_all", "foreground_kept_any",
                             "foreground_kept_all_per_layer", "foreground_kept_any_per_layer", "priority", "overflow"], header
# Issue 22's importance columns follow, empty without --importance.
assert header[len(old) + 7] == "importance_kept", header
assert all(v == "" for h, v in zip(header, row) if h.startswith(("importance_", "spearman_"))), row
r = dict(zip(header, row))
assert len(row) == len(header) and 0 <= float(r["foreground_kept_all"]) <= float(r["foreground_kept_any"]) <= 1, r
assert (r["priority"], r["overflow"]) == ("max_gate", "drop"), r
PY

# --precision bf16 (where the CPU has native bf16): the agreement with the f32 run of
# the same batches is in every format, and shards of a bf16 run merge to the same counts
# as the whole run.
if grep -qw avx512_bf16 /proc/cpuinfo || grep -qw amx_bf16 /proc/cpuinfo; then
  BUNDLED="$(cd "$(dirname "$0")/../.." && pwd)/data/models/vmoe-fmnist.safetensors"
  "$VMOE" eval -m "$BUNDLED" --data fashion-mnist:test --limit 64 --precision bf16 --format json > "$WORK/bf16.json" \
    || fail "eval --precision bf16"
  "$VMOE" eval -m "$BUNDLED" --data fashion-mnist:test --limit 64 --precision bf16 --shard 0/2 --format json > "$WORK/bf16-0.json" \
    && "$VMOE" eval -m "$BUNDLED" --data fashion-mnist:test --limit 64 --precision bf16 --shard 1/2 --format json > "$WORK/bf16-1.json" \
    && "$VMOE" eval --merge "$WORK/bf16-0.json" "$WORK/bf16-1.json" --format json > "$WORK/bf16-merged.json" || fail "bf16 shards"
  $PY - "$WORK/bf16.json" "$WORK/bf16-merged.json" <<'PYEOF' || fail "bf16 agreement fields"
import json, sys
whole, merged = (json.load(open(p)) for p in sys.argv[1:3])
assert whole["precision"] == "bf16", whole["precision"]
for key in ("f32_top1", "same_prediction", "same_top1_expert", "same_kept_decisions"):
    assert 0.5 <= whole[key] <= 1.0, (key, whole[key])
    assert key == "f32_top1" or whole[key] >= 0.9, (key, whole[key])
    assert merged[key] == whole[key], (key, merged[key], whole[key])
assert abs(whole["top1"] - whole["f32_top1"]) <= 0.05, (whole["top1"], whole["f32_top1"])
PYEOF
  "$VMOE" eval -m "$BUNDLED" --data fashion-mnist:test --limit 64 --precision bf16 > "$WORK/bf16.txt" || fail "eval bf16 text"
  grep -q "^precision  bf16: f32 top-1" "$WORK/bf16.txt" || fail "bf16 text line missing"
  "$VMOE" eval -m "$BUNDLED" --data fashion-mnist:test --limit 64 --shard 1/2 --format json > "$WORK/f32-1.json" || fail "f32 shard"
  expect_error 1 "precision" "$VMOE" eval --merge "$WORK/bf16-0.json" "$WORK/f32-1.json"
else
  echo "skip: no native bf16 on this CPU (the refusal is tested in test_exit_codes.sh)"
fi

# Bad input.
expect_error 1 "unknown data spec" "$VMOE" eval -m "$MODEL" --data mnist:test
expect_error 1 "split" "$VMOE" eval -m "$MODEL" --data fashion-mnist:validation
expect_error 1 "no-such-folder" "$VMOE" eval -m "$MODEL" --data "$WORK/no-such-folder"
mkdir -p "$WORK/empty"
expect_error 1 "empty" "$VMOE" eval -m "$MODEL" --data "$WORK/empty"
mkdir -p "$WORK/animals/cat" "$WORK/animals/dog"
cp "$FOLDER/bag/img000.png" "$WORK/animals/cat/" && cp "$FOLDER/bag/img001.png" "$WORK/animals/dog/"
expect_error 1 "match no label.*cat" "$VMOE" eval -m "$MODEL" --data "$WORK/animals"
make_folder "$WORK/textfile" 1 && echo "not an image" > "$WORK/textfile/coat/notes.txt"
expect_error 1 "textfile/coat/notes.txt" "$VMOE" eval -m "$MODEL" --data "$WORK/textfile"
make_folder "$WORK/big" 1 32
expect_error 1 "img000.png.*32x32.*resize" "$VMOE" eval -m "$MODEL" --data "$WORK/big"
expect_error 2 "shard" "$VMOE" eval -m "$MODEL" --data "$FOLDER" --shard 3/3
expect_error 2 "shard" "$VMOE" eval -m "$MODEL" --data "$FOLDER" --shard half
expect_error 2 "data" "$VMOE" eval -m "$MODEL"
expect_error 1 "missing" "$VMOE" eval --merge "$WORK/folder-g1-0.json" "$WORK/folder-g1-2.json"
expect_error 1 "twice" "$VMOE" eval --merge "$WORK/folder-g1-0.json" "$WORK/folder-g1-0.json" "$WORK/folder-g1-1.json" "$WORK/folder-g1-2.json"
expect_error 1 "different" "$VMOE" eval --merge "$WORK/folder-g1-0.json" "$WORK/folder-g4-vanilla-1.json"
echo '{"model": 1}' > "$WORK/junk.json"
expect_error 1 "junk.json" "$VMOE" eval --merge "$WORK/junk.json"
if [[ $(id -u) -ne 0 ]]; then
  mkdir -p "$WORK/locked/coat" && cp "$FOLDER/bag/img000.png" "$WORK/locked/coat/" && chmod 000 "$WORK/locked/coat"
  expect_error 1 "locked" "$VMOE" eval -m "$MODEL" --data "$WORK/locked"
  chmod 755 "$WORK/locked/coat"
fi

if [[ $failures -ne 0 ]]; then echo "$failures failure(s)"; exit 1; fi
echo "all eval CLI checks passed"
