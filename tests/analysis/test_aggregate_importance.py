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
        seeds_mode(tmp)
    print("ok")


def seeds_mode(tmp):
    """--seeds: fitted_s1..3 in one file (paired with that file's max_gate), and one learned
    model per file (two files = two seeds, each paired with its own file's max_gate)."""
    one = os.path.join(tmp, "fitted.csv")
    with open(one, "w") as f:
        f.write("order,factor,shard,top1,importance_kept,importance_kept_all,importance_kept_oracle\n")
        for s, kept in enumerate([0.60, 0.62]):
            f.write(f"max_gate,0.25,{s},0.9,{kept},0.0,0.98\n")
        # per seed, the mean over the two shards: 0.64, 0.66, 0.71 -> mean 67, std 3.606,
        # CI 67 +- 4.303 * 3.606 / sqrt(3) = +- 8.957; paired: mean - 0.61 = +6 [-2.957, 14.957]
        for seed, kepts in [(1, (0.63, 0.65)), (2, (0.66, 0.66)), (3, (0.70, 0.72))]:
            for s, kept in enumerate(kepts):
                f.write(f"fitted_s{seed},0.25,{s},0.9,{kept},0.0,0.98\n")
    out = subprocess.run([sys.executable, SCRIPT, "--seeds", one, "--out", tmp], check=True, capture_output=True,
                         text=True)
    rows = {r["order"]: r for r in csv.DictReader(open(os.path.join(tmp, "seeds.csv")))}
    assert set(rows) == {"fitted"}, out.stdout  # max_gate is one seed here: left out
    r = rows["fitted"]
    assert r["seeds"] == "3" and r["shards_per_seed"] == "2" and r["importance_kept_mean"] == "67.00", r
    assert abs(float(r["importance_kept_ci_low"]) - (67 - 8.957)) < 0.01, r
    assert r["importance_kept_vs_max_gate_mean"] == "6.00", r
    assert abs(float(r["importance_kept_vs_max_gate_ci_high"]) - (6 + 8.957)) < 0.01, r
    files = []
    for seed, (mg, learned) in enumerate([(0.60, 0.70), (0.64, 0.70)]):
        path = os.path.join(tmp, f"learned-s{seed}.csv")
        with open(path, "w") as f:
            f.write("order,factor,shard,top1,importance_kept,importance_kept_all,importance_kept_oracle\n")
            f.write(f"max_gate,0.1,0,0.5,{mg},0.0,0.9\nlearned,0.1,0,0.5,{learned},0.0,0.9\n")
        files.append(path)
    subprocess.run([sys.executable, SCRIPT, "--seeds", *files, "--out", tmp], check=True, capture_output=True)
    rows = {r["order"]: r for r in csv.DictReader(open(os.path.join(tmp, "seeds.csv")))}
    # learned 70, 70: no spread; paired differences 10 and 6: mean 8, CI 8 +- 12.706 * 2.828 / sqrt(2) = +- 25.41
    assert rows["learned"]["importance_kept_mean"] == "70.00" and rows["learned"]["seeds"] == "2", rows
    assert rows["learned"]["importance_kept_vs_max_gate_mean"] == "8.00", rows
    assert abs(float(rows["learned"]["importance_kept_vs_max_gate_ci_low"]) - (8 - 25.41)) < 0.02, rows
    assert rows["max_gate"]["importance_kept_mean"] == "62.00" and rows["max_gate"]["importance_kept_vs_max_gate_mean"] == ""


if __name__ == "__main__":
    main()
