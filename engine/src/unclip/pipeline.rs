//! Karlo's sampling procedures as a step-by-step loop that stays on the GPU
//! (../shared/docs/unclip-architecture.md §3–6):
//! - text → image: CLIP text features of `[prompt × B, "" × B]` → prior (25
//!   ancestral steps, CFG on x0 at 4, clamp ±10, de-standardised with the
//!   CLIP stats) → decoder (50 or 25 steps, CFG on eps at 8, learned range)
//!   → antialiased bicubic resize of the clamped 64-px images → SR (6 steps of
//!   the first network, the last step by the second);
//! - image variations: CLIP visual embedding of one image (repeated B times)
//!   → decoder with the empty prompt in both halves → SR.
//!
//! One submission per step, nothing read back unless the caller asks. The
//! caller drives it (`while run.step(gpu, &stages)? {…}`) and may hold only
//! the stage that [`UnclipRun::phase`] names (stage residency: the prior, the
//! decoder and the SR networks never need to be on the GPU together).

use std::collections::HashMap;

use super::clip::{ClipText, ClipVisual, TextFeatures};
use super::decoder::{Decoder, DecoderCond, DecoderText};
use super::prior::{Prior, PriorText};
use super::sr::SuperRes;
use super::tokenizer::ClipTokenizer;
use crate::error::{Error, Result};
use crate::glide::schedule::Schedule;
use crate::gpu::{Gpu, Recorder};
use crate::kernels::{self, elementwise::BinaryOp, sampler::Step, Act};
use crate::tensor::Tensor;

/// Philox stream bases (GLIDE uses 0 and 1 << 16): stage initial noise at
/// the base, step k's noise at base + 1 + k.
const STREAM_PRIOR: u32 = 2 << 16;
const STREAM_DECODER: u32 = 3 << 16;
const STREAM_SR: u32 = 4 << 16;

/// Karlo's schedule for all three stages (1000 cosine steps), respaced by `spec`.
pub(crate) fn karlo_schedule(spec: &str) -> Result<Schedule> {
    Schedule::new("squaredcos_cap_v2", 1000, spec)
}

/// Every runtime choice of a run; `Default` is Karlo's t2i defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct UnclipParams {
    pub prior_guidance: f32,
    pub decoder_guidance: f32,
    /// Respacings (`space_timesteps` strings): "25", "50" or "25", "7".
    pub prior_steps: String,
    pub decoder_steps: String,
    pub sr_steps: String,
}

impl Default for UnclipParams {
    fn default() -> Self {
        UnclipParams {
            prior_guidance: 4.0,
            decoder_guidance: 8.0,
            prior_steps: "25".into(),
            decoder_steps: "50".into(),
            sr_steps: "7".into(),
        }
    }
}

/// Where the random draws come from.
pub enum Draws {
    /// The engine's Philox streams: the same images for the same seed on every adapter.
    Seed(u64),
    /// Draws by the fixture trace's names (`prior.noise_init`,
    /// `decoder.step03.noise`, …), each `[B, ...]`: replays an official run's
    /// randomness, so a free-running pipeline can be compared with it.
    Recorded(HashMap<String, Tensor>),
}

/// How one stage samples (see [`kernels::sampler::Step`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct StageKind {
    /// Classifier-free guidance (prior: on x0, decoder: on eps).
    pub guidance: Option<f32>,
    pub predict_x0: bool,
    pub learned_variance: bool,
    pub clamp: f32,
}

impl StageKind {
    /// The prior: CFG on its x0 prediction, clamp ±10 (its `denoised_fn`), fixed-small variance.
    pub fn prior(guidance: f32) -> Self {
        StageKind {
            guidance: Some(guidance),
            predict_x0: true,
            learned_variance: false,
            clamp: 10.0,
        }
    }

    /// The decoder: CFG on eps, learned-range variance, x0 clamped to ±1.
    pub fn decoder(guidance: f32) -> Self {
        StageKind {
            guidance: Some(guidance),
            predict_x0: false,
            learned_variance: true,
            clamp: 1.0,
        }
    }

    /// Super-resolution: no CFG, eps, fixed-small variance, x0 clamped to ±1.
    pub const SR: StageKind = StageKind {
        guidance: None,
        predict_x0: false,
        learned_variance: false,
        clamp: 1.0,
    };
}

/// The prior with the CLIP statistics its samples are de-standardised with.
pub struct PriorStage {
    pub model: Prior,
    /// `[clip_dim]` each (`ViT-L-14_stats.th`).
    pub clip_mean: Tensor,
    pub clip_std: Tensor,
}

impl PriorStage {
    pub fn new(gpu: &Gpu, model: Prior, mean: &[f32], std: &[f32]) -> Result<Self> {
        let d = model.config.clip_dim;
        if mean.len() != d || std.len() != d {
            return Err(Error::Invalid(format!(
                "CLIP stats of {} / {} values for a prior of clip_dim {d}",
                mean.len(),
                std.len()
            )));
        }
        Ok(PriorStage {
            clip_mean: gpu.upload(&[d], mean)?,
            clip_std: gpu.upload(&[d], std)?,
            model,
        })
    }
}

/// The decoder and the side of the images it makes (64 in Karlo).
pub struct DecoderStage {
    pub model: Decoder,
    pub image_size: usize,
}

/// The SR networks and the side of the images they make (256 in Karlo).
/// A run needs one at a time ([`UnclipRun::network`]): each may be absent.
pub struct SrStage {
    pub first_steps: Option<SuperRes>,
    pub last_step: Option<SuperRes>,
    pub image_size: usize,
}

impl SrStage {
    /// The network of SR step `i` ([`Network::sr_for_step`]), if it is loaded.
    pub fn for_step(&self, i: usize) -> Result<&SuperRes> {
        let which = Network::sr_for_step(i);
        let net = match which {
            Network::SrLastStep => self.last_step.as_ref(),
            _ => self.first_steps.as_ref(),
        };
        net.ok_or_else(|| Error::Invalid(format!("the {} network is not loaded", which.name())))
    }
}

/// The network a run's next step needs on the GPU. Holding one at a time is
/// what fits a browser: Karlo's two SR networks alone are 1 GiB in q4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    Prior,
    Decoder,
    SrFirstSteps,
    SrLastStep,
}

impl Network {
    /// Karlo's SR network of step `i` (steps count down to 0): the last-step
    /// network runs i = 0, the first-steps one every other.
    pub fn sr_for_step(i: usize) -> Network {
        if i == 0 {
            Network::SrLastStep
        } else {
            Network::SrFirstSteps
        }
    }

    /// The converted folder (kind) that holds it.
    pub fn kind(self) -> &'static str {
        match self {
            Network::Prior => "prior",
            Network::Decoder => "decoder",
            Network::SrFirstSteps | Network::SrLastStep => "sr",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Network::Prior => "prior",
            Network::Decoder => "decoder",
            Network::SrFirstSteps => "sr-first",
            Network::SrLastStep => "sr-last",
        }
    }
}

/// The stages a step may need; the others can be `None` (not loaded).
#[derive(Clone, Copy, Default)]
pub struct Stages<'a> {
    pub prior: Option<&'a PriorStage>,
    pub decoder: Option<&'a DecoderStage>,
    pub sr: Option<&'a SrStage>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Prior,
    Decoder,
    SuperRes,
    Done,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Prior => "prior",
            Phase::Decoder => "decoder",
            Phase::SuperRes => "sr",
            Phase::Done => "done",
        }
    }
}

/// The draw `stage.noise_init` (step None) or `stage.stepKK.noise`, `[B, ...]`.
fn draw(
    rec: &mut Recorder,
    draws: &Draws,
    phase: Phase,
    step: Option<usize>,
    shape: &[usize],
) -> Result<Tensor> {
    match draws {
        Draws::Seed(seed) => {
            let base = match phase {
                Phase::Prior => STREAM_PRIOR,
                Phase::Decoder => STREAM_DECODER,
                _ => STREAM_SR,
            };
            let stream = base + step.map_or(0, |k| 1 + k as u32);
            kernels::rng::randn(rec, shape, *seed, stream)
        }
        Draws::Recorded(map) => {
            let key = match step {
                None => format!("{}.noise_init", phase.name()),
                Some(k) => format!("{}.step{k:02}.noise", phase.name()),
            };
            let t = map
                .get(&key)
                .ok_or_else(|| Error::Invalid(format!("no recorded draw '{key}'")))?;
            if t.shape() != shape {
                return Err(Error::Invalid(format!(
                    "recorded draw '{key}' is {:?}, expected {shape:?}",
                    t.shape()
                )));
            }
            Ok(t.clone())
        }
    }
}

/// One denoising stage: ancestral steps of the sampler kernel.
struct StageLoop {
    phase: Phase,
    sched: Schedule,
    kind: StageKind,
    /// `[B, ...]` of one sample.
    shape: Vec<usize>,
    /// Model input rows: `[x, x]` with CFG, else `x`.
    x: Tensor,
    step_index: usize,
    pred: Option<Tensor>,
}

type Net<'a> = dyn Fn(&mut Recorder, &Tensor, &Tensor, usize) -> Result<Tensor> + 'a;

impl StageLoop {
    fn new(
        gpu: &Gpu,
        draws: &Draws,
        phase: Phase,
        sched: Schedule,
        kind: StageKind,
        shape: Vec<usize>,
    ) -> Result<Self> {
        let mut rec = gpu.recorder();
        let noise = draw(&mut rec, draws, phase, None, &shape)?;
        let x = kernels::copy::repeat_rows(
            &mut rec,
            &noise,
            if kind.guidance.is_some() { 2 } else { 1 },
        )?;
        rec.submit()?;
        Ok(StageLoop {
            phase,
            sched,
            kind,
            shape,
            x,
            step_index: 0,
            pred: None,
        })
    }

    /// One step (one submission); false once the stage is finished.
    fn step(&mut self, gpu: &Gpu, draws: &Draws, net: &Net) -> Result<bool> {
        let n = self.sched.len();
        if self.step_index >= n {
            return Ok(false);
        }
        let i = n - 1 - self.step_index;
        let rows = self.x.shape()[0];
        let t = gpu.upload(&[rows], &vec![self.sched.timestep_map[i] as f32; rows])?;
        let mut rec = gpu.recorder();
        let out = net(&mut rec, &self.x, &t, i)?;
        let noise = draw(
            &mut rec,
            draws,
            self.phase,
            Some(self.step_index),
            &self.shape,
        )?;
        let (next, pred) = kernels::sampler::sampler_step(
            &mut rec,
            &Step {
                model_out: &out,
                x_t: &self.x,
                noise: &noise,
                guidance: self.kind.guidance,
                ddim: false,
                predict_x0: self.kind.predict_x0,
                learned_variance: self.kind.learned_variance,
                clamp_x0: Some(self.kind.clamp),
                pin: None,
                grad: None,
                last: i == 0,
                replicate: self.kind.guidance.is_some(),
                coeffs: self.sched.coeffs(i, 0.0),
            },
        )?;
        rec.submit()?;
        self.x = next;
        self.pred = Some(pred);
        self.step_index += 1;
        Ok(self.step_index < n)
    }

    fn sample(&self, rec: &mut Recorder) -> Result<Tensor> {
        kernels::copy::first_rows(rec, &self.x, self.shape[0])
    }
}

fn check_params(p: &UnclipParams, batch: usize) -> Result<[Schedule; 3]> {
    crate::limits::check_batch(batch, crate::limits::MAX_UNCLIP_BATCH)?;
    for (what, g) in [
        ("prior guidance", p.prior_guidance),
        ("decoder guidance", p.decoder_guidance),
    ] {
        if !g.is_finite() || !(0.0..=100.0).contains(&g) {
            return Err(Error::Invalid(format!("{what} {g} (0..=100)")));
        }
    }
    let sched = |what: &str, spec: &str| {
        karlo_schedule(spec).map_err(|e| Error::Invalid(format!("{what} steps '{spec}': {e}")))
    };
    Ok([
        sched("prior", &p.prior_steps)?,
        sched("decoder", &p.decoder_steps)?,
        sched("SR", &p.sr_steps)?,
    ])
}

/// One unCLIP generation of B images, driven step by step.
pub struct UnclipRun {
    b: usize,
    params: UnclipParams,
    draws: Draws,
    scheds: [Schedule; 3],
    /// CLIP text features of `[cond × B, uncond × B]` and their masks
    /// (kept until the decoder is conditioned).
    text: Option<(TextFeatures, Vec<u32>)>,
    /// `[B, clip_dim]`, de-standardised (from the prior, or the visual tower).
    img_feat: Option<Tensor>,
    decoder_text: Option<DecoderText>,
    /// SR conditioning `[B, 3, S, S]`.
    low_res: Option<Tensor>,
    /// The decoder's images, clamped, `[B, 3, s, s]` (resized when SR starts).
    decoded: Option<Tensor>,
    /// Whether the run starts with the prior (text → image).
    with_prior: bool,
    phase: Phase,
    stage: Option<StageLoop>,
    output: Option<Tensor>,
    steps_done: usize,
}

impl UnclipRun {
    /// Text → image: one image per prompt (repeat a prompt for several images of it).
    pub fn text_to_image(
        gpu: &Gpu,
        clip: &ClipText,
        tok: &ClipTokenizer,
        prompts: &[&str],
        params: UnclipParams,
        draws: Draws,
    ) -> Result<Self> {
        let batch = prompts.len();
        let scheds = check_params(&params, batch)?;
        let text = encode_text(gpu, clip, tok, prompts)?;
        Ok(Self::start(batch, params, draws, scheds, text, None))
    }

    /// Image variations: B images from the CLIP image embedding of one image
    /// (`pixels` from [`clip_pixels`]), with the empty prompt.
    #[allow(clippy::too_many_arguments)]
    pub fn variations(
        gpu: &Gpu,
        clip: &ClipText,
        visual: &ClipVisual,
        tok: &ClipTokenizer,
        pixels: &[f32],
        batch: usize,
        params: UnclipParams,
        draws: Draws,
    ) -> Result<Self> {
        let scheds = check_params(&params, batch)?;
        let text = encode_text(gpu, clip, tok, &vec![""; batch])?;
        let mut rec = gpu.recorder();
        let feat = visual.encode(&mut rec, pixels, 1, None)?;
        let img_feat = kernels::copy::repeat_rows(&mut rec, &feat, batch)?;
        rec.submit()?;
        Ok(Self::start(
            batch,
            params,
            draws,
            scheds,
            text,
            Some(img_feat),
        ))
    }

    fn start(
        b: usize,
        params: UnclipParams,
        draws: Draws,
        scheds: [Schedule; 3],
        text: (TextFeatures, Vec<u32>),
        img_feat: Option<Tensor>,
    ) -> Self {
        UnclipRun {
            b,
            params,
            draws,
            scheds,
            text: Some(text),
            phase: if img_feat.is_some() {
                Phase::Decoder
            } else {
                Phase::Prior
            },
            with_prior: img_feat.is_none(),
            img_feat,
            decoder_text: None,
            decoded: None,
            low_res: None,
            stage: None,
            output: None,
            steps_done: 0,
        }
    }

    /// The stage the next step runs (the one that must be loaded).
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The network the next step runs (None when done): the prior, the
    /// decoder, then Karlo's first-steps SR network and, for the last step
    /// (i = 0), the last-step one.
    pub fn network(&self) -> Option<Network> {
        Some(match self.phase {
            Phase::Prior => Network::Prior,
            Phase::Decoder => Network::Decoder,
            Phase::SuperRes => {
                // The next step's i, as StageLoop::step counts it.
                let done = self.stage.as_ref().map_or(0, |s| s.step_index);
                Network::sr_for_step(self.scheds[2].len().saturating_sub(done + 1))
            }
            Phase::Done => return None,
        })
    }

    pub fn total_steps(&self) -> usize {
        let prior = if self.with_prior {
            self.scheds[0].len()
        } else {
            0
        };
        prior + self.scheds[1].len() + self.scheds[2].len()
    }

    pub fn steps_done(&self) -> usize {
        self.steps_done
    }

    /// The current x0 prediction `[B, 3, h, w]` of the decoder or SR (for
    /// previews); None during the prior (its samples are embeddings).
    pub fn preview(&self) -> Option<&Tensor> {
        match self.phase {
            Phase::Decoder | Phase::SuperRes => self.stage.as_ref()?.pred.as_ref(),
            _ => None,
        }
    }

    /// The final images `[B, 3, S, S]` in [−1, 1] once [`Phase::Done`].
    pub fn images(&self) -> Option<&Tensor> {
        self.output.as_ref()
    }

    /// The decoder's clamped images `[B, 3, s, s]` between the decoder and SR.
    pub fn decoded(&self) -> Option<&Tensor> {
        self.decoded.as_ref()
    }

    /// The de-standardised image embedding `[B, clip_dim]` once the prior is done.
    pub fn image_embedding(&self) -> Option<&Tensor> {
        self.img_feat.as_ref()
    }

    /// Runs the next step (one submission). Returns false when the run is finished.
    pub fn step(&mut self, gpu: &Gpu, stages: &Stages) -> Result<bool> {
        let missing = |what: &str| Error::Invalid(format!("the {what} stage is not loaded"));
        match self.phase {
            Phase::Prior => {
                let prior = stages.prior.ok_or_else(|| missing("prior"))?;
                let (feats, mask) = self.text.as_ref().ok_or_else(|| missing("text"))?;
                if self.stage.is_none() {
                    let kind = StageKind::prior(self.params.prior_guidance);
                    let shape = vec![self.b, prior.model.config.clip_dim];
                    let sched = self.scheds[0].clone();
                    self.stage = Some(StageLoop::new(
                        gpu,
                        &self.draws,
                        Phase::Prior,
                        sched,
                        kind,
                        shape,
                    )?);
                }
                let text = PriorText {
                    text_emb: &feats.txt_feat,
                    text_enc: &feats.txt_feat_seq,
                    mask,
                };
                let stage = self.stage.as_mut().expect("created above");
                let more = stage.step(gpu, &self.draws, &|rec, x, t, _| {
                    prior.model.forward(rec, x, t, &text, None)
                })?;
                if !more {
                    let mut rec = gpu.recorder();
                    let x0 = stage.sample(&mut rec)?;
                    let scaled = kernels::elementwise::binary(
                        &mut rec,
                        &x0,
                        &prior.clip_std,
                        BinaryOp::Mul,
                        Act::None,
                    )?;
                    let feat = kernels::elementwise::binary(
                        &mut rec,
                        &scaled,
                        &prior.clip_mean,
                        BinaryOp::Add,
                        Act::None,
                    )?;
                    rec.submit()?;
                    self.img_feat = Some(feat);
                    self.next_phase(Phase::Decoder);
                }
            }
            Phase::Decoder => {
                let dec = stages.decoder.ok_or_else(|| missing("decoder"))?;
                if self.stage.is_none() {
                    self.start_decoder(gpu, dec)?;
                }
                let text = self.decoder_text.as_ref().expect("set with the stage");
                let stage = self.stage.as_mut().expect("created above");
                let more = stage.step(gpu, &self.draws, &|rec, x, t, _| {
                    dec.model.forward(rec, x, t, text, None)
                })?;
                if !more {
                    self.decoder_text = None;
                    let stage = self.stage.as_ref().expect("running");
                    let mut rec = gpu.recorder();
                    let images = stage.sample(&mut rec)?;
                    let images =
                        kernels::elementwise::unary(&mut rec, &images, Act::HardTanh, 1.0, 0.0)?;
                    rec.submit()?;
                    self.decoded = Some(images);
                    self.next_phase(Phase::SuperRes);
                }
            }
            Phase::SuperRes => {
                let sr = stages.sr.ok_or_else(|| missing("SR"))?;
                if self.stage.is_none() {
                    // Karlo's low-res input: the clamped images, antialiased bicubic to S.
                    let decoded = self.decoded.clone().expect("set by the decoder");
                    let mut rec = gpu.recorder();
                    let s = sr.image_size;
                    let low_res = kernels::resample::bicubic_aa(&mut rec, &decoded, s, s)?;
                    rec.submit()?;
                    self.low_res = Some(low_res);
                    self.decoded = None;
                    let kind = StageKind::SR;
                    let sched = self.scheds[2].clone();
                    self.stage = Some(StageLoop::new(
                        gpu,
                        &self.draws,
                        Phase::SuperRes,
                        sched,
                        kind,
                        vec![self.b, 3, s, s],
                    )?);
                }
                let low_res = self.low_res.as_ref().expect("set with the stage");
                let stage = self.stage.as_mut().expect("created above");
                // The last step (i = 0) runs the last-step network.
                let more = stage.step(gpu, &self.draws, &|rec, x, t, i| {
                    sr.for_step(i)?.forward(rec, x, low_res, t, None)
                })?;
                if !more {
                    self.output = Some(stage.x.clone());
                    self.low_res = None;
                    self.next_phase(Phase::Done);
                }
            }
            Phase::Done => return Ok(false),
        }
        self.steps_done += 1;
        Ok(self.phase != Phase::Done)
    }

    fn next_phase(&mut self, phase: Phase) {
        self.phase = phase;
        self.stage = None;
    }

    /// y = [image embedding; cf_param × B] with the text of both halves.
    fn start_decoder(&mut self, gpu: &Gpu, dec: &DecoderStage) -> Result<()> {
        let (feats, mask) = self.text.take().ok_or_else(|| {
            Error::Invalid("the text features are gone (decoder started twice?)".into())
        })?;
        let img_feat = self.img_feat.as_ref().expect("prior or variations");
        let d = dec.model.config.clip_dim;
        if img_feat.shape() != [self.b, d] {
            return Err(Error::Invalid(format!(
                "image embedding {:?} for a decoder of clip_dim {d}",
                img_feat.shape()
            )));
        }
        let mut rec = gpu.recorder();
        let uncond =
            kernels::copy::repeat_rows(&mut rec, &dec.model.cf_param.reshape(&[1, d])?, self.b)?;
        let y = kernels::copy::concat_channels(
            &mut rec,
            &[
                &img_feat.reshape(&[1, self.b, d])?,
                &uncond.reshape(&[1, self.b, d])?,
            ],
        )?
        .reshape(&[2 * self.b, d])?;
        self.decoder_text = Some(dec.model.condition(
            &mut rec,
            &DecoderCond {
                y: &y,
                txt_feat: &feats.txt_feat,
                txt_feat_seq: &feats.txt_feat_seq,
                mask: &mask,
            },
            None,
        )?);
        rec.submit()?;
        let kind = StageKind::decoder(self.params.decoder_guidance);
        let s = dec.image_size;
        self.stage = Some(StageLoop::new(
            gpu,
            &self.draws,
            Phase::Decoder,
            self.scheds[1].clone(),
            kind,
            vec![self.b, 3, s, s],
        )?);
        Ok(())
    }
}

/// Padded tokens and masks of `[prompts (B), "" × B]`: the CFG batch.
pub(crate) fn cfg_tokens(
    tok: &ClipTokenizer,
    prompts: &[&str],
    ctx: usize,
) -> (Vec<u32>, Vec<u32>) {
    let (mut tokens, mut mask) = (Vec::new(), Vec::new());
    let empty = std::iter::repeat_n("", prompts.len());
    for text in prompts.iter().copied().chain(empty) {
        let (t, m) = tok.padded(text, ctx);
        tokens.extend(t);
        mask.extend(m);
    }
    (tokens, mask)
}

/// CLIP features of the CFG batch and its masks.
fn encode_text(
    gpu: &Gpu,
    clip: &ClipText,
    tok: &ClipTokenizer,
    prompts: &[&str],
) -> Result<(TextFeatures, Vec<u32>)> {
    let (tokens, mask) = cfg_tokens(tok, prompts, clip.config.context_length);
    let mut rec = gpu.recorder();
    let feats = clip.encode(&mut rec, &tokens, None)?;
    rec.submit()?;
    Ok((feats, mask))
}

/// CLIP's image normalisation (mean, std per RGB channel).
const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// An 8-bit interleaved RGB image → the visual tower's input `[3, res, res]`
/// as Karlo's i2i prepares it: squashed to res×res with antialiased bicubic
/// (8-bit result, as PIL's), scaled to [0, 1], normalised with CLIP's mean/std.
pub fn clip_pixels(rgb: &[u8], w: usize, h: usize, res: usize) -> Result<Vec<f32>> {
    // [−1, 1] planes resized like the GLIDE inputs, back to 8-bit values.
    let planes = crate::glide::pipeline::rgb8_to_planes(rgb, w, h, res)?;
    Ok(planes
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = i / (res * res);
            let byte = ((v + 1.0) * 127.5).round().clamp(0.0, 255.0);
            (byte / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c]
        })
        .collect())
}

/// Final images in [−1, 1] → 8-bit RGB as Karlo's `example.py`:
/// `(clamp(x·0.5 + 0.5, 0, 1)·255).type(uint8)` (truncation).
pub fn to_rgb8(values: &[f32], batch: usize, size: usize) -> Vec<Vec<u8>> {
    crate::glide::pipeline::planes_to_rgb8(values, batch, size, |x| {
        ((x * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0) as u8
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_pixels_normalise_per_channel_and_resize_any_size() {
        // A uniform 37×19 image stays uniform at any resolution: every value
        // is (byte/255 − mean)/std of its channel.
        let rgb: Vec<u8> = (0..37 * 19).flat_map(|_| [255u8, 0, 128]).collect();
        let px = clip_pixels(&rgb, 37, 19, 8).unwrap();
        assert_eq!(px.len(), 3 * 64);
        for (c, byte) in [255.0f32, 0.0, 128.0].into_iter().enumerate() {
            let want = (byte / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
            for v in &px[c * 64..(c + 1) * 64] {
                assert!((v - want).abs() < 1e-5, "channel {c}: {v} vs {want}");
            }
        }
        // At its own size an image is not resampled: a pixel maps to itself.
        let rgb: Vec<u8> = (0..16).flat_map(|i| [i as u8 * 16, 0, 0]).collect();
        let px = clip_pixels(&rgb, 4, 4, 4).unwrap();
        assert!((px[5] - (80.0 / 255.0 - CLIP_MEAN[0]) / CLIP_STD[0]).abs() < 1e-5);
        assert!(
            clip_pixels(&rgb, 4, 5, 4).is_err(),
            "length must match the size"
        );
    }

    #[test]
    fn karlo_output_bytes_truncate() {
        // (x·0.5 + 0.5)·255 truncated: 0.999 → 254, 1 → 255, −1 → 0, beyond → clamped.
        let v = [0.999f32, 1.0, -1.0, 3.0];
        // [1, 3, 2, 2]: channel-major planes of 4 pixels.
        let planes: Vec<f32> = (0..3).flat_map(|_| v).collect();
        let out = to_rgb8(&planes, 1, 2);
        assert_eq!(
            out[0].chunks(3).map(|p| p[0]).collect::<Vec<_>>(),
            [254, 255, 0, 255]
        );
    }

    #[test]
    fn absurd_parameters_are_refused_before_any_work() {
        let ok = UnclipParams::default();
        assert!(check_params(&ok, 1).is_ok());
        assert!(check_params(&ok, 0).is_err());
        assert!(check_params(&ok, crate::limits::MAX_UNCLIP_BATCH + 1).is_err());
        for bad in [
            UnclipParams {
                prior_guidance: f32::NAN,
                ..ok.clone()
            },
            UnclipParams {
                decoder_guidance: -1.0,
                ..ok.clone()
            },
            UnclipParams {
                decoder_steps: "0".into(),
                ..ok.clone()
            },
            UnclipParams {
                sr_steps: "2000".into(),
                ..ok.clone()
            },
        ] {
            assert!(check_params(&bad, 1).is_err(), "{bad:?}");
        }
    }
}
