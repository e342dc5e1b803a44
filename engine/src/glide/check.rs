//! Fixture replay (`webglide check-fixture`): builds a GLIDE model from a case
//! folder's `config.json` alone, replays the recorded forward pass with all
//! intermediates and the whole sampling trace with the recorded random draws,
//! and reports the error of every tensor. Works for any case in the format of
//! `../shared/fixtures/glide/<case>/`, nothing is specialised to the shared ones.

use serde::Deserialize;

use super::model::{Capture, Conditioning, Glide, GlideConfig, TextCond};
use super::schedule::Schedule;
use super::weights::to_f32;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::sampler::{sampler_step, Step};
use crate::quant::WeightDType;
use crate::tensor::Tensor;

#[derive(Deserialize)]
struct CaseConfig {
    create_model_and_diffusion_kwargs: GlideConfig,
    #[serde(default)]
    sampling: Option<Sampling>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Sampling {
    guidance_scale: Option<f64>,
    timestep_respacing: Option<String>,
    sampler: Option<String>,
    clip_denoised: Option<bool>,
}

/// One compared tensor.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub max_abs: f64,
    /// max |got − want| / max |want|.
    pub rel: f64,
    pub ok: bool,
}

/// max |got − want| (a NaN counts as infinite) and that divided by
/// max |want|: the measure of every fixture comparison.
pub fn max_error(got: &[f32], want: &[f32]) -> (f64, f64) {
    let scale = want
        .iter()
        .fold(0f64, |m, &w| m.max((w as f64).abs()))
        .max(1e-12);
    let mut max_abs = 0f64;
    for (&g, &w) in got.iter().zip(want) {
        let e = (g as f64 - w as f64).abs();
        max_abs = if e.is_nan() {
            f64::INFINITY
        } else {
            max_abs.max(e)
        };
    }
    (max_abs, max_abs / scale)
}

#[derive(Default, Debug)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    pub fn ok(&self) -> bool {
        !self.rows.is_empty() && self.rows.iter().all(|r| r.ok)
    }
    pub(crate) fn push(&mut self, name: impl Into<String>, got: &[f32], want: &[f32], tol: f64) {
        self.push_amplified(name, got, want, tol, 1.0);
    }

    /// Like `push` for values derived through x0 = a·x − b·eps: a model-output
    /// error δ becomes b·δ (b = sqrt(1/ᾱ − 1), ~157 at the first upsampler
    /// step), so the error is judged relative to `amp` = max(1, b).
    fn push_amplified(
        &mut self,
        name: impl Into<String>,
        got: &[f32],
        want: &[f32],
        tol: f64,
        amp: f64,
    ) {
        let mut name = name.into();
        if amp > 1.0 {
            name = format!("{name} (/ amplification {amp:.1})");
        }
        if got.len() != want.len() {
            self.rows.push(Row {
                name: format!("{name} (length {} vs {})", got.len(), want.len()),
                max_abs: f64::INFINITY,
                rel: f64::INFINITY,
                ok: false,
            });
            return;
        }
        let (max_abs, rel) = max_error(got, want);
        let rel = rel / amp.max(1.0);
        self.rows.push(Row {
            name,
            max_abs,
            rel,
            ok: rel <= tol,
        });
    }
}

/// The rows of a teacher-forced replay: the first and last steps and every
/// failing tensor are listed; all steps count toward one "worst" row.
#[derive(Default)]
struct StepRows {
    max_abs: f64,
    rel: f64,
}

impl StepRows {
    fn add(&mut self, report: &mut Report, step: Report, i: usize, steps: usize) {
        for r in step.rows {
            self.max_abs = self.max_abs.max(r.max_abs);
            self.rel = self.rel.max(r.rel);
            if !r.ok || i == 0 || i + 1 == steps {
                report.rows.push(r);
            }
        }
    }
    fn finish(self, report: &mut Report, name: String, tol: f64) {
        report.rows.push(Row {
            name,
            max_abs: self.max_abs,
            rel: self.rel,
            ok: self.rel <= tol,
        });
    }
}

/// Tensors of a safetensors file as f32 (ints and bools converted).
pub(crate) struct Tensors<'a>(safetensors::SafeTensors<'a>);

impl<'a> Tensors<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &str) -> Result<Self> {
        Ok(Tensors(
            safetensors::SafeTensors::deserialize(bytes)
                .map_err(|e| Error::Invalid(format!("{what}: {e}")))?,
        ))
    }
    pub(crate) fn names(&self) -> Vec<String> {
        self.0.names().into_iter().map(String::from).collect()
    }
    pub(crate) fn has(&self, name: &str) -> bool {
        self.0.tensor(name).is_ok()
    }
    pub(crate) fn get(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self
            .0
            .tensor(name)
            .map_err(|_| Error::Invalid(format!("fixture tensor '{name}' missing")))?;
        let d = t.data();
        let v = match t.dtype() {
            safetensors::Dtype::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            safetensors::Dtype::I32 => d
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            safetensors::Dtype::F64 => d
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            safetensors::Dtype::BOOL | safetensors::Dtype::U8 => {
                d.iter().map(|&b| b as f32).collect()
            }
            _ => to_f32(name, &t)?,
        };
        Ok((t.shape().to_vec(), v))
    }
    /// Integer or float64 values as f64 (timestep maps are int64).
    pub(crate) fn f64s_or_ints(&self, name: &str) -> Result<Vec<f64>> {
        let t = self
            .0
            .tensor(name)
            .map_err(|_| Error::Invalid(format!("fixture tensor '{name}' missing")))?;
        match t.dtype() {
            safetensors::Dtype::I64 => Ok(t
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect()),
            _ => self.f64s(name),
        }
    }
    pub(crate) fn f64s(&self, name: &str) -> Result<Vec<f64>> {
        let t = self
            .0
            .tensor(name)
            .map_err(|_| Error::Invalid(format!("fixture tensor '{name}' missing")))?;
        Ok(t.data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect())
    }
    pub(crate) fn upload(&self, gpu: &Gpu, name: &str) -> Result<Tensor> {
        let (s, v) = self.get(name)?;
        gpu.upload(&s, &v)
    }
    fn upload_u32(&self, gpu: &Gpu, name: &str) -> Result<Tensor> {
        let (s, v) = self.get(name)?;
        gpu.upload_u32(&s, &v.iter().map(|&x| x as u32).collect::<Vec<_>>())
    }
    /// Item `i` along the first dimension (rows `rows` of it when given).
    fn item(&self, name: &str, i: usize, rows: Option<usize>) -> Result<(Vec<usize>, Vec<f32>)> {
        let (s, v) = self.get(name)?;
        let per = v.len() / s[0].max(1);
        let mut item = v[i * per..(i + 1) * per].to_vec();
        let mut shape = s[1..].to_vec();
        if let Some(r) = rows {
            item.truncate(item.len() / shape[0] * r);
            shape[0] = r;
        }
        Ok((shape, item))
    }
}

fn stats(v: &[f32]) -> [f64; 6] {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    let min = v.iter().fold(f64::INFINITY, |m, &x| m.min(x as f64));
    let max = v.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let mabs = v.iter().map(|&x| (x as f64).abs()).sum::<f64>() / n;
    let l2 = v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    [mean, var.sqrt(), min, max, mabs, l2]
}

/// Checks one case folder given as bytes. `trace` may be absent (forward only).
pub async fn check_case(
    gpu: &Gpu,
    config_json: &[u8],
    weights: &super::weights::WeightSource<'_>,
    io: &[u8],
    trace: Option<&[u8]>,
    tol: f64,
    dtype: WeightDType,
) -> Result<Report> {
    let case: CaseConfig = serde_json::from_slice(config_json)
        .map_err(|e| Error::Invalid(format!("config.json: {e}")))?;
    let cfg = case.create_model_and_diffusion_kwargs;
    let model = Glide::load(gpu, cfg.clone(), weights, dtype)?;
    let mut report = Report::default();
    forward_check(
        gpu,
        &model,
        &Tensors::new(io, "io.safetensors")?,
        tol,
        &mut report,
    )
    .await?;
    if let Some(trace) = trace {
        trace_check(
            gpu,
            &model,
            &case.sampling.unwrap_or_default(),
            &Tensors::new(trace, "trace.safetensors")?,
            tol,
            &mut report,
        )
        .await?;
    }
    Ok(report)
}

async fn forward_check(
    gpu: &Gpu,
    model: &Glide,
    io: &Tensors<'_>,
    tol: f64,
    report: &mut Report,
) -> Result<()> {
    let x = io.upload(gpu, "fwd.x_t")?;
    let t = io.upload(gpu, "fwd.timesteps")?;
    let tokens = io.upload_u32(gpu, "fwd.tokens")?;
    let mask = io.upload_u32(gpu, "fwd.mask")?;
    let low_res = if io.has("fwd.low_res") {
        Some(io.upload(gpu, "fwd.low_res")?)
    } else {
        None
    };
    let inpaint = if io.has("fwd.inpaint_image") {
        Some((
            io.upload(gpu, "fwd.inpaint_image")?,
            io.upload(gpu, "fwd.inpaint_mask")?,
        ))
    } else {
        None
    };
    let mut cap: Capture = Vec::new();
    let mut rec = gpu.recorder();
    let text = model.encode_text(&mut rec, &tokens, &mask, Some(&mut cap))?;
    let cond = Conditioning {
        low_res: low_res.as_ref(),
        inpaint: inpaint.as_ref().map(|(a, b)| (a, b)),
    };
    let out = model.forward(&mut rec, &x, &t, &text, cond, Some(&mut cap))?;
    rec.submit()?;
    for (name, tensor) in &cap {
        let key = format!("fwd.int.{name}");
        let got = gpu.read(tensor).await?;
        if io.has(&key) {
            report.push(&key, &got, &io.get(&key)?.1, tol);
        } else if io.has(&format!("{key}.stats")) {
            let want = io.f64s(&format!("{key}.stats"))?;
            let ours = stats(&got);
            let scale = want[2].abs().max(want[3].abs());
            let (w32, o32): (Vec<f32>, Vec<f32>) = (0..6)
                .map(|i| ((want[i] / scale) as f32, (ours[i] / scale) as f32))
                .unzip();
            // Stats are compared relative to the tensor's max magnitude; the L2 norm relative to itself.
            report.push(format!("{key}.stats"), &o32[..5], &w32[..5], tol);
            report.push(
                format!("{key}.l2"),
                &[ours[5] as f32],
                &[want[5] as f32],
                tol,
            );
            let (_, sample) = io.get(&format!("{key}.sample"))?;
            let stride = got.len() / sample.len().max(1);
            let ours: Vec<f32> = (0..sample.len()).map(|i| got[i * stride]).collect();
            report.push(format!("{key}.sample"), &ours, &sample, tol);
        }
        if name == "xf_final_ln_out" && io.has("fwd.int.xf_out") {
            // xf_out is the same tensor permuted to [N, W, L].
            let s = tensor.shape();
            let (n, l, w) = (s[0], s[1], s[2]);
            let tr: Vec<f32> = (0..n * w * l)
                .map(|e| got[(e / (w * l)) * l * w + (e % l) * w + (e / l) % w])
                .collect();
            report.push("fwd.int.xf_out", &tr, &io.get("fwd.int.xf_out")?.1, tol);
        }
    }
    report.push(
        "fwd.out",
        &gpu.read(&out).await?,
        &io.get("fwd.out")?.1,
        tol,
    );
    Ok(())
}

async fn trace_check(
    gpu: &Gpu,
    model: &Glide,
    s: &Sampling,
    tr: &Tensors<'_>,
    tol: f64,
    report: &mut Report,
) -> Result<()> {
    let cfg = &model.config;
    let respacing = s
        .timestep_respacing
        .clone()
        .unwrap_or_else(|| cfg.timestep_respacing.clone());
    let sched = Schedule::new(&cfg.noise_schedule, cfg.diffusion_steps, &respacing)?;
    let ddim = s.sampler.as_deref().is_some_and(|n| n.contains("ddim"));
    let clip = s.clip_denoised.unwrap_or(true);
    let tokens = tr.upload_u32(gpu, "in.tokens")?;
    let mask = tr.upload_u32(gpu, "in.mask")?;
    let rows = tokens.shape()[0];
    let guidance = if rows == 2 && tr.has("steps.model_out_raw") {
        Some(s.guidance_scale.unwrap_or(3.0) as f32)
    } else {
        None
    };
    let b = if guidance.is_some() { 1 } else { rows };
    let mut rec = gpu.recorder();
    let text = model.encode_text(&mut rec, &tokens, &mask, None)?;
    rec.submit()?;
    let low_res = if tr.has("in.low_res") {
        Some(tr.upload(gpu, "in.low_res")?)
    } else {
        None
    };
    let inpaint = if tr.has("in.inpaint_image") {
        Some((
            tr.upload(gpu, "in.inpaint_image")?,
            tr.upload(gpu, "in.inpaint_mask")?,
        ))
    } else {
        None
    };
    // The sampler pins with the first B rows.
    let pin = match &inpaint {
        Some(_) => {
            let (si, vi) = tr.get("in.inpaint_image")?;
            let (sm, vm) = tr.get("in.inpaint_mask")?;
            let (ni, nm) = (vi.len() / si[0] * b, vm.len() / sm[0] * b);
            let mut s_img = si.clone();
            s_img[0] = b;
            let mut s_mask = sm.clone();
            s_mask[0] = b;
            Some((
                gpu.upload(&s_img, &vi[..ni])?,
                gpu.upload(&s_mask, &vm[..nm])?,
            ))
        }
        None => None,
    };
    let steps = tr.get("steps.t")?.0[0];
    if steps != sched.len() {
        return Err(Error::Invalid(format!(
            "trace has {steps} steps, respacing '{respacing}' gives {}",
            sched.len()
        )));
    }
    let (_, model_t) = tr.get("steps.model_t")?;
    let per_row = model_t.len() / steps;

    // One step from a given x (B rows): returns (model_out, x_next, pred_x0).
    let step = |x_b: Vec<f32>, shape: Vec<usize>, i: usize, noise: Vec<f32>| {
        let text: &TextCond = &text;
        let pin = pin.as_ref();
        let low_res = low_res.as_ref();
        let inpaint = inpaint.as_ref();
        let model_t = &model_t;
        let sched = &sched;
        async move {
            let mut in_shape = shape.clone();
            let mut x_in = x_b.clone();
            if guidance.is_some() {
                in_shape[0] *= 2;
                x_in.extend_from_slice(&x_b);
            }
            let x = gpu.upload(&in_shape, &x_in)?;
            let ts: Vec<f32> = model_t[i * per_row..(i + 1) * per_row].to_vec();
            let t = gpu.upload(&[ts.len()], &ts)?;
            let xb = gpu.upload(&shape, &x_b)?;
            let nz = gpu.upload(&shape, &noise)?;
            let mut rec = gpu.recorder();
            let cond = Conditioning {
                low_res,
                inpaint: inpaint.map(|(a, b)| (a, b)),
            };
            let out = model.forward(&mut rec, &x, &t, text, cond, None)?;
            let ti = steps - 1 - i;
            let (xn, px) = sampler_step(
                &mut rec,
                &Step {
                    model_out: &out,
                    x_t: &xb,
                    noise: &nz,
                    guidance,
                    ddim,
                    predict_x0: false,
                    learned_variance: true,
                    clamp_x0: clip.then_some(1.0),
                    pin: pin.map(|(a, b)| (a, b)),
                    grad: None,
                    last: ti == 0,
                    replicate: false,
                    coeffs: sched.coeffs(ti, 0.0),
                },
            )?;
            rec.submit()?;
            Ok::<_, Error>((
                gpu.read(&out).await?,
                gpu.read(&xn).await?,
                gpu.read(&px).await?,
            ))
        }
    };
    let noise_for = |i: usize, n: usize| -> Result<Vec<f32>> {
        let key = format!("draw.{:03}", i + 1);
        if tr.has(&key) {
            // The first B rows (the CFG draws cover 2B rows; only the cond rows matter).
            Ok(tr.get(&key)?.1[..n].to_vec())
        } else {
            Ok(vec![0.0; n]) // DDIM with eta = 0 does not use its draws.
        }
    };

    // Teacher-forced: each step from the recorded x_t.
    let mut worst = StepRows::default();
    for i in 0..steps {
        let (shape, x_b) = tr.item("steps.x_t", i, Some(b))?;
        let n = x_b.len();
        let (out, xn, px) = step(x_b, shape, i, noise_for(i, n)?).await?;
        let mut sub = Report::default();
        let amp = (sched.coeffs(steps - 1 - i, 0.0).sqrt_recipm1_ac as f64).max(1.0);
        if tr.has("steps.model_out_raw") {
            sub.push(
                format!("steps.model_out_raw[{i}]"),
                &out,
                &tr.item("steps.model_out_raw", i, None)?.1,
                tol,
            );
            sub.push_amplified(
                format!("steps.pred_xstart[{i}]"),
                &px,
                &tr.item("steps.pred_xstart", i, Some(b))?.1,
                tol,
                amp,
            );
            sub.push_amplified(
                format!("steps.sample[{i}]"),
                &xn,
                &tr.item("steps.sample", i, Some(b))?.1,
                tol,
                amp,
            );
        } else {
            for (key, idx) in [("step_first", 0), ("step_last", steps - 1)] {
                if i == idx {
                    sub.push(
                        format!("{key}.model_out"),
                        &out,
                        &tr.get(&format!("{key}.model_out"))?.1,
                        tol,
                    );
                    sub.push_amplified(
                        format!("{key}.pred_xstart"),
                        &px,
                        &tr.get(&format!("{key}.pred_xstart"))?.1,
                        tol,
                        amp,
                    );
                    sub.push_amplified(
                        format!("{key}.sample"),
                        &xn,
                        &tr.get(&format!("{key}.sample"))?.1,
                        tol,
                        amp,
                    );
                }
            }
            let want = if i + 1 < steps {
                tr.item("steps.x_t", i + 1, None)?.1
            } else {
                tr.get("final.samples")?.1
            };
            sub.push_amplified(format!("steps.x_t[{}]", i + 1), &xn, &want, tol, amp);
        }
        worst.add(report, sub, i, steps);
    }
    worst.finish(
        report,
        format!("all {steps} teacher-forced steps (worst)"),
        tol,
    );

    // End to end from the initial noise, replaying every draw.
    let (shape, mut x) = if tr.has("in.noise_scaled") {
        tr.item("in.noise_scaled", 0, None)
            .map(|(s, v)| ([vec![1], s].concat(), v))?
    } else {
        tr.item("draw.000", 0, None)
            .map(|(s, v)| ([vec![1], s].concat(), v))?
    };
    let per = x.len();
    let mut full_shape = shape.clone();
    full_shape[0] = b;
    if b > 1 {
        let (_, all) = if tr.has("in.noise_scaled") {
            tr.get("in.noise_scaled")?
        } else {
            tr.get("draw.000")?
        };
        x = all[..per * b].to_vec();
    }
    for i in 0..steps {
        let n = x.len();
        x = step(x, full_shape.clone(), i, noise_for(i, n)?).await?.1;
    }
    // Sampling chains amplify float differences; end to end gets 10x the per-step tolerance.
    report.push(
        "final.samples (end to end)",
        &x,
        &tr.get("final.samples")?.1,
        tol * 10.0,
    );
    Ok(())
}

/// The `clip` case folder's `config.json`.
#[derive(Deserialize)]
struct ClipCaseConfig {
    clip_config_yaml_values: super::clip::NoisyClipConfig,
    guided_sampling: ClipSampling,
}

#[derive(Deserialize)]
struct ClipSampling {
    guidance_scale: f32,
    timestep_respacing: String,
}

/// A CLIP-guided case (`../shared/fixtures/glide/clip`): the noisy CLIP's
/// encoders with their intermediates, one `cond_fn`, and, given the base
/// model's case (`config.json` + weights), the notebook's CLIP-guided
/// sampling trace step by step and end to end.
#[allow(clippy::too_many_arguments)]
pub async fn check_clip_case(
    gpu: &Gpu,
    config_json: &[u8],
    image_weights: &super::weights::WeightSource<'_>,
    text_weights: &super::weights::WeightSource<'_>,
    io: &[u8],
    trace: Option<(&[u8], &[u8], &super::weights::WeightSource<'_>)>,
    tol: f64,
    dtype: WeightDType,
) -> Result<Report> {
    use super::clip::{cond_fn, ImageEncoder, TextEncoder};
    use super::weights::Loader;
    let case: ClipCaseConfig = serde_json::from_slice(config_json)
        .map_err(|e| Error::Invalid(format!("config.json: {e}")))?;
    let cfg = case.clip_config_yaml_values;
    let l = Loader::new(gpu, image_weights, dtype)?;
    let image = ImageEncoder::load(cfg.clone(), &l)?;
    l.finish()?;
    let l = Loader::new(gpu, text_weights, dtype)?;
    let text = TextEncoder::load(cfg.clone(), &l)?;
    l.finish()?;
    let io = Tensors::new(io, "io.safetensors")?;
    let mut report = Report::default();
    let ints = |name: &str| -> Result<Vec<u32>> {
        Ok(io.get(name)?.1.iter().map(|&v| v as u32).collect())
    };
    let lens: Vec<usize> = ints("text.lens")?.iter().map(|&v| v as usize).collect();
    let timesteps = ints("image.t")?;
    let x = io.upload(gpu, "image.x")?;
    let (mut tcap, mut icap) = (Vec::new(), Vec::new());
    let mut rec = gpu.recorder();
    let z_t = text.encode(&mut rec, &ints("text.tokens")?, &lens, Some(&mut tcap))?;
    let (z_i, _) = image.forward(&mut rec, &x, &timesteps, false, Some(&mut icap))?;
    let grad = cond_fn(
        &mut rec,
        &image,
        &z_t,
        &x,
        &timesteps,
        case.guided_sampling.guidance_scale,
    )?;
    rec.submit()?;
    for (prefix, cap) in [("text", &tcap), ("image", &icap)] {
        for (name, t) in cap {
            let key = format!("{prefix}.int.{name}");
            if io.has(&key) {
                report.push(&key, &gpu.read(t).await?, &io.get(&key)?.1, tol);
            }
        }
    }
    report.push(
        "text.z_t_raw",
        &gpu.read(&z_t).await?,
        &io.get("text.z_t_raw")?.1,
        tol,
    );
    report.push(
        "image.z_i_raw",
        &gpu.read(&z_i).await?,
        &io.get("image.z_i_raw")?.1,
        tol,
    );
    report.push(
        "cond.grad",
        &gpu.read(&grad).await?,
        &io.get("cond.grad")?.1,
        tol,
    );
    if let Some((trace, base_config, base_weights)) = trace {
        let base: CaseConfig = serde_json::from_slice(base_config)
            .map_err(|e| Error::Invalid(format!("base config.json: {e}")))?;
        let model = Glide::load(
            gpu,
            base.create_model_and_diffusion_kwargs,
            base_weights,
            dtype,
        )?;
        clip_trace_check(
            gpu,
            &model,
            &image,
            &text,
            &case.guided_sampling,
            &Tensors::new(trace, "trace.safetensors")?,
            tol,
            &mut report,
        )
        .await?;
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn clip_trace_check(
    gpu: &Gpu,
    model: &Glide,
    image: &super::clip::ImageEncoder,
    text_enc: &super::clip::TextEncoder,
    s: &ClipSampling,
    tr: &Tensors<'_>,
    tol: f64,
    report: &mut Report,
) -> Result<()> {
    let cfg = &model.config;
    let sched = Schedule::new(
        &cfg.noise_schedule,
        cfg.diffusion_steps,
        &s.timestep_respacing,
    )?;
    let steps = sched.len();
    let tokens = tr.upload_u32(gpu, "in.tokens")?;
    let mask = tr.upload_u32(gpu, "in.mask")?;
    let clip_tokens: Vec<u32> = tr
        .get("in.clip_tokens")?
        .1
        .iter()
        .map(|&v| v as u32)
        .collect();
    let clip_lens: Vec<usize> = tr
        .get("in.clip_lens")?
        .1
        .iter()
        .map(|&v| v as usize)
        .collect();
    let mut rec = gpu.recorder();
    let text = model.encode_text(&mut rec, &tokens, &mask, None)?;
    let z_t = text_enc.encode(&mut rec, &clip_tokens, &clip_lens, None)?;
    rec.submit()?;
    // z_t in the trace is normalised; ours is raw (the score normalises it).
    let raw = gpu.read(&z_t).await?;
    let norm = raw.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt() + 1e-12;
    let normed: Vec<f32> = raw.iter().map(|&v| (v as f64 / norm) as f32).collect();
    report.push("in.z_t", &normed, &tr.get("in.z_t")?.1, tol);
    let (_, cond_t) = tr.get("steps.cond_t")?;
    let (_, model_t) = tr.get("steps.model_t")?;
    // One step from x (B rows): (model_out, cond_grad, sample).
    let step = |x: Vec<f32>, shape: Vec<usize>, i: usize, noise: Vec<f32>| {
        let (text, z_t, sched, cond_t, model_t) = (&text, &z_t, &sched, &cond_t, &model_t);
        async move {
            let b = shape[0];
            let xt = gpu.upload(&shape, &x)?;
            let nz = gpu.upload(&shape, &noise)?;
            let t = gpu.upload(&[b], &model_t[i * b..(i + 1) * b])?;
            let ct: Vec<u32> = cond_t[i * b..(i + 1) * b]
                .iter()
                .map(|&v| v as u32)
                .collect();
            let mut rec = gpu.recorder();
            let out = model.forward(&mut rec, &xt, &t, text, Conditioning::default(), None)?;
            let grad = super::clip::cond_fn(&mut rec, image, z_t, &xt, &ct, s.guidance_scale)?;
            let ti = steps - 1 - i;
            let (xn, _) = sampler_step(
                &mut rec,
                &Step {
                    model_out: &out,
                    x_t: &xt,
                    noise: &nz,
                    guidance: None,
                    ddim: false,
                    predict_x0: false,
                    learned_variance: true,
                    clamp_x0: Some(1.0),
                    pin: None,
                    grad: Some(&grad),
                    last: ti == 0,
                    replicate: false,
                    coeffs: sched.coeffs(ti, 0.0),
                },
            )?;
            rec.submit()?;
            Ok::<_, Error>((
                gpu.read(&out).await?,
                gpu.read(&grad).await?,
                gpu.read(&xn).await?,
            ))
        }
    };
    let mut worst = StepRows::default();
    for i in 0..steps {
        let (shape, x) = tr.item("steps.x_t", i, None)?;
        let noise = tr.get(&format!("draw.{:03}", i + 1))?.1;
        let (out, grad, xn) = step(x, shape, i, noise).await?;
        let mut sub = Report::default();
        sub.push(
            format!("steps.model_out[{i}]"),
            &out,
            &tr.item("steps.model_out", i, None)?.1,
            tol,
        );
        sub.push(
            format!("steps.cond_grad[{i}]"),
            &grad,
            &tr.item("steps.cond_grad", i, None)?.1,
            tol,
        );
        sub.push(
            format!("steps.sample[{i}]"),
            &xn,
            &tr.item("steps.sample", i, None)?.1,
            tol,
        );
        worst.add(report, sub, i, steps);
    }
    worst.finish(
        report,
        format!("all {steps} teacher-forced CLIP-guided steps (worst)"),
        tol,
    );
    let (shape, mut x) = tr.get("draw.000")?;
    for i in 0..steps {
        let noise = tr.get(&format!("draw.{:03}", i + 1))?.1;
        x = step(x, shape.clone(), i, noise).await?.2;
    }
    report.push(
        "final.samples (end to end)",
        &x,
        &tr.get("final.samples")?.1,
        tol * 10.0,
    );
    Ok(())
}
