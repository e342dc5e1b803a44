//! The training loop: data, GLIDE's hybrid loss, EMA, checkpoints.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use engine::demo::shapes::{box_down, held_out, region_keep_mask, render, Rng, Scene};
use engine::glide::model::GlideConfig;
use engine::glide::schedule::Schedule;
use engine::glide::tokenizer::{pad_tokens, GlideTokenizer};

use crate::emoji::Emoji;
use crate::model::{Cond, Glide, Init, Named, WeightMap};
use crate::text_aux::InTraining;

/// The training run's options (`webglide-train --kind … --out …`).
#[derive(clap::Args)]
pub struct Args {
    /// base, upsample, base-inpaint, or clip (the noisy CLIP for CLIP guidance).
    #[arg(long, default_value = "base")]
    pub kind: String,
    /// Architecture (create_model_and_diffusion kwargs as JSON); default: the demo config.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Checkpoint/output folder (resumes from it when it holds a checkpoint).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Stop after this many optimizer steps (in total, counting resumed ones)...
    #[arg(long, default_value_t = 100_000)]
    pub steps: u64,
    /// ...or after this many minutes of this run, whichever comes first.
    #[arg(long, default_value_t = 8.0)]
    pub minutes: f64,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f64,
    /// AdamW's epsilon. PyTorch's default (1e-8), which guided-diffusion
    /// trained GLIDE with; burn's default is 1e-5, and with the loss a mean
    /// over every pixel the gradients of three quarters of the base's
    /// weights (the 16- and 8-px levels, the middle block, every attention
    /// block) are 1e-8 to 1e-6, so at 1e-5 those moved 10 to 1000 times
    /// slower than Adam's step: runs before 2026-12-05 trained with it.
    #[arg(long, default_value_t = ADAM_EPS)]
    pub adam_eps: f64,
    /// The text transformer's learning rate (its embeddings, blocks and
    /// projections: `text_weight`) as a multiple of `--lr`. Its attention
    /// starts nearly uniform over 32 positions, most of them padding, so its
    /// outputs are close to a bag of words, and the gradient that would
    /// teach it word order (which colour goes with which shape) is small
    /// against the batch noise: its weights drift rather than learn
    /// (docs/demo-model.md, twenty-fourth session).
    #[arg(long, default_value_t = 1.0)]
    pub text_lr_scale: f64,
    /// Weight of the text-structure task (`webglide-train text-aux`, whose
    /// heads it needs in the run) added to the diffusion loss; 0: off.
    #[arg(long, default_value_t = 0.0)]
    pub text_aux: f64,
    #[arg(long, default_value_t = 0.999)]
    pub ema: f64,
    /// Probability of an empty caption (classifier-free guidance).
    #[arg(long, default_value_t = 0.2)]
    pub drop_caption: f32,
    /// Probability that a captioned sample's pooled text (transformer_proj,
    /// added to the timestep embedding) is zeroed, so that the caption
    /// reaches the image through the UNet's attention alone, the one path
    /// that can say where a word goes (docs/demo-model.md, twenty-sixth
    /// session). Sampling always uses both paths.
    #[arg(long, default_value_t = 0.0)]
    pub pooled_drop: f32,
    /// Share of shapes scenes drawn as two related objects of one colour
    /// (`Scene::related_pair`): a relation otherwise told apart by colour
    /// must be read from the caption's word order (docs/demo-model.md,
    /// thirtieth session).
    #[arg(long, default_value_t = 0.0)]
    pub related_pairs: f32,
    /// Share of the shapes scenes that are not related pairs drawn with
    /// three objects (the rest draw one, two or three with equal odds;
    /// drawn only when asked, so runs without it keep their data stream):
    /// the eval's prompts each hold a held-out pair, so half of them name
    /// three objects, the count drawn worst (docs/demo-model.md,
    /// thirty-third session).
    #[arg(long, default_value_t = 0.0)]
    pub three_objects: f32,
    /// Probability that a shapes scene with a relation is followed in its
    /// batch by its twin (`Scene::twin`: the two objects trade places, the
    /// relation word is reversed), with the same timestep and noise: the
    /// pair's only difference in caption is the relation word, so the
    /// gradient of their losses is the relation's own (docs/demo-model.md,
    /// thirty-first session).
    #[arg(long, default_value_t = 0.0)]
    pub twins: f32,
    /// cpu (flex), tch (LibTorch on the CPU; the `tch` feature), gpu (wgpu: Vulkan/Metal/DX12) or
    /// cuda (the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Linear learning-rate warm-up over this many steps (again after a resume without optimizer moments).
    #[arg(long, default_value_t = 100)]
    pub warmup: u64,
    /// Cosine decay of the learning rate from `--lr` at this (total) step...
    #[arg(long)]
    pub decay_from: Option<u64>,
    /// ...to `--lr-final` over this many steps (then held there).
    #[arg(long, default_value_t = 5000)]
    pub decay_steps: u64,
    #[arg(long, default_value_t = 3e-5)]
    pub lr_final: f64,
    /// Checkpoint every N steps.
    #[arg(long, default_value_t = 200)]
    pub save_every: u64,
    /// Emoji dataset cache (scripts/build-emoji.sh); without it, shapes only.
    #[arg(long)]
    pub emoji: Option<std::path::PathBuf>,
    /// Emoji: sample only these concepts (a file of names, one per line,
    /// `#` comments; e.g. trainer/data/emoji-concepts.txt).
    #[arg(long, requires = "emoji")]
    pub emoji_concepts: Option<std::path::PathBuf>,
    /// Share of shapes scenes among the samples when emoji are used.
    #[arg(long, default_value_t = 0.25)]
    pub shapes_share: f32,
    /// Upsampler: train on random N×N crops of the 256-px targets (a multiple
    /// of 32; the low-res input is the matching N/4 crop). The network is
    /// convolutional, with global attention, so it runs at 256 afterwards; a
    /// 64-px crop costs 1/16 of a full image, which is what makes CPU
    /// training of the upsampler possible at all.
    #[arg(long)]
    pub crop: Option<usize>,
    /// Base models: train on N×N images instead of the config's size (a
    /// resolution curriculum: the UNet is convolutional and its attention
    /// levels are counted in downsampling steps, so a 32-px stage costs a
    /// quarter of a 64-px one and its weights carry over unchanged).
    #[arg(long)]
    pub size: Option<usize>,
    /// With --size: every N-th batch at the config's size instead, meant to
    /// keep the full size's object scale in a cheap small-image stage (a
    /// model trained at 32 px alone draws 32-px-sized objects, crowded, at
    /// 64; with N = 4 the crowds stayed: docs/demo-model.md).
    #[arg(long)]
    pub full_size_every: Option<usize>,
    /// Min-SNR-γ weighting of the eps loss (weight min(SNR, γ)/SNR per
    /// sample; Hang et al. 2023); 0 = the plain mean as released.
    #[arg(long, default_value_t = 0.0)]
    pub min_snr: f64,
    /// Weight the eps loss of the noisiest steps (SNR < 1) by 1/SNR, capped
    /// at this factor: there the eps error is SNR times the x0 error, so
    /// the plain mean barely trains the layout decided at the top of the
    /// schedule; 1/SNR makes it the x0 error (Salimans & Ho's truncated-SNR
    /// weighting). 0 = off.
    #[arg(long, default_value_t = 0.0)]
    pub low_snr_boost: f64,
    /// Offset noise: add S·N(0, 1) per image and channel, constant over the
    /// image, to the training noise (Guttenberg 2023). At the top of the
    /// cosine schedule the noised image's mean still carries √ᾱ·(the
    /// image's mean): for scenes on white 0.05 at t = 960 against the
    /// noise's own 1/64, so a model learns to read the ground's colour from
    /// it and, sampled from pure noise (mean 0), draws a wrong ground
    /// (`eval --probe` shows it). An offset of S ≫ 0.05 makes that mean
    /// uninformative in training too. 0 = off, as released.
    #[arg(long, default_value_t = 0.0)]
    pub offset_noise: f64,
    /// Start a new run from these weights (e.g. a trained base for
    /// base-inpaint), a safetensors file or a `webglide convert` folder (the
    /// shipped public/models/demo/base): tensors of equal shape are copied;
    /// the first conv's extra input channels (the inpainting image and mask)
    /// start at zero.
    #[arg(long)]
    pub init: Option<std::path::PathBuf>,
    /// burn (burn's conv2d) or gemm (each conv one matrix product over an
    /// im2col tensor): on the H200 burn's CUDA matmul ran at 25 TFLOP/s
    /// where a training step with its conv2d reached 2 % of that
    /// (`webglide-train bench --conv` compares them on a device).
    #[arg(long, default_value = "burn")]
    pub conv: String,
}

/// The demo model's architectures: the released GLIDE topology, narrow.
pub fn demo_config(kind: &str) -> Result<GlideConfig> {
    let mut c = GlideConfig::for_kind(kind)?;
    c.num_channels = 32;
    c.num_res_blocks = 1;
    c.num_head_channels = 32;
    c.text_ctx = 32;
    c.xf_width = 64;
    c.xf_layers = 2;
    c.xf_heads = 2;
    // Every level at 64 channels, none at 32: GLIDE's GroupNorms have 32
    // groups, and one channel per group (an instance norm) removes every
    // channel's mean right before the output conv, so the model could not set
    // the image's mean colour (docs/demo-model.md, eleventh session; the
    // upsampler's 32-channel top levels drew grey noise, fourteenth session).
    c.channel_mult = if c.super_res {
        "2,2,2,2,2,2"
    } else {
        "2,2,2,2"
    }
    .into();
    c.attention_resolutions = "16,8".into();
    c.validate()?;
    Ok(c)
}

pub fn tokenizer() -> Result<GlideTokenizer> {
    Ok(GlideTokenizer::from_gz(
        include_bytes!("../../public/tokenizer/encoder.json.gz"),
        include_bytes!("../../public/tokenizer/vocab.bpe.gz"),
    )?)
}

pub(crate) fn planes(rgb: &[u8], size: usize) -> Vec<f32> {
    let n = size * size;
    let mut out = vec![0f32; 3 * n];
    for i in 0..n {
        for c in 0..3 {
            out[c * n + i] = rgb[i * 3 + c] as f32 / 127.5 - 1.0;
        }
    }
    out
}

/// Where the training images come from.
pub struct Data {
    pub emoji: Option<Emoji>,
    /// Share of shapes scenes among the samples when emoji are present.
    pub shapes_share: f32,
    /// Upsampler: random crops of this size instead of whole images.
    pub crop: Option<usize>,
    /// Base models: the training image size, when not the config's.
    pub size: Option<usize>,
    /// `--pooled-drop`.
    pub pooled_drop: f32,
    /// `--related-pairs`.
    pub related_pairs: f32,
    /// `--three-objects`.
    pub three_objects: f32,
    /// `--twins`.
    pub twins: f32,
}

impl Data {
    pub fn shapes() -> Data {
        Data {
            emoji: None,
            shapes_share: 1.0,
            crop: None,
            size: None,
            pooled_drop: 0.0,
            related_pairs: 0.0,
            three_objects: 0.0,
            twins: 0.0,
        }
    }
}

/// The `c`×`c` RGB window at (`x`, `y`) of a `size`×`size` image.
fn crop_rgb(rgb: &[u8], size: usize, x: usize, y: usize, c: usize) -> Vec<u8> {
    (y..y + c)
        .flat_map(|r| &rgb[(r * size + x) * 3..(r * size + x + c) * 3])
        .copied()
        .collect()
}

/// A random rectangle to regenerate (0), the rest kept (1).
fn rectangle_mask(rng: &mut Rng, s: usize) -> Vec<f32> {
    let (w, h) = (s / 5 + rng.below(s * 3 / 5), s / 5 + rng.below(s * 3 / 5));
    let (x0, y0) = (rng.below(s - w + 1), rng.below(s - h + 1));
    let unit = |p: usize| p as f32 / s as f32;
    region_keep_mask([unit(x0), unit(y0), unit(x0 + w), unit(y0 + h)], s)
}

/// One object's box of `scene`, with a random margin of 1.3–4.5 px at 64 px, to
/// regenerate (0), the rest kept (1).
fn object_box_mask(scene: &Scene, rng: &mut Rng, s: usize) -> Vec<f32> {
    let object = &scene.objects[rng.below(scene.objects.len())];
    region_keep_mask(object.box_with_margin(0.02 + 0.05 * rng.f32()), s)
}

/// One training batch on the CPU.
pub struct Batch {
    /// Side of the images (the crop size when cropping).
    pub size: usize,
    pub x0: Vec<f32>,
    pub low_res: Vec<f32>,
    pub keep: Vec<f32>,
    pub tokens: Vec<i64>,
    pub mask: Vec<f32>,
    pub captions: Vec<String>,
    /// Per sample: 0 where `--pooled-drop` cut the pooled text, else 1.
    pub pooled_keep: Vec<f32>,
    /// Per sample: the sample whose timestep and noise it shares — the
    /// scene it is the twin of (`--twins`), else itself.
    pub twin_of: Vec<usize>,
}

impl Batch {
    /// Whether any sample is another's twin.
    pub fn has_twins(&self) -> bool {
        self.twin_of.iter().enumerate().any(|(i, &j)| i != j)
    }

    /// Per-sample `t` with each twin's replaced by its scene's.
    pub fn shared_with_twins(&self, t: Vec<usize>) -> Vec<usize> {
        self.twin_of.iter().map(|&j| t[j]).collect()
    }
}

pub fn make_batch(
    cfg: &GlideConfig,
    tok: &GlideTokenizer,
    data: &Data,
    rng: &mut Rng,
    b: usize,
    drop: f32,
) -> Result<Batch> {
    make_batch_sized(cfg, tok, data, data.size, rng, b, drop)
}

/// The image size of the batch of optimizer step `step` (counted from 1):
/// the stage's `size`, but the config's (None) every `full_every`-th step.
pub fn batch_size_at(size: Option<usize>, full_every: Option<usize>, step: u64) -> Option<usize> {
    match full_every {
        Some(n) if step.is_multiple_of(n as u64) => None,
        _ => size,
    }
}

/// `make_batch` at `size` instead of `data.size` (None: the config's).
pub fn make_batch_sized(
    cfg: &GlideConfig,
    tok: &GlideTokenizer,
    data: &Data,
    size: Option<usize>,
    rng: &mut Rng,
    b: usize,
    drop: f32,
) -> Result<Batch> {
    let s = match size {
        Some(n) if cfg.super_res || !(16..=cfg.image_size).contains(&n) || !n.is_multiple_of(8) => {
            bail!(
                "--size {n}: base models only, a multiple of 8 from 16 to {}",
                cfg.image_size
            )
        }
        Some(n) => n,
        None => cfg.image_size,
    };
    let crop = match data.crop {
        Some(c) if !cfg.super_res || c == 0 || c > s || c % 32 != 0 => {
            bail!("--crop {c}: upsampler only, a multiple of 32 up to {s}")
        }
        Some(c) => c,
        None => s,
    };
    if data.emoji.is_some() && !crate::emoji::CANVAS.is_multiple_of(s) {
        bail!("emoji data needs an image size that divides 256, not {s}");
    }
    let mut out = Batch {
        size: crop,
        x0: Vec::new(),
        low_res: Vec::new(),
        keep: Vec::new(),
        tokens: Vec::new(),
        mask: Vec::new(),
        captions: Vec::new(),
        pooled_keep: Vec::new(),
        twin_of: Vec::new(),
    };
    // The twin of the previous sample, drawn there, placed here.
    let mut pending_twin: Option<Scene> = None;
    // Supersampled to the same 256-px detail as the emoji (64 px: 4×4 samples per pixel).
    let ss = if cfg.super_res { 2 } else { 256 / s };
    for i in 0..b {
        let twin = pending_twin.take();
        out.twin_of.push(if twin.is_some() { i - 1 } else { i });
        let emoji = data
            .emoji
            .as_ref()
            .filter(|_| twin.is_none() && rng.f32() >= data.shapes_share);
        let (mut caption, rgb, object, scene) = if let Some(scene) = twin {
            let rgb = render(&scene, s, ss);
            (scene.caption(), rgb, None, Some(scene))
        } else if let Some(e) = emoji {
            let i = e.sample(rng);
            let caption = e.caption(i, rng);
            let rgb = if s == 64 {
                e.small[i].clone()
            } else {
                box_down(&e.large(i)?, crate::emoji::CANVAS, crate::emoji::CANVAS / s)
            };
            (caption, rgb, Some((e, i)), None)
        } else {
            let allow = |c, sh| !held_out(c, sh);
            // Drawn only when asked, so runs without it keep their data stream.
            let scene = if data.related_pairs > 0.0 && rng.f32() < data.related_pairs {
                Scene::related_pair(rng, &allow)
            } else if data.three_objects > 0.0 && rng.f32() < data.three_objects {
                Scene::random_of(rng, &allow, 3)
            } else {
                Scene::random(rng, &allow)
            };
            // Drawn only when asked, so runs without it keep their data stream.
            if data.twins > 0.0 && i + 1 < b && rng.f32() < data.twins {
                pending_twin = scene.twin();
            }
            let rgb = render(&scene, s, ss);
            (scene.caption(), rgb, None, Some(scene))
        };
        if rng.f32() < drop {
            caption.clear();
        }
        // Drawn only when asked, so runs without it keep their data stream.
        let cut = data.pooled_drop > 0.0 && !caption.is_empty() && rng.f32() < data.pooled_drop;
        out.pooled_keep.push(if cut { 0.0 } else { 1.0 });
        if cfg.super_res {
            let low = box_down(&rgb, s, 4);
            // Crop corners on the low-res grid, so both crops cover the same area.
            let (ox, oy) = (rng.below((s - crop) / 4 + 1), rng.below((s - crop) / 4 + 1));
            out.low_res
                .extend(planes(&crop_rgb(&low, s / 4, ox, oy, crop / 4), crop / 4));
            out.x0
                .extend(planes(&crop_rgb(&rgb, s, 4 * ox, 4 * oy, crop), crop));
        } else {
            out.x0.extend(planes(&rgb, s));
        }
        if cfg.inpaint {
            match (object, scene) {
                // A third of the emoji regenerate the whole object (its alpha).
                (Some((e, i)), _) if rng.f32() < 0.3 => {
                    let alpha = e.alpha(i)?;
                    let f = crate::emoji::CANVAS / s;
                    out.keep.extend((0..s * s).map(|p| {
                        let (x, y) = (p % s * f, p / s * f);
                        let covered = (0..f).any(|dy| {
                            (0..f).any(|dx| alpha[(y + dy) * crate::emoji::CANVAS + x + dx] > 0)
                        });
                        if covered {
                            0.0
                        } else {
                            1.0
                        }
                    }));
                }
                // Half the scenes regenerate one object's box, as a user
                // paints over an object to change it (`webglide eval inpaint`).
                (None, Some(scene)) if rng.f32() < 0.5 => {
                    out.keep.extend(object_box_mask(&scene, rng, s))
                }
                _ => out.keep.extend(rectangle_mask(rng, s)),
            }
        }
        let (t, m) = pad_tokens(&tok.encode(&caption), cfg.text_ctx);
        out.tokens.extend(t.iter().map(|&v| v as i64));
        out.mask.extend(m.iter().map(|&v| v as f32));
        out.captions.push(caption);
    }
    Ok(out)
}

/// A widened dimension `o → n` (`o < n ≤ 2o`) as GLIDE's UNet lays it out when
/// its top level doubles: a prefix of `2o − n` channels that stay (the
/// deeper level's half of a skip concatenation `[h, skip]`) and the rest,
/// each old channel twice. Per new channel: (old channel, copies of it).
fn widened_channels(o: usize, n: usize) -> Vec<(usize, usize)> {
    let prefix = 2 * o - n;
    (0..n)
        .map(|j| {
            if j < prefix {
                (j, 1)
            } else {
                (prefix + (j - prefix) / 2, 2)
            }
        })
        .collect()
}

/// Net2WiderNet (Chen et al. 2016) for a tensor whose first two dims grew
/// (`o ≤ n ≤ 2o`, the rest equal): outputs (dim 0) are copied, inputs
/// (dim 1, weights of rank ≥ 2) copied and divided by their number of
/// copies, so the next layer sees the same sum. With 32 groups, a channel
/// and its copy form one GroupNorm group of two equal channels, whose
/// statistics are the single channel's. What does not carry over: GroupNorms
/// over a skip concatenation regroup, and a skip conv that the wider layout
/// makes an identity is dropped (`init_from` leaves it out). The second
/// copy of each output gets `noise` × the tensor's std of Gaussian noise, or
/// the two copies would stay equal forever.
fn widen(old: &[usize], w: &[f32], new: &[usize], noise: f32, rng: &mut Rng) -> Option<Vec<f32>> {
    let grows = |d: usize| old[d] <= new[d] && new[d] <= 2 * old[d];
    if old.len() != new.len()
        || old == new
        || !(0..old.len().min(2)).all(grows)
        || old[2.min(old.len())..] != new[2.min(new.len())..]
    {
        return None;
    }
    let rows = widened_channels(old[0], new[0]);
    let (cols, k) = if old.len() >= 2 {
        (
            widened_channels(old[1], new[1]),
            old[2..].iter().product::<usize>(),
        )
    } else {
        (vec![(0, 1)], 1)
    };
    let (old_cols, new_cols) = (old.get(1).copied().unwrap_or(1), cols.len());
    let mean = w.iter().sum::<f32>() / w.len() as f32;
    let std = (w.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / w.len() as f32).sqrt();
    let mut out = vec![0f32; new.iter().product()];
    let mut seen_row = vec![false; old[0]];
    for (r, &(or, _)) in rows.iter().enumerate() {
        let second_copy = std::mem::replace(&mut seen_row[or], true);
        for (c, &(oc, copies)) in cols.iter().enumerate() {
            let scale = if old.len() >= 2 { copies as f32 } else { 1.0 };
            for i in 0..k {
                let mut v = w[(or * old_cols + oc) * k + i] / scale;
                if second_copy && old.len() >= 2 && noise > 0.0 {
                    v += noise * std * normal(rng);
                }
                out[(r * new_cols + c) * k + i] = v;
            }
        }
    }
    Some(out)
}

/// A standard normal draw (Box–Muller).
pub(crate) fn normal(rng: &mut Rng) -> f32 {
    let u = (1.0 - rng.f32()).max(1e-12);
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * rng.f32()).cos()
}

/// The architecture of a run: a folder that holds a checkpoint keeps the one
/// it was trained with (its config.json), even when the demo default has
/// changed since; asking for another one there is an error, not a
/// shape-mismatch panic (a new architecture starts in a new folder, with
/// `--init` to carry what fits).
fn run_config(out: &Path, asked: GlideConfig, explicit: bool) -> Result<GlideConfig> {
    let saved = out.join("config.json");
    if !out.join("state.json").exists() || !saved.exists() {
        return Ok(asked);
    }
    let cfg: GlideConfig = serde_json::from_slice(&std::fs::read(&saved)?)
        .with_context(|| format!("parsing {}", saved.display()))?;
    let same = serde_json::to_value(&cfg)? == serde_json::to_value(&asked)?;
    if explicit && !same {
        bail!(
            "{} holds a checkpoint of another architecture than --config; start a new --out (with --init to carry its weights)",
            out.display()
        );
    }
    if !same {
        eprintln!(
            "{}: continuing with its own architecture (config.json), not today's demo default",
            out.display()
        );
    }
    Ok(cfg)
}

/// Symmetry-breaking noise of widened copies, relative to each tensor's std.
const WIDEN_NOISE: f32 = 0.02;

/// New-run weights from `init`: the config's own initialisation with every
/// tensor of equal shape replaced, the first conv's leading input channels
/// copied (base → base-inpaint: the extra channels start at zero, so the
/// model starts as the base model), and tensors of a top level twice as
/// wide widened (`widen`: a trained base continues in the wider UNet).
pub fn init_from(fresh: Named, init: &WeightMap) -> Result<(WeightMap, usize)> {
    let mut copied = 0;
    let mut map = WeightMap::new();
    let mut rng = Rng(0x3d1de);
    for (name, shape, mut v) in fresh {
        match init.get(&name) {
            Some((s, w)) if *s == shape => {
                v.clone_from(w);
                copied += 1;
            }
            Some((s, w))
                if name == "input_blocks.0.0.weight"
                    && s.len() == 4
                    && s[0] == shape[0]
                    && s[1] < shape[1]
                    && s[2..] == shape[2..] =>
            {
                let (cin, k) = (s[1], s[2] * s[3]);
                v.fill(0.0);
                for o in 0..shape[0] {
                    v[o * shape[1] * k..][..cin * k].copy_from_slice(&w[o * cin * k..][..cin * k]);
                }
                copied += 1;
            }
            Some((s, w)) => {
                if let Some(wide) = widen(s, w, &shape, WIDEN_NOISE, &mut rng) {
                    v = wide;
                    copied += 1;
                }
            }
            _ => {}
        }
        map.insert(name, (shape, v));
    }
    if copied == 0 {
        bail!("--init shares no tensor with this architecture");
    }
    Ok((map, copied))
}

/// Per-sample diffusion coefficients `[B, 1, 1, 1]`.
fn coef(values: Vec<f32>, dev: &Device) -> Tensor<4> {
    let b = values.len();
    Tensor::<4>::from_data(TensorData::new(values, [b, 1, 1, 1]), dev)
}

/// KL(q ‖ p) between diagonal Gaussians given means and log variances:
/// ½(−1 + log σ²_p − log σ²_q + σ²_q/σ²_p + (μ_q − μ_p)²/σ²_p), elementwise.
pub fn normal_kl(
    mean_q: Tensor<4>,
    logvar_q: Tensor<4>,
    mean_p: Tensor<4>,
    logvar_p: Tensor<4>,
) -> Tensor<4> {
    ((logvar_p.clone() - logvar_q.clone()) - 1.0
        + (logvar_q - logvar_p.clone()).exp()
        + (mean_q - mean_p).powi_scalar(2) * logvar_p.neg().exp())
        * 0.5
}

/// The per-sample weight of the eps loss, from its timestep's SNR
/// (`None`s: the plain mean, as released).
#[derive(Clone, Copy, Debug, Default)]
pub struct EpsWeighting {
    /// Min-SNR-γ (Hang et al. 2023): min(SNR, γ)/SNR, cheapening the nearly
    /// clean steps.
    pub min_snr: Option<f64>,
    /// max(1, 1/SNR) capped at this factor, raising the noisiest steps.
    pub low_snr_boost: Option<f64>,
}

impl EpsWeighting {
    /// An infinite or NaN factor would blow the loss up mid-run, so it is
    /// refused before any work; 0 (or less) turns a weighting off.
    pub fn from_args(args: &Args) -> Result<Self> {
        if !(args.min_snr.is_finite() && args.low_snr_boost.is_finite()) {
            bail!("--min-snr and --low-snr-boost are finite numbers (0 = off)");
        }
        let on = |v: f64| (v > 0.0).then_some(v);
        Ok(Self {
            min_snr: on(args.min_snr),
            low_snr_boost: on(args.low_snr_boost),
        })
    }

    pub fn is_plain(&self) -> bool {
        self.min_snr.is_none() && self.low_snr_boost.is_none()
    }

    pub fn weight(&self, snr: f64) -> f64 {
        let mut w = 1.0;
        if let Some(gamma) = self.min_snr {
            w *= snr.min(gamma) / snr;
        }
        if let Some(cap) = self.low_snr_boost {
            w *= (1.0 / snr).clamp(1.0, cap.max(1.0));
        }
        w
    }
}

/// The noise of a training batch `[b, 3, s, s]`: N(0, I), plus with
/// `offset > 0` one N(0, offset²) draw per image and channel added to all of
/// its pixels (`--offset-noise`).
pub fn training_noise(b: usize, s: usize, offset: f64, dev: &Device) -> Tensor<4> {
    let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
    let noise = Tensor::<4>::random([b, 3, s, s], normal, dev);
    if offset > 0.0 {
        noise + Tensor::<4>::random([b, 3, 1, 1], normal, dev) * offset
    } else {
        noise
    }
}

/// `noise` with each twin's sample replaced by its scene's (`--twins`).
pub fn shared_with_twins(noise: Tensor<4>, batch: &Batch, dev: &Device) -> Tensor<4> {
    if !batch.has_twins() {
        return noise;
    }
    let source: Vec<i64> = batch.twin_of.iter().map(|&j| j as i64).collect();
    let n = source.len();
    noise.select(
        0,
        Tensor::<1, Int>::from_data(TensorData::new(source, [n]), dev),
    )
}

/// GLIDE's hybrid loss for a batch: (total, mse, vb in bits).
pub fn loss(
    model: &Glide,
    sched: &Schedule,
    batch: &Batch,
    t: &[usize],
    noise: Tensor<4>,
    dev: &Device,
    weighting: EpsWeighting,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let cfg = &model.config;
    let (b, s) = (t.len(), batch.size);
    let x0 = Tensor::<4>::from_data(TensorData::new(batch.x0.clone(), [b, 3, s, s]), dev);
    let g = |v: &[f64]| coef(t.iter().map(|&i| v[i] as f32).collect(), dev);
    let ac = &sched.alphas_cumprod;
    let sqrt_ac = coef(t.iter().map(|&i| ac[i].sqrt() as f32).collect(), dev);
    let sqrt_1m = coef(
        t.iter().map(|&i| (1.0 - ac[i]).sqrt() as f32).collect(),
        dev,
    );
    let x_t = x0.clone() * sqrt_ac + noise.clone() * sqrt_1m;
    let cond = Cond {
        tokens: Tensor::<2, Int>::from_data(
            TensorData::new(batch.tokens.clone(), [b, cfg.text_ctx]),
            dev,
        ),
        mask: Tensor::<2>::from_data(TensorData::new(batch.mask.clone(), [b, cfg.text_ctx]), dev),
        low_res: cfg.super_res.then(|| {
            Tensor::<4>::from_data(
                TensorData::new(batch.low_res.clone(), [b, 3, s / 4, s / 4]),
                dev,
            )
        }),
        inpaint: cfg.inpaint.then(|| {
            (
                x0.clone(),
                Tensor::<4>::from_data(TensorData::new(batch.keep.clone(), [b, 1, s, s]), dev),
            )
        }),
        pooled_keep: batch.pooled_keep.contains(&0.0).then(|| {
            Tensor::<2>::from_data(TensorData::new(batch.pooled_keep.clone(), [b, 1]), dev)
        }),
    };
    let ts = Tensor::<1>::from_data(
        TensorData::new(t.iter().map(|&i| i as f32).collect::<Vec<_>>(), [b]),
        dev,
    );
    let out = model.forward(x_t.clone(), ts, &cond);
    let eps = out.clone().narrow(1, 0, 3);
    let v = out.narrow(1, 3, 3);
    let mse = if weighting.is_plain() {
        (eps.clone() - noise).powi_scalar(2).mean()
    } else {
        let w: Vec<f32> = t
            .iter()
            .map(|&i| weighting.weight(ac[i] / (1.0 - ac[i])) as f32)
            .collect();
        let per_sample = (eps.clone() - noise)
            .powi_scalar(2)
            .reshape([b, 3 * s * s])
            .mean_dim(1);
        (per_sample * Tensor::<1>::from_data(TensorData::new(w, [b]), dev).reshape([b, 1])).mean()
    };
    // Variational bound on the variance only: the mean uses a detached eps.
    let recip = coef(
        t.iter().map(|&i| (1.0 / ac[i]).sqrt() as f32).collect(),
        dev,
    );
    let recipm1 = coef(
        t.iter()
            .map(|&i| (1.0 / ac[i] - 1.0).sqrt() as f32)
            .collect(),
        dev,
    );
    let x0_pred = (x_t.clone() * recip - eps.detach() * recipm1).clamp(-1.0, 1.0);
    let (c1, c2) = (
        g(&sched.posterior_mean_coef1),
        g(&sched.posterior_mean_coef2),
    );
    let true_mean = x0 * c1.clone() + x_t.clone() * c2.clone();
    let model_mean = x0_pred * c1 + x_t * c2;
    let min_log = g(&sched.posterior_log_variance_clipped);
    let max_log = coef(t.iter().map(|&i| sched.betas[i].ln() as f32).collect(), dev);
    let frac = (v + 1.0) / 2.0;
    let model_log = frac.clone() * max_log + (frac.neg() + 1.0) * min_log.clone();
    let kl = normal_kl(true_mean, min_log, model_mean, model_log);
    let vb = kl.mean() / std::f32::consts::LN_2;
    (mse.clone() + vb.clone(), mse, vb)
}

/// Named f32 tensors as a safetensors file.
pub fn safetensors_bytes(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| {
            (
                n.clone(),
                s.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?,
            ))
        })
        .collect::<Result<_>>()?;
    Ok(safetensors::serialize(views, None)?)
}

pub(crate) fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<()> {
    write_atomic(path, &safetensors_bytes(tensors)?)
}

/// Writes through a temporary name, so no half-written file remains.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).with_context(|| tmp.display().to_string())?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The AdamW moments as a burnpack file, written like `write_atomic`: a run
/// killed while saving keeps the previous save's file whole.
pub fn save_optim(optim: &burn::optim::ModuleOptimizer, path: &Path) -> Result<()> {
    let bytes = optim
        .into_bytes()
        .map_err(|e| anyhow::anyhow!("saving optimizer: {e:?}"))?;
    write_atomic(path, &bytes)
}

/// Reads f32/f16/bf16 tensors, and the committed checkpoints' int8 ones
/// (`crate::checkpoint::Q8_SCALE`: one f32 scale per row), as f32.
pub fn read_safetensors(path: &Path) -> Result<WeightMap> {
    use crate::checkpoint::Q8_SCALE;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let mut map = WeightMap::new();
    for (name, view) in st.tensors() {
        if name.ends_with(Q8_SCALE) {
            continue;
        }
        let v = if view.dtype() == safetensors::Dtype::I8 {
            let scale_name = format!("{name}{Q8_SCALE}");
            let scales = st.tensor(&scale_name).map_err(|_| {
                anyhow::anyhow!("{}: {name} is int8 without {scale_name}", path.display())
            })?;
            crate::checkpoint::dequantize_rows(
                &name,
                view.shape(),
                view.data(),
                &engine::glide::weights::to_f32(&scale_name, &scales)?,
            )?
        } else {
            engine::glide::weights::to_f32(&name, &view)?
        };
        map.insert(name, (view.shape().to_vec(), v));
    }
    Ok(map)
}

/// The text transformer's weights: the caption's side of the model, apart
/// from the UNet's attention (`encoder_kv`), which reads its output.
pub fn text_weight(name: &str) -> bool {
    [
        "token_embedding",
        "positional_embedding",
        "padding_embedding",
        "transformer.",
        "final_ln",
        "transformer_proj",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// The ids of `text_weight`s, as the model names its parameters.
fn text_param_ids(cfg: &GlideConfig) -> Result<Vec<burn::module::ParamId>> {
    Ok(cfg
        .weight_shapes()?
        .into_iter()
        .filter(|(name, _)| text_weight(name))
        .map(|(name, _)| crate::model::param_id(&name))
        .collect())
}

/// One AdamW step at `lr`, the parameters `text.1` at `text.0` instead.
pub fn optimizer_step(
    optim: &mut burn::optim::ModuleOptimizer,
    mut model: Glide,
    mut grads: burn::tensor::Gradients,
    lr: f64,
    text: (f64, &[burn::module::ParamId]),
) -> Glide {
    if text.0 != lr {
        let text_grads = GradientsParams::from_params(&mut grads, &model, text.1);
        model = optim.step(text.0, model, text_grads);
    }
    let grads = GradientsParams::from_grads(grads, &model);
    optim.step(lr, model, grads)
}

/// The AdamW every run trains with.
pub fn adamw(weight_decay: f32, adam_eps: f64) -> burn::optim::ModuleOptimizer {
    AdamWConfig::new()
        .with_weight_decay(weight_decay)
        .with_epsilon(adam_eps as f32)
        .init()
}

/// A run folder's EMA weights and its live ones (model.safetensors), which a
/// committed checkpoint lacks.
pub fn read_run_weights(out: &Path) -> Result<(WeightMap, Option<WeightMap>)> {
    let ema = read_safetensors(&out.join("ema.safetensors"))?;
    let live = out.join("model.safetensors");
    let live = if live.exists() {
        Some(read_safetensors(&live)?)
    } else {
        None
    };
    Ok((ema, live))
}

/// `read_run_weights`' counterpart: the EMA, and the live weights where
/// there are any. Named tensors in the order written.
pub fn write_run_weights(out: &Path, ema: &Named, live: Option<&Named>) -> Result<()> {
    if let Some(live) = live {
        write_safetensors(&out.join("model.safetensors"), live)?;
    }
    write_safetensors(&out.join("ema.safetensors"), ema)
}

/// What a checkpoint folder's `state.json` records.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct State {
    pub step: u64,
    pub kind: String,
    /// Training samples seen so far (older checkpoints did not count them).
    #[serde(default)]
    pub samples: u64,
    /// The step the saved optimizer moments began at, where their warm-up
    /// started (0 for a run that began with them; older checkpoints: 0).
    #[serde(default)]
    pub moments_from: u64,
    /// Whether `optim.bpk` was saved under name-derived parameter ids
    /// (`model::named_param`); before 2026-12-04 the ids were random per
    /// process, so saved moments never found their parameters on resume.
    #[serde(default)]
    pub moments_by_name: bool,
    /// AdamW's epsilon the moments were taken with (older checkpoints:
    /// none recorded, burn's default `BURN_ADAM_EPS`).
    #[serde(default)]
    pub adam_eps: Option<f64>,
}

/// burn's default AdamW epsilon, every run's before 2026-12-05.
pub const BURN_ADAM_EPS: f64 = 1e-5;

/// The AdamW epsilon runs train with (`--adam-eps`): PyTorch's default.
pub const ADAM_EPS: f64 = 1e-8;

impl State {
    /// A run folder's state.json, which must be of `kind`.
    pub fn read(out: &Path, kind: &str) -> Result<State> {
        let path = out.join("state.json");
        let st: State = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("{}: unreadable", path.display()))?,
        )
        .with_context(|| format!("{}: not a run's state", path.display()))?;
        if st.kind != kind {
            bail!(
                "{} holds a '{}' checkpoint, not a '{kind}' one",
                out.display(),
                st.kind
            );
        }
        Ok(st)
    }

    /// The AdamW epsilon the saved moments were taken with.
    pub fn moments_eps(&self) -> f64 {
        self.adam_eps.unwrap_or(BURN_ADAM_EPS)
    }

    /// Where the learning-rate warm-up of a resumed run counts from: fresh
    /// moments warm up from here; saved ones go on with their own warm-up
    /// (a run stopped inside it would otherwise jump to the full rate: the
    /// GPU run of 2026-12-04 did, and its loss rose 5×), unless the run
    /// goes on with another AdamW epsilon: a smaller one makes the step of
    /// every weight whose gradient is below it up to 1000 times larger, so
    /// it warms up again as fresh moments do.
    pub fn warm_from(&self, with_saved_moments: bool, adam_eps: f64) -> u64 {
        if with_saved_moments && self.moments_eps() == adam_eps {
            self.moments_from
        } else {
            self.step
        }
    }
}

/// The optimizer a run resumes with, and whether it holds the saved moments:
/// those of `optim.bpk` when they were saved under name-derived parameter
/// ids, else fresh ones (which the caller warms up again).
pub fn resume_optim(
    out: &Path,
    st: &State,
    weight_decay: f32,
    adam_eps: f64,
) -> Result<(burn::optim::ModuleOptimizer, bool)> {
    let optim = adamw(weight_decay, adam_eps);
    let path = out.join("optim.bpk");
    if !path.exists() {
        eprintln!("no optimizer state: fresh AdamW moments");
        return Ok((optim, false));
    }
    if !st.moments_by_name {
        eprintln!(
            "{}: saved under per-process parameter ids, its moments cannot find their \
             parameters: fresh AdamW moments",
            path.display()
        );
        return Ok((optim, false));
    }
    let optim = optim
        .load(&path)
        .map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))?;
    Ok((optim, true))
}

/// The backend device for `--device cpu|tch|gpu|cuda` (`.autodiff()` for training).
///
/// burn creates some tensors on `Device::default()` (a loaded optimizer's
/// moments), which in a build with the `cuda` feature is CUDA even when
/// training on the CPU, and panics where no libcuda exists. So the chosen
/// device also becomes burn's default, through the `BURN_DEVICE` override,
/// unless the caller set that themselves (an empty one counts as unset).
pub fn device(name: &str) -> Result<Device> {
    let (device, burn_name) = match name {
        "cpu" => (Device::flex(), "flex"),
        "gpu" => (
            Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
            "wgpu",
        ),
        #[cfg(feature = "cuda")]
        "cuda" => (Device::cuda(0), "cuda"),
        #[cfg(not(feature = "cuda"))]
        "cuda" => bail!("--device cuda: this trainer was built without the `cuda` feature"),
        // burn marks its LibTorch backend deprecated; it is the one that runs PyTorch's kernels.
        #[cfg(feature = "tch")]
        #[allow(deprecated)]
        "tch" => (Device::libtorch(), "tch"),
        #[cfg(not(feature = "tch"))]
        "tch" => bail!("--device tch: this trainer was built without the `tch` feature"),
        d => bail!("--device {d}: cpu, tch, gpu or cuda"),
    };
    if std::env::var_os("BURN_DEVICE").is_none_or(|v| v.is_empty()) {
        std::env::set_var("BURN_DEVICE", burn_name);
    }
    Ok(device)
}

/// What every run starts from: the seeded autodiff device, its (created)
/// checkpoint folder and its data (base models at `size`).
pub fn prepare(args: &Args, size: Option<usize>) -> Result<(Device, std::path::PathBuf, Data)> {
    let dev = device(&args.device)?.autodiff();
    dev.seed(args.seed);
    let out = args
        .out
        .clone()
        .context("--out DIR: the run's checkpoint folder is required")?;
    std::fs::create_dir_all(&out)?;
    if !(0.0..=1.0).contains(&args.shapes_share) {
        bail!("--shapes-share is a probability (0..=1)");
    }
    if !(0.0..=1.0).contains(&args.pooled_drop) {
        bail!("--pooled-drop is a probability (0..=1)");
    }
    if !(0.0..=1.0).contains(&args.related_pairs) {
        bail!("--related-pairs is a probability (0..=1)");
    }
    if !(0.0..=1.0).contains(&args.three_objects) {
        bail!("--three-objects is a probability (0..=1)");
    }
    if !(0.0..=1.0).contains(&args.twins) {
        bail!("--twins is a probability (0..=1)");
    }
    let mut emoji = args.emoji.as_deref().map(Emoji::load).transpose()?;
    if let (Some(e), Some(p)) = (&mut emoji, &args.emoji_concepts) {
        e.keep_concepts(&read_name_list(p)?)?;
    }
    let data = Data {
        emoji,
        shapes_share: args.shapes_share,
        crop: args.crop,
        size,
        pooled_drop: args.pooled_drop,
        related_pairs: args.related_pairs,
        three_objects: args.three_objects,
        twins: args.twins,
    };
    Ok((dev, out, data))
}

/// A list file: one name per line; blank lines and `#` comments skipped.
pub fn read_name_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// A batch with its timesteps, made ahead on another thread.
struct Prepared {
    batch: Batch,
    t: Vec<usize>,
}

pub fn run(args: &Args) -> Result<()> {
    let kind = args.kind.as_str();
    if kind == "clip" {
        return crate::clip::run(args);
    }
    if !["base", "upsample", "base-inpaint"].contains(&kind) {
        bail!("--kind {kind}: the demo model has base, upsample, base-inpaint and clip");
    }
    let asked: GlideConfig = match &args.config {
        Some(p) => serde_json::from_slice(&std::fs::read(p)?)?,
        None => demo_config(kind)?,
    };
    if args.batch == 0 || args.batch > 256 || !(args.lr > 0.0 && args.lr < 1.0) {
        bail!("--batch 1..=256 and 0 < --lr < 1");
    }
    if !(0.0..=10.0).contains(&args.offset_noise) {
        bail!("--offset-noise S: 0 (off) to 10");
    }
    let full_size_every = match (args.full_size_every, args.size) {
        (Some(0), _) => bail!("--full-size-every N: N is at least 1"),
        (Some(_), None) => bail!("--full-size-every needs --size (the small stage it mixes into)"),
        (every, _) => every,
    };
    let weighting = EpsWeighting::from_args(args)?;
    crate::model::set_conv(&args.conv)?;
    let (dev, out, data) = prepare(args, args.size)?;
    let out = &out;
    let cfg = run_config(out, asked, args.config.is_some())?;
    if let Some(e) = &data.emoji {
        eprintln!(
            "{} emoji images ({} naming a scene's colour and shape left out), {} concepts sampled, shapes share {}",
            e.entries.len() - e.left_out,
            e.left_out,
            e.concept_count(),
            args.shapes_share
        );
    }
    let tok = tokenizer()?;
    let sched = Schedule::new(
        &cfg.noise_schedule,
        cfg.diffusion_steps,
        &cfg.diffusion_steps.to_string(),
    )?;

    let state_path = out.join("state.json");
    let resume = state_path.exists();
    // A checkpoint folder holds state.json + ema.safetensors at least (what is
    // committed to continue on a new machine); model.safetensors and the
    // optimizer moments when the run was on this machine.
    // `warm_from`: where the optimizer moments began, so fresh ones (a new
    // run, or a checkpoint without them) get the warm-up.
    let (mut model, mut optim, mut ema, mut step, mut samples, warm_from) = if resume {
        let st = State::read(out, kind)?;
        let (ema, live) = read_run_weights(out)?;
        let weights = live.unwrap_or_else(|| {
            eprintln!("no model.safetensors: continuing from the EMA weights");
            ema.clone()
        });
        let model = Glide::new(&cfg, &Init::From(&weights), &dev)?;
        let (optim, saved_moments) = resume_optim(out, &st, 0.0, args.adam_eps)?;
        let saved_eps = st.moments_eps();
        if saved_moments && saved_eps != args.adam_eps {
            eprintln!(
                "AdamW epsilon {saved_eps:e} -> {:e}: the learning rate warms up again from step {}",
                args.adam_eps, st.step
            );
        }
        let warm_from = st.warm_from(saved_moments, args.adam_eps);
        let order = model.export();
        let ema: Vec<_> = order
            .into_iter()
            .map(|(n, s, _)| {
                let v = ema
                    .get(&n)
                    .map(|e| e.1.clone())
                    .context("ema weights incomplete")?;
                Ok((n, s, v))
            })
            .collect::<Result<_>>()?;
        eprintln!("resuming {} at step {}", out.display(), st.step);
        (model, optim, ema, st.step, st.samples, warm_from)
    } else {
        let mut model = Glide::new(&cfg, &Init::Train, &dev)?;
        if let Some(p) = &args.init {
            let init = if p.is_dir() {
                crate::eval::read_converted(p)?.1
            } else {
                read_safetensors(p)?
            };
            let (weights, copied) = init_from(model.export(), &init)?;
            eprintln!("initialised {copied} tensors from {}", p.display());
            model = Glide::new(&cfg, &Init::From(&weights), &dev)?;
        }
        let ema = model.export();
        let optim = adamw(0.0, args.adam_eps);
        (model, optim, ema, 0, 0, 0)
    };
    // The stage's image size (a --size stage's, else the config's).
    let stage_size = args.size.unwrap_or(cfg.image_size);
    let params: usize = ema
        .iter()
        .map(|(_, s, _)| s.iter().product::<usize>())
        .sum();
    write_atomic(&out.join("config.json"), &serde_json::to_vec_pretty(&cfg)?)?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join("loss.log"))?;
    writeln!(
        log,
        "# kind {kind} params {params} batch {} size {} full_size_every {} min_snr {} low_snr_boost {} offset_noise {} lr {} warmup {} decay_from {} decay_steps {} lr_final {} ema {} adam_eps {:e} text_lr_scale {} text_aux {} pooled_drop {} related_pairs {} three_objects {} twins {} device {} conv {} resume {resume} emoji {} concepts {} shapes_share {} crop {} init {}",
        args.batch,
        stage_size,
        full_size_every.map_or("-".into(), |n| n.to_string()),
        args.min_snr,
        args.low_snr_boost,
        args.offset_noise,
        args.lr,
        args.warmup,
        // The rate's schedule, so a decayed run's log says so.
        args.decay_from.map_or("-".into(), |from| from.to_string()),
        args.decay_steps,
        args.lr_final,
        args.ema,
        args.adam_eps,
        args.text_lr_scale,
        args.text_aux,
        args.pooled_drop,
        args.related_pairs,
        args.three_objects,
        args.twins,
        args.device,
        args.conv,
        data.emoji.as_ref().map_or(0, |e| e.entries.len() - e.left_out),
        data.emoji.as_ref().map_or(0, |e| e.concept_count()),
        // Without emoji every sample is a scene.
        if data.emoji.is_some() { data.shapes_share } else { 1.0 },
        data.crop.unwrap_or(cfg.image_size),
        args.init.as_ref().map_or("-".into(), |p| p.display().to_string()),
    )?;
    eprintln!(
        "{kind}: {params} parameters, batch {}, device {}",
        args.batch, args.device
    );

    let text_ids = text_param_ids(&cfg)?;
    let mut aux = if args.text_aux == 0.0 {
        None
    } else if args.text_aux > 0.0 && args.text_aux < 1e6 && kind == "base" {
        Some(InTraining::load(out, cfg.xf_width, args.text_aux, &dev)?)
    } else {
        bail!("--text-aux W: a weight (0 or more) for a base");
    };
    let mut rng = Rng(args.seed ^ step.wrapping_mul(0x9e37_79b9));
    let started = Instant::now();
    let t_max = cfg.diffusion_steps;
    // Sums of the logged losses: total, mse, vb, the text task's (weighted).
    let (mut acc, mut n_acc) = ([0f64; 4], 0usize);
    let save = |model: &Glide,
                optim: &burn::optim::ModuleOptimizer,
                ema: &Named,
                aux: Option<&InTraining>,
                step: u64,
                samples: u64|
     -> Result<()> {
        write_run_weights(out, ema, Some(&model.export()))?;
        save_optim(optim, &out.join("optim.bpk"))?;
        if let Some(a) = aux {
            a.save(out)?;
        }
        // Last: a resume trusts the files only once state.json names the step.
        write_atomic(
            &state_path,
            &serde_json::to_vec(&State {
                step,
                kind: kind.into(),
                samples,
                moments_from: warm_from,
                moments_by_name: true,
                adam_eps: Some(args.adam_eps),
            })?,
        )
    };
    const EMA_EVERY: u64 = 10;
    let deadline = args.minutes * 60.0;
    // Batches are drawn on another thread while the backend computes.
    model = std::thread::scope(|scope| -> Result<Glide> {
        let mut model = model;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Prepared>>(2);
        let (cfg, tok, data) = (&cfg, &tok, &data);
        let (batch_size, drop_caption) = (args.batch, args.drop_caption);
        // The log's size: both of a mixed stage (its losses average over both).
        let sizes = match full_size_every {
            Some(_) => format!("{stage_size}+{}", cfg.image_size),
            None => stage_size.to_string(),
        };
        let mut next_step = step + 1;
        scope.spawn(move || loop {
            let size = batch_size_at(data.size, full_size_every, next_step);
            next_step += 1;
            let prepared =
                make_batch_sized(cfg, tok, data, size, &mut rng, batch_size, drop_caption).map(
                    |batch| {
                        let t = (0..batch_size).map(|_| rng.below(t_max)).collect();
                        let t = batch.shared_with_twins(t);
                        Prepared { batch, t }
                    },
                );
            if tx.send(prepared).is_err() {
                break; // the loop below is done
            }
        });
        while step < args.steps && started.elapsed().as_secs_f64() < deadline {
            let Prepared { batch, t } = rx.recv()??;
            let s = batch.size;
            let noise = training_noise(args.batch, s, args.offset_noise, &dev);
            let noise = shared_with_twins(noise, &batch, &dev);
            let (total, mse, vb) = loss(&model, &sched, &batch, &t, noise, &dev, weighting);
            let aux_loss = aux
                .as_ref()
                .and_then(|a| a.loss(&model, &batch.captions, tok, &dev));
            let mut grads = match &aux_loss {
                Some(l) => (total.clone() + l.clone()).backward(),
                None => total.backward(),
            };
            let lr = learning_rate(args, step, warm_from);
            if let Some(a) = &mut aux {
                a.step(&mut grads, lr);
            }
            let text_lr = (lr * args.text_lr_scale, &text_ids[..]);
            model = optimizer_step(&mut optim, model, grads, lr, text_lr);
            step += 1;
            samples += args.batch as u64;
            for (i, v) in [total, mse, vb].into_iter().enumerate() {
                acc[i] += v.into_scalar::<f32>() as f64;
            }
            if let Some(l) = aux_loss {
                acc[3] += l.into_scalar::<f32>() as f64;
            }
            n_acc += 1;
            if step % EMA_EVERY == 0 {
                let d = args
                    .ema
                    .min((1.0 + step as f64) / (10.0 + step as f64))
                    .powi(EMA_EVERY as i32) as f32;
                for (e, (_, _, cur)) in ema.iter_mut().zip(model.export()) {
                    for (a, b) in e.2.iter_mut().zip(cur) {
                        *a = d * *a + (1.0 - d) * b;
                    }
                }
            }
            if step % 20 == 0 {
                let mut line = format!(
                    "step {step} samples {samples} size {sizes} loss {:.5} mse {:.5} vb {:.5} elapsed {:.0}s lr {lr:.2e}",
                    acc[0] / n_acc as f64,
                    acc[1] / n_acc as f64,
                    acc[2] / n_acc as f64,
                    started.elapsed().as_secs_f64()
                );
                if aux.is_some() {
                    line += &format!(" text_aux {:.5}", acc[3] / n_acc as f64);
                }
                eprintln!("{line}");
                writeln!(log, "{line}")?;
                (acc, n_acc) = ([0f64; 4], 0);
            }
            if step % args.save_every == 0 {
                save(&model, &optim, &ema, aux.as_ref(), step, samples)?;
            }
        }
        drop(rx); // ends the batch thread
        Ok(model)
    })?;
    save(&model, &optim, &ema, aux.as_ref(), step, samples)?;
    // The deliverable: EMA weights with the official names + the kwargs.
    write_safetensors(&out.join("weights.safetensors"), &ema)?;
    eprintln!(
        "step {step}: wrote {}",
        out.join("weights.safetensors").display()
    );
    Ok(())
}

/// The learning rate of optimizer step `step` (0-based, counting resumed
/// steps): linear warm-up from `warm_from` (where the optimizer moments
/// began: 0, or the resume step when they were not saved), constant, then an
/// optional cosine decay to `lr_final`.
fn learning_rate(args: &Args, step: u64, warm_from: u64) -> f64 {
    let warm = ((step.saturating_sub(warm_from) + 1) as f64 / args.warmup.max(1) as f64).min(1.0);
    let Some(from) = args.decay_from else {
        return args.lr * warm;
    };
    let done = (step.saturating_sub(from) as f64 / args.decay_steps.max(1) as f64).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * done).cos());
    warm * (args.lr_final + (args.lr - args.lr_final) * cosine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chosen_device_is_burns_default_for_a_loaded_optimizer() {
        // Under the `cuda` feature burn's default is CUDA; a CPU resume
        // loading its optimizer moments there panicked without libcuda.
        let cpu = device("cpu").unwrap();
        assert_eq!(Device::default(), cpu);
        assert!(device("tpu").is_err());
        assert_eq!(Device::default(), cpu, "a refused name changes nothing");
    }

    /// `--text-lr-scale`: Adam's first step moves every weight with a
    /// gradient by its learning rate, so one step shows each group's rate:
    /// the text transformer's at k·lr, the UNet's at lr; k = 0 freezes the
    /// text alone. The ids are the model's own.
    #[test]
    fn the_text_transformer_steps_at_its_own_rate() {
        use burn::tensor::Distribution;
        let dev = device("cpu").unwrap().autodiff();
        dev.seed(7);
        let cfg = demo_config("base").unwrap();
        let ids = text_param_ids(&cfg).unwrap();
        let model_ids = crate::model::param_ids(&Glide::new(&cfg, &Init::Train, &dev).unwrap());
        assert!(ids.len() > 10);
        assert!(ids.iter().all(|id| model_ids.contains(&id.val())));
        let tokens: Vec<i64> = (0..cfg.text_ctx as i64).map(|i| 100 + 7 * i).collect();
        let cond = Cond {
            tokens: Tensor::<2, Int>::from_data(TensorData::new(tokens, [1, cfg.text_ctx]), &dev),
            mask: Tensor::<2>::ones([1, cfg.text_ctx], &dev),
            low_res: None,
            inpaint: None,
            pooled_keep: None,
        };
        let t = Tensor::<1>::from_data(TensorData::new(vec![300f32], [1]), &dev);
        let x = Tensor::<4>::random([1, 3, 16, 16], Distribution::Normal(0.0, 1.0), &dev);
        let target = Tensor::<4>::random([1, 6, 16, 16], Distribution::Normal(0.0, 1.0), &dev);
        let start = Glide::new(&cfg, &Init::Random(1), &dev).unwrap();
        let before = start.export();
        let lr = 1e-3;
        // The largest move of a text weight and of any other, after one step.
        let moves = |k: f64| {
            let model = start.clone();
            let loss = (model.forward(x.clone(), t.clone(), &cond) - target.clone())
                .powf_scalar(2.0)
                .mean();
            let mut optim = adamw(0.0, ADAM_EPS);
            let after =
                optimizer_step(&mut optim, model, loss.backward(), lr, (k * lr, &ids)).export();
            let mut m = [0f32; 2];
            for ((name, _, a), (_, _, b)) in before.iter().zip(&after) {
                let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                let g = usize::from(!text_weight(name));
                m[g] = m[g].max(d);
            }
            m
        };
        for k in [1.0, 10.0, 0.0] {
            let [text, unet] = moves(k);
            let expect = (k * lr) as f32;
            assert!(
                (text - expect).abs() <= 0.01 * lr as f32,
                "k {k}: text moved {text}"
            );
            assert!(
                (unet - lr as f32).abs() <= 0.01 * lr as f32,
                "k {k}: UNet moved {unet}"
            );
        }
    }

    /// Saved optimizer moments find their parameters again in a model rebuilt
    /// from the exported weights, as a resumed run (a new process) rebuilds
    /// it: the next step is the uninterrupted run's. Before parameter ids came
    /// from names, the rebuilt model's were new and the moments went unused.
    #[test]
    fn a_resumed_optimizer_takes_the_uninterrupted_runs_step() {
        use burn::tensor::Distribution;
        let dev = device("cpu").unwrap().autodiff();
        dev.seed(5);
        let cfg = demo_config("base").unwrap();
        let cond = Cond {
            tokens: Tensor::<2, Int>::zeros([1, cfg.text_ctx], &dev),
            mask: Tensor::<2>::ones([1, cfg.text_ctx], &dev),
            low_res: None,
            inpaint: None,
            pooled_keep: None,
        };
        let t = Tensor::<1>::from_data(TensorData::new(vec![300f32], [1]), &dev);
        let x = || Tensor::<4>::random([1, 3, 16, 16], Distribution::Normal(0.0, 1.0), &dev);
        let (x1, x2) = (x(), x());
        let target = Tensor::<4>::random([1, 6, 16, 16], Distribution::Normal(0.0, 1.0), &dev);
        let step = |model: Glide, optim: &mut burn::optim::ModuleOptimizer, x: &Tensor<4>| {
            // Against a target: the zero-initialised output conv gives a zero
            // output, whose square has no gradient.
            let loss = (model.forward(x.clone(), t.clone(), &cond) - target.clone())
                .powf_scalar(2.0)
                .mean();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            optim.step(1e-3, model, grads)
        };
        let dir = std::env::temp_dir().join(format!("webglide-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut optim = adamw(0.0, BURN_ADAM_EPS);
        let model = step(
            Glide::new(&cfg, &Init::Train, &dev).unwrap(),
            &mut optim,
            &x1,
        );
        save_optim(&optim, &dir.join("optim.bpk")).unwrap();
        let weights = model.export_map();
        let continued = step(model, &mut optim, &x2).export();
        let mut st = State {
            step: 1,
            kind: "base".into(),
            samples: 1,
            moments_from: 0,
            moments_by_name: true,
            adam_eps: None,
        };
        let resume = |st: &State| {
            let (mut optim, saved) = resume_optim(&dir, st, 0.0, BURN_ADAM_EPS).unwrap();
            let rebuilt = Glide::new(&cfg, &Init::From(&weights), &dev).unwrap();
            (step(rebuilt, &mut optim, &x2).export(), saved)
        };
        let (resumed, saved) = resume(&st);
        st.moments_by_name = false;
        let (fresh, fresh_saved) = resume(&st);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(saved && !fresh_saved);
        let max_diff = |a: &[(String, Vec<usize>, Vec<f32>)],
                        b: &[(String, Vec<usize>, Vec<f32>)]| {
            a.iter()
                .zip(b)
                .flat_map(|(p, q)| p.2.iter().zip(&q.2).map(|(u, v)| (u - v).abs()))
                .fold(0f32, f32::max)
        };
        assert!(
            max_diff(&continued, &resumed) < 1e-7,
            "{}",
            max_diff(&continued, &resumed)
        );
        // Fresh moments step elsewhere (so the comparison above can fail).
        assert!(
            max_diff(&continued, &fresh) > 1e-4,
            "{}",
            max_diff(&continued, &fresh)
        );
    }

    /// Adam's step is the learning rate whatever the gradient's scale, as
    /// long as the gradient is above epsilon: the base's deep levels see
    /// gradients of 1e-8 to 1e-6, where burn's default 1e-5 shrinks it.
    #[test]
    fn adam_steps_by_the_learning_rate_for_gradients_of_the_base_s_scale() {
        let dev = device("cpu").unwrap().autodiff();
        let lin: burn::nn::Linear = burn::nn::LinearConfig::new(4, 1).init(&dev);
        let x = Tensor::<2>::ones([1, 4], &dev);
        let step = |eps: f64, grad_scale: f32| {
            let loss = lin.forward(x.clone()).sum() * grad_scale;
            let grads = GradientsParams::from_grads(loss.backward(), &lin);
            let moved = adamw(0.0, eps).step(1e-3, lin.clone(), grads);
            let before = lin.weight.val().into_data().try_to_vec::<f32>().unwrap();
            let after = moved.weight.val().into_data().try_to_vec::<f32>().unwrap();
            before
                .iter()
                .zip(&after)
                .map(|(b, a)| (b - a) / 1e-3)
                .collect::<Vec<_>>()
        };
        for g in [1e-7f32, 1e-3] {
            // Every weight's gradient is `g`: one step moves it by lr·g/(g + eps).
            for (eps, want) in [(1e-8, g / (g + 1e-8)), (BURN_ADAM_EPS, g / (g + 1e-5))] {
                for d in step(eps, g) {
                    assert!((d - want).abs() < 0.01, "eps {eps} grad {g}: {d} vs {want}");
                }
            }
        }
        // The default is the one that keeps the step at gradients of 1e-7.
        assert_eq!(args(&[]).adam_eps, 1e-8);
    }

    #[test]
    fn a_resumed_warm_up_goes_on_where_its_moments_began() {
        // Saved at step 955, five steps into a 10-step warm-up that began at 950.
        let st: State =
            serde_json::from_str(r#"{"step":955,"kind":"base","samples":1,"moments_from":950}"#)
                .unwrap();
        let args = args(&[]);
        let lr = |with_moments| learning_rate(&args, st.step, st.warm_from(with_moments, 1e-5));
        assert!((lr(true) - 1e-3 * 6.0 / 10.0).abs() < 1e-12);
        // Fresh moments warm up again from the resume step.
        assert!((lr(false) - 1e-3 / 10.0).abs() < 1e-12);
        // A state.json from before the field: moments that began with the run.
        let old: State = serde_json::from_str(r#"{"step":955,"kind":"base"}"#).unwrap();
        assert_eq!(
            (old.warm_from(true, 1e-5), old.warm_from(false, 1e-5)),
            (0, 955)
        );
        assert_eq!(old.samples, 0);
        // Going on with another epsilon than the moments': warm up again.
        assert_eq!(old.warm_from(true, 1e-8), 955);
        let new: State = serde_json::from_str(
            r#"{"step":955,"kind":"base","moments_from":950,"adam_eps":1e-8}"#,
        )
        .unwrap();
        assert_eq!(
            (new.warm_from(true, 1e-8), new.warm_from(true, 1e-5)),
            (950, 955)
        );
    }

    #[test]
    fn name_lists_skip_comments_and_blanks_and_the_shipped_ones_load() {
        let p = std::env::temp_dir().join(format!("webglide-names-{}", std::process::id()));
        std::fs::write(&p, "# heading\n\n red heart \nfire # hot\n").unwrap();
        assert_eq!(read_name_list(&p).unwrap(), ["red heart", "fire"]);
        std::fs::remove_file(&p).unwrap();
        assert!(read_name_list(&p).is_err());
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
        let all = read_name_list(&data.join("emoji-concepts.txt")).unwrap();
        let narrow = read_name_list(&data.join("emoji-concepts-32.txt")).unwrap();
        assert_eq!((all.len(), narrow.len()), (100, 32));
        // The narrow list is drawn from the wide one, which names cache concepts.
        assert!(narrow.iter().all(|n| all.contains(n)));
        let prompts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/demo/emoji-prompts.txt");
        let prompts = read_name_list(&prompts).unwrap();
        for names in [&all, &narrow] {
            let unique: std::collections::BTreeSet<_> = names.iter().collect();
            assert_eq!(unique.len(), names.len());
            // The emoji evaluation asks for concepts each list trains.
            for p in &prompts {
                let label = p.trim_start_matches("emoji of ");
                assert!(names.iter().any(|n| n == label), "{p}");
            }
        }
    }

    /// An object's box mask regenerates the whole object and leaves most of
    /// the image: a single-object scene's every drawn pixel is in the hole.
    #[test]
    fn an_object_box_mask_covers_the_object_and_keeps_the_rest() {
        let mut rng = Rng(7);
        let mut seen = 0;
        while seen < 20 {
            let scene = Scene::random(&mut rng, &|_, _| true);
            if scene.objects.len() != 1 {
                continue;
            }
            seen += 1;
            for s in [32, 64] {
                let keep = object_box_mask(&scene, &mut rng, s);
                let rgb = render(&scene, s, 4);
                let hole = keep.iter().filter(|&&k| k == 0.0).count();
                assert!(hole > 0 && hole < s * s / 3, "{hole} of {}", s * s);
                for (p, &k) in keep.iter().enumerate() {
                    let drawn = rgb[3 * p..3 * p + 3].iter().any(|&v| v < 250);
                    assert!(!drawn || k == 0.0, "{scene:?} pixel {p} drawn but kept");
                }
            }
        }
    }

    #[test]
    fn normal_kl_is_zero_for_equal_and_positive_otherwise() {
        let dev = Device::flex();
        let r = |seed: u64| {
            let v = engine::rng::randn(2 * 3 * 4 * 4, seed, 0);
            Tensor::<4>::from_data(TensorData::new(v, [2, 3, 4, 4]), &dev)
        };
        let (m, l) = (r(1), r(2));
        let same: Vec<f32> = normal_kl(m.clone(), l.clone(), m.clone(), l.clone())
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        assert!(same.iter().all(|v| v.abs() < 1e-6), "{same:?}");
        let diff: Vec<f32> = normal_kl(m, l, r(3), r(4))
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        assert!(diff.iter().all(|&v| v >= 0.0) && diff.iter().any(|&v| v > 0.1));
    }

    fn args(extra: &[&str]) -> Args {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let argv = ["train", "--out", "x", "--lr", "1e-3", "--warmup", "10"];
        <Cli as clap::Parser>::parse_from(argv.iter().chain(extra)).args
    }

    #[test]
    fn the_learning_rate_warms_up_then_decays_on_a_cosine() {
        let constant = args(&[]);
        assert!((learning_rate(&constant, 0, 0) - 1e-4).abs() < 1e-12);
        assert_eq!(learning_rate(&constant, 9, 0), 1e-3);
        assert_eq!(learning_rate(&constant, 1_000_000, 0), 1e-3);
        let decayed = args(&[
            "--decay-from",
            "100",
            "--decay-steps",
            "50",
            "--lr-final",
            "1e-4",
        ]);
        assert_eq!(learning_rate(&decayed, 100, 0), 1e-3);
        let half = learning_rate(&decayed, 125, 0);
        assert!((half - 5.5e-4).abs() < 1e-12, "{half}");
        assert!(learning_rate(&decayed, 140, 0) < learning_rate(&decayed, 130, 0));
        assert!((learning_rate(&decayed, 150, 0) - 1e-4).abs() < 1e-12);
        assert!((learning_rate(&decayed, 10_000, 0) - 1e-4).abs() < 1e-12);
        // Resumed at step 5000 with fresh optimizer moments: warmed up again from there.
        assert!((learning_rate(&constant, 5000, 5000) - 1e-4).abs() < 1e-12);
        assert_eq!(learning_rate(&constant, 5009, 5000), 1e-3);
        assert!((learning_rate(&decayed, 125, 120) - 0.6 * half).abs() < 1e-12);
    }

    #[test]
    fn widening_keeps_the_deeper_half_of_a_concatenation_and_doubles_the_rest() {
        let ch = widened_channels(3, 4);
        assert_eq!(ch, [(0, 1), (1, 1), (2, 2), (2, 2)]);
        let ch = widened_channels(2, 4);
        assert_eq!(ch, [(0, 2), (0, 2), (1, 2), (1, 2)]);
        assert_eq!(
            widened_channels(5, 5),
            (0..5).map(|j| (j, 1)).collect::<Vec<_>>()
        );
    }

    /// Two 1×1 convs in a row, the middle activation widened (the first's
    /// outputs, the second's inputs): the same function without noise, a
    /// nearby one with it; the bias and shapes that cannot be widened refused.
    #[test]
    fn widening_a_layer_pair_keeps_its_function() {
        let mut rng = Rng(9);
        let randv = |n: usize, rng: &mut Rng| (0..n).map(|_| normal(rng)).collect::<Vec<f32>>();
        let (i, h, o) = (3, 5, 4);
        let (w1, b1, w2) = (
            randv(h * i, &mut rng),
            randv(h, &mut rng),
            randv(o * h, &mut rng),
        );
        let x = randv(i, &mut rng);
        let apply = |w1: &[f32], b1: &[f32], w2: &[f32], h: usize| -> Vec<f32> {
            let mid: Vec<f32> = (0..h)
                .map(|r| b1[r] + (0..i).map(|c| w1[r * i + c] * x[c]).sum::<f32>())
                .map(|v| v.max(0.0))
                .collect();
            (0..o)
                .map(|r| (0..h).map(|c| w2[r * h + c] * mid[c]).sum())
                .collect()
        };
        let before = apply(&w1, &b1, &w2, h);
        for (noise, bound) in [(0.0, 1e-6), (0.02, 0.1)] {
            let mut rng = Rng(4);
            let w1w = widen(&[h, i, 1, 1], &w1, &[2 * h, i, 1, 1], noise, &mut rng).unwrap();
            let b1w = widen(&[h], &b1, &[2 * h], noise, &mut rng).unwrap();
            let w2w = widen(&[o, h, 1, 1], &w2, &[o, 2 * h, 1, 1], noise, &mut rng).unwrap();
            let after = apply(&w1w, &b1w, &w2w, 2 * h);
            let scale = before.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in after.iter().zip(&before) {
                assert!((a - b).abs() <= bound * scale, "{a} {b} noise {noise}");
            }
            if noise > 0.0 {
                assert_ne!(after, before);
            }
        }
        assert!(widen(&[h], &b1, &[3 * h], 0.0, &mut rng).is_none());
        assert!(widen(&[h, i, 1, 1], &w1, &[2 * h, i, 3, 3], 0.0, &mut rng).is_none());
        assert!(widen(&[h, i], &w1, &[h - 1, i], 0.0, &mut rng).is_none());
    }

    /// A narrow base (top level 32 channels) initialises the demo base (64):
    /// every tensor but the first level-1 block's 1×1 skip conv (an identity
    /// at 64 → 64) is carried, the deeper levels and the text encoder as
    /// they were, the top level's tensors widened; the model runs.
    #[test]
    fn a_narrow_base_initialises_the_wide_one() {
        use crate::model::{Cond, Glide, Init};
        use burn::tensor::Distribution;
        let dev = Device::flex();
        dev.seed(3);
        let wide_cfg = demo_config("base").unwrap();
        let mut narrow_cfg = wide_cfg.clone();
        narrow_cfg.channel_mult = "1,2,2,2".into();
        let narrow = Glide::new(&narrow_cfg, &Init::Random(3), &dev)
            .unwrap()
            .export_map();
        let fresh = Glide::new(&wide_cfg, &Init::Train, &dev).unwrap().export();
        let (wide, copied) = init_from(fresh, &narrow).unwrap();
        assert_eq!(copied, narrow.len() - 2);
        assert!(!wide.contains_key("input_blocks.3.0.skip_connection.weight"));
        let (mut same, mut widened) = (0, 0);
        for (name, (shape, v)) in &wide {
            let Some((old, w)) = narrow.get(name) else {
                continue;
            };
            if old == shape {
                assert_eq!(v, w, "{name}");
                same += 1;
            } else {
                // 1-D (biases, norms): the top level's values twice each.
                if shape.len() == 1 {
                    let map = widened_channels(old[0], shape[0]);
                    assert!(map.iter().enumerate().all(|(j, &(o, _))| v[j] == w[o]));
                }
                widened += 1;
            }
        }
        assert!(same > 200 && widened > 20, "{same} {widened}");
        let model = Glide::new(&wide_cfg, &Init::From(&wide), &dev).unwrap();
        let (b, ctx) = (2, wide_cfg.text_ctx);
        let cond = Cond {
            tokens: Tensor::<2, Int>::zeros([b, ctx], &dev),
            mask: Tensor::<2>::ones([b, ctx], &dev),
            low_res: None,
            inpaint: None,
            pooled_keep: None,
        };
        let x = Tensor::<4>::random([b, 3, 32, 32], Distribution::Normal(0.0, 1.0), &dev);
        let t = Tensor::<1>::from_data(TensorData::new(vec![100f32, 700.0], [b]), &dev);
        let out: Vec<f32> = model
            .forward(x, t, &cond)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        assert!(out.iter().all(|v| v.is_finite()) && out.iter().any(|v| *v != 0.0));
        // The narrow weights straight into the wide model: an error naming the tensor.
        let err = Glide::new(&wide_cfg, &Init::From(&narrow), &dev).unwrap_err();
        assert!(format!("{err:#}").contains("has shape"), "{err:#}");
    }

    #[test]
    fn a_run_folder_keeps_its_architecture() {
        let dir = std::env::temp_dir().join(format!("webglide-runcfg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let wide = demo_config("base").unwrap();
        let mult = |c: GlideConfig| c.channel_mult;
        let mut narrow = wide.clone();
        narrow.channel_mult = "1,2,2,2".into();
        // No checkpoint yet: what was asked.
        assert_eq!(
            mult(run_config(&dir, wide.clone(), false).unwrap()),
            wide.channel_mult
        );
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec(&narrow).unwrap(),
        )
        .unwrap();
        assert_eq!(
            mult(run_config(&dir, wide.clone(), false).unwrap()),
            wide.channel_mult
        );
        std::fs::write(dir.join("state.json"), b"{}").unwrap();
        // A checkpoint: its own architecture over the default, an error over --config.
        assert_eq!(
            mult(run_config(&dir, wide.clone(), false).unwrap()),
            narrow.channel_mult
        );
        assert_eq!(
            mult(run_config(&dir, narrow.clone(), true).unwrap()),
            narrow.channel_mult
        );
        let err = run_config(&dir, wide, true).unwrap_err();
        assert!(
            format!("{err:#}").contains("another architecture"),
            "{err:#}"
        );
        std::fs::write(dir.join("config.json"), b"{ not json").unwrap();
        assert!(run_config(&dir, narrow, false).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn init_copies_equal_tensors_and_the_first_conv_channels() {
        let fresh = vec![
            (
                "input_blocks.0.0.weight".to_string(),
                vec![2, 3, 1, 1],
                vec![9.0; 6],
            ),
            ("out.2.bias".to_string(), vec![2], vec![9.0; 2]),
            ("time_embed.0.weight".to_string(), vec![2, 2], vec![9.0; 4]),
        ];
        let mut init = WeightMap::new();
        init.insert(
            "input_blocks.0.0.weight".into(),
            (vec![2, 1, 1, 1], vec![1.0, 2.0]),
        );
        init.insert("out.2.bias".into(), (vec![2], vec![5.0, 6.0]));
        init.insert("time_embed.0.weight".into(), (vec![4], vec![0.0; 4]));
        let (map, copied) = init_from(fresh.clone(), &init).unwrap();
        assert_eq!(copied, 2);
        assert_eq!(
            map["input_blocks.0.0.weight"].1,
            [1.0, 0.0, 0.0, 2.0, 0.0, 0.0]
        );
        assert_eq!(map["out.2.bias"].1, [5.0, 6.0]);
        assert_eq!(map["time_embed.0.weight"].1, [9.0; 4]);
        assert!(init_from(fresh, &WeightMap::new()).is_err());
    }

    #[test]
    fn batches_have_the_configured_shapes() {
        let tok = tokenizer().unwrap();
        let mut rng = Rng(3);
        for kind in ["base", "upsample", "base-inpaint"] {
            let cfg = demo_config(kind).unwrap();
            let b = make_batch(&cfg, &tok, &Data::shapes(), &mut rng, 3, 0.5).unwrap();
            let s = cfg.image_size;
            assert_eq!(b.x0.len(), 3 * 3 * s * s);
            assert!(b.x0.iter().all(|v| (-1.0..=1.0).contains(v)));
            assert_eq!(b.tokens.len(), 3 * cfg.text_ctx);
            assert_eq!(
                b.low_res.len(),
                if cfg.super_res {
                    3 * 3 * (s / 4) * (s / 4)
                } else {
                    0
                }
            );
            assert_eq!(b.keep.len(), if cfg.inpaint { 3 * s * s } else { 0 });
            if cfg.inpaint {
                assert!(b.keep.contains(&0.0) && b.keep.contains(&1.0));
            }
        }
    }

    /// `--related-pairs` draws that share of the scenes as two related
    /// objects of one colour (the caption names the colour twice, with a
    /// relation between).
    #[test]
    fn related_pairs_draw_two_related_objects_of_one_colour() {
        use engine::demo::shapes::{COLORS, RELATIONS};
        let tok = tokenizer().unwrap();
        let cfg = demo_config("base").unwrap();
        let with = |p: f32| Data {
            size: Some(16),
            related_pairs: p,
            ..Data::shapes()
        };
        let paired = |c: &str| {
            let rel = RELATIONS.iter().find(|r| c.contains(*r));
            let colours: Vec<&str> = COLORS
                .iter()
                .map(|(name, _)| *name)
                .filter(|name| c.split(' ').any(|w| w == *name))
                .collect();
            rel.is_some() && colours.len() == 1 && c.matches(colours[0]).count() == 2
        };
        let share = |p: f32| {
            let b = make_batch(&cfg, &tok, &with(p), &mut Rng(9), 300, 0.0).unwrap();
            b.captions.iter().filter(|c| paired(c)).count() as f64 / 300.0
        };
        // Scene::random pairs a colour with itself in 2 of 3 scenes × 1 in 8.
        let (off, half, all) = (share(0.0), share(0.5), share(1.0));
        assert!(
            off < 0.15 && (half - 0.5 - 0.5 * off).abs() < 0.08,
            "{off} {half}"
        );
        assert_eq!(all, 1.0);
    }

    /// `--three-objects` draws that share of the scenes (beside the related
    /// pairs) with three objects; off, a third of them name three.
    #[test]
    fn three_objects_draws_that_share_of_scenes_with_three() {
        let tok = tokenizer().unwrap();
        let cfg = demo_config("base").unwrap();
        let share = |p: f32| {
            let data = Data {
                size: Some(16),
                three_objects: p,
                ..Data::shapes()
            };
            let b = make_batch(&cfg, &tok, &data, &mut Rng(5), 300, 0.0).unwrap();
            let parsed: Vec<_> = b
                .captions
                .iter()
                .map(|c| crate::text_aux::parse(c).expect("a shapes caption"))
                .collect();
            assert!(parsed
                .iter()
                .all(|p| p.objects.len() < 2 || p.relation.is_some()));
            let three = parsed.iter().filter(|p| p.objects.len() == 3).count();
            three as f64 / 300.0
        };
        let (off, half, all) = (share(0.0), share(0.5), share(1.0));
        assert!((off - 1.0 / 3.0).abs() < 0.08, "{off}");
        assert!((half - (0.5 + 0.5 / 3.0)).abs() < 0.08, "{half}");
        assert_eq!(all, 1.0);
    }

    /// `--twins` follows that share of the scenes with a relation by their
    /// twin: the next sample, whose caption differs in the relation word
    /// alone, whose image differs (the objects traded places), and whose
    /// timestep and noise are its scene's. Off, nothing is a twin.
    #[test]
    fn twins_share_timestep_and_noise_and_differ_in_the_relation() {
        use engine::demo::shapes::RELATIONS;
        let tok = tokenizer().unwrap();
        let cfg = demo_config("base").unwrap();
        let dev = device("cpu").unwrap();
        let with = |p: f32| Data {
            size: Some(16),
            twins: p,
            ..Data::shapes()
        };
        let b = make_batch(&cfg, &tok, &with(0.0), &mut Rng(3), 40, 0.0).unwrap();
        assert!(!b.has_twins() && b.twin_of == (0..40).collect::<Vec<_>>());
        let n = 301;
        let b = make_batch(&cfg, &tok, &with(1.0), &mut Rng(3), n, 0.0).unwrap();
        let plane = 3 * 16 * 16;
        let (mut twins, mut same) = (0, 0);
        for (i, &j) in b.twin_of.iter().enumerate().filter(|(i, j)| i != *j) {
            twins += 1;
            assert_eq!(j + 1, i, "a twin follows its scene");
            assert_eq!(b.twin_of[j], j, "a scene is not itself a twin");
            let words = |c: &str| c.split(' ').map(str::to_owned).collect::<Vec<_>>();
            let (a, t) = (words(&b.captions[j]), words(&b.captions[i]));
            let differ: Vec<_> = a.iter().zip(&t).filter(|(x, y)| x != y).collect();
            assert!(a.len() == t.len() && differ.len() == 1, "{a:?} {t:?}");
            assert!(RELATIONS.iter().any(|r| r.contains(differ[0].0.as_str())));
            if b.x0[i * plane..(i + 1) * plane] == b.x0[j * plane..(j + 1) * plane] {
                same += 1; // the two objects are alike ("a red circle above a red circle")
            }
        }
        assert!(
            same * 10 < twins,
            "{same} of {twins} twins drew their scene"
        );
        // Scene::random has a relation in 2 of 3 scenes; each twin takes a slot.
        assert!((twins as f64 / n as f64 - 0.4).abs() < 0.08, "{twins}");
        let noise = training_noise(n, 16, 0.1, &dev);
        let shared = shared_with_twins(noise.clone(), &b, &dev);
        let (noise, shared): (Vec<f32>, Vec<f32>) = (
            noise.into_data().try_to_vec::<f32>().unwrap(),
            shared.into_data().try_to_vec::<f32>().unwrap(),
        );
        let t = b.shared_with_twins((0..n).map(|i| 1000 + i).collect());
        for (i, &j) in b.twin_of.iter().enumerate() {
            assert_eq!(
                shared[i * plane..(i + 1) * plane],
                noise[j * plane..(j + 1) * plane]
            );
            assert_eq!(t[i], 1000 + j);
        }
    }

    /// `--pooled-drop` cuts the pooled text of captioned samples only, at
    /// about its rate, and leaves the data stream alone when off; a batch
    /// whose pooled text is all cut runs as the model without
    /// transformer_proj.
    #[test]
    fn pooled_drop_cuts_the_pooled_text_of_captioned_samples() {
        let tok = tokenizer().unwrap();
        let cfg = demo_config("base").unwrap();
        let with = |p: f32| Data {
            size: Some(16),
            pooled_drop: p,
            ..Data::shapes()
        };
        let off = make_batch(&cfg, &tok, &with(0.0), &mut Rng(4), 200, 0.3).unwrap();
        assert!(off.pooled_keep.iter().all(|&k| k == 1.0) && off.pooled_keep.len() == 200);
        let on = make_batch(&cfg, &tok, &with(0.5), &mut Rng(4), 200, 0.3).unwrap();
        let cut: Vec<bool> = on.pooled_keep.iter().map(|&k| k == 0.0).collect();
        let captioned = on.captions.iter().filter(|c| !c.is_empty()).count();
        let n_cut = cut.iter().filter(|&&c| c).count();
        assert!(
            (n_cut as f64 - captioned as f64 / 2.0).abs() < 25.0,
            "{n_cut} of {captioned}"
        );
        assert!(on
            .captions
            .iter()
            .zip(&cut)
            .all(|(c, &x)| !(x && c.is_empty())));
        // The first sample's draws come before any pooled-drop draw.
        assert_eq!(on.captions[0], off.captions[0]);

        let dev = Device::flex();
        let model = Glide::new(&cfg, &Init::Random(6), &dev).unwrap();
        let no_pooled = model
            .edited(&dev, |name, _, v| {
                if name.starts_with("transformer_proj") {
                    v.fill(0.0);
                }
            })
            .unwrap();
        let b = make_batch(&cfg, &tok, &with(0.0), &mut Rng(5), 2, 0.0).unwrap();
        let cond = |keep: Option<Vec<f32>>| Cond {
            tokens: Tensor::<2, Int>::from_data(
                TensorData::new(b.tokens.clone(), [2, cfg.text_ctx]),
                &dev,
            ),
            mask: Tensor::<2>::from_data(TensorData::new(b.mask.clone(), [2, cfg.text_ctx]), &dev),
            low_res: None,
            inpaint: None,
            pooled_keep: keep.map(|k| Tensor::<2>::from_data(TensorData::new(k, [2, 1]), &dev)),
        };
        let x = Tensor::<4>::from_data(TensorData::new(b.x0.clone(), [2, 3, 16, 16]), &dev);
        let t = Tensor::<1>::from_data(TensorData::new(vec![500f32, 500.0], [2]), &dev);
        let out = |m: &Glide, keep: Option<Vec<f32>>| -> Vec<f32> {
            m.forward(x.clone(), t.clone(), &cond(keep))
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap()
        };
        let max_diff = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
        };
        let cut_all = out(&model, Some(vec![0.0, 0.0]));
        assert!(max_diff(&cut_all, &out(&no_pooled, None)) < 1e-5);
        assert!(max_diff(&cut_all, &out(&model, None)) > 1e-3);
        assert!(max_diff(&out(&model, Some(vec![1.0, 1.0])), &out(&model, None)) < 1e-6);
    }

    #[test]
    fn a_mixed_stage_draws_every_nth_batch_at_the_full_size() {
        let sizes: Vec<_> = (1..=8)
            .map(|k| batch_size_at(Some(32), Some(4), k))
            .collect();
        let (s, f) = (Some(32), None);
        assert_eq!(sizes, [s, s, s, f, s, s, s, f]);
        assert!((1..50).all(|k| batch_size_at(Some(32), None, k) == Some(32)));
        assert!((1..50).all(|k| batch_size_at(Some(32), Some(1), k).is_none()));
        // The full-size batches are the config's size.
        let cfg = demo_config("base").unwrap();
        let data = Data {
            size: Some(32),
            ..Data::shapes()
        };
        let b = make_batch_sized(
            &cfg,
            &tokenizer().unwrap(),
            &data,
            None,
            &mut Rng(3),
            1,
            0.0,
        );
        assert_eq!(b.unwrap().size, cfg.image_size);
    }

    #[test]
    fn curriculum_sizes_render_smaller_base_batches() {
        let tok = tokenizer().unwrap();
        let mut rng = Rng(9);
        let cfg = demo_config("base-inpaint").unwrap();
        let data = Data {
            size: Some(32),
            ..Data::shapes()
        };
        let b = make_batch(&cfg, &tok, &data, &mut rng, 2, 0.0).unwrap();
        assert_eq!(
            (b.size, b.x0.len(), b.keep.len()),
            (32, 2 * 3 * 32 * 32, 2 * 32 * 32)
        );
        // Scenes are drawn: not every pixel is the white background.
        assert!(b.x0.iter().any(|&v| v < 0.5));
        for bad in [12, 36, 128] {
            let d = Data {
                size: Some(bad),
                ..Data::shapes()
            };
            assert!(
                make_batch(&cfg, &tok, &d, &mut rng, 1, 0.0).is_err(),
                "{bad}"
            );
        }
        let up = demo_config("upsample").unwrap();
        assert!(make_batch(&up, &tok, &data, &mut rng, 1, 0.0).is_err());
    }

    /// Offset noise moves each image's channel as a whole: the spread of the
    /// per-plane means is the offset's (the plain noise's is 1/side), the
    /// spread within a plane stays 1; without an offset it is plain N(0, I).
    #[test]
    fn offset_noise_shifts_whole_planes() {
        let dev = Device::flex();
        let stats = |offset: f64, side: usize| {
            let x: Vec<f32> = training_noise(64, side, offset, &dev)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            let plane = side * side;
            let means: Vec<f64> = x
                .chunks(plane)
                .map(|p| p.iter().map(|&v| v as f64).sum::<f64>() / plane as f64)
                .collect();
            let spread = |v: &[f64]| (v.iter().map(|m| m * m).sum::<f64>() / v.len() as f64).sqrt();
            let within: Vec<f64> = x
                .chunks(plane)
                .zip(&means)
                .map(|(p, m)| {
                    (p.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / plane as f64).sqrt()
                })
                .collect();
            (
                spread(&means),
                within.iter().sum::<f64>() / within.len() as f64,
            )
        };
        for side in [8, 24] {
            let (between, within) = stats(0.0, side);
            assert!(between < 3.0 / side as f64, "{side}: {between}");
            assert!((within - 1.0).abs() < 0.08, "{side}: {within}");
            let (between, within) = stats(0.5, side);
            assert!((between - 0.5).abs() < 0.12, "{side}: {between}");
            assert!((within - 1.0).abs() < 0.08, "{side}: {within}");
        }
    }

    /// Min-SNR weighting only rescales the eps loss per sample: with γ above
    /// every SNR of the batch it is the plain mean, and it never raises a term.
    #[test]
    fn min_snr_weighting() {
        let dev = Device::flex().autodiff();
        let cfg = demo_config("base").unwrap();
        let model = Glide::new(&cfg, &crate::model::Init::Random(2), &dev).unwrap();
        let tok = tokenizer().unwrap();
        let data = Data {
            size: Some(16),
            ..Data::shapes()
        };
        let batch = make_batch(&cfg, &tok, &data, &mut Rng(4), 2, 0.0).unwrap();
        let sched = Schedule::new(&cfg.noise_schedule, cfg.diffusion_steps, "1000").unwrap();
        // t = 900 and 950: SNR far below 5, so γ = 5 leaves both weights at 1.
        let t = [900, 950];
        let noise = || {
            Tensor::<4>::from_data(
                TensorData::new(engine::rng::randn(2 * 3 * 16 * 16, 5, 0), [2, 3, 16, 16]),
                &dev,
            )
        };
        let mse = |min_snr: Option<f64>, low_snr_boost: Option<f64>, t: &[usize]| {
            let w = EpsWeighting {
                min_snr,
                low_snr_boost,
            };
            loss(&model, &sched, &batch, t, noise(), &dev, w)
                .1
                .into_scalar::<f32>()
        };
        let plain = mse(None, None, &t);
        // Equal up to the rounding of burn's threaded reductions.
        let weighted = mse(Some(5.0), None, &t);
        assert!(
            (weighted - plain).abs() <= 1e-5 * plain.abs().max(1.0),
            "{weighted} {plain}"
        );
        // t = 5: SNR in the thousands, the weight is γ/SNR ≪ 1.
        let low = [5, 5];
        assert!(mse(Some(5.0), None, &low) < 0.05 * mse(None, None, &low));
        // t = 900 and 950: 1/SNR is ~40 and ~160, so a cap of 10 weighs both
        // by exactly 10.
        let boosted = mse(Some(5.0), Some(10.0), &t);
        assert!(
            (boosted - 10.0 * plain).abs() <= 1e-4 * plain.abs().max(1.0),
            "{boosted} {plain}"
        );
    }

    /// The weight as a function of SNR: min-SNR below γ's SNR, 1/SNR capped
    /// above, 1 in between; off means 1 everywhere.
    #[test]
    fn eps_weighting_by_snr() {
        let w = EpsWeighting {
            min_snr: Some(5.0),
            low_snr_boost: Some(20.0),
        };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12 * b.abs().max(1.0);
        assert!(close(w.weight(100.0), 0.05));
        assert!(close(w.weight(5.0), 1.0));
        assert!(close(w.weight(2.0), 1.0));
        assert!(close(w.weight(1.0), 1.0));
        assert!(close(w.weight(0.25), 4.0));
        assert!(close(w.weight(0.01), 20.0));
        let plain = EpsWeighting::default();
        assert!(plain.is_plain());
        assert!([1e-4, 0.3, 1.0, 7.0, 1e4]
            .iter()
            .all(|&snr| plain.weight(snr) == 1.0));
        let boost_only = EpsWeighting {
            low_snr_boost: Some(20.0),
            ..plain
        };
        assert!(close(boost_only.weight(100.0), 1.0));
        assert!(close(boost_only.weight(0.1), 10.0));
        // From the command line: 0 is off, an infinite factor is refused.
        let parsed = EpsWeighting::from_args(&args(&["--low-snr-boost", "10"])).unwrap();
        assert_eq!((parsed.min_snr, parsed.low_snr_boost), (None, Some(10.0)));
        assert!(EpsWeighting::from_args(&args(&[])).unwrap().is_plain());
        assert!(EpsWeighting::from_args(&args(&["--low-snr-boost", "inf"])).is_err());
        assert!(EpsWeighting::from_args(&args(&["--min-snr", "NaN"])).is_err());
    }

    #[test]
    fn upsampler_crops_match_their_low_res_crops() {
        let tok = tokenizer().unwrap();
        let cfg = demo_config("upsample").unwrap();
        let data = Data {
            crop: Some(64),
            ..Data::shapes()
        };
        let mut rng = Rng(5);
        let b = make_batch(&cfg, &tok, &data, &mut rng, 16, 0.0).unwrap();
        assert_eq!(
            (b.size, b.x0.len(), b.low_res.len()),
            (64, 16 * 3 * 64 * 64, 16 * 3 * 16 * 16)
        );
        // Each low-res pixel is the 4×4 box average of its target crop.
        for (x0, lo) in b.x0.chunks(3 * 64 * 64).zip(b.low_res.chunks(3 * 16 * 16)) {
            for (c, (y, x)) in [(0, (3, 5)), (1, (15, 0)), (2, (9, 12))] {
                let want: f32 = (0..16)
                    .map(|k| x0[c * 4096 + (4 * y + k / 4) * 64 + 4 * x + k % 4])
                    .sum::<f32>()
                    / 16.0;
                assert!((lo[c * 256 + y * 16 + x] - want).abs() < 0.01);
            }
        }
        // Crops land anywhere: some hold no shape at all, others do.
        let blank =
            b.x0.chunks(3 * 64 * 64)
                .filter(|x| x.iter().all(|&v| v > 0.99))
                .count();
        assert!(blank < 16);
        for bad in [Some(48), Some(0), Some(512)] {
            let d = Data {
                crop: bad,
                ..Data::shapes()
            };
            assert!(make_batch(&cfg, &tok, &d, &mut rng, 1, 0.0).is_err());
        }
        let base = demo_config("base").unwrap();
        assert!(make_batch(&base, &tok, &data, &mut rng, 1, 0.0).is_err());
    }

    /// `--device tch` (built with the `tch` feature, scripts/train-tch.sh):
    /// a training step's losses and every parameter's gradient on LibTorch
    /// are flex's (which the parity test holds to the engine), for the demo
    /// base at 16 px with min-SNR weighting, caption and pooled-text drops.
    #[cfg(feature = "tch")]
    #[test]
    fn a_training_step_is_the_same_on_libtorch_as_on_flex() {
        let cfg = demo_config("base").unwrap();
        let tok = tokenizer().unwrap();
        let data = Data {
            size: Some(16),
            pooled_drop: 0.5,
            ..Data::shapes()
        };
        let batch = make_batch(&cfg, &tok, &data, &mut Rng(4), 3, 0.2).unwrap();
        let sched = Schedule::new(&cfg.noise_schedule, cfg.diffusion_steps, "1000").unwrap();
        let t = [10, 400, 950];
        let weighting = EpsWeighting {
            min_snr: Some(5.0),
            low_snr_boost: None,
        };
        let weights = Glide::new(&cfg, &Init::Random(2), &Device::flex())
            .unwrap()
            .export_map();
        let values = |data: TensorData| data.convert::<f32>().try_into_vec::<f32>().unwrap();
        let step = |dev: Device| {
            let dev = dev.autodiff();
            let model = Glide::new(&cfg, &Init::From(&weights), &dev).unwrap();
            let noise = engine::rng::randn(3 * 3 * 16 * 16, 5, 0);
            let noise = Tensor::<4>::from_data(TensorData::new(noise, [3, 3, 16, 16]), &dev);
            let (total, mse, vb) = loss(&model, &sched, &batch, &t, noise, &dev, weighting);
            let losses = [&total, &mse, &vb].map(|l| l.clone().into_scalar::<f32>());
            let grads = GradientsParams::from_grads(total.backward(), &model);
            let grads: Vec<(String, Vec<f32>)> = cfg
                .weight_shapes()
                .unwrap()
                .into_iter()
                .map(|(name, shape)| {
                    let id = crate::model::param_id(&name);
                    // Conv1d weights ([out, in, 1]) are held as 4-d convs.
                    let g = match shape.len() {
                        1 => grads.get::<1>(id).map(|g| g.into_data()),
                        2 => grads.get::<2>(id).map(|g| g.into_data()),
                        _ => grads.get::<4>(id).map(|g| g.into_data()),
                    };
                    let g = g.unwrap_or_else(|| panic!("{name}: no gradient"));
                    (name, values(g))
                })
                .collect();
            (losses, grads)
        };
        #[allow(deprecated)] // burn's LibTorch backend
        let (torch, flex) = (step(Device::libtorch()), step(Device::flex()));
        for (what, a, b) in
            [("total", 0), ("mse", 1), ("vb", 2)].map(|(w, i)| (w, torch.0[i], flex.0[i]))
        {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1e-3),
                "{what} loss: {a} against {b}"
            );
        }
        let mut worst = (0f32, String::new());
        for ((name, a), (_, b)) in torch.1.iter().zip(&flex.1) {
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            let rel = err / scale.max(1e-12);
            if rel > worst.0 {
                worst = (rel, name.clone());
            }
        }
        eprintln!(
            "largest gradient difference: {:.2e} of {}'s largest",
            worst.0, worst.1
        );
        assert!(
            worst.0 < 2e-3,
            "{}: gradients differ by {:.2e} of their scale",
            worst.1,
            worst.0
        );
    }
}
