// The ONNX Runtime peer: one exported model (scripts/ort/export_onnx.py) timed with
// onnxruntime-node's CPU execution provider.
//
//   node bench_ort.mjs --modules DIR --model b8.onnx --batch 8 [--seconds 3] [--threads 2]
//                      [--check b8.check.json] [--spin 0|1] [--profile PREFIX]
//
// DIR holds node_modules/onnxruntime-node (scripts/bench_all.sh installs it into
// $VMOE_NPM_CACHE with `npm ci --ignore-scripts`: the package's post-install step only
// downloads GPU libraries; its prebuilt CPU binding is in the tarball). Session: CPU EP,
// --threads intra-op threads (1 inter-op, sequential), graph optimisation "all" (level 99:
// the FastGelu, LayerNorm, MatMul+Add fusions and layout transforms); --spin as below
// (default: ORT's own, spinning).
// --check: the logits on the images of b{B}.inputs.f32 must match vmoe's (b{B}.check.json)
// within 1e-4 of the logits' scale (max(1, max |logit|)); otherwise exit 1 before timing.
// Timing: 2 warm-up runs, then runs until --seconds have passed and at least 3 ran;
// prints one JSON line {"batch", "images_per_s" (batch / median run), "images_per_s_mean",
// "runs", "max_abs_logit_diff"?}. --profile writes ORT's profile and prints the time per
// operator type (which kernels ran, e.g. whether FastGelu was fused) on stderr.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

function parseArgs(argv) {
  const args = { seconds: 3, threads: 2 };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    if (i + 1 >= argv.length) throw new Error(`bench_ort: ${argv[i]} needs a value`);
    args[key] = argv[i + 1];
  }
  for (const k of ['modules', 'model', 'batch'])
    if (args[k] === undefined) throw new Error(`bench_ort: --${k} is required`);
  args.batch = Number(args.batch);
  args.seconds = Number(args.seconds);
  args.threads = Number(args.threads);
  return args;
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const require = createRequire(path.join(path.resolve(args.modules), 'package.json'));
  const ort = require('onnxruntime-node');
  const options = {
    executionProviders: ['cpu'],
    intraOpNumThreads: args.threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
  };
  // --spin 0: the intra-op pool's threads sleep when idle instead of spinning (ORT's
  // default is to spin), the counterpart of vmoe's and PyTorch's OMP_WAIT_POLICY=passive.
  if (args.spin !== undefined) options.extra = { session: { intra_op: { allow_spinning: String(args.spin) } } };
  if (args.profile) Object.assign(options, { enableProfiling: true, profileFilePrefix: args.profile });
  const session = await ort.InferenceSession.create(args.model, options);
  const input = session.inputNames[0];
  const output = session.outputNames[0];
  const meta = session.inputMetadata?.[0];
  const shape = meta?.shape ?? null;  // static: [B, H, W, C]
  if (!shape || shape.length !== 4 || shape[0] !== args.batch)
    throw new Error(`bench_ort: ${args.model} takes input ${JSON.stringify(shape)}, not batch ${args.batch}`);
  const size = shape.reduce((a, b) => a * b, 1);
  const result = { batch: args.batch };

  if (args.check) {
    const check = JSON.parse(fs.readFileSync(args.check, 'utf8'));
    const raw = fs.readFileSync(args.check.replace(/\.check\.json$/, '.inputs.f32'));
    const images = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
    if (images.length !== size) throw new Error(`bench_ort: ${args.check}: ${images.length} inputs, model takes ${size}`);
    const out = await session.run({ [input]: new ort.Tensor('float32', images, shape) });
    const logits = out[output].data;
    const want = check.vmoe_logits.flat();
    if (logits.length !== want.length) throw new Error(`bench_ort: ${logits.length} logits, vmoe gave ${want.length}`);
    let diff = 0, scale = 1;
    for (let i = 0; i < want.length; ++i) {
      diff = Math.max(diff, Math.abs(logits[i] - want[i]));
      scale = Math.max(scale, Math.abs(want[i]));
    }
    if (!(diff <= 1e-4 * scale)) {
      console.error(`bench_ort: ONNX Runtime's logits differ from vmoe's by ${diff.toExponential(3)} ` +
                    `(scale ${scale.toPrecision(3)}, tolerance 1e-4 of it) for ${args.model}`);
      process.exit(1);
    }
    result.max_abs_logit_diff = diff;
  }

  const images = new Float32Array(size);
  for (let i = 0; i < size; ++i) images[i] = Math.random() * 2 - 1;
  const feeds = { [input]: new ort.Tensor('float32', images, shape) };
  for (let i = 0; i < 2; ++i) await session.run(feeds);
  const times = [];
  const start = process.hrtime.bigint();
  let elapsed = 0;
  while (times.length < 3 || elapsed < args.seconds) {
    const t0 = process.hrtime.bigint();
    await session.run(feeds);
    const t1 = process.hrtime.bigint();
    times.push(Number(t1 - t0) / 1e9);
    elapsed = Number(t1 - start) / 1e9;
  }
  result.images_per_s = args.batch / median(times);
  result.images_per_s_mean = (args.batch * times.length) / times.reduce((a, b) => a + b, 0);
  result.runs = times.length;
  if (args.profile) {
    await session.endProfiling();  // writes PREFIX_<date>.json
    const dir = path.dirname(path.resolve(args.profile)), base = path.basename(args.profile);
    const file = fs.readdirSync(dir).filter((f) => f.startsWith(base + '_') && f.endsWith('.json'))
      .map((f) => path.join(dir, f)).sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs)[0];
    const events = JSON.parse(fs.readFileSync(file, 'utf8'));
    const byOp = new Map();
    for (const e of events) {
      if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time')) continue;
      const op = e.args?.op_name ?? '?';
      const [n, us] = byOp.get(op) ?? [0, 0];
      byOp.set(op, [n + 1, us + e.dur]);
    }
    const rows = [...byOp].sort((a, b) => b[1][1] - a[1][1]);
    console.error(`# ${file}: kernel time per operator type over all profiled runs`);
    for (const [op, [n, us]] of rows) console.error(`${op}\t${n} calls\t${(us / 1000).toFixed(1)} ms`);
  }
  await session.release?.();
  console.log(JSON.stringify(result));
}

main().catch((e) => {
  console.error(e.message ?? String(e));
  process.exit(1);
});
