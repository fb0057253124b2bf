#!/usr/bin/python3
"""The peer benchmark: the same model in idiomatic eval-mode PyTorch (Debian's python3-torch).

  bench_vs_torch.py -m MODEL.safetensors --batch 1,8,64 [--seconds S] [--threads 2]
                    [--check VMOE_BINARY] [--train]

Builds an nn.Module from our safetensors file (DESIGN.md §2-§4: pre-LN ViT with
nn.MultiheadAttention, GELU tanh or erf as the config says; V-MoE top-k with capacity and batch priority routing as
one-hot dispatch/combine einsums, as the official JAX code does; Soft-MoE as the paper's
einsums; experts as one batched matmul), then for each batch size times forward passes on
random images (1 warm-up pass, then at least 2 passes and S seconds) and prints one JSON line:
  {"batch": B, "images_per_s": ..., "peak_rss_kb": ...}
peak_rss_kb is the process's peak so far (batches run in the order given).

--check runs `VMOE classify --json` on a few random images and compares its logits with
this model's; a difference above 1e-3 (relative to the logits' scale) is an error.
Only the speed comparison is the point here: tests/reference holds the exact reference.

--train times training steps instead, as a user would write them (the peer of `vmoe bench
--train`): train mode, softmax cross-entropy on random labels, loss.backward(), AdamW.
Top-k MoE layers add the V-MoE importance loss (weight 0.005, as vmoe's default); the
load loss and router noise, which vmoe also computes, are left out, which only makes
PyTorch's step lighter than vmoe's. The line then carries "mode": "train".
"""

import argparse
import json
import math
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    sys.exit("bench_vs_torch.py: PyTorch is missing: apt-get install python3-torch")


# ---------------------------------------------------------------------------
# safetensors (§2)
# ---------------------------------------------------------------------------

def read_safetensors(path):
    """Tensors read one by one (not the whole file first: soft-s16's is 3.7 GB)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
    config = json.loads(header.pop("__metadata__")["vmoe.config"])
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        data = np.fromfile(path, dtype="<f4", count=(end - begin) // 4, offset=8 + n + begin)
        tensors[name] = torch.from_numpy(data.reshape(info["shape"]))
    return tensors, config


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------

MOE_DEFAULTS = {"layers": [], "router": "top_k", "num_experts": 8, "k": 2,
                "capacity_factor": 1.05, "capacity_rounding": "ceil",
                "capacity_multiple_of": 4, "batch_priority": True, "group_images": 1,
                "slots_per_expert": 1}


def capacity(tokens, experts, factor, multiple_of, rounding):
    raw = float(tokens) * float(factor) / float(experts)
    c = math.ceil(raw) if rounding == "ceil" else math.floor(raw + 0.5)
    return c + (-c) % multiple_of if multiple_of else c


def gelu(x, approximate):
    """F.gelu; while exported to ONNX, the tanh form is spelled in the op order ONNX Runtime
    fuses into one FastGelu kernel (its FastGeluFusion: Pow(x, 3) -> Mul 0.044715 -> Add x ->
    Mul sqrt(2/pi) -> Tanh -> Add 1 -> Mul by x*0.5). F.gelu's own export of the tanh form
    stays separate Mul/Add/Tanh kernels in ORT (checked with ORT's profiler, 1.31.1)."""
    if approximate == "tanh" and torch.onnx.is_in_onnx_export():
        return (x * 0.5) * (1.0 + torch.tanh((x + torch.pow(x, 3.0) * 0.044715) * 0.7978845834732056))
    return F.gelu(x, approximate=approximate)


class Experts(nn.Module):
    """E MLPs run as one batched matmul: (E, rows, D) -> (E, rows, D)."""

    def __init__(self, p, prefix, gelu):
        super().__init__()
        self.gelu = gelu  # "tanh" or "none" (erf), F.gelu's approximate
        self.w0 = nn.Parameter(p[prefix + "Mlp/Dense_0/kernel"])  # (E, D, M)
        self.b0 = nn.Parameter(p[prefix + "Mlp/Dense_0/bias"].unsqueeze(1))  # (E, 1, M)
        self.w1 = nn.Parameter(p[prefix + "Mlp/Dense_1/kernel"])  # (E, M, D)
        self.b1 = nn.Parameter(p[prefix + "Mlp/Dense_1/bias"].unsqueeze(1))  # (E, 1, D)

    def forward(self, x):
        h = gelu(torch.baddbmm(self.b0, x, self.w0), self.gelu)
        return torch.baddbmm(self.b1, h, self.w1)


class TopKMoe(nn.Module):
    """V-MoE top-k with capacity and BPR (§4), as dispatch/combine tensors (G, S, E, C)."""

    def __init__(self, p, prefix, moe, tokens_per_image, gelu):
        super().__init__()
        self.router = nn.Linear(p[prefix + "Router/dense/kernel"].shape[0], moe["num_experts"], bias=False)
        self.router.weight = nn.Parameter(p[prefix + "Router/dense/kernel"].T.contiguous())
        self.experts = Experts(p, prefix, gelu)
        self.moe = moe
        self.group = moe["group_images"] * tokens_per_image

    def forward(self, x):  # (B, T, D)
        B, T, D = x.shape
        flat = x.reshape(-1, D)
        N = flat.shape[0]
        S = min(self.group, N)
        if N % S:
            raise ValueError("bench_vs_torch: batch must be a multiple of the group size")
        G, E, k = N // S, self.moe["num_experts"], self.moe["k"]
        C = capacity(S * k, E, self.moe["capacity_factor"], self.moe["capacity_multiple_of"],
                     self.moe["capacity_rounding"])
        xs = flat.reshape(G, S, D)
        gates = torch.softmax(self.router(xs), dim=-1)  # (G, S, E)
        if self.training:  # importance loss: squared coefficient of variation of gate sums, per group
            importance = gates.sum(dim=1)  # (G, E)
            self.aux = (importance.var(dim=-1, unbiased=False) / importance.mean(dim=-1) ** 2).mean()
        top_gate, top_expert = torch.topk(gates, k, dim=-1)  # (G, S, k), ties -> lower index
        if self.moe["batch_priority"]:
            if torch.onnx.is_in_onnx_export():  # stable sort does not export; ONNX TopK
                # (opset 11+) puts equal values in index order, which is what stable means
                order = torch.topk(top_gate[..., 0], S, dim=-1).indices
            else:
                order = torch.sort(top_gate[..., 0], dim=-1, descending=True, stable=True).indices
        else:
            order = torch.arange(S).expand(G, S)
        # In priority order: choice j of every token, then choice j+1; a choice's slot is
        # the number of earlier choices of the same expert.
        expert_sorted = torch.gather(top_expert, 1, order.unsqueeze(-1).expand(G, S, k))
        onehot = F.one_hot(expert_sorted.transpose(1, 2).reshape(G, k * S), E)  # (G, kS, E)
        slot = (torch.cumsum(onehot, dim=1) - 1) * onehot
        kept = onehot * (slot < C)
        slot = slot.sum(-1).reshape(G, k, S).transpose(1, 2)  # (G, S_sorted, k)
        kept = kept.sum(-1).reshape(G, k, S).transpose(1, 2)
        inverse = torch.argsort(order, dim=1)
        slot = torch.gather(slot, 1, inverse.unsqueeze(-1).expand(G, S, k))
        kept = torch.gather(kept, 1, inverse.unsqueeze(-1).expand(G, S, k)).to(x.dtype)
        # dispatch (G, S, E, C): one-hot of (expert, slot) for kept choices
        dispatch = torch.einsum("gske,gskc->gsec", F.one_hot(top_expert, E).to(x.dtype) * kept.unsqueeze(-1),
                                F.one_hot(slot.clamp(max=C - 1), C).to(x.dtype))
        combine = dispatch * gates.unsqueeze(-1)
        expert_in = torch.einsum("gsec,gsd->egcd", dispatch, xs).reshape(E, G * C, D)
        expert_out = self.experts(expert_in).reshape(E, G, C, D)
        return torch.einsum("gsec,egcd->gsd", combine, expert_out).reshape(B, T, D)


class SoftMoe(nn.Module):
    """Soft-MoE (§4): dispatch softmax over tokens, combine softmax over slots."""

    def __init__(self, p, prefix, moe, tokens_per_image, gelu):
        super().__init__()
        mu = p[prefix + "Router/mu"]  # (D, E, P)
        mun = mu * torch.rsqrt((mu ** 2).sum(0, keepdim=True) + 1e-6)
        self.mu = nn.Parameter(mun * p[prefix + "Router/scale"])  # normalised once: it is a weight
        self.experts = Experts(p, prefix, gelu)
        self.group = moe["group_images"] * tokens_per_image

    def forward(self, x):
        B, T, D = x.shape
        _, E, P = self.mu.shape
        N = B * T
        S = min(self.group, N)
        if N % S:
            raise ValueError("bench_vs_torch: batch must be a multiple of the group size")
        G = N // S
        xs = x.reshape(G, S, D)
        xn = xs * torch.rsqrt((xs ** 2).sum(-1, keepdim=True) + 1e-6)
        logits = torch.einsum("gsd,dnp->gsnp", xn, self.mu)
        dispatch = torch.softmax(logits, dim=1)
        combine = torch.softmax(logits.reshape(G, S, E * P), dim=-1).reshape(G, S, E, P)
        slots = torch.einsum("gsnp,gsd->ngpd", dispatch, xs).reshape(E, G * P, D)
        out = self.experts(slots).reshape(E, G, P, D)
        return torch.einsum("gsnp,ngpd->gsd", combine, out).reshape(B, T, D)


class Mlp(nn.Module):
    def __init__(self, p, prefix, gelu):
        super().__init__()
        self.gelu = gelu
        self.fc0 = linear(p[prefix + "Mlp/Dense_0/kernel"], p[prefix + "Mlp/Dense_0/bias"])
        self.fc1 = linear(p[prefix + "Mlp/Dense_1/kernel"], p[prefix + "Mlp/Dense_1/bias"])

    def forward(self, x):
        return self.fc1(gelu(self.fc0(x), self.gelu))


def linear(kernel, bias):
    """nn.Linear from a Flax (in, out) kernel."""
    layer = nn.Linear(kernel.shape[0], kernel.shape[1], bias=bias is not None)
    layer.weight = nn.Parameter(kernel.T.contiguous())
    if bias is not None:
        layer.bias = nn.Parameter(bias)
    return layer


class Block(nn.Module):
    def __init__(self, p, i, cfg):
        super().__init__()
        pre = f"Encoder/encoderblock_{i}/"
        D, H, eps = cfg["hidden_size"], cfg["num_heads"], cfg["layer_norm_eps"]
        self.ln0 = nn.LayerNorm(D, eps=eps)
        self.ln1 = nn.LayerNorm(D, eps=eps)
        for ln, name in ((self.ln0, "LayerNorm_0"), (self.ln1, "LayerNorm_1")):
            ln.weight = nn.Parameter(p[pre + name + "/scale"])
            ln.bias = nn.Parameter(p[pre + name + "/bias"])
        self.attn = nn.MultiheadAttention(D, H, batch_first=True)
        a = pre + "SelfAttention/"
        w = [p[a + n + "/kernel"].reshape(D, D).T for n in ("query", "key", "value")]
        b = [p[a + n + "/bias"].reshape(D) for n in ("query", "key", "value")]
        self.attn.in_proj_weight = nn.Parameter(torch.cat(w).contiguous())
        self.attn.in_proj_bias = nn.Parameter(torch.cat(b))
        self.attn.out_proj.weight = nn.Parameter(p[a + "out/kernel"].reshape(D, D).T.contiguous())
        self.attn.out_proj.bias = nn.Parameter(p[a + "out/bias"])
        moe = {**MOE_DEFAULTS, **(cfg.get("moe") or {})}
        if moe.get("eval_capacity_factor") is not None:  # vmoe's inference factor (config.hpp)
            moe["capacity_factor"] = moe["eval_capacity_factor"]
        modelled = {"priority": "max_gate", "gating": "softmax_topk", "overflow": "drop",
                    "num_shared_experts": 0, "balance": "aux"}
        other = [f"{k} = {moe[k]}" for k, v in modelled.items() if moe.get(k, v) != v]
        if moe["capacity_factor"] is None:
            other.append("dropless (capacity_factor null)")
        if other:
            raise ValueError(f"bench_vs_torch: routing not modelled here: {', '.join(other)}")
        T = cfg["_tokens"]
        gelu = "none" if cfg.get("gelu", "tanh") == "erf" else "tanh"
        if i in moe["layers"]:
            self.mlp = (SoftMoe if moe["router"] == "soft" else TopKMoe)(p, pre + "Moe/", moe, T, gelu)
            if moe["router"] == "experts_choice":
                raise ValueError("bench_vs_torch: experts-choice routing is not modelled here")
        else:
            self.mlp = Mlp(p, pre, gelu)

    def forward(self, x):
        h = self.ln0(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln1(x))


class VisionMoe(nn.Module):
    def __init__(self, p, cfg):
        super().__init__()
        ph, pw = cfg["patch"]
        C, D = cfg["image"]["channels"], cfg["hidden_size"]
        gh, gw = cfg["image"]["height"] // ph, cfg["image"]["width"] // pw
        self.token = cfg.get("classifier", "token") == "token"
        cfg["_tokens"] = gh * gw + (1 if self.token else 0)
        self.embed = nn.Conv2d(C, D, (ph, pw), stride=(ph, pw))
        self.embed.weight = nn.Parameter(p["embedding/kernel"].permute(3, 2, 0, 1).contiguous())
        self.embed.bias = nn.Parameter(p["embedding/bias"])
        self.cls = nn.Parameter(p["cls"]) if self.token else None
        self.pos = nn.Parameter(p["Encoder/posembed_input/pos_embedding"])
        self.blocks = nn.ModuleList(Block(p, i, cfg) for i in range(cfg["num_layers"]))
        self.norm = nn.LayerNorm(D, eps=cfg["layer_norm_eps"])
        self.norm.weight = nn.Parameter(p["Encoder/encoder_norm/scale"])
        self.norm.bias = nn.Parameter(p["Encoder/encoder_norm/bias"])
        self.pre_logits = None
        if cfg.get("representation_size"):
            self.pre_logits = linear(p["pre_logits/kernel"], p["pre_logits/bias"])
        self.head = linear(p["head/kernel"], p["head/bias"])

    def forward(self, images):  # (B, H, W, C)
        x = self.embed(images.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)  # (B, np, D)
        if self.token:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        x = x[:, 0] if self.token else x.mean(1)
        if self.pre_logits is not None:
            x = torch.tanh(self.pre_logits(x))
        return self.head(x)


# ---------------------------------------------------------------------------
# Check against vmoe and time
# ---------------------------------------------------------------------------

def check(model, cfg, model_path, vmoe, count=3):
    """Logits of `vmoe classify --json` on random images against this model's."""
    img = cfg["image"]
    H, W, C = img["height"], img["width"], img["channels"]
    lo, hi = img.get("value_range", [-1, 1])
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        files, pixels = [], []
        for i in range(count):
            px = rng.integers(0, 256, size=(H, W, C), dtype=np.uint8)
            name = os.path.join(tmp, f"{i}.{'pgm' if C == 1 else 'ppm'}")
            with open(name, "wb") as f:
                f.write(f"{'P5' if C == 1 else 'P6'}\n{W} {H}\n255\n".encode() + px.tobytes())
            files.append(name)
            pixels.append(px)
        # --resize none: the engine gets exactly these H x W pixels, whatever the model's rule
        out = subprocess.run([vmoe, "classify", "-m", model_path, "--json", "--resize", "none", *files], check=True,
                             capture_output=True, text=True).stdout
        ours = np.array([r["logits"] for r in json.loads(out)["results"]], dtype=np.float64)
        images = torch.from_numpy(lo + (hi - lo) * np.stack(pixels).astype(np.float32) / 255.0).float()
        with torch.inference_mode():
            theirs = model(images).double().numpy()
    diff = float(np.abs(ours - theirs).max())
    scale = max(1.0, float(np.abs(ours).max()))
    if diff > 1e-3 * scale:
        sys.exit(f"bench_vs_torch.py: logits differ from vmoe's by {diff:.3g} (scale {scale:.3g})")
    return diff


def bench(model, cfg, batch, seconds):
    img = cfg["image"]
    images = torch.rand(batch, img["height"], img["width"], img["channels"]) * 2 - 1
    with torch.inference_mode():
        model(images)  # warm-up
        n, start = 0, time.perf_counter()
        while n < 2 or time.perf_counter() - start < seconds:
            model(images)
            n += 1
        elapsed = time.perf_counter() - start
    return batch * n / elapsed


def bench_train(model, cfg, batch, seconds, importance_weight=0.005):
    img = cfg["image"]
    images = torch.rand(batch, img["height"], img["width"], img["channels"]) * 2 - 1
    labels = torch.randint(0, cfg["num_classes"], (batch,))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    top_k = [m for m in model.modules() if isinstance(m, TopKMoe)]

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        if top_k:
            loss = loss + importance_weight * sum(m.aux for m in top_k)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    n, start = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - start < seconds:
        step()
        n += 1
    return batch * n / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--batch", default="1,8,64,256", help="comma-separated batch sizes")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check", metavar="VMOE", help="compare logits with this vmoe binary first")
    ap.add_argument("--train", action="store_true", help="time training steps (AdamW) instead of inference")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params, cfg = read_safetensors(args.model)
    model = VisionMoe(params, cfg).eval()
    del params
    if args.check:
        diff = check(model, cfg, args.model, args.check)
        print(json.dumps({"check": "ok", "max_abs_logit_diff": diff}), flush=True)
    for b in (int(s) for s in args.batch.split(",")):
        ips = (bench_train if args.train else bench)(model, cfg, b, args.seconds)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        line = {"batch": b, "images_per_s": ips, "peak_rss_kb": rss}
        if args.train:
            line["mode"] = "train"
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
