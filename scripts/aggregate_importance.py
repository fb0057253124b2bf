#!/usr/bin/env python3
"""Aggregates importance_table.sh's rows: per (order, factor) over shards, the mean and a
95% confidence interval (Student t, n - 1 degrees of freedom) of top-1, importance kept
(tokens reaching an expert), importance kept with all choices, and the oracle order's
importance kept; numbers in percent. Orders are also compared with BPR max_gate on the
same shards (paired: per shard the difference, then its mean and 95% interval), which
removes the shards' own difficulty from the comparison.

Over seeds (--seeds): a replicate is a seed, not a shard. An order named X_sN (e.g.
fitted_s2, importance_table.sh's FITTED_SEEDS) is order X trained or fitted with seed N;
with several EVAL_CSVs, each file is one seed (e.g. one learned-scorer model per seed,
scripts/learned_scorer.sh) unless its orders carry their own _sN. Per seed the value is the
mean over its shards, and the paired difference with max_gate is the mean over shards of
(order - max_gate of the same file, same shard); then mean and 95% interval over seeds.
Orders with fewer than two seeds are left out of this table.

usage: aggregate_importance.py EVAL_CSV --out DIR [--markdown]
  writes DIR/summary.csv and prints it, or with --markdown the table docs/RESULTS.md shows
usage: aggregate_importance.py --seeds EVAL_CSV [EVAL_CSV...] --out DIR [--markdown]
  writes DIR/seeds.csv (intervals over seeds) and prints it, or its markdown table
"""
import argparse
import csv
import os
import re
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


def write_csv(path, header, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


def over_seeds(paths, out, markdown):
    per_seed = {}  # (order, factor) -> {seed: ([values per column], [paired differences per column])}
    for i, path in enumerate(paths):
        rows = list(csv.DictReader(open(path)))
        base = {(r["factor"], r["shard"]): r for r in rows if r["order"] == "max_gate"}
        for r in rows:
            m = re.fullmatch(r"(.+)_s(\d+)", r["order"])
            order, seed = (m.group(1), m.group(2)) if m else (r["order"], f"file{i}")
            values, diffs = per_seed.setdefault((order, r["factor"]), {}).setdefault(seed, ({}, {}))
            b = base.get((r["factor"], r["shard"]))
            for c in COLUMNS:
                values.setdefault(c, []).append(float(r[c]))
                if b is not None and r["order"] != "max_gate":
                    diffs.setdefault(c, []).append(float(r[c]) - float(b[c]))
    header = ["order", "factor", "seeds", "shards_per_seed"]
    header += [f"{c}_{s}" for c in COLUMNS for s in ("mean", "ci_low", "ci_high")]
    paired = ["top1", "importance_kept"]
    header += [f"{c}_vs_max_gate_{s}" for c in paired for s in ("mean", "ci_low", "ci_high")]
    rows = []
    for (order, factor), seeds in per_seed.items():
        if len(seeds) < 2:
            continue
        shards = sorted({len(v[0][COLUMNS[0]]) for v in seeds.values()})
        line = [order, factor, len(seeds), "/".join(map(str, shards))]
        for c in COLUMNS:
            line += [f"{100 * v:.2f}" for v in interval([statistics.fmean(v[0][c]) for v in seeds.values()])]
        for c in paired:
            d = [statistics.fmean(v[1][c]) for v in seeds.values() if v[1].get(c)]
            line += [f"{100 * v:.2f}" for v in interval(d)] if len(d) == len(seeds) else ["", "", ""]
        rows.append(line)
    rows.sort(key=lambda r: (-float(r[1]), r[0]))
    os.makedirs(out, exist_ok=True)
    write_csv(os.path.join(out, "seeds.csv"), header, rows)
    if markdown:
        print_markdown([dict(zip(header, r)) for r in rows], "seeds")
    else:
        csv.writer(sys.stdout).writerows([header] + rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("eval_csv", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--seeds", action="store_true", help="intervals over seeds (see above)")
    a = ap.parse_args()
    if a.seeds:
        return over_seeds(a.eval_csv, a.out, a.markdown)
    if len(a.eval_csv) != 1:
        ap.error("one EVAL_CSV without --seeds")
    a.eval_csv = a.eval_csv[0]
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
    write_csv(os.path.join(a.out, "summary.csv"), header, rows)
    if a.markdown:
        print_markdown([dict(zip(header, r)) for r in rows], "shards")
    else:
        csv.writer(sys.stdout).writerows([header] + rows)


NAMES = {"max_gate": "BPR max_gate", "sum_gates": "BPR sum_gates", "entropy": "BPR entropy", "random": "BPR random",
         "vanilla": "vanilla (token order)", "oracle": "BPR by importance (oracle)", "learned": "BPR learned",
         "fitted": "BPR fitted"}


def print_markdown(rows, replicates):
    def ci(r, c):
        if r[c + "_mean"] == "":
            return "—"
        if r[c + "_ci_low"] == "nan":
            return f'{r[c + "_mean"]} (one replicate)'
        return f'{r[c + "_mean"]} [{r[c + "_ci_low"]}, {r[c + "_ci_high"]}]'
    print(f"| factor | order | {replicates} | importance kept % | − max_gate, paired | all choices kept % | top-1 % | − max_gate, paired |")
    print("|---|---|---|---|---|---|---|---|")
    known = list(NAMES)
    for r in sorted(rows, key=lambda r: (-float(r["factor"]), known.index(r["order"]) if r["order"] in known else 99, r["order"])):
        print(f'| {r["factor"]} | {NAMES.get(r["order"], r["order"])} | {r.get("shards", r.get("seeds"))} | {ci(r, "importance_kept")} | '
              f'{ci(r, "importance_kept_vs_max_gate")} | {r["importance_kept_all_mean"]} | {ci(r, "top1")} | '
              f'{ci(r, "top1_vs_max_gate")} |')


if __name__ == "__main__":
    main()
