#!/bin/bash
# Patch importance end to end (issue 22): vmoe eval --importance (text, csv, json, shards
# merged), --priority oracle, vmoe route --importance (JSON and pictures), and the
# refusals (Soft-MoE, commands without oracle).
# usage: bash test_importance.sh VMOE_BINARY WORKDIR
set -u
VMOE=${1:?usage: test_importance.sh VMOE_BINARY WORKDIR}
WORK=${2:?usage: test_importance.sh VMOE_BINARY WORKDIR}
SRC=${VMOE_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=/usr/bin/python3
rm -rf "$WORK" && mkdir -p "$WORK" || exit 1
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
ok() { echo "ok: $*"; }
SAMPLE=$SRC/data/samples/fmnist_0_ankle-boot.png
SOFT=$SRC/data/models/softmoe-fmnist.safetensors
common=(--data fashion-mnist:test --limit 16 --capacity-factor 0.25 --group-images 8)

if "$VMOE" eval "${common[@]}" --importance --format json > "$WORK/full.json"; then
  if $PY - "$WORK/full.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
for key in ("importance_kept", "importance_kept_all", "importance_kept_oracle", "importance_kept_oracle_all"):
    assert 0 <= j[key] <= 1, (key, j[key])
assert len(j["importance_kept_per_layer"]) == len(j["moe_layers"]) == 6
assert set(j["importance_spearman"]) == {"max_gate", "sum_gates", "entropy", "random"}, j["importance_spearman"]
assert all(-1 <= v <= 1 for v in j["importance_spearman"]["max_gate"])
# 0.25 in groups of 8 drops about half the tokens: something is lost, and BPR by
# importance loses less of it than BPR by the top gate on these 16 images.
assert j["importance_kept"] < 1 and j["importance_kept_oracle"] > j["importance_kept"], j
PY
  then ok "eval --importance json"; else fail "eval --importance json fields"; fi
else fail "eval --importance"; fi

# Shards merge to the unsharded importance sums (groups go whole to a shard). Batches of
# one group, as in the shards, so that the single run computes every image with the same
# matmul shapes (docs/EVAL.md, Sharding: AVX2 rounds rows differently by row count).
"$VMOE" eval "${common[@]}" --batch 8 --importance --format json > "$WORK/full8.json" || fail "eval --batch 8"
for i in 0 1; do
  "$VMOE" eval "${common[@]}" --batch 8 --importance --shard $i/2 --format json > "$WORK/part$i.json" || fail "shard $i"
done
if "$VMOE" eval --merge "$WORK/part0.json" "$WORK/part1.json" --format json > "$WORK/merged.json" &&
   $PY - "$WORK/full8.json" "$WORK/merged.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
for key in ("importance_kept", "importance_kept_all", "importance_kept_oracle", "importance_kept_oracle_all"):
    assert abs(a[key] - b[key]) < 1e-9, (key, a[key], b[key])
for s in a["importance_spearman"]:
    assert all(abs(x - y) < 1e-9 for x, y in zip(a["importance_spearman"][s], b["importance_spearman"][s]))
PY
then ok "sharded --importance merges exactly"; else fail "sharded --importance merge"; fi

out=$("$VMOE" eval "${common[@]}" --importance --format csv)
if $PY - <<PY
import csv, io
rows = list(csv.DictReader(io.StringIO("""$out""")))
assert len(rows) == 1 and 0 <= float(rows[0]["importance_kept_oracle"]) <= 1 and rows[0]["spearman_learned"] == ""
PY
then ok "eval --importance csv"; else fail "eval --importance csv: $out"; fi
text=$("$VMOE" eval "${common[@]}" --importance)
grep -q "^importance kept .*oracle order" <<<"$text" && ok "eval --importance text" || fail "eval --importance text: $text"

# --priority oracle: an upper-bound run; eval and route take it, classify refuses it.
oracle=$("$VMOE" eval "${common[@]}" --priority oracle --format csv | tail -n 1)
[[ $oracle == *",oracle,drop,"* ]] && ok "eval --priority oracle" || fail "eval --priority oracle: $oracle"
"$VMOE" classify --priority oracle "$SAMPLE" > /dev/null 2> "$WORK/err"
rc=$?
[[ $rc == 2 ]] && ok "classify refuses --priority oracle" || fail "classify --priority oracle: exit $rc"

# Soft-MoE drops nothing: one line, non-zero.
"$VMOE" eval -m "$SOFT" --data fashion-mnist:test --limit 2 --importance > /dev/null 2> "$WORK/err"
rc=$?
[[ $rc != 0 && $(wc -l < "$WORK/err") == 1 ]] && grep -q "drops nothing" "$WORK/err" &&
  ok "eval --importance refuses Soft-MoE" || fail "eval --importance on Soft-MoE: exit $rc, $(cat "$WORK/err")"
"$VMOE" route -m "$SOFT" "$SAMPLE" --importance --no-pictures > /dev/null 2> "$WORK/err"
rc=$?
[[ $rc == 2 ]] && ok "route --importance refuses Soft-MoE" || fail "route --importance on Soft-MoE: exit $rc"

# route --importance: per-layer importance in the JSON, one importance picture per layer.
if "$VMOE" route "$SAMPLE" --capacity-factor 0.25 --importance --json -o "$WORK/route" > "$WORK/route.json" &&
   $PY - "$WORK/route.json" "$WORK/route" <<'PY'
import json, os, sys
j = json.load(open(sys.argv[1]))
assert isinstance(j["importance_class"], int)
for layer in j["layers"]:
    assert len(layer["importance"]) == layer["tokens"] == 50
    assert 0 <= layer["importance_kept"] <= 1
pictures = [f for f in j["files"] if f.endswith("-importance.png")]
assert len(pictures) == 6 and all(os.path.getsize(f) > 0 for f in pictures), pictures
PY
then ok "route --importance json and pictures"; else fail "route --importance"; fi
"$VMOE" route "$SAMPLE" --no-pictures --json > "$WORK/plain.json" &&
  $PY -c "import json,sys; j=json.load(open(sys.argv[1])); assert all(l['importance'] is None for l in j['layers'])" "$WORK/plain.json" &&
  ok "route without --importance: importance null" || fail "route without --importance"

echo "$failures failure(s)"
[[ $failures == 0 ]]
