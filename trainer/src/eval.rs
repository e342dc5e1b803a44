//! `webglide-train eval`: the shapes evaluation of `webglide eval shapes`
//! (same prompts, same checker, DDIM or ancestral steps with classifier-free
//! guidance, or ancestral steps with CLIP guidance, as the engine samples
//! them) run on the CPU through burn, so a training run can be measured in
//! minutes on a machine whose Vulkan is a CPU emulation; with `--inpaint`,
//! the inpainting evaluation of `webglide eval inpaint` for a base-inpaint.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use engine::demo::shapes::{
    detect, eval_scenes, held_out, inpaint_cases, region_keep_mask, render, score, tile_rows,
    Found, InpaintCase, Rng, Scene, Score, Tally, COLORS, SHAPES,
};
use engine::glide::model::GlideConfig;
use engine::glide::schedule::Schedule;
use engine::glide::tokenizer::pad_tokens;
use engine::glide::weights::WeightSource;

use crate::emoji::Emoji;
use crate::model::{Cond, Glide, Init, WeightMap};
use crate::train::{read_safetensors, tokenizer, write_atomic};

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A run folder (its ema.safetensors and config.json) ...
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// ... or a weights file with --config ...
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// ... or a converted model set (e.g. public/models/demo: its base/, or
    /// base-inpaint/ with --inpaint; q8 dequantised).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, default_value_t = 32)]
    pub n: usize,
    /// Guidance scales, comma-separated (0 = the conditional model alone).
    #[arg(long, default_value = "0,3")]
    pub guidance: String,
    /// CLIP guidance scales (rows after the CFG ones; ancestral steps), with --clip.
    #[arg(long, default_value = "")]
    pub clip_guidance: String,
    /// The noisy CLIP: a `webglide-train --kind clip` run folder.
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// ddim (eta 0) or ancestral (the notebooks; what CLIP guidance uses).
    #[arg(long, default_value = "ddim")]
    pub sampler: String,
    /// Respacing of the DDIM sampler.
    #[arg(long, default_value = "ddim25")]
    pub steps: String,
    /// Image side (the base's 64 unless a curriculum stage is evaluated).
    #[arg(long)]
    pub size: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per forward batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// A PNG with the first 8 images of every guidance scale (one row each).
    #[arg(long)]
    pub grid: Option<PathBuf>,
    /// A text file with one line per image of the shapes evaluation: its
    /// row, caption, score and every object the checker found (what the
    /// counts in `fewer / as many / more` are made of).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Prompts of the training distribution (no held-out pair) instead:
    /// separates learning the scenes from generalising to unseen pairs.
    #[arg(long)]
    pub seen: bool,
    /// Prompts of two related objects of one colour (`--related-pairs`'
    /// scenes, no held-out pair): is the relation read where nothing else
    /// tells the objects' places apart?
    #[arg(long, conflicts_with = "seen")]
    pub pairs: bool,
    /// A PNG of the predicted x0 at every sampling step (columns, the first
    /// at the noisiest step) for the first 4 prompts of the first guidance
    /// scale (rows): at which noise level does a sample go wrong?
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Instead of sampling: the eps error with the true, empty and another
    /// scene's caption at several noise levels (does the model read its prompt?),
    /// then the first sampling step's predicted mean colour from the scenes
    /// noised and from pure noise (does it predict the ground or read it?).
    #[arg(long)]
    pub probe: bool,
    /// The inpainting evaluation (a base-inpaint model): one object's box of
    /// a rendered scene regenerated, prompted as a held-out colour–shape
    /// pair; scored against the edited scene, plus "new" (the new object is
    /// there). The grid's first row shows the sources, regions greyed.
    #[arg(long)]
    pub inpaint: bool,
    /// Instead of the shapes evaluation: these prompts (a file, one per
    /// line, at most 64) sampled at every guidance scale, unscored, into
    /// `--grid`: rows of 8 prompts, one row per scale.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// With the shapes evaluation and --grid: an upsampler (a run folder or
    /// a converted one, e.g. public/models/demo/upsample) that takes each
    /// row's first 8 images up, as the app does; the grid shows them under
    /// the base's, and both are scored.
    #[arg(long)]
    pub upsample: Option<PathBuf>,
    /// The upsampler's respacing (DDIM).
    #[arg(long, default_value = "fast27")]
    pub upsample_steps: String,
    /// With --prompts: the emoji cache; each row of 8 prompts gets a row
    /// above it of the training images they name (white where none).
    #[arg(long)]
    pub emoji: Option<PathBuf>,
    /// cpu (flex) or tch (LibTorch, the `tch` feature): the same numbers to
    /// rounding, except where noise comes from the backend's own generator
    /// (sampling, the probe's first-step colours): those compare within one
    /// backend.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(args: &EvalArgs) -> Result<()> {
    let (cfg, weights, source): (GlideConfig, _, PathBuf) =
        match (&args.run, &args.weights, &args.config, &args.model) {
            (Some(r), None, None, None) => {
                let (cfg, map) = read_run(r)?;
                (cfg, map, r.join("ema.safetensors"))
            }
            (None, Some(w), Some(c), None) => (read_config(c)?, read_safetensors(w)?, w.clone()),
            (None, None, None, Some(m)) => {
                let dir = m.join(if args.inpaint { "base-inpaint" } else { "base" });
                let (cfg, map) = read_converted(&dir)?;
                (cfg, map, dir)
            }
            _ => bail!(
                "give --run DIR, --weights FILE with --config FILE, or --model DIR (converted)"
            ),
        };
    if cfg.super_res || cfg.inpaint != args.inpaint {
        bail!(
            "{}: the {} evaluation is for {} models",
            source.display(),
            if args.inpaint { "inpainting" } else { "shapes" },
            if args.inpaint { "base-inpaint" } else { "base" }
        );
    }
    if args.inpaint && (args.probe || args.seen || args.pairs || !args.clip_guidance.is_empty()) {
        bail!("--inpaint takes none of --probe, --seen, --pairs, --clip-guidance");
    }
    if args.prompts.is_some()
        && (args.inpaint || args.probe || args.seen || args.pairs || args.grid.is_none())
    {
        bail!("--prompts needs --grid PNG and takes none of --inpaint, --probe, --seen, --pairs");
    }
    if args.emoji.is_some() && args.prompts.is_none() {
        bail!("--emoji goes with --prompts");
    }
    if args.n == 0 || args.n > 10_000 || args.batch == 0 || args.batch > 256 {
        bail!("--n 1..=10000, --batch 1..=256");
    }
    let size = args.size.unwrap_or(cfg.image_size);
    if !(16..=256).contains(&size) || !size.is_multiple_of(8) {
        bail!("--size {size}: a multiple of 8 from 16 to 256");
    }
    let scales = |list: &str, what: &str| -> Result<Vec<f32>> {
        let v: Vec<f32> = list
            .split(',')
            .filter(|g| !g.trim().is_empty())
            .map(|g| {
                g.trim()
                    .parse::<f32>()
                    .with_context(|| format!("{what}: numbers"))
            })
            .collect::<Result<_>>()?;
        if v.iter().any(|g| !(0.0..=100.0).contains(g)) {
            bail!("{what} scales lie in 0..=100");
        }
        Ok(v)
    };
    let ancestral = match args.sampler.as_str() {
        "ancestral" => true,
        "ddim" => false,
        s => bail!("--sampler {s}: ddim or ancestral"),
    };
    // (label, CFG scale, CLIP scale) per row.
    let rows: Vec<(String, f32, Option<f32>)> = scales(&args.guidance, "--guidance")?
        .into_iter()
        .map(|g| (format!("cfg {g:.1}"), g, None))
        .chain(
            scales(&args.clip_guidance, "--clip-guidance")?
                .into_iter()
                .map(|g| (format!("clip {g:.1}"), 0.0, Some(g))),
        )
        .collect();
    let clip = match &args.clip {
        Some(dir) => Some(load_clip(dir, &args.device)?),
        None if rows.iter().any(|r| r.2.is_some()) => bail!("--clip-guidance needs --clip DIR"),
        None => None,
    };
    if clip.is_some() && !ancestral {
        bail!("CLIP guidance samples with --sampler ancestral");
    }
    let dev = crate::train::device(&args.device)?;
    dev.seed(args.seed);
    let model = Glide::new(&cfg, &Init::From(&weights), &dev)?;
    let sched = Schedule::new(&cfg.noise_schedule, cfg.diffusion_steps, &args.steps)?;
    // The upsampler, its schedule and its factor (the app's 64 → 256: 4).
    let upsampler = match &args.upsample {
        Some(dir) => {
            if args.inpaint || args.probe || args.prompts.is_some() || args.grid.is_none() {
                bail!("--upsample goes with the shapes evaluation and --grid PNG");
            }
            let (ucfg, weights) = read_folder(dir)?;
            let factor = ucfg.image_size / cfg.image_size;
            if !ucfg.super_res || factor * cfg.image_size != ucfg.image_size || factor > 8 {
                bail!(
                    "{}: not an upsampler of the base's {} px",
                    dir.display(),
                    cfg.image_size
                );
            }
            Some(Upsampler {
                model: Glide::new(&ucfg, &Init::From(&weights), &dev)?,
                sched: Schedule::new(
                    &ucfg.noise_schedule,
                    ucfg.diffusion_steps,
                    &args.upsample_steps,
                )?,
                factor,
            })
        }
        None => None,
    };
    let cases = if args.inpaint {
        inpaint_cases(args.n, args.seed)
    } else {
        Vec::new()
    };
    let scenes = if args.inpaint {
        cases.iter().map(|c| c.target.clone()).collect()
    } else if args.seen {
        seen_scenes(args.n, args.seed)
    } else if args.pairs {
        pair_scenes(args.n, args.seed)
    } else {
        eval_scenes(args.n, args.seed)
    };
    let tok = tokenizer()?;
    if args.probe {
        println!(
            "{} evaluation scenes{} at {size} px, eps mean squared error by caption, {}",
            args.n,
            if args.pairs {
                " (related pairs of one colour)"
            } else {
                ""
            },
            source.display()
        );
        probe(&model, &tok, &scenes, size, args.batch, args.seed, &dev)?;
        let first = *sched.timestep_map.last().context("an empty respacing")?;
        return first_step_ground(&model, &tok, &scenes, size, first, &dev);
    }
    // The sampler of a row: its classifier-free and CLIP guidance scales.
    let row_spec = |guidance: f32, clip_scale: Option<f32>| Sampling {
        sched: &sched,
        guidance,
        clip: clip.as_ref().zip(clip_scale),
        ancestral,
        size,
        temperature: 1.0,
    };
    if let (Some(file), Some(grid)) = (&args.prompts, &args.grid) {
        let prompts = read_prompts(file)?;
        let named = |e: &Emoji| -> Result<Vec<Vec<u8>>> {
            if size != 64 {
                bail!("--emoji shows the 64-px training images: --size 64");
            }
            let blank = vec![255u8; size * size * 3];
            Ok(prompts
                .iter()
                .map(|p| e.named(p).map_or(blank.clone(), |i| e.small[i].clone()))
                .collect())
        };
        let reference = args.emoji.as_deref().map(Emoji::load).transpose()?;
        let reference = reference.as_ref().map(named).transpose()?;
        let mut by_scale = Vec::new();
        for (label, g, clip_scale) in &rows {
            dev.seed(args.seed); // every row from the same noise (see below)
            let spec = row_spec(*g, *clip_scale);
            let mut images = Vec::new();
            for chunk in prompts.chunks(args.batch) {
                images.extend(sample(
                    &model,
                    &tok,
                    chunk,
                    &spec,
                    Images::default(),
                    &dev,
                    None,
                )?);
            }
            println!("sampled {} prompts at {label}", prompts.len());
            by_scale.push(images);
        }
        let mut grid_rows = Vec::new();
        for start in (0..prompts.len()).step_by(8) {
            let cols = start..(start + 8).min(prompts.len());
            grid_rows.extend(reference.iter().map(|r| r[cols.clone()].to_vec()));
            grid_rows.extend(by_scale.iter().map(|imgs| imgs[cols.clone()].to_vec()));
        }
        write_grid(grid, &grid_rows, size)?;
        println!(
            "wrote {}: rows of 8 prompts{}, one row per scale ({}); the prompts:",
            grid.display(),
            if reference.is_some() {
                " under the emoji they name"
            } else {
                ""
            },
            rows.iter()
                .map(|r| r.0.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for p in &prompts {
            println!("  {p}");
        }
        return Ok(());
    }
    println!(
        "{} prompts {}, {} {} at {size} px (burn, --device {}), {}",
        args.n,
        if args.inpaint {
            "inpainting one object's box as a held-out colour–shape pair"
        } else if args.seen {
            "of the training distribution (no held-out pair)"
        } else if args.pairs {
            "of two related objects of one colour (no held-out pair)"
        } else {
            "with held-out colour–shape pairs"
        },
        args.sampler,
        args.steps,
        args.device,
        source.display()
    );
    println!("{}", Tally::header(args.inpaint));
    // Inpainting: the rendered sources (as training renders) and keep-masks.
    let sources: Vec<Vec<u8>> = cases.iter().map(|c| render(&c.source, size, 4)).collect();
    let mut grid_rows = Vec::new();
    if args.inpaint {
        grid_rows.push(
            cases
                .iter()
                .zip(&sources)
                .take(8)
                .map(|(c, rgb)| c.shaded(rgb, size))
                .collect(),
        );
    }
    let mut trace = args.trace.as_ref().map(|_| Vec::new());
    let mut report = String::new();
    // The objects' size as the checker measures it on clean renders of the
    // prompts: a 32-px stage draws objects of its own pixel size, too small
    // at 64 px, until the 64-px stage has relearnt them.
    let clean_size = mean_radius(
        scenes
            .iter()
            .flat_map(|s| detect(&render(s, size, 4), size))
            .map(|f| f.r),
    );
    for (label, g, clip_scale) in &rows {
        // Every row from the same starting noise, as `webglide eval shapes`
        // does: the rows compare guidance scales on the same draws, and a
        // row's scores do not depend on which rows ran before it.
        dev.seed(args.seed);
        let mut tally = Tally::default();
        let mut found_sizes = Vec::new();
        let mut row = Vec::new();
        for (ci, chunk) in scenes.chunks(args.batch).enumerate() {
            let start = ci * args.batch;
            let captions: Vec<String> = chunk.iter().map(|s| s.caption()).collect();
            let first = trace.as_ref().is_some_and(|t: &Vec<_>| t.is_empty());
            let spec = row_spec(*g, *clip_scale);
            let inpaint = args.inpaint.then(|| {
                let range = start..start + chunk.len();
                inpaint_inputs(&cases[range.clone()], &sources[range], size, &dev)
            });
            let images = Images {
                inpaint,
                ..Default::default()
            };
            let rgb = sample(
                &model,
                &tok,
                &captions,
                &spec,
                images,
                &dev,
                if first { trace.as_mut() } else { None },
            )?;
            for (i, (scene, img)) in chunk.iter().zip(rgb).enumerate() {
                let found = detect(&img, size);
                let scored = score(scene, &found);
                if args.report.is_some() {
                    report += &report_line(label, start + i, scene, &scored, &found);
                }
                tally.add(&scored);
                found_sizes.extend(found.iter().map(|f| f.r));
                if let Some(case) = cases.get(start + i) {
                    tally.add_new(case.shows_new_object(&found));
                }
                if row.len() < 8 {
                    row.push(img);
                }
            }
        }
        println!("{}", tally.row(label));
        println!("{}", tally.breakdown());
        println!(
            "{:>9} object size (the checker's radius): {:.3}, clean renders of the prompts {clean_size:.3}",
            "",
            mean_radius(found_sizes.into_iter())
        );
        let Some(up) = &upsampler else {
            grid_rows.push(row);
            continue;
        };
        // The grid's images upsampled, scored beside themselves at the base's size.
        let captions: Vec<String> = scenes.iter().take(row.len()).map(|s| s.caption()).collect();
        let big = up.upsample(&tok, &captions, &row, size, &dev)?;
        let (mut low, mut high) = (Tally::default(), Tally::default());
        for ((scene, lo), hi) in scenes.iter().zip(&row).zip(&big) {
            low.add(&score(scene, &detect(lo, size)));
            high.add(&score(scene, &detect(hi, size * up.factor)));
        }
        println!("{}", low.row(&format!("{label}, first {}", row.len())));
        println!(
            "{}",
            high.row(&format!("{label}, first {}, upsampled", row.len()))
        );
        grid_rows.push(
            row.iter()
                .map(|img| enlarge(img, size, up.factor))
                .collect(),
        );
        grid_rows.push(big);
    }
    if let Some(path) = &args.report {
        write_atomic(path, report.as_bytes())?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.grid {
        let side = upsampler.as_ref().map_or(size, |u| size * u.factor);
        write_grid(path, &grid_rows, side)?;
        println!("wrote {}; its columns:", path.display());
        for scene in scenes.iter().take(8) {
            println!("  {}", scene.caption());
        }
    }
    if let (Some(path), Some(steps)) = (&args.trace, trace) {
        // One row per prompt, one column per step.
        let rows: Vec<Vec<Vec<u8>>> = (0..args.n.min(args.batch).min(4))
            .map(|p| steps.iter().map(|imgs| imgs[p].clone()).collect())
            .collect();
        write_grid(path, &rows, size)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `--prompts FILE`: its non-empty lines, 1 to 64 of them.
fn read_prompts(path: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the prompts file {}", path.display()))?;
    let prompts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if prompts.is_empty() || prompts.len() > 64 {
        bail!(
            "{}: {} prompts; 1 to 64, one per line",
            path.display(),
            prompts.len()
        );
    }
    Ok(prompts)
}

/// `--seen`: scenes as training draws them (no held-out pair), from their
/// own stream so they are not the training samples of a seed.
fn seen_scenes(n: usize, seed: u64) -> Vec<Scene> {
    let mut rng = Rng(seed ^ 0x5ee4);
    (0..n)
        .map(|_| Scene::random(&mut rng, &|c, s| !held_out(c, s)))
        .collect()
}

/// `--pairs`: related pairs of one colour, from their own stream.
fn pair_scenes(n: usize, seed: u64) -> Vec<Scene> {
    let mut rng = Rng(seed ^ 0x9a12);
    (0..n)
        .map(|_| Scene::related_pair(&mut rng, &|c, s| !held_out(c, s)))
        .collect()
}

fn read_config(path: &std::path::Path) -> Result<GlideConfig> {
    serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{}: not a GLIDE config", path.display()))
}

/// A training run's EMA weights (its config.json and ema.safetensors).
fn read_run(dir: &std::path::Path) -> Result<(GlideConfig, WeightMap)> {
    Ok((
        read_config(&dir.join("config.json"))?,
        read_safetensors(&dir.join("ema.safetensors"))?,
    ))
}

/// A model folder as f32 weights: converted (its manifest.json) or a run.
fn read_folder(dir: &std::path::Path) -> Result<(GlideConfig, WeightMap)> {
    if dir.join("manifest.json").exists() {
        read_converted(dir)
    } else {
        read_run(dir)
    }
}

/// A `webglide convert` folder (manifest + verified shards) as f32 weights.
pub fn read_converted(dir: &std::path::Path) -> Result<(GlideConfig, WeightMap)> {
    let (manifest, shards) = engine::glide::weights::read_model_dir(dir)?;
    let source = WeightSource::shards(manifest.tensors.clone().into_iter().collect(), &shards)?;
    let map = source
        .dequantized()?
        .into_iter()
        .map(|(n, s, v)| (n, (s, v)))
        .collect();
    Ok((manifest.config, map))
}

/// DDIM (η = 0) from pure noise with classifier-free guidance on eps, as
/// GLIDE's notebook model_fn: cond and uncond halves in one batch, the
/// guided eps for both, x0 clipped to [-1, 1]. Returns RGB8 images.
/// A trained noisy CLIP (on an autodiff device: its gradient steers sampling).
pub struct EvalClip {
    model: crate::clip::NoisyClip,
    tok: engine::unclip::tokenizer::ClipTokenizer,
    dev: Device,
}

fn load_clip(dir: &std::path::Path, device: &str) -> Result<EvalClip> {
    let cfg: engine::glide::clip::NoisyClipConfig =
        serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)
            .context("the CLIP run's config.json")?;
    let text = read_safetensors(&dir.join("text_enc.safetensors"))?;
    let image = read_safetensors(&dir.join("image_enc.safetensors"))?;
    let dev = crate::train::device(device)?.autodiff();
    let model =
        crate::clip::NoisyClip::new(&cfg, Some(&text), Some(&image), cfg.logit_scale.ln(), &dev)?;
    Ok(EvalClip {
        model,
        tok: crate::clip::clip_tokenizer()?,
        dev,
    })
}

impl EvalClip {
    /// `scale · ∇ₓ Σ_b exp(logit_scale)·normalize(z_t[b])·normalize(z_i(x[b], t))`, as
    /// the engine's `cond_fn`.
    fn grad(&self, x: &Tensor<4>, t: usize, captions: &[String], scale: f32) -> Result<Tensor<4>> {
        let cfg = self.model.export_config();
        let (b, l) = (captions.len(), cfg.max_text_len);
        let (mut ids, mut last) = (Vec::new(), vec![0f32; b * l]);
        for (i, c) in captions.iter().enumerate() {
            let (t, n) = engine::glide::clip::clip_tokens(&self.tok, c, l);
            ids.extend(t.iter().map(|&v| v as i64));
            last[i * l + n - 1] = 1.0;
        }
        let xv = floats(x.clone())?;
        let xd = Tensor::<4>::from_data(TensorData::new(xv, x.dims()), &self.dev).require_grad();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, l]), &self.dev);
        let last = Tensor::<2>::from_data(TensorData::new(last, [b, l]), &self.dev);
        let ts = Tensor::<2, Int>::from_data(TensorData::new(vec![t as i64; b], [b, 1]), &self.dev);
        let norm = |z: Tensor<2>| {
            let n = z.clone().powi_scalar(2).sum_dim(1).sqrt() + 1e-12;
            z / n
        };
        let zt = norm(self.model.encode_text(tokens, last)).detach();
        let zi = norm(self.model.encode_image(xd.clone(), ts));
        let score = (zt * zi).sum() * (cfg.logit_scale * scale) as f64;
        let grads = score.backward();
        let g = xd.grad(&grads).context("no gradient for x")?;
        let gv = floats(g)?;
        Ok(Tensor::<4>::from_data(
            TensorData::new(gv, x.dims()),
            &x.device(),
        ))
    }
}

/// How `sample` draws: the respaced schedule, the guidance, the sampler and
/// the image side.
pub struct Sampling<'a> {
    pub sched: &'a Schedule,
    /// Classifier-free scale (0 = the conditional model alone).
    pub guidance: f32,
    /// The noisy CLIP and its scale (ancestral steps).
    pub clip: Option<(&'a EvalClip, f32)>,
    /// Ancestral (the notebooks) or DDIM with eta 0.
    pub ancestral: bool,
    pub size: usize,
    /// The starting noise's scale (GLIDE's upsample_temp 0.997 for upsamplers).
    pub temperature: f32,
}

/// The images a model is conditioned on besides its caption.
#[derive(Default)]
pub struct Images {
    /// An upsampler's low-resolution input `[n, 3, h, w]` in [-1, 1].
    pub low_res: Option<Tensor<4>>,
    /// A base-inpaint's source images `[n, 3, size, size]` in [-1, 1] and
    /// keep-masks `[n, 1, size, size]`.
    pub inpaint: Option<(Tensor<4>, Tensor<4>)>,
}

/// Samples one image per caption. With `images.inpaint`, as the inpaint
/// notebook's `denoised_fn`, every step's x0 keeps the source where the mask
/// says so. `trace` collects every step's x0.
pub fn sample(
    model: &Glide,
    tok: &engine::glide::tokenizer::GlideTokenizer,
    captions: &[String],
    spec: &Sampling,
    images: Images,
    dev: &Device,
    mut trace: Option<&mut Vec<Vec<Vec<u8>>>>,
) -> Result<Vec<Vec<u8>>> {
    let Sampling {
        sched,
        guidance,
        clip,
        ancestral,
        size,
        temperature,
    } = *spec;
    let cfg = &model.config;
    let Images { low_res, inpaint } = images;
    let needs = |yes: bool| if yes { "needs" } else { "takes no" };
    if cfg.inpaint != inpaint.is_some() {
        bail!(
            "a {} model {} an inpainting image and mask",
            cfg.kind(),
            needs(cfg.inpaint)
        );
    }
    if cfg.super_res != low_res.is_some() {
        bail!(
            "a {} model {} low-resolution image",
            cfg.kind(),
            needs(cfg.super_res)
        );
    }
    let n = captions.len();
    let guided = guidance > 0.0;
    let rows = if guided { 2 * n } else { n };
    let empty = String::new();
    let texts: Vec<&String> = captions
        .iter()
        .chain(std::iter::repeat_n(&empty, rows - n))
        .collect();
    let mut cond = text_cond(tok, cfg.text_ctx, &texts, dev);
    let twice = |t: &Tensor<4>| {
        if guided {
            Tensor::cat(vec![t.clone(), t.clone()], 0)
        } else {
            t.clone()
        }
    };
    if let Some((image, keep)) = &inpaint {
        cond.inpaint = Some((twice(image), twice(keep)));
    }
    cond.low_res = low_res.as_ref().map(twice);
    let mut x = Tensor::<4>::random([n, 3, size, size], Distribution::Normal(0.0, 1.0), dev)
        * temperature as f64;
    for i in (0..sched.len()).rev() {
        let c = sched.coeffs(i, 0.0);
        let t = Tensor::<1>::from_data(
            TensorData::new(vec![sched.timestep_map[i] as f32; rows], [rows]),
            dev,
        );
        let input = if guided {
            Tensor::cat(vec![x.clone(), x.clone()], 0)
        } else {
            x.clone()
        };
        let out = model.forward(input, t, &cond);
        let eps_all = out.clone().narrow(1, 0, 3);
        let eps = if guided {
            let (e_cond, e_uncond) = (eps_all.clone().narrow(0, 0, n), eps_all.narrow(0, n, n));
            e_uncond.clone() + (e_cond - e_uncond) * guidance as f64
        } else {
            eps_all
        };
        let mut x0 =
            (x.clone() * c.sqrt_recip_ac as f64 - eps * c.sqrt_recipm1_ac as f64).clamp(-1.0, 1.0);
        if let Some((image, keep)) = &inpaint {
            x0 = x0 * (keep.clone().neg() + 1.0) + image.clone() * keep.clone();
        }
        if let Some(trace) = trace.as_deref_mut() {
            trace.push(to_rgb(x0.clone(), size)?);
        }
        if ancestral {
            // Learned-range variance (each row its own v), posterior mean, CLIP's shift.
            let v = out.narrow(1, 3, 3).narrow(0, 0, n);
            let frac = (v + 1.0) / 2.0;
            let log_var = frac.clone() * c.max_log as f64 + (frac.neg() + 1.0) * c.min_log as f64;
            let mut mean = x0 * c.posterior_coef1 as f64 + x.clone() * c.posterior_coef2 as f64;
            if let Some((clip, scale)) = clip {
                let g = clip.grad(&x, sched.timestep_map[i], captions, scale)?;
                mean = mean + log_var.clone().exp() * g;
            }
            x = if i > 0 {
                let noise =
                    Tensor::<4>::random([n, 3, size, size], Distribution::Normal(0.0, 1.0), dev);
                mean + (log_var * 0.5).exp() * noise
            } else {
                mean
            };
        } else {
            let eps = (x * c.sqrt_recip_ac as f64 - x0.clone()) / c.sqrt_recipm1_ac as f64;
            x = x0 * c.sqrt_ac_prev as f64 + eps * c.ddim_eps_coef as f64;
        }
    }
    to_rgb(x, size)
}

/// A chunk of inpainting cases as the model's inputs: the rendered sources
/// in [-1, 1] and the keep-masks, NCHW.
fn inpaint_inputs(
    cases: &[InpaintCase],
    sources: &[Vec<u8>],
    size: usize,
    dev: &Device,
) -> (Tensor<4>, Tensor<4>) {
    let keep: Vec<f32> = cases.iter().flat_map(|c| c.keep_mask(size)).collect();
    (
        planes(sources, size, dev),
        Tensor::<4>::from_data(TensorData::new(keep, [cases.len(), 1, size, size]), dev),
    )
}

/// Interleaved RGB8 images as `[n, 3, size, size]` in [-1, 1].
fn planes(images: &[Vec<u8>], size: usize, dev: &Device) -> Tensor<4> {
    let v = images
        .iter()
        .flat_map(|rgb| crate::train::planes(rgb, size))
        .collect();
    Tensor::<4>::from_data(TensorData::new(v, [images.len(), 3, size, size]), dev)
}

/// An upsampler with its respaced schedule; `factor`: its side over the
/// base's (the app's 64 → 256: 4).
pub struct Upsampler {
    pub model: Glide,
    pub sched: Schedule,
    pub factor: usize,
}

impl Upsampler {
    /// Its images of `captions` from the base's `low` (RGB8, `size` px), as
    /// the app's pipeline: the 8-bit images as the low-resolution input,
    /// DDIM without guidance, the starting noise scaled by GLIDE's
    /// upsample_temp (0.997).
    fn upsample(
        &self,
        tok: &engine::glide::tokenizer::GlideTokenizer,
        captions: &[String],
        low: &[Vec<u8>],
        size: usize,
        dev: &Device,
    ) -> Result<Vec<Vec<u8>>> {
        let spec = Sampling {
            sched: &self.sched,
            guidance: 0.0,
            clip: None,
            ancestral: false,
            size: size * self.factor,
            temperature: 0.997,
        };
        let images = Images {
            low_res: Some(planes(low, size, dev)),
            inpaint: None,
        };
        sample(&self.model, tok, captions, &spec, images, dev, None)
    }
}

/// Nearest-neighbour enlargement of an RGB8 image by `factor` (the grid's
/// base rows beside the upsampled ones).
fn enlarge(rgb: &[u8], size: usize, factor: usize) -> Vec<u8> {
    let big = size * factor;
    (0..big * big)
        .flat_map(|i| {
            let (x, y) = (i % big / factor, i / big / factor);
            rgb[(y * size + x) * 3..(y * size + x) * 3 + 3].to_vec()
        })
        .collect()
}

/// A tensor's values, in order.
pub(crate) fn floats<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// Images in [-1, 1] (NCHW) as interleaved RGB8, one `Vec` per image.
fn to_rgb(x: Tensor<4>, size: usize) -> Result<Vec<Vec<u8>>> {
    let v = floats(x)?;
    let plane = size * size;
    Ok(v.chunks(3 * plane)
        .map(|img| {
            (0..plane)
                .flat_map(|p| {
                    (0..3).map(move |ch| {
                        ((img[ch * plane + p] + 1.0) * 127.5)
                            .round()
                            .clamp(0.0, 255.0) as u8
                    })
                })
                .collect()
        })
        .collect())
}

/// The text conditioning of a base model for `texts`, as the engine pads them.
fn text_cond(
    tok: &engine::glide::tokenizer::GlideTokenizer,
    ctx: usize,
    texts: &[&String],
    dev: &Device,
) -> Cond {
    let (mut tokens, mut mask) = (Vec::new(), Vec::new());
    for text in texts {
        let (t, m) = pad_tokens(&tok.encode(text), ctx);
        tokens.extend(t.iter().map(|&v| v as i64));
        mask.extend(m.iter().map(|&v| v as f32));
    }
    let rows = texts.len();
    Cond {
        tokens: Tensor::<2, Int>::from_data(TensorData::new(tokens, [rows, ctx]), dev),
        mask: Tensor::<2>::from_data(TensorData::new(mask, [rows, ctx]), dev),
        low_res: None,
        inpaint: None,
        pooled_keep: None,
    }
}

/// `--probe`: how much the caption lowers the eps error on the evaluation
/// scenes (rendered as in training, noised at several t, the same noise for
/// each caption): the true caption against the empty one, the next scene's,
/// the same scene with its colours moved one object on (binding), and with
/// its relation reversed. A model that reads its prompt predicts best with
/// the true one; one that ignores a part of it shows no gap for that part (a
/// cheaper and less noisy signal than sampling). Swapped and reversed
/// captions exist only for scenes with two colours or a relation, so their
/// gaps are taken over those scenes alone.
fn probe(
    model: &Glide,
    tok: &engine::glide::tokenizer::GlideTokenizer,
    scenes: &[engine::demo::shapes::Scene],
    size: usize,
    batch: usize,
    seed: u64,
    dev: &Device,
) -> Result<()> {
    let steps = model.config.diffusion_steps;
    // 0.97: where DDIM's first steps decide the layout, the one place a
    // relation ("above") can lower the error that the binding does not.
    let ts: Vec<usize> = [0.1, 0.3, 0.5, 0.7, 0.9, 0.97]
        .iter()
        .map(|f| ((steps as f64 * f) as usize).min(steps - 1))
        .collect();
    println!(
        "{:>5} {:>10} | the true caption's gain over: {:>7} {:>8} {:>16} {:>18}",
        "t", "true", "empty", "other's", "colours swapped", "relation reversed"
    );
    let run = ProbeRun {
        model,
        tok,
        scenes,
        size,
        batch,
        ts: &ts,
        seed,
        dev,
    };
    let probe_errors = run.caption_errors()?;
    let errors = &probe_errors.by_caption;
    // "-" where no scene has the variant (e.g. --pairs: no colours to swap).
    let gain = |v: &VariantError| {
        if v.n == 0 {
            "-".to_string()
        } else {
            format!("{:.1}%", 100.0 * v.gain())
        }
    };
    for (t, e) in ts.iter().zip(errors) {
        println!(
            "{t:>5} {:>10.5} | {:>29} {:>7} {:>8} {:>16} {:>18}",
            e[0].error / e[0].n.max(1) as f64,
            "",
            gain(&e[1]),
            gain(&e[2]),
            gain(&e[3]),
            gain(&e[4])
        );
    }
    if let Some(e) = errors.first() {
        println!(
            "(scenes with colours to swap: {}; with a relation: {}; errors per image element)",
            e[3].n, e[4].n
        );
    }
    println!("colours swapped, the true caption's gain inside the objects' boxes:");
    println!(
        "{:>5} {:>22} {:>18}",
        "t", "held-out pairs' boxes", "seen pairs' boxes"
    );
    for (t, [held, seen]) in ts.iter().zip(&probe_errors.swapped_in_boxes) {
        let cell = |e: &VariantError| match e.n {
            0 => "-".to_string(),
            n => format!("{:.1}% (n {n})", 100.0 * e.gain()),
        };
        println!("{t:>5} {:>22} {:>18}", cell(held), cell(seen));
    }
    // Which path carries the caption (each path's gain over the empty caption
    // with the other path given the empty caption).
    println!(
        "the caption's paths: the true caption's gain over the empty one through\n\
         {:>5} {:>12} {:>22} {:>16}",
        "t", "both paths", "the pooled projection", "the attention"
    );
    for (t, [both, pooled, attention, neither]) in ts.iter().zip(run.path_errors()?) {
        let gain = |e: f64| 100.0 * (neither - e) / neither;
        println!(
            "{t:>5} {:>11.1}% {:>21.1}% {:>15.1}%",
            gain(both),
            gain(pooled),
            gain(attention)
        );
    }
    let d = text_distances(model, tok, scenes, dev)?;
    println!(
        "text features' distance from the true caption's, relative to their size:\n\
         {:>30} {:>7} {:>8} {:>16} {:>18}",
        "", "empty", "other's", "colours swapped", "relation reversed"
    );
    let cell = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.4}"));
    for (k, what) in ["pooled (transformer_proj)", "tokens in place (xf_out)"]
        .iter()
        .enumerate()
    {
        println!(
            "{what:>30} {:>7} {:>8} {:>16} {:>18}",
            cell(d[1][k]),
            cell(d[2][k]),
            cell(d[3][k]),
            cell(d[4][k])
        );
    }
    Ok(())
}

/// Per caption variant (`probe_captions`' order), how far the text
/// transformer's outputs move from the true caption's, relative to their
/// norm, as a mean over the scenes the variant applies to: [the pooled
/// projection added to the timestep embedding, the features of the tokens
/// both captions hold at the same place]. Colours moved one object on leave
/// the shape words in place: an encoder that reads a bag of words (nothing
/// of where a word stands) changes neither output for them, one that binds
/// "red" to "circle" changes the circle's features. `None` where no scene
/// has a shared token (the empty caption).
fn text_distances(
    model: &Glide,
    tok: &engine::glide::tokenizer::GlideTokenizer,
    scenes: &[engine::demo::shapes::Scene],
    dev: &Device,
) -> Result<[[Option<f64>; 2]; 5]> {
    let ctx = model.config.text_ctx;
    let n = scenes.len();
    let captions: Vec<[Option<String>; 5]> = (0..n).map(|i| probe_captions(scenes, i)).collect();
    // Per scene: the pooled features [emb], the token features [ctx, w],
    // the tokens and their mask [ctx].
    let encode = |v: usize| -> Result<[Vec<f32>; 4]> {
        let texts: Vec<&String> = captions
            .iter()
            .map(|c| c[v].as_ref().or(c[0].as_ref()).expect("the true caption"))
            .collect();
        let cond = text_cond(tok, ctx, &texts, dev);
        let (proj, xf) = model.encode_text(cond.tokens.clone(), cond.mask.clone());
        let [b, w, _, _] = xf.dims();
        let features = xf
            .reshape([b, w, ctx])
            .swap_dims(1, 2)
            .reshape([b * ctx, w]);
        Ok([
            floats(proj)?,
            floats(features)?,
            floats(cond.tokens.float())?,
            floats(cond.mask)?,
        ])
    };
    let truth = encode(0)?;
    let emb = truth[0].len() / n.max(1);
    let w = truth[1].len() / (n * ctx).max(1);
    let mut out = [[None; 2]; 5];
    for (v, row) in out.iter_mut().enumerate().skip(1) {
        let other = encode(v)?;
        let mut sums = [(0f64, 0usize); 2];
        for (i, c) in captions.iter().enumerate() {
            if c[v].is_none() {
                continue;
            }
            let p = i * emb..(i + 1) * emb;
            sums[0].0 += relative_distance(&other[0][p.clone()], &truth[0][p]);
            sums[0].1 += 1;
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for j in i * ctx..(i + 1) * ctx {
                let shared = truth[3][j] > 0.5 && other[3][j] > 0.5 && truth[2][j] == other[2][j];
                if shared {
                    a.extend_from_slice(&other[1][j * w..(j + 1) * w]);
                    b.extend_from_slice(&truth[1][j * w..(j + 1) * w]);
                }
            }
            if !a.is_empty() {
                sums[1].0 += relative_distance(&a, &b);
                sums[1].1 += 1;
            }
        }
        for (x, (sum, count)) in row.iter_mut().zip(sums) {
            *x = (count > 0).then(|| sum / count as f64);
        }
    }
    Ok(out)
}

/// |a − b| / |b| (0 where b is zero).
fn relative_distance(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut m) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        d += ((x - y) as f64).powi(2);
        m += (*y as f64).powi(2);
    }
    if m > 0.0 {
        (d / m).sqrt()
    } else {
        0.0
    }
}

/// The captions `--probe` compares for scene `i`: the true one, the empty
/// one, the next scene's, the colours moved one object on, the relation
/// reversed; `None` where a scene has no two colours or no relation.
fn probe_captions(scenes: &[Scene], i: usize) -> [Option<String>; 5] {
    let scene = &scenes[i];
    let objs = &scene.objects;
    let swapped = (objs.iter().any(|o| o.color != objs[0].color)).then(|| {
        let mut s = scene.clone();
        for (k, o) in s.objects.iter_mut().enumerate() {
            o.color = objs[(k + 1) % objs.len()].color;
        }
        s.caption()
    });
    let reversed = scene.relation_reversed().map(|s| s.caption());
    [
        Some(scene.caption()),
        Some(String::new()),
        Some(scenes[(i + 1) % scenes.len()].caption()),
        swapped,
        reversed,
    ]
}

/// One caption variant's summed eps error over the images it applies to,
/// and the true caption's over the same images.
#[derive(Clone, Copy, Default, Debug)]
struct VariantError {
    error: f64,
    true_error: f64,
    n: usize,
}

impl VariantError {
    /// How much lower the true caption's error is, relative to this one's.
    fn gain(&self) -> f64 {
        if self.error > 0.0 {
            (self.error - self.true_error) / self.error
        } else {
            0.0
        }
    }
}

/// The sampler's first step, from where training starts it (a scene noised
/// to `t`) and from where sampling does (pure noise): the mean colour of the
/// predicted x0 against the scenes'. At the top of GLIDE's cosine schedule
/// the noised image's mean still carries √ᾱ(t)·(the scene's mean), which for
/// scenes on white is a few standard errors of the noise's own mean; a model
/// that reads it there, and gets none from pure noise, starts every sample
/// on a wrong ground (the eleventh session's colour casts).
fn first_step_ground(
    model: &Glide,
    tok: &engine::glide::tokenizer::GlideTokenizer,
    scenes: &[engine::demo::shapes::Scene],
    size: usize,
    t: usize,
    dev: &Device,
) -> Result<()> {
    let cfg = &model.config;
    let sched = full_schedule(cfg)?;
    let ac = sched.alphas_cumprod[t];
    let n = scenes.len();
    let x0 = scene_planes(scenes.iter(), size, dev);
    let noise = Tensor::<4>::random([n, 3, size, size], Distribution::Normal(0.0, 1.0), dev);
    let captions: Vec<String> = scenes.iter().map(|s| s.caption()).collect();
    let cond = text_cond(tok, cfg.text_ctx, &captions.iter().collect::<Vec<_>>(), dev);
    let t_in = Tensor::<1>::from_data(TensorData::new(vec![t as f32; n], [n]), dev);
    let predict = |x_t: Tensor<4>| predicted_x0(model, x_t, &t_in, &cond, ac);
    let summary = |x: Tensor<4>| -> Result<String> {
        let v = floats(x)?;
        let hw = size * size;
        let mut rgb = [0.0f64; 3];
        for image in v.chunks_exact(3 * hw) {
            for (ch, plane) in image.chunks_exact(hw).enumerate() {
                rgb[ch] += plane.iter().map(|&p| p as f64).sum::<f64>();
            }
        }
        let per = |sum: f64| sum / v.len().max(1) as f64 * 3.0;
        Ok(format!(
            "{:>6.3} {:>6.3} {:>6.3} {:>9.2}",
            per(rgb[0]),
            per(rgb[1]),
            per(rgb[2]),
            ink_centre_over_edge(&v, size)
        ))
    };
    println!(
        "first sampling step (t = {t}): mean r g b of the predicted x0, in [-1, 1]; \
         ink centre/edge"
    );
    println!("  the scenes themselves        {}", summary(x0.clone())?);
    let trained = x0 * ac.sqrt() + noise.clone() * (1.0 - ac).sqrt();
    println!(
        "  from the scenes noised       {}",
        summary(predict(trained))?
    );
    println!(
        "  from pure noise (sampling)   {}",
        summary(predict(noise))?
    );
    first_step_relation(model, tok, scenes, size, t, dev)
}

/// The side where the relation puts object 0 (a unit vector, y downwards)
/// and the first two objects' colours; None without a relation or when the
/// two share a colour (their amounts could not be told apart).
fn pull_axis(scene: &Scene) -> Option<((f32, f32), usize, usize)> {
    let rel = scene.relation?;
    let (c0, c1) = (scene.objects[0].color, scene.objects[1].color);
    // above, below, left of, right of
    let side = [(0.0, -1.0), (0.0, 1.0), (-1.0, 0.0), (1.0, 0.0)][rel];
    (c0 != c1).then_some((side, c0, c1))
}

/// The ink (1 - brightness) per pixel in the central quarter of planar RGB
/// images in [-1, 1] over that outside it. The generator keeps objects off
/// the edges, so its scenes have more ink centrally; a model that knows
/// where it is in the image predicts that from pure noise too.
fn ink_centre_over_edge(images: &[f32], size: usize) -> f64 {
    let hw = size * size;
    let central = |p: usize| {
        let (x, y) = (p % size, p / size);
        (size / 4..size - size / 4).contains(&x) && (size / 4..size - size / 4).contains(&y)
    };
    let (mut ink, mut pixels) = ([0.0f64; 2], [0usize; 2]);
    for (i, &v) in images.iter().enumerate() {
        let k = usize::from(central(i % hw));
        ink[k] += (1.0 - v as f64) / 2.0;
        pixels[k] += 1;
    }
    let mean = |k: usize| ink[k] / pixels[k].max(1) as f64;
    mean(1) / mean(0).max(1e-9)
}

/// Pure-noise draws per scene for `first_step_relation`.
const RELATION_DRAWS: usize = 4;

/// Whether the first sampling step's layout reads the relation: from the
/// same pure noise, the predicted x0 under the true caption minus that under
/// the relation reversed (`relation_pull`), over the scenes whose first two
/// objects differ in colour. Chance is half the draws pulling each way; a
/// model that reads the relation pulls object 0's colour to its side.
fn first_step_relation(
    model: &Glide,
    tok: &engine::glide::tokenizer::GlideTokenizer,
    scenes: &[Scene],
    size: usize,
    t: usize,
    dev: &Device,
) -> Result<()> {
    let ac = full_schedule(&model.config)?.alphas_cumprod[t];
    // Each scene with its relation reversed (pull_axis implies a relation).
    let cases: Vec<(&Scene, Scene)> = scenes
        .iter()
        .filter(|s| pull_axis(s).is_some())
        .filter_map(|s| Some((s, s.relation_reversed()?)))
        .collect();
    let (mut toward, mut total, mut pull) = (0usize, 0usize, 0.0f64);
    for chunk in cases.chunks(16) {
        let n = chunk.len();
        let captions: Vec<String> = chunk
            .iter()
            .flat_map(|(s, reversed)| [s.caption(), reversed.caption()])
            .collect();
        let cond = text_cond(
            tok,
            model.config.text_ctx,
            &captions.iter().collect::<Vec<_>>(),
            dev,
        );
        let t_in = Tensor::<1>::from_data(TensorData::new(vec![t as f32; 2 * n], [2 * n]), dev);
        for _ in 0..RELATION_DRAWS {
            // Each scene's noise twice in a row: the captions' order.
            let noise =
                Tensor::<4>::random([n, 3, size, size], Distribution::Normal(0.0, 1.0), dev)
                    .repeat_dim(1, 2)
                    .reshape([2 * n, 3, size, size]);
            let x0 = floats(predicted_x0(model, noise, &t_in, &cond, ac))?;
            let plane = 3 * size * size;
            for (i, (scene, _)) in chunk.iter().enumerate() {
                let (a, b) = (&x0[2 * i * plane..], &x0[(2 * i + 1) * plane..]);
                if let Some(p) = relation_pull(&a[..plane], &b[..plane], scene, size) {
                    toward += usize::from(p > 0.0);
                    total += 1;
                    pull += p as f64;
                }
            }
        }
    }
    println!(
        "  the relation's pull (x0 under the true caption minus the reversed one, same noise): \
         toward the relation in {toward} of {total} draws ({:.1}%; chance 50%), mean {:+.5}",
        100.0 * toward as f64 / total.max(1) as f64,
        pull / total.max(1) as f64
    );
    // The pull is linear in x0, so a model predicting the mean layout of
    // each caption pulls, on average, what the scenes themselves pull
    // against their first two objects trading places.
    let planes = |s: &Scene| crate::train::planes(&render(s, size, 256 / size), size);
    let ideal: f64 = cases
        .iter()
        .filter_map(|(s, _)| relation_pull(&planes(s), &planes(&traded(s)), s, size))
        .map(f64::from)
        .sum();
    println!(
        "  (the scenes against their first two objects traded: mean {:+.5}, what a model knowing the layouts' rule would pull)",
        ideal / cases.len().max(1) as f64
    );
    Ok(())
}

/// `scene` with objects 0 and 1 trading places: a layout of the relation
/// reversed.
fn traded(scene: &Scene) -> Scene {
    let mut t = scene.clone();
    let (a, b) = (&scene.objects[0], &scene.objects[1]);
    (t.objects[0].cx, t.objects[0].cy) = (b.cx, b.cy);
    (t.objects[1].cx, t.objects[1].cy) = (a.cx, a.cy);
    t
}

/// How far the difference `x0 - x0_reversed` (planar RGB in [-1, 1]) moves
/// object 0's colour, relative to object 1's, along the scene's relation:
/// each colour's amount per pixel (the difference as a mix of the two
/// colours' offsets from white), weighted by the pixel's offset from the centre along
/// the side where the relation puts object 0 (in image widths), averaged
/// over the pixels. Positive: the true caption put object 0 more to its
/// side. None when `pull_axis` is.
fn relation_pull(x0: &[f32], x0_reversed: &[f32], scene: &Scene, size: usize) -> Option<f32> {
    let ((dx, dy), c0, c1) = pull_axis(scene)?;
    let hw = size * size;
    let offset = |c: usize| {
        engine::demo::shapes::COLORS[c]
            .1
            .map(|v| v as f32 / 127.5 - 2.0)
    };
    let (u0, u1) = (offset(c0), offset(c1));
    let dot = |a: [f32; 3], b: [f32; 3]| (0..3).map(|ch| a[ch] * b[ch]).sum::<f32>();
    // The two colours' amounts per pixel, unmixed jointly (least squares):
    // orange projects onto pink more than onto itself.
    let (g00, g01, g11) = (dot(u0, u0), dot(u0, u1), dot(u1, u1));
    let det = g00 * g11 - g01 * g01;
    let pull: f32 = (0..hw)
        .map(|p| {
            let d = [0, 1, 2].map(|ch| x0[ch * hw + p] - x0_reversed[ch * hw + p]);
            let (b0, b1) = (dot(u0, d), dot(u1, d));
            let (a0, a1) = ((g11 * b0 - g01 * b1) / det, (g00 * b1 - g01 * b0) / det);
            let x = ((p % size) as f32 + 0.5) / size as f32 - 0.5;
            let y = ((p / size) as f32 + 0.5) / size as f32 - 0.5;
            (a0 - a1) * (dx * x + dy * y)
        })
        .sum();
    Some(pull / hw.max(1) as f32)
}

/// The x0 that one step at `t` (`ac`: its alphas_cumprod) predicts from
/// `x_t`, clamped to [-1, 1] as sampling does.
fn predicted_x0(
    model: &Glide,
    x_t: Tensor<4>,
    t_in: &Tensor<1>,
    cond: &Cond,
    ac: f64,
) -> Tensor<4> {
    let eps = model
        .forward(x_t.clone(), t_in.clone(), cond)
        .narrow(1, 0, 3);
    (x_t * (1.0 / ac).sqrt() - eps * (1.0 / ac - 1.0).sqrt()).clamp(-1.0, 1.0)
}

/// The model's full (unrespaced) schedule, as training noises with it.
fn full_schedule(cfg: &GlideConfig) -> Result<Schedule> {
    Ok(Schedule::new(
        &cfg.noise_schedule,
        cfg.diffusion_steps,
        &cfg.diffusion_steps.to_string(),
    )?)
}

/// Scenes rendered as in training, `[n, 3, size, size]` in [-1, 1].
fn scene_planes<'a>(
    scenes: impl ExactSizeIterator<Item = &'a engine::demo::shapes::Scene>,
    size: usize,
    dev: &Device,
) -> Tensor<4> {
    let n = scenes.len();
    let v: Vec<f32> = scenes
        .flat_map(|s| crate::train::planes(&render(s, size, 256 / size), size))
        .collect();
    Tensor::<4>::from_data(TensorData::new(v, [n, 3, size, size]), dev)
}

/// The probe's eps errors, per t.
struct ProbeErrors {
    /// By caption variant, over whole images (`probe_captions`' order).
    by_caption: Vec<[VariantError; 5]>,
    /// The swapped colours' against the true caption's inside the boxes of
    /// the objects whose (true) colour–shape pair is held out, and of those
    /// whose pair is seen: where a swapped caption's lower error lies.
    swapped_in_boxes: Vec<[VariantError; 2]>,
}

/// Adds one object box's errors (per image element) to `sum`.
fn add_box(sum: &mut VariantError, error: &[f32], true_error: &[f32], inside: &[f32]) {
    let pixels: f32 = inside.iter().sum();
    if pixels == 0.0 {
        return;
    }
    let dot = |e: &[f32]| e.iter().zip(inside).map(|(a, b)| a * b).sum::<f32>() as f64;
    sum.error += dot(error) / (3.0 * pixels as f64);
    sum.true_error += dot(true_error) / (3.0 * pixels as f64);
    sum.n += 1;
}

/// Scenes `idx` rendered at `size` and noised to ᾱ = `alpha_bar` with
/// noise drawn on the host from `seed` and the batch's first index: (x_t,
/// noise), the same for every model and run.
fn noised(
    scenes: &[Scene],
    idx: &[usize],
    size: usize,
    alpha_bar: f64,
    seed: u64,
    dev: &Device,
) -> (Tensor<4>, Tensor<4>) {
    let b = idx.len();
    let x0 = scene_planes(idx.iter().map(|&i| &scenes[i]), size, dev);
    let mut rng = Rng(seed ^ idx.first().copied().unwrap_or(0) as u64);
    let noise: Vec<f32> = (0..b * 3 * size * size)
        .map(|_| crate::train::normal(&mut rng))
        .collect();
    let noise = Tensor::<4>::from_data(TensorData::new(noise, [b, 3, size, size]), dev);
    (
        x0 * alpha_bar.sqrt() + noise.clone() * (1.0 - alpha_bar).sqrt(),
        noise,
    )
}

/// What the probe's error measures run on: `scenes` at `size`, noised at
/// every timestep of `ts` with host noise from `seed` and the timestep (the
/// same for every model and run), `batch` scenes at a time.
#[derive(Clone, Copy)]
struct ProbeRun<'a> {
    model: &'a Glide,
    tok: &'a engine::glide::tokenizer::GlideTokenizer,
    scenes: &'a [Scene],
    size: usize,
    batch: usize,
    ts: &'a [usize],
    seed: u64,
    dev: &'a Device,
}

impl ProbeRun<'_> {
    /// `f(ti, idx, x_t, noise, t)` for every timestep `ts[ti]` and every
    /// batch of scenes `idx`.
    fn for_noised_batches(
        &self,
        mut f: impl FnMut(usize, &[usize], Tensor<4>, Tensor<4>, Tensor<1>) -> Result<()>,
    ) -> Result<()> {
        let ProbeRun {
            model,
            scenes,
            size,
            batch,
            ts,
            seed,
            dev,
            ..
        } = *self;
        let ac = &full_schedule(&model.config)?.alphas_cumprod;
        for (ti, &t) in ts.iter().enumerate() {
            for start in (0..scenes.len()).step_by(batch) {
                let idx: Vec<usize> = (start..(start + batch).min(scenes.len())).collect();
                let (x_t, noise) =
                    noised(scenes, &idx, size, ac[t], seed ^ ((t as u64) << 32), dev);
                let t_in = Tensor::<1>::from_data(
                    TensorData::new(vec![t as f32; idx.len()], [idx.len()]),
                    dev,
                );
                f(ti, &idx, x_t, noise, t_in)?;
            }
        }
        Ok(())
    }

    /// Which path carries the caption, per timestep: the eps error (per image
    /// element, summed over the scenes) with the true caption through [both
    /// paths, the pooled projection alone, the attention alone, neither], the
    /// other path given the empty caption's encoding, which the model knows
    /// (CFG trains on it), rather than zeros, which it does not.
    fn path_errors(&self) -> Result<Vec<[f64; 4]>> {
        let ProbeRun {
            model,
            tok,
            size,
            dev,
            scenes,
            ts,
            ..
        } = *self;
        let cfg = &model.config;
        let per = (3 * size * size) as f64;
        let mut out = vec![[0f64; 4]; ts.len()];
        self.for_noised_batches(|ti, idx, x_t, noise, t_in| {
            let b = idx.len();
            let captions: Vec<String> = idx.iter().map(|&i| scenes[i].caption()).collect();
            let empty = vec![String::new(); b];
            let encode = |texts: &[String]| {
                let refs: Vec<&String> = texts.iter().collect();
                let cond = text_cond(tok, cfg.text_ctx, &refs, dev);
                let (proj, out) = model.encode_text(cond.tokens.clone(), cond.mask.clone());
                (cond, proj, out)
            };
            let (cond, true_proj, true_out) = encode(&captions);
            let (_, empty_proj, empty_out) = encode(&empty);
            let pairs = [
                (true_proj.clone(), true_out.clone()),
                (true_proj, empty_out.clone()),
                (empty_proj.clone(), true_out),
                (empty_proj, empty_out),
            ];
            for (sum, (proj, xf_out)) in out[ti].iter_mut().zip(pairs) {
                let eps = model
                    .forward_encoded(x_t.clone(), t_in.clone(), &cond, proj, xf_out)
                    .narrow(1, 0, 3);
                let squared = (eps - noise.clone()).powf_scalar(2.0);
                *sum += floats(squared.sum())?[0] as f64 / per;
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Per timestep and caption variant (`probe_captions`' order): the eps
    /// error, as a mean squared error per element, summed over the images the
    /// variant applies to, on the same noised images for every variant; and the
    /// swapped variant's inside the objects' boxes. The noise comes from `seed`
    /// alone (drawn on the host), the same for every model and run.
    fn caption_errors(&self) -> Result<ProbeErrors> {
        let ProbeRun {
            model,
            tok,
            scenes,
            size,
            dev,
            ts,
            ..
        } = *self;
        let cfg = &model.config;
        let n = scenes.len();
        let captions: Vec<[Option<String>; 5]> =
            (0..n).map(|i| probe_captions(scenes, i)).collect();
        let per = (3 * size * size) as f64;
        let mut out = vec![[VariantError::default(); 5]; ts.len()];
        let mut in_boxes = vec![[VariantError::default(); 2]; ts.len()];
        self.for_noised_batches(|ti, idx, x_t, noise, t_in| {
            let (sums, boxes) = (&mut out[ti], &mut in_boxes[ti]);
            let (mut true_errors, mut true_maps) = (Vec::new(), Vec::new());
            for (v, sum) in sums.iter_mut().enumerate() {
                let applies: Vec<bool> = idx.iter().map(|&i| captions[i][v].is_some()).collect();
                if !applies.iter().any(|&a| a) {
                    continue;
                }
                // Rows the variant does not apply to run with the true
                // caption (one batch shape) and are not counted.
                let texts: Vec<&String> = idx
                    .iter()
                    .map(|&i| {
                        captions[i][v]
                            .as_ref()
                            .or(captions[i][0].as_ref())
                            .expect("the true caption is always there")
                    })
                    .collect();
                let cond = text_cond(tok, cfg.text_ctx, &texts, dev);
                let eps = model
                    .forward(x_t.clone(), t_in.clone(), &cond)
                    .narrow(1, 0, 3);
                let squared = (eps - noise.clone()).powf_scalar(2.0).sum_dim(1);
                let maps = if v == 0 || v == 3 {
                    floats(squared.clone())?
                } else {
                    Vec::new()
                };
                let errors = floats(squared.sum_dim(3).sum_dim(2))?;
                if v == 0 {
                    true_errors = errors.clone();
                    true_maps = maps.clone();
                }
                if v == 3 {
                    let px = size * size;
                    for (k, &i) in idx.iter().enumerate().filter(|(k, _)| applies[*k]) {
                        let (e, te) = (&maps[k * px..][..px], &true_maps[k * px..][..px]);
                        for o in &scenes[i].objects {
                            let keep = region_keep_mask(o.box_with_margin(0.0), size);
                            let inside: Vec<f32> = keep.iter().map(|k| 1.0 - k).collect();
                            let seen = !held_out(o.color, o.shape) as usize;
                            add_box(&mut boxes[seen], e, te, &inside);
                        }
                    }
                }
                for (k, &a) in applies.iter().enumerate() {
                    if a {
                        sum.error += errors[k] as f64 / per;
                        sum.true_error += true_errors[k] as f64 / per;
                        sum.n += 1;
                    }
                }
            }
            Ok(())
        })?;
        Ok(ProbeErrors {
            by_caption: out,
            swapped_in_boxes: in_boxes,
        })
    }
}

/// The mean of the radii `r` (0 when empty).
fn mean_radius(r: impl Iterator<Item = f32>) -> f32 {
    let (sum, n) = r.fold((0.0, 0), |(s, n), r| (s + r, n + 1));
    sum / n.max(1) as f32
}

/// One image of the report: row, index, caption, named / found, exact,
/// relation (`-` without one), then each found object as
/// `colour shape @cx,cy r=… px=…` (centres and sizes in image fractions).
fn report_line(label: &str, i: usize, scene: &Scene, s: &Score, found: &[Found]) -> String {
    let relation = s.relation.map_or("-".to_string(), |r| format!("{r:.0}"));
    let objects: Vec<String> = found
        .iter()
        .map(|f| {
            format!(
                "{} {} @{:.2},{:.2} r={:.2} px={}",
                COLORS[f.color].0, SHAPES[f.shape], f.cx, f.cy, f.r, f.pixels
            )
        })
        .collect();
    format!(
        "{label}\t{i}\t{}\t{}/{}\texact {:.0}\trelation {relation}\t{}\n",
        scene.caption(),
        s.named,
        s.detected,
        s.exact,
        objects.join("; ")
    )
}

fn write_grid(path: &std::path::Path, rows: &[Vec<Vec<u8>>], size: usize) -> Result<()> {
    let (img, w, h) = tile_rows(rows, size);
    let tmp = path.with_extension("partial");
    {
        let file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let mut enc = png::Encoder::new(file, w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()?.write_image_data(&img)?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe's measures at 16 px, two scenes a batch, t = 100 and 600.
    fn probe_run<'a>(
        model: &'a Glide,
        tok: &'a engine::glide::tokenizer::GlideTokenizer,
        scenes: &'a [Scene],
        dev: &'a Device,
    ) -> ProbeRun<'a> {
        ProbeRun {
            model,
            tok,
            scenes,
            size: 16,
            batch: 2,
            ts: &[100, 600],
            seed: 5,
            dev,
        }
    }

    /// The relation's pull reads a layout: a clean render minus the render
    /// with objects 0 and 1 trading places pulls toward the relation, the
    /// other way round away from it, and nothing from itself; every relation
    /// and odd sizes; none for a pair of one colour.
    #[test]
    fn the_relation_pull_reads_which_side_object_0_is_on() {
        let mut rng = Rng(11);
        let mut relations = [0; 4];
        let mut tried = 0;
        while relations.iter().any(|&n| n < 3) {
            let scene = Scene::random(&mut rng, &|_, _| true);
            if pull_axis(&scene).is_none() {
                continue;
            }
            tried += 1;
            let size = [32, 27, 19][tried % 3];
            let planes = |s: &Scene| crate::train::planes(&render(s, size, 4), size);
            let (x, y) = (planes(&scene), planes(&traded(&scene)));
            let pull = |u: &[f32], v: &[f32]| relation_pull(u, v, &scene, size).unwrap();
            assert!(
                pull(&x, &y) > 0.0 && pull(&y, &x) < 0.0,
                "{}",
                scene.caption()
            );
            assert!((pull(&x, &y) + pull(&y, &x)).abs() < 1e-5);
            assert_eq!(pull(&x, &x), 0.0);
            relations[scene.relation.unwrap()] += 1;
        }
        let one_colour = pair_scenes(1, 4).remove(0);
        assert_eq!(relation_pull(&[], &[], &one_colour, 0), None);
    }

    #[test]
    fn mean_radius_is_the_mean_or_zero() {
        assert_eq!(mean_radius([0.1, 0.2, 0.3].into_iter()), 0.2);
        assert_eq!(mean_radius(std::iter::empty()), 0.0);
    }

    #[test]
    fn the_report_lists_what_the_checker_found() {
        for scene in eval_scenes(6, 11) {
            let found = detect(&render(&scene, 64, 4), 64);
            let line = report_line("cfg 3", 5, &scene, &score(&scene, &found), &found);
            let fields: Vec<&str> = line.trim_end().split('\t').collect();
            assert_eq!(fields[..3], ["cfg 3", "5", &scene.caption()]);
            let n = scene.objects.len();
            assert_eq!(fields[3], format!("{n}/{n}"), "{line}");
            assert_eq!(fields[4], "exact 1");
            assert_eq!(fields[5] == "relation -", scene.relation.is_none() || n < 2);
            assert_eq!(fields[6].split("; ").count(), n, "{line}");
            for o in &scene.objects {
                let name = format!("{} {} @", COLORS[o.color].0, SHAPES[o.shape]);
                assert!(fields[6].contains(&name), "{name} missing from {line}");
            }
        }
    }

    /// Ink centre/edge: 1 for a flat image (any size), above 1 for a
    /// central blot, below for a frame; and the scenes are central.
    #[test]
    fn ink_centre_over_edge_sees_where_the_ink_is() {
        for size in [8, 13, 32] {
            let flat = vec![0.3f32; 2 * 3 * size * size];
            assert!((ink_centre_over_edge(&flat, size) - 1.0).abs() < 1e-6);
            let image = |ink: &dyn Fn(usize, usize) -> bool| -> Vec<f32> {
                (0..3 * size * size)
                    .map(|i| {
                        if ink(i % size, i / size % size) {
                            -1.0
                        } else {
                            1.0
                        }
                    })
                    .collect()
            };
            let blot = image(&|x, y| x.abs_diff(size / 2) < 2 && y.abs_diff(size / 2) < 2);
            assert!(ink_centre_over_edge(&blot, size) > 3.0, "{size}");
            let frame = image(&|x, y| x.min(y) == 0 || x.max(y) == size - 1);
            assert!(ink_centre_over_edge(&frame, size) < 0.5, "{size}");
        }
        let scenes: Vec<f32> = eval_scenes(64, 2)
            .iter()
            .flat_map(|s| crate::train::planes(&render(s, 32, 8), 32))
            .collect();
        assert!(ink_centre_over_edge(&scenes, 32) > 1.3);
    }

    #[test]
    fn seen_and_pair_scenes_have_no_held_out_pair_and_held_out_ones_have_one() {
        let seen = seen_scenes(200, 3);
        assert_eq!(seen, seen_scenes(200, 3));
        let pairs = |s: &Scene| -> Vec<(usize, usize)> {
            s.objects.iter().map(|o| (o.color, o.shape)).collect()
        };
        assert!(seen
            .iter()
            .all(|s| pairs(s).iter().all(|&(c, sh)| !held_out(c, sh))));
        let related = pair_scenes(200, 3);
        assert_eq!(related, pair_scenes(200, 3));
        assert!(related.iter().all(|s| {
            let o = &s.objects;
            s.relation.is_some() && o.len() == 2 && o[0].color == o[1].color
        }));
        assert!(related
            .iter()
            .all(|s| pairs(s).iter().all(|&(c, sh)| !held_out(c, sh))));
        assert!(eval_scenes(200, 3)
            .iter()
            .all(|s| pairs(s).iter().any(|&(c, sh)| held_out(c, sh))));
        // Every seen pair shows up: the seen eval spans the training pairs.
        let mut shown = std::collections::HashSet::new();
        seen.iter().flat_map(pairs).for_each(|p| {
            shown.insert(p);
        });
        assert_eq!(shown.len(), 8 * 6 - engine::demo::shapes::HELD_OUT.len());
    }

    /// `--trace` keeps the predicted x0 of every step for every image, in
    /// step order: DDIM's last step (ᾱ_prev = 1) returns its x0, so the
    /// trace ends on the samples themselves.
    #[test]
    fn the_trace_holds_every_steps_x0_and_ends_on_the_sample() {
        let dev = Device::flex();
        let cfg = crate::train::demo_config("base").unwrap();
        let tok = tokenizer().unwrap();
        let model = Glide::new(&cfg, &Init::Random(1), &dev).unwrap();
        let sched = Schedule::new(&cfg.noise_schedule, cfg.diffusion_steps, "ddim5").unwrap();
        let captions = vec!["a red circle".to_string(), "emoji of cat".to_string()];
        let mut trace = Vec::new();
        let spec = Sampling {
            sched: &sched,
            guidance: 2.0,
            clip: None,
            ancestral: false,
            size: 16,
            temperature: 1.0,
        };
        let images = sample(
            &model,
            &tok,
            &captions,
            &spec,
            Images::default(),
            &dev,
            Some(&mut trace),
        )
        .unwrap();
        assert_eq!(trace.len(), 5);
        assert!(trace.iter().all(|step| step.len() == 2));
        for (last, img) in trace[4].iter().zip(&images) {
            assert_eq!(img.len(), 16 * 16 * 3);
            let off = last.iter().zip(img).filter(|(a, b)| a.abs_diff(**b) > 1);
            assert_eq!(off.count(), 0);
        }
        assert_ne!(trace[0], trace[4]);
    }

    /// The upsampler draws at `factor` times the low-res side; a base
    /// refuses a low-res image and an upsampler needs one.
    #[test]
    fn the_upsampler_draws_at_its_factor_and_models_check_their_inputs() {
        let dev = Device::flex();
        let tok = tokenizer().unwrap();
        let up_cfg = crate::train::demo_config("upsample").unwrap();
        let sched = Schedule::new(&up_cfg.noise_schedule, up_cfg.diffusion_steps, "ddim2").unwrap();
        let with = |kind: &str| Upsampler {
            model: Glide::new(
                &crate::train::demo_config(kind).unwrap(),
                &Init::Random(2),
                &dev,
            )
            .unwrap(),
            sched: sched.clone(),
            factor: 4,
        };
        let low: Vec<Vec<u8>> = (0..2u8).map(|k| vec![40 * k + 7; 8 * 8 * 3]).collect();
        let captions = vec!["a red circle".to_string(), String::new()];
        let up = with("upsample");
        let big = up.upsample(&tok, &captions, &low, 8, &dev).unwrap();
        assert_eq!(big.len(), 2);
        assert!(big.iter().all(|img| img.len() == 32 * 32 * 3));
        assert!(with("base")
            .upsample(&tok, &captions, &low, 8, &dev)
            .is_err());
        let spec = Sampling {
            sched: &sched,
            guidance: 0.0,
            clip: None,
            ancestral: false,
            size: 32,
            temperature: 1.0,
        };
        assert!(sample(
            &up.model,
            &tok,
            &captions,
            &spec,
            Images::default(),
            &dev,
            None
        )
        .is_err());
    }

    #[test]
    fn enlarging_repeats_each_pixel_factor_squared_times() {
        let rgb: Vec<u8> = (0..2 * 2 * 3).map(|v| v as u8).collect();
        let big = enlarge(&rgb, 2, 3);
        assert_eq!(big.len(), 6 * 6 * 3);
        for y in 0..6 {
            for x in 0..6 {
                let src = ((y / 3) * 2 + x / 3) * 3;
                assert_eq!(big[(y * 6 + x) * 3..(y * 6 + x) * 3 + 3], rgb[src..src + 3]);
            }
        }
    }

    /// Inpainting keeps the source where the mask says keep (every step's
    /// x0 is pasted over, and DDIM's last step returns x0), whatever the
    /// model draws in the region; and a model without inpainting inputs refuses them.
    #[test]
    fn inpainting_keeps_the_source_outside_the_region() {
        let dev = Device::flex();
        let cfg = crate::train::demo_config("base-inpaint").unwrap();
        let tok = tokenizer().unwrap();
        let model = Glide::new(&cfg, &Init::Random(3), &dev).unwrap();
        let sched = Schedule::new(&cfg.noise_schedule, cfg.diffusion_steps, "ddim3").unwrap();
        let size = 24;
        let cases = inpaint_cases(3, 11);
        let sources: Vec<Vec<u8>> = cases.iter().map(|c| render(&c.source, size, 4)).collect();
        let captions: Vec<String> = cases.iter().map(|c| c.target.caption()).collect();
        for guidance in [0.0, 3.0] {
            let spec = Sampling {
                sched: &sched,
                guidance,
                clip: None,
                ancestral: false,
                size,
                temperature: 1.0,
            };
            let inpaint = Some(inpaint_inputs(&cases, &sources, size, &dev));
            let images = Images {
                inpaint,
                ..Default::default()
            };
            let images = sample(&model, &tok, &captions, &spec, images, &dev, None).unwrap();
            for ((case, src), img) in cases.iter().zip(&sources).zip(&images) {
                let keep = case.keep_mask(size);
                let (mut kept, mut changed) = (0, 0);
                for (i, (a, b)) in src.iter().zip(img).enumerate() {
                    if keep[i / 3] == 1.0 {
                        assert!(a.abs_diff(*b) <= 1, "pixel {} changed outside", i / 3);
                        kept += 1;
                    } else if a != b {
                        changed += 1;
                    }
                }
                assert!(kept > 0 && changed > 0, "{kept} kept, {changed} redrawn");
            }
        }
        let base = crate::train::demo_config("base").unwrap();
        let base = Glide::new(&base, &Init::Random(4), &dev).unwrap();
        let spec = Sampling {
            sched: &sched,
            guidance: 0.0,
            clip: None,
            ancestral: false,
            size,
            temperature: 1.0,
        };
        let images = Images {
            inpaint: Some(inpaint_inputs(&cases, &sources, size, &dev)),
            ..Default::default()
        };
        assert!(sample(&base, &tok, &captions, &spec, images, &dev, None).is_err());
    }

    /// The text distances see word order and only it: with every position's
    /// embedding the same (positional and padding rows equal), the text
    /// transformer is blind to order, and colours moved one object on change
    /// neither its pooled output nor the shape words' features, while a
    /// reversed relation (another word) does; with positions it differs.
    #[test]
    fn text_distances_see_word_order() {
        let dev = Device::flex();
        let cfg = crate::train::demo_config("base").unwrap();
        let tok = tokenizer().unwrap();
        let scenes = eval_scenes(8, 3);
        let random = Glide::new(&cfg, &Init::Random(9), &dev).unwrap();
        let build = |order_blind: bool| {
            random
                .edited(&dev, |name, shape, v| {
                    let rows = name == "positional_embedding" || name == "padding_embedding";
                    if order_blind && rows {
                        let w = shape[1];
                        let first = v[..w].to_vec();
                        for row in v.chunks_mut(w) {
                            row.copy_from_slice(&first);
                        }
                    }
                    // Sharper attention than a random init's (nearly uniform)
                    // so that order, where it is seen, counts.
                    if name.contains("c_qkv") {
                        v.iter_mut().for_each(|x| *x *= 10.0);
                    }
                })
                .unwrap()
        };
        let blind = text_distances(&build(true), &tok, &scenes, &dev).unwrap();
        let seeing = text_distances(&build(false), &tok, &scenes, &dev).unwrap();
        let (swapped, reversed) = (3, 4);
        for k in 0..2 {
            let b = blind[swapped][k].unwrap();
            assert!(b < 1e-5, "order-blind, swapped colours, output {k}: {b}");
            let r = blind[reversed][k].unwrap();
            assert!(r > 1e-3, "order-blind, reversed relation, output {k}: {r}");
            let s = seeing[swapped][k].unwrap();
            assert!(s > 1e-3, "with positions, swapped colours, output {k}: {s}");
        }
        // The empty caption shares no token; the others share at least "a".
        assert!(blind[1][1].is_none() && blind[1][0].unwrap() > 1e-3);
        assert!(seeing[2][1].is_some());
    }

    /// The probe compares captions on the same noised images: a model whose
    /// text reaches nothing (its text projections zeroed) shows exactly no
    /// gap, and the same model with them shows one.
    #[test]
    fn the_caption_probe_sees_the_text_path_and_only_it() {
        let dev = Device::flex();
        let cfg = crate::train::demo_config("base").unwrap();
        let tok = tokenizer().unwrap();
        let scenes = eval_scenes(6, 7);
        let random = Glide::new(&cfg, &Init::Random(5), &dev).unwrap();
        // The same weights with the text projections scaled by `k`: 0 cuts
        // the text off; 10 makes its (random) effect plainly measurable,
        // where the raw random model's gap can fall to 1e-5.
        let text_scaled = |k: f32| {
            random
                .edited(&dev, |name, _, v| {
                    let text = name.starts_with("transformer_proj") || name.contains("encoder_kv");
                    // A random transformer attends almost uniformly, so its
                    // output is nearly a function of the caption's word set,
                    // and the swapped and reversed captions' gaps fell to
                    // 1e-5: sharper attention makes word order count.
                    if text || name.contains("c_qkv") {
                        v.iter_mut().for_each(|x| *x *= k);
                    }
                })
                .unwrap()
        };
        let (deaf, loud) = (text_scaled(0.0), text_scaled(10.0));
        let errors = |m: &Glide| probe_run(m, &tok, &scenes, &dev).caption_errors().unwrap();
        // burn's CPU backend splits its reductions across threads, so equal
        // inputs agree to rounding (1e-7 relative), not always bit for bit;
        // the text path moves the error by 1e-3 and more.
        let scenes_applying = |v: usize| {
            (0..scenes.len())
                .filter(|&i| probe_captions(&scenes, i)[v].is_some())
                .count()
        };
        // Every variant has scenes to run on.
        assert!((0..5).all(|v| scenes_applying(v) > 0));
        // The swapped captions' object boxes: one per object of the scenes
        // with colours to swap, split by whether its pair is held out.
        let boxes = |seen: bool| -> usize {
            (0..scenes.len())
                .filter(|&i| probe_captions(&scenes, i)[3].is_some())
                .flat_map(|i| &scenes[i].objects)
                .filter(|o| held_out(o.color, o.shape) != seen)
                .count()
        };
        assert!(boxes(false) > 0 && boxes(true) > 0);
        let deaf_errors = errors(&deaf);
        for (per_t, in_boxes) in deaf_errors
            .by_caption
            .iter()
            .zip(&deaf_errors.swapped_in_boxes)
        {
            for (v, e) in per_t.iter().enumerate() {
                assert_eq!(e.n, scenes_applying(v));
                assert!(e.true_error.is_finite() && e.true_error > 0.0);
                assert!(e.gain().abs() < 1e-5, "variant {v}: {e:?}");
            }
            for (seen, e) in in_boxes.iter().enumerate() {
                assert_eq!(e.n, boxes(seen == 1));
                assert!(e.true_error > 0.0 && e.gain().abs() < 1e-5, "{e:?}");
            }
        }
        // The paths: the loud model's text reaches the UNet through both, so
        // each alone gains over the empty caption; with one path's weights
        // zeroed (its text cut) that path alone gains nothing, and "both"
        // equals the other path alone. Errors are sums over the same noise.
        let paths = |m: &Glide| probe_run(m, &tok, &scenes, &dev).path_errors().unwrap();
        let gain = |e: f64, neither: f64| (neither - e) / neither;
        for [both, pooled, attention, neither] in paths(&loud) {
            assert!(gain(both, neither).abs() > 1e-4);
            assert!(gain(pooled, neither).abs() > 1e-4 && gain(attention, neither).abs() > 1e-4);
        }
        let cut = |part: &str| {
            loud.edited(&dev, |name, _, v| {
                if name.contains(part) {
                    v.fill(0.0);
                }
            })
            .unwrap()
        };
        for [both, pooled, attention, neither] in paths(&cut("encoder_kv")) {
            assert!(
                gain(attention, neither).abs() < 1e-5,
                "{attention} {neither}"
            );
            assert!(gain(pooled, neither).abs() > 1e-4);
            assert!((both - pooled).abs() / both < 1e-5);
        }
        for [both, pooled, attention, neither] in paths(&cut("transformer_proj")) {
            assert!(gain(pooled, neither).abs() < 1e-5, "{pooled} {neither}");
            assert!(gain(attention, neither).abs() > 1e-4);
            assert!((both - attention).abs() / both < 1e-5);
        }
        // The same noise as the caption variants: "both" is the true caption's error.
        let [both, ..] = paths(&deaf)[0];
        let true_error = deaf_errors.by_caption[0][0].error;
        assert!(
            (both - true_error).abs() / true_error < 1e-5,
            "{both} {true_error}"
        );
        let loud_errors = errors(&loud);
        for (per_t, in_boxes) in loud_errors
            .by_caption
            .iter()
            .zip(&loud_errors.swapped_in_boxes)
        {
            // Ten times the rounding bound above (measured: 6e-4 to 3e-2).
            for (v, e) in per_t.iter().enumerate().skip(1) {
                assert!(e.gain().abs() > 1e-4, "variant {v}: {e:?}");
            }
            for e in in_boxes {
                assert!(e.gain().abs() > 1e-4, "{e:?}");
            }
        }
    }
}
