// End-to-end tests of the built app (dist/) in Debian's headless Chromium,
// with real WebGPU on SwiftShader. Serves dist/ on loopback only.
// Usage: node e2e/e2e.js DIST [MODELS]   -> prints "N passed, N failed".
// MODELS: a model set (base/, upsample/, base-inpaint/, upsample-inpaint/ and
// unclip/… as written by `webglide convert`) served at /models/demo/ in place of the
// bundled demo model, and with every shard corrupted at /models/corrupt/.
// scripts/test.sh converts the tiny official-architecture fixtures for it.
const http = require('http');
const fs = require('fs');
const path = require('path');
const zlib = require('zlib');
const net = require('net');
const { spawn } = require('child_process');
const { chromium } = require('playwright-core');

const DIST = path.resolve(process.argv[2] || path.join(__dirname, '..', 'dist'));
const MODELS = process.argv[3] ? path.resolve(process.argv[3]) : null;
const ONLY = process.env.E2E_ONLY || '';
const ARTIFACTS = path.join(__dirname, 'artifacts');
const ROOT = path.join(__dirname, '..');
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm', '.css': 'text/css',
  '.json': 'application/json', '.png': 'image/png', '.safetensors': 'application/octet-stream', '.gz': 'application/gzip' };
const BASE_ARGS = ['--no-sandbox', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-first-run', '--disable-quic'];
const WEBGPU_ARGS = ['--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=swiftshader',
  '--use-webgpu-adapter=swiftshader'];
const STEP_TIMEOUT = 240000;

// Model sets served besides the fixture set at /models/demo/: every shard
// corrupted; only base + upsample; base with a corrupted upsample-inpaint.
const MODEL_ROUTES = [
  ['/models/demo/', {}],
  ['/models/corrupt/', { corrupt: () => true }],
  // Slow to answer, so a test can act while it loads.
  ['/models/partial/', { only: ['base', 'upsample'], delayMs: 1500 }],
  ['/models/broken-optional/', { corrupt: (rel) => rel.startsWith('upsample-inpaint/') }],
  // base-inpaint's shard: the connection drops on the first two requests.
  ['/models/flaky/', { dropFirst: (rel) => (rel.startsWith('base-inpaint/') && rel.endsWith('.safetensors') ? 2 : 0) }],
];
// Requests per URL path (the storage tests count refetches).
const REQUESTS = new Map();

function resolveFile(url) {
  for (const [prefix, route] of MODEL_ROUTES) {
    if (!MODELS || !url.startsWith(prefix)) continue;
    const rel = url.slice(prefix.length);
    if (route.only && !route.only.includes(rel.split('/')[0])) return { file: null };
    return { file: path.join(MODELS, rel), root: MODELS, corrupt: route.corrupt ? route.corrupt(rel) : false,
      delayMs: route.delayMs || 0, dropFirst: route.dropFirst ? route.dropFirst(rel) : 0 };
  }
  return { file: path.join(DIST, url === '/' ? 'index.html' : url), root: DIST, corrupt: false, delayMs: 0 };
}

// The model set's base manifest made to lie past engine::limits (as the CLI's
// over_limit_model_folders_fail_clearly_and_leave_no_file does), served at
// /models/over-limit/CASE/base/manifest.json.
function overLimitManifest(which) {
  const m = JSON.parse(fs.readFileSync(path.join(MODELS, 'base', 'manifest.json'), 'utf8'));
  const shard = (i, bytes) => ({ file: `model-${String(i).padStart(5, '0')}.safetensors`, bytes, sha256: '0'.repeat(64) });
  const range = (n) => Array.from({ length: n }, (_, i) => i + 1);
  if (which === 'shard-size') m.shards = [shard(1, 3 * 2 ** 30)];
  if (which === 'shard-count') m.shards = range(4097).map((i) => shard(i, 1));
  const json = JSON.stringify(m);
  return which === 'manifest-size' ? json + ' '.repeat((4 << 20) + 1 - json.length) : json;
}

// Like `trunk serve` and many static hosts, unknown paths get index.html
// (single-page-app fallback), not a 404: the app must take that for "absent".
function serve() {
  const server = http.createServer(async (req, res) => {
    const url = decodeURIComponent(req.url.split('?')[0]);
    const crafted = url.match(/^\/models\/over-limit\/([a-z-]+)\/base\/manifest\.json$/);
    if (crafted && MODELS) {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(overLimitManifest(crafted[1]));
      return;
    }
    const { file, root, corrupt, delayMs, dropFirst } = resolveFile(url);
    const n = (REQUESTS.get(url) || 0) + 1;
    REQUESTS.set(url, n);
    if (delayMs) await new Promise((r) => setTimeout(r, delayMs));
    if (n <= (dropFirst || 0) && file && fs.existsSync(file)) {
      // Interrupted mid-body: the full length announced, half of it sent, then the connection drops.
      const b = fs.readFileSync(file);
      res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': b.length });
      res.write(b.subarray(0, b.length >> 1), () => setTimeout(() => req.socket.destroy(), 50));
      return;
    }
    if (!file || !file.startsWith(root) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      res.writeHead(200, { 'Content-Type': 'text/html' });
      fs.createReadStream(path.join(DIST, 'index.html')).pipe(res);
      return;
    }
    res.writeHead(200, { 'Content-Type': TYPES[path.extname(file)] || 'application/octet-stream' });
    if (corrupt && file.endsWith('.safetensors')) {
      const b = fs.readFileSync(file);
      b[b.length - 1] ^= 0xff; // same size, wrong sha256
      res.end(b);
      return;
    }
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

async function withPage(url, args, fn) {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args });
  try {
    const context = await browser.newContext({ viewport: { width: 1100, height: 1000 } });
    const page = await context.newPage();
    const logs = [];
    page.on('console', (m) => { logs.push(`[${m.type()}] ${m.text()}`); if (process.env.E2E_VERBOSE && /TIMING/.test(m.text())) console.log(m.text()); });
    page.on('pageerror', (e) => logs.push(`[pageerror] ${e.message}`));
    // Every test also checks that the page's Content-Security-Policy blocked nothing.
    await context.addInitScript(() => {
      window.__cspViolations = [];
      document.addEventListener('securitypolicyviolation',
        (e) => window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));
    });
    await page.goto(url);
    try {
      await fn(page, context);
      for (const p of context.pages()) {
        const v = await p.evaluate(() => window.__cspViolations || []).catch(() => []);
        if (v.length) throw new Error('Content-Security-Policy violations: ' + JSON.stringify(v));
      }
    } catch (e) {
      await page.screenshot({ path: path.join(ARTIFACTS, 'failure.png'), fullPage: true }).catch(() => {});
      e.message += '\nbrowser console:\n' + logs.slice(-40).join('\n');
      throw e;
    }
  } finally {
    await browser.close();
  }
}

function assert(cond, msg) { if (!cond) throw new Error(msg); }

async function modelReady(page) {
  await page.waitForFunction(() => {
    const s = document.querySelector('[data-testid=model-status]');
    const err = document.querySelector('[data-testid=error]');
    return (s && s.textContent === 'ready') || err;
  }, null, { timeout: STEP_TIMEOUT });
  const status = await page.getByTestId('model-status').textContent();
  if (status !== 'ready') throw new Error('model did not load: ' + await page.getByTestId('error').innerText());
}

async function setForm(page, { prompt, guidance, steps, seed, upsample, upsampleSteps, sampler }) {
  if (prompt !== undefined) await page.getByTestId('prompt').fill(prompt);
  if (guidance !== undefined) await page.getByTestId('guidance').fill(String(guidance));
  if (steps !== undefined) await page.getByTestId('steps').fill(String(steps));
  if (sampler !== undefined) await page.getByTestId('sampler').selectOption(sampler);
  if (seed !== undefined) {
    await page.getByTestId('random-seed').setChecked(false);
    await page.getByTestId('seed').fill(String(seed));
  }
  if (upsample !== undefined) await page.getByTestId('upsample').setChecked(upsample);
  if (upsampleSteps !== undefined) await page.getByTestId('upsample-steps').fill(String(upsampleSteps));
}

// Waits until the error banner contains `text`.
const errorShows = (page, text, timeout = 60000) => page.waitForFunction(
  (t) => ((document.querySelector('[data-testid=error]') || {}).textContent || '').includes(t), text, { timeout });

const figures = (page) => page.evaluate(() => document.querySelectorAll('.gallery figure').length);

// Clicks Generate and waits for a new result; returns its pixels.
async function generate(page, timeout = STEP_TIMEOUT) {
  const t0 = Date.now();
  const before = await figures(page);
  await page.getByTestId('generate').click();
  await page.waitForFunction((n) => document.querySelectorAll('.gallery figure').length > n
    || document.querySelector('[data-testid=error]'), before, { timeout });
  if (await figures(page) <= before) throw new Error('generation failed: ' + await page.getByTestId('error').innerText());
  if (process.env.E2E_VERBOSE) console.log(`     generated in ${Date.now() - t0} ms: ${await page.getByTestId('run-status').textContent()}`);
  return resultPixels(page);
}

async function resultPixels(page) {
  return page.evaluate(async () => {
    const img = document.querySelector('[data-testid=result]');
    await img.decode();
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const ctx = c.getContext('2d');
    ctx.drawImage(img, 0, 0);
    return { w: c.width, h: c.height, data: Array.from(ctx.getImageData(0, 0, c.width, c.height).data) };
  });
}

function maxDiff(a, b, keepPixel = () => true) {
  let m = 0;
  for (let y = 0; y < a.h; y++) for (let x = 0; x < a.w; x++) {
    if (!keepPixel(x, y)) continue;
    for (let c = 0; c < 3; c++) { const i = (y * a.w + x) * 4 + c; m = Math.max(m, Math.abs(a.data[i] - b.data[i])); }
  }
  return m;
}

// Paints a vertical stroke over the left part of the mask canvas.
async function paintLeft(page) {
  await page.getByTestId('brush-size').fill('96');
  const box = await page.getByTestId('mask-canvas').boundingBox();
  await page.mouse.move(box.x + box.width * 0.2, box.y + box.height * 0.05);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.2, box.y + box.height * 0.5, { steps: 5 });
  await page.mouse.move(box.x + box.width * 0.2, box.y + box.height * 0.95, { steps: 5 });
  await page.mouse.up();
}

// A solid-colour PNG (zlib from Node, no dependencies).
function solidPng(w, h, rgb) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n; for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1; return c >>> 0;
  });
  const crc = (buf) => { let c = 0xffffffff; for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8); return (c ^ 0xffffffff) >>> 0; };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type), data]);
    const c = Buffer.alloc(4); c.writeUInt32BE(crc(td));
    return Buffer.concat([len, td, c]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0); ihdr.writeUInt32BE(h, 4); ihdr[8] = 8; ihdr[9] = 2;
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) raw.set(rgb, y * (w * 3 + 1) + 1 + x * 3);
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}

// Starts the README's first command (./scripts/app.sh: setup, then trunk
// serve) on a free port, with the embedded demo model it ships; resolves to
// its URL once it serves, and to a stop function.
async function startReadmeApp() {
  const port = await new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
  const log = fs.openSync(path.join(ARTIFACTS, 'app-sh.log'), 'w');
  // A build left by an earlier run would be served (and the page reloaded by
  // trunk mid-generation) while trunk rebuilds: start from none, as a fresh clone does.
  const dist = path.join(ROOT, 'target', 'readme-dist');
  fs.rmSync(dist, { recursive: true, force: true });
  const child = spawn(path.join(ROOT, 'scripts', 'app.sh'), ['--port', String(port), '--dist', dist],
    { cwd: ROOT, detached: true, stdio: ['ignore', log, log] });
  const stop = () => { try { process.kill(-child.pid, 'SIGTERM'); } catch (e) { /* already gone */ } };
  const url = `http://127.0.0.1:${port}/`;
  const deadline = Date.now() + 20 * 60000; // a cold release build of the app takes minutes
  while (Date.now() < deadline) {
    if (child.exitCode !== null) break;
    const ok = await new Promise((resolve) => http.get(url + 'models/demo/base/manifest.json', (r) => {
      r.resume(); resolve(r.statusCode === 200 && /json/.test(r.headers['content-type'] || ''));
    }).on('error', () => resolve(false)));
    if (ok) return { url, stop };
    await new Promise((r) => setTimeout(r, 2000));
  }
  stop();
  throw new Error(`./scripts/app.sh did not serve on ${url} (exit ${child.exitCode}); see e2e/artifacts/app-sh.log:\n`
    + fs.readFileSync(path.join(ARTIFACTS, 'app-sh.log'), 'utf8').slice(-3000));
}

const tests = [
  ["the README's ./scripts/app.sh serves a page that generates with the embedded demo model", async () => {
    const app = await startReadmeApp();
    try {
      await withPage(app.url, [...BASE_ARGS, ...WEBGPU_ARGS], async (page) => {
        await modelReady(page);
        const detail = await page.getByTestId('model-detail').textContent();
        assert(/Embedded demo model/.test(detail), 'not the demo model: ' + detail);
        const warnings = await page.locator('[data-testid=warning]').allInnerTexts();
        assert(warnings.length === 0, 'warnings on the demo model: ' + JSON.stringify(warnings));
        // The demo set ships its own noisy CLIP: the guidance-method switch is offered.
        assert(await page.getByTestId('guidance-method').isVisible(), 'no CLIP guidance with the demo model');
        // The 64-px demo base takes tens of seconds per CFG step on SwiftShader (more on a busy
        // machine): 3 steps, and room for them.
        await setForm(page, { prompt: 'a red circle above a blue square', steps: 'ddim3', seed: 1, upsample: false, guidance: 3 });
        const px = await generate(page, 3 * STEP_TIMEOUT);
        assert(px.w === 64 && px.h === 64, `result size ${px.w}x${px.h}`);
        await page.screenshot({ path: path.join(ARTIFACTS, 'readme-demo.png'), fullPage: true });
      });
    } finally {
      app.stop();
    }
  }],
  ['page finds the WebGPU adapter and the kernels pass their self-check', async (url) => {
    await withPage(url, [...BASE_ARGS, ...WEBGPU_ARGS], async (page) => {
      await page.getByTestId('adapter').waitFor({ state: 'attached', timeout: 60000 });
      const report = await page.getByTestId('adapter').textContent();
      if (!/BrowserWebGpu/.test(report)) throw new Error('unexpected adapter report: ' + report);
      await page.waitForFunction(() => {
        const el = document.querySelector('[data-testid=self-check]');
        return el && el.textContent.length > 0;
      }, null, { timeout: 120000 });
      const check = await page.getByTestId('self-check').textContent();
      if (!/passed/.test(check)) throw new Error('self-check: ' + check);
      assert(/f32/.test(await page.getByTestId('f16').textContent()), 'f16 use not shown');
      assert(/GPU: .*f32/.test(await page.getByTestId('gpu-line').innerText()), 'adapter line not shown');
      // The training data's attribution (CC BY 4.0 asks for it) and the licence texts.
      assert(/Twemoji.*CC BY 4\.0/.test(await page.getByTestId('twemoji-notice').textContent()), 'Twemoji notice missing');
      const texts = await page.evaluate(async () => Promise.all(
        ['licenses/CC-BY-4.0.txt', 'licenses/emojibase-data-MIT.txt'].map(async (u) => (await fetch(u)).text())));
      assert(/Attribution 4\.0 International/.test(texts[0]) && /Miles Johnson/.test(texts[1]), 'licence texts not served');
      // A strict Content-Security-Policy: the app's scripts only (its loader by hash), no eval.
      const csp = await page.locator('meta[http-equiv=Content-Security-Policy]').getAttribute('content');
      assert(/script-src 'self' 'wasm-unsafe-eval' 'sha256-[^']+'(;|$)/.test(csp) && /object-src 'none'/.test(csp), 'CSP: ' + csp);
      const injected = await page.evaluate(() => {
        const el = document.createElement('script');
        el.textContent = 'window.__injectedRan = true;';
        document.head.appendChild(el);
        return !!window.__injectedRan;
      });
      assert(!injected, 'an injected inline script ran');
      await page.waitForFunction(() => window.__cspViolations.some((v) => /script-src/.test(v)), null, { timeout: 10000 });
      await page.evaluate(() => { window.__cspViolations = []; });
    });
  }],
  ['a browser without WebGPU sees the explanation', async (url) => {
    await withPage(url, [...BASE_ARGS, '--disable-gpu'], async (page) => {
      await page.getByTestId('error').waitFor({ timeout: 30000 });
      const text = await page.getByTestId('error').innerText();
      await page.screenshot({ path: path.join(ARTIFACTS, 'no-webgpu.png'), fullPage: true });
      if (!/WebGPU/.test(text)) throw new Error('no explanation: ' + text);
    });
  }],
  ['the demo model loads; a prompt generates a non-blank image with live preview; settings persist', async (url) => {
    await withPage(url, [...BASE_ARGS, ...WEBGPU_ARGS], async (page) => {
      await modelReady(page);
      // SwiftShader runs the 64-px upsampler slowly: 2 upsampler steps instead of fast27.
      await setForm(page, { prompt: 'a red circle above a blue square', steps: 3, seed: 11, upsample: true, upsampleSteps: 2 });
      const px = await generate(page);
      assert(px.w === 64 && px.h === 64, `result size ${px.w}x${px.h}, expected the upsampler's 64x64`);
      let min = 255, max = 0;
      for (let i = 0; i < px.data.length; i += 4) for (let c = 0; c < 3; c++) { min = Math.min(min, px.data[i + c]); max = Math.max(max, px.data[i + c]); }
      assert(max - min > 20, `blank image (range ${min}..${max})`);
      const prog = await page.getByTestId('progress-text').textContent();
      assert(/upsample 2\/2/.test(prog), 'progress did not finish the upsampler: ' + prog);
      const preview = await page.evaluate(() => {
        const c = document.querySelector('[data-testid=preview]');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] + d[i + 1] + d[i + 2];
        return { w: c.width, sum: s };
      });
      assert(preview.w === px.w && preview.sum > 0, 'preview not drawn: ' + JSON.stringify(preview));
      assert(/seed 11/.test(await page.locator('.gallery figcaption').first().textContent()), 'seed not shown');
      const href = await page.getByTestId('download').first().getAttribute('href');
      const chunks = await page.evaluate(async (h) => {
        const b = new Uint8Array(await (await fetch(h)).arrayBuffer());
        return new TextDecoder('latin1').decode(b);
      }, href);
      assert(chunks.includes('webglide:prompt') && chunks.includes('a red circle above a blue square'), 'PNG lacks parameters');
      await page.screenshot({ path: path.join(ARTIFACTS, 'text2im.png'), fullPage: true });
      await page.reload();
      await page.getByTestId('prompt').waitFor();
      await page.waitForFunction(() => document.querySelector('[data-testid=prompt]').value === 'a red circle above a blue square',
        null, { timeout: 30000 });
      assert(await page.getByTestId('steps').inputValue() === '3', 'steps not restored');
      await modelReady(page); // from Cache Storage this time
    });
  }],
  ['the guidance slider changes the result for a fixed seed; the same settings repeat exactly', async (url) => {
    await withPage(url, [...BASE_ARGS, ...WEBGPU_ARGS], async (page) => {
      await modelReady(page);
      await setForm(page, { prompt: 'a green triangle', steps: 3, seed: 7, upsample: false, guidance: 0 });
      const a = await generate(page);
      await setForm(page, { guidance: 8 });
      const b = await generate(page);
      const b2 = await generate(page);
      assert(maxDiff(a, b) > 2, 'guidance 0 and 8 gave the same image');
      assert(maxDiff(b, b2) === 0, 'same seed and settings gave different images');
      await page.screenshot({ path: path.join(ARTIFACTS, 'guidance.png'), fullPage: true });
    });
  }],
  ['CLIP guidance: the method switch drives the noisy CLIP, its scale changes the result, seeds repeat', async (url) => {
    await withPage(url, [...BASE_ARGS, ...WEBGPU_ARGS], async (page) => {
      await modelReady(page);
      await page.getByTestId('guidance-method').waitFor({ state: 'visible', timeout: 30000 });
      await page.getByTestId('guidance-method').selectOption('clip');
      assert(await page.getByTestId('clip-guidance').isVisible() && !(await page.getByTestId('guidance').isVisible()),
        'the slider does not switch to the CLIP scale');
      assert(await page.getByTestId('sampler').isDisabled()
        && await page.getByTestId('sampler').inputValue() === 'ancestral', 'CLIP guidance not on the ancestral sampler');
      await setForm(page, { prompt: 'a green triangle', steps: 3, seed: 7, upsample: false });
      await page.getByTestId('clip-guidance').fill('0');
      const a = await generate(page);
      await page.getByTestId('clip-guidance').fill('10');
      const b = await generate(page);
      const b2 = await generate(page);
      assert(maxDiff(a, b) > 2, 'CLIP scale 0 and 10 gave the same image');
      assert(maxDiff(b, b2) === 0, 'same seed and settings gave different images');
      const href = await page.getByTestId('download').first().getAttribute('href');
      const chunks = await page.evaluate(async (h) => new TextDecoder('latin1').decode(
        new Uint8Array(await (await fetch(h)).arrayBuffer())), href);
      assert(/webglide:clip_guidance[^]*10/.test(chunks) && !chunks.includes('webglide:guidance'), 'PNG lacks the CLIP scale');
      // Back to classifier-free guidance: the method persists per session in the settings.
      await page.getByTestId('guidance-method').selectOption('cfg');
      assert(await page.getByTestId('guidance').isVisible() && await page.getByTestId('sampler').isEnabled(), 'CFG controls not back');
      await page.screenshot({ path: path.join(ARTIFACTS, 'clip-guidance.png'), fullPage: true });
    });
  }],
  ['a lost GPU device is an error with a retry that reopens the GPU and generates again', async (url) => {
    await withPage(url + '?test-hooks', [...BASE_ARGS, ...WEBGPU_ARGS], async (page) => {
      await modelReady(page);
      await setForm(page, { prompt: 'a corgi', steps: 2, seed: 4, upsample: false, guidance: 3 });
      const a = await generate(page);
      await page.evaluate(() => window.webglideLoseDevice());
      await page.getByTestId('generate').click();
      await page.getByTestId('retry').waitFor({ timeout: STEP_TIMEOUT });
      const msg = await page.getByTestId('error').innerText();
      assert(/lost|destroyed/i.test(msg), 'no device-lost message: ' + msg);
      assert(await figures(page) === 1, 'a run on a lost device produced a result');
      await page.getByTestId('retry').click();
      await modelReady(page);
      const b = await generate(page);
      assert(maxDiff(a, b) === 0, 'after reopening the GPU the same settings gave another image');
    });
  }],
  ['concurrency: two tabs on one model, Generate while a set loads, Cancel during the upsampler', async (url) => {
    await withPage(url, [...BASE_ARGS, ...WEBGPU_ARGS], async (page, context) => {
      await modelReady(page);
      // A second tab of the same origin shares Cache Storage; both generate at once.
      const page2 = await context.newPage();
      await page2.goto(url);
      await modelReady(page2);
      for (const p of [page, page2]) await setForm(p, { prompt: 'a blue square', steps: 2, seed: 9, upsample: false, guidance: 3 });
      const [a, b] = await Promise.all([generate(page), generate(page2)]);
      assert(maxDiff(a, b) === 0, 'two tabs with the same settings gave different images');
      await page2.close();
      // Generate (Ctrl+Enter, which bypasses the disabled button) while another set loads:
      // a clear message or nothing, never a broken page; then the new set generates.
      await page.getByTestId('model-url').fill(url + 'models/partial/');
      await page.getByTestId('model-url-load').click();
      await page.getByTestId('prompt').press('Control+Enter');
      await page.waitForFunction(() => /models\/partial/.test(document.querySelector('[data-testid=model-detail]').textContent)
        && document.querySelector('[data-testid=model-status]').textContent === 'ready', null, { timeout: STEP_TIMEOUT });
      const err = await page.getByTestId('error').count() ? await page.getByTestId('error').innerText() : '';
      assert(/a model set is loading/.test(err), 'no message for Generate during a load: ' + err);
      assert(await figures(page) === 1, 'Generate during a load ran on the set being replaced');
      await generate(page);
      // Cancel while the upsampler runs: no result, the form usable again.
      const before = await figures(page);
      await setForm(page, { steps: 2, upsample: true, upsampleSteps: 200, seed: 9 });
      await page.getByTestId('generate').click();
      await page.waitForFunction(() => /upsample [1-9]/.test(document.querySelector('[data-testid=progress-text]').textContent),
        null, { timeout: STEP_TIMEOUT });
      await page.getByTestId('cancel').click();
      await page.waitForFunction(() => /cancelled/.test(document.querySelector('[data-testid=run-status]').textContent),
        null, { timeout: 60000 });
      assert(await figures(page) === before, 'a run cancelled in the upsampler produced a result');
      assert(await page.getByTestId('generate').isEnabled(), 'Generate stays disabled after cancel');
    });
  }],
  ['cancel stops within a step', async (url) => {
    await withPage(url, [...BASE_ARGS, ...WEBGPU_ARGS], async (page) => {
      await modelReady(page);
      await setForm(page, { steps: 1000, upsample: false, seed: 3 });
      await page.getByTestId('generate').click();
      await page.waitForFunction(() => Number(document.querySelector('[data-testid=progress]').value) >= 3,
        null, { timeout: STEP_TIMEOUT });
      await page.getByTestId('cancel').click();
      const atCancel = Number(await page.getByTestId('progress').getAttribute('value'));
      await page.waitForFunction(() => /cancelled/.test(document.querySelector('[data-testid=run-status]').textContent),
        null, { timeout: 60000 });
      const after = Number(await page.getByTestId('progress').getAttribute('value'));
      assert(after <= atCancel + 1, `ran ${after - atCancel} steps after Cancel`);
      assert(await figures(page) === 0, 'a cancelled run produced a result');
      assert(await page.getByTestId('generate').isEnabled(), 'Generate stays disabled after cancel');
    });
  }],
  ['inpainting keeps the unmasked pixels (generated and uploaded images); a bad image is an error', async (url) => {
    await withPage(url, [...BASE_ARGS, ...WEBGPU_ARGS], async (page) => {
      await modelReady(page);
      await setForm(page, { prompt: 'a corgi', steps: 3, seed: 5, upsample: false, guidance: 3 });
      const src = await generate(page);
      await page.getByTestId('send-to-inpaint').first().click();
      assert(await page.getByTestId('mode').inputValue() === 'inpaint', 'mode did not switch');
      await paintLeft(page);
      const out = await generate(page);
      assert(out.w === src.w, 'inpaint result has another size');
      const keep = (x) => x >= Math.ceil(out.w * 0.6);
      const kept = maxDiff(src, out, keep);
      assert(kept <= 1, `unmasked pixels changed by up to ${kept}`);
      assert(maxDiff(src, out, (x) => x < out.w * 0.1) > 4, 'masked region was not regenerated');
      await page.screenshot({ path: path.join(ARTIFACTS, 'inpaint.png'), fullPage: true });

      // An uploaded image of another size and aspect: resized like the notebook.
      await page.getByTestId('upload').setInputFiles({ name: 'solid.png', mimeType: 'image/png', buffer: solidPng(37, 23, [200, 60, 40]) });
      await page.waitForTimeout(300);
      await paintLeft(page);
      const up = await generate(page);
      let worst = 0;
      for (let y = 0; y < up.h; y++) for (let x = Math.ceil(up.w * 0.6); x < up.w; x++) {
        const i = (y * up.w + x) * 4;
        worst = Math.max(worst, Math.abs(up.data[i] - 200), Math.abs(up.data[i + 1] - 60), Math.abs(up.data[i + 2] - 40));
      }
      assert(worst <= 1, `uploaded image's unmasked pixels changed by up to ${worst}`);

      await page.getByTestId('upload').setInputFiles({ name: 'bad.png', mimeType: 'image/png', buffer: Buffer.from('not an image') });
      await page.getByTestId('error').waitFor({ timeout: 30000 });
      assert(/not a readable image/.test(await page.getByTestId('error').innerText()), 'no bad-image message');
    });
  }],
  ['over-limit input: too large images and a 10 MB prompt are clear errors; the form still works', async (url) => {
    await withPage(url, [...BASE_ARGS, ...WEBGPU_ARGS], async (page) => {
      await modelReady(page);
      await page.getByTestId('mode').selectOption('inpaint');
      // Over the side limit, and over the pixel limit with both sides within it.
      for (const [w, h] of [[9000, 1], [4001, 4001]]) {
        await page.getByTestId('upload').setInputFiles({ name: `big-${w}.png`, mimeType: 'image/png', buffer: solidPng(w, h, [10, 20, 30]) });
        await errorShows(page, `a ${w}×${h} image is too large`);
      }
      // An image within the limits is taken (and clears the message).
      await page.getByTestId('upload').setInputFiles({ name: 'solid.png', mimeType: 'image/png', buffer: solidPng(37, 23, [200, 60, 40]) });
      await page.waitForFunction(() => !document.querySelector('[data-testid=error]'), null, { timeout: 30000 });
      await paintLeft(page);
      // The prompt box's maxlength stops typing, not a script: 10 MB set through the DOM.
      await setForm(page, { steps: 3, seed: 5, upsample: false, guidance: 3 });
      await page.evaluate(() => {
        const el = document.querySelector('[data-testid=prompt]');
        el.value = 'a'.repeat(10 << 20);
        el.dispatchEvent(new Event('input', { bubbles: true }));
      });
      const before = await figures(page);
      await page.getByTestId('generate').click();
      await errorShows(page, `a prompt of ${10 << 20} bytes (at most 2048`);
      assert(await figures(page) === before, 'an over-limit prompt produced a result');
      await page.locator('[data-testid=error] button', { hasText: 'Dismiss' }).click();
      // The batch box takes 1–4: more is brought back within it, visibly.
      await page.getByTestId('batch').fill('1000');
      await page.waitForFunction(() => document.querySelector('[data-testid=batch]').value === '4', null, { timeout: 10000 });
      await page.getByTestId('batch').fill('1');
      await setForm(page, { prompt: 'a corgi' });
      const out = await generate(page);
      assert(out.w > 0 && await figures(page) === before + 1, 'the form did not generate after the refusals');
    });
  }],
  ['over-limit model sets: lying manifests are refused with the limit; the demo set loads again', async (url) => {
    await withPage(url, [...BASE_ARGS, ...WEBGPU_ARGS], async (page) => {
      await modelReady(page);
      for (const [which, expect] of [['shard-size', 'of 3221225472 bytes (at most 2147483648)'],
        ['shard-count', '4097 shards (at most 4096)'], ['manifest-size', 'more than the 4194304 bytes expected']]) {
        await page.getByTestId('model-url').fill(url + `models/over-limit/${which}/`);
        await page.getByTestId('model-url-load').click();
        await errorShows(page, expect);
        assert(REQUESTS.get(`/models/over-limit/${which}/base/model-00001.safetensors`) === undefined, `${which}: a shard was fetched`);
      }
      await page.getByTestId('model-url').fill(url + 'models/demo/');
      await page.getByTestId('model-url-load').click();
      await modelReady(page);
      await setForm(page, { prompt: 'a corgi', steps: 2, seed: 3, upsample: false, guidance: 3 });
      await generate(page);
    });
  }],
  ['a bad model URL and a corrupted shard show errors in the page', async (url) => {
    await withPage(url, [...BASE_ARGS, ...WEBGPU_ARGS], async (page) => {
      await modelReady(page);
      await page.getByTestId('model-url').fill(url + 'no-such-model/');
      await page.getByTestId('model-url-load').click();
      await page.getByTestId('error').waitFor({ timeout: 60000 });
      const e1 = await page.getByTestId('error').innerText();
      assert(/no model at/.test(e1), 'bad URL: ' + e1);
      await page.getByTestId('model-url').fill(url + 'models/corrupt/');
      await page.getByTestId('model-url-load').click();
      await page.waitForFunction(() => /sha256/.test((document.querySelector('[data-testid=error]') || {}).textContent || ''),
        null, { timeout: 60000 });
      await page.screenshot({ path: path.join(ARTIFACTS, 'model-error.png'), fullPage: true });
    });
  }],
  ['an absent optional model is no error; a broken one disables only its own features', async (url) => {
    await withPage(url, [...BASE_ARGS, ...WEBGPU_ARGS], async (page) => {
      await modelReady(page);
      await page.getByTestId('model-url').fill(url + 'models/partial/');
      await page.getByTestId('model-url-load').click();
      await page.waitForFunction(() => /models\/partial/.test(document.querySelector('[data-testid=model-detail]').textContent)
        && document.querySelector('[data-testid=model-status]').textContent === 'ready', null, { timeout: STEP_TIMEOUT });
      assert(await page.getByTestId('warning').count() === 0, 'absent kinds gave a warning: '
        + await page.locator('[data-testid=warning]').allInnerTexts());
      assert(!(await page.locator('option[value=inpaint]').isEnabled()), 'inpainting offered without an inpainting model');
      assert(!(await page.getByTestId('guidance-method').isVisible()), 'CLIP guidance offered without a noisy CLIP');
      await setForm(page, { steps: 2, upsample: false, seed: 2 });
      await generate(page);

      await page.getByTestId('model-url').fill(url + 'models/broken-optional/');
      await page.getByTestId('model-url-load').click();
      await page.waitForFunction(() => /models\/broken-optional/.test(document.querySelector('[data-testid=model-detail]').textContent)
        && document.querySelector('[data-testid=model-status]').textContent === 'ready', null, { timeout: STEP_TIMEOUT });
      const warnings = await page.locator('[data-testid=warning]').allInnerTexts();
      assert(warnings.length === 1 && /^upsample-inpaint: .*sha256/.test(warnings[0]), 'warnings: ' + JSON.stringify(warnings));
      assert(await page.getByTestId('error').count() === 0, 'a broken optional model failed the set');
      assert(await page.locator('option[value=inpaint]').isEnabled(), 'base-inpaint lost with upsample-inpaint');
      await setForm(page, { steps: 2, upsample: false, seed: 2 });
      await generate(page);
    });
  }],
  ['unCLIP: text to image with its own sliders, variations of a result and of an upload', async (url) => {
    await withPage(url, [...BASE_ARGS, ...WEBGPU_ARGS], async (page) => {
      await modelReady(page);
      assert(await page.locator('[data-testid=pipeline] option[value=unclip]').isEnabled(), 'unCLIP not offered');
      await page.getByTestId('pipeline').selectOption('unclip');
      assert(await page.getByTestId('prior-guidance').isVisible() && !(await page.getByTestId('guidance').isVisible()),
        'the unCLIP sliders replace GLIDE\'s');
      assert(await page.getByTestId('prior-guidance').inputValue() === '4'
        && await page.getByTestId('decoder-guidance').inputValue() === '8', 'not Karlo\'s guidance defaults');
      assert(await page.getByTestId('sr-steps').inputValue() === '7', 'not Karlo\'s 7 SR steps');
      // Few steps: SwiftShader takes seconds per 64-px SR step even for the fixture.
      await page.getByTestId('prompt').fill('a photo of a red cube');
      await page.getByTestId('prior-steps').fill('5');
      await page.getByTestId('decoder-steps').fill('3');
      await page.getByTestId('sr-steps').fill('2');
      await setForm(page, { seed: 3 });
      const a = await generate(page);
      assert(a.w === 64 && a.h === 64, `result size ${a.w}x${a.h}, expected SR's 64x64`);
      let min = 255, max = 0;
      for (let i = 0; i < a.data.length; i += 4) for (let c = 0; c < 3; c++) { min = Math.min(min, a.data[i + c]); max = Math.max(max, a.data[i + c]); }
      assert(max - min > 20, `blank image (range ${min}..${max})`);
      const prog = await page.getByTestId('progress-text').textContent();
      assert(/sr 10\/10/.test(prog), 'progress did not finish SR: ' + prog);
      assert(/unCLIP/.test(await page.locator('.gallery figcaption').first().textContent()), 'caption does not say unCLIP');
      const href = await page.getByTestId('download').first().getAttribute('href');
      const chunks = await page.evaluate(async (h) => new TextDecoder('latin1').decode(
        new Uint8Array(await (await fetch(h)).arrayBuffer())), href);
      assert(/webglide:pipeline[^]*unclip/.test(chunks) && chunks.includes('webglide:decoder_guidance'), 'PNG lacks unCLIP parameters');
      // The decoder's guidance changes the image (the CLI tests check that a seed repeats).
      await page.getByTestId('decoder-guidance').fill('2');
      const b = await generate(page);
      assert(maxDiff(a, b) > 2, 'decoder guidance 8 and 2 gave the same image');
      // Variations of the newest result: two images.
      await page.getByTestId('send-to-variations').first().click();
      assert(await page.getByTestId('mode').inputValue() === 'variations', 'mode did not switch to variations');
      await page.getByTestId('batch').fill('2');
      const before = await figures(page);
      // Two images through the decoder and SR: 239 s of the 240 on an idle machine once.
      const v = await generate(page, 3 * STEP_TIMEOUT);
      assert(await figures(page) === before + 2, 'batch 2 did not give two variations');
      assert(/variation/.test(await page.locator('.gallery figcaption').first().textContent()), 'caption does not say variation');
      // Variations of an uploaded image differ from those of the result.
      await page.getByTestId('variations-upload').setInputFiles({ name: 'solid.png', mimeType: 'image/png', buffer: solidPng(41, 29, [40, 90, 220]) });
      await page.waitForFunction(() => {
        const c = document.querySelector('[data-testid=variations-source]');
        const d = c.getContext('2d').getImageData(64, 64, 1, 1).data;
        return d[2] > 200 && d[0] < 60;
      }, null, { timeout: 30000 });
      await page.getByTestId('batch').fill('1');
      const u = await generate(page);
      assert(maxDiff(u, v) > 2, 'the uploaded image did not change the variations');
      await page.screenshot({ path: path.join(ARTIFACTS, 'unclip.png'), fullPage: true });
      // Back to GLIDE: its controls return.
      await page.getByTestId('pipeline').selectOption('glide');
      assert(await page.getByTestId('guidance').isVisible() && await page.getByTestId('mode').inputValue() === 'text',
        'GLIDE controls did not come back');
    });
  }],
  ['a model folder picked from disk is verified, stored and loaded; delete removes its files', async (url) => {
    await withPage(url, [...BASE_ARGS, ...WEBGPU_ARGS], async (page) => {
      await modelReady(page);
      // The fixture set as a local folder named "fixture-set".
      const dir = path.join(ARTIFACTS, 'pick', 'fixture-set');
      fs.rmSync(path.join(ARTIFACTS, 'pick'), { recursive: true, force: true });
      fs.mkdirSync(path.join(dir, 'base'), { recursive: true });
      for (const f of fs.readdirSync(path.join(MODELS, 'base'))) fs.copyFileSync(path.join(MODELS, 'base', f), path.join(dir, 'base', f));
      await page.getByTestId('model-files').setInputFiles(dir);
      await page.waitForFunction(() => /local files/.test(document.querySelector('[data-testid=model-detail]').textContent)
        && document.querySelector('[data-testid=model-status]').textContent === 'ready', null, { timeout: STEP_TIMEOUT });
      await page.waitForFunction(() => /^[1-9][0-9.]* MB stored/.test(document.querySelector('[data-testid=storage]').textContent),
        null, { timeout: 30000 });
      const stored = () => page.evaluate(async () => (await (await caches.open('webglide-models-v1')).keys())
        .filter((r) => r.url.includes('/local-fixture-set/')).length);
      assert(await stored() >= 2, 'the picked files were not stored');
      await page.getByTestId('model-delete').click();
      await page.waitForFunction(() => /Embedded demo model/.test(document.querySelector('[data-testid=model-detail]').textContent),
        null, { timeout: STEP_TIMEOUT });
      assert(await stored() === 0, 'delete left files behind');
      assert(!(await page.getByTestId('model-select').innerText()).includes('fixture-set'), 'deleted set still listed');
    });
  }],
  ['storage faults: a shard damaged or deleted in Cache Storage is fetched again; a full quota still loads', async (url) => {
    await withPage(url, [...BASE_ARGS, ...WEBGPU_ARGS], async (page) => {
      await modelReady(page);
      const shard = fs.readdirSync(path.join(MODELS, 'base')).find((f) => f.endsWith('.safetensors'));
      const shardUrl = `/models/demo/base/${shard}`;
      const cached = (op) => page.evaluate(async ([op, name]) => {
        const c = await caches.open('webglide-models-v1');
        const k = (await c.keys()).find((r) => r.url.includes('/demo/') && r.url.includes('/base/') && r.url.endsWith(name));
        if (!k) return false;
        if (op === 'damage') await c.put(k, new Response(new Uint8Array(1000)));
        else await c.delete(k);
        return true;
      }, [op, shard]);
      for (const op of ['damage', 'delete']) {
        const before = REQUESTS.get(shardUrl) || 0;
        assert(await cached(op), `no cached base shard to ${op}`);
        await page.reload();
        await modelReady(page);
        assert((REQUESTS.get(shardUrl) || 0) === before + 1, `the ${op}d shard was not fetched again exactly once`);
      }
      await setForm(page, { steps: 2, upsample: false, seed: 1 });
      await generate(page);
    });
    // Storage refuses every shard (quota exceeded): the set loads for this visit, with a warning.
    await withPage('about:blank', [...BASE_ARGS, ...WEBGPU_ARGS], async (page) => {
      await page.addInitScript(() => {
        const put = Cache.prototype.put;
        Cache.prototype.put = function (req, res) {
          if (String(req.url || req).includes('.safetensors')) {
            return Promise.reject(new DOMException('quota exceeded (test)', 'QuotaExceededError'));
          }
          return put.call(this, req, res);
        };
      });
      await page.goto(url);
      await modelReady(page);
      const warnings = await page.locator('[data-testid=warning]').allInnerTexts();
      assert(warnings.some((w) => /quota|storage/i.test(w)), 'no storage warning: ' + JSON.stringify(warnings));
      await setForm(page, { steps: 2, upsample: false, seed: 1 });
      await generate(page);
    });
  }],
  ['a download interrupted twice resumes on the next visits without fetching the stored shards again', async (url) => {
    await withPage(url, [...BASE_ARGS, ...WEBGPU_ARGS], async (page) => {
      await modelReady(page);
      await page.getByTestId('model-url').fill(url + 'models/flaky/');
      await page.getByTestId('model-url-load').click();
      const ready = () => page.waitForFunction(() => {
        const t = (id) => (document.querySelector(`[data-testid=${id}]`) || {}).textContent || '';
        return /models\/flaky/.test(t('model-detail')) && t('model-status') === 'ready';
      }, null, { timeout: STEP_TIMEOUT });
      const base = fs.readdirSync(path.join(MODELS, 'base')).find((f) => f.endsWith('.safetensors'));
      for (let visit = 1; visit <= 3; visit++) {
        if (visit > 1) await page.reload();
        await ready();
        const warnings = await page.locator('[data-testid=warning]').allInnerTexts();
        if (visit < 3) {
          assert(warnings.length === 1 && /^base-inpaint/.test(warnings[0]), `visit ${visit}: ` + JSON.stringify(warnings));
          assert(!(await page.locator('option[value=inpaint]').isEnabled()), 'inpainting offered without its model');
        } else {
          assert(warnings.length === 0, 'visit 3 still warns: ' + JSON.stringify(warnings));
          assert(await page.locator('option[value=inpaint]').isEnabled(), 'inpainting not back after the download resumed');
        }
      }
      assert(REQUESTS.get(`/models/flaky/base/${base}`) === 1, 'a stored shard was downloaded again: '
        + REQUESTS.get(`/models/flaky/base/${base}`));
      await setForm(page, { steps: 2, upsample: false, seed: 1 });
      await generate(page);
    });
  }],
  ['after one visit the page and the model work offline', async (url) => {
    await withPage(url, [...BASE_ARGS, ...WEBGPU_ARGS], async (page, context) => {
      await modelReady(page);
      await page.waitForFunction(async () => !!(await navigator.serviceWorker.ready), null, { timeout: 30000 });
      await page.reload(); // the service worker now controls the page and caches the shell
      await modelReady(page);
      await context.setOffline(true);
      await page.reload();
      await modelReady(page);
      await setForm(page, { steps: 3, upsample: false, seed: 1 });
      await generate(page);
    });
  }],
];

(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  if (!fs.existsSync(path.join(DIST, 'index.html'))) {
    console.error(`no build in ${DIST}: run trunk build first`);
    process.exit(2);
  }
  const server = await serve();
  const url = `http://127.0.0.1:${server.address().port}/`;
  let passed = 0, failed = 0;
  for (const [name, fn] of tests) {
    if (ONLY && !name.includes(ONLY)) continue;
    const t0 = Date.now();
    try {
      await fn(url);
      passed++;
      console.log(`ok   ${name} (${Date.now() - t0} ms)`);
    } catch (e) {
      failed++;
      console.log(`FAIL ${name}\n     ${e.stack || e}`);
    }
  }
  server.close();
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
})();
