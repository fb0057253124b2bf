#!/usr/bin/env python3
"""scripts/aggregate_seeds.py on a tiny fake results set with known mean, std and interval."""
import csv
import math
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "..", "scripts", "aggregate_seeds.py")
sys.path.insert(0, os.path.dirname(SCRIPT))
import aggregate_seeds as agg  # noqa: E402


def close(a, b, tol):
    return abs(a - b) <= tol


def main():
    # t quantiles against the printed tables (two-sided 95%).
    for df, want in [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)]:
        got = agg.t_quantile(0.975, df)
        assert close(got, want, 2e-3), (df, got, want)

    with tempfile.TemporaryDirectory() as tmp:
        evals = os.path.join(tmp, "eval.csv")
        with open(evals, "w") as f:
            f.write("arm,seed,setting,model,top1\n")
            # dense: 90, 91, 92 -> mean 91, std 1, CI 91 +- 4.303/sqrt(3) = +-2.484
            for seed, top1 in [(1, 0.90), (2, 0.91), (3, 0.92)]:
                f.write(f"dense,{seed},all,m,{top1}\n")
            # vmoe at 1.0: 95, 95.5, 96 -> clearly ahead of dense; at 0.5 equal to dense
            for seed, top1 in [(1, 0.95), (2, 0.955), (3, 0.96)]:
                f.write(f"vmoe,{seed},1.0,m,{top1}\n")
            for seed, top1 in [(1, 0.91), (2, 0.90), (3, 0.92)]:
                f.write(f"vmoe,{seed},0.5,m,{top1}\n")
        out = os.path.join(tmp, "out")
        subprocess.run([sys.executable, SCRIPT, evals, "--out", out, "--no-plot"], check=True, capture_output=True)
        rows = {(r["arm"], r["setting"]): r for r in csv.DictReader(open(os.path.join(out, "summary.csv")))}
        d = rows[("dense", "all")]
        assert int(d["n"]) == 3
        assert close(float(d["mean"]), 91.0, 1e-3), d
        assert close(float(d["std"]), 1.0, 1e-3), d
        half = 4.303 / math.sqrt(3)
        assert close(float(d["ci_low"]), 91.0 - half, 2e-3) and close(float(d["ci_high"]), 91.0 + half, 2e-3), d

        comps = {r["comparison"]: r for r in csv.DictReader(open(os.path.join(out, "comparisons.csv")))}
        ahead = comps["V-MoE vs dense at factor 1.0"]
        assert close(float(ahead["difference"]), 4.5, 1e-3), ahead
        assert ahead["verdict"] == "vmoe@1.0 ahead", ahead
        # Welch with equal n and std 0.5 vs 1: se = sqrt(0.25/3 + 1/3), df = 0.4167^2 / (0.0833^2/2 + 0.3333^2/2)
        se = math.sqrt(0.25 / 3 + 1 / 3)
        df = (0.25 / 3 + 1 / 3) ** 2 / ((0.25 / 3) ** 2 / 2 + (1 / 3) ** 2 / 2)
        want_half = agg.t_quantile(0.975, df) * se
        assert close(float(ahead["ci_high"]) - float(ahead["difference"]), want_half, 2e-3), ahead
        same = comps["V-MoE vs dense at factor 0.5"]
        assert close(float(same["difference"]), 0.0, 1e-3) and same["verdict"] == "no difference measured", same
        # Comparisons whose arms are missing are left out, not invented.
        assert "Soft-MoE vs dense" not in comps
    print("aggregate_seeds: t quantiles, mean/std/CI and Welch verdicts as computed by hand")


if __name__ == "__main__":
    main()
