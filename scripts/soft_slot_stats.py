#!/usr/bin/python3
"""How Soft-MoE layers mix tokens, from `vmoe route --json` output of one or more images.

Per Soft-MoE layer, averaged over the images given:
  tokens/slot   exp(entropy) of each slot's dispatch weights: how many of the image's
                tokens a slot effectively mixes (1 = one token, T = uniform over all T)
  slots/token   exp(entropy) of each token's combine weights over the slots
  max dispatch  the largest single dispatch weight of a slot, averaged over slots
  slot overlap  mean cosine similarity between the dispatch columns of two different
                slots (1 = all slots take the same mix, i.e. they are redundant)

  for f in data/samples/fmnist_*.png; do vmoe route "$f" -m MODEL --json >"/tmp/$(basename "$f").json"; done
  scripts/soft_slot_stats.py /tmp/*.json

Standard library only.
"""
import json
import math
import sys


def entropy_exp(weights):
    total = sum(weights)
    h = 0.0
    for w in weights:
        p = w / total
        if p > 0:
            h -= p * math.log(p)
    return math.exp(h)


def layer_stats(layer):
    dispatch, combine = layer["dispatch"], layer["combine"]  # tokens x slots
    tokens, slots = len(dispatch), len(dispatch[0])
    columns = [[dispatch[t][s] for t in range(tokens)] for s in range(slots)]
    norms = [math.sqrt(sum(v * v for v in c)) for c in columns]
    overlap, pairs = 0.0, 0
    for a in range(slots):
        for b in range(a + 1, slots):
            overlap += sum(x * y for x, y in zip(columns[a], columns[b])) / (norms[a] * norms[b])
            pairs += 1
    return {
        "tokens/slot": sum(entropy_exp(c) for c in columns) / slots,
        "slots/token": sum(entropy_exp(row) for row in combine) / tokens,
        "max dispatch": sum(max(c) for c in columns) / slots,
        "slot overlap": overlap / max(pairs, 1),
        "tokens": tokens,
    }


def main(paths):
    if not paths:
        sys.exit(__doc__)
    per_layer = {}
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        images = doc["images"] if "images" in doc else [doc]
        for image in images:
            for layer in image["layers"]:
                if layer.get("router") != "soft" or not layer.get("dispatch"):
                    continue
                per_layer.setdefault(layer["layer"], []).append(layer_stats(layer))
    if not per_layer:
        sys.exit("soft_slot_stats: no Soft-MoE layer with dispatch/combine weights in the input")
    keys = ["tokens/slot", "slots/token", "max dispatch", "slot overlap"]
    print("| block | images | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 2) + "|")
    for layer, stats in sorted(per_layer.items()):
        means = [sum(s[k] for s in stats) / len(stats) for k in keys]
        print(f"| {layer} | {len(stats)} | " + " | ".join(f"{m:.3f}" for m in means) + f" |  (of {stats[0]['tokens']} tokens)")


if __name__ == "__main__":
    main(sys.argv[1:])
