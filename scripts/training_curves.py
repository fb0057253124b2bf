#!/usr/bin/python3
"""Print the Markdown curves table of data/models/README.md from `vmoe train --log` CSVs.

One column per CSV (named after the file), one row per epoch: test top-1 in percent,
then a row of training time (sum of the `seconds` column, evaluation excluded) and
the mean training images/s. Only Python's standard library.

  scripts/training_curves.py data/models/vit-fmnist.csv data/models/vmoe-fmnist.csv \
      data/models/softmoe-fmnist.csv
"""
import csv
import os
import sys


def read_log(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"training_curves: {path}: no epochs")
    for key in ("epoch", "test_accuracy", "seconds", "images_per_s"):
        if key not in rows[0]:
            sys.exit(f"training_curves: {path}: no column {key!r}")
    return rows


def main(paths):
    if not paths:
        sys.exit(__doc__)
    names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    logs = [read_log(p) for p in paths]
    epochs = max(len(log) for log in logs)
    print("| epoch | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for e in range(epochs):
        cells = []
        for log in logs:
            cells.append(f"{100 * float(log[e]['test_accuracy']):.2f}" if e < len(log) else "")
        print(f"| {e + 1} | " + " | ".join(cells) + " |")
    minutes = [sum(float(r["seconds"]) for r in log) / 60 for log in logs]
    print("| training minutes | " + " | ".join(f"{m:.0f}" for m in minutes) + " |")
    rates = [sum(float(r["images_per_s"]) for r in log) / len(log) for log in logs]
    print("| mean images/s | " + " | ".join(f"{r:.0f}" for r in rates) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
