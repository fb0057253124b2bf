#!/usr/bin/env bash
# Resource limits (issue 24): images whose headers claim more pixels than the limit
# (a 100000 x 100000 PNG, a 65000 x 65000 JPEG "bomb", each a few hundred bytes) are
# refused before decoding with one line; an evaluation batch that cannot fit in memory
# fails at start with the estimate and the batch size that fits.
#   bash tests/cli/test_limits.sh VMOE_BINARY WORKDIR
set -uo pipefail
vmoe=$(realpath "${1:?usage: test_limits.sh VMOE_BINARY WORKDIR}")
work=${2:?usage: test_limits.sh VMOE_BINARY WORKDIR}
source_dir=${VMOE_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
source "$(dirname "$(realpath "$0")")/common/expect.sh"
rm -rf "$work"
mkdir -p "$work"
cd "$work" || exit 1
corpus="$source_dir/tests/fuzz/corpus/image"

expect 0 "a model" -- "$vmoe" init --arch vit-fmnist -o vit.safetensors
# bomb SOURCE OUT FORMAT: SOURCE with its header's width and height set to 100000 (PNG
# IHDR) or 65000 (JPEG SOF0, 16-bit fields), the rest unchanged.
bomb() {
  /usr/bin/python3 - "$@" <<'PY'
import struct, sys
src, dst, kind = sys.argv[1:4]
b = bytearray(open(src, 'rb').read())
if kind == 'png':
    b[16:24] = struct.pack('>II', 100000, 100000)
else:
    i = 2
    while b[i] == 0xFF and b[i + 1] not in (0xC0, 0xC1, 0xC2):
        i += 2 + struct.unpack('>H', b[i + 2:i + 4])[0]
    b[i + 5:i + 9] = struct.pack('>HH', 65000, 65000)
open(dst, 'wb').write(b)
PY
}
bomb "$corpus/grey.png" bomb.png png
bomb "$corpus/grey.jpg" bomb.jpg jpg
for f in bomb.png bomb.jpg; do
  expect 1 "$f" -- "$vmoe" classify "$f" -m vit.safetensors
  mentions "$f" "more than the limit"
  mentions "$f" "$f"
done

# vmoe-s32: 50 tokens of width 512 and 224 x 224 x 3 input, about 2.3 MiB an image, so
# 60000 Fashion-MNIST training images in one batch need about 140 GiB.
expect 0 "vmoe-s32" -- "$vmoe" init --arch vmoe-s32 -o s32.safetensors
if [ "$(awk '/^MemAvailable:/ {print int($2 / 1048576)}' /proc/meminfo)" -gt 130 ]; then
  echo "note: more than 130 GiB available: a batch of 60000 s32 images fits here, not tested"
else
expect 1 "a batch that cannot fit" -- "$vmoe" eval -m s32.safetensors --data fashion-mnist:train --batch 65536
mentions "a batch that cannot fit" "a batch of 60000 images needs about"
mentions "a batch that cannot fit" "lower the batch size (--batch"
fi
mkdir -p folder/0  # a class-per-folder set whose folder names s32's class 0 by index
cp "$source_dir/data/samples/fmnist_0_ankle-boot.png" "$source_dir/data/samples/coffee.png" folder/0/
expect 0 "a batch of 65536 over 2 images fits" -- "$vmoe" eval -m s32.safetensors --data folder --batch 65536

if [ "$failures" != 0 ]; then
  echo "$failures failure(s)"
  exit 1
fi
echo "all limit tests passed"
