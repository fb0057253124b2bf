#!/usr/bin/env python3
"""scripts/aggregate_importance.py on a fake four-shard result with known means and intervals."""
import csv
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "..", "scripts", "aggregate_importance.py")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        evals = os.path.join(tmp, "eval.csv")
        with open(evals, "w") as f:
            f.write("order,factor,shard,top1,importance_kept,importance_kept_all,importance_kept_oracle\n")
            # max_gate at 0.25: kept 0.60, 0.62, 0.64, 0.66 -> mean 63, std 2.582,
            # CI 63 +- 3.182 * 2.582 / 2 = +- 4.108 (percent)
            for s, kept in enumerate([0.60, 0.62, 0.64, 0.66]):
                f.write(f"max_gate,0.25,{s},0.9,{kept},0.0,0.98\n")
            f.write("oracle,0.25,0,0.93,0.98,0.01,0.98\n")  # one shard: no interval
            # vanilla: paired with max_gate shard by shard, kept 0.50, 0.53, 0.54, 0.59 ->
            # differences -10, -9, -10, -7: mean -9, std 1.414, CI -9 +- 3.182 * 1.414 / 2 = +-2.250
            for s, kept in enumerate([0.50, 0.53, 0.54, 0.59]):
                f.write(f"vanilla,0.25,{s},0.9,{kept},0.0,0.98\n")
        out = subprocess.run([sys.executable, SCRIPT, evals, "--out", tmp], check=True, capture_output=True, text=True)
        assert "max_gate" in out.stdout, out.stdout
        rows = {r["order"]: r for r in csv.DictReader(open(os.path.join(tmp, "summary.csv")))}
        m = rows["max_gate"]
        assert m["shards"] == "4" and m["importance_kept_mean"] == "63.00", m
        assert abs(float(m["importance_kept_ci_low"]) - (63 - 4.108)) < 0.01, m
        assert abs(float(m["importance_kept_ci_high"]) - (63 + 4.108)) < 0.01, m
        assert m["top1_ci_low"] == m["top1_ci_high"] == "90.00", m  # no spread
        assert rows["oracle"]["importance_kept_ci_low"] == "nan", rows["oracle"]
        v = rows["vanilla"]
        assert v["importance_kept_vs_max_gate_mean"] == "-9.00", v
        assert abs(float(v["importance_kept_vs_max_gate_ci_low"]) - (-9 - 2.250)) < 0.01, v
        assert m["importance_kept_vs_max_gate_mean"] == "", m  # not compared with itself
    print("ok")


if __name__ == "__main__":
    main()
