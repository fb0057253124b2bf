#!/usr/bin/env bash
# End-to-end tests of `vmoe report` outside the browser (tests/browser has the page's
# behaviour): the page is one self-contained file, its data matches `vmoe route --json`,
# bad images are left out with one line each and exit code 1, bad usage is 2, and -o
# refuses what is not a regular file.
#   bash tests/cli/test_report.sh VMOE_BINARY WORKDIR
set -uo pipefail
vmoe=$(realpath "${1:?usage: test_report.sh VMOE_BINARY WORKDIR}")
work=${2:?usage: test_report.sh VMOE_BINARY WORKDIR}
src=${VMOE_SOURCE_DIR:?VMOE_SOURCE_DIR must name the repository}
python=/usr/bin/python3
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
source "$(dirname "$(realpath "$0")")/common/expect.sh"
rm -rf "$work"
mkdir -p "$work"
cd "$work" || exit 1

model=$src/data/models/vmoe-fmnist.safetensors
boot=$src/data/samples/fmnist_0_ankle-boot.png
bag=$src/data/samples/fmnist_18_bag.png
photo=$src/data/samples/chelsea.png
printf 'not an image' > broken.png

# data_of PAGE: the page's JSON (the #vmoe-data element) on stdout
data_of() {
  "$python" - "$1" <<'EOF'
import json, re, sys
html = open(sys.argv[1], encoding="utf-8").read()
m = re.search(r'<script type="application/json" id="vmoe-data">(.*?)</script>', html, re.S)
print(json.dumps(json.loads(m.group(1))))
EOF
}

# --- a good run: the page's numbers are route --json's
expect 0 "report of two images" -- "$vmoe" report "$boot" "$bag" -m "$model" --capacity-factor 1,0.25 -o page.html
grep -q "^wrote page.html: 2 image(s), 2 capacity factor(s) x 2 routing(s)" out.txt || fail "summary line: $(cat out.txt)"
[ -s err.txt ] && fail "good run wrote to stderr: $(head -c 300 err.txt)"
data_of page.html > page.json || fail "page has no readable #vmoe-data"
for r in bpr vanilla; do
  "$vmoe" route "$boot" -m "$model" --capacity-factor 0.25 --routing $r --json --no-pictures > route-$r.json || fail "route $r"
done
"$python" - page.json route-bpr.json route-vanilla.json <<'EOF' || fail "page data differs from route --json"
import json, sys
page = json.load(open(sys.argv[1]))
routes = [json.load(open(p)) for p in sys.argv[2:]]
assert page["factors"] == [1, 0.25], page["factors"]
assert page["routings"] == ["bpr", "vanilla"], page["routings"]
assert page["grid"] == routes[0]["grid"] and page["cls"] == routes[0]["cls"]
assert [len(im["runs"]) for im in page["images"]] == [4, 4]
for r, route in enumerate(routes):
    run = page["images"][0]["runs"][1 * 2 + r]  # factor 0.25
    assert run["routing"] == route["routing"], (run["routing"], route["routing"])
    assert run["top"][0]["index"] == route["top"][0]["index"]
    for got, want in zip(run["layers"], route["layers"], strict=True):
        assert got["layer"] == want["layer"]
        for key in ("dropped_tokens", "dropped_choices", "capacity"):
            assert got[key] == want[key], (key, got[key], want[key])
        k = got["k"]
        experts = [[c["expert"] for c in row] for row in want["choices"]]
        kept = "".join("1" if c["kept"] else "0" for row in want["choices"] for c in row)
        assert [got["expert"][i * k:(i + 1) * k] for i in range(got["tokens"])] == experts
        assert got["kept"] == kept
        assert got["rank"] == want["priority_rank"]
        gates = [c["gate"] for row in want["choices"] for c in row]
        assert all(abs(a - b) < 1e-3 for a, b in zip(got["gate"], gates, strict=True))
print("ok")
EOF
# self-contained: nothing to fetch, the images inline
grep -Eiq '(src|href)=["'"'"']?(https?:)?//|url\((https?:)?//' page.html && fail "page refers to the network"
[ "$(grep -o 'data:image/png;base64,' page.html | wc -l)" -ge 2 ] || fail "images are not inlined as data URLs"
ls page.html.tmp.* >/dev/null 2>&1 && fail "temporary file left behind"

# --- Soft-MoE: one column, one factor, dispatch columns sum to 1
expect 0 "Soft-MoE report" -- "$vmoe" report "$boot" -m "$src/data/models/softmoe-fmnist.safetensors" -o soft.html
data_of soft.html | "$python" -c '
import json, sys
d = json.load(sys.stdin)
assert d["mode"] == "soft" and d["routings"] == ["soft"] and len(d["factors"]) == 1, (d["mode"], d["routings"], d["factors"])
L = d["images"][0]["runs"][0]["layers"][0]
S, N = L["slots"], L["tokens"]
for s in range(S):
    assert abs(sum(L["dispatch"][t * S + s] for t in range(N)) - 1) < 1e-4
' || fail "Soft-MoE page data"

# --- bad images among good ones: one line each, page of the rest, exit 1
"$vmoe" report "$boot" broken.png "$photo" "$bag" -m "$model" -o mixed.html >out.txt 2>err.txt
code=$?
[ "$code" = 1 ] || fail "mixed images: exit $code, expected 1"
[ "$(grep -c . err.txt)" = 2 ] || fail "mixed images: expected 2 lines on stderr: $(cat err.txt)"
grep -q "broken.png" err.txt && grep -q "chelsea.png" err.txt || fail "mixed images: lines do not name the images: $(cat err.txt)"
data_of mixed.html | "$python" -c '
import json, sys
d = json.load(sys.stdin)
assert [im["path"].rsplit("/", 1)[-1] for im in d["images"]] == ["fmnist_0_ankle-boot.png", "fmnist_18_bag.png"]
assert len(d["failures"]) == 2
' || fail "mixed images: page does not cover exactly the two good images"
echo "ok: mixed images"

# --- no usable image: one line per image, exit 1, no page
expect 1 "only a broken image" -- "$vmoe" report broken.png -m "$model" -o none.html
[ -e none.html ] && fail "a page was written without any image"

# --- bad usage: exit 2
expect 2 "--importance" -- "$vmoe" report "$boot" -m "$model" --importance -o x.html
mentions "--importance" "not available yet"
expect 2 "bad factor list" -- "$vmoe" report "$boot" -m "$model" --capacity-factor 1,,0.5 -o x.html
expect 2 "negative factor" -- "$vmoe" report "$boot" -m "$model" --capacity-factor 1,-1 -o x.html
expect 2 "unknown routing" -- "$vmoe" report "$boot" -m "$model" --routing bpr,fast -o x.html
expect 2 "routing twice" -- "$vmoe" report "$boot" -m "$model" --routing bpr,bpr -o x.html
expect 2 "dense model" -- "$vmoe" report "$boot" -m "$src/data/models/vit-fmnist.safetensors" -o x.html
[ -e x.html ] && fail "a page was written on bad usage"

# --- -o that is not a regular file: exit 1, before the work
mkdir adir
mkfifo afifo
expect 1 "-o a directory" -- "$vmoe" report "$boot" -m "$model" -o adir
mentions "-o a directory" "directory"
expect 1 "-o a FIFO" -- timeout 20 "$vmoe" report "$boot" -m "$model" -o afifo
mentions "-o a FIFO" "FIFO"
expect 1 "-o a device" -- "$vmoe" report "$boot" -m "$model" -o /dev/null
expect 1 "-o in a missing directory" -- "$vmoe" report "$boot" -m "$model" -o nowhere/page.html

if [ "$failures" -gt 0 ]; then
  echo "$failures failure(s)"
  exit 1
fi
echo "all report CLI tests passed"
