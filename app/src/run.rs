//! The notebooks' procedures (text2im, inpaint, each with the optional
//! upsampler) on the loaded models, step by step: after every step the x0
//! prediction is read back for the live preview, which also hands control
//! back to the browser, so the page stays responsive and Cancel acts between
//! two steps.

use engine::glide::model::Glide;
use engine::glide::pipeline::{
    keep_mask, quantize_low_res, rgb8_to_planes, to_rgb8, upscale_nearest, DiffusionLoop, Extra,
    Sampler,
};
use engine::glide::tokenizer::GlideTokenizer;
use engine::glide::weights::WeightSource;
use engine::{Gpu, WeightDType};

use crate::store::Component;

/// The kinds of a loaded set on the GPU.
pub struct Models {
    pub base: Glide,
    pub upsample: Option<Glide>,
    pub inpaint: Option<Glide>,
    pub upsample_inpaint: Option<Glide>,
    /// Storage type of the weights (f32, f16, q8, q4).
    pub quant: String,
}

/// Uploads the loaded kinds. A kind that fails to load is left out with its
/// reason in the returned list (only `base` failing fails the set).
pub fn upload(gpu: &Gpu, components: Vec<Component>) -> Result<(Models, Vec<String>), Failure> {
    let mut base = None;
    let mut upsample = None;
    let mut inpaint = None;
    let mut upsample_inpaint = None;
    let mut quant = String::new();
    let mut unavailable = Vec::new();
    for c in components {
        let m = c.manifest;
        let kind = m.kind.clone();
        let loaded = WeightDType::parse(&m.quant)
            .and_then(|dtype| {
                let source = WeightSource::shards(m.tensors.into_iter().collect(), &c.shards)?;
                Glide::load(gpu, m.config, &source, dtype)
            })
            .map_err(|e| {
                let mut f = Failure::from(e);
                f.message = format!("{kind}: {}", f.message);
                f
            });
        let model = match loaded {
            Ok(model) => model,
            Err(f) if kind != "base" && !f.device_lost => {
                unavailable.push(f.message);
                continue;
            }
            Err(f) => return Err(f),
        };
        let slot = match kind.as_str() {
            "base" => {
                quant = m.quant.clone();
                &mut base
            }
            "upsample" => &mut upsample,
            "base-inpaint" => &mut inpaint,
            _ => &mut upsample_inpaint,
        };
        *slot = Some(model);
    }
    let models = Models {
        base: base.ok_or_else(|| Failure::msg("the model set has no base model".into()))?,
        upsample,
        inpaint,
        upsample_inpaint,
        quant,
    };
    Ok((models, unavailable))
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
    job: &Job,
    cancelled: &dyn Fn() -> bool,
    mut on: impl FnMut(Event),
) -> Result<Option<Output>, Failure> {
    let ids = tok.encode(&job.prompt);
    let b = job.batch;
    let guidance = (job.guidance > 0.0).then_some(job.guidance);
    let (base, up) = match &job.inpaint {
        None => (&models.base, models.upsample.as_ref()),
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
