#!/usr/bin/env bash
# Re-measures the inference table of docs/BENCHMARKS.md on this machine: vmoe, ONNX Runtime
# and PyTorch side by side in one run. For each model and batch size, interleaved, ROUNDS
# times in turn: the matmul ceiling, `vmoe bench`, the same model in ONNX Runtime
# (scripts/ort: exported from the PyTorch peer, onnxruntime-node CPU EP, 2 intra-op
# threads, graph optimisation "all"), then in eval-mode PyTorch (scripts/bench_vs_torch.py,
# 2 threads); the best of each is kept (on a host whose load comes in bursts, the best
# round is the one the bursts missed). Then one markdown table:
#   model | batch | vmoe images/s | ORT images/s | vmoe/ORT | PyTorch images/s | vmoe/PyTorch
#   | GFLOP/s | ceiling | % of ceiling | peak RSS (vmoe, above runtime, target, ORT, PyTorch)
# The ceiling is `vmoe bench`'s single 3136x768x3072 matmul, measured in every round of
# every row (this VM's speed drifts: the same matmul measured 192-350 GFLOP/s within an
# hour); each row's % of ceiling is against its own best.
# Before a model's rows, both peers' logits are checked against `vmoe classify --json` on
# random images (ORT: on a full batch of each size, within 1e-4 of the logits' scale;
# PyTorch: 3 images, 1e-3); a mismatch stops the run.
# The official-size architectures run on `vmoe init --seed 1` random weights (speed does
# not depend on training). Ends with the 10k Fashion-MNIST evaluation of the bundled models.
#
# Environment: VMOE (binary, default build/vmoe); VMOE_BASE (a second binary, e.g. one
# built from an older commit: its images/s are measured in each round too, as a "base"
# column); SECONDS_PER (timed seconds per measurement, default 3); ROUNDS (default 1);
# ROWS (which rows: "MODEL:B,B MODEL:B ...", MODEL a bundled name (data/models/MODEL.
# safetensors), an architecture for `vmoe init --arch`, or a .safetensors path; default
# the table's rows: vit-fmnist, vmoe-fmnist, softmoe-fmnist at 1,8,64,256, vmoe-s32 at 1,8,
# vmoe-b16 at 8, soft-s16 at 8; setting ROWS skips the 10k evaluation; the peers need a
# V-MoE's batch to be below or a multiple of its group_images); QUICK=1 (bundled models
# at batch 64 and 256 only, no evaluation); NO_ORT=1; NO_TORCH=1; ORT_SPIN (below);
# VMOE_NPM_CACHE (where onnxruntime-node is installed, default ~/.cache/vmoe-bench).
# A short run: ROWS="vit-fmnist:8" SECONDS_PER=1 scripts/bench_all.sh
#
# PyTorch runs with OMP_WAIT_POLICY=passive, as vmoe does (with spinning waits it was 2-3x
# slower on the shared machine), from Debian (python3-torch, installed here if missing) with OpenBLAS
# (libopenblas0-openmp, loaded through LD_LIBRARY_PATH so the system's default BLAS is
# left alone: with Debian's reference BLAS PyTorch is several times slower still).
# ONNX Runtime is the npm package pinned in scripts/ort/package-lock.json, installed with
# `npm ci --ignore-scripts` (its post-install step downloads GPU libraries from a host this
# machine cannot reach; the CPU binding ships in the package); the export needs
# python3-torch even with NO_TORCH=1. ORT's intra-op threads sleep when idle
# (session.intra_op.allow_spinning 0), as vmoe's and PyTorch's do: with ORT's default
# spinning pool it ran 2-4x slower beside other processes (vit-fmnist batch 8, load 8-10:
# 283-360 against 540-1403 images/s); ORT_SPIN=1 keeps ORT's default.
set -euo pipefail
cd "$(dirname "$0")/.."
vmoe=${VMOE:-build/vmoe}
base=${VMOE_BASE:-}
secs=${SECONDS_PER:-3}
py=/usr/bin/python3
openblas=/usr/lib/x86_64-linux-gnu/openblas-openmp

missing=()
if [ -z "${NO_TORCH:-}" ] || [ -z "${NO_ORT:-}" ]; then
  $py -c "import torch" 2>/dev/null || missing+=(python3-torch)
fi
if [ -z "${NO_TORCH:-}" ]; then
  [ -e "$openblas/libblas.so.3" ] || missing+=(libopenblas0-openmp)
fi
if [ -z "${NO_ORT:-}" ]; then
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
fi
. scripts/lib/apt.sh
apt_install bench_all ${missing[@]+"${missing[@]}"}

# onnxruntime-node, as pinned by scripts/ort/package-lock.json, in a cache folder outside
# the work tree (297 MB: the package carries every platform's binaries).
npm_cache=${VMOE_NPM_CACHE:-$HOME/.cache/vmoe-bench}
ort_version=""
if [ -z "${NO_ORT:-}" ]; then
  want=$($py -c "import json; print(json.load(open('scripts/ort/package.json'))['dependencies']['onnxruntime-node'])")
  have=$($py -c "import json,sys; print(json.load(open(sys.argv[1]))['version'])" \
    "$npm_cache/node_modules/onnxruntime-node/package.json" 2>/dev/null || true)
  if [ "$have" != "$want" ]; then
    echo "bench_all: installing onnxruntime-node $want into $npm_cache" >&2
    mkdir -p "$npm_cache"
    cp scripts/ort/package.json scripts/ort/package-lock.json "$npm_cache/"
    (cd "$npm_cache" && npm ci --ignore-scripts --no-audit --no-fund >&2)
  fi
  ort_version=$want
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
json() { $py -c "import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(d$1)"; }
# The memory target in MB: 2x the weights (the file's tensors) + one batch of activations,
# taken as one block's live buffers: per token x, h, qkv, attention output (6D), the MLP's
# hidden row (M) and a row of attention scores (H*T), plus for MoE layers each kept choice's
# expert input, hidden and output rows (k(2D + M); Soft-MoE: its slots).
bound_mb() {
  $py - "$1" "$2" <<'PY'
import json, struct, sys
path, B = sys.argv[1], int(sys.argv[2])
with open(path, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
cfg = json.loads(header.pop("__metadata__")["vmoe.config"])
weights = sum(end - begin for begin, end in (v["data_offsets"] for v in header.values()))
D, M, H = cfg["hidden_size"], cfg["mlp_dim"], cfg["num_heads"]
ph, pw = cfg["patch"]
T = (cfg["image"]["height"] // ph) * (cfg["image"]["width"] // pw) + (cfg.get("classifier", "token") == "token")
moe = cfg.get("moe") or {}
per_token = 6 * D + M + H * T
if moe.get("layers"):
    if moe.get("router", "top_k") == "soft":
        slots = moe.get("num_experts", 8) * moe.get("slots_per_expert", 1)
        per_token += 2 * slots + (slots * (2 * D + M) + T - 1) // T
    else:
        per_token += moe.get("k", 2) * (2 * D + M) + moe.get("num_experts", 8)
print((2 * weights + 4 * B * T * per_token) / 2**20)
PY
}

echo "# $(date -u '+%Y-%m-%d %H:%M UTC') $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"
# The process alone (144 shared libraries: OpenCV's image codecs bring GDAL, x265, ICU...)
# holds ~56 MB before any model is loaded; the memory target is compared with the peak
# RSS above that runtime baseline.
/usr/bin/time -f "%M" -o "$tmp/rss0" "$vmoe" --help >/dev/null
runtime_kb=$(tail -1 "$tmp/rss0")
echo "# runtime baseline (vmoe --help peak RSS): $((runtime_kb / 1024)) MB"
measure_ceiling() {
  "$vmoe" bench -m data/models/vit-fmnist.safetensors --batch 1 --seconds 0 --json | json "['matmul_ceiling']['gflops_per_s']"
}
echo "# matmul ceiling (one 3136x768x3072 matmul) at the start: $(printf %.1f "$(measure_ceiling)") GFLOP/s"

# The rows: MODEL:BATCHES, MODEL a bundled model's name, an architecture or a file.
if [ -n "${ROWS:-}" ]; then specs=$ROWS
elif [ -n "${QUICK:-}" ]; then specs="vit-fmnist:64,256 vmoe-fmnist:64,256 softmoe-fmnist:64,256"
else specs="vit-fmnist:1,8,64,256 vmoe-fmnist:1,8,64,256 softmoe-fmnist:1,8,64,256 vmoe-s32:1,8 vmoe-b16:8 soft-s16:8"
fi
model_file() {  # NAME -> a .safetensors path (vmoe init for an architecture name)
  if [ -f "data/models/$1.safetensors" ]; then echo "data/models/$1.safetensors"
  elif [ -f "$1" ]; then echo "$1"
  else "$vmoe" init --arch "$1" --seed 1 -o "$tmp/$1.safetensors" >/dev/null && echo "$tmp/$1.safetensors"
  fi
}
[ -n "$ort_version" ] && echo "# ONNX Runtime: onnxruntime-node $ort_version, CPU EP, 2 intra-op threads, graph optimisation all, spinning ${ORT_SPIN:-0}"
[ -z "${NO_TORCH:-}" ] && echo "# PyTorch: $($py -c 'import torch; print(torch.__version__)') (Debian python3-torch), OpenBLAS, 2 threads"

header="| model | batch | vmoe images/s |"
[ -n "$base" ] && header+=" base images/s |"
header+=" ORT images/s | vmoe/ORT | PyTorch images/s | vmoe/PyTorch | GFLOP/s | ceiling GFLOP/s | % of ceiling | vmoe peak RSS | above runtime | target: 2x weights + activations | ORT peak RSS | PyTorch peak RSS |"
rows=()
max() { $py -c "print(max($1, $2))"; }
for spec in $specs; do
  name=${spec%%:*}
  batches=${spec#*:}
  model=$(model_file "$name")
  name=$(basename "$model" .safetensors)
  onnx="$tmp/onnx.$name"
  if [ -z "${NO_ORT:-}" ]; then
    # one static-shape export per batch size, each checked against vmoe's logits
    $py scripts/ort/export_onnx.py -m "$model" --batch "$batches" -o "$onnx" --check "$vmoe" \
      >"$tmp/export.log" 2>&1 || { tail -5 "$tmp/export.log" >&2; echo "bench_all: ONNX export/check failed for $model" >&2; exit 1; }
  fi
  torch_check=(--check "$vmoe")  # the PyTorch check: before the model's first row
  for b in ${batches//,/ }; do
    base_ips=0 ceiling=0 ips=0 gflops=0 rss=0 o_ips=0 o_rss=0 t_ips=0 t_rss=0
    ort_check=(--check "$onnx/b$b.check.json")
    for _ in $(seq "${ROUNDS:-1}"); do
      ceiling=$(max "$ceiling" "$(measure_ceiling)")
      if [ -n "$base" ]; then
        base_ips=$(max "$base_ips" "$("$base" bench -m "$model" --batch "$b" --seconds "$secs" --no-ceiling --json | json "['images_per_s']")")
      fi
      /usr/bin/time -f "%M" -o "$tmp/rss" "$vmoe" bench -m "$model" --batch "$b" --seconds "$secs" --no-ceiling --json >"$tmp/v.json"
      ips=$(max "$ips" "$(json "['images_per_s']" <"$tmp/v.json")")
      gflops=$(max "$gflops" "$(json "['gflops_per_s']" <"$tmp/v.json")")
      rss=$(max "$rss" "$(tail -1 "$tmp/rss")")
      if [ -z "${NO_ORT:-}" ]; then
        /usr/bin/time -f "%M" -o "$tmp/rss" node scripts/ort/bench_ort.mjs --modules "$npm_cache" --model "$onnx/b$b.onnx" \
          --batch "$b" --seconds "$secs" --threads 2 --spin "${ORT_SPIN:-0}" ${ort_check[@]+"${ort_check[@]}"} >"$tmp/o.json" 2>"$tmp/o.err" ||
          { grep -v 'W:onnxruntime' "$tmp/o.err" >&2; echo "bench_all: ONNX Runtime failed on $name batch $b" >&2; exit 1; }
        ort_check=()
        o_ips=$(max "$o_ips" "$(json "['images_per_s']" <"$tmp/o.json")")
        o_rss=$(max "$o_rss" "$(tail -1 "$tmp/rss")")
      fi
      if [ -z "${NO_TORCH:-}" ]; then
        OMP_WAIT_POLICY=passive LD_LIBRARY_PATH=$openblas $py scripts/bench_vs_torch.py -m "$model" --batch "$b" \
          --seconds "$secs" --threads 2 ${torch_check[@]+"${torch_check[@]}"} >"$tmp/t.json"
        if [ ${#torch_check[@]} -gt 0 ]; then
          grep -q '"check": "ok"' "$tmp/t.json" || { echo "bench_all: PyTorch check failed for $model" >&2; exit 1; }
          torch_check=()
        fi
        t_ips=$(max "$t_ips" "$(json "['images_per_s']" <"$tmp/t.json")")
        t_rss=$(max "$t_rss" "$(json "['peak_rss_kb']" <"$tmp/t.json")")
      fi
    done
    row=$(printf "| %s | %d | %.1f |" "$name" "$b" "$ips")
    [ -n "$base" ] && row+=$(printf " %.1f |" "$base_ips")
    for peer in "$o_ips" "$t_ips"; do
      if [ "$peer" != 0 ]; then row+=$(printf " %.1f | %.2fx |" "$peer" "$($py -c "print($ips / $peer)")")
      else row+=" - | - |"; fi
    done
    row+=$(printf " %.1f | %.1f | %.0f%% | %.0f MB | %.0f MB | %.0f MB |" "$gflops" "$ceiling" "$($py -c "print(100 * $gflops / $ceiling)")" \
      "$($py -c "print($rss / 1024)")" "$($py -c "print(($rss - $runtime_kb) / 1024)")" "$(bound_mb "$model" "$b")")
    for kb in "$o_rss" "$t_rss"; do
      if [ "$kb" != 0 ]; then row+=$(printf " %.0f MB |" "$($py -c "print($kb / 1024)")"); else row+=" - |"; fi
    done
    rows+=("$row")
    echo "$row" >&2
  done
  rm -rf "$onnx"  # soft-s16's export is 3.7 GB
done
echo
echo "# load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$header"
echo "$header" | sed 's/[^|]*|/---|/g; s/^---|/|/'
printf '%s\n' "${rows[@]}"

[ -n "${QUICK:-}${ROWS:-}" ] && exit 0
echo
# "seconds" is the evaluation's own clock (dataset load to last batch); wall adds process
# start and model load.
echo "| model | eval of fashion-mnist:test (10k): seconds | wall | peak RSS |"
echo "|---|---|---|---|"
for m in vit vmoe softmoe; do
  /usr/bin/time -f "%e %M" -o "$tmp/t" "$vmoe" eval -m "data/models/$m-fmnist.safetensors" --data fashion-mnist:test \
    --format json >"$tmp/eval.json"
  read -r wall kb <"$tmp/t"
  printf "| %s-fmnist | %.2f s | %s s | %.0f MB |\n" "$m" "$(json "['seconds']" <"$tmp/eval.json")" "$wall" \
    "$($py -c "print($kb / 1024)")"
done
