// Trunk post_build hook: puts a strict Content-Security-Policy into the built
// index.html. Trunk inlines its loader (a module script naming the hashed
// wasm-bindgen files), so the policy allows exactly that script by its
// sha256 and nothing inline besides; 'wasm-unsafe-eval' lets the page compile
// its WebAssembly. Model folders may live on any HTTPS host (CORS).
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');

const dir = process.env.TRUNK_STAGING_DIR || process.argv[2];
if (!dir) { console.error('csp.js: TRUNK_STAGING_DIR is not set'); process.exit(2); }
const file = path.join(dir, 'index.html');
let html = fs.readFileSync(file, 'utf8');
const hashes = [];
for (const m of html.matchAll(/<script(?![^>]*\bsrc=)[^>]*>([\s\S]*?)<\/script>/g)) {
  hashes.push(`'sha256-${crypto.createHash('sha256').update(m[1], 'utf8').digest('base64')}'`);
}
const policy = [
  "default-src 'self'",
  `script-src 'self' 'wasm-unsafe-eval' ${hashes.join(' ')}`.trim(),
  "style-src 'self'",
  "img-src 'self' blob: data:",
  "connect-src 'self' blob: https: http://127.0.0.1:* http://localhost:*",
  "worker-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
].join('; ');
html = html.replace(/<meta http-equiv="Content-Security-Policy"[^>]*>\s*/g, '');
html = html.replace(/(<meta charset="utf-8" \/>)/, `$1\n    <meta http-equiv="Content-Security-Policy" content="${policy}" />`);
if (!html.includes('Content-Security-Policy')) { console.error('csp.js: no <meta charset> to put the policy after'); process.exit(2); }
fs.writeFileSync(file, html);
