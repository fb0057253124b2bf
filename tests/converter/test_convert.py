#!/usr/bin/python3
"""Tests of scripts/convert_vmoe_checkpoint.py on checkpoints written in the released
V-MoE format (see make_checkpoint.py).  Run: /usr/bin/python3 tests/converter/test_convert.py
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import msgpack
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, '..', '..'))
CONVERTER = os.path.join(ROOT, 'scripts', 'convert_vmoe_checkpoint.py')
MAKER = os.path.join(HERE, 'make_checkpoint.py')
LABELS_1K = os.path.join(ROOT, 'data', 'labels', 'imagenet1k.txt')
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # keep tests/converter free of __pycache__

import make_checkpoint as mc  # noqa: E402

S32 = 'vmoe_s32_last2_ilsvrc2012_randaug_light1'
S32_FT = 'vmoe_s32_last2_ilsvrc2012_randaug_light1_ft_ilsvrc2012'
B16 = 'vmoe_b16_imagenet21k_randaug_strong'


def read_safetensors(path):
    """Strict reader: checks the layout the engine relies on; returns (tensors, config)."""
    with open(path, 'rb') as f:
        blob = f.read()
    n = int.from_bytes(blob[:8], 'little')
    assert n % 8 == 0, 'header length %d is not a multiple of 8' % n
    header = json.loads(blob[8:8 + n].decode('utf-8'))
    data = blob[8 + n:]
    meta = header.pop('__metadata__')
    assert list(meta) == ['vmoe.config'], meta
    config = json.loads(meta['vmoe.config'])
    tensors = {}
    end = 0
    for name, entry in sorted(header.items(), key=lambda kv: kv[1]['data_offsets'][0]):
        assert entry['dtype'] == 'F32', name
        b, e = entry['data_offsets']
        assert b == end, 'gap or overlap before %s' % name
        count = int(np.prod(entry['shape'], dtype=np.int64))
        assert e - b == 4 * count, name
        tensors[name] = np.frombuffer(data[b:e], dtype='<f4').reshape(entry['shape'])
        end = e
    assert end == len(data), 'data section has %d bytes, tensors use %d' % (len(data), end)
    return tensors, config


def b16_params(rng, num_classes=21843):
    """B/16-shaped (12 blocks: encoderblock_10 sorts before encoderblock_2), tiny D."""
    return mc.make_vmoe_params(rng, num_layers=12, hidden=8, heads=2, mlp=16, experts=4,
                               moe_layers=(1, 3, 5, 7, 9, 11), patch=16, image_size=224,
                               num_classes=num_classes, representation_size=None)


class ConverterTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix='vmoe-convert-test-')
        self.ckdir = os.path.join(self.tmp, 'ckpt')
        self.outdir = os.path.join(self.tmp, 'out')
        os.makedirs(self.ckdir)
        os.makedirs(self.outdir)
        self.out = os.path.join(self.outdir, 'model.safetensors')

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------

    def write(self, ckpt, name=S32):
        prefix = os.path.join(self.ckdir, name)
        mc.write_checkpoint_files(prefix, ckpt)
        return prefix

    def convert(self, prefix, *extra, out=None):
        cmd = [sys.executable, CONVERTER, prefix, '-o', out or self.out] + list(extra)
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=120)

    def assert_ok(self, r):
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, '')

    def assert_bits_equal(self, tensors, expected):
        self.assertEqual(sorted(tensors), sorted(expected))
        for name, want in expected.items():
            got = tensors[name]
            self.assertEqual(got.shape, want.shape, name)
            self.assertTrue(np.array_equal(got.view(np.uint32), want.view(np.uint32)),
                            '%s differs' % name)

    def assert_fails(self, r, code, *needles):
        """Non-zero exit with a one-line error naming `needles`; nothing left in out/."""
        self.assertEqual(r.returncode, code, r.stderr)
        errors = [l for l in r.stderr.splitlines() if l.startswith('convert_vmoe_checkpoint: error:')]
        self.assertEqual(len(errors), 1, r.stderr)
        for needle in needles:
            self.assertIn(needle, errors[0])
        self.assertEqual(os.listdir(self.outdir), [], 'files left behind')
        return errors[0]

    # -- good checkpoints ----------------------------------------------------------

    def test_writer_leaf_order_sorts_as_strings(self):
        order = mc.leaf_order(b16_params(np.random.default_rng(0), num_classes=3))
        self.assertLess(order.index('Encoder/encoderblock_10/LayerNorm_0/bias'),
                        order.index('Encoder/encoderblock_2/LayerNorm_0/bias'))
        self.assertEqual(order[0], 'Encoder/encoder_norm/bias')  # '_' < 'b' < 'p'
        self.assertEqual(order[-1], 'head/kernel')
        self.assertEqual(mc.leaf_order({'b': 0, 'a/y': 0, 'a/x': 0, 'a_': 0}), ['a/x', 'a/y', 'a_', 'b'])

    def test_s32_sharded_v1_bit_exact(self):
        rng = np.random.default_rng(1)
        params = mc.make_vmoe_params(rng, hidden=16, heads=8, mlp=32, representation_size=16)
        D, M, E, C = 16, 32, 8, 1000
        splits = {
            # split across two shards by expert, unequal halves, sub-chunked below
            'Encoder/encoderblock_5/Moe/Mlp/Dense_0/kernel': [(((0, 3), (0, D), (0, M)), 2),
                                                              (((3, E), (0, D), (0, M)), 0)],
            # split along two axes into four chunks in three shards
            'head/kernel': [(((0, 7), (0, 600)), 0), (((0, 7), (600, C)), 1),
                            (((7, 16), (0, 600)), 2), (((7, 16), (600, C)), 1)],
        }
        bf16 = {'Encoder/encoderblock_5/Moe/Mlp/Dense_0/kernel', 'Encoder/encoderblock_1/SelfAttention/query/kernel',
                'head/bias'}
        ckpt = mc.build_checkpoint(params, shard_count=3, splits=splits, bf16=bf16, subchunk=50)
        # The split leaf really is in two shards, with several sub-chunks per chunk.
        n = ckpt.number('Encoder/encoderblock_5/Moe/Mlp/Dense_0/kernel')
        self.assertIn(str(n), ckpt.shards[0])
        self.assertIn(str(n), ckpt.shards[2])
        self.assertGreater(len(ckpt.shards[0][str(n)][0][0]), 1)
        # bf16 leaves do lose bits: the test would notice a converter that ignored the dtype.
        q = 'Encoder/encoderblock_1/SelfAttention/query/kernel'
        self.assertFalse(np.array_equal(ckpt.expected[q], params[q]))
        prefix = self.write(ckpt)
        r = self.convert(prefix)
        self.assert_ok(r)
        tensors, cfg = read_safetensors(self.out)
        self.assert_bits_equal(tensors, ckpt.expected)
        self.assertEqual(cfg['format'], 'vmoe')
        self.assertEqual(cfg['version'], 1)
        self.assertEqual(cfg['image'], {'height': 224, 'width': 224, 'channels': 3,
                                        'resize': 'resize_small_crop', 'resize_small': 256,
                                        'value_range': [-1, 1]})
        self.assertEqual(cfg['patch'], [32, 32])
        self.assertEqual((cfg['hidden_size'], cfg['num_layers'], cfg['num_heads'], cfg['mlp_dim']),
                         (16, 8, 8, 32))
        self.assertEqual(cfg['classifier'], 'token')
        self.assertEqual(cfg['representation_size'], 16)
        self.assertEqual(cfg['layer_norm_eps'], 1e-6)
        self.assertEqual(len(cfg['labels']), 1000)
        self.assertEqual(cfg['labels'][0], 'tench, Tinca tinca')
        self.assertEqual(cfg['num_classes'], 1000)
        self.assertEqual(cfg['moe'], {'layers': [5, 7], 'router': 'top_k', 'num_experts': 8, 'k': 2,
                                      'capacity_factor': 4.0, 'capacity_rounding': 'ceil',
                                      'capacity_multiple_of': 4, 'batch_priority': False,
                                      'group_images': 1, 'noise_std': 1.0, 'slots_per_expert': 1})
        self.assertIn('8 layers, hidden 16, 8 heads, MLP 32', r.stderr)
        self.assertIn('blocks 5,7, 8 experts, top-2', r.stderr)

    def test_b16_twelve_blocks_old_index_bit_exact(self):
        rng = np.random.default_rng(2)
        params = b16_params(rng)
        bf16 = {'Encoder/encoderblock_10/Moe/Router/dense/kernel', 'Encoder/encoderblock_2/Mlp/Dense_0/kernel'}
        ckpt = mc.build_checkpoint(params, shard_count=4, bf16=bf16, subchunk=7, version=False)
        self.assertNotIn('version', ckpt.index)
        prefix = self.write(ckpt, B16)
        r = self.convert(prefix)
        self.assert_ok(r)
        tensors, cfg = read_safetensors(self.out)
        self.assert_bits_equal(tensors, ckpt.expected)
        self.assertEqual(cfg['num_layers'], 12)
        self.assertEqual(cfg['patch'], [16, 16])
        self.assertIsNone(cfg['representation_size'])
        self.assertEqual(cfg['moe']['layers'], [1, 3, 5, 7, 9, 11])
        self.assertEqual(cfg['moe']['num_experts'], 4)
        self.assertEqual(cfg['moe']['k'], 2)
        self.assertEqual(cfg['moe']['capacity_factor'], 1.05)
        self.assertNotIn('labels', cfg)
        self.assertEqual(cfg['num_classes'], 21843)
        self.assertIn('version none', r.stderr)

    def test_finetune_384_stretch(self):
        ckpt = mc.tiny_s32_checkpoint(image_size=384, hidden=16, seed=3)
        prefix = self.write(ckpt, S32_FT)
        r = self.convert(prefix)
        self.assert_ok(r)
        tensors, cfg = read_safetensors(self.out)
        self.assert_bits_equal(tensors, ckpt.expected)
        self.assertEqual((cfg['image']['height'], cfg['image']['width']), (384, 384))
        self.assertEqual(cfg['image']['resize'], 'stretch')
        self.assertIsNone(cfg['representation_size'])
        self.assertEqual(cfg['moe']['capacity_factor'], 1.5)
        self.assertEqual(tensors['Encoder/posembed_input/pos_embedding'].shape, (1, 145, 16))

    def test_unknown_name_needs_k_and_infers_image_size(self):
        ckpt = mc.tiny_s32_checkpoint(image_size=384, hidden=16, seed=4)
        prefix = self.write(ckpt, 'my_checkpoint')
        self.assert_fails(self.convert(prefix), 2, '--k', 'my_checkpoint')
        r = self.convert(prefix, '--k', '1', '--capacity-factor', '2.5', '--routing', 'bpr')
        self.assert_ok(r)
        tensors, cfg = read_safetensors(self.out)
        self.assert_bits_equal(tensors, ckpt.expected)
        self.assertEqual(cfg['image']['height'], 384)
        self.assertEqual(cfg['image']['resize'], 'stretch')
        self.assertEqual(cfg['moe']['k'], 1)
        self.assertEqual(cfg['moe']['capacity_factor'], 2.5)
        self.assertTrue(cfg['moe']['batch_priority'])
        # --name picks a table entry; "PREFIX.index" is accepted as the prefix.
        os.unlink(self.out)
        r = self.convert(prefix + '.index', '--name', S32_FT)
        self.assert_ok(r)
        self.assertEqual(read_safetensors(self.out)[1]['moe']['k'], 2)

    def test_wrong_image_size_is_reported(self):
        prefix = self.write(mc.tiny_s32_checkpoint(image_size=224, hidden=16))
        line = self.assert_fails(self.convert(prefix, '--image-size', '384'), 2,
                                 'pos_embedding', '50 tokens', '12x12')
        self.assertIn('224x224', line)
        self.assert_fails(self.convert(prefix, '--image-size', '200'), 2, 'multiple of the patch')

    def test_labels_option(self):
        rng = np.random.default_rng(5)
        params = mc.make_vmoe_params(rng, hidden=16, heads=4, mlp=32, num_classes=3)
        prefix = self.write(mc.build_checkpoint(params, shard_count=2))
        labels = os.path.join(self.tmp, 'labels.txt')
        with open(labels, 'w') as f:
            f.write('cat\ndog\r\nbird\n')
        r = self.convert(prefix, '--labels', labels)
        self.assert_ok(r)
        self.assertEqual(read_safetensors(self.out)[1]['labels'], ['cat', 'dog', 'bird'])
        os.unlink(self.out)
        with open(labels, 'w') as f:
            f.write('cat\ndog\n')
        self.assert_fails(self.convert(prefix, '--labels', labels), 1, labels, '2 labels', '3 classes')

    def test_train_state_tree_uses_params(self):
        rng = np.random.default_rng(6)
        params = mc.make_vmoe_params(rng, hidden=16, heads=4, mlp=32, num_layers=3, moe_layers=(1,))
        tree = {'params/' + k: v for k, v in params.items()}
        tree['opt_state/mu/head/bias'] = np.zeros(3, np.float32)
        tree['step'] = np.zeros((), np.float32)
        prefix = self.write(mc.build_checkpoint(tree, shard_count=2))
        r = self.convert(prefix)
        self.assert_ok(r)
        tensors, _ = read_safetensors(self.out)
        self.assert_bits_equal(tensors, params)

    def test_check_writes_nothing(self):
        prefix = self.write(mc.tiny_s32_checkpoint(hidden=8))
        r = subprocess.run([sys.executable, CONVERTER, prefix, '--check'], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('complete and consistent', r.stderr)
        self.assertEqual(os.listdir(self.outdir), [])

    def test_list_files(self):
        params = self.small()
        prefix = self.write(mc.build_checkpoint(params, shard_count=3))
        r = subprocess.run([sys.executable, CONVERTER, prefix, '--list-files'], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split(), [S32 + '.data-0000%d-of-00003' % i for i in range(3)])

    def test_make_checkpoint_cli(self):
        prefix = os.path.join(self.ckdir, S32_FT)
        npz = os.path.join(self.tmp, 'expected.npz')
        r = subprocess.run([sys.executable, MAKER, '--out', prefix, '--image-size', '384', '--npz', npz],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                           timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(sorted(os.listdir(self.ckdir)),
                         [S32_FT + '.data-0000%d-of-00003' % i for i in range(3)] + [S32_FT + '.index'])
        self.assert_ok(self.convert(prefix))
        tensors, cfg = read_safetensors(self.out)
        with np.load(npz) as z:
            self.assert_bits_equal(tensors, {k: z[k] for k in z.files})
        self.assertEqual(cfg['image']['resize'], 'stretch')
        self.assertEqual(cfg['hidden_size'], 32)

    # -- bad checkpoints -----------------------------------------------------------

    def small(self):
        rng = np.random.default_rng(7)
        params = mc.make_vmoe_params(rng, hidden=16, heads=4, mlp=32, num_layers=4, moe_layers=(1, 3),
                                     num_classes=5)
        return params

    def test_missing_index(self):
        self.assert_fails(self.convert(os.path.join(self.ckdir, S32)), 1, S32 + '.index', 'missing')

    def test_missing_shard(self):
        params = self.small()
        prefix = self.write(mc.build_checkpoint(params, shard_count=3))
        victim = mc.shard_path(prefix, 1, 3)
        os.unlink(victim)
        self.assert_fails(self.convert(prefix), 1, victim, 'missing shard')

    def test_truncated_shard(self):
        params = self.small()
        prefix = self.write(mc.build_checkpoint(params, shard_count=3))
        victim = mc.shard_path(prefix, 2, 3)
        size = os.path.getsize(victim)
        with open(victim, 'r+b') as f:
            f.truncate(size // 2)
        self.assert_fails(self.convert(prefix), 1, victim, 'truncated')

    def test_truncated_index(self):
        params = self.small()
        prefix = self.write(mc.build_checkpoint(params, shard_count=2))
        with open(prefix + '.index', 'r+b') as f:
            f.truncate(100)
        self.assert_fails(self.convert(prefix), 1, prefix + '.index', 'truncated')

    def test_chunk_outside_array_in_index(self):
        params = self.small()
        leaf = 'Encoder/encoderblock_2/Mlp/Dense_0/bias'
        ckpt = mc.build_checkpoint(params, shard_count=2, splits={leaf: [(((0, 36),), 0)]})
        self.assert_fails(self.convert(self.write(ckpt)), 1, leaf, 'outside')

    def test_chunk_outside_array_in_shard(self):
        params = self.small()
        leaf = 'Encoder/encoderblock_1/Moe/Mlp/Dense_1/kernel'  # (8, 32, 16)
        ckpt = mc.build_checkpoint(params, shard_count=2)
        n = str(ckpt.number(leaf))
        shard = next(s for s, m in ckpt.shards.items() if n in m)
        ckpt.shards[shard][n][0][1] = mc.slice_nd_ext(((4, 12), (0, 32), (0, 16)))
        self.assert_fails(self.convert(self.write(ckpt)), 1, leaf, 'outside',
                          mc.shard_path(os.path.join(self.ckdir, S32), shard, 2))

    def test_unknown_ext_type_in_shard(self):
        params = self.small()
        leaf = 'Encoder/encoderblock_3/Moe/Router/dense/kernel'
        ckpt = mc.build_checkpoint(params, shard_count=2, subchunk=16)
        n = str(ckpt.number(leaf))
        shard = next(s for s, m in ckpt.shards.items() if n in m)
        ckpt.shards[shard][n][0][0][1] = msgpack.ExtType(42, b'\x93\x00\x00\x00')
        self.assert_fails(self.convert(self.write(ckpt)), 1, leaf, 'extension type 42')

    def test_unknown_ext_type_in_index(self):
        params = self.small()
        ckpt = mc.build_checkpoint(params, shard_count=2)
        ckpt.index['index']['Encoder']['encoderblock_0']['LayerNorm_1']['bias'] = msgpack.ExtType(9, b'')
        self.assert_fails(self.convert(self.write(ckpt)), 1, 'Encoder/encoderblock_0/LayerNorm_1/bias',
                          'extension type 9')

    def test_missing_expected_key(self):
        params = self.small()
        del params['Encoder/encoderblock_3/LayerNorm_1/scale']
        self.assert_fails(self.convert(self.write(mc.build_checkpoint(params, shard_count=2))), 1,
                          'Encoder/encoderblock_3/LayerNorm_1/scale')

    def test_missing_block(self):
        params = self.small()
        for k in [k for k in params if k.startswith('Encoder/encoderblock_2/')]:
            del params[k]
        self.assert_fails(self.convert(self.write(mc.build_checkpoint(params))), 1, 'encoderblock_2')

    def test_not_a_vmoe_tree(self):
        params = {'dense/kernel': np.zeros((2, 2), np.float32)}
        self.assert_fails(self.convert(self.write(mc.build_checkpoint(params))), 1, 'embedding/kernel')

    def test_unexpected_key(self):
        params = self.small()
        params['Encoder/encoderblock_1/Moe/Router/dense/bias'] = np.zeros(8, np.float32)
        self.assert_fails(self.convert(self.write(mc.build_checkpoint(params))), 1,
                          'Encoder/encoderblock_1/Moe/Router/dense/bias')

    def test_wrong_shape(self):
        params = self.small()
        params['Encoder/encoderblock_2/SelfAttention/out/bias'] = np.zeros(15, np.float32)
        self.assert_fails(self.convert(self.write(mc.build_checkpoint(params))), 1,
                          'Encoder/encoderblock_2/SelfAttention/out/bias', '(15)', '(16)')

    def test_chunks_do_not_cover_array(self):
        params = self.small()
        leaf = 'head/kernel'  # (16, 5)
        ckpt = mc.build_checkpoint(params, shard_count=2, splits={leaf: [(((0, 10), (0, 5)), 0)]})
        self.assert_fails(self.convert(self.write(ckpt)), 1, leaf, 'cover 50 of the 80')

    def test_overlapping_chunks(self):
        params = self.small()
        leaf = 'head/kernel'
        ckpt = mc.build_checkpoint(params, shard_count=2, splits={
            leaf: [(((0, 10), (0, 5)), 0), (((8, 16), (0, 5)), 1)]})
        self.assert_fails(self.convert(self.write(ckpt)), 1, leaf, 'overlap')

    def test_chunk_missing_from_shard(self):
        params = self.small()
        leaf = 'Encoder/encoderblock_1/Moe/Mlp/Dense_0/kernel'
        ckpt = mc.build_checkpoint(params, shard_count=2)
        n = str(ckpt.number(leaf))
        shard = next(s for s, m in ckpt.shards.items() if n in m)
        ckpt.shards[shard][n].pop()
        self.assert_fails(self.convert(self.write(ckpt)), 1, leaf,
                          mc.shard_path(os.path.join(self.ckdir, S32), shard, 2))

    def test_chunk_with_wrong_size(self):
        params = self.small()
        leaf = 'embedding/bias'
        ckpt = mc.build_checkpoint(params, shard_count=1, subchunk=4)
        n = str(ckpt.number(leaf))
        ckpt.shards[0][n][0][0].pop()
        self.assert_fails(self.convert(self.write(ckpt)), 1, leaf, '12 values')

    def test_failure_keeps_existing_output(self):
        with open(self.out, 'wb') as f:
            f.write(b'old model')
        params = self.small()
        prefix = self.write(mc.build_checkpoint(params, shard_count=2))
        os.unlink(mc.shard_path(prefix, 1, 2))
        r = self.convert(prefix, '--k', '2')
        self.assertEqual(r.returncode, 1)
        self.assertEqual(os.listdir(self.outdir), ['model.safetensors'])
        with open(self.out, 'rb') as f:
            self.assertEqual(f.read(), b'old model')

    def test_bad_usage(self):
        r = subprocess.run([sys.executable, CONVERTER, 'x'], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 2)
        r = subprocess.run([sys.executable, CONVERTER, 'x', '-o', self.out, '--k', '0'],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 2)
        params = self.small()
        prefix = self.write(mc.build_checkpoint(params))
        self.assert_fails(self.convert(prefix, '--k', '9'), 2, '--k 9', '8 experts')


if __name__ == '__main__':
    unittest.main()
