#!/usr/bin/python3
"""Write Fashion-MNIST test images as 28x28 greyscale PNG files.

Default (what data/samples/ holds): the first two test images of each class as
    data/samples/fmnist_<index>_<class-slug>.png      (index = position in the test split)

--layout folders writes a class-per-folder tree that `vmoe eval --data DIR` reads:
    DIR/<class-slug>/fmnist_<index>.png

Needs only Debian's python3 (gzip, zlib, struct); reads the IDX files of Debian's
dataset-fashion-mnist (/usr/share/datasets/fashion-mnist) or --data-dir.

  scripts/extract_samples.py                                   # data/samples/*.png
  scripts/extract_samples.py --per-class 30 --layout folders --out /tmp/fm30
"""
import argparse
import gzip
import os
import re
import struct
import sys
import zlib

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def slug(label):
    """Same rule as vmoe's label_slug: lower case, runs of non-alphanumerics -> '-'."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def open_idx(data_dir, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(data_dir, name)
        if os.path.isfile(path):
            return path, (gzip.open if name.endswith(".gz") else open)(path, "rb").read()
    sys.exit(f"extract_samples: {data_dir}: no {stem}(.gz) (install dataset-fashion-mnist or pass --data-dir)")


def read_split(data_dir, prefix):
    ipath, images = open_idx(data_dir, prefix + "-images-idx3-ubyte")
    lpath, labels = open_idx(data_dir, prefix + "-labels-idx1-ubyte")
    magic, n, rows, cols = struct.unpack(">IIII", images[:16])
    if magic != 2051 or len(images) != 16 + n * rows * cols:
        sys.exit(f"extract_samples: {ipath}: not a complete IDX image file")
    lmagic, ln = struct.unpack(">II", labels[:8])
    if lmagic != 2049 or ln != n or len(labels) != 8 + n:
        sys.exit(f"extract_samples: {lpath}: not a complete IDX label file matching {ipath}")
    return n, rows, cols, images[16:], labels[8:]


def png_grey(path, rows, cols, pixels):
    """An 8-bit greyscale PNG, written to a temporary name and renamed."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    raw = b"".join(b"\x00" + pixels[r * cols:(r + 1) * cols] for r in range(rows))
    png = (b"\x89PNG\r\n\x1a\n" +
           chunk(b"IHDR", struct.pack(">IIBBBBB", cols, rows, 8, 0, 0, 0, 0)) +
           chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(png)
    os.replace(tmp, path)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--split", choices=["test", "train"], default="test")
    ap.add_argument("--per-class", type=int, default=2, help="images per class (the first ones of the split)")
    ap.add_argument("--layout", choices=["samples", "folders"], default="samples")
    ap.add_argument("--out", default=os.path.join(here, "..", "data", "samples"))
    args = ap.parse_args()

    n, rows, cols, images, labels = read_split(args.data_dir, "t10k" if args.split == "test" else "train")
    taken = [0] * len(CLASSES)
    os.makedirs(args.out, exist_ok=True)
    written = 0
    for i in range(n):
        c = labels[i]
        if c >= len(CLASSES):
            sys.exit(f"extract_samples: label {c} of image {i} is not a Fashion-MNIST class")
        if taken[c] >= args.per_class:
            continue
        taken[c] += 1
        pixels = images[i * rows * cols:(i + 1) * rows * cols]
        if args.layout == "samples":
            path = os.path.join(args.out, f"fmnist_{i}_{slug(CLASSES[c])}.png")
        else:
            folder = os.path.join(args.out, slug(CLASSES[c]))
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"fmnist_{i}.png")
        png_grey(path, rows, cols, pixels)
        written += 1
        if all(t >= args.per_class for t in taken):
            break
    print(f"extract_samples: wrote {written} images to {os.path.normpath(args.out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
