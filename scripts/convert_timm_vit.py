#!/usr/bin/python3
"""Convert a timm / Hugging Face dense ViT (safetensors) to a vmoe model file.

    convert_timm_vit.py MODEL.safetensors -o OUT.safetensors [--config config.json]
                        [--heads H] [--image-size N] [--crop-pct P] [--mean M M M]
                        [--std S S S] [--labels FILE]

MODEL.safetensors is a timm `vit_*_patch*_*` checkpoint (e.g. the `model.safetensors`
of hf.co/timm/vit_small_patch16_224.augreg_in21k_ft_in1k); config.json is the file next
to it on the Hub, whose `pretrained_cfg` gives the preprocessing (input_size, crop_pct,
mean, std) and whose `architecture` gives the head count. Flags override it.

What maps where (DESIGN §2; torch Linear computes y = x W^T + b, ours y = x K + b):

    patch_embed.proj.weight (D, C, ph, pw)  -> embedding/kernel (ph, pw, C, D)
    cls_token (1, 1, D), pos_embed (1, T, D) -> cls, Encoder/posembed_input/pos_embedding
    blocks.N.norm1/norm2                     -> encoderblock_N/LayerNorm_0/LayerNorm_1
    blocks.N.attn.qkv (3D, D), (3D)          -> SelfAttention/{query,key,value} (D, H, D/H), (H, D/H)
    blocks.N.attn.proj (D, D), (D)           -> SelfAttention/out/kernel (H, D/H, D), bias (D)
    blocks.N.mlp.fc1, fc2                    -> Mlp/Dense_0, Mlp/Dense_1 (transposed)
    blocks.N.ls1/ls2.gamma (LayerScale)      -> folded into out and Dense_1 (exact)
    norm, head                               -> Encoder/encoder_norm, head (transposed)

Exact rewrites:
  - timm normalises inputs as (v - mean_c) / std_c with v = pixel / 255. The patch
    embedding is a stride = patch VALID convolution, linear in its input, so the
    normalisation folds into it: K'[.., c, d] = K[.., c, d] / std_c and
    b'[d] = b[d] - sum_{i,j,c} K[i, j, c, d] mean_c / std_c; the model then takes
    value_range [0, 1].
  - pos_embed without a CLS row (timm `no_embed_class`) gets a zero CLS row.
  - GELU is the exact erf form (`"gelu": "erf"` in the config).
Preprocessing: timm's evaluation resizes the shorter side to floor(size / crop_pct)
(bicubic) and centre-crops size x size; we write resize_small_crop with that
resize_small (vmoe resizes with area interpolation, see docs/DECISIONS.md).
Not representable (refused with a one-line message): fc_norm (LayerNorm after
average pooling), register tokens, qk-norm, attention-pool heads, patch_embed norm,
norm_pre, a headless (num_classes 0) model, non-square patch grids without --image-size.

numpy only; the output is written to a temporary name and renamed. Exit status 0 on
success, 1 on a bad or unsupported checkpoint, 2 on bad usage.
"""

import argparse
import json
import math
import os
import re
import struct
import sys
import tempfile

import numpy as np

PROG = 'convert_timm_vit'
LABELS_1K = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'data', 'labels', 'imagenet1k.txt')
# Head counts of timm's named ViT sizes (the checkpoint does not store them).
HEADS_BY_SIZE = {'tiny': 3, 'small': 6, 'medium': 8, 'base': 12, 'large': 16, 'huge': 16, 'giant': 16}


class ConvertError(Exception):
    """A bad or unsupported checkpoint: exit status 1."""


class UsageError(Exception):
    """Flags that do not fit: exit status 2."""


# ---------------------------------------------------------------------------
# safetensors: u64 LE header length N | N bytes of JSON | raw little-endian data
# ---------------------------------------------------------------------------

def read_safetensors(path):
    """{name: float32 array} of every tensor (F32, F16, BF16, F64)."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        raise ConvertError(f'{path}: cannot read ({e.strerror})')
    if len(data) < 8:
        raise ConvertError(f'{path}: too short for a safetensors file')
    (n,) = struct.unpack('<Q', data[:8])
    if n > len(data) - 8 or n > 100 << 20:
        raise ConvertError(f'{path}: header length {n} exceeds the file')
    try:
        header = json.loads(data[8:8 + n].decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f'{path}: header is not JSON ({e})')
    if not isinstance(header, dict):
        raise ConvertError(f'{path}: header is not a JSON object')
    body = memoryview(data)[8 + n:]
    out = {}
    for name, entry in header.items():
        if name == '__metadata__':
            continue
        try:
            dtype, shape, (begin, end) = entry['dtype'], [int(s) for s in entry['shape']], entry['data_offsets']
        except (KeyError, TypeError, ValueError):
            raise ConvertError(f'{path}: tensor "{name}" has a malformed header entry')
        itemsize = {'F32': 4, 'F16': 2, 'BF16': 2, 'F64': 8}.get(dtype)
        if itemsize is None:
            raise ConvertError(f'{path}: tensor "{name}" has dtype {dtype}, expected a float type')
        count = math.prod(shape)
        if not (0 <= begin <= end <= len(body)) or end - begin != count * itemsize:
            raise ConvertError(f'{path}: tensor "{name}" has offsets outside the file or of the wrong size')
        raw = body[begin:end]
        if dtype == 'BF16':  # the top half of a float32: widening is exact
            a = (np.frombuffer(raw, dtype='<u2').astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(raw, dtype={'F32': '<f4', 'F16': '<f2', 'F64': '<f8'}[dtype]).astype(np.float32)
        out[name] = a.reshape(shape)
    return out


def write_safetensors(path, tensors, metadata):
    """Writes float32 tensors (in the given order) to a temporary name, then renames."""
    header, offset = {'__metadata__': metadata}, 0
    for name, a in tensors:
        nbytes = a.size * 4
        header[name] = {'dtype': 'F32', 'shape': list(a.shape), 'data_offsets': [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(',', ':')).encode('utf-8')
    text += b' ' * (-len(text) % 8)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=directory)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(struct.pack('<Q', len(text)))
            f.write(text)
            for _, a in tensors:
                f.write(np.ascontiguousarray(a, dtype='<f4').tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------
# The mapping
# ---------------------------------------------------------------------------

class Tensors:
    """The checkpoint's arrays; take() marks each one used so leftovers can be refused."""

    def __init__(self, arrays, path):
        self.arrays, self.path, self.used = arrays, path, set()

    def has(self, name):
        return name in self.arrays

    def take(self, name, shape=None):
        if name not in self.arrays:
            raise ConvertError(f'{self.path}: missing tensor "{name}"' + (f' (expected shape {tuple(shape)})' if shape else ''))
        a = self.arrays[name]
        if shape is not None and tuple(a.shape) != tuple(shape):
            raise ConvertError(f'{self.path}: tensor "{name}" has shape {tuple(a.shape)}, expected {tuple(shape)}')
        self.used.add(name)
        return a.astype(np.float64)

    def leftovers(self):
        return sorted(set(self.arrays) - self.used)


def heads_for(args, hub_config, D):
    if args.heads:
        return args.heads
    arch = (hub_config or {}).get('architecture', '')
    m = re.match(r'(?:vit|deit3?)_(tiny|small|medium|base|large|huge|giant)_', arch)
    if m:
        return HEADS_BY_SIZE[m.group(1)]
    if D % 64 == 0:  # timm's ViTs use 64-wide heads except huge (80)
        return D // 64
    raise UsageError(f'cannot tell the number of heads of a D={D} model: pass --heads')


def read_labels(path, classes):
    with open(path, encoding='utf-8') as f:
        labels = [line.rstrip('\n') for line in f if line.strip()]
    if len(labels) != classes:
        raise UsageError(f'{path}: {len(labels)} labels but the head has {classes} classes')
    return labels


def convert(arrays, path, args, hub_config):
    t = Tensors(arrays, path)
    pre = (hub_config or {}).get('pretrained_cfg', {}) or {}
    for name, why in (('fc_norm.weight', 'fc_norm (LayerNorm after average pooling; vmoe normalises before pooling)'),
                      ('reg_token', 'register tokens'), ('attn_pool.latent', 'an attention-pool head'),
                      ('patch_embed.norm.weight', 'a norm inside the patch embedding'),
                      ('norm_pre.weight', 'a norm before the blocks (norm_pre)'),
                      ('blocks.0.attn.q_norm.weight', 'qk-norm')):
        if t.has(name):
            raise ConvertError(f'{path}: {why} cannot be represented in a vmoe model')
    if not t.has('head.weight'):
        raise ConvertError(f'{path}: no classifier head (head.weight); convert a model with classes')

    w = t.arrays['patch_embed.proj.weight'] if t.has('patch_embed.proj.weight') else None
    if w is None or w.ndim != 4:
        raise ConvertError(f'{path}: missing tensor "patch_embed.proj.weight" (D, C, ph, pw): not a timm ViT?')
    D, C, ph, pw = w.shape
    depth = 0
    while t.has(f'blocks.{depth}.attn.qkv.weight'):
        depth += 1
    if depth == 0:
        raise ConvertError(f'{path}: no blocks.0.attn.qkv.weight: not a timm ViT?')
    M = t.arrays['blocks.0.mlp.fc1.weight'].shape[0] if t.has('blocks.0.mlp.fc1.weight') else None
    if M is None:
        raise ConvertError(f'{path}: missing tensor "blocks.0.mlp.fc1.weight"')
    H = heads_for(args, hub_config, D)
    if D % H:
        raise UsageError(f'--heads {H} does not divide the hidden size {D}')
    Dh = D // H
    classes = t.arrays['head.weight'].shape[0]
    has_cls = t.has('cls_token')
    pos = t.arrays.get('pos_embed')
    if pos is None or pos.ndim != 3 or pos.shape[2] != D:
        raise ConvertError(f'{path}: missing or malformed "pos_embed" (1, T, {D})')

    # Geometry: --image-size, else the pretrained config's input_size, else a square grid.
    input_size = pre.get('input_size')
    if args.image_size:
        height = width = args.image_size
    elif input_size and len(input_size) == 3:
        height, width = int(input_size[1]), int(input_size[2])
    else:
        # With a CLS token, pos_embed has a CLS row unless the model is no_embed_class.
        squares = [n for n in ((pos.shape[1] - 1, pos.shape[1]) if has_cls else (pos.shape[1],))
                   if n > 0 and int(round(math.sqrt(n))) ** 2 == n]
        if not squares:
            raise UsageError(f'pos_embed has {pos.shape[1]} rows, not a square grid of patches: pass --image-size')
        height = width = int(round(math.sqrt(squares[0]))) * ph
    grid = (height // ph) * (width // pw)
    if pos.shape[1] == grid + 1 and has_cls:
        pos_full = t.take('pos_embed')
    elif pos.shape[1] == grid:
        pos_full = t.take('pos_embed')
        if has_cls:  # no_embed_class: the CLS token gets no position embedding
            pos_full = np.concatenate([np.zeros((1, 1, D)), pos_full], axis=1)
    else:
        raise ConvertError(f'{path}: pos_embed has {pos.shape[1]} rows but a {height}x{width} image has {grid} '
                           f'patches{" + CLS" if has_cls else ""} (pass --image-size?)')

    # Preprocessing, folded into the patch embedding (see the module docstring).
    mean = np.asarray(args.mean if args.mean else pre.get('mean', (0.485, 0.456, 0.406)), dtype=np.float64)
    std = np.asarray(args.std if args.std else pre.get('std', (0.229, 0.224, 0.225)), dtype=np.float64)
    if mean.shape != (C,) or std.shape != (C,):
        raise UsageError(f'mean and std need {C} values (one per channel)')
    if np.any(std <= 0):
        raise UsageError('std values must be positive')
    crop_pct = args.crop_pct if args.crop_pct else float(pre.get('crop_pct', 0.875))
    if not (0 < crop_pct <= 1):
        raise UsageError(f'crop_pct {crop_pct} must be in (0, 1]')
    kernel = t.take('patch_embed.proj.weight').transpose(2, 3, 1, 0)  # (ph, pw, C, D)
    bias = t.take('patch_embed.proj.bias', (D,))
    bias = bias - np.einsum('ijcd,c->d', kernel, mean / std)
    kernel = kernel / std[None, None, :, None]

    out = [('embedding/kernel', kernel), ('embedding/bias', bias)]
    if has_cls:
        out.append(('cls', t.take('cls_token', (1, 1, D))))
    out.append(('Encoder/posembed_input/pos_embedding', pos_full))
    for i in range(depth):
        b, o = f'blocks.{i}.', f'Encoder/encoderblock_{i}/'
        qkv_w, qkv_b = t.take(b + 'attn.qkv.weight', (3 * D, D)), t.take(b + 'attn.qkv.bias', (3 * D,))
        proj_w, proj_b = t.take(b + 'attn.proj.weight', (D, D)), t.take(b + 'attn.proj.bias', (D,))
        fc1_w, fc1_b = t.take(b + 'mlp.fc1.weight', (M, D)), t.take(b + 'mlp.fc1.bias', (M,))
        fc2_w, fc2_b = t.take(b + 'mlp.fc2.weight', (D, M)), t.take(b + 'mlp.fc2.bias', (D,))
        # LayerScale: x + gamma * f(x) = x + f'(x) with f's last linear layer scaled per output.
        if t.has(b + 'ls1.gamma'):
            g = t.take(b + 'ls1.gamma', (D,))
            proj_w, proj_b = proj_w * g[:, None], proj_b * g
        if t.has(b + 'ls2.gamma'):
            g = t.take(b + 'ls2.gamma', (D,))
            fc2_w, fc2_b = fc2_w * g[:, None], fc2_b * g
        out += [(o + 'LayerNorm_0/scale', t.take(b + 'norm1.weight', (D,))),
                (o + 'LayerNorm_0/bias', t.take(b + 'norm1.bias', (D,)))]
        # qkv rows are [q | k | v], each head-major (H, Dh): torch reshapes to (3, H, Dh).
        for j, part in enumerate(('query', 'key', 'value')):
            out.append((o + f'SelfAttention/{part}/kernel', qkv_w[j * D:(j + 1) * D].T.reshape(D, H, Dh)))
            out.append((o + f'SelfAttention/{part}/bias', qkv_b[j * D:(j + 1) * D].reshape(H, Dh)))
        out += [(o + 'SelfAttention/out/kernel', proj_w.T.reshape(H, Dh, D)),
                (o + 'SelfAttention/out/bias', proj_b),
                (o + 'LayerNorm_1/scale', t.take(b + 'norm2.weight', (D,))),
                (o + 'LayerNorm_1/bias', t.take(b + 'norm2.bias', (D,))),
                (o + 'Mlp/Dense_0/kernel', fc1_w.T), (o + 'Mlp/Dense_0/bias', fc1_b),
                (o + 'Mlp/Dense_1/kernel', fc2_w.T), (o + 'Mlp/Dense_1/bias', fc2_b)]
    out += [('Encoder/encoder_norm/scale', t.take('norm.weight', (D,))),
            ('Encoder/encoder_norm/bias', t.take('norm.bias', (D,)))]
    representation = None
    if t.has('pre_logits.fc.weight'):  # old ViTs with a representation layer (tanh)
        r = t.arrays['pre_logits.fc.weight'].shape[0]
        representation = r
        out += [('pre_logits/kernel', t.take('pre_logits.fc.weight', (r, D)).T),
                ('pre_logits/bias', t.take('pre_logits.fc.bias', (r,)))]
    pooled = representation or D
    out += [('head/kernel', t.take('head.weight', (classes, pooled)).T),
            ('head/bias', t.take('head.bias', (classes,)))]
    leftovers = t.leftovers()
    if leftovers:
        raise ConvertError(f'{path}: tensor "{leftovers[0]}" has no place in a vmoe model'
                           + (f' ({len(leftovers) - 1} more)' if len(leftovers) > 1 else ''))

    pool = (hub_config or {}).get('global_pool') or ('token' if has_cls else 'avg')
    if pool not in ('token', 'avg', ''):
        raise ConvertError(f'{path}: global_pool "{pool}" is not supported (token or avg)')
    if pool == 'avg' and has_cls:
        raise ConvertError(f'{path}: average pooling over patches with a CLS token is not representable '
                           '(vmoe\'s gap pools every token)')
    if pool == 'token' and not has_cls:
        raise ConvertError(f'{path}: token pooling without a cls_token')

    labels = None
    if args.labels:
        labels = read_labels(args.labels, classes)
    elif (hub_config or {}).get('label_names') and len(hub_config['label_names']) == classes:
        labels = list(hub_config['label_names'])
    elif classes == 1000 and os.path.exists(LABELS_1K):
        labels = read_labels(LABELS_1K, classes)
    config = {
        'format': 'vmoe', 'version': 1,
        'image': {'height': height, 'width': width, 'channels': int(C), 'resize': 'resize_small_crop',
                  # timm's eval transform: shorter side to floor(size / crop_pct), centre crop.
                  'resize_small': int(math.floor(max(height, width) / crop_pct)), 'value_range': [0, 1]},
        'patch': [int(ph), int(pw)], 'hidden_size': int(D), 'num_layers': depth, 'num_heads': int(H),
        'mlp_dim': int(M), 'classifier': 'token' if has_cls else 'gap', 'representation_size': representation,
        'layer_norm_eps': 1e-6, 'gelu': 'erf', 'num_classes': int(classes), 'moe': None,
    }
    if labels:
        config['labels'] = labels
    return [(name, np.asarray(a, dtype=np.float32)) for name, a in out], config


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0])
    parser.add_argument('model', help='timm ViT .safetensors file')
    parser.add_argument('-o', '--output', required=True, help='vmoe model file to write')
    parser.add_argument('--config', help='the Hub config.json (pretrained_cfg: input_size, crop_pct, mean, std)')
    parser.add_argument('--heads', type=int, help='attention heads (default: from the architecture name, else D/64)')
    parser.add_argument('--image-size', type=int, help='input size in pixels (square)')
    parser.add_argument('--crop-pct', type=float, help='timm crop_pct (default: config.json, else 0.875)')
    parser.add_argument('--mean', type=float, nargs='+', help='per-channel mean of timm\'s normalisation')
    parser.add_argument('--std', type=float, nargs='+', help='per-channel std of timm\'s normalisation')
    parser.add_argument('--labels', help='class names, one per line')
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return 2 if e.code else 0
    try:
        if args.heads is not None and args.heads < 1:
            raise UsageError('--heads must be positive')
        if args.image_size is not None and args.image_size < 1:
            raise UsageError('--image-size must be positive')
        hub_config = None
        if args.config:
            try:
                with open(args.config, encoding='utf-8') as f:
                    hub_config = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise UsageError(f'{args.config}: cannot read config.json ({e})')
        tensors, config = convert(read_safetensors(args.model), args.model, args, hub_config)
        write_safetensors(args.output, tensors, {'vmoe.config': json.dumps(config)})
    except UsageError as e:
        print(f'{PROG}: error: {e}', file=sys.stderr)
        return 2
    except (ConvertError, OSError) as e:
        print(f'{PROG}: error: {e}', file=sys.stderr)
        return 1
    n = sum(a.size for _, a in tensors)
    print(f'wrote {args.output}: {config["num_layers"]} blocks, D {config["hidden_size"]}, {config["num_heads"]} heads, '
          f'{config["image"]["height"]}x{config["image"]["width"]}, {config["num_classes"]} classes, '
          f'{n} parameters, GELU erf', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
