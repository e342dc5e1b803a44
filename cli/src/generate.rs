//! `webglide generate` and `webglide inpaint`: the text2im and inpaint
//! notebooks on converted models, with progress bars and PNG output that
//! records the generation parameters in PNG text chunks.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use engine::glide::clip::{ImageEncoder, NoisyClipConfig, TextEncoder};
use engine::glide::model::{Glide, GlideConfig};
use engine::glide::pipeline::{
    quantize_low_res, to_rgb8, ClipGuidance, DiffusionLoop, Extra, Sampler,
};
use engine::glide::tokenizer::GlideTokenizer;
use engine::glide::weights::WeightSource;
use engine::{Gpu, WeightDType};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Clone)]
pub struct Options {
    pub prompt: String,
    pub model: PathBuf,
    pub guidance: f32,
    /// CLIP guidance scale (replaces classifier-free guidance).
    pub clip_guidance: Option<f32>,
    pub steps: String,
    pub upsample_steps: String,
    pub upsample: bool,
    pub sampler: Sampler,
    pub seed: u64,
    pub batch: usize,
    pub out: PathBuf,
}

pub fn tokenizer() -> Result<GlideTokenizer> {
    Ok(GlideTokenizer::from_gz(
        include_bytes!("../../public/tokenizer/encoder.json.gz"),
        include_bytes!("../../public/tokenizer/vocab.bpe.gz"),
    )?)
}

/// unCLIP's CLIP tokenizer (the released BPE file, embedded).
pub fn clip_tokenizer() -> Result<engine::unclip::tokenizer::ClipTokenizer> {
    Ok(engine::unclip::tokenizer::ClipTokenizer::from_gz(
        include_bytes!("../../public/tokenizer/bpe_simple_vocab_16e6.txt.gz"),
    )?)
}

/// Loads `dir/<kind>/` (a `webglide convert` folder).
pub fn load_model(gpu: &Gpu, dir: &Path, kind: &str) -> Result<Option<Glide>> {
    let Some((manifest, shards)) = crate::convert::read_kind::<GlideConfig>(dir, kind)? else {
        return Ok(None);
    };
    let source = WeightSource::shards(manifest.tensors.clone().into_iter().collect(), &shards)?;
    let dtype = WeightDType::parse(&manifest.quant)?;
    Ok(Some(
        Glide::load(gpu, manifest.config.clone(), &source, dtype)
            .with_context(|| format!("loading {}", dir.join(kind).display()))?,
    ))
}

pub fn bar(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>9} [{bar:32}] {pos}/{len} steps {elapsed_precise} ({per_sec})",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

fn run_loop(gpu: &Gpu, lp: &mut DiffusionLoop, what: &str) -> Result<Vec<f32>> {
    let pb = bar(lp.total_steps(), what);
    while lp.step(gpu)? {
        pb.inc(1);
    }
    pb.inc(1);
    // Reading the result waits for the GPU, so the bar's time is the real time.
    let out = pollster::block_on(gpu.read(&lp.sample(gpu)?))?;
    pb.finish();
    Ok(out)
}

/// Writes one RGB8 image as PNG with text chunks, through a temporary name
/// and a rename, so no partial file remains.
pub fn write_png(
    path: &Path,
    rgb: &[u8],
    w: usize,
    h: usize,
    params: &[(&str, String)],
) -> Result<()> {
    let tmp = path.with_extension("png.partial");
    let result = (|| -> Result<()> {
        let file = std::io::BufWriter::new(
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
        );
        webglide_cli::output::encode_png(file, rgb, w, h, params)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Writes RGB8 images as PNG with text chunks; `batch > 1` adds `-N` to the name.
pub fn write_pngs(
    out: &Path,
    images: &[Vec<u8>],
    size: usize,
    params: &[(&str, String)],
) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let path = if images.len() == 1 {
            out.to_path_buf()
        } else {
            let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
            out.with_file_name(format!("{stem}-{}.png", i + 1))
        };
        write_png(&path, img, size, size, params)?;
        paths.push(path);
    }
    Ok(paths)
}

fn params(o: &Options, mode: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "Software",
            format!("webglide {}", env!("CARGO_PKG_VERSION")),
        ),
        ("webglide:mode", mode.into()),
        ("webglide:prompt", o.prompt.clone()),
        match o.clip_guidance {
            Some(s) => ("webglide:clip_guidance", s.to_string()),
            None => ("webglide:guidance", o.guidance.to_string()),
        },
        ("webglide:steps", o.steps.clone()),
        ("webglide:sampler", o.sampler.name().to_string()),
        (
            "webglide:upsample_steps",
            if o.upsample {
                o.upsample_steps.clone()
            } else {
                "none".into()
            },
        ),
        ("webglide:seed", o.seed.to_string()),
        ("webglide:model", o.model.display().to_string()),
    ]
}

/// Loads `base_kind` (required) and, when `o.upsample`, `up_kind` (without
/// one the base model's image is written, with a note). Returns the options
/// as they will run (recorded in the PNG).
fn load_models(
    gpu: &Gpu,
    o: &Options,
    base_kind: &str,
    up_kind: &str,
) -> Result<(Glide, Option<Glide>, Options)> {
    let base = load_model(gpu, &o.model, base_kind)?.with_context(|| {
        format!(
            "{}/{base_kind}/manifest.json not found (convert the model with `webglide convert --kind {base_kind}`)",
            o.model.display()
        )
    })?;
    let up = if o.upsample {
        load_model(gpu, &o.model, up_kind)?
    } else {
        None
    };
    if o.upsample && up.is_none() {
        eprintln!(
            "note: {}/{up_kind}/ holds no upsampler; writing the base model's image",
            o.model.display()
        );
    }
    let o = Options {
        upsample: up.is_some(),
        ..o.clone()
    };
    Ok((base, up, o))
}

/// Writes the batch as PNGs with the parameters in text chunks.
fn write_result(o: &Options, img: &[f32], size: usize, mode: &str) -> Result<()> {
    let paths = write_pngs(&o.out, &to_rgb8(img, o.batch, size), size, &params(o, mode))?;
    for p in paths {
        println!("wrote {} (seed {})", p.display(), o.seed);
    }
    Ok(())
}

/// The noisy CLIP of a model folder (`clip-image-enc/`, `clip-text-enc/`).
pub fn load_noisy_clip(gpu: &Gpu, dir: &Path) -> Result<(ImageEncoder, TextEncoder)> {
    let read = |kind: &str| {
        crate::convert::read_kind::<NoisyClipConfig>(dir, kind)?.with_context(|| {
            format!(
                "{}/{kind}/manifest.json not found (CLIP guidance needs the noisy CLIP: `webglide convert --kind {kind}`)",
                dir.display()
            )
        })
    };
    let (image, text) = (read("clip-image-enc")?, read("clip-text-enc")?);
    Ok(engine::glide::clip::load_converted(
        gpu,
        (&image.0, &image.1),
        (&text.0, &text.1),
    )?)
}

/// The base loop of `generate`: classifier-free guidance, or CLIP guidance
/// when `o.clip_guidance` is set (then `clip` holds the noisy CLIP).
pub fn base_loop<'m>(
    gpu: &Gpu,
    base: &'m Glide,
    clip: Option<&'m (ImageEncoder, TextEncoder)>,
    prompts: &[&str],
    o: &Options,
) -> Result<DiffusionLoop<'m>> {
    let tok = tokenizer()?;
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p)).collect();
    let refs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let cfg = o.clip_guidance.is_none().then_some(o.guidance);
    let lp = DiffusionLoop::with_prompts(
        gpu,
        base,
        &refs,
        &o.steps,
        o.sampler,
        cfg,
        o.seed,
        1.0,
        Extra::default(),
    )?;
    match (o.clip_guidance, clip) {
        (Some(scale), Some((image, text_enc))) => {
            let mut rec = gpu.recorder();
            let text = text_enc.encode_prompts(&mut rec, &clip_tokenizer()?, prompts)?;
            rec.submit()?;
            Ok(lp.with_clip_guidance(ClipGuidance { image, text, scale })?)
        }
        (Some(_), None) => anyhow::bail!("CLIP guidance needs the noisy CLIP"),
        (None, _) => Ok(lp),
    }
}

pub fn generate(gpu: &Gpu, o: &Options) -> Result<()> {
    // Before anything of the batch's size is allocated (the prompts, the inputs).
    engine::limits::check_batch(o.batch, engine::limits::MAX_GLIDE_BATCH)?;
    let tok = tokenizer()?;
    let (base, up, o) = load_models(gpu, o, "base", "upsample")?;
    let o = &o;
    let ids = tok.encode(&o.prompt);
    let clip = match o.clip_guidance {
        Some(_) => Some(load_noisy_clip(gpu, &o.model)?),
        None => None,
    };
    let prompts = vec![o.prompt.as_str(); o.batch];
    let mut lp = base_loop(gpu, &base, clip.as_ref(), &prompts, o)?;
    let mut img = run_loop(gpu, &mut lp, "base")?;
    drop(lp);
    drop(clip);
    let mut size = base.config.image_size;
    if let Some(up) = &up {
        let low = gpu.upload(&[o.batch, 3, size, size], &quantize_low_res(&img))?;
        let mut lp = DiffusionLoop::new(
            gpu,
            up,
            &ids,
            o.batch,
            &o.upsample_steps,
            Sampler::Ddim,
            None,
            o.seed,
            0.997,
            Extra {
                low_res: Some(low),
                inpaint: None,
            },
        )?;
        img = run_loop(gpu, &mut lp, "upsample")?;
        size = up.config.image_size;
    }
    write_result(o, &img, size, "text2im")
}

/// Decodes an image file to `[3, size, size]` in [-1, 1] (antialiased bicubic, as PIL's BICUBIC).
fn load_image(path: &Path, size: usize) -> Result<Vec<f32>> {
    let (rgb, w, h) = webglide_cli::inputs::read_rgb(path)?;
    engine::glide::pipeline::rgb8_to_planes(&rgb, w, h, size)
        .with_context(|| path.display().to_string())
}

/// Mask file → keep-mask at `size` (1 = keep). White (≥ 50 %) marks the region to regenerate.
fn load_mask(path: &Path, size: usize) -> Result<Vec<f32>> {
    let (luma, w, h) = webglide_cli::inputs::read_luma(path)?;
    engine::glide::pipeline::keep_mask_luma8(&luma, w, h, size)
        .with_context(|| path.display().to_string())
}

pub fn inpaint(gpu: &Gpu, o: &Options, image: &Path, mask: &Path) -> Result<()> {
    // Before anything of the batch's size is allocated (the prompts, the inputs).
    engine::limits::check_batch(o.batch, engine::limits::MAX_GLIDE_BATCH)?;
    let tok = tokenizer()?;
    let (base, up, o) = load_models(gpu, o, "base-inpaint", "upsample-inpaint")?;
    let o = &o;
    let s = base.config.image_size;
    let src = load_image(image, s)?;
    let keep = load_mask(mask, s)?;
    let rep = |v: &[f32]| -> Vec<f32> { (0..o.batch).flat_map(|_| v.iter().copied()).collect() };
    let ids = tok.encode(&o.prompt);
    let extra = Extra {
        low_res: None,
        inpaint: Some((
            gpu.upload(&[o.batch, 3, s, s], &rep(&src))?,
            gpu.upload(&[o.batch, 1, s, s], &rep(&keep))?,
        )),
    };
    let mut lp = DiffusionLoop::new(
        gpu,
        &base,
        &ids,
        o.batch,
        &o.steps,
        o.sampler,
        Some(o.guidance),
        o.seed,
        1.0,
        extra,
    )?;
    let mut img = run_loop(gpu, &mut lp, "base")?;
    let mut size = s;
    if let Some(up) = &up {
        let big = up.config.image_size;
        let src_hi = load_image(image, big)?;
        // The notebook upsamples the 64-px mask with nearest neighbour.
        let keep_hi = engine::glide::pipeline::upscale_nearest(&keep, s, big);
        let low = gpu.upload(&[o.batch, 3, s, s], &quantize_low_res(&img))?;
        let extra = Extra {
            low_res: Some(low),
            inpaint: Some((
                gpu.upload(&[o.batch, 3, big, big], &rep(&src_hi))?,
                gpu.upload(&[o.batch, 1, big, big], &rep(&keep_hi))?,
            )),
        };
        // The inpaint notebook upsamples with the ancestral sampler.
        let mut lp = DiffusionLoop::new(
            gpu,
            up,
            &ids,
            o.batch,
            &o.upsample_steps,
            Sampler::Ancestral,
            None,
            o.seed,
            0.997,
            extra,
        )?;
        img = run_loop(gpu, &mut lp, "upsample")?;
        size = big;
    }
    write_result(o, &img, size, "inpaint")
}
