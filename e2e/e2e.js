// End-to-end tests of the built app (dist/) in Debian's headless Chromium,
// with real WebGPU on SwiftShader. Serves dist/ on loopback only.
// Usage: node e2e/e2e.js [dist-dir]   -> prints "N passed, N failed".
const http = require('http');
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const DIST = path.resolve(process.argv[2] || path.join(__dirname, '..', 'dist'));
const ARTIFACTS = path.join(__dirname, 'artifacts');
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm', '.css': 'text/css',
  '.json': 'application/json', '.png': 'image/png', '.safetensors': 'application/octet-stream', '.gz': 'application/gzip' };
const BASE_ARGS = ['--no-sandbox', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-first-run', '--disable-quic'];
const WEBGPU_ARGS = ['--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=swiftshader',
  '--use-webgpu-adapter=swiftshader'];

function serve() {
  const server = http.createServer((req, res) => {
    const url = decodeURIComponent(req.url.split('?')[0]);
    let file = path.join(DIST, url === '/' ? 'index.html' : url);
    if (!file.startsWith(DIST) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      res.writeHead(404); res.end('not found'); return;
    }
    res.writeHead(200, { 'Content-Type': TYPES[path.extname(file)] || 'application/octet-stream' });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

async function withPage(url, args, fn) {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args });
  try {
    const page = await browser.newPage();
    const logs = [];
    page.on('console', (m) => logs.push(`[${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => logs.push(`[pageerror] ${e.message}`));
    await page.goto(url);
    try { await fn(page); } catch (e) { e.message += '\nbrowser console:\n' + logs.join('\n'); throw e; }
  } finally {
    await browser.close();
  }
}

const tests = [
  ['page finds the WebGPU adapter and the kernels pass their self-check', async (url) => {
    await withPage(url, [...BASE_ARGS, ...WEBGPU_ARGS], async (page) => {
      await page.getByTestId('adapter').waitFor({ timeout: 60000 });
      const report = await page.getByTestId('adapter').innerText();
      if (!/BrowserWebGpu/.test(report)) throw new Error('unexpected adapter report: ' + report);
      await page.waitForFunction(() => {
        const el = document.querySelector('[data-testid=self-check]');
        return el && el.textContent.length > 0;
      }, null, { timeout: 120000 });
      const check = await page.getByTestId('self-check').innerText();
      await page.screenshot({ path: path.join(ARTIFACTS, 'adapter.png'), fullPage: true });
      if (!/passed/.test(check)) throw new Error('self-check: ' + check);
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
