#!/bin/bash
# vmoe eval --routing-stats (issue 26): the files it writes, their shapes and sums, that
# the merge of 3 shards equals one run byte for byte (JSON, CSVs and pictures; top-k,
# experts-choice and Soft-MoE), and clear errors with the right exit codes.
# usage: bash test_routing_stats.sh VMOE_BINARY WORKDIR
set -u
VMOE=${1:?usage: test_routing_stats.sh VMOE_BINARY WORKDIR}
WORK=${2:?usage: test_routing_stats.sh VMOE_BINARY WORKDIR}
SRC=${VMOE_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=/usr/bin/python3
rm -rf "$WORK" && mkdir -p "$WORK" || exit 1
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
ok() { echo "ok: $*"; }

expect_error() {
  local code=$1 pattern=$2; shift 2
  local out rc
  out=$("$@" 2>&1 >/dev/null); rc=$?
  if [[ $rc -ne $code ]]; then fail "exit $rc (wanted $code) from: $* -- $out"; return; fi
  if ! grep -qE -- "$pattern" <<<"$out"; then fail "message '$out' lacks /$pattern/ from: $*"; return; fi
  if [[ $(wc -l <<<"$out") -ne 1 ]]; then fail "message is not one line: $out"; return; fi
  ok "exit $code: $out"
}

# Untrained models of the three router kinds (init is deterministic per seed).
for arch in vmoe-fmnist ec-fmnist softmoe-fmnist vit-fmnist; do
  "$VMOE" init --arch $arch -o "$WORK/$arch.safetensors" --seed 5 2>/dev/null || { echo "FAIL: vmoe init $arch"; exit 1; }
done

# A class-per-folder tree of random 28x28 PNGs (runs without the Fashion-MNIST package).
$PY - "$SRC/scripts" "$WORK/folder" <<'PY' || { echo "FAIL: cannot build the image folder"; exit 1; }
import os, random, sys
sys.path.insert(0, sys.argv[1])
from extract_samples import CLASSES, png_grey, slug
rng = random.Random(11)
for name in CLASSES:
    os.makedirs(os.path.join(sys.argv[2], slug(name)), exist_ok=True)
    for i in range(4):
        png_grey(os.path.join(sys.argv[2], slug(name), f"img{i}.png"), 28, 28,
                 bytes(rng.randrange(256) if rng.random() < 0.4 else 0 for _ in range(28 * 28)))
PY
DATA=(--data "$WORK/folder")
if [[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]]; then DATA=(--data fashion-mnist:test --limit 45); fi

# One run and 3 shards with statistics, merged (stats directories and eval JSON in a
# scrambled order), compared byte for byte with the single run. Each batch is one routing
# group, so every image is computed by the same matmul shapes in the shards as in the
# single run: oneDNN's AVX2 sgemm rounds a row differently depending on the row count
# (docs/EVAL.md, Sharding), which would change the low bits of the gate sums.
check_merge() {
  local name=$1; shift
  "$VMOE" eval "$@" --routing-stats "$WORK/$name-full" --format json > "$WORK/$name-full.json" || { fail "$name: run"; return; }
  for i in 0 1 2; do
    "$VMOE" eval "$@" --shard $i/3 --routing-stats "$WORK/$name-$i" --format json > "$WORK/$name-e$i.json" ||
      { fail "$name: shard $i"; return; }
  done
  "$VMOE" eval --merge "$WORK/$name-2" "$WORK/$name-e1.json" "$WORK/$name-0/routing_stats.json" "$WORK/$name-e0.json" \
    "$WORK/$name-1" "$WORK/$name-e2.json" --routing-stats "$WORK/$name-merged" > "$WORK/$name-merged.txt" ||
    { fail "$name: merge"; return; }
  local files differ=0
  files=$(cd "$WORK/$name-full" && ls)
  [[ "$files" == "$(cd "$WORK/$name-merged" && ls)" ]] || { fail "$name: merged directory lists other files"; return; }
  for f in $files; do cmp -s "$WORK/$name-full/$f" "$WORK/$name-merged/$f" || { differ=1; echo "  differs: $f"; }; done
  if [[ $differ -eq 0 ]]; then ok "$name: 3 shards merged == one run, byte for byte ($(wc -w <<<"$files") files)"
  else fail "$name: merged files differ from the single run"; fi
  grep -q "^specialise block" "$WORK/$name-merged.txt" && grep -q "^top-1" "$WORK/$name-merged.txt" &&
    ok "$name: merge prints the eval summary and the NMI lines" || fail "$name: merge text output"
}

check_merge topk -m "$WORK/vmoe-fmnist.safetensors" "${DATA[@]}" --batch 1
check_merge ec -m "$WORK/ec-fmnist.safetensors" "${DATA[@]}" --batch 2 --group-images 2
check_merge soft -m "$WORK/softmoe-fmnist.safetensors" "${DATA[@]}" --batch 1

# Batches of several groups: the shards' batches hold other images than the single run's.
# Counts must still add up exactly; float sums (gates, soft mass) agree to rounding.
"$VMOE" eval -m "$WORK/vmoe-fmnist.safetensors" "${DATA[@]}" --batch 8 --routing-stats "$WORK/b8-full" > /dev/null &&
for i in 0 1 2; do
  "$VMOE" eval -m "$WORK/vmoe-fmnist.safetensors" "${DATA[@]}" --batch 8 --shard $i/3 --routing-stats "$WORK/b8-$i" \
    --format json > "$WORK/b8-e$i.json" || break
done &&
"$VMOE" eval --merge "$WORK"/b8-{0,1,2} "$WORK"/b8-e{0,1,2}.json --routing-stats "$WORK/b8-merged" > /dev/null &&
$PY - "$WORK/b8-full/routing_stats.json" "$WORK/b8-merged/routing_stats.json" <<'PY' &&
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert a["images"] == b["images"] and len(a["layers"]) == len(b["layers"])
for la, lb in zip(a["layers"], b["layers"]):
    for k in ("class_expert", "class_expert_kept", "position_expert", "load", "drops"):
        assert la[k] == lb[k], (la["layer"], k)
    for x, y in zip(la["gate_sum"], lb["gate_sum"]):
        assert abs(x - y) <= 1e-5 * max(abs(x), 1), (la["layer"], x, y)
PY
ok "batch 8: 3 shards merged: counts exact, gate sums within 1e-5" || fail "batch 8: merged statistics differ from one run"

# The files and what they must hold.
$PY - "$WORK/topk-full" "$WORK/ec-full" "$WORK/soft-full" <<'PY' && ok "JSON fields, sums and CSVs agree" || fail "JSON/CSV contents"
import csv, json, os, sys
for d in sys.argv[1:]:
    j = json.load(open(os.path.join(d, "routing_stats.json")))
    T, n, C = j["tokens_per_image"], j["images"], len(j["classes"])
    assert T == 50 and j["grid"] == [7, 7] and j["cls"] is True, j["grid"]
    soft = j["kind"] == "soft"
    X = j["num_experts"] * (j["slots_per_expert"] if soft else 1)
    for l in j["layers"]:
        for k in ("class_expert", "class_expert_kept", "position_expert", "load", "drops", "gate_sum", "mean_gate",
                  "class_nmi", "position_nmi"):
            assert k in l, k
        ce, pe = l["class_expert"], l["position_expert"]
        assert len(ce) == C and len(pe) == T and all(len(r) == X for r in ce + pe)
        assert all(isinstance(v, int) and v >= 0 for r in ce + pe + l["class_expert_kept"] for v in r)
        if not soft:
            # every token has exactly one first choice
            assert sum(map(sum, ce)) == n * T and all(sum(r) == n for r in pe), (sum(map(sum, ce)), n * T)
            assert sum(map(sum, l["class_expert_kept"])) == sum(l["kept"])
            assert all(0 <= g <= 1 for g in l["mean_gate"])
        else:
            # each slot's dispatch weights sum to 1 per group (rounding: <= 2^-24 per token)
            per_slot = [sum(r[x] for r in pe) / j["mass_scale"] for x in range(X)]
            assert all(abs(m - n) < 1e-3 for m in per_slot), per_slot[:3]
        assert 0 <= l["class_nmi"] <= 1 and 0 <= l["position_nmi"] <= 1
        b = l["layer"]
        rows = list(csv.reader(open(os.path.join(d, f"L{b}-class_expert.csv"))))
        assert len(rows) == C + 1 and [list(map(int, r[1:])) for r in rows[1:]] == ce
        rows = list(csv.reader(open(os.path.join(d, f"L{b}-position_expert.csv"))))
        assert rows[1][0] == "cls" and [list(map(int, r[3:])) for r in rows[1:]] == pe
        for f in (f"L{b}-class_expert_kept.csv", f"L{b}-experts.csv", f"L{b}-class-expert.png", f"L{b}-positions.png"):
            assert os.path.getsize(os.path.join(d, f)) > 0, f
    assert os.path.getsize(os.path.join(d, "specialisation.png")) > 0
    rows = list(csv.DictReader(open(os.path.join(d, "specialisation.csv"))))
    assert [int(r["layer"]) for r in rows] == [l["layer"] for l in j["layers"]]
PY
# The text output carries one NMI line per MoE block.
"$VMOE" eval -m "$WORK/vmoe-fmnist.safetensors" "${DATA[@]}" --routing-stats "$WORK/text" > "$WORK/text.txt" &&
  [[ $(grep -c "^specialise block .*class NMI .*position NMI" "$WORK/text.txt") -eq 6 ]] &&
  ok "text output: 6 specialisation lines" || fail "text output lacks the NMI lines"

# Bad input.
expect_error 1 "no MoE layer" "$VMOE" eval -m "$WORK/vit-fmnist.safetensors" "${DATA[@]}" --routing-stats "$WORK/dense"
touch "$WORK/a-file"
expect_error 1 "a-file.*not a directory" "$VMOE" eval -m "$WORK/vmoe-fmnist.safetensors" "${DATA[@]}" --routing-stats "$WORK/a-file"
expect_error 1 "missing" "$VMOE" eval --merge "$WORK/topk-0" "$WORK/topk-2" --routing-stats "$WORK/m1"
expect_error 1 "twice" "$VMOE" eval --merge "$WORK/topk-0" "$WORK/topk-0" "$WORK/topk-1" --routing-stats "$WORK/m2"
expect_error 1 "different" "$VMOE" eval --merge "$WORK/topk-0" "$WORK/ec-1" "$WORK/topk-2" --routing-stats "$WORK/m3"
expect_error 2 "needs --routing-stats" "$VMOE" eval --merge "$WORK/topk-0" "$WORK/topk-1" "$WORK/topk-2"
expect_error 2 "routing_stats.json" "$VMOE" eval --merge "$WORK/topk-e0.json" "$WORK/topk-e1.json" "$WORK/topk-e2.json" --routing-stats "$WORK/m4"
$PY -c "import json,sys; j=json.load(open(sys.argv[1])); j['layers'][0]['load'] = [1]; json.dump(j, open(sys.argv[2], 'w'))" \
  "$WORK/topk-0/routing_stats.json" "$WORK/broken.json"
expect_error 1 "broken.json.*load" "$VMOE" eval --merge "$WORK/broken.json" "$WORK/topk-1" "$WORK/topk-2" --routing-stats "$WORK/m5"
[[ ! -e "$WORK/m1" || -z "$(ls -A "$WORK/m1")" ]] && ok "a failed merge writes nothing" || fail "a failed merge left files"

if [[ $failures -ne 0 ]]; then echo "$failures failure(s)"; exit 1; fi
echo "all routing-stats CLI checks passed"
