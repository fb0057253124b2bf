#!/usr/bin/python3
"""Would keeping the garment help? A pixel oracle as the BPR scorer (issue 11, item 5).

Runs the numpy reference forward (tests/reference/vmoe_ref.py, independent of the C++
engine) of a top-k V-MoE on the Fashion-MNIST test split at one capacity factor and group
size, with the BPR processing order given by one of these scorers:

  max_gate     the model's router (what `vmoe eval` does; a cross-check of the engine)
  fg_first     pixel oracle: the CLS token first, then patches by their share of
               foreground pixels (> 10% of the value range, docs/ROUTING.md), descending;
               background patches (share 0) last, in token order
  bg_first     the opposite control: CLS first, background patches, then foreground
               patches by ascending share
  vanilla      token order (no priority)

and prints one CSV row per scorer: top-1, the share of foreground patches that kept at
least one choice per MoE layer (as `vmoe eval` reports foreground_kept_any), and per layer
the most that ANY processing order could keep (with overflow drop): a token can only go to
its own top-k experts, each taking at most c tokens per group, so the foreground patches
kept are a bipartite b-matching, whose maximum is, by max-flow min-cut,
    min over expert sets X of  c |X| + #(foreground patches with a choice outside X)
(2^E sets: enumerated).

  scripts/foreground_oracle.py -m MODEL [--capacity-factor 0.25] [--group-images 8]
                               [--limit N] [--scorers max_gate,fg_first,bg_first,vanilla]
                               [--overflow drop|next]

numpy only (float32); ~5-8 minutes per scorer for the 10k split on one core.
`scripts/foreground_oracle.py --selftest` checks the bound against brute force.
"""
import argparse
import gzip
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import vmoe_ref  # noqa: E402

FMNIST = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def patch_foreground_share(pixels, patch):
    """pixels (B, H, W) uint8 -> (B, patches) share of each patch's pixels >= 26 (the
    foreground rule: above 10% of the 0..255 range)."""
    b, h, w = pixels.shape
    ph, pw = patch
    fg = (pixels[:, :h // ph * ph, :w // pw * pw] >= 26).reshape(b, h // ph, ph, w // pw, pw)
    return fg.transpose(0, 1, 3, 2, 4).reshape(b, (h // ph) * (w // pw), ph * pw).mean(axis=2)


def best_order_bound(choices, is_fg, capacity, num_experts):
    """choices (S, k) expert ids, is_fg (S) bool -> the most foreground tokens any order
    can give at least one of their choices (see the module docstring)."""
    masks = np.zeros(len(choices), dtype=np.int64)
    for j in range(choices.shape[1]):
        masks |= np.int64(1) << choices[:, j].astype(np.int64)
    masks = masks[is_fg]
    subsets = np.arange(1 << num_experts, dtype=np.int64)
    outside = (masks[None, :] & ~subsets[:, None]) != 0  # (2^E, F): a choice outside X
    sizes = np.array([bin(x).count("1") for x in subsets])
    return int((capacity * sizes + outside.sum(axis=1)).min())


class OracleScores:
    """Feeds vmoe_ref.top_k_moe the oracle's per-token scores: top_k_moe routes the groups
    of a batch in order, layer after layer, so a cursor over the batch's tokens suffices."""

    def __init__(self):
        self.scores = None
        self.cursor = 0
        self.original = vmoe_ref.priority_scores

    def __call__(self, gates, k, priority, learned=None):
        if self.scores is None:
            return self.original(gates, k, priority, learned)
        s = gates.shape[0]
        out = self.scores[self.cursor:self.cursor + s]
        self.cursor = (self.cursor + s) % len(self.scores)
        return out


def selftest():
    """best_order_bound against brute force over every assignment on tiny random cases."""
    import itertools
    rng = np.random.default_rng(0)
    for _ in range(300):
        e, s, c = int(rng.integers(2, 5)), int(rng.integers(1, 7)), int(rng.integers(0, 3))
        choices = np.array([rng.choice(e, min(2, e), replace=False) for _ in range(s)])
        is_fg = rng.random(s) < 0.7
        best = 0
        for pick in itertools.product(*[[-1] + list(choices[t]) for t in np.nonzero(is_fg)[0]]):
            load = np.bincount([x for x in pick if x >= 0], minlength=e)
            if (load <= c).all():
                best = max(best, sum(x >= 0 for x in pick))
        got = best_order_bound(choices, is_fg, c, e)
        if got != best:
            sys.exit(f"selftest: bound {got} != brute force {best} for {choices.tolist()} {is_fg} c={c}")
    print("selftest ok")


def main():
    if sys.argv[1:] == ["--selftest"]:
        return selftest()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--capacity-factor", type=float, default=0.25)
    ap.add_argument("--group-images", type=int, default=8)
    ap.add_argument("--limit", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--scorers", default="max_gate,fg_first,bg_first,vanilla")
    ap.add_argument("--overflow", choices=["drop", "next"], default="drop")
    a = ap.parse_args()

    params, config = vmoe_ref.read_safetensors(a.model)
    cfg = vmoe_ref.fill_defaults(config)
    if not cfg.get("moe") or cfg["moe"]["router"] != "top_k":
        sys.exit("foreground_oracle: needs a top_k V-MoE model")
    patch = cfg["patch"]
    images = read_idx(f"{FMNIST}/t10k-images-idx3-ubyte.gz")[:a.limit]
    labels = read_idx(f"{FMNIST}/t10k-labels-idx1-ubyte.gz")[:a.limit]
    share = patch_foreground_share(images, patch)  # (N, P)
    has_cls = cfg["classifier"] == "token"
    oracle = OracleScores()
    vmoe_ref.priority_scores = oracle

    print("scorer,overflow,capacity_factor,group_images,images,top1,foreground_kept_any_per_layer,"
          "best_order_bound_per_layer")
    for scorer in a.scorers.split(","):
        correct, fg_total, fg_kept, fg_bound = 0, 0, None, None
        for start in range(0, len(images), a.batch):
            px = images[start:start + a.batch]
            fg = share[start:start + a.batch]
            if scorer == "fg_first":
                tok = fg
            elif scorer == "bg_first":
                tok = np.where(fg > 0, -fg, 0.0)
            else:
                tok = None
            if tok is not None:
                cls = np.full((len(px), 1), 2.0)
                oracle.scores = (np.concatenate([cls, tok], axis=1) if has_cls else tok).reshape(-1)
                oracle.cursor = 0
            else:
                oracle.scores = None
            x = vmoe_ref.image_input(config, [p[:, :, None] for p in px]).astype(np.float32)
            logits, trace = vmoe_ref.forward(params, config, x, capacity_factor=a.capacity_factor,
                                             routing="vanilla" if scorer == "vanilla" else "bpr",
                                             group_images=a.group_images, overflow=a.overflow,
                                             dtype=np.float32)
            correct += int((logits.argmax(axis=1) == labels[start:start + a.batch]).sum())
            is_fg = (fg > 0).reshape(-1)  # (B*P) patches of this batch
            fg_total += int(is_fg.sum())
            token_fg = np.concatenate([np.zeros((len(px), 1)), fg], axis=1) if has_cls else fg
            token_fg = token_fg.reshape(-1) > 0  # (B*T), the CLS token is not a patch
            kept, bound = [], []
            for layer in trace:
                t = layer["tokens_per_image"]
                any_kept = np.zeros(len(px) * t, dtype=bool)
                best = 0
                for g in layer["groups"]:
                    rows = slice(g["start"], g["start"] + g["size"])
                    any_kept[rows] = g["kept"].any(axis=1)
                    best += best_order_bound(g["experts"], token_fg[rows], g["capacity"], layer["num_experts"])
                patches = any_kept.reshape(len(px), t)[:, 1:] if has_cls else any_kept.reshape(len(px), t)
                kept.append(int((patches.reshape(-1) & is_fg).sum()))
                bound.append(best)
            fg_kept = kept if fg_kept is None else [x + y for x, y in zip(fg_kept, kept)]
            fg_bound = bound if fg_bound is None else [x + y for x, y in zip(fg_bound, bound)]
            print(f"# {scorer}: {start + len(px)} images", file=sys.stderr, flush=True)
        per_layer = ";".join(f"{k / fg_total:.4f}" for k in fg_kept)
        bounds = ";".join(f"{k / fg_total:.4f}" for k in fg_bound) if a.overflow == "drop" else ""
        print(f"{scorer},{a.overflow},{a.capacity_factor},{a.group_images},{len(images)},{correct / len(images):.4f},"
              f"{per_layer},{bounds}", flush=True)


if __name__ == "__main__":
    main()
