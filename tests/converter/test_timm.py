#!/usr/bin/python3
"""timm ViT -> scripts/convert_timm_vit.py -> `vmoe classify --json`, against a numpy
forward written the way timm computes (torch layouts, input normalisation, erf GELU,
LayerScale), on small random models in timm's naming.

  - token pooling with CLS, pos_embed with a CLS row, mean/std and crop_pct from a Hub
    config.json; average pooling without CLS with LayerScale and flag mean/std; CLS with
    a pos_embed without a CLS row (no_embed_class); bf16 storage;
  - the converted config: erf GELU, value_range [0, 1], resize_small = floor(size/crop_pct);
  - the engine's logits (with --resize none on images of the model's size, so
    preprocessing is the identity) equal the timm-style forward to 1e-4, while the same
    forward with the tanh GELU is 5x further off (so the check sees the GELU form);
  - unsupported checkpoints (fc_norm, leftover tensors) and bad flags exit 1 / 2 with one
    line and write nothing.

Needs VMOE_BINARY (CTest sets it); the vmoe part is skipped without it.
"""

import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.environ.get('VMOE_SOURCE_DIR') or os.path.normpath(os.path.join(HERE, '..', '..'))
PYTHON = '/usr/bin/python3' if os.path.exists('/usr/bin/python3') else sys.executable
CONVERTER = os.path.join(ROOT, 'scripts', 'convert_timm_vit.py')
VMOE = os.environ.get('VMOE_BINARY')
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(ROOT, 'tests', 'reference'))

import vmoe_ref  # noqa: E402  (PPM writer, model file reader)

D, H, DEPTH, M, PATCH, SIZE, C, CLASSES = 16, 2, 2, 32, 4, 16, 3, 5
TOL = 1e-4  # float32 engine vs float64 numpy: ~1e-5 here; logits are ~10


def write_timm_file(path, arrays, bf16=False):
    """A safetensors file as timm/HF write it: torch names, F32 (or BF16) tensors."""
    header, blobs, offset = {}, [], 0
    for name, a in arrays.items():
        a = np.asarray(a, dtype=np.float32)
        if bf16:  # round to nearest even on the top 16 bits
            bits = a.view(np.uint32)
            raw = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype('<u2').tobytes()
        else:
            raw = a.astype('<f4').tobytes()
        header[name] = {'dtype': 'BF16' if bf16 else 'F32', 'shape': list(a.shape),
                        'data_offsets': [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(text)) + text + b''.join(blobs))


def read_back(path):
    """The float32 values a file holds (bf16 files widened), as the converter sees them."""
    with open(path, 'rb') as f:
        data = f.read()
    (n,) = struct.unpack('<Q', data[:8])
    header, body, out = json.loads(data[8:8 + n]), data[8 + n:], {}
    for name, e in header.items():
        b, end = e['data_offsets']
        if e['dtype'] == 'BF16':
            a = (np.frombuffer(body[b:end], '<u2').astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(body[b:end], '<f4')
        out[name] = a.reshape(e['shape']).astype(np.float64)
    return out


def random_timm(seed, cls=True, pos_cls_row=True, layer_scale=False, extra=()):
    rng = np.random.default_rng(seed)
    n = lambda *s, std=1.0: rng.normal(0, std, s)  # noqa: E731
    grid = (SIZE // PATCH) ** 2
    a = {'patch_embed.proj.weight': n(D, C, PATCH, PATCH, std=0.3), 'patch_embed.proj.bias': n(D, std=0.3),
         'pos_embed': n(1, grid + (1 if cls and pos_cls_row else 0), D, std=0.5)}
    if cls:
        a['cls_token'] = n(1, 1, D, std=0.5)
    for i in range(DEPTH):
        b = f'blocks.{i}.'
        a.update({b + 'norm1.weight': 1 + n(D, std=0.2), b + 'norm1.bias': n(D, std=0.2),
                  b + 'attn.qkv.weight': n(3 * D, D, std=0.5), b + 'attn.qkv.bias': n(3 * D, std=0.2),
                  b + 'attn.proj.weight': n(D, D, std=0.4), b + 'attn.proj.bias': n(D, std=0.2),
                  b + 'norm2.weight': 1 + n(D, std=0.2), b + 'norm2.bias': n(D, std=0.2),
                  # wide pre-activations, where the tanh and erf GELUs differ most
                  b + 'mlp.fc1.weight': n(M, D, std=0.8), b + 'mlp.fc1.bias': n(M, std=0.5),
                  b + 'mlp.fc2.weight': n(D, M, std=1.5), b + 'mlp.fc2.bias': n(D, std=0.2)})
        if layer_scale:
            a[b + 'ls1.gamma'] = 1 + n(D, std=0.3)
            a[b + 'ls2.gamma'] = 1.5 + n(D, std=0.3)
    a.update({'norm.weight': 1 + n(D, std=0.2), 'norm.bias': n(D, std=0.2),
              'head.weight': n(CLASSES, D, std=2.0), 'head.bias': n(CLASSES, std=0.5)})
    for name in extra:
        a[name] = n(D)
    return a


def gelu_exact(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def layer_norm(x, w, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * w + b


def timm_forward(a, pixels, mean, std, pool, gelu=gelu_exact):
    """timm's VisionTransformer.forward on uint8 (B, H, W, C) images, in float64."""
    x = (pixels.astype(np.float64) / 255.0 - mean) / std  # ToTensor + Normalize
    x = x.transpose(0, 3, 1, 2)  # NCHW
    B, g = x.shape[0], SIZE // PATCH
    w, bias = a['patch_embed.proj.weight'], a['patch_embed.proj.bias']
    tokens = np.zeros((B, g, g, D))
    for gy in range(g):
        for gx in range(g):
            window = x[:, :, gy * PATCH:(gy + 1) * PATCH, gx * PATCH:(gx + 1) * PATCH]
            tokens[:, gy, gx] = np.einsum('bcij,dcij->bd', window, w) + bias
    x = tokens.reshape(B, g * g, D)  # flatten(2).transpose(1, 2): row-major grid
    pos = a['pos_embed']
    if 'cls_token' in a:
        cls = np.broadcast_to(a['cls_token'], (B, 1, D))
        if pos.shape[1] == g * g:  # no_embed_class: position first, then prepend CLS
            x = np.concatenate([cls, x + pos], axis=1)
        else:
            x = np.concatenate([cls, x], axis=1) + pos
    else:
        x = x + pos
    lin = lambda v, name: v @ a[name + '.weight'].T + a[name + '.bias']  # noqa: E731
    for i in range(DEPTH):
        b = f'blocks.{i}.'
        h = layer_norm(x, a[b + 'norm1.weight'], a[b + 'norm1.bias'])
        qkv = lin(h, b + 'attn.qkv').reshape(B, -1, 3, H, D // H).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (D // H) ** -0.5, qkv[1], qkv[2]
        s = q @ k.transpose(0, 1, 3, 2)
        s = np.exp(s - s.max(-1, keepdims=True))
        o = ((s / s.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(B, -1, D)
        o = lin(o, b + 'attn.proj')
        x = x + (o * a[b + 'ls1.gamma'] if b + 'ls1.gamma' in a else o)
        h = layer_norm(x, a[b + 'norm2.weight'], a[b + 'norm2.bias'])
        o = gelu(lin(h, b + 'mlp.fc1')) @ a[b + 'mlp.fc2.weight'].T + a[b + 'mlp.fc2.bias']
        x = x + (o * a[b + 'ls2.gamma'] if b + 'ls2.gamma' in a else o)
    x = layer_norm(x, a['norm.weight'], a['norm.bias'])
    rep = x[:, 0] if pool == 'token' else x.mean(axis=1)
    return lin(rep, 'head')


def run(cmd):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


class TimmConverterTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix='vmoe-timm-')
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def convert(self, arrays, flags=(), hub_config=None, bf16=False, expect=0):
        src, out = self.path('timm.safetensors'), self.path('out.safetensors')
        write_timm_file(src, arrays, bf16=bf16)
        cmd = [PYTHON, CONVERTER, src, '-o', out, '--heads', str(H)] + list(flags)
        if hub_config is not None:
            with open(self.path('config.json'), 'w') as f:
                json.dump(hub_config, f)
            cmd += ['--config', self.path('config.json')]
        code, _, err = run(cmd)
        self.assertEqual(code, expect, err)
        if expect:
            self.assertEqual(len(err.strip().splitlines()), 1, err)
            self.assertFalse(os.path.exists(out), 'a failed conversion left a file')
            return err
        return out

    def check_logits(self, arrays, model, mean, std, pool, seed, gelu_check=True):
        rng = np.random.default_rng(seed)
        pixels = rng.integers(0, 256, (3, SIZE, SIZE, C), dtype=np.uint8)
        files = []
        for i, p in enumerate(pixels):
            files.append(self.path(f'img{i}.ppm'))
            vmoe_ref.write_pnm(files[-1], p)
        want = timm_forward(arrays, pixels, mean, std, pool)
        if not VMOE:
            return
        code, out, err = run([VMOE, 'classify', '-m', model, '--json', '--resize', 'none'] + files)
        self.assertEqual(code, 0, err)
        got = np.array([r['logits'] for r in json.loads(out)['results']])
        self.assertLess(np.abs(got - want).max(), TOL)
        # The check can tell the GELU forms apart: tanh is far outside the tolerance (not
        # for average pooling, whose mean over tokens evens the difference out).
        if gelu_check:
            self.assertGreater(np.abs(got - timm_forward(arrays, pixels, mean, std, pool, gelu_tanh)).max(), 5 * TOL)

    def test_token_model_with_hub_config(self):
        arrays = random_timm(1)
        mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
        hub = {'architecture': 'vit_tiny_patch4_16', 'num_classes': CLASSES, 'global_pool': 'token',
               'pretrained_cfg': {'input_size': [3, SIZE, SIZE], 'interpolation': 'bicubic', 'crop_pct': 0.9,
                                  'mean': mean, 'std': std},
               'label_names': [f'thing {i}' for i in range(CLASSES)]}
        model = self.convert(arrays, hub_config=hub)
        tensors, cfg = vmoe_ref.read_safetensors(model)
        self.assertEqual(cfg['gelu'], 'erf')
        self.assertEqual(cfg['image']['value_range'], [0, 1])
        self.assertEqual(cfg['image']['resize'], 'resize_small_crop')
        self.assertEqual(cfg['image']['resize_small'], math.floor(SIZE / 0.9))
        self.assertEqual(cfg['classifier'], 'token')
        self.assertEqual(cfg['labels'][2], 'thing 2')
        self.assertEqual(tensors['Encoder/encoderblock_1/SelfAttention/query/kernel'].shape, (D, H, D // H))
        self.check_logits(arrays, model, np.array(mean), np.array(std), 'token', 2)
        if VMOE:  # the config's own resize rule runs on an image of another size
            img = self.path('big.ppm')
            vmoe_ref.write_pnm(img, np.random.default_rng(3).integers(0, 256, (21, 30, C), dtype=np.uint8))
            code, out, err = run([VMOE, 'classify', '-m', model, '--json', img])
            self.assertEqual(code, 0, err)
            code, out, err = run([VMOE, 'info', model])
            self.assertIn('GELU erf', out)

    def test_gap_model_with_layer_scale_in_bf16(self):
        arrays = random_timm(4, cls=False, layer_scale=True)
        model = self.convert(arrays, flags=['--mean', '0.5', '0.5', '0.5', '--std', '0.5', '0.5', '0.5'], bf16=True)
        self.assertEqual(vmoe_ref.read_safetensors(model)[1]['classifier'], 'gap')
        self.check_logits(read_back(self.path('timm.safetensors')), model, 0.5, 0.5, 'avg', 5, gelu_check=False)

    def test_no_embed_class_pos_embed(self):
        arrays = random_timm(6, pos_cls_row=False)
        model = self.convert(arrays, flags=['--mean', '0.5', '0.4', '0.3', '--std', '0.2', '0.3', '0.4'])
        pos = vmoe_ref.read_safetensors(model)[0]['Encoder/posembed_input/pos_embedding']
        self.assertTrue(np.all(pos[0, 0] == 0))
        self.check_logits(arrays, model, np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.3, 0.4]), 'token', 7)

    def test_unsupported_and_bad_flags(self):
        err = self.convert(random_timm(8, cls=False, extra=['fc_norm.weight', 'fc_norm.bias']), expect=1)
        self.assertIn('fc_norm', err)
        err = self.convert(random_timm(8, extra=['blocks.0.something.weight']), expect=1)
        self.assertIn('blocks.0.something.weight', err)
        arrays = random_timm(8)
        del arrays['blocks.1.mlp.fc2.bias']
        self.assertIn('blocks.1.mlp.fc2.bias', self.convert(arrays, expect=1))
        self.convert(random_timm(8), flags=['--heads', '3'], expect=2)  # 3 does not divide 16
        self.convert(random_timm(8), flags=['--mean', '0.5'], expect=2)  # one value for 3 channels
        with open(self.path('junk.safetensors'), 'wb') as f:
            f.write(struct.pack('<Q', 1 << 40))
        code, _, err = run([PYTHON, CONVERTER, self.path('junk.safetensors'), '-o', self.path('x.safetensors')])
        self.assertEqual(code, 1, err)


if __name__ == '__main__':
    unittest.main()
