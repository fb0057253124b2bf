#!/usr/bin/python3
"""Independent numpy reference implementation of vmoe (docs: DESIGN.md §2-§5).

This file shares no code with the C++ engine. The test suite uses it to generate
small random models, test images and expected outputs, and check_engine.py compares
the engine against it.

  vmoe_ref.py make --router top_k --classifier token --seed 1 --out DIR
  vmoe_ref.py selftest

The maths is done in float64 (params are stored as float32); the engine works in
float32, so logits agree to ~1e-5 and the tests use 1e-3.

Decisions where DESIGN.md is silent are marked "DECISION:" below.
"""

import argparse
import copy
import json
import math
import os
import struct
import sys

import numpy as np

FASHION_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

# Gate differences below this are "near ties": float32 rounding in the engine could
# flip the routing decision, so test inputs with such ties are regenerated.
NEAR_TIE = 1e-5

# ---------------------------------------------------------------------------
# Config (§3)
# ---------------------------------------------------------------------------

IMAGE_DEFAULTS = {"resize": "none", "resize_small": 256, "value_range": [-1, 1]}
MOE_DEFAULTS = {"layers": [], "router": "top_k", "num_experts": 8, "k": 2,
                "capacity_factor": 1.05, "capacity_rounding": "ceil",
                "capacity_multiple_of": 4, "batch_priority": True,
                "group_images": 1, "noise_std": 1.0, "slots_per_expert": 1,
                "priority": "max_gate", "gating": "softmax_topk", "overflow": "drop",
                "eval_capacity_factor": None,
                "num_shared_experts": 0, "expert_mlp_dim": None, "balance": "aux"}
# The top-k routing variants of issue 11 (amendment keys), with their allowed values.
PRIORITIES = ("max_gate", "sum_gates", "entropy", "random", "learned")
GATINGS = ("softmax_topk", "topk_softmax")
OVERFLOWS = ("drop", "next")


def make_config(router="top_k", classifier="token", channels=1, representation_size=None,
                height=28, width=28, patch=(4, 4), hidden_size=32, num_layers=3,
                num_heads=2, mlp_dim=64, moe_layers=(1,), num_experts=8, k=2,
                capacity_factor=1.05, batch_priority=True, group_images=1,
                slots_per_expert=1, value_range=(-1, 1), priority="max_gate",
                gating="softmax_topk", overflow="drop", eval_capacity_factor=None,
                num_shared_experts=0, expert_mlp_dim=None, balance="aux"):
    """A complete vmoe.config dict (only keys listed in §3, plus the amendment's top-k
    routing keys priority / gating / overflow / eval_capacity_factor and the MoE keys
    num_shared_experts / expert_mlp_dim / balance when they are not the default;
    capacity_factor None is written as null = dropless).

    DECISION: a dense model (router "dense" here) is written with "moe.layers": []
    and otherwise default routing fields, so it parses like any other config.
    """
    if router == "dense":
        router, moe_layers = "top_k", ()
    routing = {}
    for key, value, default in (("priority", priority, "max_gate"),
                                ("gating", gating, "softmax_topk"),
                                ("overflow", overflow, "drop"),
                                ("eval_capacity_factor", eval_capacity_factor, None),
                                ("num_shared_experts", num_shared_experts, 0),
                                ("expert_mlp_dim", expert_mlp_dim, None),
                                ("balance", balance, "aux")):
        if value != default:
            routing[key] = value
    return {
        "format": "vmoe", "version": 1,
        "image": {"height": height, "width": width, "channels": channels,
                  "resize": "none", "resize_small": 256,
                  "value_range": list(value_range)},
        "patch": list(patch), "hidden_size": hidden_size, "num_layers": num_layers,
        "num_heads": num_heads, "mlp_dim": mlp_dim, "classifier": classifier,
        "representation_size": representation_size, "layer_norm_eps": 1e-6,
        "labels": list(FASHION_LABELS),
        "moe": {"layers": list(moe_layers), "router": router,
                "num_experts": num_experts, "k": k,
                "capacity_factor": capacity_factor, "capacity_rounding": "ceil",
                "capacity_multiple_of": 4, "batch_priority": batch_priority,
                "group_images": group_images, "noise_std": 1.0,
                "slots_per_expert": slots_per_expert, **routing},
    }


def fill_defaults(config):
    """Copy of config with the optional keys of §3 filled in."""
    cfg = copy.deepcopy(config)
    cfg["image"] = {**IMAGE_DEFAULTS, **cfg["image"]}
    cfg.setdefault("classifier", "token")
    cfg.setdefault("representation_size", None)
    cfg.setdefault("layer_norm_eps", 1e-6)
    cfg.setdefault("gelu", "tanh")
    cfg["moe"] = {**MOE_DEFAULTS, **(cfg.get("moe") or {})}
    return cfg


def effective_moe(cfg, capacity_factor=None, routing=None, group_images=None, priority=None,
                  overflow=None):
    """The routing settings of inference after command-line style overrides.

    capacity_factor None in the result means dropless (every expert has room for its
    whole group). eval_capacity_factor, when the config has one, replaces the training
    capacity_factor (dropless or not); --capacity-factor replaces both.
    """
    moe = dict(cfg["moe"])
    for key, allowed in (("priority", PRIORITIES), ("gating", GATINGS), ("overflow", OVERFLOWS)):
        if moe[key] not in allowed:
            raise ValueError(f"moe.{key} must be one of {', '.join(allowed)}, not {moe[key]!r}")
    if moe["eval_capacity_factor"] is not None:
        moe["capacity_factor"] = float(moe["eval_capacity_factor"])
    if capacity_factor is not None:
        moe["capacity_factor"] = float(capacity_factor)
    if priority is not None:
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, not {priority!r}")
        if priority == "learned" and cfg["moe"]["priority"] != "learned":
            raise ValueError("priority learned needs a model with a learned scorer")
        moe["priority"] = priority
    if overflow is not None:
        if overflow not in OVERFLOWS:
            raise ValueError(f"overflow must be one of {', '.join(OVERFLOWS)}, not {overflow!r}")
        moe["overflow"] = overflow
    if moe["router"] != "top_k" and (moe["priority"] != "max_gate" or moe["overflow"] != "drop"
                                     or moe["gating"] != "softmax_topk"
                                     or moe["capacity_factor"] is None):
        raise ValueError("priority, gating, overflow and dropless apply to the top_k router only")
    if routing is not None:
        if routing not in ("bpr", "vanilla"):
            raise ValueError(f"routing must be bpr or vanilla, not {routing!r}")
        moe["batch_priority"] = routing == "bpr"
    if group_images is not None:
        moe["group_images"] = int(group_images)
    if moe["group_images"] < 1:
        raise ValueError("group_images must be >= 1")
    return moe


def geometry(cfg):
    """(grid_h, grid_w, tokens_per_image, has_cls)."""
    ph, pw = cfg["patch"]
    gh, gw = cfg["image"]["height"] // ph, cfg["image"]["width"] // pw
    has_cls = cfg["classifier"] == "token"
    return gh, gw, gh * gw + int(has_cls), has_cls


# ---------------------------------------------------------------------------
# safetensors (§2), written and read by hand
# ---------------------------------------------------------------------------

def write_safetensors(path, tensors, config):
    """u64 LE header length N | N bytes JSON header (space padded to 8) | raw F32 LE data.

    Written to a temporary name and renamed.
    """
    header = {"__metadata__": {"vmoe.config": json.dumps(config)}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(np.shape(tensors[name])),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)


def read_safetensors(path):
    """Returns (tensors: dict name -> float32 array, config: dict)."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise ValueError(f"{path}: header length {n} exceeds file size")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    config = json.loads(header.pop("__metadata__")["vmoe.config"])
    tensors = {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            raise ValueError(f"{path}: {name}: dtype {info['dtype']} is not F32")
        begin, end = info["data_offsets"]
        count = int(np.prod(info["shape"], dtype=np.int64))
        if not (0 <= begin <= end <= len(data)) or end - begin != 4 * count:
            raise ValueError(f"{path}: {name}: bad data_offsets {info['data_offsets']}")
        tensors[name] = np.frombuffer(data[begin:end], dtype="<f4").reshape(info["shape"]).copy()
    return tensors, config


# ---------------------------------------------------------------------------
# Parameters (§2)
# ---------------------------------------------------------------------------

def param_shapes(config):
    """Ordered dict name -> shape, exactly the table of §2."""
    cfg = fill_defaults(config)
    ph, pw = cfg["patch"]
    c, d, m = cfg["image"]["channels"], cfg["hidden_size"], cfg["mlp_dim"]
    h = cfg["num_heads"]
    dh = d // h
    _, _, t, has_cls = geometry(cfg)
    moe = cfg["moe"]
    e, p = moe["num_experts"], moe["slots_per_expert"]
    me, sh = moe["expert_mlp_dim"] or m, moe["num_shared_experts"]  # experts' hidden size, shared count

    shapes = {"embedding/kernel": (ph, pw, c, d), "embedding/bias": (d,)}
    if has_cls:
        shapes["cls"] = (1, 1, d)
    shapes["Encoder/posembed_input/pos_embedding"] = (1, t, d)
    for i in range(cfg["num_layers"]):
        b = f"Encoder/encoderblock_{i}/"
        shapes[b + "LayerNorm_0/scale"] = (d,)
        shapes[b + "LayerNorm_0/bias"] = (d,)
        for qkv in ("query", "key", "value"):
            shapes[b + f"SelfAttention/{qkv}/kernel"] = (d, h, dh)
            shapes[b + f"SelfAttention/{qkv}/bias"] = (h, dh)
        shapes[b + "SelfAttention/out/kernel"] = (h, dh, d)
        shapes[b + "SelfAttention/out/bias"] = (d,)
        shapes[b + "LayerNorm_1/scale"] = (d,)
        shapes[b + "LayerNorm_1/bias"] = (d,)
        if i in moe["layers"]:
            shapes[b + "Moe/Mlp/Dense_0/kernel"] = (e, d, me)
            shapes[b + "Moe/Mlp/Dense_0/bias"] = (e, me)
            shapes[b + "Moe/Mlp/Dense_1/kernel"] = (e, me, d)
            shapes[b + "Moe/Mlp/Dense_1/bias"] = (e, d)
            if sh:
                shapes[b + "Moe/Shared/Dense_0/kernel"] = (sh, d, me)
                shapes[b + "Moe/Shared/Dense_0/bias"] = (sh, me)
                shapes[b + "Moe/Shared/Dense_1/kernel"] = (sh, me, d)
                shapes[b + "Moe/Shared/Dense_1/bias"] = (sh, d)
            if moe["router"] == "soft":
                shapes[b + "Moe/Router/mu"] = (d, e, p)
                shapes[b + "Moe/Router/scale"] = ()
            else:
                shapes[b + "Moe/Router/dense/kernel"] = (d, e)
            if moe["priority"] == "learned":  # the block's learned BPR scorer s = h . kernel + bias
                shapes[b + "Moe/Priority/kernel"] = (d,)
                shapes[b + "Moe/Priority/bias"] = ()
            if moe["balance"] == "bias":
                shapes[b + "Moe/Router/balance_bias"] = (e,)
        else:
            shapes[b + "Mlp/Dense_0/kernel"] = (d, m)
            shapes[b + "Mlp/Dense_0/bias"] = (m,)
            shapes[b + "Mlp/Dense_1/kernel"] = (m, d)
            shapes[b + "Mlp/Dense_1/bias"] = (d,)
    shapes["Encoder/encoder_norm/scale"] = (d,)
    shapes["Encoder/encoder_norm/bias"] = (d,)
    r = cfg["representation_size"]
    if r:
        shapes["pre_logits/kernel"] = (d, r)
        shapes["pre_logits/bias"] = (r,)
    shapes["head/kernel"] = (r or d, len(cfg["labels"]))
    shapes["head/bias"] = (len(cfg["labels"]),)
    return shapes


def _fan_in(name, shape):
    if "/SelfAttention/" in name and name.endswith(("query/kernel", "key/kernel", "value/kernel")):
        return shape[0]                       # (D, H, Dh): contracts over D
    if "/Moe/Mlp/" in name or "/Moe/Shared/" in name:
        return int(np.prod(shape[1:-1]))      # (E, in, out)
    return int(np.prod(shape[:-1]))           # (..., out)


def random_model(config, seed):
    """Random float32 parameters with the names/shapes of §2.

    kernels ~ N(0, 1/fan_in); router kernel std 3/sqrt(D) so gates are peaked;
    LayerNorm scale ~ 1 + 0.1 N; biases ~ 0.05 N; cls/pos ~ 0.2 N;
    Soft-MoE mu ~ N(0, 1) (normalised anyway) and scale = 2 sqrt(D), so that the
    cosine logits (~ +-1/sqrt(D) for random vectors) give peaked dispatch weights;
    learned scorer kernel ~ N(0, 1/D), so s is of order 1 and 2 sigmoid(s) spreads over
    about (0.5, 1.5) instead of saturating; balance bias ~ 1.5 N, of the logits' order,
    so it changes many top-k choices.
    """
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith("Router/scale"):
            value = np.array(2.0 * math.sqrt(config["hidden_size"]))
        elif name.endswith("Router/mu"):
            value = rng.standard_normal(shape)
        elif name.endswith("Router/balance_bias"):
            value = 1.5 * rng.standard_normal(shape)
        elif name.endswith("Router/dense/kernel"):
            value = rng.standard_normal(shape) * 3.0 / math.sqrt(shape[0])
        elif name.endswith("Priority/kernel"):
            value = rng.standard_normal(shape) / math.sqrt(shape[0])
        elif name.endswith("kernel"):
            value = rng.standard_normal(shape) / math.sqrt(_fan_in(name, shape))
        elif "LayerNorm" in name or "encoder_norm" in name:
            value = (1.0 + 0.1 * rng.standard_normal(shape)) if name.endswith("scale") \
                else 0.05 * rng.standard_normal(shape)
        elif name in ("cls", "Encoder/posembed_input/pos_embedding"):
            value = 0.2 * rng.standard_normal(shape)
        else:  # biases
            value = 0.05 * rng.standard_normal(shape)
        params[name] = np.asarray(value, dtype=np.float32)
    return params


# ---------------------------------------------------------------------------
# Images (PGM / PPM written by hand)
# ---------------------------------------------------------------------------

def random_image(rng, height, width, channels):
    """uint8 (H, W, C): a smooth random pattern plus noise, no flat areas."""
    coarse = rng.uniform(0, 255, size=(height // 4 + 2, width // 4 + 2, channels))
    ys = np.linspace(0, coarse.shape[0] - 1.001, height)
    xs = np.linspace(0, coarse.shape[1] - 1.001, width)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    smooth = (coarse[y0][:, x0] * (1 - fy) * (1 - fx) + coarse[y0 + 1][:, x0] * fy * (1 - fx)
              + coarse[y0][:, x0 + 1] * (1 - fy) * fx + coarse[y0 + 1][:, x0 + 1] * fy * fx)
    noisy = smooth + rng.normal(0, 25, size=smooth.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def write_pnm(path, pixels):
    """Binary PGM (P5, 1 channel) or PPM (P6, RGB) from uint8 (H, W, C)."""
    h, w, c = pixels.shape
    magic = {1: b"P5", 3: b"P6"}[c]
    with open(path, "wb") as f:
        f.write(magic + b"\n%d %d\n255\n" % (w, h))
        f.write(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())


def read_pnm(path):
    """uint8 (H, W, C) from a binary PGM/PPM as written by write_pnm (no comments)."""
    with open(path, "rb") as f:
        raw = f.read()
    fields, pos = [], 0
    while len(fields) < 4:
        while raw[pos:pos + 1].isspace():
            pos += 1
        start = pos
        while not raw[pos:pos + 1].isspace():
            pos += 1
        fields.append(raw[start:pos])
    pos += 1
    c = {b"P5": 1, b"P6": 3}[fields[0]]
    w, h = int(fields[1]), int(fields[2])
    return np.frombuffer(raw[pos:pos + w * h * c], dtype=np.uint8).reshape(h, w, c)


def to_value_range(pixels, value_range):
    """Map 0..255 linearly onto [lo, hi]: v = lo + (hi - lo) * p / 255."""
    lo, hi = value_range
    return lo + (hi - lo) * (np.asarray(pixels, dtype=np.float64) / 255.0)


# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------

# y = x @ W + b   (contracting the last axis of x with the first axis of W)
def dense(x, kernel, bias):
    return np.tensordot(x, kernel, axes=([-1], [0])) + bias


# LN(x) = (x - mean) / sqrt(var + eps) * scale + bias, biased variance over the last axis
def layer_norm(x, scale, bias, eps):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


# gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


# gelu(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))   (the exact form; config "gelu": "erf")
_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu_erf(x):
    return 0.5 * x * (1.0 + _erf(np.asarray(x, dtype=np.float64) / math.sqrt(2.0)))


GELUS = {"tanh": gelu_tanh, "erf": gelu_erf}


# softmax(z)_i = exp(z_i - max z) / sum_j exp(z_j - max z)
def softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


# tokens[b, gy*gw + gx, d] = bias[d] + sum_{i,j,c} img[b, gy*ph+i, gx*pw+j, c] * K[i,j,c,d]
# (a stride = patch VALID convolution; leftover rows/columns are ignored)
def patch_embed(images, kernel, bias):
    b, h, w, c = images.shape
    ph, pw, _, d = kernel.shape
    gh, gw = h // ph, w // pw
    x = images[:, :gh * ph, :gw * pw, :].reshape(b, gh, ph, gw, pw, c)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, ph * pw * c)
    return x @ kernel.reshape(ph * pw * c, d) + bias


# q,k,v[b,t,h,:] = x[b,t] @ W[:, h, :] + bias[h];  q /= sqrt(Dh)
# a[b,h,t,s] = softmax_s(q[b,t,h] . k[b,s,h]);  o[b,t,h] = sum_s a[b,h,t,s] v[b,s,h]
# y[b,t] = sum_h o[b,t,h] @ Wout[h] + bout
def attention(x, p, prefix):
    q = np.einsum("btd,dhk->bthk", x, p[prefix + "query/kernel"]) + p[prefix + "query/bias"]
    k = np.einsum("btd,dhk->bthk", x, p[prefix + "key/kernel"]) + p[prefix + "key/bias"]
    v = np.einsum("btd,dhk->bthk", x, p[prefix + "value/kernel"]) + p[prefix + "value/bias"]
    q = q / math.sqrt(q.shape[-1])
    a = softmax(np.einsum("bthk,bshk->bhts", q, k), axis=-1)
    o = np.einsum("bhts,bshk->bthk", a, v)
    return np.einsum("bthk,hkd->btd", o, p[prefix + "out/kernel"]) + p[prefix + "out/bias"]


# MLP(x) = Dense_1(gelu(Dense_0(x)))
def mlp(x, k0, b0, k1, b1, gelu="tanh"):
    return dense(GELUS[gelu](dense(x, k0, b0)), k1, b1)


def expert(p, prefix, e, x, gelu="tanh"):
    """Expert e of an MoE block applied to rows x (n, D)."""
    return mlp(x, p[prefix + "Mlp/Dense_0/kernel"][e], p[prefix + "Mlp/Dense_0/bias"][e],
               p[prefix + "Mlp/Dense_1/kernel"][e], p[prefix + "Mlp/Dense_1/bias"][e], gelu)


# ---------------------------------------------------------------------------
# Routing (§4)
# ---------------------------------------------------------------------------

# c = ceil(num_tokens * cf / E) in double, then rounded up to a multiple of multiple_of.
# (num_tokens = S*k for top-k, S for experts-choice.)
def compute_capacity(num_tokens, num_experts, capacity_factor, multiple_of=4, rounding="ceil"):
    """DECISION: "round" (not specified by §4) is floor(x + 0.5); other values are errors."""
    raw = float(num_tokens) * float(capacity_factor) / float(num_experts)
    if rounding == "ceil":
        c = math.ceil(raw)
    elif rounding == "round":
        c = math.floor(raw + 0.5)
    else:
        raise ValueError(f"unknown capacity_rounding {rounding!r}")
    if multiple_of:
        c += (-c) % multiple_of
    if c < 1:
        raise ValueError(f"capacity {c} < 1 (tokens {num_tokens}, experts {num_experts}, "
                         f"capacity factor {capacity_factor})")
    return c


def _min_adjacent_gap(sorted_desc):
    """Smallest difference between neighbours along the last axis (inf if < 2 values)."""
    if sorted_desc.shape[-1] < 2:
        return math.inf
    return float(np.min(sorted_desc[..., :-1] - sorted_desc[..., 1:]))


def splitmix64(x):
    """The first output of a splitmix64 generator seeded with x (Steele, Lea & Flood 2014)."""
    mask = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


# BPR's score per token, larger goes first (gates (S, E) the router softmax):
#   max_gate  = max_e gates[t, e]                    (V-MoE's top-1 gate)
#   sum_gates = sum of the token's k largest gates
#   entropy   = sum_e gates[t, e] log gates[t, e]    (minus the entropy: confident first)
#   random    = top 24 bits of splitmix64(t) / 2^24, t = position in the group (content-blind)
#   learned   = s[t] = h[t] . kernel + bias          (the block's scorer)
def priority_scores(gates, k, priority, learned=None):
    """DECISION (the issue says "gates"): sum_gates and entropy read the softmax gates
    over all E experts, also under gating topk_softmax, whose renormalised k gates
    always sum to 1 and would rank nothing."""
    s = gates.shape[0]
    if priority == "max_gate":
        return gates.max(axis=1)
    if priority == "sum_gates":
        return np.sort(gates, axis=1)[:, -k:].sum(axis=1)
    if priority == "entropy":
        return (gates * np.log(np.maximum(gates, 1e-300))).sum(axis=1)  # 0 log 0 = 0
    if priority == "random":
        return np.array([(splitmix64(t) >> 40) / float(1 << 24) for t in range(s)])
    if priority == "learned":
        if learned is None:
            raise ValueError("priority learned: the model has no learned scorer")
        return np.asarray(learned, dtype=np.float64)
    raise ValueError(f"unknown priority {priority!r}")


def processing_order(scores, batch_priority):
    """Token positions in the order their choices are served: by position (vanilla) or
    by score descending, ties keeping position (BPR)."""
    if batch_priority:
        return np.argsort(-np.asarray(scores), kind="stable")
    return np.arange(len(scores))


# ranking[t] = all experts by gates[t] (balance "bias": by select[t] = logits + bias), descending, ties -> lower index; the top-k are the
# token's choices. order = processing_order(scores); scores default to the top-1 gate.
# for j in 0..k-1: for t in order: the j-th choice of t goes to
#   overflow "drop": its own expert ranking[t, j] if fill < c, else nowhere;
#   overflow "next": the best-ranked expert with fill < c that t does not hold yet
#     (every expert ranked above ranking[t, j] is already full or already holds t,
#     so this is the choice's own expert when it has room, else the next one with room).
def top_k_assign(gates, k, capacity, batch_priority, scores=None, overflow="drop",
                 exact_scores=False, select=None):
    """Returns (experts (S,k) int, kept (S,k) bool, margin).

    experts[t, j] = the expert that took the choice (with overflow "next" possibly not
    the j-th ranked one), or the j-th ranked expert when the choice was dropped.
    margin = smallest gap that decided anything (near-tie detector): gates between the
    ranks used, log gates (= logit gaps) over the whole ranking with overflow "next",
    and the scores in BPR order unless exact_scores (scores the engine computes
    bit-identically, e.g. the random scorer). select (S, E), balance "bias": logits + bias,
    ranks the experts instead of the gates (its gaps are then the margin); gates and
    scores are unchanged.
    """
    s, e = gates.shape
    if not 1 <= k <= e:
        raise ValueError(f"k={k} must be in 1..{e}")
    if overflow not in OVERFLOWS:
        raise ValueError(f"unknown overflow {overflow!r}")
    if select is None:
        ranking = np.argsort(-gates, axis=1, kind="stable")
        sorted_gates = np.take_along_axis(gates, ranking, axis=1)
        margin = _min_adjacent_gap(sorted_gates[:, :min(k + 1, e)])
        if overflow == "next":
            margin = min(margin, _min_adjacent_gap(np.log(np.maximum(sorted_gates, 1e-300))))
    else:
        ranking = np.argsort(-select, axis=1, kind="stable")
        sorted_select = np.take_along_axis(select, ranking, axis=1)
        margin = _min_adjacent_gap(sorted_select[:, :min(k + 1, e) if overflow == "drop" else e])
    if scores is None:
        scores = gates.max(axis=1)
    order = processing_order(scores, batch_priority)
    if batch_priority and not exact_scores:
        margin = min(margin, _min_adjacent_gap(np.asarray(scores)[order]))
    fill = np.zeros(e, dtype=int)
    experts = ranking[:, :k].copy()
    kept = np.zeros((s, k), dtype=bool)
    for j in range(k):
        for t in order:
            held = set(experts[t, :j][kept[t, :j]].tolist())
            candidates = ranking[t, j:j + 1] if overflow == "drop" else ranking[t]
            for x in candidates:
                if fill[x] < capacity and x not in held:
                    experts[t, j], kept[t, j] = x, True
                    fill[x] += 1
                    break
    return experts, kept, margin


# gating softmax_topk (V-MoE): weight = gates[t, e];
# gating topk_softmax (Mixtral): weight = gates[t, e] / (sum of the token's k largest gates)
#   = softmax over the k chosen logits.
def choice_weights(gates, experts, k, gating, choices=None):
    """(S, k) combine weights of the experts in `experts`.

    DECISION (a choice sent elsewhere by overflow "next"): under topk_softmax its weight is
    the new expert's gate over the same sum of the token's original top-k gates, so where
    a choice lands never changes the other choices' weights. choices (S, k): the token's
    top-k when not the k largest gates (balance "bias"); the sum runs over their gates.
    """
    weights = np.take_along_axis(gates, experts, axis=1)
    if gating == "topk_softmax":
        top = np.sort(gates, axis=1)[:, -k:] if choices is None else np.take_along_axis(gates, choices, axis=1)
        weights = weights / top.sum(axis=1, keepdims=True)
    elif gating != "softmax_topk":
        raise ValueError(f"unknown gating {gating!r}")
    return weights


# taken[:, e] = the c tokens with the largest gates[:, e] (ties -> lower token index).
def experts_choice_assign(gates, capacity):
    """Returns (taken (S,E) bool, margin)."""
    s, e = gates.shape
    taken = np.zeros((s, e), dtype=bool)
    margin = math.inf
    for x in range(e):
        order = np.argsort(-gates[:, x], kind="stable")
        taken[order[:capacity], x] = True
        if capacity < s:
            margin = min(margin, float(gates[order[capacity - 1], x] - gates[order[capacity], x]))
    return taken, margin


# xn = x * rsqrt(sum_d x^2 + 1e-6) per token; mun = mu * rsqrt(sum_d mu^2 + 1e-6) per slot;
# scale multiplies the one with fewer elements (the other if equal);
# logits[m, n, p] = xn[m] . mun[:, n, p]
# dispatch = softmax over tokens m (per slot); combine = softmax over all (n, p) per token.
def soft_weights(x, mu, scale):
    """Returns (dispatch (S, E*P), combine (S, E*P)); slot index = n*P + p.

    DECISION: "fewer elements" compares the group's x (S*D) with mu (D*E*P); the
    result is mathematically the same either way.
    """
    d, e, p = mu.shape
    xn = x * (1.0 / np.sqrt((x ** 2).sum(axis=-1, keepdims=True) + 1e-6))
    mun = mu * (1.0 / np.sqrt((mu ** 2).sum(axis=0, keepdims=True) + 1e-6))
    if xn.size < mun.size:
        xn = xn * scale
    else:
        mun = mun * scale
    logits = xn @ mun.reshape(d, e * p)
    return softmax(logits, axis=0), softmax(logits, axis=1)


# ---------------------------------------------------------------------------
# MoE layers on one group x (S, D)
# ---------------------------------------------------------------------------

# gates = softmax(x @ W); c = capacity rule, or S when dropless (capacity_factor None);
# s = x @ kernel + bias when the block has a learned scorer;
# y[t] = scale[t] * sum_{kept j} weight[t, j] * expert_{e_j}(x[t]),
# weight from choice_weights (gating), scale = 2 sigmoid(s[t]) with a learned scorer, else 1.
# The scale applies whatever priority orders the tokens: it is part of the model.
def top_k_moe(x, p, prefix, moe):
    s = x.shape[0]
    e, k = moe["num_experts"], moe["k"]
    logits = x @ p[prefix + "Router/dense/kernel"]
    gates = softmax(logits, axis=-1)
    # balance "bias": the experts are ranked by logits + bias; gates and scores stay unbiased
    select = logits + p[prefix + "Router/balance_bias"] if moe.get("balance") == "bias" else None
    choices = None if select is None else np.argsort(-select, axis=1, kind="stable")[:, :k]
    if moe["capacity_factor"] is None:
        c = s  # dropless: a token takes an expert at most once, so S slots always suffice
    else:
        c = compute_capacity(s * k, e, moe["capacity_factor"], moe["capacity_multiple_of"],
                             moe["capacity_rounding"])
    learned = None
    if prefix + "Priority/kernel" in p:
        learned = x @ p[prefix + "Priority/kernel"] + p[prefix + "Priority/bias"]
    priority = moe.get("priority", "max_gate")
    scores = priority_scores(gates, k, priority, learned)
    experts, kept, margin = top_k_assign(gates, k, c, moe["batch_priority"], scores=scores,
                                         overflow=moe.get("overflow", "drop"),
                                         exact_scores=priority == "random", select=select)
    weights = choice_weights(gates, experts, k, moe.get("gating", "softmax_topk"), choices)
    scale = np.ones(s) if learned is None else 2.0 / (1.0 + np.exp(-learned))
    y = np.zeros_like(x)
    for n in range(e):
        rows, cols = np.nonzero((experts == n) & kept)
        if len(rows):
            w = (weights[rows, cols] * scale[rows])[:, None]
            y[rows] += w * expert(p, prefix, n, x[rows], moe.get("gelu", "tanh"))
    rank = np.empty(s, dtype=int)
    rank[processing_order(scores, moe["batch_priority"])] = np.arange(s)
    return y, {"capacity": c, "gates": gates, "experts": experts, "kept": kept,
               "weights": weights, "scores": scores, "rank": rank, "margin": margin}


# gates = softmax(x @ W) over experts; expert n takes its top-c tokens;
# y[t] = sum_{n took t} gates[t, n] * expert_n(x[t])
def experts_choice_moe(x, p, prefix, moe):
    s = x.shape[0]
    e = moe["num_experts"]
    gates = softmax(x @ p[prefix + "Router/dense/kernel"], axis=-1)
    c = min(compute_capacity(s, e, moe["capacity_factor"], moe["capacity_multiple_of"],
                             moe["capacity_rounding"]), s)
    taken, margin = experts_choice_assign(gates, c)
    y = np.zeros_like(x)
    for n in range(e):
        rows = np.nonzero(taken[:, n])[0]
        y[rows] += gates[rows, n][:, None] * expert(p, prefix, n, x[rows], moe.get("gelu", "tanh"))
    return y, {"capacity": c, "gates": gates, "taken": taken, "margin": margin}


# slots[n*P+p] = sum_m dispatch[m, n*P+p] * x[m]   (unnormalised x)
# out[n*P+p] = expert_n(slots[n*P+p]);  y[m] = sum_slot combine[m, slot] * out[slot]
def soft_moe(x, p, prefix, moe):
    mu = p[prefix + "Router/mu"]
    _, e, ps = mu.shape
    dispatch, combine = soft_weights(x, mu, p[prefix + "Router/scale"])
    slots = dispatch.T @ x
    out = np.concatenate([expert(p, prefix, n, slots[n * ps:(n + 1) * ps], moe.get("gelu", "tanh")) for n in range(e)])
    return combine @ out, {"dispatch": dispatch, "combine": combine, "margin": math.inf}


ROUTERS = {"top_k": top_k_moe, "experts_choice": experts_choice_moe, "soft": soft_moe}


def moe_block(x, p, prefix, moe, tokens_per_image):
    """x (B, T, D) -> (B, T, D). Groups are consecutive group_images*T rows of the
    flattened (B*T, D) array; the last group may be smaller (its S is its own size)."""
    b, t, d = x.shape
    flat = x.reshape(b * t, d)
    out = np.zeros_like(flat)
    group_size = moe["group_images"] * tokens_per_image
    route = ROUTERS[moe["router"]]
    groups = []
    for start in range(0, b * t, group_size):
        y, record = route(flat[start:start + group_size], p, prefix, moe)
        out[start:start + len(y)] = y
        record["start"], record["size"] = start, len(y)
        groups.append(record)
    # Shared experts (DeepSeekMoE): every token, weight 1, added to the routed output.
    for n in range(moe["num_shared_experts"]):
        out += mlp(flat, p[prefix + "Shared/Dense_0/kernel"][n], p[prefix + "Shared/Dense_0/bias"][n],
                   p[prefix + "Shared/Dense_1/kernel"][n], p[prefix + "Shared/Dense_1/bias"][n],
                   moe.get("gelu", "tanh"))
    return out.reshape(b, t, d), groups


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------

def forward(params, config, images, capacity_factor=None, routing=None, group_images=None,
            priority=None, overflow=None, dtype=np.float64):
    """images: float (B, H, W, C), already mapped to value_range.

    Returns (logits (B, classes), trace). trace has one entry per MoE layer:
    {"layer", "router", "num_experts", "k", "slots_per_expert", "tokens_per_image",
     "priority", "gating", "overflow", "dropless",
     "groups": [{"start", "size", "capacity"?, "gates"?,
                 "experts"/"kept"/"weights"/"scores"/"rank" (top_k),
                 "taken" (experts_choice), "dispatch"/"combine" (soft), "margin"}]}.
    """
    cfg = fill_defaults(config)
    moe = effective_moe(cfg, capacity_factor, routing, group_images, priority, overflow)
    moe["gelu"] = cfg["gelu"]  # the experts' GELU form, like every MLP's
    p = {name: np.asarray(v, dtype=dtype) for name, v in params.items()}
    eps = cfg["layer_norm_eps"]
    _, _, t, has_cls = geometry(cfg)
    images = np.asarray(images, dtype=dtype)
    if images.ndim != 4 or images.shape[1:] != (cfg["image"]["height"], cfg["image"]["width"],
                                                cfg["image"]["channels"]):
        raise ValueError(f"images shape {images.shape} does not match the config")

    x = patch_embed(images, p["embedding/kernel"], p["embedding/bias"])
    if has_cls:
        x = np.concatenate([np.broadcast_to(p["cls"], (x.shape[0], 1, x.shape[2])), x], axis=1)
    x = x + p["Encoder/posembed_input/pos_embedding"]

    trace = []
    for i in range(cfg["num_layers"]):
        b = f"Encoder/encoderblock_{i}/"
        x = x + attention(layer_norm(x, p[b + "LayerNorm_0/scale"], p[b + "LayerNorm_0/bias"],
                                     eps), p, b + "SelfAttention/")
        y = layer_norm(x, p[b + "LayerNorm_1/scale"], p[b + "LayerNorm_1/bias"], eps)
        if i in moe["layers"]:
            y, groups = moe_block(y, p, b + "Moe/", moe, t)
            trace.append({"layer": i, "router": moe["router"], "num_experts": moe["num_experts"],
                          "k": moe["k"], "slots_per_expert": moe["slots_per_expert"],
                          "tokens_per_image": t, "priority": moe["priority"],
                          "gating": moe["gating"], "overflow": moe["overflow"],
                          "dropless": moe["capacity_factor"] is None, "groups": groups})
        else:
            y = mlp(y, p[b + "Mlp/Dense_0/kernel"], p[b + "Mlp/Dense_0/bias"],
                    p[b + "Mlp/Dense_1/kernel"], p[b + "Mlp/Dense_1/bias"], cfg["gelu"])
        x = x + y
    x = layer_norm(x, p["Encoder/encoder_norm/scale"], p["Encoder/encoder_norm/bias"], eps)

    rep = x[:, 0] if cfg["classifier"] == "token" else x.mean(axis=1)
    if cfg["representation_size"]:
        rep = np.tanh(dense(rep, p["pre_logits/kernel"], p["pre_logits/bias"]))
    return dense(rep, p["head/kernel"], p["head/bias"]), trace


def trace_margin(trace):
    """Smallest routing-decision gate gap anywhere in the trace (inf if none)."""
    return min([g["margin"] for layer in trace for g in layer["groups"]], default=math.inf)


def _image_rows(layer, image_index):
    """(group record, first row within the group) for an image's tokens."""
    first = image_index * layer["tokens_per_image"]
    for g in layer["groups"]:
        if g["start"] <= first < g["start"] + g["size"]:
            return g, first - g["start"]
    raise IndexError(image_index)


def image_moe_summary(trace, image_index):
    """Per MoE layer {"layer", "capacity", "dropped", "dropped_tokens"} for one image.

    DECISION (classify "dropped" is not defined by §5): "dropped" here is the fraction of
    the image's token choices (T*k) that were dropped; "dropped_tokens" the fraction of
    its tokens with no kept choice. Experts-choice: both are the fraction of tokens no
    expert took. Soft-MoE: 0 and capacity None.
    """
    out = []
    for layer in trace:
        g, r = _image_rows(layer, image_index)
        t = layer["tokens_per_image"]
        if layer["router"] == "top_k":
            kept = g["kept"][r:r + t]
            dropped, dropped_tokens = 1.0 - kept.mean(), float((~kept.any(axis=1)).mean())
        elif layer["router"] == "experts_choice":
            dropped = dropped_tokens = float((~g["taken"][r:r + t].any(axis=1)).mean())
        else:
            dropped = dropped_tokens = 0.0
        out.append({"layer": layer["layer"], "capacity": g.get("capacity"),
                    "dropped": float(dropped), "dropped_tokens": dropped_tokens})
    return out


def image_route_json(trace, image_index):
    """The "layers" list of `vmoe route --json` (§5) for one image.

    DECISION: experts-choice "choices" lists, per token, every expert (ascending index)
    with kept = whether that expert took the token; check_engine compares only the set
    of kept experts. Soft-MoE has empty "choices" and capacity None. Top-k choices name
    the expert that took the choice (the ranked one when dropped) and its combine weight
    (choice_weights, without the learned scorer's scale).
    """
    layers = []
    for layer in trace:
        g, r = _image_rows(layer, image_index)
        t = layer["tokens_per_image"]
        entry = {"layer": layer["layer"], "router": layer["router"],
                 "num_experts": layer["num_experts"], "k": layer["k"],
                 "capacity": g.get("capacity")}
        if layer["router"] == "top_k":
            entry["gates"] = g["gates"][r:r + t].tolist()
            entry["choices"] = [[{"expert": int(e), "gate": float(w), "kept": bool(kp)}
                                 for e, w, kp in zip(g["experts"][r + i], g["weights"][r + i],
                                                     g["kept"][r + i])]
                                for i in range(t)]
            entry["priority_score"] = g["scores"][r:r + t].tolist()
            entry["priority_rank"] = g["rank"][r:r + t].tolist()  # within the group
            entry.update({key: layer[key] for key in ("priority", "gating", "overflow", "dropless")})
        elif layer["router"] == "experts_choice":
            gates = g["gates"][r:r + t]
            entry["gates"] = gates.tolist()
            entry["choices"] = [[{"expert": e, "gate": float(gates[i, e]),
                                  "kept": bool(g["taken"][r + i, e])}
                                 for e in range(layer["num_experts"])] for i in range(t)]
        else:
            entry["gates"], entry["choices"] = [], []
            entry["dispatch"] = g["dispatch"][r:r + t].tolist()
            entry["combine"] = g["combine"][r:r + t].tolist()
        layers.append(entry)
    return layers


# ---------------------------------------------------------------------------
# Test cases: model + images whose routing has no near ties
# ---------------------------------------------------------------------------

def image_input(config, pixels_list):
    """Stack uint8 (H,W,C) images into the float (B,H,W,C) model input."""
    cfg = fill_defaults(config)
    return to_value_range(np.stack(pixels_list), cfg["image"]["value_range"])


def make_case(config, seed, num_images, settings=({},), max_tries=200):
    """(params, [uint8 images]) such that, for every settings dict (forward() keyword
    overrides), each image alone and the whole batch route without near ties."""
    params = random_model(config, seed)
    rng = np.random.default_rng(seed + 1000)
    h, w, c = (config["image"][key] for key in ("height", "width", "channels"))

    def clean(pixels_list):
        x = image_input(config, pixels_list)
        return all(trace_margin(forward(params, config, x, **s)[1]) > NEAR_TIE for s in settings)

    for _ in range(max_tries):
        images = []
        while len(images) < num_images:
            for _ in range(max_tries):
                candidate = random_image(rng, h, w, c)
                if clean([candidate]):
                    break
            else:
                raise RuntimeError("could not find an image without routing near ties")
            images.append(candidate)
        if clean(images):
            return params, images
    raise RuntimeError("could not find a batch without routing near ties")


def expected_json(params, config, images, files, capacity_factor=None, routing=None,
                  group_images=None, priority=None, overflow=None):
    """Reference results: each image alone (logits + route trace) and the whole batch."""
    cfg = fill_defaults(config)
    gh, gw, t, has_cls = geometry(cfg)
    settings = dict(capacity_factor=capacity_factor, routing=routing, group_images=group_images,
                    priority=priority, overflow=overflow)
    moe = effective_moe(cfg, capacity_factor, routing, group_images, priority, overflow)
    x = image_input(config, images)
    per_image = []
    for i, name in enumerate(files):
        logits, trace = forward(params, config, x[i:i + 1], **settings)
        per_image.append({"image": name, "logits": logits[0].tolist(),
                          "moe": image_moe_summary(trace, 0),
                          "layers": image_route_json(trace, 0)})
    batch_logits, batch_trace = forward(params, config, x, **settings)
    if moe["group_images"] == 1:
        alone = np.array([r["logits"] for r in per_image])
        diff = np.abs(alone - batch_logits).max()
        assert diff < 1e-9, f"reference is not batch independent (max diff {diff})"
    return {"config": config, "grid": [gh, gw], "cls": has_cls, "tokens_per_image": t,
            "settings": {"capacity_factor": moe["capacity_factor"],
                         "routing": "bpr" if moe["batch_priority"] else "vanilla",
                         "group_images": moe["group_images"], "priority": moe["priority"],
                         "gating": moe["gating"], "overflow": moe["overflow"]},
            "images": per_image,
            "batch": {"images": list(files), "logits": batch_logits.tolist(),
                      "moe": [image_moe_summary(batch_trace, i) for i in range(len(files))]}}


def write_case(out_dir, params, config, images, **settings):
    """DIR/model.safetensors, DIR/img_*.pgm|ppm, DIR/expected.json. Returns (model, files)."""
    os.makedirs(out_dir, exist_ok=True)
    model = os.path.join(out_dir, "model.safetensors")
    write_safetensors(model, params, config)
    ext = "pgm" if config["image"]["channels"] == 1 else "ppm"
    files = []
    for i, pixels in enumerate(images):
        path = os.path.join(out_dir, f"img_{i}.{ext}")
        write_pnm(path, pixels)
        files.append(path)
    expected = expected_json(params, config, images, [os.path.basename(f) for f in files],
                             **settings)
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    return model, files


# ---------------------------------------------------------------------------
# selftest
# ---------------------------------------------------------------------------

def _check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"  ok  {what}")


def selftest():
    print("vmoe_ref selftest")
    # Worked example of §4: 3 tokens, 3 experts, k=2, c=2.
    gates = np.array([[.4, 0, .2], [.5, .1, .4], [.3, .2, .6]])
    experts, kept, _ = top_k_assign(gates, 2, 2, batch_priority=False)
    vanilla = {(t, int(experts[t, j])) for t in range(3) for j in range(2) if kept[t, j]}
    _check(vanilla == {(0, 0), (1, 0), (2, 2), (0, 2)}, "worked example, vanilla")
    experts, kept, _ = top_k_assign(gates, 2, 2, batch_priority=True)
    bpr = {(t, int(experts[t, j])) for t in range(3) for j in range(2) if kept[t, j]}
    _check(bpr == {(2, 2), (1, 0), (0, 0), (1, 2)}, "worked example, BPR")
    _, kept_ties, _ = top_k_assign(np.full((3, 4), 0.25), 1, 1, batch_priority=True)
    e_ties, _, _ = top_k_assign(np.full((3, 4), 0.25), 2, 8, batch_priority=True)
    _check(kept_ties[:, 0].tolist() == [True, False, False] and e_ties[0].tolist() == [0, 1],
           "ties: lower expert index, BPR keeps position order")

    # Capacity rule.
    _check(compute_capacity(400 * 2, 8, 1.05) == 108, "capacity 400 tok, k2, 8 exp, cf 1.05 -> 108")
    _check(compute_capacity(32 * 2, 32, 1.0) == 4, "capacity 32 tok, k2, 32 exp, cf 1.0 -> 4")
    _check(compute_capacity(50 * 2, 8, 0.25) == 4, "capacity 50 tok, k2, 8 exp, cf 0.25 -> 4")
    _check(compute_capacity(50 * 2, 4, 1.05) == 28, "capacity 50 tok, k2, 4 exp, cf 1.05 -> 28")
    try:
        compute_capacity(10, 4, 0.0)
        _check(False, "capacity < 1 is an error")
    except ValueError:
        _check(True, "capacity < 1 is an error")

    # Layers against naive loops.
    rng = np.random.default_rng(0)
    img = rng.standard_normal((2, 8, 12, 3))
    ker, bias = rng.standard_normal((4, 3, 3, 5)), rng.standard_normal(5)
    naive = np.zeros((2, 8, 5))
    for b in range(2):
        for gy in range(2):
            for gx in range(4):
                naive[b, gy * 4 + gx] = bias + np.einsum(
                    "ijc,ijcd->d", img[b, gy * 4:gy * 4 + 4, gx * 3:gx * 3 + 3], ker)
    _check(np.allclose(patch_embed(img, ker, bias), naive), "patch embedding = naive conv")

    d, h = 6, 2
    ap = {f"a/{n}/kernel": rng.standard_normal((d, h, d // h)) for n in ("query", "key", "value")}
    ap.update({f"a/{n}/bias": rng.standard_normal((h, d // h)) for n in ("query", "key", "value")})
    ap["a/out/kernel"], ap["a/out/bias"] = rng.standard_normal((h, d // h, d)), rng.standard_normal(d)
    xa = rng.standard_normal((1, 4, d))
    naive = np.tile(ap["a/out/bias"], (4, 1))
    for hh in range(h):
        q = (xa[0] @ ap["a/query/kernel"][:, hh] + ap["a/query/bias"][hh]) / math.sqrt(d // h)
        k = xa[0] @ ap["a/key/kernel"][:, hh] + ap["a/key/bias"][hh]
        v = xa[0] @ ap["a/value/kernel"][:, hh] + ap["a/value/bias"][hh]
        s = np.exp(q @ k.T)
        naive += (s / s.sum(axis=1, keepdims=True)) @ v @ ap["a/out/kernel"][hh]
    _check(np.allclose(attention(xa, ap, "a/"), naive[None]), "attention = naive per-head loop")

    # Safetensors round trip.
    import tempfile
    config = make_config(router="soft", classifier="gap", moe_layers=(0, 2), num_experts=4,
                         slots_per_expert=2)
    params = random_model(config, 3)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.safetensors")
        write_safetensors(path, params, config)
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
        back, back_cfg = read_safetensors(path)
    _check(n % 8 == 0 and back_cfg == config and back.keys() == params.keys()
           and all(np.array_equal(back[k], params[k]) for k in params)
           and back["Encoder/encoderblock_0/Moe/Router/scale"].shape == (),
           "safetensors round trip (aligned header, scalar shape [])")

    # Soft-MoE weights.
    x = image_input(config, [random_image(rng, 28, 28, 1) for _ in range(3)])
    _, trace = forward(params, config, x)
    g = trace[0]["groups"][0]
    _check(np.allclose(g["dispatch"].sum(axis=0), 1) and np.allclose(g["combine"].sum(axis=1), 1)
           and len(trace[0]["groups"]) == 3, "soft: dispatch columns / combine rows sum to 1")

    # Top-k with k = E and no capacity limit == experts-choice with c = S == dense mixture.
    base = dict(classifier="token", moe_layers=(1,), num_experts=4, k=4, capacity_factor=100.0)
    cfg_tk = make_config(router="top_k", **base)
    cfg_ec = make_config(router="experts_choice", **base)
    params = random_model(cfg_tk, 5)
    x = image_input(cfg_tk, [random_image(rng, 28, 28, 1) for _ in range(2)])
    lt, tr_tk = forward(params, cfg_tk, x)
    le, tr_ec = forward(params, cfg_ec, x)
    _check(tr_tk[0]["groups"][0]["kept"].all() and tr_ec[0]["groups"][0]["taken"].all()
           and np.allclose(lt, le), "top_k(k=E, no limit) == experts_choice(c=S)")
    xs = rng.standard_normal((7, 32))
    y, rec = top_k_moe(xs, params, "Encoder/encoderblock_1/Moe/", effective_moe(fill_defaults(cfg_tk)))
    mix = sum(rec["gates"][:, [n]] * expert(params, "Encoder/encoderblock_1/Moe/", n, xs)
              for n in range(4))
    _check(np.allclose(y, mix), "top_k output = sum_e gate_e * expert_e(x) when all kept")

    # Batch independence and groups.
    config = make_config(router="top_k", classifier="gap", moe_layers=(0, 2), num_experts=8)
    params = random_model(config, 7)
    x = image_input(config, [random_image(rng, 28, 28, 1) for _ in range(5)])
    alone = np.concatenate([forward(params, config, x[i:i + 1], capacity_factor=0.25)[0]
                            for i in range(5)])
    batch, _ = forward(params, config, x, capacity_factor=0.25)
    _check(np.abs(alone - batch).max() < 1e-9, "group_images 1: batch == one image at a time")
    batch2, tr2 = forward(params, config, x, capacity_factor=0.25, group_images=2)
    sizes = [(g["size"], g["capacity"]) for g in tr2[0]["groups"]]
    _check(sizes == [(98, 8), (98, 8), (49, 4)] and np.abs(batch2[4] - alone[4]).max() < 1e-9
           and np.abs(batch2[:4] - alone[:4]).max() > 1e-6,
           "group_images 2: groups 2,2,1 images, own capacities, batch effects")

    # Issue 11 top-k variants, hand-worked.
    # Overflow "next" on the §4 example (k=2, c=2). Vanilla: t1's 2nd choice e2 and t2's
    # 2nd choice e0 are full and go on to e1, their next expert; BPR (order t2, t1, t0):
    # t2's e0 and t0's e2 are full and go to e1. Nothing is dropped (6 choices, 6 slots).
    experts, kept, _ = top_k_assign(gates, 2, 2, batch_priority=False, overflow="next")
    _check(experts.tolist() == [[0, 2], [0, 1], [2, 1]] and kept.all(),
           "overflow next, worked example, vanilla")
    experts, kept, _ = top_k_assign(gates, 2, 2, batch_priority=True, overflow="next")
    _check(experts.tolist() == [[0, 1], [0, 2], [2, 1]] and kept.all(),
           "overflow next, worked example, BPR")
    # A token never takes an expert twice: t2's 1st choice e0 is full (t0, t1) and goes to
    # its 2nd-ranked e2; its 2nd choice, e2, then goes to its 3rd-ranked e3 (e1 is full).
    g4 = np.array([[.6, .3, .06, .04], [.6, .3, .04, .06], [.5, .04, .4, .06]])
    experts, kept, _ = top_k_assign(g4, 2, 2, batch_priority=False, overflow="next")
    _check(experts.tolist() == [[0, 1], [0, 1], [2, 3]] and kept.all(),
           "overflow next skips the expert the token already holds")
    # Two equal tokens p = (.5, .4, .1), c = 1, vanilla: t0 -> e0, t1 -> e1 (e0 full),
    # t0's 2nd choice e1 is full -> e2; t1's 2nd choice e1 holds t1 and e2 is full: dropped.
    experts, kept, _ = top_k_assign(np.array([[.5, .4, .1]] * 2), 2, 1, False, overflow="next")
    _check(experts.tolist() == [[0, 2], [1, 1]] and kept.tolist() == [[True, True], [True, False]],
           "overflow next: a choice whose expert holds the token and no room left is dropped")
    experts, kept, _ = top_k_assign(g4, 2, 2, batch_priority=False, overflow="drop")
    _check(experts[2].tolist() == [0, 2] and kept[2].tolist() == [False, True],
           "overflow drop: the same choice is dropped")
    # topk_softmax divides by the token's top-k sum (t2: .5 + .4), also after overflow.
    w = choice_weights(g4, np.array([[0, 1], [0, 1], [2, 3]]), 2, "topk_softmax")
    _check(np.allclose(w, [[2 / 3, 1 / 3], [2 / 3, 1 / 3], [.4 / .9, .06 / .9]])
           and np.allclose(choice_weights(g4, np.array([[2, 3]] * 3), 2, "softmax_topk"),
                           g4[:, 2:]), "gating topk_softmax vs softmax_topk weights")
    # Scorers on two tokens: t0 = (.5, .5, 0), t1 = (.7, .2, .1).
    g2 = np.array([[.5, .5, 0], [.7, .2, .1]])
    _check(np.allclose(priority_scores(g2, 2, "max_gate"), [.5, .7])
           and np.allclose(priority_scores(g2, 2, "sum_gates"), [1.0, .9])
           and np.allclose(priority_scores(g2, 2, "entropy"),
                           [math.log(.5), .7 * math.log(.7) + .2 * math.log(.2) + .1 * math.log(.1)])
           and splitmix64(0) == 0xE220A8397B1DCDAF
           and np.allclose(priority_scores(g2, 2, "random"),
                           [(0xE220A8397B1DCDAF >> 40) / 2 ** 24, (splitmix64(1) >> 40) / 2 ** 24]),
           "scorers max_gate, sum_gates, entropy, random (splitmix64 test vector)")
    # Both want e0 (c = 1): max_gate serves t1 (.7 > .5) first; entropy serves t0
    # (ln 2 = .69 < .80) and sum_gates (k = 2) t0 (1.0 > .9).
    first_kept = {name: top_k_assign(g2, 2, 1, True, scores=priority_scores(g2, 2, name))[1][:, 0]
                  .tolist() for name in ("max_gate", "entropy", "sum_gates")}
    _check(first_kept == {"max_gate": [False, True], "entropy": [True, False],
                          "sum_gates": [True, False]},
           "BPR order: max_gate vs lower entropy first vs larger top-k sum first")
    # Dropless and the learned scorer on a block: c = S, nothing dropped; the learned
    # scorer scales the whole routed output by 2 sigmoid(s) and orders BPR by s.
    cfg_l = make_config(router="top_k", moe_layers=(1,), num_experts=4, k=2,
                        capacity_factor=None, priority="learned", eval_capacity_factor=0.5)
    params = random_model(cfg_l, 11)
    pre = "Encoder/encoderblock_1/Moe/"
    moe_l = effective_moe(fill_defaults(cfg_l))
    _check(moe_l["capacity_factor"] == 0.5 and params[pre + "Priority/kernel"].shape == (32,)
           and params[pre + "Priority/bias"].shape == (), "eval_capacity_factor, scorer tensors")
    xs = rng.standard_normal((9, 32))
    dropless = {**moe_l, "capacity_factor": None}
    y, rec = top_k_moe(xs, params, pre, dropless)
    plain = {n: v for n, v in params.items() if "/Priority/" not in n}
    y0, rec0 = top_k_moe(xs, plain, pre, {**dropless, "priority": "max_gate"})
    sig = xs @ params[pre + "Priority/kernel"] + params[pre + "Priority/bias"]
    _check(rec["capacity"] == 9 and rec["kept"].all()
           and np.allclose(y, y0 * (2 / (1 + np.exp(-sig)))[:, None])
           and rec["rank"].tolist() == np.argsort(np.argsort(-sig, kind="stable")).tolist(),
           "dropless c = S keeps all; learned: y = 2 sigmoid(s) y_plain, BPR ranks by s")

    # Issue 11 variants. Balance bias, hand-worked: logits (2, 1, 0), bias (0, 1.5, 0) ->
    # expert 1 chosen, at its unbiased gate e / (e^2 + e + 1).
    lg = np.array([[2.0, 1.0, 0.0]])
    experts, _, _ = top_k_assign(softmax(lg), 1, 1, False, select=lg + np.array([0, 1.5, 0]))
    _check(experts.tolist() == [[1]], "balance bias: the choice follows logits + bias")
    config = make_config(router="top_k", classifier="token", moe_layers=(1,), num_experts=4,
                         balance="bias", num_shared_experts=2, expert_mlp_dim=24)
    params = random_model(config, 9)
    pre = "Encoder/encoderblock_1/Moe/"
    _check(params[pre + "Mlp/Dense_0/kernel"].shape == (4, 32, 24)
           and params[pre + "Shared/Dense_1/kernel"].shape == (2, 24, 32)
           and params[pre + "Router/balance_bias"].shape == (4,)
           and params["Encoder/encoderblock_0/Mlp/Dense_0/kernel"].shape == (32, 64),
           "expert_mlp_dim sizes routed and shared experts, dense blocks keep mlp_dim")
    moe = effective_moe(fill_defaults(config))
    xs = rng.standard_normal((1, 7, 32))
    y, groups = moe_block(xs, params, pre, moe, 7)
    routed, _ = moe_block(xs, params, pre, {**moe, "num_shared_experts": 0}, 7)
    shared = sum(mlp(xs[0], params[pre + "Shared/Dense_0/kernel"][n], params[pre + "Shared/Dense_0/bias"][n],
                     params[pre + "Shared/Dense_1/kernel"][n], params[pre + "Shared/Dense_1/bias"][n])
                 for n in range(2))
    g = groups[0]
    picked = np.argsort(-(xs[0] @ params[pre + "Router/dense/kernel"] + params[pre + "Router/balance_bias"]),
                        axis=1, kind="stable")[:, :2]
    _check(np.allclose(y[0] - routed[0], shared) and np.array_equal(g["experts"], picked)
           and np.allclose(g["gates"].sum(axis=1), 1),
           "shared experts add to every token; bias picks, gates stay a softmax")

    # PNM round trip and value range.
    pix = random_image(rng, 5, 7, 3)
    with tempfile.TemporaryDirectory() as tmp:
        write_pnm(os.path.join(tmp, "a.ppm"), pix)
        back = read_pnm(os.path.join(tmp, "a.ppm"))
    _check(np.array_equal(back, pix) and np.allclose(to_value_range([0, 255], [-1, 1]), [-1, 1]),
           "PPM round trip, 0..255 -> value_range")
    print("selftest passed")


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="write DIR/model.safetensors, DIR/img_*, DIR/expected.json")
    mk.add_argument("--router", choices=["top_k", "experts_choice", "soft", "dense"], required=True)
    mk.add_argument("--classifier", choices=["token", "gap"], default="token")
    mk.add_argument("--channels", type=int, choices=[1, 3], default=1)
    mk.add_argument("--representation-size", type=int, default=None)
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--out", required=True)
    mk.add_argument("--num-images", type=int, default=4)
    mk.add_argument("--patch", type=int, default=4)
    mk.add_argument("--hidden", type=int, default=32)
    mk.add_argument("--layers", type=int, default=3)
    mk.add_argument("--heads", type=int, default=2)
    mk.add_argument("--mlp-dim", type=int, default=64)
    mk.add_argument("--moe-layers", default="1", help="comma list, e.g. 0,2")
    mk.add_argument("--experts", type=int, default=8)
    mk.add_argument("--k", type=int, default=2)
    mk.add_argument("--slots-per-expert", type=int, default=1)
    mk.add_argument("--model-group-images", type=int, default=1,
                    help="moe.group_images stored in the config")
    mk.add_argument("--capacity-factor", type=float, default=None, help="override for expected.json")
    mk.add_argument("--routing", choices=["bpr", "vanilla"], default=None)
    mk.add_argument("--group-images", type=int, default=None)
    mk.add_argument("--model-priority", choices=PRIORITIES, default="max_gate",
                    help="moe.priority stored in the config")
    mk.add_argument("--model-gating", choices=GATINGS, default="softmax_topk")
    mk.add_argument("--model-overflow", choices=OVERFLOWS, default="drop")
    mk.add_argument("--model-capacity-factor", default="1.05",
                    help="moe.capacity_factor stored in the config, or null (dropless)")
    mk.add_argument("--model-eval-capacity-factor", type=float, default=None)
    mk.add_argument("--priority", choices=PRIORITIES, default=None)
    mk.add_argument("--overflow", choices=OVERFLOWS, default=None)
    sub.add_parser("selftest", help="internal consistency checks")
    args = ap.parse_args(argv)

    if args.cmd == "selftest":
        selftest()
        return 0
    config = make_config(router=args.router, classifier=args.classifier, channels=args.channels,
                         representation_size=args.representation_size,
                         patch=(args.patch, args.patch), hidden_size=args.hidden,
                         num_layers=args.layers, num_heads=args.heads, mlp_dim=args.mlp_dim,
                         moe_layers=[int(v) for v in args.moe_layers.split(",") if v],
                         num_experts=args.experts, k=args.k,
                         slots_per_expert=args.slots_per_expert,
                         group_images=args.model_group_images,
                         capacity_factor=None if args.model_capacity_factor == "null"
                         else float(args.model_capacity_factor),
                         priority=args.model_priority, gating=args.model_gating,
                         overflow=args.model_overflow,
                         eval_capacity_factor=args.model_eval_capacity_factor)
    settings = dict(capacity_factor=args.capacity_factor, routing=args.routing,
                    group_images=args.group_images, priority=args.priority,
                    overflow=args.overflow)
    params, images = make_case(config, args.seed, args.num_images, settings=(settings,))
    model, files = write_case(args.out, params, config, images, **settings)
    print(f"wrote {model}, {len(files)} images, {os.path.join(args.out, 'expected.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
