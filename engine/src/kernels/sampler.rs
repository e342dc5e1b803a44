//! `sampler_step.wgsl`: classifier-free guidance + one ancestral or DDIM step,
//! entirely on the GPU. The per-step coefficients are gathered on the host in
//! f64 and cast to f32, exactly as guided-diffusion's `_extract_into_tensor`.

use super::{bind_opt, kernel};
use crate::error::{shape_err, Result};
use crate::gpu::{grid, Recorder};
use crate::tensor::Tensor;

kernel!(SAMPLER_STEP, "sampler_step.wgsl", "main");

/// Per-step scalars (f32 casts of the schedule's f64 arrays at index t').
#[derive(Clone, Copy, Debug, Default)]
pub struct StepCoeffs {
    pub sqrt_recip_ac: f32,
    pub sqrt_recipm1_ac: f32,
    pub posterior_coef1: f32,
    pub posterior_coef2: f32,
    /// log β_t (learned-range upper end).
    pub max_log: f32,
    /// log β̃_t clipped (learned-range lower end).
    pub min_log: f32,
    pub sqrt_ac_prev: f32,
    /// DDIM: sqrt(1 − ᾱ_prev − σ²).
    pub ddim_eps_coef: f32,
    /// DDIM: σ = η·sqrt((1−ᾱ_prev)/(1−ᾱ))·sqrt(1−ᾱ/ᾱ_prev).
    pub ddim_sigma: f32,
    /// Log variance used when the model has no variance channels.
    pub fixed_log_var: f32,
}

pub struct Step<'a> {
    /// `[B or 2B (CFG: cond rows first), C or 2C, ...]`.
    pub model_out: &'a Tensor,
    /// `[>= B, C, ...]`; only the first B rows are read.
    pub x_t: &'a Tensor,
    /// `[B, C, ...]` standard-normal noise (ignored on the last step).
    pub noise: &'a Tensor,
    /// Classifier-free guidance scale (None: no CFG batch).
    pub guidance: Option<f32>,
    pub ddim: bool,
    /// The model predicts x0 (Karlo prior) instead of eps.
    pub predict_x0: bool,
    /// Channels C..2C of the model output are learned-range variance values.
    pub learned_variance: bool,
    /// Clamp x0 to [−b, b]: GLIDE and Karlo's decoder/SR use 1, Karlo's
    /// prior 10 (its `denoised_fn`); None leaves x0 as predicted.
    pub clamp_x0: Option<f32>,
    /// Inpainting: (image `[B, C, ...]`, mask `[B, 1, ...]`, 1 = keep).
    pub pin: Option<(&'a Tensor, &'a Tensor)>,
    /// CLIP guidance gradient `[B, C, ...]` (mean += σ²·grad).
    pub grad: Option<&'a Tensor>,
    /// t' == 0: no noise is added.
    pub last: bool,
    /// Write x_next twice (`[x, x]`), the next CFG model batch.
    pub replicate: bool,
    pub coeffs: StepCoeffs,
}

/// Returns `(x_next [B or 2B, C, ...], pred_x0 [B, C, ...])`.
pub fn sampler_step(rec: &mut Recorder, s: &Step) -> Result<(Tensor, Tensor)> {
    let gpu = rec.gpu();
    let shape = s.noise.shape();
    if shape.len() < 2 {
        return shape_err(
            "sampler_step",
            format!("noise {:?} must be [B, C, ...]", shape),
        );
    }
    let (b, c) = (shape[0], shape[1]);
    let sp: usize = shape[2..].iter().product();
    let mo = s.model_out.shape();
    let rows_needed = if s.guidance.is_some() { 2 * b } else { b };
    let ch_needed = if s.learned_variance { 2 * c } else { c };
    if mo.len() != shape.len() || mo[0] != rows_needed || mo[1] < ch_needed || mo[2..] != shape[2..]
    {
        return shape_err(
            "sampler_step",
            format!(
                "model output {mo:?} for x {shape:?} (cfg {})",
                s.guidance.is_some()
            ),
        );
    }
    let xs = s.x_t.shape();
    if xs.len() != shape.len() || xs[0] < b || xs[1..] != shape[1..] {
        return shape_err("sampler_step", format!("x_t {xs:?} for noise {shape:?}"));
    }
    if let Some((img, mask)) = s.pin {
        if img.shape() != shape || mask.numel() != b * sp {
            return shape_err(
                "sampler_step",
                format!(
                    "pin image {:?} / mask {:?} for {shape:?}",
                    img.shape(),
                    mask.shape()
                ),
            );
        }
    }
    if let Some(g) = s.grad {
        if g.shape() != shape {
            return shape_err(
                "sampler_step",
                format!("grad {:?} for {shape:?}", g.shape()),
            );
        }
    }
    let out_rows = if s.replicate { 2 * b } else { b };
    let mut next_shape = shape.to_vec();
    next_shape[0] = out_rows;
    let x_next = gpu.empty(&next_shape)?;
    let pred = gpu.empty(shape)?;
    let k = &s.coeffs;
    let f = super::f;
    rec.dispatch(
        &SAMPLER_STEP,
        &[],
        &[
            b as u32,
            c as u32,
            sp as u32,
            mo[1] as u32,
            s.guidance.is_some() as u32,
            s.ddim as u32,
            s.predict_x0 as u32,
            if s.learned_variance { 0 } else { 1 },
            s.clamp_x0.is_some() as u32,
            s.pin.is_some() as u32,
            s.grad.is_some() as u32,
            s.last as u32,
            out_rows as u32,
            f(s.guidance.unwrap_or(1.0)),
            f(k.sqrt_recip_ac),
            f(k.sqrt_recipm1_ac),
            f(k.posterior_coef1),
            f(k.posterior_coef2),
            f(k.max_log),
            f(k.min_log),
            f(k.sqrt_ac_prev),
            f(k.ddim_eps_coef),
            f(k.ddim_sigma),
            f(k.fixed_log_var),
            f(s.clamp_x0.unwrap_or(1.0)),
        ],
        &[
            s.model_out.bind(),
            s.x_t.bind(),
            s.noise.bind(),
            bind_opt(gpu, s.pin.map(|p| p.0)),
            bind_opt(gpu, s.pin.map(|p| p.1)),
            bind_opt(gpu, s.grad),
            x_next.bind(),
            pred.bind(),
        ],
        grid(((b * c * sp) as u64).div_ceil(256)),
    )?;
    Ok((x_next, pred))
}
