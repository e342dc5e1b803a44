//! Fuzz targets: every parser of outside data, as `fn(&[u8])` that may return
//! errors but must never panic, hang or allocate past [`TARGETS`]' bounds.
//! Two drivers run them: `tests/fuzz_short.rs` (stable, seeded mutations of
//! `fuzz/corpus/<target>/`, part of the test suite) and `fuzz/` (cargo-fuzz /
//! libFuzzer on nightly, `scripts/fuzz.sh`, the long runs in docs/reliability.md).

use std::sync::OnceLock;

use engine::glide::clip::NoisyClipConfig;
use engine::glide::model::GlideConfig;
use engine::glide::weights::{Manifest, WeightSource};
use engine::unclip::weights::UnclipConfig;

/// A target: its name (= corpus folder), the function, and the most one
/// allocation may take for an input of `n` bytes.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub max_alloc: fn(usize) -> usize,
}

const MIB: usize = 1 << 20;

/// Every target. Bounds: parsers of model files may allocate what the file
/// could hold after deflate (≤ 1032 : 1) plus f32 conversions of it; image
/// decoders what the largest accepted image needs; text tools a little.
pub const TARGETS: &[Target] = &[
    Target {
        name: "checkpoint",
        run: checkpoint,
        max_alloc: |n| 16 * MIB + 2100 * n,
    },
    Target {
        name: "manifest",
        run: manifest,
        max_alloc: |n| 16 * MIB + 64 * n,
    },
    Target {
        name: "safetensors",
        run: safetensors,
        max_alloc: |n| 16 * MIB + 64 * n,
    },
    Target {
        name: "glide_tokenizer",
        run: glide_tokenizer,
        max_alloc: |_| 16 * MIB,
    },
    Target {
        name: "clip_tokenizer",
        run: clip_tokenizer,
        max_alloc: |_| 16 * MIB,
    },
    Target {
        name: "image",
        run: image,
        max_alloc: |_| 256 * MIB,
    },
    Target {
        name: "mask",
        run: mask,
        max_alloc: |_| 256 * MIB,
    },
    Target {
        name: "png_text",
        run: png_text,
        max_alloc: |n| 16 * MIB + 16 * n,
    },
    Target {
        name: "settings",
        run: settings,
        max_alloc: |n| 16 * MIB + 16 * n,
    },
];

/// The largest input the long runs feed a target (libFuzzer's `-max_len`).
pub const MAX_LEN: usize = 64 << 10;

/// The long runs' global allocator: aborts (a finding, with its input saved)
/// on any single allocation over the target's bound at [`MAX_LEN`], so the
/// bound holds without AddressSanitizer's `-malloc_limit_mb` (the runs go
/// 2–10× faster without ASan, and safe Rust has no memory errors to find).
pub struct BoundedAlloc {
    limit: std::sync::atomic::AtomicUsize,
}

impl BoundedAlloc {
    pub const fn new() -> Self {
        Self {
            limit: std::sync::atomic::AtomicUsize::new(usize::MAX),
        }
    }

    /// Bounds allocations by the named target's `max_alloc(MAX_LEN)`, or by
    /// `WEBGLIDE_FUZZ_MAX_ALLOC` bytes (to see the bound bite).
    pub fn bound(&self, target: &str) {
        let t = TARGETS
            .iter()
            .find(|t| t.name == target)
            .expect("a target of TARGETS");
        let limit = std::env::var("WEBGLIDE_FUZZ_MAX_ALLOC")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or((t.max_alloc)(MAX_LEN));
        self.limit
            .store(limit, std::sync::atomic::Ordering::Relaxed);
    }

    fn check(&self, size: usize) {
        let limit = self.limit.load(std::sync::atomic::Ordering::Relaxed);
        if size > limit {
            use std::io::Write;
            // Stderr is unbuffered: this writes without allocating.
            let _ = writeln!(
                std::io::stderr(),
                "webglide fuzz: one allocation of {size} bytes, over the bound of {limit}"
            );
            std::process::abort();
        }
    }
}

/// A long-run target's start: its allocation bound, and decoder panics that
/// the CLI turns into errors kept from libFuzzer's aborting hook.
pub fn init(alloc: &BoundedAlloc, target: &str) {
    alloc.bound(target);
    crate::inputs::quiet_decoder_panics();
}

impl Default for BoundedAlloc {
    fn default() -> Self {
        Self::new()
    }
}

unsafe impl std::alloc::GlobalAlloc for BoundedAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        self.check(layout.size());
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        self.check(layout.size());
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        self.check(new_size);
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

/// The page's settings module, compiled natively to fuzz what localStorage hands it.
#[path = "../../app/src/settings.rs"]
pub mod app_settings;

/// The page's stored settings: whatever the string, parsed settings are within
/// their ranges and survive a round trip through their own JSON unchanged.
pub fn settings(data: &[u8]) {
    use app_settings::{Settings, MAX_CUSTOM_MODELS};
    let s = Settings::parse(&String::from_utf8_lossy(data));
    for g in [
        s.guidance,
        s.clip_guidance,
        s.prior_guidance,
        s.decoder_guidance,
    ] {
        assert!((0.0..=20.0).contains(&g), "guidance {g}");
    }
    assert!((1..=4).contains(&s.batch) && (2..=96).contains(&s.brush));
    assert!(engine::limits::check_prompt(&s.prompt).is_ok());
    assert!(s.custom_models.len() <= MAX_CUSTOM_MODELS);
    let json = serde_json::to_string(&s).expect("settings serialise");
    assert_eq!(
        Settings::parse(&json),
        s,
        "a round trip changed the settings"
    );
}

/// A PyTorch checkpoint (`torch.save` zip, TorchScript archive, pickled tuple).
pub fn checkpoint(data: &[u8]) {
    let _ = crate::pickle::read_checkpoint(data);
}

/// `manifest.json` of either family, then what the loaders derive from its config.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = Manifest::<GlideConfig>::parse(data) {
        if m.config.validate().is_ok() {
            let _ = m.config.weight_shapes();
        }
    }
    if let Ok(m) = Manifest::<UnclipConfig>::parse(data) {
        if m.config.validate().is_ok() {
            let _ = m.config.weight_shapes();
        }
    }
    if let Ok(m) = Manifest::<NoisyClipConfig>::parse(data) {
        if m.config.validate().is_ok() {
            for kind in engine::glide::clip::KINDS {
                let _ = m.config.weight_shapes(kind);
            }
        }
    }
}

/// A safetensors file alone, and as the shard of a manifest: the first two
/// bytes (little-endian) give the manifest's length, the rest is the shard.
/// Every tensor is converted to f32 as the CPU tools read them.
pub fn safetensors(data: &[u8]) {
    if let Ok(source) = WeightSource::single(data) {
        let _ = source.dequantized();
    }
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let len = u16::from_le_bytes(*len) as usize;
    let (json, shard) = rest.split_at(len.min(rest.len()));
    let Ok(m) = Manifest::<GlideConfig>::parse(json) else {
        return;
    };
    let Some(file) = m.shards.first().map(|s| s.file.clone()) else {
        return;
    };
    let shards = vec![(file, shard.to_vec())];
    if let Ok(source) = WeightSource::shards(m.tensors.into_iter().collect(), &shards) {
        let _ = source.dequantized();
    }
}

fn text(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data).into_owned();
    engine::limits::check_prompt(&text).ok().map(|_| text)
}

/// GLIDE's BPE tokenizer on a prompt within the limits.
pub fn glide_tokenizer(data: &[u8]) {
    static TOK: OnceLock<engine::glide::tokenizer::GlideTokenizer> = OnceLock::new();
    let tok = TOK.get_or_init(|| {
        engine::glide::tokenizer::GlideTokenizer::from_gz(
            include_bytes!("../../public/tokenizer/encoder.json.gz"),
            include_bytes!("../../public/tokenizer/vocab.bpe.gz"),
        )
        .expect("the embedded vocabulary")
    });
    if let Some(t) = text(data) {
        let (ids, mask) = tok.padded(&t, 128);
        assert_eq!((ids.len(), mask.len()), (128, 128));
    }
}

/// CLIP's tokenizer (with its text cleaning) on a prompt within the limits.
pub fn clip_tokenizer(data: &[u8]) {
    static TOK: OnceLock<engine::unclip::tokenizer::ClipTokenizer> = OnceLock::new();
    let tok = TOK.get_or_init(|| {
        engine::unclip::tokenizer::ClipTokenizer::from_gz(include_bytes!(
            "../../public/tokenizer/bpe_simple_vocab_16e6.txt.gz"
        ))
        .expect("the embedded vocabulary")
    });
    if let Some(t) = text(data) {
        let (ids, mask) = tok.padded(&t, 77);
        assert_eq!((ids.len(), mask.len()), (77, 77));
    }
}

/// An image as the CLI reads it, then resized as GLIDE's inpainting and
/// CLIP's visual tower take it.
pub fn image(data: &[u8]) {
    if let Ok((rgb, w, h)) = crate::inputs::decode_rgb(data) {
        let _ = engine::glide::pipeline::rgb8_to_planes(&rgb, w, h, 64);
        let _ = engine::unclip::pipeline::clip_pixels(&rgb, w, h, 224);
    }
}

/// A mask as the CLI reads it, then resized to a keep-mask.
pub fn mask(data: &[u8]) {
    if let Ok((luma, w, h)) = crate::inputs::decode_luma(data) {
        let _ = engine::glide::pipeline::keep_mask_luma8(&luma, w, h, 64);
    }
}

/// The PNG writer's text chunks: a prompt as the value, and (to check the
/// writer's own validation) the first line as a keyword; the PNG must decode.
pub fn png_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data).into_owned();
    let key = text.lines().next().unwrap_or_default().to_string();
    let params = [
        ("webglide:prompt", text.clone()),
        (key.as_str(), text.clone()),
    ];
    // Any keyword: an error or a PNG, never a panic.
    let _ = crate::output::encode_png(Vec::new(), &[0, 0, 0], 1, 1, &params);
    let mut ours = Vec::new();
    crate::output::encode_png(&mut ours, &[0, 0, 0], 1, 1, &params[..1])
        .expect("any UTF-8 prompt can be written");
    let decoder = png::Decoder::new(std::io::Cursor::new(&ours));
    let reader = decoder.read_info().expect("our PNG decodes");
    let chunk = &reader.info().utf8_text[0];
    assert_eq!(chunk.get_text().expect("UTF-8 text"), text);
}
