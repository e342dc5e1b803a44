//! Model sets in the browser: a folder (URL, or files the user picks) with
//! GLIDE's `base/`, `upsample/`, `base-inpaint/`, `upsample-inpaint/` and/or
//! unCLIP's `unclip/{clip-text,prior,decoder,sr,clip-visual}/`, each a
//! `webglide convert` output (manifest.json + safetensors shards).
//!
//! Every shard is checked against the manifest's sha256 and kept in Cache
//! Storage, one entry per shard: a reload reads the cache instead of the
//! network, and an interrupted download resumes at the first missing shard.
//! A kind's manifest is cached last, so a cached manifest means a complete kind.

use engine::glide::clip::NoisyClipConfig;
use engine::glide::model::GlideConfig;
use engine::glide::weights::{Manifest, Shard};
use engine::limits::MAX_MANIFEST_BYTES;
use engine::unclip::weights::UnclipConfig;
use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

/// The kinds a set may hold, as folder paths: GLIDE's `base` or unCLIP's
/// core ([`UNCLIP_CORE`]) is required, the rest enable features.
pub const KINDS: [&str; 11] = [
    "base",
    "upsample",
    "base-inpaint",
    "upsample-inpaint",
    "unclip/clip-text",
    "unclip/prior",
    "unclip/decoder",
    "unclip/sr",
    "unclip/clip-visual",
    // GLIDE's noisy CLIP (CLIP guidance); both or neither.
    "clip-image-enc",
    "clip-text-enc",
];
/// What unCLIP text-to-image needs (variations need `unclip/clip-visual` too).
pub const UNCLIP_CORE: [&str; 4] = [
    "unclip/clip-text",
    "unclip/prior",
    "unclip/decoder",
    "unclip/sr",
];
/// unCLIP's sampling stages: on the GPU one at a time during a run, so their
/// shards stay in Cache Storage until a run reaches them (Karlo's full q4
/// stages are ~1.6 GB: held together in the page's memory they would not fit).
pub const UNCLIP_STAGES: [&str; 3] = ["unclip/prior", "unclip/decoder", "unclip/sr"];
const CACHE_NAME: &str = "webglide-models-v1";

pub use crate::settings::ModelEntry;

/// A kind's manifest: GLIDE's or unCLIP's family, or GLIDE's noisy CLIP.
#[derive(Clone)]
pub enum KindManifest {
    Glide(Manifest<GlideConfig>),
    Unclip(Manifest<UnclipConfig>),
    NoisyClip(Manifest<NoisyClipConfig>),
}

impl KindManifest {
    /// `kind` is the folder path (`base`, `unclip/prior`, …); its manifest must describe it.
    fn parse(kind: &str, bytes: &[u8]) -> Result<Self, String> {
        let err = |e: engine::Error| format!("{kind}: {e}");
        let (m, described) = match kind.strip_prefix("unclip/") {
            None if kind.starts_with("clip-") => {
                let m = Manifest::<NoisyClipConfig>::parse(bytes).map_err(err)?;
                let ok = m.kind == kind;
                (KindManifest::NoisyClip(m), ok)
            }
            Some(k) => {
                let m = Manifest::<UnclipConfig>::parse(bytes).map_err(err)?;
                let ok = m.kind == k && m.config.kind() == k;
                (KindManifest::Unclip(m), ok)
            }
            None => {
                let m = Manifest::<GlideConfig>::parse(bytes).map_err(err)?;
                let ok = m.kind == kind;
                (KindManifest::Glide(m), ok)
            }
        };
        if !described {
            return Err(format!(
                "{kind}/manifest.json describes a '{}' model",
                m.kind()
            ));
        }
        Ok(m)
    }

    pub fn kind(&self) -> &str {
        match self {
            KindManifest::Glide(m) => &m.kind,
            KindManifest::Unclip(m) => &m.kind,
            KindManifest::NoisyClip(m) => &m.kind,
        }
    }

    pub fn shards(&self) -> &[Shard] {
        match self {
            KindManifest::Glide(m) => &m.shards,
            KindManifest::Unclip(m) => &m.shards,
            KindManifest::NoisyClip(m) => &m.shards,
        }
    }

    fn verify_shard(&self, file: &str, bytes: &[u8]) -> engine::Result<()> {
        match self {
            KindManifest::Glide(m) => m.verify_shard(file, bytes),
            KindManifest::Unclip(m) => m.verify_shard(file, bytes),
            KindManifest::NoisyClip(m) => m.verify_shard(file, bytes),
        }
    }
}

/// A loaded kind: its folder path, manifest and verified shard bytes.
pub struct Component {
    pub kind: &'static str,
    pub manifest: KindManifest,
    /// Empty when `in_cache`.
    pub shards: Vec<(String, Vec<u8>)>,
    /// The shards are verified and kept in Cache Storage, not in memory: an
    /// unCLIP stage, read again with [`read_shards`] when a run needs it.
    pub in_cache: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadProgress {
    pub what: String,
    pub done: u64,
    pub total: u64,
}

pub fn js_err(e: JsValue) -> String {
    if let Some(ex) = e.dyn_ref::<web_sys::DomException>() {
        return format!("{}: {}", ex.name(), ex.message());
    }
    if let Some(err) = e.dyn_ref::<js_sys::Error>() {
        return String::from(err.message());
    }
    e.as_string().unwrap_or_else(|| format!("{e:?}"))
}

fn is_quota(e: &JsValue) -> bool {
    e.dyn_ref::<web_sys::DomException>()
        .is_some_and(|ex| ex.name() == "QuotaExceededError")
}

fn window() -> Result<web_sys::Window, String> {
    web_sys::window().ok_or_else(|| "no window".to_string())
}

async fn cache() -> Result<web_sys::Cache, String> {
    let caches = window()?.caches().map_err(|e| {
        format!(
            "Cache Storage is not available ({}); models cannot be kept",
            js_err(e)
        )
    })?;
    let c = JsFuture::from(caches.open(CACHE_NAME))
        .await
        .map_err(js_err)?;
    Ok(c.unchecked_into())
}

/// The cache key of a file of a model set (a same-origin URL nothing serves).
fn key(id: &str, kind: &str, file: &str) -> Result<String, String> {
    let origin = window()?.location().origin().map_err(js_err)?;
    Ok(format!("{origin}/__webglide_models/{id}/{kind}/{file}"))
}

async fn cache_get(cache: &web_sys::Cache, key: &str) -> Result<Option<Vec<u8>>, String> {
    let v = JsFuture::from(cache.match_with_str(key))
        .await
        .map_err(js_err)?;
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    let resp: web_sys::Response = v.unchecked_into();
    let buf = JsFuture::from(resp.array_buffer().map_err(js_err)?)
        .await
        .map_err(js_err)?;
    Ok(Some(Uint8Array::new(&buf).to_vec()))
}

/// Stores bytes; a full quota becomes an explained error.
async fn cache_put(cache: &web_sys::Cache, key: &str, bytes: &[u8]) -> Result<(), String> {
    let arr = Uint8Array::from(bytes);
    let resp = web_sys::Response::new_with_opt_buffer_source(Some(&arr)).map_err(js_err)?;
    match JsFuture::from(cache.put_with_str(key, &resp)).await {
        Ok(_) => Ok(()),
        Err(e) if is_quota(&e) => Err(format!(
            "browser storage is full: could not keep {:.1} MB ({}). Delete other models below, \
             or free space for this site in the browser settings.",
            bytes.len() as f64 / 1e6,
            storage_estimate().await.unwrap_or_default()
        )),
        Err(e) => Err(format!("could not store the model: {}", js_err(e))),
    }
}

/// "x MB used of y MB" from `navigator.storage.estimate()`.
pub async fn storage_estimate() -> Option<String> {
    let storage = window().ok()?.navigator().storage();
    let est = JsFuture::from(storage.estimate().ok()?).await.ok()?;
    let get = |k: &str| Reflect::get(&est, &k.into()).ok()?.as_f64();
    Some(format!(
        "{:.1} MB used of {:.0} MB available to this site",
        get("usage")? / 1e6,
        get("quota")? / 1e6
    ))
}

enum Fetched {
    Bytes(Vec<u8>),
    NotFound,
}

/// GET with progress callbacks (bytes so far).
/// Downloads `url`, refusing more than `max` bytes (what the manifest says a
/// shard holds, or a limit): a lying or broken server cannot fill the memory.
async fn fetch(url: &str, max: u64, mut progress: impl FnMut(u64)) -> Result<Fetched, String> {
    let resp = JsFuture::from(window()?.fetch_with_str(url))
        .await
        .map_err(|e| {
            format!(
                "could not download {url}: {} (network error, or the server does not allow \
                 cross-origin requests — CORS)",
                js_err(e)
            )
        })?;
    let resp: web_sys::Response = resp.unchecked_into();
    // A web page in place of a model file is a single-page-app fallback
    // (`trunk serve` and many static hosts answer every unknown path with
    // index.html): the file is not there.
    let html = resp
        .headers()
        .get("content-type")
        .ok()
        .flatten()
        .is_some_and(|t| t.trim_start().starts_with("text/html"));
    if resp.status() == 404 || (resp.ok() && html) {
        return Ok(Fetched::NotFound);
    }
    if !resp.ok() {
        return Err(format!(
            "could not download {url}: HTTP {} {}",
            resp.status(),
            resp.status_text()
        ));
    }
    let Some(body) = resp.body() else {
        return Ok(Fetched::Bytes(Vec::new()));
    };
    let reader: web_sys::ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let mut out = Vec::new();
    loop {
        let chunk = JsFuture::from(reader.read())
            .await
            .map_err(|e| format!("download of {url} was interrupted: {}", js_err(e)))?;
        if Reflect::get(&chunk, &"done".into())
            .map(|d| d.is_truthy())
            .unwrap_or(true)
        {
            break;
        }
        let value = Reflect::get(&chunk, &"value".into()).map_err(js_err)?;
        let chunk = Uint8Array::new(&value);
        if out.len() as u64 + chunk.length() as u64 > max {
            let _ = reader.cancel();
            return Err(format!("{url}: more than the {max} bytes expected"));
        }
        out.extend(chunk.to_vec());
        progress(out.len() as u64);
    }
    Ok(Fetched::Bytes(out))
}

fn join(base: &str, rel: &str) -> String {
    if base.ends_with('/') {
        format!("{base}{rel}")
    } else {
        format!("{base}/{rel}")
    }
}

/// What `load` found: the kinds that loaded, and the optional kinds that are
/// present but unusable (with why), which disable only their own features.
pub struct Loaded {
    pub components: Vec<Component>,
    pub unavailable: Vec<String>,
}

/// Loads every kind the set has (cache first, then the network), verifying
/// each shard. A missing optional kind is no error; a broken one is reported
/// in `Loaded::unavailable` while the others load. Only a missing or broken
/// `base` fails the whole set. Storage problems are reported through `warn`
/// (the model still loads for this visit).
pub async fn load(
    entry: &ModelEntry,
    mut progress: impl FnMut(LoadProgress),
    mut warn: impl FnMut(String),
) -> Result<Loaded, String> {
    let cache = match cache().await {
        Ok(c) => Some(c),
        Err(e) => {
            warn(e);
            None
        }
    };
    let mut unavailable = Vec::new();
    // A problem with `base` ends the load; one with another kind only drops that kind.
    let mut drop_kind = |kind: &str, e: String| -> Result<(), String> {
        if kind == "base" {
            Err(e)
        } else {
            unavailable.push(if e.starts_with(kind) {
                e
            } else {
                format!("{kind}: {e}")
            });
            Ok(())
        }
    };
    // Manifests first, so the progress bar knows the total size.
    let mut manifests = Vec::new();
    for kind in KINDS {
        match load_manifest(entry, cache.as_ref(), kind).await {
            Ok(Some((m, b))) => manifests.push((kind, m, b)),
            Ok(None) => {}
            Err(e) => drop_kind(kind, e)?,
        }
    }
    // A set is GLIDE's (base) and/or unCLIP's (its four core kinds).
    let has = |k: &str| manifests.iter().any(|(kind, _, _)| *kind == k);
    if !has("base") && !UNCLIP_CORE.iter().all(|k| has(k)) {
        return Err(match &entry.url {
            Some(url) => format!(
                "no model at {}: neither base/manifest.json nor unclip/{{clip-text,prior,decoder,sr}}/manifest.json \
                 was found (a model folder holds base/, upsample/, … or unclip/… as written by `webglide convert`)",
                join(url, "")
            ),
            None => "the files of this model are no longer stored: pick them again".into(),
        });
    }
    let total: u64 = manifests
        .iter()
        .flat_map(|(_, m, _)| m.shards().iter().map(|s| s.bytes))
        .sum();
    let mut done = 0u64;
    let mut components = Vec::new();
    for (kind, manifest, manifest_bytes) in manifests {
        let mut shards = Vec::new();
        // A stage stays in the cache when every shard of it went there.
        let mut in_cache = cache.is_some() && UNCLIP_STAGES.contains(&kind);
        for shard in manifest.shards().to_vec() {
            let what = format!("{kind}/{}", shard.file);
            let base = done;
            let fetched = load_shard(entry, cache.as_ref(), kind, &manifest, &shard.file, |n| {
                progress(LoadProgress {
                    what: format!("downloading {what}"),
                    done: base + n.min(shard.bytes),
                    total,
                })
            })
            .await;
            done += shard.bytes;
            progress(LoadProgress {
                what: format!("verified {what}"),
                done,
                total,
            });
            match fetched {
                Ok((bytes, storage_problem)) => {
                    if let Some(w) = storage_problem {
                        in_cache = false;
                        warn(w);
                    }
                    shards.push((shard.file.clone(), bytes));
                }
                Err(e) => {
                    drop_kind(kind, e)?;
                    shards.clear();
                    break;
                }
            }
        }
        if shards.len() != manifest.shards().len() {
            continue;
        }
        if let Some(c) = &cache {
            let k = key(&entry.id, kind, "manifest.json")?;
            if let Err(e) = cache_put(c, &k, &manifest_bytes).await {
                warn(e);
            }
        }
        if in_cache {
            // Every shard is in the cache: a run reads them back when it needs them.
            shards.clear();
        }
        components.push(Component {
            kind,
            manifest,
            shards,
            in_cache,
        });
    }
    Ok(Loaded {
        components,
        unavailable,
    })
}

/// The verified shards of a kind [`load`] left in Cache Storage (fetched
/// again, like [`load`] does, if the cache lost them since).
pub async fn read_shards(
    entry: &ModelEntry,
    kind: &str,
    manifest: &KindManifest,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let cache = cache().await.ok();
    let mut shards = Vec::new();
    for shard in manifest.shards() {
        let (bytes, _) =
            load_shard(entry, cache.as_ref(), kind, manifest, &shard.file, |_| {}).await?;
        shards.push((shard.file.clone(), bytes));
    }
    Ok(shards)
}

/// A kind's manifest (and its bytes) from the cache or the network; `None`
/// when the set has no such kind.
async fn load_manifest(
    entry: &ModelEntry,
    cache: Option<&web_sys::Cache>,
    kind: &str,
) -> Result<Option<(KindManifest, Vec<u8>)>, String> {
    let k = key(&entry.id, kind, "manifest.json")?;
    let cached = match cache {
        Some(c) => cache_get(c, &k).await?,
        None => None,
    };
    let bytes = match (cached, &entry.url) {
        (Some(b), _) => b,
        (None, Some(url)) => {
            let manifest_url = join(url, &format!("{kind}/manifest.json"));
            match fetch(&manifest_url, MAX_MANIFEST_BYTES as u64, |_| {}).await? {
                Fetched::Bytes(b) => b,
                Fetched::NotFound => return Ok(None),
            }
        }
        (None, None) => return Ok(None),
    };
    Ok(Some((KindManifest::parse(kind, &bytes)?, bytes)))
}

/// One verified shard (cache first, then the network, then kept in the
/// cache), with a storage problem to report if keeping it failed.
async fn load_shard(
    entry: &ModelEntry,
    cache: Option<&web_sys::Cache>,
    kind: &str,
    manifest: &KindManifest,
    file: &str,
    progress: impl FnMut(u64),
) -> Result<(Vec<u8>, Option<String>), String> {
    let k = key(&entry.id, kind, file)?;
    if let Some(c) = cache {
        if let Some(b) = cache_get(c, &k).await? {
            if manifest.verify_shard(file, &b).is_ok() {
                return Ok((b, None));
            } // else a damaged cache entry: fetch again
        }
    }
    let Some(url) = &entry.url else {
        return Err(format!(
            "{kind}/{file} is missing from the stored files: pick the model folder again"
        ));
    };
    let url = join(url, &format!("{kind}/{file}"));
    let expected = manifest
        .shards()
        .iter()
        .find(|s| s.file == file)
        .map_or(0, |s| s.bytes);
    let b = match fetch(&url, expected, progress).await? {
        Fetched::Bytes(b) => b,
        Fetched::NotFound => return Err(format!("{url}: not found (HTTP 404)")),
    };
    manifest
        .verify_shard(file, &b)
        .map_err(|e| format!("{kind}: {e}"))?;
    let storage_problem = match cache {
        Some(c) => cache_put(c, &k, &b).await.err(),
        None => None,
    };
    Ok((b, storage_problem))
}

/// Stores a model set from files the user picked (a folder holding `base/`
/// etc., or one kind's folder): every shard verified before anything is kept.
pub async fn import_files(
    id: &str,
    files: &[(String, Vec<u8>)],
) -> Result<Vec<&'static str>, String> {
    // Paths look like "demo/base/manifest.json" (webkitdirectory).
    let manifests: Vec<(&str, &str, &[u8])> = files
        .iter()
        .filter_map(|(path, bytes)| {
            let dir = path.strip_suffix("manifest.json")?;
            Some((dir, path.as_str(), bytes.as_slice()))
        })
        .collect();
    if manifests.is_empty() {
        return Err(
            "no manifest.json among the picked files (pick the folder written by \
                    `webglide convert`)"
                .into(),
        );
    }
    let cache = cache().await?;
    let mut kinds = Vec::new();
    for (dir, path, bytes) in manifests {
        // "demo/unclip/prior/" → the kind whose folder path ends the directory.
        let dir_trim = dir.trim_end_matches('/');
        let Some(kind) = KINDS
            .iter()
            .copied()
            .filter(|k| dir_trim == *k || dir_trim.ends_with(&format!("/{k}")))
            .max_by_key(|k| k.len())
        else {
            return Err(format!(
                "{path}: not in a model folder (base/, upsample/, …, unclip/prior/, …)"
            ));
        };
        let m = KindManifest::parse(kind, bytes).map_err(|e| format!("{path}: {e}"))?;
        let mut verified = Vec::new();
        for shard in m.shards() {
            let want = format!("{dir}{}", shard.file);
            let (_, b) = files
                .iter()
                .find(|(p, _)| *p == want)
                .ok_or_else(|| format!("{want} is missing from the picked files"))?;
            m.verify_shard(&shard.file, b)
                .map_err(|e| format!("{kind}: {e}"))?;
            verified.push((shard.file.clone(), b));
        }
        for (file, b) in verified {
            cache_put(&cache, &key(id, kind, &file)?, b).await?;
        }
        cache_put(&cache, &key(id, kind, "manifest.json")?, bytes).await?;
        kinds.push(kind);
    }
    if !kinds.contains(&"base") && !UNCLIP_CORE.iter().all(|k| kinds.contains(k)) {
        return Err(
            "the picked files hold no base model (nor unCLIP's clip-text, prior, decoder and sr)"
                .into(),
        );
    }
    Ok(kinds)
}

/// Fetches a file the app serves (e.g. a tokenizer's vocabulary).
pub async fn fetch_bytes(url: &str) -> Result<Vec<u8>, String> {
    // The app's own files (the CLIP vocabulary: 1.3 MB).
    match fetch(url, 64 << 20, |_| {}).await? {
        Fetched::Bytes(b) => Ok(b),
        Fetched::NotFound => Err(format!("{url}: not found")),
    }
}

/// URLs of everything kept for a set (complete kinds and partial downloads).
async fn stored_keys(cache: &web_sys::Cache, id: &str) -> Result<Vec<String>, String> {
    let prefix = format!("{}/", key(id, "", "")?.trim_end_matches('/'));
    let keys = JsFuture::from(cache.keys()).await.map_err(js_err)?;
    Ok(js_sys::Array::from(&keys)
        .iter()
        .filter_map(|req| Reflect::get(&req, &"url".into()).ok()?.as_string())
        .filter(|url| url.starts_with(&prefix))
        .collect())
}

/// Bytes of a set kept in Cache Storage (blob sizes; nothing is copied into wasm).
pub async fn stored_bytes(id: &str) -> Result<u64, String> {
    let cache = cache().await?;
    let mut total = 0u64;
    for url in stored_keys(&cache, id).await? {
        let v = JsFuture::from(cache.match_with_str(&url))
            .await
            .map_err(js_err)?;
        if let Ok(resp) = v.dyn_into::<web_sys::Response>() {
            let blob = JsFuture::from(resp.blob().map_err(js_err)?)
                .await
                .map_err(js_err)?;
            total += blob.unchecked_into::<web_sys::Blob>().size() as u64;
        }
    }
    Ok(total)
}

/// Removes a set's stored files.
pub async fn delete(id: &str) -> Result<(), String> {
    let cache = cache().await?;
    for url in stored_keys(&cache, id).await? {
        JsFuture::from(cache.delete_with_str(&url))
            .await
            .map_err(js_err)?;
    }
    Ok(())
}

/// Resolves after the browser had a chance to render (a macrotask).
pub async fn yield_now() {
    gloo_timers::future::TimeoutFuture::new(0).await;
}
