#!/usr/bin/env python3
"""Aggregates importance_table.sh's rows: per (order, factor) over shards, the mean and a
95% confidence interval (Student t, n - 1 degrees of freedom) of top-1, importance kept
(tokens reaching an expert), importance kept with all choices, and the oracle order's
importance kept; numbers in percent. Orders are also compared with BPR max_gate on the
same shards (paired: per shard the difference, then its mean and 95% interval), which
removes the shards' own difficulty from the comparison.

usage: aggregate_importance.py EVAL_CSV --out DIR [--markdown]
  writes DIR/summary.csv and prints it, or with --markdown the table docs/RESULTS.md shows
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
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    groups = {}
    with open(a.eval_csv) as f:
        for row in csv.DictReader(f):
            groups.setdefault((row["order"], row["factor"]), []).append(row)
    header = ["order", "factor", "shards"] + [f"{c}_{s}" for c in COLUMNS for s in ("mean", "ci_low", "ci_high")]
    paired = ["top1", "importance_kept"]
    header += [f"{c}_vs_max_gate_{s}" for c in paired for s in ("mean", "ci_low", "ci_high")]
    rows = []
    for (order, factor), rs in groups.items():
        line = [order, factor, len(rs)]
        for c in COLUMNS:
            line += [f"{100 * v:.2f}" for v in interval([float(r[c]) for r in rs])]
        base = {r["shard"]: r for r in groups.get(("max_gate", factor), [])}
        both = [r for r in rs if r["shard"] in base]
        for c in paired:
            if order == "max_gate" or not both:
                line += ["", "", ""]
            else:
                line += [f"{100 * v:.2f}" for v in interval([float(r[c]) - float(base[r["shard"]][c]) for r in both])]
        rows.append(line)
    rows.sort(key=lambda r: (-float(r[1]), r[0]))
    os.makedirs(a.out, exist_ok=True)
    tmp = os.path.join(a.out, "summary.csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, os.path.join(a.out, "summary.csv"))
    if a.markdown:
        print_markdown([dict(zip(header, r)) for r in rows])
    else:
        csv.writer(sys.stdout).writerows([header] + rows)


NAMES = {"max_gate": "BPR max_gate", "sum_gates": "BPR sum_gates", "entropy": "BPR entropy", "random": "BPR random",
         "vanilla": "vanilla (token order)", "oracle": "BPR by importance (oracle)"}


def print_markdown(rows):
    def ci(r, c):
        if r[c + "_mean"] == "":
            return "—"
        if r[c + "_ci_low"] == "nan":
            return f'{r[c + "_mean"]} (one shard)'
        return f'{r[c + "_mean"]} [{r[c + "_ci_low"]}, {r[c + "_ci_high"]}]'
    print("| factor | order | shards | importance kept % | − max_gate, paired | all choices kept % | top-1 % | − max_gate, paired |")
    print("|---|---|---|---|---|---|---|---|")
    known = list(NAMES)
    for r in sorted(rows, key=lambda r: (-float(r["factor"]), known.index(r["order"]) if r["order"] in known else 99, r["order"])):
        print(f'| {r["factor"]} | {NAMES.get(r["order"], r["order"])} | {r["shards"]} | {ci(r, "importance_kept")} | '
              f'{ci(r, "importance_kept_vs_max_gate")} | {r["importance_kept_all_mean"]} | {ci(r, "top1")} | '
              f'{ci(r, "top1_vs_max_gate")} |')


if __name__ == "__main__":
    main()
