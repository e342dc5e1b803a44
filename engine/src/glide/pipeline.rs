//! The notebooks' sampling procedures as a step-by-step loop that stays on the
//! GPU: one submission per step (model forward + guidance/sampler kernel +
//! Philox noise), nothing read back unless the caller asks for a preview.
//! The caller drives it (`while lp.step()? {…}`), so CLI progress bars, the
//! web UI's previews and Cancel all sit outside the loop.

use super::model::{Conditioning, Glide, TextCond};
use super::schedule::Schedule;
use super::tokenizer::pad_tokens;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::{self, sampler::Step, Act};
use crate::tensor::Tensor;

/// Noise stream ids: base initial noise, per-step noise, upsampler.
const STREAM_BASE: u32 = 0;
const STREAM_UPSAMPLE: u32 = 1 << 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampler {
    Ancestral,
    Ddim,
}

impl Sampler {
    /// The name on the command line and in the PNG text chunks.
    pub fn name(self) -> &'static str {
        match self {
            Sampler::Ancestral => "ancestral",
            Sampler::Ddim => "ddim",
        }
    }

    pub fn from_name(name: &str) -> Option<Sampler> {
        [Sampler::Ancestral, Sampler::Ddim]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

/// What to condition on besides text.
#[derive(Default)]
pub struct Extra {
    /// `[B, 3, h, w]` low-res image for upsamplers (already 8-bit quantised).
    pub low_res: Option<Tensor>,
    /// Inpainting: source image `[B, 3, H, W]` in [-1, 1] and mask `[B, 1, H, W]` (1 = keep).
    pub inpaint: Option<(Tensor, Tensor)>,
}

/// CLIP guidance (`clip_guided.ipynb`): each ancestral step's mean moves by
/// σ²·∇ₓ of the noisy CLIP's score, scaled by `scale` (the notebook's 3.0).
pub struct ClipGuidance<'m> {
    pub image: &'m super::clip::ImageEncoder,
    /// Raw text embeddings `[B, n_embd]` of the prompts (one row per image).
    pub text: Tensor,
    pub scale: f32,
}

pub struct DiffusionLoop<'m> {
    model: &'m Glide,
    clip: Option<ClipGuidance<'m>>,
    text: TextCond,
    sched: Schedule,
    /// Model input rows: `[x, x]` with CFG, else `x`.
    x: Tensor,
    b: usize,
    shape: Vec<usize>,
    guidance: Option<f32>,
    sampler: Sampler,
    seed: u64,
    stream: u32,
    step_index: usize,
    low_res: Option<Tensor>,
    /// Model kwargs (R rows) and sampler pinning (B rows).
    inpaint_model: Option<(Tensor, Tensor)>,
    pin: Option<(Tensor, Tensor)>,
    pred: Option<Tensor>,
}

/// `times` stacked copies of `t` (one submission).
fn repeat_rows(gpu: &Gpu, t: &Tensor, times: usize) -> Result<Tensor> {
    let mut rec = gpu.recorder();
    let out = kernels::copy::repeat_rows(&mut rec, t, times)?;
    rec.submit()?;
    Ok(out)
}

/// Images per loop (checked before any allocation of that size).
fn check_batch(batch: usize) -> Result<()> {
    crate::limits::check_batch(batch, crate::limits::MAX_GLIDE_BATCH)
}

impl<'m> DiffusionLoop<'m> {
    /// `tokens`: the prompt's ids (unpadded), for all `batch` images.
    /// `guidance`: CFG scale (None: no CFG batch, as the upsamplers run).
    /// `temperature` scales the initial noise.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gpu: &Gpu,
        model: &'m Glide,
        tokens: &[u32],
        batch: usize,
        respacing: &str,
        sampler: Sampler,
        guidance: Option<f32>,
        seed: u64,
        temperature: f32,
        extra: Extra,
    ) -> Result<Self> {
        check_batch(batch)?;
        Self::with_prompts(
            gpu,
            model,
            &vec![tokens; batch],
            respacing,
            sampler,
            guidance,
            seed,
            temperature,
            extra,
        )
    }

    /// One prompt per image (`prompts.len()` is the batch, 1..=64), e.g. an
    /// evaluation over many prompts. Image i gets the same noise as image i
    /// of [`DiffusionLoop::new`] with the same seed.
    #[allow(clippy::too_many_arguments)]
    pub fn with_prompts(
        gpu: &Gpu,
        model: &'m Glide,
        prompts: &[&[u32]],
        respacing: &str,
        sampler: Sampler,
        guidance: Option<f32>,
        seed: u64,
        temperature: f32,
        extra: Extra,
    ) -> Result<Self> {
        let cfg = &model.config;
        let batch = prompts.len();
        check_batch(batch)?;
        if let Some(g) = guidance {
            if !g.is_finite() || !(0.0..=100.0).contains(&g) {
                return Err(Error::Invalid(format!("guidance scale {g} (0..=100)")));
            }
        }
        // Check the conditioning before any GPU work is recorded.
        if cfg.super_res != extra.low_res.is_some() {
            return Err(Error::Invalid(format!(
                "a {} model {} a low-resolution image",
                cfg.kind(),
                if cfg.super_res { "needs" } else { "takes no" }
            )));
        }
        if cfg.inpaint != extra.inpaint.is_some() {
            return Err(Error::Invalid(format!(
                "a {} model {} an inpainting image and mask",
                cfg.kind(),
                if cfg.inpaint { "needs" } else { "takes no" }
            )));
        }
        let sched = Schedule::new(&cfg.noise_schedule, cfg.diffusion_steps, respacing)?;
        let rows = if guidance.is_some() { 2 } else { 1 };
        // Text: [cond × B, uncond × B]; the unconditional prompt is all padding.
        let cond: Vec<_> = prompts
            .iter()
            .map(|p| pad_tokens(p, cfg.text_ctx))
            .collect();
        let uncond = pad_tokens(&[], cfg.text_ctx);
        let mut tok = Vec::new();
        let mut mask = Vec::new();
        for r in 0..rows {
            for (ct, cm) in &cond {
                let (t, m) = if r == 0 {
                    (ct, cm)
                } else {
                    (&uncond.0, &uncond.1)
                };
                tok.extend(t);
                mask.extend(m);
            }
        }
        let tok_t = gpu.upload_u32(&[rows * batch, cfg.text_ctx], &tok)?;
        let mask_t = gpu.upload_u32(&[rows * batch, cfg.text_ctx], &mask)?;
        let mut rec = gpu.recorder();
        let text = model.encode_text(&mut rec, &tok_t, &mask_t, None)?;
        let size = cfg.image_size;
        let shape = vec![batch, 3, size, size];
        let stream = if cfg.super_res {
            STREAM_UPSAMPLE
        } else {
            STREAM_BASE
        };
        let noise = kernels::rng::randn(&mut rec, &shape, seed, stream)?;
        let noise = if temperature != 1.0 {
            kernels::elementwise::unary(&mut rec, &noise, Act::None, temperature, 0.0)?
        } else {
            noise
        };
        rec.submit()?;
        let x = repeat_rows(gpu, &noise, rows)?;
        let (inpaint_model, pin) = match extra.inpaint {
            Some((img, mask)) => {
                if img.shape() != shape.as_slice() || mask.shape() != [batch, 1, size, size] {
                    return Err(Error::Invalid(format!(
                        "inpaint image {:?} / mask {:?}, expected {shape:?}",
                        img.shape(),
                        mask.shape()
                    )));
                }
                // The notebook passes image·mask; the model multiplies by the mask again.
                let mut rec = gpu.recorder();
                let mask3 = kernels::copy::concat_channels(&mut rec, &[&mask, &mask, &mask])?;
                let known = kernels::elementwise::binary(
                    &mut rec,
                    &img,
                    &mask3,
                    kernels::elementwise::BinaryOp::Mul,
                    Act::None,
                )?;
                rec.submit()?;
                (
                    Some((
                        repeat_rows(gpu, &known, rows)?,
                        repeat_rows(gpu, &mask, rows)?,
                    )),
                    Some((known, mask)),
                )
            }
            None => (None, None),
        };
        let low_res = match extra.low_res {
            Some(lr) => Some(repeat_rows(gpu, &lr, rows)?),
            None => None,
        };
        Ok(DiffusionLoop {
            model,
            clip: None,
            text,
            sched,
            x,
            b: batch,
            shape,
            guidance,
            sampler,
            seed,
            stream,
            step_index: 0,
            low_res,
            inpaint_model,
            pin,
            pred: None,
        })
    }

    /// Steers sampling with a noisy CLIP's gradient instead of classifier-free
    /// guidance (the notebook's procedure: no CFG batch, ancestral steps).
    pub fn with_clip_guidance(mut self, clip: ClipGuidance<'m>) -> Result<Self> {
        let c = &clip.image.config;
        if self.guidance.is_some() || self.sampler != Sampler::Ancestral {
            return Err(Error::Invalid(
                "CLIP guidance samples without a classifier-free batch, with ancestral steps"
                    .into(),
            ));
        }
        if self.model.config.super_res || self.model.config.inpaint {
            return Err(Error::Invalid(
                "CLIP guidance steers the text-to-image base model".into(),
            ));
        }
        if c.image_size != self.shape[2] || clip.text.shape() != [self.b, c.n_embd] {
            return Err(Error::Invalid(format!(
                "a noisy CLIP for {0}×{0} images with text embeddings {1:?} cannot guide {2} images of {3}×{3}",
                c.image_size,
                clip.text.shape(),
                self.b,
                self.shape[2]
            )));
        }
        if !clip.scale.is_finite() || !(0.0..=1000.0).contains(&clip.scale) {
            return Err(Error::Invalid(format!(
                "CLIP guidance scale {} (0..=1000)",
                clip.scale
            )));
        }
        self.clip = Some(clip);
        Ok(self)
    }

    pub fn total_steps(&self) -> usize {
        self.sched.len()
    }

    pub fn steps_done(&self) -> usize {
        self.step_index
    }

    /// Runs the next step (one submission). Returns false when sampling is finished.
    pub fn step(&mut self, gpu: &Gpu) -> Result<bool> {
        let n = self.sched.len();
        if self.step_index >= n {
            return Ok(false);
        }
        let t = n - 1 - self.step_index;
        let rows = self.x.shape()[0];
        let ts = vec![self.sched.timestep_map[t] as f32; rows];
        let t_tensor = gpu.upload(&[rows], &ts)?;
        let mut rec = gpu.recorder();
        let cond = Conditioning {
            low_res: self.low_res.as_ref(),
            inpaint: self.inpaint_model.as_ref().map(|(a, b)| (a, b)),
        };
        let out = self
            .model
            .forward(&mut rec, &self.x, &t_tensor, &self.text, cond, None)?;
        // The gradient's activations are pooled buffers dropped with this step.
        let grad = match &self.clip {
            Some(c) => {
                let ts = vec![self.sched.timestep_map[t] as u32; self.b];
                Some(super::clip::cond_fn(
                    &mut rec, c.image, &c.text, &self.x, &ts, c.scale,
                )?)
            }
            None => None,
        };
        let noise = kernels::rng::randn(
            &mut rec,
            &self.shape,
            self.seed,
            self.stream + 1 + self.step_index as u32,
        )?;
        let (x_next, pred) = kernels::sampler::sampler_step(
            &mut rec,
            &Step {
                model_out: &out,
                x_t: &self.x,
                noise: &noise,
                guidance: self.guidance,
                ddim: self.sampler == Sampler::Ddim,
                predict_x0: false,
                learned_variance: true,
                clamp_x0: Some(1.0),
                pin: self.pin.as_ref().map(|(a, b)| (a, b)),
                grad: grad.as_ref(),
                last: t == 0,
                replicate: self.guidance.is_some(),
                coeffs: self.sched.coeffs(t, 0.0),
            },
        )?;
        rec.submit()?;
        self.x = x_next;
        self.pred = Some(pred);
        self.step_index += 1;
        Ok(self.step_index < n)
    }

    /// The current x0 prediction `[B, 3, H, W]` (for previews).
    pub fn preview(&self) -> Option<&Tensor> {
        self.pred.as_ref()
    }

    /// The current sample's first B rows `[B, 3, H, W]`.
    pub fn sample(&self, gpu: &Gpu) -> Result<Tensor> {
        let mut rec = gpu.recorder();
        let out = kernels::copy::first_rows(&mut rec, &self.x, self.b)?;
        rec.submit()?;
        Ok(out)
    }
}

/// Image values in [-1, 1] → 8-bit RGB, `round((x + 1)·127.5)` clamped (the notebooks' display).
pub fn to_rgb8(values: &[f32], batch: usize, size: usize) -> Vec<Vec<u8>> {
    planes_to_rgb8(values, batch, size, |x| {
        ((x + 1.0) * 127.5).round_ties_even().clamp(0.0, 255.0) as u8
    })
}

/// `[B, 3, size, size]` planes → B interleaved RGB images, each value mapped by `byte`.
pub fn planes_to_rgb8(
    values: &[f32],
    batch: usize,
    size: usize,
    byte: impl Fn(f32) -> u8 + Copy,
) -> Vec<Vec<u8>> {
    let plane = size * size;
    (0..batch)
        .map(|b| {
            let img = &values[b * 3 * plane..(b + 1) * 3 * plane];
            (0..plane)
                .flat_map(|p| (0..3).map(move |c| byte(img[c * plane + p])))
                .collect()
        })
        .collect()
}

/// The notebook's low-res hand-off: `round((x + 1)·127.5)/127.5 − 1` (half to even).
pub fn quantize_low_res(values: &[f32]) -> Vec<f32> {
    values
        .iter()
        .map(|&x| ((x + 1.0) * 127.5).round_ties_even() / 127.5 - 1.0)
        .collect()
}

fn check_image(what: &str, len: usize, channels: usize, w: usize, h: usize) -> Result<()> {
    crate::limits::check_image(w, h).map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
    if len != w * h * channels {
        return Err(Error::Invalid(format!(
            "{what}: {len} values for {w}x{h}x{channels}"
        )));
    }
    Ok(())
}

/// Straight-alpha RGBA composited on white, as an image viewer shows it
/// (RGB out). The app, the CLI and the trainer read images through this.
pub fn rgba8_on_white(rgba: &[u8]) -> Vec<u8> {
    rgba.chunks_exact(4)
        .flat_map(|p| {
            let a = p[3] as u32;
            [0, 1, 2].map(|c| ((p[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8)
        })
        .collect()
}

/// An 8-bit interleaved RGB image of any size → `[3, size, size]` in [-1, 1],
/// squashed to a square with antialiased bicubic as the notebooks' `read_image`
/// (PIL `resize((size, size), BICUBIC)`).
pub fn rgb8_to_planes(rgb: &[u8], w: usize, h: usize, size: usize) -> Result<Vec<f32>> {
    check_image("image", rgb.len(), 3, w, h)?;
    let value = |byte: u8| byte as f32 / 127.5 - 1.0;
    if w == size && h == size {
        let plane = w * h;
        let mut planes = vec![0f32; 3 * plane];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                planes[c * plane + i] = value(px[c]);
            }
        }
        return Ok(planes);
    }
    // Row by row from the bytes: no full-size f32 copy of a large photo.
    Ok(crate::reference::bicubic_aa_rows(
        3,
        h,
        w,
        size,
        size,
        |c, y, line| {
            let src = &rgb[y * w * 3..(y + 1) * w * 3];
            for (v, px) in line.iter_mut().zip(src.chunks_exact(3)) {
                *v = value(px[c]);
            }
        },
    ))
}

/// A painted mask (`w×h`, 1 = regenerate, fractional at soft edges) → the
/// model's keep-mask at `size` (1 = keep): resized, then ≥ 0.5 regenerates.
/// A mask that regenerates nothing is an error (nothing would change).
pub fn keep_mask(regen: &[f32], w: usize, h: usize, size: usize) -> Result<Vec<f32>> {
    check_image("mask", regen.len(), 1, w, h)?;
    keep_mask_rows(w, h, size, |y, line| {
        line.copy_from_slice(&regen[y * w..(y + 1) * w])
    })
}

/// [`keep_mask`] of an 8-bit grey mask file's pixels (255 = regenerate), the
/// same values as of its `v / 255` plane, read row by row (a 16 MP mask is
/// not copied into 64 MB of f32).
pub fn keep_mask_luma8(luma: &[u8], w: usize, h: usize, size: usize) -> Result<Vec<f32>> {
    check_image("mask", luma.len(), 1, w, h)?;
    keep_mask_rows(w, h, size, |y, line| {
        for (v, byte) in line.iter_mut().zip(&luma[y * w..(y + 1) * w]) {
            *v = *byte as f32 / 255.0;
        }
    })
}

/// The keep-mask of a checked (non-empty) `w×h` mask whose row `y` `row`
/// writes into a line: kept as is at `size`, else resized; then thresholded.
fn keep_mask_rows(
    w: usize,
    h: usize,
    size: usize,
    mut row: impl FnMut(usize, &mut [f32]),
) -> Result<Vec<f32>> {
    let small = if w == size && h == size {
        let mut plane = vec![0f32; w * h];
        for (y, line) in plane.chunks_exact_mut(w).enumerate() {
            row(y, line);
        }
        plane
    } else {
        crate::reference::bicubic_aa_rows(1, h, w, size, size, |_, y, line| row(y, line))
    };
    let keep: Vec<f32> = small
        .iter()
        .map(|&v| if v >= 0.5 { 0.0 } else { 1.0 })
        .collect();
    if keep.iter().all(|&k| k == 1.0) {
        return Err(Error::Invalid(
            "the mask marks nothing to regenerate (paint the region to change)".into(),
        ));
    }
    Ok(keep)
}

/// Nearest-neighbour enlargement of a square mask (the inpaint notebook's
/// hand-off of the 64-px mask to the upsampler).
pub fn upscale_nearest(mask: &[f32], size: usize, big: usize) -> Vec<f32> {
    (0..big * big)
        .map(|i| mask[(i / big * size / big) * size + (i % big) * size / big])
        .collect()
}
