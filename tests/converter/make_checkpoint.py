#!/usr/bin/python3
"""Writes small checkpoints in the format of the released V-MoE checkpoints.

The layout follows google-research/vmoe (vmoe/checkpoints/partitioned.py and
serialization.py), written with msgpack directly so that no JAX/Flax is needed:

  PREFIX.index                    msgpack map {shard_count, index, [version]}; index
                                  mirrors the parameter tree with ext-8 (index info)
                                  leaves: (packed shaped array, packed n-d slices, shards)
  PREFIX.data-%05d-of-%05d        msgpack map {'__msgpack_array_chunk_a87ca2__': True,
                                  '<leaf number>': [[[sub-chunk ext-1 ndarrays], ext-6
                                  n-d slice], ...]}

Leaf numbers are depth-first with keys sorted as plain strings (jax.tree_flatten of a
dict), so 'encoderblock_10' comes before 'encoderblock_2'.

As a library (used by test_convert.py and by end-to-end tests):
    params = make_vmoe_params(np.random.default_rng(0), ...)     # flat 'a/b/c' -> f32
    ckpt = build_checkpoint(params, shard_count=3, splits=..., bf16=..., subchunk=...)
    write_checkpoint_files(prefix, ckpt)
    ckpt.expected   # what the converter must produce, bit for bit (bf16 leaves rounded)

As a command: a tiny V-MoE S/32-shaped checkpoint (8 blocks, patch 32, 8 experts, MoE
in blocks 5 and 7, CLS token, 1000 classes; hidden size 32 instead of 512):
    make_checkpoint.py --out DIR/vmoe_s32_last2_ilsvrc2012_randaug_light1 [--image-size 224]
    make_checkpoint.py --out DIR/vmoe_s32_last2_ilsvrc2012_randaug_light1_ft_ilsvrc2012 \
                       --image-size 384
The 224 px one has pre-logits (like the from-scratch model), the 384 px one has none
(like the fine-tune).  Name the prefix like a released checkpoint (as above) and
convert_vmoe_checkpoint.py finds k and the recipe by name; otherwise pass --k 2.
"""

import argparse
import os
import sys

import msgpack
import numpy as np

ARRAY_CHUNKS_MAGIC_KEY = '__msgpack_array_chunk_a87ca2__'
INDEX_VERSION_V1 = '20220622'


# ---------------------------------------------------------------------------------
# Encoders of the reference's msgpack extension types.


def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


def ndarray_ext(shape, dtype_name, raw):
    """ext 1: packb((shape, dtype name, C-order bytes))."""
    return msgpack.ExtType(1, pack([list(shape), dtype_name, raw]))


def slice_bytes(start, stop, step=None):
    """Payload of ext 5: packb((start, stop, step))."""
    return pack([start, stop, step])


def slice_nd_bytes(region):
    """Payload of ext 6: packb(tuple of slice payloads)."""
    return pack([slice_bytes(s, e) for s, e in region])


def slice_nd_ext(region):
    return msgpack.ExtType(6, slice_nd_bytes(region))


def shaped_array_bytes(shape, dtype_name):
    """Payload of ext 4: packb((shape, dtype name, weak_type, named_shape))."""
    return pack([list(shape), dtype_name, False, {}])


def index_info_ext(shape, dtype_name, regions, shards):
    """ext 8: packb((shaped array payload, tuple of n-d slice payloads, tuple of shards))."""
    return msgpack.ExtType(8, pack([shaped_array_bytes(shape, dtype_name),
                                    [slice_nd_bytes(r) for r in regions], list(shards)]))


def bf16_bits(a):
    """float32 -> bfloat16 bit patterns (round to nearest even, like jnp.bfloat16)."""
    u = np.array(a, dtype=np.float32, order="C").view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def bf16_to_f32(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


# ---------------------------------------------------------------------------------
# Checkpoints.


def leaf_order(paths):
    """Leaf numbering of the reference: DFS over the nested dict, keys sorted as strings."""
    tree = nest({p: p for p in paths})
    out = []

    def walk(node):
        for key in sorted(node):
            if isinstance(node[key], dict):
                walk(node[key])
            else:
                out.append(node[key])
    walk(tree)
    return out


def nest(flat):
    tree = {}
    for path, value in flat.items():
        node = tree
        parts = path.split('/')
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return tree


class Checkpoint:
    def __init__(self, index, shards, order, expected, shard_count):
        self.index = index          # the index object (nested dict with ExtType leaves)
        self.shards = shards        # shard number -> shard map
        self.order = order          # leaf paths by leaf number
        self.expected = expected    # path -> float32 array the converter must produce
        self.shard_count = shard_count

    def number(self, path):
        return self.order.index(path)


def default_splits(params, shard_count):
    """Realistic layout: expert arrays split by expert across two shards (like the
    'expert' mesh axis); every other leaf whole in one shard, round robin."""
    splits = {}
    for n, path in enumerate(leaf_order(params)):
        a = params[path]
        full = tuple((0, d) for d in a.shape)
        if '/Moe/Mlp/' in path and shard_count > 1 and a.shape[0] >= 2:
            h = a.shape[0] // 2
            s0 = n % shard_count
            splits[path] = [(((0, h),) + full[1:], s0),
                            (((h, a.shape[0]),) + full[1:], (s0 + 1) % shard_count)]
        else:
            splits[path] = [(full, n % shard_count)]
    return splits


def build_checkpoint(params, shard_count=1, splits=None, bf16=(), subchunk=None, version=True):
    """params: flat dict 'a/b/c' -> float32 array.  splits: path -> [(region, shard)]
    with region a tuple of (start, stop) per axis (regions outside the array are written
    as asked, with filler data, so that tests can make bad checkpoints).  bf16: paths
    stored as bfloat16.  subchunk: max elements per sub-chunk (None: one sub-chunk)."""
    order = leaf_order(params)
    splits = dict(default_splits(params, shard_count), **(splits or {}))
    shards = {}
    index_leaves = {}
    expected = {}
    for number, path in enumerate(order):
        a = np.array(params[path], dtype=np.float32, order="C")  # keeps 0-d arrays 0-d
        is_bf16 = path in bf16
        dtype_name = 'bfloat16' if is_bf16 else 'float32'
        stored = bf16_bits(a) if is_bf16 else a
        expected[path] = bf16_to_f32(stored) if is_bf16 else a.copy()
        pairs = sorted(splits[path])  # the reference sorts the global slices
        index_leaves[path] = index_info_ext(a.shape, dtype_name, [r for r, _ in pairs],
                                            [s for _, s in pairs])
        for region, shard in pairs:
            inside = all(0 <= s <= e <= d for (s, e), d in zip(region, a.shape))
            if inside:
                chunk = stored[tuple(slice(s, e) for s, e in region)].reshape(-1)
            else:
                n = int(np.prod([e - s for s, e in region]))
                chunk = np.arange(n, dtype=stored.dtype)
            step = subchunk or max(1, chunk.size)
            subs = [chunk[i:i + step] for i in range(0, chunk.size, step)] or [chunk]
            exts = [ndarray_ext(sub.shape, dtype_name, sub.tobytes()) for sub in subs]
            shard_map = shards.setdefault(shard, {ARRAY_CHUNKS_MAGIC_KEY: True})
            shard_map.setdefault(str(number), []).append([exts, slice_nd_ext(region)])
    index = {'shard_count': shard_count, 'index': nest(index_leaves)}
    if version:
        index['version'] = INDEX_VERSION_V1
    return Checkpoint(index, shards, order, expected, shard_count)


def shard_path(prefix, shard, shard_count):
    return '%s.data-%05d-of-%05d' % (prefix, shard, shard_count)


def write_checkpoint_files(prefix, ckpt):
    d = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(d, exist_ok=True)
    with open(prefix + '.index', 'wb') as f:
        f.write(pack(ckpt.index))
    paths = []
    for shard, shard_map in sorted(ckpt.shards.items()):
        path = shard_path(prefix, shard, ckpt.shard_count)
        with open(path, 'wb') as f:
            f.write(pack(shard_map))
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------
# Parameter trees with the V-MoE layout (DESIGN §2).


def make_vmoe_params(rng, num_layers=8, hidden=32, heads=8, mlp=64, experts=8, moe_layers=(5, 7),
                     patch=32, image_size=224, num_classes=1000, representation_size=None,
                     token=True, channels=3):
    D, H, M, E = hidden, heads, mlp, experts
    Dh = D // H
    grid = (image_size // patch) ** 2
    T = grid + (1 if token else 0)
    p = {}

    def normal(shape, scale):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    p['embedding/kernel'] = normal((patch, patch, channels, D), 1.0 / np.sqrt(patch * patch * channels))
    p['embedding/bias'] = normal((D,), 0.02)
    if token:
        p['cls'] = normal((1, 1, D), 0.02)
    p['Encoder/posembed_input/pos_embedding'] = normal((1, T, D), 0.02)
    for i in range(num_layers):
        b = 'Encoder/encoderblock_%d/' % i
        for ln in ('LayerNorm_0', 'LayerNorm_1'):
            p[b + ln + '/scale'] = (1.0 + normal((D,), 0.1)).astype(np.float32)
            p[b + ln + '/bias'] = normal((D,), 0.02)
        for qkv in ('query', 'key', 'value'):
            p[b + 'SelfAttention/%s/kernel' % qkv] = normal((D, H, Dh), 1.0 / np.sqrt(D))
            p[b + 'SelfAttention/%s/bias' % qkv] = normal((H, Dh), 0.02)
        p[b + 'SelfAttention/out/kernel'] = normal((H, Dh, D), 1.0 / np.sqrt(D))
        p[b + 'SelfAttention/out/bias'] = normal((D,), 0.02)
        if i in moe_layers:
            p[b + 'Moe/Mlp/Dense_0/kernel'] = normal((E, D, M), 1.0 / np.sqrt(D))
            p[b + 'Moe/Mlp/Dense_0/bias'] = normal((E, M), 0.02)
            p[b + 'Moe/Mlp/Dense_1/kernel'] = normal((E, M, D), 1.0 / np.sqrt(M))
            p[b + 'Moe/Mlp/Dense_1/bias'] = normal((E, D), 0.02)
            p[b + 'Moe/Router/dense/kernel'] = normal((D, E), 1.0 / np.sqrt(D))
        else:
            p[b + 'Mlp/Dense_0/kernel'] = normal((D, M), 1.0 / np.sqrt(D))
            p[b + 'Mlp/Dense_0/bias'] = normal((M,), 0.02)
            p[b + 'Mlp/Dense_1/kernel'] = normal((M, D), 1.0 / np.sqrt(M))
            p[b + 'Mlp/Dense_1/bias'] = normal((D,), 0.02)
    p['Encoder/encoder_norm/scale'] = (1.0 + normal((D,), 0.1)).astype(np.float32)
    p['Encoder/encoder_norm/bias'] = normal((D,), 0.02)
    if representation_size:
        p['pre_logits/kernel'] = normal((D, representation_size), 1.0 / np.sqrt(D))
        p['pre_logits/bias'] = normal((representation_size,), 0.02)
    p['head/kernel'] = normal((representation_size or D, num_classes), 1.0 / np.sqrt(representation_size or D))
    p['head/bias'] = normal((num_classes,), 0.02)
    return p


def tiny_s32_checkpoint(image_size=224, hidden=32, seed=0, shard_count=3, version=True):
    """The tiny S/32-shaped checkpoint of the command line, as a Checkpoint."""
    rng = np.random.default_rng(seed)
    params = make_vmoe_params(rng, num_layers=8, hidden=hidden, heads=8, mlp=2 * hidden, experts=8,
                              moe_layers=(5, 7), patch=32, image_size=image_size, num_classes=1000,
                              representation_size=hidden if image_size == 224 else None)
    bf16 = {'Encoder/posembed_input/pos_embedding', 'Encoder/encoderblock_7/Moe/Mlp/Dense_1/kernel'}
    return build_checkpoint(params, shard_count=shard_count, bf16=bf16, subchunk=1000, version=version)


def main(argv=None):
    ap = argparse.ArgumentParser(description='Write a tiny V-MoE S/32-shaped checkpoint in the '
                                             'released format (PREFIX.index + PREFIX.data-*).')
    ap.add_argument('--out', required=True, metavar='PREFIX', help='checkpoint prefix to write')
    ap.add_argument('--image-size', type=int, choices=[224, 384], default=224)
    ap.add_argument('--hidden', type=int, default=32, help='hidden size (multiple of 8; default 32)')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--shards', type=int, default=3)
    ap.add_argument('--no-version', action='store_true', help='write the old index (no "version")')
    ap.add_argument('--npz', metavar='FILE',
                    help='also save the float32 arrays the converter must produce (keys = names)')
    args = ap.parse_args(argv)
    if args.hidden < 8 or args.hidden % 8:
        ap.error('--hidden must be a positive multiple of 8')
    if args.shards < 1:
        ap.error('--shards must be at least 1')
    ckpt = tiny_s32_checkpoint(args.image_size, args.hidden, args.seed, args.shards, not args.no_version)
    files = write_checkpoint_files(args.out, ckpt)
    if args.npz:
        np.savez(args.npz, **ckpt.expected)
    by_name = {224: 'vmoe_s32_last2_ilsvrc2012_randaug_light1',
               384: 'vmoe_s32_last2_ilsvrc2012_randaug_light1_ft_ilsvrc2012'}
    named = os.path.basename(args.out) == by_name[args.image_size]
    sys.stderr.write('wrote %s.index and %d shard(s); convert with:\n  scripts/convert_vmoe_checkpoint.py '
                     '%s -o MODEL.safetensors%s\n' % (args.out, len(files), args.out,
                                                      '' if named else ' --name ' + by_name[args.image_size]))
    return 0


if __name__ == '__main__':
    sys.exit(main())
