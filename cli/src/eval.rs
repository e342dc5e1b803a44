//! `webglide eval shapes` and `webglide eval inpaint`: how well a model draws
//! shape prompts it never saw as exact captions (every prompt holds a
//! colour–shape pair kept out of the demo model's training), per guidance
//! method and scale, scored by the shapes checker.
//!
//! - shapes: the base from noise (classifier-free guidance, and CLIP guidance
//!   when asked: the paper's comparison at matched steps);
//! - inpaint: base-inpaint regenerates one object's box of a rendered scene
//!   with a prompt that gives that object a new (held-out) colour and shape.

use std::ops::Range;
use std::path::Path;

use anyhow::{bail, Context, Result};
use engine::demo::shapes::{
    detect, eval_scenes, inpaint_cases, render, score, tile_rows, Found, InpaintCase, Scene, Tally,
};
use engine::glide::model::Glide;
use engine::glide::pipeline::{
    rgb8_to_planes, to_rgb8, ClipGuidance, DiffusionLoop, Extra, Sampler,
};
use engine::Gpu;
use indicatif::{ProgressBar, ProgressStyle};

/// What both evaluations take from the command line.
pub struct Settings<'a> {
    pub model: &'a Path,
    pub n: usize,
    /// Classifier-free scales (0 = no guidance).
    pub guidance: &'a [f32],
    /// CLIP scales (shapes only; needs the noisy CLIP in `model`).
    pub clip_guidance: &'a [f32],
    pub steps: &'a str,
    /// The classifier-free rows' sampler (CLIP rows are always ancestral,
    /// the notebook's procedure).
    pub sampler: Sampler,
    pub seed: u64,
    /// Also write a PNG with the first 8 images of every row of the table.
    pub grid: Option<&'a Path>,
}

/// One table row: a guidance method and scale.
struct Method {
    label: String,
    cfg: Option<f32>,
    clip: Option<f32>,
}

const GRID_COLS: usize = 8;
/// Many prompts per batch (one per image): on a GPU a batch of 32
/// small-model images costs about what one does.
const EVAL_BATCH: usize = 32;

pub fn shapes(gpu: &Gpu, s: &Settings) -> Result<()> {
    check(s)?;
    let methods = methods(s);
    let clip = if s.clip_guidance.is_empty() {
        None
    } else {
        Some(crate::generate::load_noisy_clip(gpu, s.model)?)
    };
    let clip_tok = crate::generate::clip_tokenizer()?;
    let base = load(gpu, s.model, "base")?;
    let scenes = eval_scenes(s.n, s.seed);
    println!(
        "{} prompts with held-out colour–shape pairs, steps {} ({}), model {}",
        s.n,
        s.steps,
        s.sampler.name(),
        s.model.display()
    );
    let clip_guidance = |m: &Method, range: Range<usize>| -> Result<Option<ClipGuidance>> {
        let (Some(scale), Some((image, text_enc))) = (m.clip, &clip) else {
            return Ok(None);
        };
        let texts: Vec<String> = scenes[range].iter().map(|s| s.caption()).collect();
        let texts: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let mut rec = gpu.recorder();
        let text = text_enc.encode_prompts(&mut rec, &clip_tok, &texts)?;
        rec.submit()?;
        Ok(Some(ClipGuidance { image, text, scale }))
    };
    let rows = table(
        gpu,
        s,
        &base,
        &methods,
        &scenes,
        PerChunk {
            extra: &|_| Ok(Extra::default()),
            clip: &clip_guidance,
            new_shown: None,
        },
    )?;
    write_grid(
        s,
        &methods,
        &scenes,
        Vec::new(),
        rows,
        base.config.image_size,
    )
}

pub fn inpaint(gpu: &Gpu, s: &Settings) -> Result<()> {
    check(s)?;
    if !s.clip_guidance.is_empty() {
        bail!("--clip-guidance: the inpainting evaluation has classifier-free guidance only");
    }
    let methods = methods(s);
    let model = load(gpu, s.model, "base-inpaint")?;
    let size = model.config.image_size;
    let cases = inpaint_cases(s.n, s.seed);
    let targets: Vec<Scene> = cases.iter().map(|c| c.target.clone()).collect();
    // Rendered like the training data (4×4 samples per pixel), a chunk at a
    // time: n may be large.
    let source = |c: &InpaintCase| render(&c.source, size, 4);
    println!(
        "{} scenes, one object's box regenerated as a held-out colour–shape pair, steps {} ({}), model {}",
        s.n,
        s.steps,
        s.sampler.name(),
        s.model.display()
    );
    let extra = |range: Range<usize>| -> Result<Extra> {
        let b = range.len();
        let (mut image, mut keep) = (Vec::new(), Vec::new());
        for case in &cases[range] {
            image.extend(rgb8_to_planes(&source(case), size, size, size)?);
            keep.extend(case.keep_mask(size));
        }
        Ok(Extra {
            low_res: None,
            inpaint: Some((
                gpu.upload(&[b, 3, size, size], &image)?,
                gpu.upload(&[b, 1, size, size], &keep)?,
            )),
        })
    };
    let rows = table(
        gpu,
        s,
        &model,
        &methods,
        &targets,
        PerChunk {
            extra: &extra,
            clip: &|_, _| Ok(None),
            new_shown: Some(&|i, found| cases[i].shows_new_object(found)),
        },
    )?;
    let shown: Vec<Vec<u8>> = cases
        .iter()
        .take(GRID_COLS)
        .map(|c| c.shaded(&source(c), size))
        .collect();
    write_grid(
        s,
        &methods,
        &targets,
        vec![("source".into(), shown)],
        rows,
        size,
    )
}

/// The table's rows: the classifier-free scales, then the CLIP ones.
fn methods(s: &Settings) -> Vec<Method> {
    s.guidance
        .iter()
        .map(|&g| Method {
            label: format!("cfg {g:.1}"),
            cfg: (g > 0.0).then_some(g),
            clip: None,
        })
        .chain(s.clip_guidance.iter().map(|&g| Method {
            label: format!("clip {g:.1}"),
            cfg: None,
            clip: Some(g),
        }))
        .collect()
}

fn check(s: &Settings) -> Result<()> {
    if s.n == 0 || s.n > 100_000 {
        bail!("--n {} (1..=100000)", s.n);
    }
    if s.guidance.is_empty() && s.clip_guidance.is_empty() {
        bail!("--guidance or --clip-guidance needs at least one scale");
    }
    Ok(())
}

fn load(gpu: &Gpu, dir: &Path, kind: &str) -> Result<Glide> {
    crate::generate::load_model(gpu, dir, kind)?
        .with_context(|| format!("{}/{kind}/manifest.json not found", dir.display()))
}

/// What an evaluation adds to the prompts, per chunk of scenes (a range of
/// their indices): the model's extra inputs, CLIP guidance, and a score of
/// its own for each image (printed as the "new" column).
struct PerChunk<'a, 'm> {
    extra: &'a dyn Fn(Range<usize>) -> Result<Extra>,
    clip: &'a ClipFn<'a, 'm>,
    new_shown: Option<&'a ShownFn<'a>>,
}

/// Scene index and the objects found in its image → whether the new one is there.
type ShownFn<'a> = dyn Fn(usize, &[Found]) -> bool + 'a;
type ClipFn<'a, 'm> = dyn Fn(&Method, Range<usize>) -> Result<Option<ClipGuidance<'m>>> + 'a;

/// Samples every scene's caption under every method, prints one score row
/// per method and returns the first images of each row for the grid.
fn table<'m>(
    gpu: &Gpu,
    s: &Settings,
    model: &'m Glide,
    methods: &[Method],
    scenes: &[Scene],
    per_chunk: PerChunk<'_, 'm>,
) -> Result<Vec<Vec<Vec<u8>>>> {
    let PerChunk {
        extra,
        clip,
        new_shown,
    } = per_chunk;
    let size = model.config.image_size;
    let tok = crate::generate::tokenizer()?;
    let captions: Vec<Vec<u32>> = scenes.iter().map(|s| tok.encode(&s.caption())).collect();
    let pb = ProgressBar::new((scenes.len() * methods.len()) as u64);
    pb.set_style(ProgressStyle::with_template(
        "{prefix} [{bar:32}] {pos}/{len} images {elapsed_precise}",
    )?);
    pb.set_prefix("eval");
    println!("{}", Tally::header(new_shown.is_some()));
    let mut rows = Vec::new();
    for m in methods {
        let mut row = Vec::new();
        let mut tally = Tally::default();
        for (chunk, start) in (0..scenes.len()).step_by(EVAL_BATCH).enumerate() {
            let range = start..(start + EVAL_BATCH).min(scenes.len());
            let prompts: Vec<&[u32]> = captions[range.clone()]
                .iter()
                .map(|c| c.as_slice())
                .collect();
            let mut lp = DiffusionLoop::with_prompts(
                gpu,
                model,
                &prompts,
                s.steps,
                if m.clip.is_some() {
                    Sampler::Ancestral
                } else {
                    s.sampler
                },
                m.cfg,
                s.seed.wrapping_add(chunk as u64),
                1.0,
                extra(range.clone())?,
            )?;
            if let Some(g) = clip(m, range.clone())? {
                lp = lp.with_clip_guidance(g)?;
            }
            while lp.step(gpu)? {}
            let img = pollster::block_on(gpu.read(&lp.sample(gpu)?))?;
            for (i, rgb) in range.clone().zip(to_rgb8(&img, range.len(), size)) {
                let found = detect(&rgb, size);
                tally.add(&score(&scenes[i], &found));
                if let Some(shown) = new_shown {
                    tally.add_new(shown(i, &found));
                }
                if row.len() < GRID_COLS {
                    row.push(rgb);
                }
                pb.inc(1);
            }
        }
        pb.suspend(|| println!("{}\n{}", tally.row(&m.label), tally.breakdown()));
        rows.push(row);
    }
    pb.finish_and_clear();
    Ok(rows)
}

/// One row of tiles per entry of `leading` (label, tiles), then one per method.
fn write_grid(
    s: &Settings,
    methods: &[Method],
    scenes: &[Scene],
    leading: Vec<(String, Vec<Vec<u8>>)>,
    rows: Vec<Vec<Vec<u8>>>,
    size: usize,
) -> Result<()> {
    let Some(path) = s.grid else {
        return Ok(());
    };
    let labels: Vec<String> = leading
        .iter()
        .map(|(l, _)| l.clone())
        .chain(methods.iter().map(|m| m.label.clone()))
        .collect();
    let rows: Vec<Vec<Vec<u8>>> = leading.into_iter().map(|(_, r)| r).chain(rows).collect();
    let (img, w, h) = tile_rows(&rows, size);
    let cols = w / size;
    let captions: Vec<String> = scenes.iter().take(cols).map(|s| s.caption()).collect();
    let params = vec![
        ("webglide:rows", labels.join(" | ")),
        ("webglide:columns", captions.join(" | ")),
        ("webglide:steps", s.steps.to_string()),
        ("webglide:sampler", s.sampler.name().to_string()),
        ("webglide:seed", s.seed.to_string()),
    ];
    crate::generate::write_png(path, &img, w, h, &params)?;
    println!(
        "wrote {} (rows: {}; columns: {})",
        path.display(),
        labels.join(", "),
        captions.join(" | ")
    );
    Ok(())
}
