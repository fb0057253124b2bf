#!/usr/bin/env python3
"""Aggregates seeds.sh's evaluations: per arm and setting the mean, sample standard
deviation and 95% confidence interval of top-1 over seeds, and for the comparisons issue 22
asks about the difference of means with its 95% interval (Welch), called "no difference
measured" when the interval contains 0.

usage: aggregate_seeds.py EVAL_CSV --out DIR [--plot|--no-plot]
  EVAL_CSV: rows `arm,seed,setting,<vmoe eval --format csv columns>` (top1 in [0, 1]).
  Writes DIR/summary.csv (arm,setting,n,mean,std,ci_low,ci_high, top-1 in percent),
  DIR/comparisons.csv and, with gnuplot, DIR/seeds.png (means with 95% error bars).

The t quantiles come from the Student t distribution itself (its density integrated
numerically, then bisection), so fractional Welch degrees of freedom need no table.
"""
import argparse
import csv
import math
import os
import shutil
import subprocess
import sys
import tempfile


def t_cdf(x, df):
    """P(T <= x) for Student's t with df > 0 degrees of freedom (Simpson's rule on the density)."""
    if x == 0:
        return 0.5
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def pdf(t):
        return c * (1 + t * t / df) ** (-(df + 1) / 2)

    a, b = 0.0, abs(x)
    n = 2000  # even
    h = (b - a) / n
    s = pdf(a) + pdf(b) + sum((4 if i % 2 else 2) * pdf(a + i * h) for i in range(1, n))
    half = s * h / 3
    return 0.5 + half if x > 0 else 0.5 - half


def t_quantile(p, df):
    """x with P(T <= x) = p, for p in (0.5, 1)."""
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(80):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def summarise(values):
    """n, mean, sample std, and the 95% interval (mean +- t * std / sqrt(n)); n = 1 has no interval."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return n, mean, float("nan"), float("nan"), float("nan")
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.975, n - 1) * std / math.sqrt(n)
    return n, mean, std, mean - half, mean + half


def welch(a, b):
    """Difference of means a - b and its 95% interval (Welch-Satterthwaite degrees of freedom)."""
    na, ma, sa, _, _ = summarise(a)
    nb, mb, sb, _, _ = summarise(b)
    diff = ma - mb
    if na < 2 or nb < 2:
        return diff, float("nan"), float("nan")
    va, vb = sa * sa / na, sb * sb / nb
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va * va / (na - 1) + vb * vb / (nb - 1))
    half = t_quantile(0.975, df) * se
    return diff, diff - half, diff + half


def verdict(label_a, label_b, low, high):
    if math.isnan(low):
        return "too few seeds"
    if low > 0:
        return f"{label_a} ahead"
    if high < 0:
        return f"{label_b} ahead"
    return "no difference measured"


# (name, arm A, setting A, arm B, setting B): A - B. Settings "all" for arms without drops.
COMPARISONS = [
    ("V-MoE vs dense at factor 1.0", "vmoe", "1.0", "dense", "all"),
    ("V-MoE vs dense at factor 0.5", "vmoe", "0.5", "dense", "all"),
    ("V-MoE vs dense at factor 0.25", "vmoe", "0.25", "dense", "all"),
    ("Soft-MoE vs V-MoE (factor 1.0)", "soft", "all", "vmoe", "1.0"),
    ("Soft-MoE vs dense", "soft", "all", "dense", "all"),
    ("experts-choice vs V-MoE at factor 1.0", "ec", "1.0", "vmoe", "1.0"),
    ("BPR vs vanilla at factor 0.5", "vmoe", "0.5", "vmoe_vanilla", "0.5"),
    ("BPR vs vanilla at factor 0.25", "vmoe", "0.25", "vmoe_vanilla", "0.25"),
    ("upcycled (softmax gates) vs dense continued", "up_softmax", "1.0", "dense_cont", "all"),
    ("upcycled (top-k renormalised) vs dense continued", "up_topk", "1.0", "dense_cont", "all"),
    ("upcycled: top-k renormalised vs softmax gates", "up_topk", "1.0", "up_softmax", "1.0"),
]


def read_rows(path):
    groups = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            key = (row["arm"], row["setting"])
            groups.setdefault(key, {})[row["seed"]] = 100.0 * float(row["top1"])
    return groups


def write_atomic(path, text):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=os.path.basename(path) + ".tmp.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def fmt(x):
    return "" if math.isnan(x) else f"{x:.3f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("evals")
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-plot", action="store_true")
    a = ap.parse_args()
    if not os.path.isfile(a.evals):
        sys.exit(f"aggregate_seeds: {a.evals}: no such file")
    groups = read_rows(a.evals)
    os.makedirs(a.out, exist_ok=True)

    lines = ["arm,setting,n,mean,std,ci_low,ci_high"]
    stats = {}
    for (arm, setting), by_seed in sorted(groups.items()):
        n, mean, std, low, high = summarise(list(by_seed.values()))
        stats[(arm, setting)] = (n, mean, std, low, high)
        lines.append(f"{arm},{setting},{n},{mean:.3f},{fmt(std)},{fmt(low)},{fmt(high)}")
    write_atomic(os.path.join(a.out, "summary.csv"), "\n".join(lines) + "\n")

    lines = ["comparison,a,b,n_a,n_b,difference,ci_low,ci_high,verdict"]
    for name, arm_a, set_a, arm_b, set_b in COMPARISONS:
        va, vb = groups.get((arm_a, set_a)), groups.get((arm_b, set_b))
        if not va or not vb:
            continue
        diff, low, high = welch(list(va.values()), list(vb.values()))
        label_a, label_b = f"{arm_a}@{set_a}", f"{arm_b}@{set_b}"
        lines.append(f"{name},{label_a},{label_b},{len(va)},{len(vb)},{diff:.3f},{fmt(low)},{fmt(high)},"
                     f"{verdict(label_a, label_b, low, high)}")
    write_atomic(os.path.join(a.out, "comparisons.csv"), "\n".join(lines) + "\n")

    for line in open(os.path.join(a.out, "summary.csv")):
        print(line.rstrip())
    print()
    for line in open(os.path.join(a.out, "comparisons.csv")):
        print(line.rstrip())

    if a.no_plot or not shutil.which("gnuplot"):
        return
    # One bar group per setting, arms side by side: mean with its 95% interval.
    data = os.path.join(a.out, "seeds.dat")
    rows = [(arm, setting, s) for (arm, setting), s in sorted(stats.items(), key=lambda kv: (kv[0][1], kv[0][0]))]
    with open(data, "w") as f:
        for i, (arm, setting, (n, mean, std, low, high)) in enumerate(rows):
            lo = low if not math.isnan(low) else mean
            hi = high if not math.isnan(high) else mean
            f.write(f'{i} "{arm}@{setting} (n={n})" {mean:.3f} {lo:.3f} {hi:.3f}\n')
    png = os.path.join(a.out, "seeds.png")
    script = f"""
set terminal pngcairo size 1100,520 font ",10"
set output "{png}.tmp"
set ylabel "test top-1 (%), mean and 95% interval over seeds"
set xtics rotate by -40 noenhanced
set grid ytics
set key off
set title "Fashion-MNIST test, 10k images, groups of 8" noenhanced
plot "{data}" using 1:3:4:5:xticlabels(2) with yerrorbars pt 7 lw 2
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    os.replace(png + ".tmp", png)


if __name__ == "__main__":
    main()
