#!/usr/bin/env python3
"""Aggregates importance_table.sh's rows: per (order, factor) over shards, the mean and a
95% confidence interval (Student t, n - 1 degrees of freedom) of top-1, importance kept
(tokens reaching an expert), importance kept with all choices, and the oracle order's
importance kept; numbers in percent.

usage: aggregate_importance.py EVAL_CSV --out DIR   (writes DIR/summary.csv, prints it)
"""
import argparse
import csv
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from aggregate_seeds import t_quantile  # noqa: E402

COLUMNS = ["top1", "importance_kept", "importance_kept_all", "importance_kept_oracle"]


def interval(values):
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, float("nan"), float("nan")
    half = t_quantile(0.975, n - 1) * statistics.stdev(values) / n ** 0.5
    return mean, mean - half, mean + half


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("eval_csv")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    groups = {}
    with open(a.eval_csv) as f:
        for row in csv.DictReader(f):
            groups.setdefault((row["order"], row["factor"]), []).append(row)
    header = ["order", "factor", "shards"] + [f"{c}_{s}" for c in COLUMNS for s in ("mean", "ci_low", "ci_high")]
    rows = []
    for (order, factor), rs in groups.items():
        line = [order, factor, len(rs)]
        for c in COLUMNS:
            line += [f"{100 * v:.2f}" for v in interval([float(r[c]) for r in rs])]
        rows.append(line)
    rows.sort(key=lambda r: (-float(r[1]), r[0]))
    os.makedirs(a.out, exist_ok=True)
    tmp = os.path.join(a.out, "summary.csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, os.path.join(a.out, "summary.csv"))
    csv.writer(sys.stdout).writerows([header] + rows)


if __name__ == "__main__":
    main()
