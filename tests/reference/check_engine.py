#!/usr/bin/python3
"""Check the vmoe engine against the numpy reference (vmoe_ref.py).

  check_engine.py --vmoe build/apps/vmoe/vmoe [--tmp DIR] [--with-route] [--only NAME]

It first runs the reference's own selftest (hand-worked routing cases). Then, for each
variant it writes a small random model and test images, runs
`vmoe classify IMG... -m MODEL --json [--capacity-factor C] [--routing R] [--group-images G]
[--priority P] [--overflow O]`
and compares, per image: logits (1e-3 absolute), top-1 index and probability, and the
capacity of every MoE layer. With group_images 1 it also classifies every image on its
own and checks the logits equal the batch ones (1e-5). With --with-route it runs
`vmoe route IMG -m MODEL --json -o DIR [--capacity-factor C] [--routing R] [--priority P]
[--overflow O]` (--no-pictures instead of -o DIR after a variant's first run) and compares capacity, chosen experts, kept flags and the priority rank
exactly, the scorer / gating / overflow names, gates, choice weights, priority scores and
soft dispatch/combine within 1e-4.

Exit status: 0 all passed, 1 a mismatch (each one is printed), 2 bad usage / no binary.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.dont_write_bytecode = True  # keep __pycache__ out of the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmoe_ref as ref  # noqa: E402

LOGIT_TOL = 1e-3
BATCH_TOL = 1e-5
ROUTE_TOL = 1e-4

# name, make_config() arguments, model seed, number of images, runs (CLI overrides).
VARIANTS = [
    ("dense-token", dict(router="dense", classifier="token"), 11, 3, [{}]),
    ("topk-token", dict(router="top_k", classifier="token", moe_layers=(0, 2), num_experts=8),
     12, 4, [{},  # config defaults: cf 1.05, BPR
             {"capacity_factor": 1.05, "routing": "bpr"},
             {"capacity_factor": 0.25, "routing": "bpr"},
             {"capacity_factor": 1.05, "routing": "vanilla"},
             {"capacity_factor": 0.25, "routing": "vanilla"}]),
    ("topk-gap-group2", dict(router="top_k", classifier="gap", moe_layers=(1,), num_experts=4,
                             hidden_size=48, num_heads=4),
     13, 5, [{"group_images": 2},
             {"group_images": 2, "capacity_factor": 0.25, "routing": "vanilla"},
             {"group_images": 1, "capacity_factor": 0.25}]),
    ("experts-choice", dict(router="experts_choice", classifier="token", moe_layers=(1,),
                            num_experts=4, hidden_size=48, num_heads=3),
     14, 4, [{}, {"capacity_factor": 0.5}]),
    ("soft-slots2", dict(router="soft", classifier="gap", moe_layers=(0, 2), num_experts=4,
                         slots_per_expert=2), 15, 4, [{}]),
    ("rgb-repr", dict(router="top_k", classifier="token", channels=3, representation_size=16,
                      patch=(7, 7), value_range=(0, 1), moe_layers=(1,), num_experts=4,
                      hidden_size=48, num_heads=4, num_layers=2),
     16, 4, [{}, {"capacity_factor": 0.25}]),
    # issue 11: the top-k routing variants. BPR scorers and overflow by command-line flag
    # on one model; gating, the learned scorer, dropless and eval_capacity_factor from
    # configs (the learned scorer's model also routes with topk_softmax and overflow next).
    ("topk-scorers-overflow", dict(router="top_k", classifier="token", moe_layers=(0, 2),
                                   num_experts=8),
     21, 3, [{"capacity_factor": 0.25, "priority": "sum_gates"},
             {"capacity_factor": 0.5, "priority": "entropy"},
             {"capacity_factor": 0.5, "overflow": "next"},
             {"capacity_factor": 0.25, "overflow": "next", "routing": "vanilla"},
             {"capacity_factor": 0.5, "overflow": "next", "priority": "random",
              "group_images": 2}]),
    ("topk-learned-softmax-next", dict(router="top_k", classifier="gap", moe_layers=(0, 2),
                                       num_experts=4, priority="learned", gating="topk_softmax",
                                       overflow="next", capacity_factor=0.5),
     22, 3, [{}, {"capacity_factor": 0.25, "overflow": "drop", "routing": "vanilla"},
             {"capacity_factor": 0.25, "priority": "max_gate"}]),
    ("topk-dropless", dict(router="top_k", classifier="token", moe_layers=(1,), num_experts=4,
                           capacity_factor=None),
     24, 3, [{}, {"capacity_factor": 0.25}]),
    ("topk-eval-cf", dict(router="top_k", classifier="gap", moe_layers=(1,), num_experts=8,
                          capacity_factor=None, eval_capacity_factor=0.25),
     25, 3, [{}]),
    # issue 11: shared experts with a separate expert_mlp_dim (top-k and Soft-MoE), and the
    # balance bias (choices by logits + bias), also under topk_softmax and overflow next.
    ("topk-shared-narrow", dict(router="top_k", classifier="token", moe_layers=(0, 2), num_experts=4,
                                num_shared_experts=2, expert_mlp_dim=24),
     17, 3, [{}, {"capacity_factor": 0.25}]),
    ("topk-balance-bias", dict(router="top_k", classifier="gap", moe_layers=(1,), num_experts=8,
                               balance="bias", gating="topk_softmax"),
     18, 3, [{}, {"capacity_factor": 0.5, "routing": "vanilla", "overflow": "next"}]),
    ("soft-shared", dict(router="soft", classifier="gap", moe_layers=(1,), num_experts=4,
                         num_shared_experts=1, expert_mlp_dim=48), 19, 3, [{}]),
]


class Mismatch(Exception):
    pass


def cli_flags(run):
    flags = []
    if run.get("capacity_factor") is not None:
        flags += ["--capacity-factor", repr(run["capacity_factor"])]
    if run.get("routing"):
        flags += ["--routing", run["routing"]]
    if run.get("group_images") is not None:
        flags += ["--group-images", str(run["group_images"])]
    if run.get("priority"):
        flags += ["--priority", run["priority"]]
    if run.get("overflow"):
        flags += ["--overflow", run["overflow"]]
    return flags


def run_json(cmd):
    """Run the engine, return its parsed stdout; Mismatch on failure."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise Mismatch(f"timed out: {' '.join(cmd)}")
    if proc.returncode != 0:
        raise Mismatch(f"exit {proc.returncode}: {' '.join(cmd)}\n    stderr: {proc.stderr.strip()}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as err:
        raise Mismatch(f"stdout is not JSON ({err}): {' '.join(cmd)}\n    {proc.stdout[:300]!r}")


def max_diff(a, b, what):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise Mismatch(f"{what}: shape {a.shape} != reference {b.shape}")
    return float(np.abs(a - b).max()) if a.size else 0.0


def check_classify(engine_json, files, ref_logits, ref_moe, labels, where):
    """Compare one classify --json output with the reference; returns max logit diff."""
    results = engine_json.get("results")
    if not isinstance(results, list) or len(results) != len(files):
        raise Mismatch(f"{where}: expected {len(files)} results, got {results!r:.200}")
    worst = 0.0
    for i, (res, path) in enumerate(zip(results, files)):
        tag = f"{where} {os.path.basename(path)}"
        if os.path.basename(str(res.get("image", ""))) != os.path.basename(path):
            raise Mismatch(f"{tag}: result {i} is for image {res.get('image')!r}")
        d = max_diff(res["logits"], ref_logits[i], f"{tag} logits")
        worst = max(worst, d)
        if not d <= LOGIT_TOL:  # also catches NaN
            raise Mismatch(f"{tag}: logits differ by {d:.3g} > {LOGIT_TOL}\n"
                           f"    engine    {np.round(res['logits'], 5).tolist()}\n"
                           f"    reference {np.round(ref_logits[i], 5).tolist()}")
        probs = ref.softmax(np.asarray(ref_logits[i], dtype=np.float64))
        top = res["top"][0]
        if top["index"] != int(np.argmax(probs)) or top["label"] != labels[top["index"]] \
                or abs(top["prob"] - probs.max()) > 1e-4:
            raise Mismatch(f"{tag}: top {top} but reference index {int(np.argmax(probs))} "
                           f"prob {probs.max():.6f}")
        moe = res.get("moe", [])
        if [m["layer"] for m in moe] != [m["layer"] for m in ref_moe[i]]:
            raise Mismatch(f"{tag}: moe layers {[m['layer'] for m in moe]} != "
                           f"{[m['layer'] for m in ref_moe[i]]}")
        for m, r in zip(moe, ref_moe[i]):
            if r["capacity"] is not None and m["capacity"] != r["capacity"]:
                raise Mismatch(f"{tag}: layer {r['layer']} capacity {m['capacity']} != "
                               f"reference {r['capacity']}")
            if not 0.0 <= m["dropped"] <= 1.0:
                raise Mismatch(f"{tag}: layer {r['layer']} dropped {m['dropped']} not in [0, 1]")
    return worst


def dropped_note(engine_json, ref_moe):
    """'dropped' is not defined precisely by DESIGN §5: say which reading the engine uses."""
    readings = set()
    for res, rm in zip(engine_json["results"], ref_moe):
        for m, r in zip(res.get("moe", []), rm):
            choices = abs(m["dropped"] - r["dropped"]) <= 1e-4
            tokens = abs(m["dropped"] - r["dropped_tokens"]) <= 1e-4
            if choices or tokens:
                readings.add("choices" if not tokens else "tokens" if not choices else "either")
            else:
                readings.add(f"other ({m['dropped']} vs choices {r['dropped']:.4f} / "
                             f"tokens {r['dropped_tokens']:.4f})")
    return ", ".join(sorted(readings))


def check_route(vmoe, model, path, params, config, run, out_dir, where, pictures=True):
    """Compare `vmoe route --json` for one image with the reference trace (pictures False:
    --no-pictures, which skips drawing and the capacity strip's extra forwards)."""
    flags = []
    if config["moe"]["router"] == "top_k":
        flags = cli_flags({k: v for k, v in run.items() if k != "group_images"})
    elif run.get("capacity_factor") is not None:
        flags = ["--capacity-factor", repr(run["capacity_factor"])]
    output = ["-o", out_dir] if pictures else ["--no-pictures"]
    got = run_json([vmoe, "route", path, "-m", model, "--json"] + output + flags)
    x = ref.image_input(config, [ref.read_pnm(path)])
    _, trace = ref.forward(params, config, x, **{**run, "group_images": 1})
    gh, gw, _, has_cls = ref.geometry(ref.fill_defaults(config))
    if list(got.get("grid", [])) != [gh, gw] or got.get("cls") != has_cls:
        raise Mismatch(f"{where}: grid/cls {got.get('grid')}/{got.get('cls')} != {[gh, gw]}/{has_cls}")
    expected = ref.image_route_json(trace, 0)
    layers = got.get("layers", [])
    if [g["layer"] for g in layers] != [e["layer"] for e in expected]:
        raise Mismatch(f"{where}: route layers {[g['layer'] for g in layers]} != "
                       f"{[e['layer'] for e in expected]}")
    for g, e in zip(layers, expected):
        tag = f"{where} layer {e['layer']}"
        if e["capacity"] is not None and g["capacity"] != e["capacity"]:
            raise Mismatch(f"{tag}: capacity {g['capacity']} != reference {e['capacity']}")
        if e["router"] == "soft":
            for key in ("dispatch", "combine"):
                d = max_diff(g[key], e[key], f"{tag} {key}")
                if not d <= ROUTE_TOL:
                    raise Mismatch(f"{tag}: soft {key} differs by {d:.3g} > {ROUTE_TOL}")
            continue
        d = max_diff(g["gates"], e["gates"], f"{tag} gates")
        if not d <= ROUTE_TOL:
            raise Mismatch(f"{tag}: gates differ by {d:.3g} > {ROUTE_TOL}")
        if e["router"] == "top_k":
            check_route_top_k(g, e, tag)
        for t, (gc, ec) in enumerate(zip(g["choices"], e["choices"])):
            if e["router"] == "top_k":
                same = [(c["expert"], c["kept"]) for c in gc] == [(c["expert"], c["kept"]) for c in ec]
            else:  # experts-choice: compare the set of experts that took the token
                same = {c["expert"] for c in gc if c["kept"]} == {c["expert"] for c in ec if c["kept"]}
            if not same:
                raise Mismatch(f"{tag} token {t}: choices {gc} != reference {ec}")
        if len(g["choices"]) != len(e["choices"]):
            raise Mismatch(f"{tag}: {len(g['choices'])} tokens in choices, expected {len(e['choices'])}")
    check_route_foreground(got, ref.read_pnm(path), config, expected, where)


def check_route_top_k(got, expected, tag):
    """The top-k routing variants in one route layer: names, choice weights, BPR scores/rank."""
    for key in ("priority", "gating", "overflow"):
        if got.get(key) != expected[key]:
            raise Mismatch(f"{tag}: {key} {got.get(key)!r} != reference {expected[key]!r}")
    if (got.get("capacity_factor", 0) is None) != expected["dropless"]:
        raise Mismatch(f"{tag}: capacity_factor {got.get('capacity_factor')!r} but reference "
                       f"dropless is {expected['dropless']}")
    weights = [[c["gate"] for c in row] for row in got["choices"]]
    d = max_diff(weights, [[c["gate"] for c in row] for row in expected["choices"]],
                 f"{tag} choice gates")
    if not d <= ROUTE_TOL:
        raise Mismatch(f"{tag}: choice gates ({expected['gating']}) differ by {d:.3g} > {ROUTE_TOL}")
    d = max_diff(got.get("priority_score", []), expected["priority_score"], f"{tag} priority_score")
    if not d <= ROUTE_TOL:
        raise Mismatch(f"{tag}: priority_score ({expected['priority']}) differs by {d:.3g} > {ROUTE_TOL}")
    if got.get("priority_rank") != expected["priority_rank"]:
        raise Mismatch(f"{tag}: priority_rank {got.get('priority_rank')} != reference "
                       f"{expected['priority_rank']}")


def check_route_foreground(got, pixels, config, expected, where):
    """Issue 11: a patch is foreground when one of its bytes (any channel) is > 25.5 (10% of
    0..255); the CLS token never is. Kept shares follow from the reference's kept flags."""
    cfg = ref.fill_defaults(config)
    gh, gw, _, has_cls = ref.geometry(cfg)
    ph, pw = cfg["patch"]
    fg = [False] * int(has_cls) + [bool((pixels[y * ph:(y + 1) * ph, x * pw:(x + 1) * pw] > 25.5).any())
                                   for y in range(gh) for x in range(gw)]
    if got.get("foreground") != fg:
        raise Mismatch(f"{where}: foreground {got.get('foreground')} != reference {fg}")
    n = sum(fg)
    for g, e in zip(got["layers"], expected):
        if e["router"] == "soft":
            want_all = want_any = n
        else:
            need_all = e["k"] if e["router"] == "top_k" else cfg["moe"]["k"]
            taken = [sum(c["kept"] for c in row) for row in e["choices"]]
            want_all = sum(1 for t, f in enumerate(fg) if f and taken[t] >= need_all)
            want_any = sum(1 for t, f in enumerate(fg) if f and taken[t] >= 1)
        want = (want_all / n, want_any / n) if n else (1.0, 1.0)
        have = (g.get("foreground_kept_all"), g.get("foreground_kept_any"))
        if g.get("foreground_tokens") != n or any(h is None or abs(h - w) > 1e-12 for h, w in zip(have, want)):
            raise Mismatch(f"{where} layer {e['layer']}: foreground {g.get('foreground_tokens')} kept {have} "
                           f"!= reference {n} kept {want}")


def check_variant(vmoe, tmp, name, config_args, seed, num_images, runs, with_route):
    config = ref.make_config(**config_args)
    settings = [{**r} for r in runs]
    params, images = ref.make_case(config, seed, num_images, settings=settings)
    case_dir = os.path.join(tmp, name)
    model, files = ref.write_case(case_dir, params, config, images)
    x = ref.image_input(config, images)
    labels = config["labels"]
    lines, alone_checked = [], False
    for run_index, run in enumerate(runs):
        label = " ".join(cli_flags(run)) or "(config defaults)"
        where = f"{name} {label}"
        logits, trace = ref.forward(params, config, x, **run)
        ref_moe = [ref.image_moe_summary(trace, i) for i in range(len(files))]
        got = run_json([vmoe, "classify", *files, "-m", model, "--json"] + cli_flags(run))
        worst = check_classify(got, files, logits, ref_moe, labels, where)
        caps = sorted({m["capacity"] for rm in ref_moe for m in rm if m["capacity"] is not None})
        info = f"max|dlogit| {worst:.2e}  capacities {caps}"
        if ref_moe[0]:
            info += f"  dropped reading: {dropped_note(got, ref_moe)}"
        group = ref.effective_moe(ref.fill_defaults(config), **run)["group_images"]
        if group == 1 and not alone_checked:
            alone_checked = True
            alone_worst = 0.0
            for i, path in enumerate(files):
                single = run_json([vmoe, "classify", path, "-m", model, "--json"] + cli_flags(run))
                check_classify(single, [path], logits[i:i + 1], ref_moe[i:i + 1], labels,
                               where + " alone")
                d = max_diff(single["results"][0]["logits"], got["results"][i]["logits"],
                             f"{where} alone vs batch")
                alone_worst = max(alone_worst, d)
                if not d <= BATCH_TOL:
                    raise Mismatch(f"{where} {os.path.basename(path)}: alone vs in a batch of "
                                   f"{len(files)} differ by {d:.3g} > {BATCH_TOL}")
            info += f"  alone-vs-batch {alone_worst:.1e}"
        if with_route and trace:
            route_dir = os.path.join(case_dir, "route")
            os.makedirs(route_dir, exist_ok=True)
            for path in files[:2]:
                # Pictures (and their capacity strip) for the first run of a variant only:
                # they are not compared, and drawing costs more than the routing.
                check_route(vmoe, model, path, params, config, run, route_dir,
                            f"{where} route {os.path.basename(path)}", pictures=run_index == 0)
            info += "  route ok"
        lines.append(f"  {label:<48} {info}")
    return lines


def main():
    ap = argparse.ArgumentParser(description="Compare the vmoe engine with the numpy reference.")
    ap.add_argument("--vmoe", required=True, help="path to the vmoe binary")
    ap.add_argument("--tmp", help="work directory (kept); default: a temporary one, removed")
    ap.add_argument("--with-route", action="store_true", help="also check `vmoe route --json`")
    ap.add_argument("--only", action="append", help="run only this variant (repeatable)")
    args = ap.parse_args()

    vmoe = os.path.abspath(args.vmoe)
    if not (os.path.isfile(vmoe) and os.access(vmoe, os.X_OK)):
        print(f"check_engine: {args.vmoe}: not an executable file", file=sys.stderr)
        return 2
    names = [v[0] for v in VARIANTS]
    for only in args.only or []:
        if only not in names:
            print(f"check_engine: unknown variant {only!r} (have {', '.join(names)})", file=sys.stderr)
            return 2
    tmp = args.tmp or tempfile.mkdtemp(prefix="vmoe_check_")
    os.makedirs(tmp, exist_ok=True)

    start, failures = time.time(), []
    try:
        ref.selftest()
    except AssertionError as err:
        failures.append("selftest")
        print(f"FAIL reference selftest: {err}")
    for name, config_args, seed, num_images, runs in VARIANTS:
        if args.only and name not in args.only:
            continue
        try:
            lines = check_variant(vmoe, tmp, name, config_args, seed, num_images, runs,
                                  args.with_route)
            print(f"PASS {name}")
            print("\n".join(lines))
        except Mismatch as err:
            failures.append(name)
            print(f"FAIL {name}: {err}")
        except (KeyError, TypeError, IndexError, ValueError) as err:
            failures.append(name)
            print(f"FAIL {name}: engine JSON does not have the DESIGN §5 shape "
                  f"({type(err).__name__}: {err})")
        sys.stdout.flush()
    if not args.tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'FAILED: ' + ', '.join(failures) if failures else 'all variants passed'} "
          f"({time.time() - start:.1f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
