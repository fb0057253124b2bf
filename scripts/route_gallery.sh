#!/bin/bash
# The routing pictures shown in the README / docs/ROUTE.md: `vmoe route` of one sample
# per bundled model into docs/images/ (or --out DIR).
#
#   scripts/route_gallery.sh [--out DIR] [--sample IMAGE] [--photo IMAGE] [MODEL...]
#
# Default models: data/models/{vmoe,softmoe,ec}-fmnist.safetensors (those that exist)
# with --sample (default: the first data/samples/fmnist_*ankle-boot*.png, else the
# first fmnist_*.png); models whose input is not 28x28 grey get --photo (default
# data/samples/chelsea.png). Pictures go to DIR/<model stem>/, with the route JSON next
# to them as route.json. vmoe is taken from $VMOE, else build/vmoe next to this script.
set -euo pipefail

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "route_gallery: $*" >&2; exit 1; }

root=$(cd "$(dirname "$0")/.." && pwd)
vmoe=${VMOE:-$root/build/vmoe}
out=$root/docs/images
sample=
photo=$root/data/samples/chelsea.png
models=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --out) out=${2:?}; shift 2 ;;
    --sample) sample=${2:?}; shift 2 ;;
    --photo) photo=${2:?}; shift 2 ;;
    -h|--help) usage ;;
    -*) usage ;;
    *) models+=("$1"); shift ;;
  esac
done
[[ -x $vmoe ]] || die "no vmoe binary at $vmoe (build first or set VMOE)"
if [[ ${#models[@]} -eq 0 ]]; then
  for m in vmoe-fmnist softmoe-fmnist ec-fmnist; do
    [[ -f $root/data/models/$m.safetensors ]] && models+=("$root/data/models/$m.safetensors")
  done
fi
[[ ${#models[@]} -gt 0 ]] || die "no models given and none bundled in data/models/"
if [[ -z $sample ]]; then
  sample=$(ls "$root"/data/samples/fmnist_*ankle-boot*.png 2>/dev/null | head -1 || true)
  [[ -n $sample ]] || sample=$(ls "$root"/data/samples/fmnist_*.png 2>/dev/null | head -1 || true)
fi

for model in "${models[@]}"; do
  name=$(basename "$model" .safetensors)
  size=$("$vmoe" info "$model" --json | /usr/bin/python3 -c \
    'import json,sys; print(*json.load(sys.stdin)["image"])' \
    2>/dev/null || echo "?")
  image=$photo
  [[ $size == "28 28 1" && -n $sample ]] && image=$sample
  [[ -f $image ]] || die "no sample image for $name ($image)"
  dir=$out/$name
  mkdir -p "$dir"
  echo "route_gallery: $name on $(basename "$image") -> $dir" >&2
  "$vmoe" route "$image" -m "$model" -o "$dir" --json >"$dir/route.json.tmp"
  mv "$dir/route.json.tmp" "$dir/route.json"
done
