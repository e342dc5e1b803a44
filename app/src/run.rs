//! The notebooks' procedures (text2im, inpaint, each with the optional
//! upsampler) on the loaded models, step by step: after every step the x0
//! prediction is read back for the live preview, which also hands control
//! back to the browser, so the page stays responsive and Cancel acts between
//! two steps.

use engine::glide::clip::{ImageEncoder, NoisyClipConfig, TextEncoder};
use engine::glide::model::Glide;
use engine::glide::pipeline::{
    keep_mask, quantize_low_res, rgb8_to_planes, to_rgb8, upscale_nearest, ClipGuidance,
    DiffusionLoop, Extra, Sampler,
};
use engine::glide::tokenizer::GlideTokenizer;
use engine::glide::weights::WeightSource;
use engine::{Gpu, WeightDType};

use engine::glide::weights::{Manifest, Shards};
use engine::unclip::clip::{ClipText, ClipVisual};
use engine::unclip::pipeline::{clip_pixels, Draws, Network, UnclipParams, UnclipRun};
use engine::unclip::tokenizer::ClipTokenizer;
use engine::unclip::weights::{load_converted, UnclipConfig, UnclipNet};

use crate::store::{Component, KindManifest, ModelEntry, UNCLIP_CORE};

/// The kinds of a loaded set on the GPU.
pub struct Models {
    pub base: Option<Glide>,
    pub upsample: Option<Glide>,
    pub inpaint: Option<Glide>,
    pub upsample_inpaint: Option<Glide>,
    pub unclip: Option<UnclipSet>,
    /// GLIDE's noisy CLIP (image encoder, text encoder): CLIP guidance.
    pub noisy_clip: Option<(ImageEncoder, TextEncoder)>,
    /// Storage type of the weights (f32, f16, q8, q4).
    pub quant: String,
}

/// unCLIP's networks: the CLIP towers on the GPU; the prior, decoder and SR
/// put on the GPU one at a time when a run reaches them, their shards read
/// from Cache Storage then (so the full-size pipeline fits a browser's memory).
pub struct UnclipSet {
    pub clip: ClipText,
    /// For image variations.
    pub visual: Option<ClipVisual>,
    stages: Vec<Stage>,
    entry: ModelEntry,
}

/// A sampling stage's manifest, and its verified shards unless they are in Cache Storage.
struct Stage {
    manifest: Manifest<UnclipConfig>,
    shards: Option<Shards>,
}

impl UnclipSet {
    /// Uploads `network` (the prior, the decoder or one SR network).
    async fn load_network(&self, gpu: &Gpu, network: Network) -> Result<UnclipNet, Failure> {
        let kind = format!("unclip/{}", network.kind());
        let stage = self
            .stages
            .iter()
            .find(|s| s.manifest.kind == network.kind())
            .ok_or_else(|| Failure::msg(format!("the set has no {kind}")))?;
        let only = Some(network);
        let net = match &stage.shards {
            Some(shards) => load_converted(gpu, &stage.manifest, shards, only),
            None => {
                let manifest = KindManifest::Unclip(stage.manifest.clone());
                let shards = crate::store::read_shards(&self.entry, &kind, &manifest)
                    .await
                    .map_err(Failure::msg)?;
                load_converted(gpu, &stage.manifest, &shards, only)
            }
        };
        net.map_err(|e| named(&kind, e))
    }
}

/// The progress label while a network's weights go to the GPU.
fn loading(network: Network) -> &'static str {
    match network {
        Network::Prior => "loading the prior",
        Network::Decoder => "loading the decoder",
        Network::SrFirstSteps => "loading the SR",
        Network::SrLastStep => "loading the last SR step",
    }
}

/// A load failure named by its kind.
fn named(kind: &str, e: engine::Error) -> Failure {
    let mut f = Failure::from(e);
    f.message = format!("{kind}: {}", f.message);
    f
}

/// Uploads the loaded kinds. A kind that fails to load is left out with its
/// reason in the returned list; the set fails only when neither GLIDE's base
/// nor unCLIP's core loads.
pub fn upload(
    gpu: &Gpu,
    entry: &ModelEntry,
    components: Vec<Component>,
) -> Result<(Models, Vec<String>), Failure> {
    let mut models = Models {
        base: None,
        upsample: None,
        inpaint: None,
        upsample_inpaint: None,
        unclip: None,
        noisy_clip: None,
        quant: String::new(),
    };
    let mut unavailable = Vec::new();
    let mut base_failure = None;
    let mut unclip_parts = Vec::new();
    let mut clip_parts = Vec::new();
    for c in components {
        let m = match c.manifest {
            KindManifest::Glide(m) => m,
            KindManifest::Unclip(m) => {
                unclip_parts.push((c.kind, m, (!c.in_cache).then_some(c.shards)));
                continue;
            }
            KindManifest::NoisyClip(m) => {
                clip_parts.push((c.kind, m, c.shards));
                continue;
            }
        };
        let kind = c.kind;
        let loaded = WeightDType::parse(&m.quant).and_then(|dtype| {
            let source = WeightSource::shards(m.tensors.into_iter().collect(), &c.shards)?;
            Glide::load(gpu, m.config, &source, dtype)
        });
        let model = match loaded {
            Ok(model) => model,
            Err(e) => {
                let f = named(kind, e);
                if f.device_lost {
                    return Err(f);
                }
                if kind == "base" {
                    base_failure = Some(f);
                } else {
                    unavailable.push(f.message);
                }
                continue;
            }
        };
        let slot = match kind {
            "base" => {
                models.quant = m.quant.clone();
                &mut models.base
            }
            "upsample" => &mut models.upsample,
            "base-inpaint" => &mut models.inpaint,
            _ => &mut models.upsample_inpaint,
        };
        *slot = Some(model);
    }
    if !unclip_parts.is_empty() {
        match unclip_set(gpu, entry, unclip_parts) {
            Ok((set, problems)) => {
                if models.quant.is_empty() {
                    models.quant = set.1;
                }
                models.unclip = Some(set.0);
                unavailable.extend(problems);
            }
            Err(f) if f.device_lost => return Err(f),
            Err(f) => unavailable.push(f.message),
        }
    }
    if !clip_parts.is_empty() {
        match noisy_clip(gpu, clip_parts) {
            Ok(pair) => models.noisy_clip = Some(pair),
            Err(f) if f.device_lost => return Err(f),
            Err(f) => unavailable.push(f.message),
        }
    }
    if models.base.is_none() && models.unclip.is_none() {
        return Err(
            base_failure.unwrap_or_else(|| Failure::msg("the model set has no base model".into()))
        );
    }
    if let Some(f) = base_failure {
        unavailable.push(f.message);
    }
    Ok((models, unavailable))
}

/// GLIDE's noisy CLIP from its two kinds (CLIP guidance needs both).
fn noisy_clip(
    gpu: &Gpu,
    parts: Vec<(&'static str, Manifest<NoisyClipConfig>, Shards)>,
) -> Result<(ImageEncoder, TextEncoder), Failure> {
    let find = |kind: &str| {
        parts
            .iter()
            .find(|(k, _, _)| *k == kind)
            .map(|(_, m, s)| (m, s))
            .ok_or_else(|| {
                Failure::msg(format!(
                    "CLIP guidance needs clip-image-enc and clip-text-enc (the set has no {kind})"
                ))
            })
    };
    let (image, text) = (find("clip-image-enc")?, find("clip-text-enc")?);
    Ok(engine::glide::clip::load_converted(gpu, image, text)?)
}

/// A kind, its manifest, and its shards unless they are in Cache Storage.
type UnclipPart = (&'static str, Manifest<UnclipConfig>, Option<Shards>);

/// The unCLIP kinds of a set: the text tower uploaded (and the visual one,
/// optional), the stages kept for the run. Returns the set, its storage
/// type, and the problems of optional parts.
fn unclip_set(
    gpu: &Gpu,
    entry: &ModelEntry,
    parts: Vec<UnclipPart>,
) -> Result<((UnclipSet, String), Vec<String>), Failure> {
    let missing: Vec<&str> = UNCLIP_CORE
        .iter()
        .copied()
        .filter(|k| !parts.iter().any(|(kind, _, _)| kind == k))
        .collect();
    if !missing.is_empty() {
        return Err(Failure::msg(format!(
            "unCLIP needs {} as well (it is left out)",
            missing.join(", ")
        )));
    }
    let mut clip = None;
    let mut visual = None;
    let mut problems = Vec::new();
    let mut stages = Vec::new();
    let mut quant = String::new();
    for (kind, m, shards) in parts {
        match kind {
            "unclip/clip-text" => {
                quant = m.quant.clone();
                // Only the stages are left in the cache: the towers' shards are here.
                let shards = shards.unwrap_or_default();
                match load_converted(gpu, &m, &shards, None).map_err(|e| named(kind, e))? {
                    UnclipNet::ClipText(c) => clip = Some(c),
                    _ => unreachable!("the manifest kind was checked"),
                }
            }
            "unclip/clip-visual" => {
                match load_converted(gpu, &m, &shards.unwrap_or_default(), None) {
                    Ok(UnclipNet::ClipVisual(v)) => visual = Some(v),
                    Ok(_) => unreachable!("the manifest kind was checked"),
                    Err(e) => problems.push(named(kind, e).message),
                }
            }
            _ => stages.push(Stage {
                manifest: m,
                shards,
            }),
        }
    }
    let clip = clip.expect("clip-text is in the core");
    Ok((
        (
            UnclipSet {
                clip,
                visual,
                stages,
                entry: entry.clone(),
            },
            quant,
        ),
        problems,
    ))
}

/// CLIP's BPE vocabulary, served with the app (fetched only for unCLIP sets).
pub async fn clip_tokenizer() -> Result<ClipTokenizer, String> {
    let gz = crate::store::fetch_bytes("tokenizer/bpe_simple_vocab_16e6.txt.gz").await?;
    ClipTokenizer::from_gz(&gz).map_err(|e| format!("CLIP tokenizer: {e}"))
}

pub fn tokenizer() -> Result<GlideTokenizer, String> {
    GlideTokenizer::from_gz(
        include_bytes!("../../public/tokenizer/encoder.json.gz"),
        include_bytes!("../../public/tokenizer/vocab.bpe.gz"),
    )
    .map_err(|e| e.to_string())
}

/// The image and painted mask of an inpainting job.
#[derive(Clone)]
pub struct InpaintInput {
    /// RGB8, `w×h`.
    pub rgb: Vec<u8>,
    pub w: usize,
    pub h: usize,
    /// 1 = regenerate, `mw×mh`.
    pub regen: Vec<f32>,
    pub mw: usize,
    pub mh: usize,
}

#[derive(Clone)]
pub struct Job {
    pub prompt: String,
    /// 0 = no classifier-free guidance (the plain conditional model).
    pub guidance: f32,
    /// CLIP guidance at this scale instead of classifier-free guidance
    /// (text to image; needs the set's noisy CLIP and the CLIP tokenizer).
    pub clip_guidance: Option<f32>,
    pub steps: String,
    pub sampler: Sampler,
    pub seed: u64,
    pub batch: usize,
    pub upsample: bool,
    /// The upsampler's respacing ("fast27" in the notebooks).
    pub upsample_steps: String,
    pub inpaint: Option<InpaintInput>,
}

pub enum Event {
    Step {
        stage: &'static str,
        done: usize,
        total: usize,
    },
    Preview {
        images: Vec<Vec<u8>>,
        size: usize,
    },
}

/// A failure, with whether the GPU device was lost (the page offers to retry).
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub message: String,
    pub device_lost: bool,
}

impl Failure {
    pub fn msg(message: String) -> Self {
        Failure {
            message,
            device_lost: false,
        }
    }
}

impl From<engine::Error> for Failure {
    fn from(e: engine::Error) -> Self {
        Failure {
            device_lost: matches!(e, engine::Error::DeviceLost(_)),
            message: match &e {
                engine::Error::Gpu(m) if m.to_lowercase().contains("memory") => {
                    format!("the GPU ran out of memory ({m}): try a smaller batch or no upsampling")
                }
                _ => e.to_string(),
            },
        }
    }
}

pub struct Output {
    pub images: Vec<Vec<u8>>,
    pub size: usize,
}

async fn drive(
    gpu: &Gpu,
    lp: &mut DiffusionLoop<'_>,
    stage: &'static str,
    batch: usize,
    size: usize,
    cancelled: &dyn Fn() -> bool,
    on: &mut impl FnMut(Event),
) -> Result<Option<Vec<f32>>, Failure> {
    let total = lp.total_steps();
    on(Event::Step {
        stage,
        done: 0,
        total,
    });
    loop {
        if cancelled() {
            return Ok(None);
        }
        let more = lp.step(gpu)?;
        if let Some(pred) = lp.preview() {
            // Waiting for the read-back is where the browser gets to run.
            let values = gpu.read(pred).await?;
            on(Event::Preview {
                images: to_rgb8(&values, batch, size),
                size,
            });
        }
        on(Event::Step {
            stage,
            done: lp.steps_done(),
            total,
        });
        if !more {
            break;
        }
    }
    Ok(Some(gpu.read(&lp.sample(gpu)?).await?))
}

fn repeat(v: &[f32], times: usize) -> Vec<f32> {
    (0..times).flat_map(|_| v.iter().copied()).collect()
}

/// Runs a job; `Ok(None)` when cancelled.
pub async fn run(
    gpu: &Gpu,
    models: &Models,
    tok: &GlideTokenizer,
    clip_tok: Option<&ClipTokenizer>,
    job: &Job,
    cancelled: &dyn Fn() -> bool,
    mut on: impl FnMut(Event),
) -> Result<Option<Output>, Failure> {
    let ids = tok.encode(&job.prompt);
    let b = job.batch;
    let guidance = (job.guidance > 0.0 && job.clip_guidance.is_none()).then_some(job.guidance);
    let (base, up) = match &job.inpaint {
        None => (
            models.base.as_ref().ok_or_else(|| {
                Failure::msg("this model set has no GLIDE base model: choose unCLIP".into())
            })?,
            models.upsample.as_ref(),
        ),
        Some(_) => (
            models.inpaint.as_ref().ok_or_else(|| {
                Failure::msg("this model set has no inpainting model (base-inpaint)".into())
            })?,
            models.upsample_inpaint.as_ref(),
        ),
    };
    let up = if job.upsample {
        Some(up.ok_or_else(|| {
            Failure::msg(
                "this model set has no upsampler for this mode: turn upsampling off".into(),
            )
        })?)
    } else {
        None
    };
    let s = base.config.image_size;
    let mut keep = Vec::new();
    let extra = match &job.inpaint {
        None => Extra::default(),
        Some(inp) => {
            let src = rgb8_to_planes(&inp.rgb, inp.w, inp.h, s)?;
            keep = keep_mask(&inp.regen, inp.mw, inp.mh, s)?;
            Extra {
                low_res: None,
                inpaint: Some((
                    gpu.upload(&[b, 3, s, s], &repeat(&src, b))?,
                    gpu.upload(&[b, 1, s, s], &repeat(&keep, b))?,
                )),
            }
        }
    };
    let mut lp = DiffusionLoop::new(
        gpu,
        base,
        &ids,
        b,
        &job.steps,
        job.sampler,
        guidance,
        job.seed,
        1.0,
        extra,
    )?;
    if let Some(scale) = job.clip_guidance {
        let (image, text_enc) = models.noisy_clip.as_ref().ok_or_else(|| {
            Failure::msg("this model set has no noisy CLIP (clip-image-enc, clip-text-enc)".into())
        })?;
        let clip_tok =
            clip_tok.ok_or_else(|| Failure::msg("the CLIP tokenizer did not load".into()))?;
        let prompts = vec![job.prompt.as_str(); b];
        let mut rec = gpu.recorder();
        let text = text_enc.encode_prompts(&mut rec, clip_tok, &prompts)?;
        rec.submit()?;
        lp = lp.with_clip_guidance(ClipGuidance { image, text, scale })?;
    }
    let Some(mut img) = drive(gpu, &mut lp, "base", b, s, cancelled, &mut on).await? else {
        return Ok(None);
    };
    drop(lp);
    let mut size = s;
    if let Some(up) = up {
        let big = up.config.image_size;
        let low = gpu.upload(&[b, 3, s, s], &quantize_low_res(&img))?;
        let (inpaint, sampler) = match &job.inpaint {
            // The text2im notebook upsamples with DDIM ("fast27").
            None => (None, Sampler::Ddim),
            // The inpaint notebook: ancestral, the 64-px mask enlarged by nearest neighbour.
            Some(inp) => {
                let src = rgb8_to_planes(&inp.rgb, inp.w, inp.h, big)?;
                let keep_hi = upscale_nearest(&keep, s, big);
                (
                    Some((
                        gpu.upload(&[b, 3, big, big], &repeat(&src, b))?,
                        gpu.upload(&[b, 1, big, big], &repeat(&keep_hi, b))?,
                    )),
                    Sampler::Ancestral,
                )
            }
        };
        let mut lp = DiffusionLoop::new(
            gpu,
            up,
            &ids,
            b,
            &job.upsample_steps,
            sampler,
            None,
            job.seed,
            0.997,
            Extra {
                low_res: Some(low),
                inpaint,
            },
        )?;
        let Some(hi) = drive(gpu, &mut lp, "upsample", b, big, cancelled, &mut on).await? else {
            return Ok(None);
        };
        img = hi;
        size = big;
    }
    Ok(Some(Output {
        images: to_rgb8(&img, b, size),
        size,
    }))
}

/// An unCLIP job: text → image, or variations of an image.
#[derive(Clone)]
pub struct UnclipJob {
    pub prompt: String,
    pub params: UnclipParams,
    pub seed: u64,
    pub batch: usize,
    /// Variations: the source image (RGB8, w, h).
    pub variations_of: Option<(Vec<u8>, usize, usize)>,
}

/// Runs Karlo's procedure, one stage on the GPU at a time; `Ok(None)` when cancelled.
pub async fn run_unclip(
    gpu: &Gpu,
    set: &UnclipSet,
    tok: &ClipTokenizer,
    job: &UnclipJob,
    cancelled: &dyn Fn() -> bool,
    mut on: impl FnMut(Event),
) -> Result<Option<Output>, Failure> {
    let b = job.batch;
    let draws = Draws::Seed(job.seed);
    let mut run = match &job.variations_of {
        None => {
            let prompts = vec![job.prompt.as_str(); b];
            UnclipRun::text_to_image(gpu, &set.clip, tok, &prompts, job.params.clone(), draws)?
        }
        Some((rgb, w, h)) => {
            let visual = set.visual.as_ref().ok_or_else(|| {
                Failure::msg("this model set has no unclip/clip-visual (image variations)".into())
            })?;
            let pixels = clip_pixels(rgb, *w, *h, visual.config.image_resolution)?;
            let params = job.params.clone();
            UnclipRun::variations(gpu, &set.clip, visual, tok, &pixels, b, params, draws)?
        }
    };
    let total = run.total_steps();
    while let Some(network) = run.network() {
        on(Event::Step {
            stage: loading(network),
            done: run.steps_done(),
            total,
        });
        let net = set.load_network(gpu, network).await?;
        let stages = net.stages().expect("a sampling stage");
        while run.network() == Some(network) {
            if cancelled() {
                return Ok(None);
            }
            run.step(gpu, &stages)?;
            match run.preview() {
                Some(pred) => {
                    // Waiting for the read-back is where the browser gets to run.
                    let size = pred.shape()[2];
                    let values = gpu.read(pred).await?;
                    on(Event::Preview {
                        images: to_rgb8(&values, b, size),
                        size,
                    });
                }
                // The prior's samples are embeddings: nothing to show, but let the page breathe.
                None => crate::store::yield_now().await,
            }
            on(Event::Step {
                stage: network.kind(),
                done: run.steps_done(),
                total,
            });
        }
        // The next network reuses this one's memory, not the pool's spares.
        drop(net);
        gpu.trim_memory();
    }
    let images = run.images().expect("the run is done");
    let size = images.shape()[2];
    let values = gpu.read(images).await?;
    Ok(Some(Output {
        images: engine::unclip::pipeline::to_rgb8(&values, b, size),
        size,
    }))
}
