// The page of `vmoe report` in a real browser: the system Chromium (Debian
// chromium-headless-shell, else chromium) driven by puppeteer-core (tests/browser/
// package.json, installed by scripts/setup.sh with --ignore-scripts: nothing is
// downloaded here). Every expected number comes from `vmoe route --json` for the same
// image, factor and routing; the page's numbers are read from its DOM.
//   node tests/browser/test_report.mjs --vmoe BUILD/vmoe --source REPO --work DIR [--screenshot PNG]
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
for (const need of ['vmoe', 'source', 'work'])
  if (!args[need]) { console.error(`usage: test_report.mjs --vmoe BIN --source REPO --work DIR [--screenshot PNG]`); process.exit(2); }

let puppeteer;
try {
  puppeteer = (await import('puppeteer-core')).default;
} catch (e) {
  console.error(`FAIL: puppeteer-core is not installed in tests/browser/node_modules (scripts/setup.sh installs it): ${e.message}`);
  process.exit(1);
}
const browserPath = [process.env.VMOE_CHROMIUM, '/usr/bin/chromium-headless-shell', '/usr/bin/chromium']
  .find((p) => p && fs.existsSync(p));
if (!browserPath) {
  console.error('FAIL: no Chromium (apt-get install chromium-headless-shell, as scripts/setup.sh does)');
  process.exit(1);
}

const source = path.resolve(args.source), work = path.resolve(args.work);
fs.rmSync(work, { recursive: true, force: true });
fs.mkdirSync(work, { recursive: true });
const vmoe = path.resolve(args.vmoe);
const env = { ...process.env, OMP_NUM_THREADS: process.env.OMP_NUM_THREADS || '2' };
// All the vmoe runs start at once (they are independent; on a busy machine this halves the wait).
const run = async (argv) => (await promisify(execFile)(vmoe, argv, { env, encoding: 'utf8', maxBuffer: 64 << 20 })).stdout;

let failures = 0;
function check(ok, what) {
  if (ok) return;
  failures++;
  console.log('FAIL: ' + what);
}

const vmoeModel = path.join(source, 'data/models/vmoe-fmnist.safetensors');
const softModel = path.join(source, 'data/models/softmoe-fmnist.safetensors');
const images = ['fmnist_0_ankle-boot.png', 'fmnist_3_trouser.png'].map((f) => path.join(source, 'data/samples', f));
const factors = [1, 0.5, 0.25];
const routings = ['bpr', 'vanilla'];

// --- the pages
const vmoePage = path.join(work, 'vmoe.html'), softPage = path.join(work, 'soft.html');
const reports = [run(['report', ...images, '-m', vmoeModel, '--capacity-factor', factors.join(','), '-o', vmoePage]),
                 run(['report', images[0], '-m', softModel, '-o', softPage])];

// --- what `vmoe route --json` says for the first image: [factor][routing]
const routeRuns = factors.map((f) => routings.map((r) =>
  run(['route', images[0], '-m', vmoeModel, '--capacity-factor', String(f), '--routing', r, '--json', '--no-pictures'])));
const softRun = run(['route', images[0], '-m', softModel, '--json', '--no-pictures']);
await Promise.all(reports);
const route = await Promise.all(routeRuns.map(async (row) => (await Promise.all(row)).map((j) => JSON.parse(j))));
const softRoute = JSON.parse(await softRun);
for (const page of [vmoePage, softPage]) {
  const html = fs.readFileSync(page, 'utf8');
  check(!/(src|href)\s*=\s*["']?(https?:)?\/\//i.test(html) && !/url\(\s*["']?(https?:)?\/\//i.test(html),
    `${path.basename(page)} refers to something on the network`);
}

const grid = route[0][0].grid, cls = route[0][0].cls ? 1 : 0;
const layers = route[0][0].layers.map((l) => l.layer);

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmoe-chromium-'));
const browser = await puppeteer.launch({
  executablePath: browserPath,
  headless: browserPath.endsWith('headless-shell') ? 'shell' : true,
  userDataDir,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});

async function open(file) {
  const page = await browser.newPage();
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('requestfailed', (r) => errors.push('request failed: ' + r.url()));
  page.on('request', (r) => { if (!/^(file|data):/.test(r.url())) errors.push('network request: ' + r.url()); });
  await page.setViewport({ width: 1280, height: 900 });
  await page.goto(pathToFileURL(file).href, { waitUntil: 'load' });
  try {
    await page.waitForSelector('body[data-ready="1"]', { timeout: 10000 });
  } catch (e) {
    throw new Error(`${path.basename(file)} never finished drawing (body[data-ready]); page errors: ${errors.join(' | ') || 'none'}`);
  }
  return { page, errors };
}
const count = (page, sel) => page.$$eval(sel, (els) => els.length);
const text = (page, sel) => page.$eval(sel, (e) => e.textContent.trim());
async function setFactor(page, i) {  // as a user dragging the slider: value, then an input event
  await page.$eval('#factor', (s, i) => { s.value = String(i); s.dispatchEvent(new Event('input', { bubbles: true })); }, i);
}

try {
  // ================= V-MoE
  {
    const { page, errors } = await open(vmoePage);
    check(await count(page, '#images .thumb') === images.length, 'one thumbnail per image');
    check(await count(page, '.panel') === routings.length, 'a BPR and a vanilla panel');
    for (const r of routings)
      check(await count(page, `.panel[data-routing="${r}"] .patch`) === grid[0] * grid[1],
        `${r}: ${grid[0] * grid[1]} patch cells (model grid ${grid})`);
    check(await count(page, '#layer-select button') === layers.length, 'one layer button per MoE layer');

    // Every factor and layer: the dropped count shown equals vmoe route --json's. One
    // round trip per state: move the slider (input event), click the layer's button,
    // read both panels.
    for (let f = 0; f < factors.length; ++f)
      for (let li = 0; li < layers.length; ++li) {
        const shown = await page.evaluate((f, layer) => {
          const s = document.querySelector('#factor');
          s.value = String(f);
          s.dispatchEvent(new Event('input', { bubbles: true }));
          document.querySelector(`#layer-select button[data-layer="${layer}"]`).click();
          return [...document.querySelectorAll('.panel')].map((p) => ({
            routing: p.dataset.routing,
            text: Number(p.querySelector('[data-role="dropped-tokens"]').textContent),
            cells: p.querySelectorAll('.patch.dropped, .cls-cell.dropped').length,
          }));
        }, f, layers[li]);
        for (let r = 0; r < routings.length; ++r) {
          const want = route[f][r].layers[li].dropped_tokens;
          const got = shown.find((x) => x.routing === routings[r]) || {};
          check(got.text === want, `factor ${factors[f]} layer ${layers[li]} ${routings[r]}: page shows ${got.text} dropped tokens, route --json ${want}`);
          check(got.cells === want, `factor ${factors[f]} layer ${layers[li]} ${routings[r]}: ${got.cells} cells drawn dropped, route --json ${want}`);
        }
      }

    // Hovering a patch shows its choices in every layer, as the JSON has them.
    const f = factors.length - 1;
    await setFactor(page, f);
    for (const p of [0, Math.floor(grid[0] * grid[1] / 2), grid[0] * grid[1] - 1]) {
      const token = p + cls;
      await page.hover(`.panel[data-routing="bpr"] .patch[data-patch="${p}"]`);
      const table = await page.$$eval('#route-table tbody tr', (rows) => rows.map((tr) => ({
        layer: Number(tr.dataset.layer),
        cells: Object.fromEntries([...tr.querySelectorAll('td[data-routing]')].map((td) => [td.dataset.routing,
          [...td.querySelectorAll('.choice')].map((c) => [Number(c.dataset.expert), c.dataset.kept === '1'])])),
      })));
      check(table.length === layers.length, `patch ${p}: route table has ${table.length} rows, ${layers.length} MoE layers`);
      for (let li = 0; li < layers.length; ++li)
        for (let r = 0; r < routings.length; ++r) {
          const want = route[f][r].layers[li].choices[token].map((c) => [c.expert, c.kept]);
          const got = table[li] && table[li].layer === layers[li] ? table[li].cells[routings[r]] : null;
          check(JSON.stringify(got) === JSON.stringify(want),
            `patch ${p} layer ${layers[li]} ${routings[r]}: page shows ${JSON.stringify(got)}, route --json ${JSON.stringify(want)}`);
        }
    }

    // Keyboard: up/down move the layer, left/right the factor.
    await page.click('#layer-select button[data-layer="' + layers[0] + '"]');
    await setFactor(page, 0);
    await page.keyboard.press('ArrowDown');
    check(await text(page, '#layer-select button[aria-pressed="true"]') === 'L' + layers[1], 'ArrowDown selects the next layer');
    await page.keyboard.press('ArrowRight');
    check(await page.$eval('#factor', (s) => s.value) === '1', 'ArrowRight moves the factor slider');
    const shown = Number(await text(page, '.panel[data-routing="bpr"] [data-role="dropped-tokens"]'));
    check(shown === route[1][0].layers[1].dropped_tokens, 'after the keys the page shows that layer and factor');

    if (args.screenshot) {  // the picture in docs/images/report.png
      await setFactor(page, 2);
      await page.click('#layer-select button[data-layer="' + layers[1] + '"]');
      await page.click(`.panel[data-routing="bpr"] .patch[data-patch="${3 * grid[1] + 3}"]`);
      await page.mouse.move(1270, 10);
      await page.screenshot({ path: args.screenshot, clip: { x: 0, y: 0, width: 1280, height: 900 } });
    }
    check(errors.length === 0, 'V-MoE page: console errors: ' + errors.join(' | '));
  }

  // ================= Soft-MoE
  {
    const { page, errors } = await open(softPage);
    check(await count(page, '.panel .patch') === grid[0] * grid[1], 'Soft-MoE: patch cells equal the model grid');
    const L = softRoute.layers[0];
    const slots = L.dispatch[0].length;
    check(await count(page, '#slots .slot') === slots, `Soft-MoE: ${slots} slot buttons`);
    for (const s of [0, Math.floor(slots / 2), slots - 1]) {
      await page.click(`#slots .slot[data-slot="${s}"]`);
      const w = await page.$$eval('.panel .patch, .panel .cls-cell', (els) => els.map((e) => [Number(e.dataset.token), Number(e.dataset.weight)]));
      const sum = w.reduce((a, [, x]) => a + x, 0);
      check(w.length === grid[0] * grid[1] + cls && Math.abs(sum - 1) < 1e-3, `slot ${s}: dispatch weights shown sum to ${sum} over ${w.length} cells`);
      const worst = Math.max(...w.map(([t, x]) => Math.abs(x - L.dispatch[t][s])));
      check(worst < 1e-4, `slot ${s}: dispatch weights differ from route --json by up to ${worst}`);
    }
    await page.click('.panel .patch[data-patch="10"]');
    const bars = await page.$$eval('#combine-chart .bar', (els) => els.map((e) => Number(e.dataset.weight)));
    const sum = bars.reduce((a, x) => a + x, 0);
    check(bars.length === slots && Math.abs(sum - 1) < 1e-3, `patch 10: combine weights over ${bars.length} slots sum to ${sum}`);
    const worst = Math.max(...bars.map((x, s) => Math.abs(x - L.combine[10 + cls][s])));
    check(worst < 1e-4, `patch 10: combine weights differ from route --json by up to ${worst}`);
    check(errors.length === 0, 'Soft-MoE page: console errors: ' + errors.join(' | '));
  }
} catch (e) {
  check(false, e.message);
} finally {
  await browser.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}

if (failures) {
  console.log(`${failures} check(s) failed`);
  process.exit(1);
}
console.log('ok: report pages in ' + path.basename(browserPath));
