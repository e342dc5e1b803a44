// webglide service worker: keeps the app shell (HTML, JS, wasm, CSS,
// tokenizer) so the page opens offline after the first visit. Network first,
// so a new build is picked up as soon as it is reachable. Model shards are
// not handled here: the app verifies them and keeps them in Cache Storage.
const SHELL = 'webglide-app-v1';

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (e) => e.waitUntil(self.clients.claim()));

self.addEventListener('fetch', (e) => {
  const req = e.request;
  const url = new URL(req.url);
  if (req.method !== 'GET' || url.origin !== self.location.origin ||
      url.pathname.includes('/models/') || url.pathname.includes('/__webglide_models/')) {
    return;
  }
  e.respondWith((async () => {
    const cache = await caches.open(SHELL);
    try {
      const resp = await fetch(req);
      if (resp.ok) await cache.put(req, resp.clone());
      return resp;
    } catch (err) {
      const hit = await cache.match(req, { ignoreSearch: true });
      if (hit) return hit;
      throw err;
    }
  })());
});
