#!/usr/bin/env bash
# End-to-end tests of `vmoe route`: pictures and JSON for every router, bad input gives a
# one-line error with the right exit code (2 usage, 1 other) and leaves nothing behind.
#   bash tests/cli/test_route.sh VMOE_BINARY WORKDIR
set -uo pipefail
vmoe=$(realpath "${1:?usage: test_route.sh VMOE_BINARY WORKDIR}")
work=${2:?usage: test_route.sh VMOE_BINARY WORKDIR}
python=/usr/bin/python3
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
source "$(dirname "$(realpath "$0")")/common/expect.sh"
rm -rf "$work"
mkdir -p "$work"
cd "$work" || exit 1

# A 28x28 grey PGM: a bright ellipse on a dark background.
"$python" - <<'EOF'
rows = []
for y in range(28):
    row = bytearray()
    for x in range(28):
        inside = ((y - 15) / 10) ** 2 + ((x - 14) / 8) ** 2 < 1
        row.append(190 + (x * 7 + y * 3) % 40 if inside else (x * 13 + y * 5) % 25)
    rows.append(bytes(row))
open("blob.pgm", "wb").write(b"P5\n28 28\n255\n" + b"".join(rows))
EOF

for arch in vmoe-fmnist ec-fmnist softmoe-fmnist vit-fmnist; do
  "$vmoe" init --arch "$arch" --seed 3 -o "$arch.safetensors" >/dev/null 2>init.err || { cat init.err; exit 1; }
done

# MoE blocks of a model, from `vmoe info --json`
moe_layers() {
  "$vmoe" info "$1" --json | "$python" -c 'import json, sys; print(" ".join(str(l["layer"]) for l in json.load(sys.stdin)["moe_layers"]))'
}
topk_layers=$(moe_layers vmoe-fmnist.safetensors)
ec_layers=$(moe_layers ec-fmnist.safetensors)
n_topk=$(echo $topk_layers | wc -w)
n_ec=$(echo $ec_layers | wc -w)
first_topk=$(echo $topk_layers | cut -d' ' -f1)
last_topk=$(echo $topk_layers | awk '{print $NF}')
first_soft=$(moe_layers softmoe-fmnist.safetensors | cut -d' ' -f1)
not_ec=""  # an encoder block of ec-fmnist that is not an MoE block
for b in 0 1 2 3 4 5; do
  case " $ec_layers " in *" $b "*) ;; *) not_ec=$b; break ;; esac
done
[ -n "$n_topk" ] && [ "$n_topk" -gt 0 ] && [ -n "$not_ec" ] || { echo "cannot read the test models' MoE blocks"; exit 1; }

# check_json FILE OUTDIR ROUTER NUM_LAYERS: the DESIGN §5 shape; every listed file exists
# in OUTDIR and is a PNG.
check_json() {
  "$python" - "$@" <<'EOF'
import json, os, sys
path, outdir, router, layers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
j = json.load(open(path))
errors = []
def need(cond, what):
    if not cond:
        errors.append(what)
need(j["grid"] == [7, 7] and j["cls"] is True, f"grid/cls {j['grid']} {j['cls']}")
need(len(j["layers"]) == layers, f"{len(j['layers'])} layers")
for l in j["layers"]:
    need(l["router"] == router, f"router {l['router']}")
    for key in ("layer", "num_experts", "k", "capacity", "gates", "choices", "dispatch", "combine"):
        need(key in l, f"layer key {key}")
    E = l["num_experts"]
    if router == "soft":
        S = E * l["slots_per_expert"]
        need(len(l["dispatch"]) == 50 and all(len(r) == S for r in l["dispatch"]), "dispatch shape")
        need(len(l["combine"]) == 50 and all(len(r) == S for r in l["combine"]), "combine shape")
        for s in range(S):
            col = sum(r[s] for r in l["dispatch"])
            need(abs(col - 1) < 1e-4, f"dispatch column {s} sums to {col}")
    else:
        need(len(l["gates"]) == 50 and all(len(r) == E for r in l["gates"]), "gates shape")
        need(len(l["choices"]) == 50 and all(len(r) == l["k"] for r in l["choices"]), "choices shape")
        for row in l["choices"]:
            for c in row:
                need(set(c) >= {"expert", "gate", "kept"} and isinstance(c["kept"], bool), f"choice {c}")
# Foreground (issue 11): a patch is foreground when one of its bytes is > 25.5 (10% of 0..255);
# token 0 is the CLS token, never foreground.
pix = open("blob.pgm", "rb").read()[-28 * 28:]
fg = [False] + [any(pix[(4 * gy + y) * 28 + 4 * gx + x] > 25.5 for y in range(4) for x in range(4))
                for gy in range(7) for gx in range(7)]
need(j.get("foreground") == fg, f"foreground {j.get('foreground')} != {fg}")
need(0 < sum(fg) < 49, f"the test image has {sum(fg)} foreground patches")
for l in j["layers"]:
    need(l.get("foreground_tokens") == sum(fg), f"foreground_tokens {l.get('foreground_tokens')}")
    a, b = l.get("foreground_kept_all", -1), l.get("foreground_kept_any", -1)
    need(0 <= a <= b <= 1, f"foreground kept all {a} / any {b}")
    if router == "soft":
        need(a == b == 1, "Soft-MoE keeps every foreground patch")
    elif router == "top_k":
        kept_all = sum(1 for t in range(50) if fg[t] and all(c["kept"] for c in l["choices"][t]))
        kept_any = sum(1 for t in range(50) if fg[t] and any(c["kept"] for c in l["choices"][t]))
        need(abs(a - kept_all / sum(fg)) < 1e-12 and abs(b - kept_any / sum(fg)) < 1e-12,
             f"foreground kept {a}/{b} != choices' {kept_all}/{kept_any} of {sum(fg)}")
for cell in j["strip"]:
    for l in cell.get("layers", []):
        need(0 <= l["foreground_kept_all"] <= l["foreground_kept_any"] <= 1, f"strip cell {cell['capacity_factor']}")
files = j["files"]
need(len(files) > 0, "no files")
for f in files:
    need(os.path.dirname(f) == outdir.rstrip("/"), f"{f} not in {outdir}")
    need(os.path.isfile(f), f"{f} missing")
    if os.path.isfile(f):
        need(open(f, "rb").read(8) == b"\x89PNG\r\n\x1a\n", f"{f} is not a PNG")
listed = sorted(os.path.basename(f) for f in files)
need(sorted(os.listdir(outdir)) == listed, f"{outdir} holds {sorted(os.listdir(outdir))}, JSON lists {listed}")
if errors:
    print("; ".join(errors[:5]))
    sys.exit(1)
EOF
}

# --- good runs --------------------------------------------------------------------
expect 0 "top-k route --json" -- "$vmoe" route blob.pgm -m vmoe-fmnist.safetensors -o pics-topk --json
cp out.txt topk.json
check_json topk.json pics-topk top_k "$n_topk" || fail "top-k JSON/files"
[ "$(ls pics-topk | wc -l)" = $((4 * n_topk)) ] || fail "top-k: expected $((4 * n_topk)) pictures, got $(ls pics-topk | wc -l)"

expect 0 "experts-choice route --json" -- "$vmoe" route blob.pgm -m ec-fmnist.safetensors -o pics-ec --json --capacity-factor 0.5
cp out.txt ec.json
check_json ec.json pics-ec experts_choice "$n_ec" || fail "experts-choice JSON/files"

expect 0 "soft route --json --layer $first_soft" -- "$vmoe" route blob.pgm -m softmoe-fmnist.safetensors -o pics-soft/sub --json --layer "$first_soft"
cp out.txt soft.json
check_json soft.json pics-soft/sub soft 1 || fail "soft JSON/files"

expect 0 "factor list, vanilla, one layer" -- "$vmoe" route blob.pgm -m vmoe-fmnist.safetensors -o pics-list \
  --capacity-factor 0.25,1,2 --routing vanilla --layer "$first_topk" --json
cp out.txt list.json
check_json list.json pics-list top_k 1 || fail "factor list JSON/files"
"$python" - <<'EOF' || fail "factor list: main run and strip"
import json
j = json.load(open("list.json"))
assert j["capacity_factor"] == 0.25 and j["routing"] == "vanilla", (j["capacity_factor"], j["routing"])
assert j["layers"][0]["capacity_factor"] == 0.25 and j["layers"][0]["routing"] == "vanilla"
cells = [(c["routing"], c["capacity_factor"]) for c in j["strip"]]
assert cells == [(r, f) for r in ("bpr", "vanilla") for f in (0.25, 1, 2)], cells
EOF

expect 0 "text output" -- "$vmoe" route blob.pgm -m vmoe-fmnist.safetensors -o pics-text
grep -q "layer $first_topk: top-2 of 8" out.txt || fail "text output lacks the layer summary: $(head -c 300 out.txt)"
grep -q "foreground kept: [0-9]*/[0-9]* with all choices" out.txt || fail "text output lacks the foreground line"
grep -q "pics-text/blob-L$last_topk-strip.png" out.txt || fail "text output lacks the file list"

expect 0 "--no-pictures" -- "$vmoe" route blob.pgm -m vmoe-fmnist.safetensors -o pics-none --json --no-pictures
"$python" -c 'import json,sys; j=json.load(open("out.txt")); sys.exit(j["files"] != [])' || fail "--no-pictures lists files"
[ -e pics-none ] && fail "--no-pictures created the output directory"

# --- bad usage: exit 2, nothing written ---------------------------------------------
expect 2 "model without MoE layers" -- "$vmoe" route blob.pgm -m vit-fmnist.safetensors -o bad1
expect 2 "--layer not an MoE block" -- "$vmoe" route blob.pgm -m ec-fmnist.safetensors -o bad2 --layer "$not_ec"
expect 2 "--layer out of range" -- "$vmoe" route blob.pgm -m vmoe-fmnist.safetensors -o bad3 --layer 6
expect 2 "--layer not a number" -- "$vmoe" route blob.pgm -m vmoe-fmnist.safetensors -o bad4 --layer three
expect 2 "--layer negative" -- "$vmoe" route blob.pgm -m vmoe-fmnist.safetensors -o bad4 --layer=-1
expect 2 "factor list with a non-number" -- "$vmoe" route blob.pgm -m vmoe-fmnist.safetensors -o bad5 --capacity-factor 1,abc
expect 2 "factor list with an empty item" -- "$vmoe" route blob.pgm -m vmoe-fmnist.safetensors -o bad5 --capacity-factor 1,,2
expect 2 "zero factor" -- "$vmoe" route blob.pgm -m vmoe-fmnist.safetensors -o bad6 --capacity-factor 0
expect 2 "negative factor" -- "$vmoe" route blob.pgm -m vmoe-fmnist.safetensors -o bad6 --capacity-factor=-0.5
expect 2 "unknown routing" -- "$vmoe" route blob.pgm -m vmoe-fmnist.safetensors -o bad7 --routing fifo
expect 2 "no image" -- "$vmoe" route -m vmoe-fmnist.safetensors -o bad8
for d in bad1 bad2 bad3 bad4 bad5 bad6 bad7 bad8; do
  [ -e "$d" ] && fail "bad usage left $d behind"
done

# --- other errors: exit 1, nothing written ------------------------------------------
echo "not a directory" >plain-file
expect 1 "-o is a regular file" -- "$vmoe" route blob.pgm -m vmoe-fmnist.safetensors -o plain-file
expect 1 "-o below a regular file" -- "$vmoe" route blob.pgm -m vmoe-fmnist.safetensors -o plain-file/pics
if [ "$(id -u)" != 0 ]; then  # root writes anywhere; this case needs a normal user
  mkdir -p read-only && chmod 555 read-only
  expect 1 "-o in a read-only directory" -- "$vmoe" route blob.pgm -m vmoe-fmnist.safetensors -o read-only
  chmod 755 read-only
fi
expect 1 "-o in /proc" -- "$vmoe" route blob.pgm -m vmoe-fmnist.safetensors -o /proc/vmoe-route-test
expect 1 "missing image" -- "$vmoe" route missing.png -m vmoe-fmnist.safetensors -o bad9
[ -e bad9 ] && fail "a failed run left its new output directory behind"
echo "garbage" >broken.png
expect 1 "corrupt image" -- "$vmoe" route broken.png -m vmoe-fmnist.safetensors -o bad10 --json
[ -e bad10 ] && fail "a failed run left its new output directory behind"
expect 1 "missing model" -- "$vmoe" route blob.pgm -m missing.safetensors -o bad11
[ "$(cat plain-file)" = "not a directory" ] || fail "plain-file was changed"
leftovers=$(find . -name '*.tmp*' -o -name '.vmoe-probe*')
[ -n "$leftovers" ] && fail "temporary files left: $leftovers"

if [ "$failures" != 0 ]; then
  echo "$failures failure(s)"
  exit 1
fi
echo "all route CLI tests passed"
