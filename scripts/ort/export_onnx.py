#!/usr/bin/python3
"""ONNX export of the PyTorch peer, for the ONNX Runtime column of scripts/bench_all.sh.

  export_onnx.py -m MODEL.safetensors --batch 1,8,64 -o DIR [--check VMOE_BINARY]

The model is scripts/bench_vs_torch.py's nn.Module (same weights, read from the vmoe
file), exported with torch.onnx.export (opset 17) once per batch size with static shapes:
the V-MoE's groups and expert capacity depend on the batch (S = min(group, B*T) tokens
per group, C = capacity(S*k)), and the export fixes them, as the reference JAX code does
per compiled batch. Routing stays the one-hot dispatch/combine einsums of that code
(top-k, BPR sort, cumsum slots, capacity mask); tanh-GELU is spelled in the op order ONNX
Runtime fuses into FastGelu (bench_vs_torch.gelu). Writes, per batch B:
  DIR/b{B}.onnx          the model (input "images" (B, H, W, C) float32, output "logits")
  DIR/b{B}.inputs.f32    with --check: B random images, little-endian float32, as fed
  DIR/b{B}.check.json    with --check: vmoe's logits on those images
                         ({"shape", "vmoe_logits", "torch_max_abs_diff"})
--check runs `VMOE classify --json --resize none` on the same B images (PGM/PPM files of
random pixels), compares PyTorch's logits with them (1e-3 of the logits' scale, as
bench_vs_torch.py) and fails loudly; scripts/ort/bench_ort.mjs then compares ONNX
Runtime's logits with the same file before it times anything.
Models above 2 GB (soft-s16) are written with their weights as external data beside
the .onnx file (torch decides this by size).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import bench_vs_torch as peer  # noqa: E402  (also exits with a message when torch is missing)

import torch  # noqa: E402


def random_images(cfg, count, seed):
    """(count, H, W, C) uint8 pixels and the model's float input for them."""
    img = cfg["image"]
    H, W, C = img["height"], img["width"], img["channels"]
    lo, hi = img.get("value_range", [-1, 1])
    px = np.random.default_rng(seed).integers(0, 256, size=(count, H, W, C), dtype=np.uint8)
    return px, (lo + (hi - lo) * px.astype(np.float32) / 255.0).astype(np.float32)


def vmoe_logits(vmoe, model_path, pixels):
    """`vmoe classify --json --resize none` on the images, written as PGM/PPM files."""
    n, H, W, C = pixels.shape
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in range(n):
            name = os.path.join(tmp, f"{i:05d}.{'pgm' if C == 1 else 'ppm'}")
            with open(name, "wb") as f:
                f.write(f"{'P5' if C == 1 else 'P6'}\n{W} {H}\n255\n".encode() + pixels[i].tobytes())
            files.append(name)
        out = subprocess.run([vmoe, "classify", "-m", model_path, "--json", "--resize", "none", *files],
                             check=True, capture_output=True, text=True).stdout
    results = sorted(json.loads(out)["results"], key=lambda r: r["image"])
    return np.array([r["logits"] for r in results], dtype=np.float64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--batch", default="1,8,64,256", help="comma-separated batch sizes")
    ap.add_argument("-o", "--out", required=True, help="output folder")
    ap.add_argument("--check", metavar="VMOE", help="vmoe binary whose logits ORT must match")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(2)
    batches = [int(s) for s in args.batch.split(",")]
    params, cfg = peer.read_safetensors(args.model)
    # vmoe's logits first, before the PyTorch model holds its copy of the weights: the
    # largest model (soft-s16, 3.7 GB of weights) then never has both in memory at once.
    checks = {}
    if args.check:
        del params
        for b in batches:
            pixels, images = random_images(cfg, b, seed=b)
            checks[b] = (images, vmoe_logits(args.check, args.model, pixels))
        params, cfg = peer.read_safetensors(args.model)
    model = peer.VisionMoe(params, cfg).eval()
    del params
    img = cfg["image"]
    for b in batches:
        path = os.path.join(args.out, f"b{b}.onnx")
        example = torch.zeros(b, img["height"], img["width"], img["channels"])
        torch.onnx.export(model, example, path, opset_version=17, input_names=["images"],
                          output_names=["logits"], do_constant_folding=True)
        if b not in checks:
            continue
        images, ours = checks[b]
        with torch.inference_mode():
            theirs = model(torch.from_numpy(images)).double().numpy()
        diff = float(np.abs(ours - theirs).max())
        scale = max(1.0, float(np.abs(ours).max()))
        if diff > 1e-3 * scale:
            sys.exit(f"export_onnx.py: PyTorch logits differ from vmoe's by {diff:.3g} (scale {scale:.3g}) "
                     f"at batch {b}: the exported model would not be the same model")
        images.astype("<f4").tofile(os.path.join(args.out, f"b{b}.inputs.f32"))
        with open(os.path.join(args.out, f"b{b}.check.json"), "w") as f:
            json.dump({"shape": list(images.shape), "vmoe_logits": ours.tolist(),
                       "torch_max_abs_diff": diff}, f)
        print(json.dumps({"batch": b, "onnx": path, "torch_max_abs_logit_diff": diff}), flush=True)


if __name__ == "__main__":
    main()
