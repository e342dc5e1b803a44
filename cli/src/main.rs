//! `webglide`: the native command line (desktop and GPU servers).

mod bench;
mod convert;
mod eval;
mod generate;
mod unclip;

use anyhow::Result;
use clap::{Parser, Subcommand};
use engine::glide::pipeline::Sampler;

#[derive(Parser)]
#[command(
    name = "webglide",
    version,
    about = "GLIDE / unCLIP text-to-image on your GPU (wgpu)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show the GPU adapter, its optional features and limits.
    Info,
    /// Text to image. GLIDE (the text2im notebook): base model with
    /// classifier-free guidance, then the upsampler (DDIM). unCLIP (Karlo):
    /// prior, decoder, super-resolution.
    Generate {
        #[command(flatten)]
        gen: GenArgs,
        /// glide or unclip.
        #[arg(long, default_value = "glide")]
        pipeline: String,
        #[command(flatten)]
        unclip: UnclipArgs,
    },
    /// unCLIP image variations (Karlo's i2i): the image's CLIP embedding →
    /// decoder → super-resolution, N images.
    Variations {
        #[arg(long)]
        image: std::path::PathBuf,
        #[arg(long, default_value_t = 4)]
        n: usize,
        /// Folder with converted unCLIP models in clip-text/, clip-visual/, decoder/, sr/.
        #[arg(long)]
        model: std::path::PathBuf,
        #[command(flatten)]
        unclip: UnclipArgs,
        /// Random seed (default: random; printed with the result).
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Inpainting (the inpaint notebook). Mask: white = regenerate, black = keep;
    /// any image size (resized with antialiased bicubic like PIL).
    Inpaint {
        #[arg(long)]
        image: std::path::PathBuf,
        #[arg(long)]
        mask: std::path::PathBuf,
        #[command(flatten)]
        gen: GenArgs,
    },
    /// Replay a GLIDE fixture case folder (config.json, weights.safetensors,
    /// io.safetensors, trace.safetensors): the forward pass with every
    /// intermediate and the whole sampling trace with the recorded draws.
    /// Exits non-zero when any tensor is over tolerance.
    CheckFixture {
        dir: std::path::PathBuf,
        /// Relative tolerance (max |error| / max |expected|).
        #[arg(long, default_value_t = 1e-4)]
        tol: f64,
        /// Weight storage type to test (quantised types need a looser --tol).
        #[arg(long, default_value = "f32")]
        quant: String,
        /// Use a converted model folder (manifest.json + shards) instead of
        /// the case's weights.safetensors.
        #[arg(long)]
        model: Option<std::path::PathBuf>,
    },
    /// Convert a released checkpoint to safetensors shards of at most 64 MiB
    /// plus manifest.json (config, tensor -> shard, storage type, sha256 of
    /// every shard): GLIDE's .pt (f32 or f16) or Karlo's .ckpt (unCLIP kinds).
    Convert {
        checkpoint: std::path::PathBuf,
        /// GLIDE: base, upsample, base-inpaint, upsample-inpaint and the
        /// noisy CLIP's clip-image-enc, clip-text-enc; unCLIP: clip-text,
        /// clip-visual, prior, decoder, sr.
        #[arg(long)]
        kind: String,
        /// Storage type of the conv/linear weights: f32, f16, q8 or q4.
        #[arg(long, default_value = "f32")]
        quant: String,
        #[arg(long)]
        out: std::path::PathBuf,
        /// Architecture as JSON (GLIDE: create_model_and_diffusion kwargs;
        /// noisy CLIP: its config.yaml values; unCLIP: the official config /
        /// module kwargs); default: the released model of --kind.
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// unCLIP prior: the CLIP statistics (ViT-L-14_stats.th).
        #[arg(long)]
        stats: Option<std::path::PathBuf>,
        /// unCLIP sr: the side of the images it makes.
        #[arg(long, default_value_t = 256)]
        sr_size: usize,
        /// Replace --out if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Evaluations that print scores.
    Eval {
        #[command(subcommand)]
        what: EvalWhat,
    },
    /// Benchmarks that print numbers.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand)]
enum EvalWhat {
    /// Shape prompts with colour–shape pairs held out of the demo model's
    /// training, scored by the shapes checker (colour, shape, binding,
    /// relation) per guidance scale.
    Shapes {
        #[command(flatten)]
        args: EvalArgs,
        /// Comma-separated CLIP guidance scales, rows after the CFG ones
        /// (needs clip-image-enc/ and clip-text-enc/ in --model).
        #[arg(long, value_delimiter = ',')]
        clip_guidance: Vec<f32>,
    },
    /// Inpainting: base-inpaint regenerates the box of one object of a
    /// rendered shapes scene, prompted to draw a held-out colour–shape pair
    /// there; scored like `shapes` against the edited scene, plus "new":
    /// the share of images that show the new object.
    Inpaint {
        #[command(flatten)]
        args: EvalArgs,
    },
}

#[derive(clap::Args)]
struct EvalArgs {
    #[arg(long, default_value = "public/models/demo")]
    model: std::path::PathBuf,
    #[arg(long, default_value_t = 200)]
    n: usize,
    /// Comma-separated classifier-free guidance scales (0 = no guidance).
    #[arg(long, default_value = "0,1,3,5", value_delimiter = ',')]
    guidance: Vec<f32>,
    #[arg(long, default_value = "50")]
    steps: String,
    /// ancestral or ddim; default: ddim for a `ddimN` respacing (GLIDE's
    /// spacing for the DDIM sampler), else ancestral. CLIP-guided rows are
    /// always ancestral.
    #[arg(long, value_parser = parse_sampler)]
    sampler: Option<Sampler>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write a PNG grid: one row per guidance scale, 8 prompts.
    #[arg(long)]
    grid: Option<std::path::PathBuf>,
}

fn parse_sampler(name: &str) -> Result<Sampler, String> {
    Sampler::from_name(name).ok_or_else(|| format!("unknown sampler '{name}' (ancestral, ddim)"))
}

impl EvalArgs {
    fn settings<'a>(&'a self, clip_guidance: &'a [f32]) -> eval::Settings<'a> {
        eval::Settings {
            model: &self.model,
            n: self.n,
            guidance: &self.guidance,
            clip_guidance,
            steps: &self.steps,
            sampler: self.sampler.unwrap_or(if self.steps.starts_with("ddim") {
                Sampler::Ddim
            } else {
                Sampler::Ancestral
            }),
            seed: self.seed,
            grid: self.grid.as_deref(),
        }
    }
}

/// unCLIP's runtime settings (Karlo's defaults).
#[derive(clap::Args)]
struct UnclipArgs {
    /// Prior classifier-free guidance (on x0).
    #[arg(long, default_value_t = 4.0)]
    prior_guidance: f32,
    /// Decoder classifier-free guidance (on eps).
    #[arg(long, default_value_t = 8.0)]
    decoder_guidance: f32,
    #[arg(long, default_value = "25")]
    prior_steps: String,
    /// 50 (Karlo's default) or 25 (its fast mode); any respacing works.
    #[arg(long, default_value = "50")]
    decoder_steps: String,
    #[arg(long, default_value = "7")]
    sr_steps: String,
}

impl UnclipArgs {
    fn params(self) -> engine::unclip::pipeline::UnclipParams {
        engine::unclip::pipeline::UnclipParams {
            prior_guidance: self.prior_guidance,
            decoder_guidance: self.decoder_guidance,
            prior_steps: self.prior_steps,
            decoder_steps: self.decoder_steps,
            sr_steps: self.sr_steps,
        }
    }
}

/// The given seed, or one from the clock and process id.
fn seed_or_random(seed: Option<u64>) -> u64 {
    seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        (t.as_nanos() as u64) ^ ((std::process::id() as u64) << 32)
    })
}

#[derive(clap::Args)]
struct GenArgs {
    #[arg(long)]
    prompt: String,
    /// Folder with converted models in base/, upsample/, base-inpaint/, upsample-inpaint/.
    #[arg(long, default_value = "public/models/demo")]
    model: std::path::PathBuf,
    /// Classifier-free guidance scale (0 = unconditional, 1 = conditional only).
    #[arg(long, default_value_t = 3.0)]
    guidance: f32,
    /// Steer the base model with the noisy CLIP's gradient at this scale
    /// instead of classifier-free guidance (clip_guided.ipynb: 3; needs
    /// clip-image-enc/ and clip-text-enc/ in --model; ancestral sampler).
    #[arg(long)]
    clip_guidance: Option<f32>,
    /// Base respacing: a step count ("100"), "ddimN", "fastNN" or section counts.
    #[arg(long, default_value = "100")]
    steps: String,
    #[arg(long, default_value = "fast27")]
    upsample_steps: String,
    #[arg(long)]
    no_upsample: bool,
    /// Base sampler: ancestral (the notebooks) or ddim.
    #[arg(long, default_value = "ancestral")]
    sampler: String,
    /// Random seed (default: random; printed with the result).
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long)]
    out: std::path::PathBuf,
}

impl GenArgs {
    fn options(self) -> Result<generate::Options> {
        let sampler = parse_sampler(&self.sampler).map_err(anyhow::Error::msg)?;
        let seed = seed_or_random(self.seed);
        engine::limits::check_prompt(&self.prompt)?;
        Ok(generate::Options {
            prompt: self.prompt,
            model: self.model,
            guidance: self.guidance,
            clip_guidance: self.clip_guidance,
            steps: self.steps,
            upsample_steps: self.upsample_steps,
            upsample: !self.no_upsample,
            sampler,
            seed,
            batch: self.batch,
            out: self.out,
        })
    }
}

#[derive(Subcommand)]
enum BenchWhat {
    /// A whole procedure with random weights of the real architecture:
    /// ms/step, seconds per image, peak GPU memory. GLIDE: the text2im
    /// notebook (base with CFG + upsampler); unCLIP: Karlo's t2i (CLIP text,
    /// prior, decoder, SR; one stage resident at a time, bindings capped at
    /// the browser's 128 MiB).
    Pipeline {
        /// glide or unclip.
        #[arg(long, default_value = "glide")]
        pipeline: String,
        /// unCLIP: the decoder's step count the time per image is given for (50 or 25).
        #[arg(long, default_value_t = 50)]
        decoder_steps: usize,
        /// full (the released sizes), small (narrow channels, same
        /// topology) or, for GLIDE, tiny (small with one res block per level:
        /// a smoke test on a CPU adapter).
        #[arg(long, default_value = "full")]
        size: String,
        /// Required: no checkpoint is used.
        #[arg(long)]
        random_weights: bool,
        #[arg(long, default_value = "q8")]
        quant: String,
        /// Timed steps per model (after one warm-up step).
        #[arg(long, default_value_t = 5)]
        steps: usize,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Allocate every buffer but compute nothing: the memory plan (peak
        /// memory, largest buffer) of sizes too slow for this adapter; the
        /// times printed are then meaningless.
        #[arg(long)]
        dry_run: bool,
        /// The cap on one binding in MiB (a browser's budget; 0 = the adapter's own limit).
        #[arg(long, default_value_t = 128)]
        binding_cap_mib: u64,
        /// GLIDE: the base model steered by a random-weight noisy CLIP of
        /// the same size (released: ViT-B-like, 64 px) at this scale instead of CFG.
        #[arg(long)]
        clip_guidance: Option<f32>,
    },
    /// Quantisation error of f16/q8/q4 against f32 on random weights of the
    /// released architecture: per layer and end to end (one forward pass).
    Quant {
        /// base, upsample, base-inpaint or upsample-inpaint.
        #[arg(long, default_value = "base")]
        kind: String,
        /// full (the released sizes) or small (narrow channels, same topology).
        #[arg(long, default_value = "full")]
        size: String,
        /// Required: no checkpoint is used.
        #[arg(long)]
        random_weights: bool,
        /// Image size of the forward pass (default: the model's own).
        #[arg(long)]
        res: Option<usize>,
        /// Comma-separated storage types to compare with f32.
        #[arg(long, default_value = "f16,q8,q4", value_delimiter = ',')]
        quant: Vec<String>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Each kernel at real GLIDE layer shapes: time, GFLOP/s, GB/s and the ratio
    /// to this adapter's measured f32 matmul peak.
    Kernels {
        /// Timed repetitions per kernel (after one warm-up).
        #[arg(long, default_value_t = 5)]
        iters: u32,
        /// Smaller shapes (a quick smoke run, e.g. on a CPU adapter).
        #[arg(long)]
        quick: bool,
    },
}

fn check_fixture(
    gpu: &engine::Gpu,
    dir: &std::path::Path,
    tol: f64,
    quant: &str,
    model: Option<&std::path::Path>,
) -> Result<bool> {
    use anyhow::Context;
    let dtype = engine::WeightDType::parse(quant)?;
    let read = |f: &str| {
        std::fs::read(dir.join(f)).with_context(|| format!("reading {}", dir.join(f).display()))
    };
    // unCLIP's tokenizer folder: every case of tokens.json.
    if dir.join("tokens.json").exists() {
        let tok = generate::clip_tokenizer()?;
        let cases = engine::unclip::check::check_tokenizer(&tok, &read("tokens.json")?)?;
        let mut ok = true;
        for c in &cases {
            match &c.mismatch {
                None => println!("ok   {:?}", c.text),
                Some(m) => {
                    ok = false;
                    println!("FAIL {:?}: {m}", c.text);
                }
            }
        }
        let failed = cases.iter().filter(|c| c.mismatch.is_some()).count();
        println!(
            "{} of {} tokenizer cases match",
            cases.len() - failed,
            cases.len()
        );
        return Ok(ok);
    }
    if dir.join("image_enc.safetensors").exists() {
        return check_clip_fixture(gpu, dir, tol, dtype, model);
    }
    // unCLIP's t2i run: every stage replayed step by step.
    if dir.join("trace.safetensors").exists() && !dir.join("weights.safetensors").exists() {
        let tok = generate::clip_tokenizer()?;
        let read_rel = |f: &str| -> engine::Result<Vec<u8>> {
            std::fs::read(dir.join(f))
                .map_err(|e| engine::Error::Invalid(format!("{}: {e}", dir.join(f).display())))
        };
        let report = pollster::block_on(engine::unclip::check::check_t2i(
            gpu, &tok, &read_rel, tol, dtype,
        ))?;
        return Ok(print_report(dir, &report, tol, dtype.name()));
    }
    // unCLIP's bicubic folder: the antialiased resize Karlo applies before SR.
    if dir.join("resize.safetensors").exists() {
        let report = pollster::block_on(engine::unclip::check::check_bicubic(
            gpu,
            &read("resize.safetensors")?,
            tol,
        ))?;
        return Ok(print_report(dir, &report, tol, "f32"));
    }
    // unCLIP's schedules folder: float64 tables, judged at 1e-10 whatever --tol says.
    if dir.join("schedules.json").exists() {
        let report = engine::unclip::check::check_schedules(
            &read("schedules.json")?,
            &read("schedules.safetensors")?,
            tol.min(1e-10),
        )?;
        return Ok(print_report(dir, &report, tol.min(1e-10), "f64"));
    }
    let trace = if dir.join("trace.safetensors").exists() {
        Some(read("trace.safetensors")?)
    } else {
        None
    };
    let (plain, converted);
    let source = match model {
        Some(m) => {
            converted = convert::read_any_model_dir(m)?;
            engine::glide::weights::WeightSource::shards(
                converted.0.clone().into_iter().collect(),
                &converted.1,
            )?
        }
        None => {
            plain = read("weights.safetensors")?;
            engine::glide::weights::WeightSource::single(&plain)?
        }
    };
    let config = read("config.json")?;
    // unCLIP's folders name their class; everything else is a GLIDE case.
    let class = serde_json::from_slice::<serde_json::Value>(&config)
        .ok()
        .and_then(|v| v["class"].as_str().map(String::from))
        .unwrap_or_default();
    use engine::unclip::check as karlo;
    let io = read("io.safetensors")?;
    let report = if class.contains("CLIP") {
        pollster::block_on(karlo::check_clip_text(
            gpu, &config, &source, &io, tol, dtype,
        ))?
    } else if class.contains("Text2ImProgressiveModel") {
        pollster::block_on(karlo::check_decoder(gpu, &config, &source, &io, tol, dtype))?
    } else if class.contains("SupRes") {
        pollster::block_on(karlo::check_sr(gpu, &config, &source, &io, tol, dtype))?
    } else if class.contains("PriorDiffusionModel") {
        pollster::block_on(karlo::check_prior(gpu, &config, &source, &io, tol, dtype))?
    } else {
        pollster::block_on(engine::glide::check::check_case(
            gpu,
            &config,
            &source,
            &io,
            trace.as_deref(),
            tol,
            dtype,
        ))?
    };
    Ok(print_report(dir, &report, tol, dtype.name()))
}

/// GLIDE's noisy-CLIP case: the encoders (the case's safetensors, or
/// `model/clip-image-enc` + `model/clip-text-enc` converted folders), one
/// `cond_fn`, and the CLIP-guided trace with the base model of the sibling
/// case folder that `config.json` names.
fn check_clip_fixture(
    gpu: &engine::Gpu,
    dir: &std::path::Path,
    tol: f64,
    dtype: engine::WeightDType,
    model: Option<&std::path::Path>,
) -> Result<bool> {
    use anyhow::Context;
    use engine::glide::weights::WeightSource;
    let read = |p: std::path::PathBuf| {
        std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
    };
    let config = read(dir.join("config.json"))?;
    let base_case = serde_json::from_slice::<serde_json::Value>(&config)?["guided_sampling"]
        ["base_model_case"]
        .as_str()
        .map(String::from);
    let (plain_image, plain_text, conv_image, conv_text);
    let (image, text) = match model {
        Some(m) => {
            let kind = |k: &str| -> Result<_> {
                convert::read_kind::<engine::glide::clip::NoisyClipConfig>(m, k)?.with_context(
                    || {
                        format!(
                            "{} has no {k}/ folder (webglide convert --kind {k})",
                            m.display()
                        )
                    },
                )
            };
            conv_image = kind("clip-image-enc")?;
            conv_text = kind("clip-text-enc")?;
            (
                WeightSource::shards(
                    conv_image.0.tensors.clone().into_iter().collect(),
                    &conv_image.1,
                )?,
                WeightSource::shards(
                    conv_text.0.tensors.clone().into_iter().collect(),
                    &conv_text.1,
                )?,
            )
        }
        None => {
            plain_image = read(dir.join("image_enc.safetensors"))?;
            plain_text = read(dir.join("text_enc.safetensors"))?;
            (
                WeightSource::single(&plain_image)?,
                WeightSource::single(&plain_text)?,
            )
        }
    };
    let base_dir = base_case.map(|c| dir.parent().unwrap_or(dir).join(c));
    let trace_parts = match &base_dir {
        Some(b)
            if dir.join("trace.safetensors").exists() && b.join("weights.safetensors").exists() =>
        {
            Some((
                read(dir.join("trace.safetensors"))?,
                read(b.join("config.json"))?,
                read(b.join("weights.safetensors"))?,
            ))
        }
        _ => None,
    };
    let base_source = match &trace_parts {
        Some((_, _, w)) => Some(WeightSource::single(w)?),
        None => None,
    };
    let trace = trace_parts
        .as_ref()
        .zip(base_source.as_ref())
        .map(|((t, c, _), w)| (t.as_slice(), c.as_slice(), w));
    let report = pollster::block_on(engine::glide::check::check_clip_case(
        gpu,
        &config,
        &image,
        &text,
        &read(dir.join("io.safetensors"))?,
        trace,
        tol,
        dtype,
    ))?;
    Ok(print_report(dir, &report, tol, dtype.name()))
}

/// The per-tensor table of a fixture check and its summary line; true when all are within `tol`.
fn print_report(
    dir: &std::path::Path,
    report: &engine::glide::check::Report,
    tol: f64,
    what: &str,
) -> bool {
    println!("{:<64} {:>11} {:>11}", "tensor", "max abs", "rel");
    for r in &report.rows {
        println!(
            "{:<64} {:>11.3e} {:>11.3e} {}",
            r.name,
            r.max_abs,
            r.rel,
            if r.ok { "ok" } else { "OVER TOLERANCE" }
        );
    }
    let bad = report.rows.iter().filter(|r| !r.ok).count();
    println!(
        "{}: {} tensors, {} over tolerance {tol:e} ({what})",
        dir.display(),
        report.rows.len(),
        bad,
    );
    report.ok()
}

fn main() -> std::process::ExitCode {
    webglide_cli::inputs::quiet_decoder_panics();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    // Only the commands that compute open a GPU (convert works without one).
    // WEBGLIDE_LOOP_BOUNDING=1 turns naga's loop bounding back on and
    // WEBGLIDE_PORTABLE=1 leaves shader-f16 and subgroups unused (to measure what they change);
    // benchmark variants: WEBGLIDE_UNCHECKED=1 (no buffer bounds checks either),
    // WEBGLIDE_ZERO_WG=1 (workgroup memory zeroed at every dispatch, WebGPU's default).
    // Fault injection for tests: WEBGLIDE_TEST_LOSE_DEVICE_AFTER=N destroys the
    // device after N GPU submissions.
    let env_on = |name| std::env::var_os(name).is_some_and(|v| v == "1");
    let portable = env_on("WEBGLIDE_PORTABLE");
    let opts = engine::GpuOptions {
        loop_bounding: env_on("WEBGLIDE_LOOP_BOUNDING"),
        unchecked_bounds: env_on("WEBGLIDE_UNCHECKED"),
        zero_workgroup_memory: env_on("WEBGLIDE_ZERO_WG"),
        allow_f16: !portable,
        allow_subgroups: !portable,
        lose_device_after: std::env::var("WEBGLIDE_TEST_LOSE_DEVICE_AFTER")
            .ok()
            .and_then(|v| v.parse().ok()),
        ..Default::default()
    };
    let gpu = || pollster::block_on(engine::Gpu::new(opts.clone()));
    match cli.cmd {
        Cmd::Info => print!("{}", gpu()?.report),
        Cmd::Eval {
            what:
                EvalWhat::Shapes {
                    args,
                    clip_guidance,
                },
        } => eval::shapes(&gpu()?, &args.settings(&clip_guidance))?,
        Cmd::Eval {
            what: EvalWhat::Inpaint { args },
        } => eval::inpaint(&gpu()?, &args.settings(&[]))?,
        Cmd::Bench {
            what: BenchWhat::Kernels { iters, quick },
        } => bench::kernels(&gpu()?, iters.max(1), quick)?,
        Cmd::Bench {
            what:
                BenchWhat::Quant {
                    kind,
                    size,
                    random_weights,
                    res,
                    quant,
                    seed,
                },
        } => {
            if !random_weights {
                anyhow::bail!("bench quant runs on random weights: pass --random-weights");
            }
            let dtypes = quant
                .iter()
                .map(|q| engine::WeightDType::parse(q))
                .collect::<engine::Result<Vec<_>>>()?;
            bench::quant(&gpu()?, &kind, &size, res, &dtypes, seed)?
        }
        Cmd::Convert {
            checkpoint,
            kind,
            quant,
            out,
            config,
            stats,
            sr_size,
            force,
        } => {
            let q = engine::WeightDType::parse(&quant)?;
            let m = convert::convert(
                &checkpoint,
                &kind,
                q,
                config.as_deref(),
                stats.as_deref(),
                sr_size,
                &out,
                force,
            )?;
            let total: u64 = m.shards.iter().map(|s| s.bytes).sum();
            println!(
                "{} -> {}: {} tensors in {} shard(s), {:.1} MiB, {}",
                checkpoint.display(),
                out.display(),
                m.tensors,
                m.shards.len(),
                total as f64 / 1048576.0,
                m.quant
            );
        }
        Cmd::Bench {
            what:
                BenchWhat::Pipeline {
                    pipeline,
                    decoder_steps,
                    size,
                    random_weights,
                    quant,
                    steps,
                    batch,
                    dry_run,
                    binding_cap_mib,
                    clip_guidance,
                },
        } => {
            if !random_weights {
                anyhow::bail!("bench pipeline runs on random weights: pass --random-weights");
            }
            // The budget a laptop browser gives one binding.
            let opts = engine::GpuOptions {
                dry_run,
                max_binding_cap: (binding_cap_mib > 0).then_some(binding_cap_mib << 20),
                ..opts.clone()
            };
            let gpu = pollster::block_on(engine::Gpu::new(opts))?;
            let q = engine::WeightDType::parse(&quant)?;
            match pipeline.as_str() {
                "glide" => bench::pipeline(&gpu, &size, q, steps, batch, clip_guidance)?,
                "unclip" => bench::unclip_pipeline(&gpu, &size, q, steps, batch, decoder_steps)?,
                p => anyhow::bail!("unknown pipeline '{p}' (glide, unclip)"),
            }
        }
        Cmd::Generate {
            gen,
            pipeline,
            unclip,
        } => match pipeline.as_str() {
            "glide" => generate::generate(&gpu()?, &gen.options()?)?,
            "unclip" => {
                let o = gen.options()?;
                unclip::run(
                    &gpu()?,
                    &unclip::Options {
                        prompt: Some(o.prompt),
                        image: None,
                        model: o.model,
                        params: unclip.params(),
                        seed: o.seed,
                        batch: o.batch,
                        out: o.out,
                    },
                )?
            }
            p => anyhow::bail!("unknown pipeline '{p}' (glide, unclip)"),
        },
        Cmd::Variations {
            image,
            n,
            model,
            unclip,
            seed,
            out,
        } => unclip::run(
            &gpu()?,
            &unclip::Options {
                prompt: None,
                image: Some(image),
                model,
                params: unclip.params(),
                seed: seed_or_random(seed),
                batch: n,
                out,
            },
        )?,
        Cmd::Inpaint { image, mask, gen } => {
            generate::inpaint(&gpu()?, &gen.options()?, &image, &mask)?
        }
        Cmd::CheckFixture {
            dir,
            tol,
            quant,
            model,
        } => {
            if !check_fixture(&gpu()?, &dir, tol, &quant, model.as_deref())? {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
