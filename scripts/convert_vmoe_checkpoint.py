#!/usr/bin/python3
"""Convert an official V-MoE checkpoint (google-research/vmoe) to a vmoe model file.

    convert_vmoe_checkpoint.py PREFIX -o MODEL.safetensors [--image-size N] [--k K]
                               [--labels FILE] [--name NAME] [--capacity-factor C]
                               [--routing bpr|vanilla] [--check]

PREFIX is the checkpoint prefix: the files PREFIX.index and
PREFIX.data-00000-of-0000N must exist (e.g. the files of
gs://vmoe_checkpoints/vmoe_s32_last2_ilsvrc2012_randaug_light1).

Needs only the Python standard library, numpy and msgpack (Debian's python3-numpy
and python3-msgpack); no JAX, no Flax, no TensorFlow.  The format is described in
docs/CONVERTER.md.  Exit status: 0 on success, 1 on a bad or unsupported checkpoint
(one line naming the file or the parameter), 2 on bad usage.
"""

import argparse
import errno
import json
import math
import mmap
import os
import re
import sys
import tempfile

import msgpack
import numpy as np

PROG = 'convert_vmoe_checkpoint'
INDEX_VERSION_V1 = '20220622'
ARRAY_CHUNKS_MAGIC_KEY = '__msgpack_array_chunk_a87ca2__'

# msgpack extension type codes of vmoe/checkpoints/serialization.py.
EXT_NDARRAY = 1
EXT_NATIVE_COMPLEX = 2
EXT_NPSCALAR = 3
EXT_SHAPED_ARRAY = 4
EXT_SLICE = 5
EXT_SLICE_ND = 6
EXT_SLICE_ND_ARRAY = 7
EXT_INDEX_INFO = 8

# Storage dtypes we can turn into float32.  bfloat16 is not a numpy dtype: its bits
# are the top half of a float32, so widening is exact.
ITEMSIZE = {'float32': 4, 'bfloat16': 2, 'float16': 2, 'float64': 8}

# What the tree cannot tell: image size and k (and the evaluation capacity factor
# the reference configs use).  Sources: vmoe/configs/vmoe_paper/*.py.
KNOWN_CHECKPOINTS = {
    # ViT-S/32, E=8, K=2, Last 2; eval overrides capacity_factor to 4.0.
    'vmoe_s32_last2_ilsvrc2012_randaug_light1':
        dict(image_size=224, k=2, capacity_factor=4.0),
    # Fine-tuned at 384 px with capacity_factor 1.5 (also used for evaluation).
    'vmoe_s32_last2_ilsvrc2012_randaug_light1_ft_ilsvrc2012':
        dict(image_size=384, k=2, capacity_factor=1.5),
    # 1000-epoch variant; no config is published, pre-training defaults assumed.
    'vmoe_s32_last2_ilsvrc2012_randaug_medium':
        dict(image_size=224, k=2, capacity_factor=1.05),
    # ViT-B/16, E=8, K=2, Every 2 on ImageNet-21k (21843 classes), capacity 1.05.
    'vmoe_b16_imagenet21k_randaug_strong':
        dict(image_size=224, k=2, capacity_factor=1.05),
    # Fine-tuned at 384 px with capacity_factor 1.5.
    'vmoe_b16_imagenet21k_randaug_strong_ft_ilsvrc2012':
        dict(image_size=384, k=2, capacity_factor=1.5),
}

DEFAULT_LABELS_1K = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..',
                                 'data', 'labels', 'imagenet1k.txt')


class ConvertError(Exception):
    """A bad or unsupported checkpoint: exit status 1."""


class UsageError(Exception):
    """Flags that cannot work with this checkpoint: exit status 2."""


def log(msg):
    sys.stderr.write(msg + '\n')
    sys.stderr.flush()


# ---------------------------------------------------------------------------------
# msgpack decoding.  Extension payloads are decoded eagerly inside the ext hook (so a
# shard never holds both the raw payload and the decoded buffer for long); a payload
# that cannot be decoded becomes a BadExt marker, reported later with the leaf path.


class BadExt:
    def __init__(self, code, why):
        self.code = code
        self.why = why

    def describe(self):
        return self.why


class NdPayload:
    """An ndarray (ext 1) or numpy scalar (ext 3): shape, dtype name, C-order bytes."""

    def __init__(self, shape, dtype, buf):
        self.shape = shape
        self.dtype = dtype
        self.buf = buf


class ShapedArray:
    def __init__(self, shape, dtype):
        self.shape = shape
        self.dtype = dtype


class SliceNd(tuple):
    """A decoded n-d slice (ext 6): a tuple of (start, stop, step)."""


class Slice(tuple):
    """A decoded single slice (ext 5)."""


class IndexInfo:
    def __init__(self, shaped, slices, shards):
        self.shaped = shaped
        self.slices = slices  # list of tuples of (start, stop, step)
        self.shards = shards


def _as_str(x, what):
    if isinstance(x, bytes):
        try:
            return x.decode('utf-8')
        except UnicodeDecodeError:
            raise ValueError('%s is not valid UTF-8' % what)
    if isinstance(x, str):
        return x
    raise ValueError('%s is not a string' % what)


def _as_shape(x, what):
    if not isinstance(x, (list, tuple)):
        raise ValueError('%s is not a list of dimensions' % what)
    dims = []
    for d in x:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0 or d > (1 << 40):
            raise ValueError('%s has a bad dimension %r' % (what, d))
        dims.append(d)
    return tuple(dims)


def _unpack_payload(data):
    return msgpack.unpackb(data, raw=True, use_list=True, strict_map_key=False)


def _decode_ndarray(data):
    obj = _unpack_payload(data)
    if not isinstance(obj, list) or len(obj) != 3:
        raise ValueError('ndarray payload is not (shape, dtype, bytes)')
    shape = _as_shape(obj[0], 'ndarray shape')
    dtype = _as_str(obj[1], 'ndarray dtype')
    if not isinstance(obj[2], bytes):
        raise ValueError('ndarray data is not a byte string')
    return NdPayload(shape, dtype, obj[2])


def _decode_shaped_array(data):
    obj = _unpack_payload(data)
    if not isinstance(obj, list) or len(obj) < 2:
        raise ValueError('shaped-array payload is not (shape, dtype, weak_type, named_shape)')
    return ShapedArray(_as_shape(obj[0], 'array shape'), _as_str(obj[1], 'array dtype'))


def _slice_from_obj(obj):
    if not isinstance(obj, list) or len(obj) != 3:
        raise ValueError('slice payload is not (start, stop, step)')
    for v in obj:
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise ValueError('slice payload has a non-integer %r' % (v,))
    return tuple(obj)


def _decode_slice(data):
    return Slice(_slice_from_obj(_unpack_payload(data)))


def _decode_slice_nd(data):
    obj = _unpack_payload(data)
    if not isinstance(obj, list):
        raise ValueError('n-d slice payload is not a tuple of slices')
    out = []
    for s in obj:
        if not isinstance(s, bytes):
            raise ValueError('n-d slice element is not a packed slice')
        out.append(_decode_slice(s))
    return SliceNd(out)


def _decode_index_info(data):
    obj = _unpack_payload(data)
    if not isinstance(obj, list) or len(obj) != 3:
        raise ValueError('index-info payload is not (shaped array, slices, shards)')
    shaped_bytes, slices, shards = obj
    if not isinstance(shaped_bytes, bytes):
        raise ValueError('index-info shaped array is not a packed shaped array')
    shaped = _decode_shaped_array(shaped_bytes)
    if not isinstance(slices, list) or not isinstance(shards, list):
        raise ValueError('index-info slices/shards are not lists')
    out_slices = []
    for s in slices:
        if not isinstance(s, bytes):
            raise ValueError('index-info slice is not a packed n-d slice')
        out_slices.append(_decode_slice_nd(s))
    for s in shards:
        if not isinstance(s, int) or isinstance(s, bool):
            raise ValueError('index-info shard id %r is not an integer' % (s,))
    if len(out_slices) != len(shards):
        raise ValueError('index-info lists %d slices but %d shard ids' % (len(out_slices), len(shards)))
    return IndexInfo(shaped, out_slices, list(shards))


_EXT_DECODERS = {
    EXT_NDARRAY: _decode_ndarray,
    EXT_NPSCALAR: _decode_ndarray,
    EXT_SHAPED_ARRAY: _decode_shaped_array,
    EXT_SLICE: _decode_slice,
    EXT_SLICE_ND: _decode_slice_nd,
    EXT_INDEX_INFO: _decode_index_info,
}


def _ext_hook(code, data):
    decoder = _EXT_DECODERS.get(code)
    if decoder is None:
        return BadExt(code, 'unknown msgpack extension type %d' % code)
    try:
        return decoder(data)
    except Exception as e:  # noqa: BLE001 - any decoding failure is a bad payload
        return BadExt(code, 'malformed msgpack extension type %d (%s)' % (code, e))


def unpack_file(path, what):
    """Reads a whole msgpack file (memory-mapped); errors name the file."""
    try:
        fh = open(path, 'rb')
    except FileNotFoundError:
        raise ConvertError('%s: missing %s' % (path, what))
    except OSError as e:
        raise ConvertError('%s: cannot open %s (%s)' % (path, what, e.strerror))
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise ConvertError('%s: empty %s (truncated download?)' % (path, what))
        try:
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise ConvertError('%s: cannot map %s (%s)' % (path, what, e))
        try:
            return msgpack.unpackb(buf, raw=False, use_list=True, ext_hook=_ext_hook,
                                   strict_map_key=False)
        except msgpack.ExtraData:
            raise ConvertError('%s: trailing bytes after the msgpack data of the %s' % (path, what))
        except (ValueError, msgpack.UnpackException, TypeError, OverflowError, RecursionError) as e:
            msg = str(e) or type(e).__name__
            if 'incomplete' in msg.lower():
                raise ConvertError('%s: truncated %s (msgpack data ends early; incomplete download?)'
                                   % (path, what))
            raise ConvertError('%s: corrupt %s (not valid msgpack data: %s)' % (path, what, msg))
        finally:
            buf.close()


# ---------------------------------------------------------------------------------
# The index.


def flatten_index(tree, path, out):
    """Depth-first leaves with keys sorted as strings: the checkpoints' leaf numbering."""
    for key in tree:
        if not isinstance(key, str):
            raise ConvertError('index: %s has a non-string key %r' % (path or 'the tree', key))
    for key in sorted(tree):
        value = tree[key]
        p = key if not path else path + '/' + key
        if isinstance(value, dict):
            if ARRAY_CHUNKS_MAGIC_KEY in value:
                raise ConvertError('index: %s is an array-chunk map, not an index entry' % p)
            flatten_index(value, p, out)
        else:
            out.append((p, value))


def normalize_region(region, shape):
    """Index/shard n-d slice -> tuple of (start, stop); None if not a plain box."""
    if len(region) != len(shape):
        return None, 'has %d axes but the array has %d' % (len(region), len(shape))
    out = []
    for (start, stop, step), dim in zip(region, shape):
        start = 0 if start is None else start
        stop = dim if stop is None else stop
        if step not in (None, 1):
            return None, 'is strided (step %r)' % (step,)
        if not (0 <= start <= stop <= dim):
            return None, 'lies outside the array'
        out.append((start, stop))
    return tuple(out), None


def region_str(region):
    return '[' + ', '.join('%d:%d' % se for se in region) + ']'


def region_raw_str(region):
    parts = []
    for start, stop, step in region:
        parts.append('%s:%s%s' % ('' if start is None else start, '' if stop is None else stop,
                                  '' if step is None else ':%s' % step))
    return '[' + ', '.join(parts) + ']'


def volume(region):
    v = 1
    for start, stop in region:
        v *= stop - start
    return v


def regions_overlap(a, b):
    return all(sa < eb and sb < ea for (sa, ea), (sb, eb) in zip(a, b))


def check_coverage(path, shape, regions):
    total = 1
    for d in shape:
        total *= d
    covered = sum(volume(r) for r in regions)
    if len(regions) <= 256:
        for i in range(len(regions)):
            for j in range(i + 1, len(regions)):
                if regions_overlap(regions[i], regions[j]):
                    raise ConvertError('index: %s: chunks %s and %s overlap'
                                       % (path, region_str(regions[i]), region_str(regions[j])))
    else:
        count = np.zeros(shape, dtype=np.uint8)
        for r in regions:
            view = count[tuple(slice(s, e) for s, e in r)]
            if view.size and view.max() > 0:
                raise ConvertError('index: %s: chunk %s overlaps another chunk' % (path, region_str(r)))
            view += 1
    if covered != total:
        raise ConvertError('index: %s: its chunks cover %d of the %d elements of shape %s'
                           % (path, covered, total, shape_str(shape)))


def shape_str(shape):
    return '(' + ', '.join(str(d) for d in shape) + ')'


class Leaf:
    def __init__(self, number, path, info):
        self.number = number
        self.path = path
        self.shape = info.shaped.shape
        self.dtype = info.shaped.dtype
        self.chunks = []  # [(region, shard)]
        self.info = info


def read_index(prefix):
    index_path = prefix + '.index'
    top = unpack_file(index_path, 'checkpoint index')
    if not isinstance(top, dict) or 'index' not in top or 'shard_count' not in top:
        raise ConvertError('%s: not a V-MoE checkpoint index (expected a map with "shard_count" and '
                           '"index")' % index_path)
    version = top.get('version')
    if version is not None and version != INDEX_VERSION_V1:
        raise ConvertError('%s: unsupported index version %r (known: %s or none)'
                           % (index_path, version, INDEX_VERSION_V1))
    shard_count = top['shard_count']
    if not isinstance(shard_count, int) or isinstance(shard_count, bool) or not 1 <= shard_count <= 99999:
        raise ConvertError('%s: bad shard_count %r' % (index_path, shard_count))
    tree = top['index']
    if not isinstance(tree, dict):
        raise ConvertError('%s: "index" is not a nested map of parameters' % index_path)
    flat = []
    flatten_index(tree, '', flat)
    leaves = []
    for number, (path, value) in enumerate(flat):
        if isinstance(value, BadExt):
            raise ConvertError('%s: leaf %s: %s' % (index_path, path, value.describe()))
        if not isinstance(value, IndexInfo):
            raise ConvertError('%s: leaf %s is not an index entry (found %s)'
                               % (index_path, path, type(value).__name__))
        leaf = Leaf(number, path, value)
        regions = []
        for raw, shard in zip(value.slices, value.shards):
            region, why = normalize_region(raw, leaf.shape)
            if region is None:
                raise ConvertError('%s: leaf %s: chunk %s %s of shape %s'
                                   % (index_path, path, region_raw_str(raw), why, shape_str(leaf.shape)))
            if not 0 <= shard < shard_count:
                raise ConvertError('%s: leaf %s: chunk %s is in shard %d but there are %d shards'
                                   % (index_path, path, region_str(region), shard, shard_count))
            regions.append(region)
            leaf.chunks.append((region, shard))
        check_coverage(path, leaf.shape, regions)
        leaves.append(leaf)
    return dict(path=index_path, version=version, shard_count=shard_count, leaves=leaves)


def shard_path(prefix, shard, shard_count):
    return '%s.data-%05d-of-%05d' % (prefix, shard, shard_count)


# ---------------------------------------------------------------------------------
# Architecture: what the tree's names and shapes say.


def infer_architecture(leaves):
    """Returns (root, arch, params, expected).

    root is '' or 'params/' (a train state), params maps output name -> Leaf and
    expected maps output name -> shape; every expected name exists with that shape.
    """
    by_path = {leaf.path: leaf for leaf in leaves}
    top_keys = {p.split('/', 1)[0] for p in by_path}
    root = ''
    if 'Encoder' not in top_keys and 'params' in top_keys and any(
            p.startswith('params/Encoder/') for p in by_path):
        root = 'params/'  # a whole train state: use its parameters
    params = {p[len(root):]: leaf for p, leaf in by_path.items() if p.startswith(root)}

    def need(name, ndim=None):
        leaf = params.get(name)
        if leaf is None:
            raise ConvertError('checkpoint has no parameter %s%s (not a V-MoE/ViT parameter tree?)'
                               % (root, name))
        if ndim is not None and len(leaf.shape) != ndim:
            raise ConvertError('%s%s has shape %s, expected %d dimensions'
                               % (root, name, shape_str(leaf.shape), ndim))
        return leaf.shape

    ph, pw, channels, D = need('embedding/kernel', 4)
    if channels not in (1, 3):
        raise ConvertError('%sembedding/kernel has %d input channels, expected 3'
                           % (root, channels))
    block_ids = set()
    for name in params:
        m = re.match(r'Encoder/encoderblock_(\d+)/', name)
        if m:
            block_ids.add(int(m.group(1)))
    if not block_ids:
        need('Encoder/encoderblock_0/LayerNorm_0/scale')
    num_layers = max(block_ids) + 1
    for i in range(num_layers):
        if i not in block_ids:
            need('Encoder/encoderblock_%d/LayerNorm_0/scale' % i)
    q = need('Encoder/encoderblock_0/SelfAttention/query/kernel', 3)
    if q[0] != D:
        raise ConvertError('%sEncoder/encoderblock_0/SelfAttention/query/kernel has shape %s but the '
                           'hidden size is %d' % (root, shape_str(q), D))
    H, Dh = q[1], q[2]
    if H * Dh != D:
        raise ConvertError('%sEncoder/encoderblock_0/SelfAttention/query/kernel has shape %s: %d heads '
                           'of %d do not make hidden size %d' % (root, shape_str(q), H, Dh, D))

    moe_layers, mlp_dim, num_experts = [], None, None
    for i in range(num_layers):
        b = 'Encoder/encoderblock_%d/' % i
        has_moe = any(n.startswith(b + 'Moe/') for n in params)
        has_mlp = any(n.startswith(b + 'Mlp/') for n in params)
        if has_moe and has_mlp:
            raise ConvertError('%s%s has both an Mlp and a Moe block' % (root, b[:-1]))
        if has_moe:
            k0 = need(b + 'Moe/Mlp/Dense_0/kernel', 3)
            if (b + 'Moe/Router/dense/kernel') not in params:
                if any(n.startswith(b + 'Moe/Router/') for n in params):
                    other = sorted(n for n in params if n.startswith(b + 'Moe/Router/'))[0]
                    raise ConvertError('%s%s: unsupported router (only the V-MoE top-k router '
                                       'Moe/Router/dense/kernel is converted)' % (root, other))
                need(b + 'Moe/Router/dense/kernel')
            moe_layers.append(i)
            e, m = k0[0], k0[2]
            if num_experts is None:
                num_experts = e
            elif e != num_experts:
                raise ConvertError('%s%sMoe/Mlp/Dense_0/kernel has %d experts but an earlier MoE block '
                                   'has %d' % (root, b, e, num_experts))
        else:
            m = need(b + 'Mlp/Dense_0/kernel', 2)[1]
        if mlp_dim is None:
            mlp_dim = m
    T = need('Encoder/posembed_input/pos_embedding', 3)[1]
    token = 'cls' in params
    rep = need('pre_logits/kernel', 2)[1] if 'pre_logits/kernel' in params else None
    num_classes = need('head/kernel', 2)[1]

    expected = {
        'embedding/kernel': (ph, pw, channels, D),
        'embedding/bias': (D,),
        'Encoder/posembed_input/pos_embedding': (1, T, D),
        'Encoder/encoder_norm/scale': (D,),
        'Encoder/encoder_norm/bias': (D,),
        'head/kernel': (rep or D, num_classes),
        'head/bias': (num_classes,),
    }
    if token:
        expected['cls'] = (1, 1, D)
    if rep is not None:
        expected['pre_logits/kernel'] = (D, rep)
        expected['pre_logits/bias'] = (rep,)
    for i in range(num_layers):
        b = 'Encoder/encoderblock_%d/' % i
        for ln in ('LayerNorm_0', 'LayerNorm_1'):
            expected[b + ln + '/scale'] = (D,)
            expected[b + ln + '/bias'] = (D,)
        for qkv in ('query', 'key', 'value'):
            expected[b + 'SelfAttention/%s/kernel' % qkv] = (D, H, Dh)
            expected[b + 'SelfAttention/%s/bias' % qkv] = (H, Dh)
        expected[b + 'SelfAttention/out/kernel'] = (H, Dh, D)
        expected[b + 'SelfAttention/out/bias'] = (D,)
        if i in moe_layers:
            E = num_experts
            expected[b + 'Moe/Mlp/Dense_0/kernel'] = (E, D, mlp_dim)
            expected[b + 'Moe/Mlp/Dense_0/bias'] = (E, mlp_dim)
            expected[b + 'Moe/Mlp/Dense_1/kernel'] = (E, mlp_dim, D)
            expected[b + 'Moe/Mlp/Dense_1/bias'] = (E, D)
            expected[b + 'Moe/Router/dense/kernel'] = (D, E)
        else:
            expected[b + 'Mlp/Dense_0/kernel'] = (D, mlp_dim)
            expected[b + 'Mlp/Dense_0/bias'] = (mlp_dim,)
            expected[b + 'Mlp/Dense_1/kernel'] = (mlp_dim, D)
            expected[b + 'Mlp/Dense_1/bias'] = (D,)

    missing = [n for n in sorted(expected) if n not in params]
    if missing:
        more = ' (and %d more)' % (len(missing) - 1) if len(missing) > 1 else ''
        raise ConvertError('checkpoint has no parameter %s%s%s' % (root, missing[0], more))
    unexpected = [n for n in sorted(params) if n not in expected]
    if unexpected:
        more = ' (and %d more)' % (len(unexpected) - 1) if len(unexpected) > 1 else ''
        raise ConvertError('checkpoint has parameter %s%s that this V-MoE layout does not use%s'
                           % (root, unexpected[0], more))
    for name, shape in sorted(expected.items()):
        got = params[name].shape
        if tuple(got) != tuple(shape):
            raise ConvertError('%s%s has shape %s but %s was expected (hidden %d, %d heads, MLP %d%s)'
                               % (root, name, shape_str(got), shape_str(shape), D, H, mlp_dim,
                                  ', %d experts' % num_experts if num_experts else ''))
        if params[name].dtype not in ITEMSIZE:
            raise ConvertError('%s%s has dtype %s (expected float32 or bfloat16)'
                               % (root, name, params[name].dtype))

    arch = dict(patch=(ph, pw), channels=channels, hidden_size=D, num_layers=num_layers, num_heads=H,
                mlp_dim=mlp_dim, classifier='token' if token else 'gap', representation_size=rep,
                num_classes=num_classes, moe_layers=moe_layers, num_experts=num_experts,
                pos_tokens=T)
    return root, arch, {name: params[name] for name in expected}, expected


# ---------------------------------------------------------------------------------
# Config.


def resolve_image(arch, image_size, source):
    """(height, width, note); the grid must match the position embedding's length."""
    ph, pw = arch['patch']
    T = arch['pos_tokens']
    extra = 1 if arch['classifier'] == 'token' else 0
    n = T - extra
    g = math.isqrt(n) if n > 0 else 0
    square = n > 0 and g * g == n
    if square:
        desc = '%d tokens = %dx%d patches%s' % (T, g, g, ' + CLS' if extra else '')
    else:
        desc = '%d tokens%s' % (T, ' (%d patches + CLS)' % n if extra else '')
    if image_size is None:
        if not square:
            raise UsageError('the position embedding has %s, not a square grid of patches: pass '
                             '--image-size' % desc)
        return g * ph, g * pw, 'from the position embedding: %s of %dx%d' % (desc, ph, pw)
    if image_size % ph or image_size % pw:
        raise UsageError('image size %d (%s) is not a multiple of the patch size %dx%d'
                         % (image_size, source, ph, pw))
    gh, gw = image_size // ph, image_size // pw
    if gh * gw != n:
        hint = '; the checkpoint is for %dx%d images' % (g * ph, g * pw) if square else ''
        raise UsageError('image size %d (%s) gives %dx%d patches%s, but the position embedding '
                         'Encoder/posembed_input/pos_embedding has %s%s'
                         % (image_size, source, gh, gw, ' + CLS' if extra else '', desc, hint))
    return image_size, image_size, '%s; position embedding %s' % (source, desc)


def read_labels(path, num_classes):
    try:
        with open(path, 'r', encoding='utf-8') as f:
            text = f.read()
    except OSError as e:
        raise ConvertError('%s: cannot read label file (%s)' % (path, e.strerror or e))
    except UnicodeDecodeError:
        raise ConvertError('%s: label file is not UTF-8 text' % path)
    lines = text.split('\n')
    if lines and lines[-1] == '':
        lines.pop()
    labels = [line.rstrip('\r') for line in lines]
    for i, label in enumerate(labels):
        if not label.strip():
            raise ConvertError('%s: line %d is empty (one label per line expected)' % (path, i + 1))
    if len(labels) != num_classes:
        raise ConvertError('%s has %d labels but the checkpoint head has %d classes'
                           % (path, len(labels), num_classes))
    return labels


def build_config(arch, height, width, resize, k, capacity_factor, batch_priority, labels):
    if resize == 'resize_small_crop':
        resize_small = int(round(max(height, width) * 256 / 224))
    else:
        resize_small = 256
    cfg = {
        'format': 'vmoe',
        'version': 1,
        'image': {'height': height, 'width': width, 'channels': arch['channels'],
                  'resize': resize, 'resize_small': resize_small, 'value_range': [-1, 1]},
        'patch': list(arch['patch']),
        'hidden_size': arch['hidden_size'],
        'num_layers': arch['num_layers'],
        'num_heads': arch['num_heads'],
        'mlp_dim': arch['mlp_dim'],
        'classifier': arch['classifier'],
        'representation_size': arch['representation_size'],
        'layer_norm_eps': 1e-6,
    }
    if labels is not None:
        cfg['labels'] = labels
    cfg['num_classes'] = arch['num_classes']
    if arch['moe_layers']:
        cfg['moe'] = {
            'layers': list(arch['moe_layers']),
            'router': 'top_k',
            'num_experts': arch['num_experts'],
            'k': k,
            'capacity_factor': capacity_factor,
            'capacity_rounding': 'ceil',
            'capacity_multiple_of': 4,
            'batch_priority': batch_priority,
            'group_images': 1,
            'noise_std': 1.0,
            'slots_per_expert': 1,
        }
    else:
        cfg['moe'] = None
    return cfg


# ---------------------------------------------------------------------------------
# Data.


def to_float32(payload, dtype):
    """Flat float32 array from an ndarray payload stored as `dtype` (bit-exact widening)."""
    n = 1
    for d in payload.shape:
        n *= d
    size = ITEMSIZE[dtype]
    if len(payload.buf) != n * size:
        raise ValueError('sub-chunk of shape %s %s has %d bytes, expected %d'
                         % (shape_str(payload.shape), dtype, len(payload.buf), n * size))
    if dtype == 'float32':
        return np.frombuffer(payload.buf, dtype='<f4')
    if dtype == 'bfloat16':
        bits = np.frombuffer(payload.buf, dtype='<u2').astype('<u4') << 16
        return bits.view('<f4')
    if dtype == 'float16':
        return np.frombuffer(payload.buf, dtype='<f2').astype('<f4')
    return np.frombuffer(payload.buf, dtype='<f8').astype('<f4')


def read_shard(path, shard, leaves, wanted, sinks, seen):
    """Validates one shard and copies the chunks of wanted leaves into their sinks."""
    top = unpack_file(path, 'checkpoint shard')
    if not isinstance(top, dict) or top.get(ARRAY_CHUNKS_MAGIC_KEY) is not True:
        raise ConvertError('%s: not a V-MoE checkpoint shard (no array-chunk marker)' % path)
    for key, chunks in top.items():
        if key == ARRAY_CHUNKS_MAGIC_KEY:
            continue
        if not isinstance(key, str) or not re.fullmatch('[0-9]+', key):
            raise ConvertError('%s: unexpected key %r (leaf numbers expected)' % (path, key))
        number = int(key)
        if number >= len(leaves):
            raise ConvertError('%s: holds chunks of leaf number %d but the index has %d leaves'
                               % (path, number, len(leaves)))
        leaf = leaves[number]
        if not isinstance(chunks, list):
            raise ConvertError('%s: leaf %s: chunk list is malformed' % (path, leaf.path))
        listed = {region for region, s in leaf.chunks if s == shard}
        for pair in chunks:
            if isinstance(pair, BadExt):
                raise ConvertError('%s: leaf %s: %s' % (path, leaf.path, pair.describe()))
            if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], list):
                raise ConvertError('%s: leaf %s: chunk is not [sub-chunks, n-d slice]' % (path, leaf.path))
            subchunks, raw_region = pair
            if isinstance(raw_region, BadExt):
                raise ConvertError('%s: leaf %s: %s' % (path, leaf.path, raw_region.describe()))
            if not isinstance(raw_region, SliceNd):
                raise ConvertError('%s: leaf %s: chunk region is not an n-d slice' % (path, leaf.path))
            region, why = normalize_region(raw_region, leaf.shape)
            if region is None:
                raise ConvertError('%s: leaf %s: chunk %s %s of shape %s'
                                   % (path, leaf.path, region_raw_str(raw_region), why,
                                      shape_str(leaf.shape)))
            if region not in listed:
                raise ConvertError('%s: leaf %s: chunk %s is not listed in the index for this shard'
                                   % (path, leaf.path, region_str(region)))
            if (number, region) in seen:
                raise ConvertError('%s: leaf %s: chunk %s appears twice'
                                   % (path, leaf.path, region_str(region)))
            seen.add((number, region))
            parts = []
            for sub in subchunks:
                if isinstance(sub, BadExt):
                    raise ConvertError('%s: leaf %s: %s' % (path, leaf.path, sub.describe()))
                if not isinstance(sub, NdPayload):
                    raise ConvertError('%s: leaf %s: sub-chunk is not an ndarray' % (path, leaf.path))
                if sub.dtype != leaf.dtype:
                    raise ConvertError('%s: leaf %s: sub-chunk has dtype %s but the index says %s'
                                       % (path, leaf.path, sub.dtype, leaf.dtype))
                if leaf.dtype not in ITEMSIZE:
                    if number in wanted:
                        raise ConvertError('%s: leaf %s: unsupported dtype %s' % (path, leaf.path, leaf.dtype))
                    continue
                try:
                    parts.append(to_float32(sub, leaf.dtype))
                except ValueError as e:
                    raise ConvertError('%s: leaf %s: %s' % (path, leaf.path, e))
            count = sum(p.size for p in parts)
            if leaf.dtype in ITEMSIZE and count != volume(region):
                raise ConvertError('%s: leaf %s: chunk %s holds %d values but the region has %d'
                                   % (path, leaf.path, region_str(region), count, volume(region)))
            if number in wanted and sinks is not None:
                flat = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else \
                    np.zeros(0, dtype='<f4')
                target = sinks[number]
                target[tuple(slice(s, e) for s, e in region)] = flat.reshape(
                    tuple(e - s for s, e in region))
            del parts
    del top


# ---------------------------------------------------------------------------------
# Output.


def safetensors_header(names_shapes, config):
    header = {}
    offset = 0
    for name, shape in names_shapes:
        n = 1
        for d in shape:
            n *= d
        header[name] = {'dtype': 'F32', 'shape': list(shape), 'data_offsets': [offset, offset + 4 * n]}
        offset += 4 * n
    header['__metadata__'] = {'vmoe.config': json.dumps(config, separators=(',', ':'))}
    text = json.dumps(header, separators=(',', ':')).encode('utf-8')
    text += b' ' * ((8 - len(text) % 8) % 8)
    return text, offset


class OutputFile:
    """The model written to a temporary file next to the target, renamed on success."""

    def __init__(self, target, header, data_bytes):
        self.target = target
        directory = os.path.dirname(os.path.abspath(target))
        self.fd, self.tmp = tempfile.mkstemp(prefix='.' + os.path.basename(target) + '.',
                                             suffix='.tmp', dir=directory)
        self.mm = None
        try:
            data_start = 8 + len(header)
            total = data_start + data_bytes
            try:
                os.posix_fallocate(self.fd, 0, total)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # unsupported: plain truncate
                    raise
                os.ftruncate(self.fd, total)
            os.pwrite(self.fd, len(header).to_bytes(8, 'little') + header, 0)
            if data_bytes:
                self.mm = np.memmap(self.tmp, dtype='<f4', mode='r+', offset=data_start,
                                    shape=(data_bytes // 4,))
        except BaseException:
            self.abort()
            raise

    def view(self, offset_bytes, shape):
        n = 1
        for d in shape:
            n *= d
        start = offset_bytes // 4
        return self.mm[start:start + n].reshape(shape)

    def commit(self):
        if self.mm is not None:
            self.mm.flush()
            del self.mm
            self.mm = None
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = None
        os.replace(self.tmp, self.target)
        self.tmp = None
        try:
            dfd = os.open(os.path.dirname(os.path.abspath(self.target)), os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass

    def abort(self):
        if self.mm is not None:
            try:
                del self.mm
            except Exception:  # noqa: BLE001
                pass
            self.mm = None
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            self.tmp = None


# ---------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog=PROG,
        description='Convert an official V-MoE checkpoint (PREFIX.index + PREFIX.data-*) to a vmoe '
                    '.safetensors model. Needs only numpy and msgpack.')
    p.add_argument('prefix', metavar='PREFIX',
                   help='checkpoint prefix (PREFIX.index and PREFIX.data-NNNNN-of-NNNNN must exist)')
    p.add_argument('-o', '--output', metavar='MODEL', help='output .safetensors file')
    p.add_argument('--image-size', type=int, metavar='N',
                   help='input resolution (default: from the known-checkpoint table, else from the '
                        'position embedding); must match the position embedding')
    p.add_argument('--k', type=int, metavar='K', help='experts per token (default: from the table)')
    p.add_argument('--labels', metavar='FILE',
                   help='class names, one per line (default for 1000 classes: data/labels/imagenet1k.txt)')
    p.add_argument('--name', metavar='NAME',
                   help='look up this checkpoint name in the table instead of the basename of PREFIX')
    p.add_argument('--capacity-factor', type=float, metavar='C',
                   help='default capacity factor stored in the config (default: what the reference '
                        'config evaluates with, see docs/CONVERTER.md; 1.05 for unknown names)')
    p.add_argument('--routing', choices=['bpr', 'vanilla'],
                   help='default routing stored in the config (default: vanilla, as the reference)')
    p.add_argument('--resize', choices=['stretch', 'resize_small_crop'],
                   help='preprocessing recipe (default: resize_small_crop for 224 px, stretch for '
                        'fine-tunes at 384 px)')
    p.add_argument('--check', action='store_true',
                   help='validate the checkpoint and report; write nothing')
    p.add_argument('--list-files', action='store_true',
                   help='print the names of the shard files the index refers to (one per line, for '
                        'downloading them) and exit')
    args = p.parse_args(argv)
    if not args.check and not args.list_files and not args.output:
        p.error('-o MODEL is required (or --check, --list-files)')
    if args.image_size is not None and not 1 <= args.image_size <= 100000:
        p.error('--image-size must be a positive number of pixels')
    if args.k is not None and args.k < 1:
        p.error('--k must be at least 1')
    if args.capacity_factor is not None and not (args.capacity_factor > 0 and
                                                 math.isfinite(args.capacity_factor)):
        p.error('--capacity-factor must be a positive number')
    if args.output and os.path.isdir(args.output):
        p.error('-o %s is a directory' % args.output)
    return args


def convert(args):
    prefix = args.prefix
    if prefix.endswith('.index'):
        prefix = prefix[:-len('.index')]
    name = args.name or os.path.basename(prefix.rstrip('/'))
    known = KNOWN_CHECKPOINTS.get(name)

    index = read_index(prefix)
    leaves = index['leaves']
    if args.list_files:
        for shard in sorted({s for leaf in leaves for _, s in leaf.chunks}):
            sys.stdout.write(os.path.basename(shard_path(prefix, shard, index['shard_count'])) + '\n')
        return
    try:
        root, arch, params, expected = infer_architecture(leaves)
    except ConvertError as e:
        raise ConvertError('%s: %s' % (index['path'], e))

    # Image size and recipe.
    if args.image_size is not None:
        image_size, source = args.image_size, '--image-size'
    elif known:
        image_size, source = known['image_size'], 'table entry %s' % name
    else:
        image_size, source = None, None
    height, width, image_note = resolve_image(arch, image_size, source)
    if args.resize:
        resize = args.resize
    elif name.endswith('_ft_ilsvrc2012') or (height == 384 and width == 384):
        resize = 'stretch'
    else:
        resize = 'resize_small_crop'

    # Routing.
    k = capacity_factor = None
    if arch['moe_layers']:
        if args.k is not None:
            k, k_note = args.k, '--k'
        elif known:
            k, k_note = known['k'], 'table entry %s' % name
        else:
            raise UsageError('unknown checkpoint name "%s" (known: %s): pass --k (experts per token; '
                             'the released V-MoE models use 2) or --name'
                             % (name, ', '.join(sorted(KNOWN_CHECKPOINTS))))
        if k > arch['num_experts']:
            raise UsageError('--k %d exceeds the %d experts of the checkpoint' % (k, arch['num_experts']))
        if args.capacity_factor is not None:
            capacity_factor, cf_note = args.capacity_factor, '--capacity-factor'
        elif known:
            capacity_factor, cf_note = known['capacity_factor'], 'reference config'
        else:
            capacity_factor, cf_note = 1.05, 'default'
    batch_priority = args.routing == 'bpr'

    # Labels.
    labels, labels_note = None, None
    if args.labels:
        labels = read_labels(args.labels, arch['num_classes'])
        labels_note = '%s (%d)' % (args.labels, len(labels))
    elif arch['num_classes'] == 1000 and os.path.isfile(DEFAULT_LABELS_1K):
        labels = read_labels(DEFAULT_LABELS_1K, 1000)
        labels_note = 'ImageNet-1k, %s' % os.path.normpath(DEFAULT_LABELS_1K)
    else:
        labels_note = 'none bundled for %d classes%s; the model stores num_classes only (pass --labels FILE)' % (
            arch['num_classes'], ' (ImageNet-21k)' if arch['num_classes'] == 21843 else '')

    config = build_config(arch, height, width, resize, k, capacity_factor, batch_priority, labels)

    # Report.
    dtypes = {}
    for leaf in params.values():
        dtypes[leaf.dtype] = dtypes.get(leaf.dtype, 0) + 1
    nparams = sum(int(np.prod(s, dtype=np.int64)) for s in expected.values())
    wanted_shards = sorted({s for leaf in params.values() for _, s in leaf.chunks})
    log('%s: index %s (version %s), %d shard%s, %d arrays, %.1fM parameters (%s)'
        % (PROG, index['path'], index['version'] or 'none (old format)', index['shard_count'],
           '' if index['shard_count'] == 1 else 's', len(params), nparams / 1e6,
           ', '.join('%d %s' % (v, d) for d, v in sorted(dtypes.items()))))
    if root:
        log('  parameters found under "%s" of a larger tree' % root[:-1])
    log('  architecture: %d layers, hidden %d, %d heads, MLP %d, patch %dx%d, classifier %s, '
        'pre-logits %s, %d classes'
        % (arch['num_layers'], arch['hidden_size'], arch['num_heads'], arch['mlp_dim'], arch['patch'][0],
           arch['patch'][1], arch['classifier'], arch['representation_size'] or 'none', arch['num_classes']))
    if arch['moe_layers']:
        log('  MoE: blocks %s, %d experts, top-%d (%s), capacity factor %g (%s), %s routing'
            % (','.join(str(i) for i in arch['moe_layers']), arch['num_experts'], k, k_note,
               capacity_factor, cf_note, 'BPR' if batch_priority else 'vanilla'))
    else:
        log('  MoE: none (dense ViT)')
    log('  image: %dx%d (%s), preprocessing %s%s'
        % (height, width, image_note, resize,
           ' %d then centre crop' % config['image']['resize_small'] if resize == 'resize_small_crop' else ''))
    log('  labels: %s' % labels_note)

    # Read the shards into the output.
    names = sorted(expected)
    out = None
    sinks = None
    if not args.check:
        header, data_bytes = safetensors_header([(n, expected[n]) for n in names], config)
        out = OutputFile(args.output, header, data_bytes)
    try:
        wanted = {params[n].number for n in names}
        if out is not None:
            sinks = {}
            offset = 0
            for n in names:
                sinks[params[n].number] = out.view(offset, expected[n])
                offset += 4 * int(np.prod(expected[n], dtype=np.int64))
        seen = set()
        for i, shard in enumerate(wanted_shards):
            path = shard_path(prefix, shard, index['shard_count'])
            if not os.path.exists(path):
                holder = next(leaf.path for leaf in params.values() if any(s == shard for _, s in leaf.chunks))
                raise ConvertError('%s: missing shard (it holds chunks of %s)' % (path, holder))
            log('  reading shard %d/%d %s' % (i + 1, len(wanted_shards), path))
            read_shard(path, shard, leaves, wanted, sinks, seen)
        for n in names:
            leaf = params[n]
            for region, shard in leaf.chunks:
                if (leaf.number, region) not in seen:
                    raise ConvertError('%s: leaf %s: chunk %s listed in the index is not in this shard'
                                       % (shard_path(prefix, shard, index['shard_count']), leaf.path,
                                          region_str(region)))
        if out is not None:
            sinks = None
            out.commit()
            log('%s: wrote %s (%.1f MB)' % (PROG, args.output, os.path.getsize(args.output) / 1e6))
        else:
            log('%s: checkpoint is complete and consistent (nothing written: --check)' % PROG)
    except BaseException:
        if out is not None:
            sinks = None
            out.abort()
        raise


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        convert(args)
    except UsageError as e:
        log('%s: error: %s' % (PROG, str(e).replace('\n', ' ')))
        return 2
    except ConvertError as e:
        log('%s: error: %s' % (PROG, str(e).replace('\n', ' ')))
        return 1
    except MemoryError:
        log('%s: error: out of memory' % PROG)
        return 1
    except OSError as e:
        log('%s: error: %s%s' % (PROG, e.strerror or e, ': %s' % e.filename if e.filename else ''))
        return 1
    except KeyboardInterrupt:
        log('%s: interrupted' % PROG)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
