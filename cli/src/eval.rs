//! `webglide eval shapes`: how well a model draws shape prompts it never saw
//! as exact captions (every prompt holds a colour–shape pair kept out of the
//! demo model's training), per guidance method and scale (classifier-free,
//! and CLIP guidance when asked: the paper's comparison at matched steps),
//! scored by the shapes checker.

use std::path::Path;

use anyhow::{bail, Context, Result};
use engine::demo::shapes::{detect, eval_scenes, score};
use engine::glide::pipeline::{to_rgb8, ClipGuidance, DiffusionLoop, Extra, Sampler};
use engine::Gpu;
use indicatif::{ProgressBar, ProgressStyle};

/// `guidance`: classifier-free scales; `clip_guidance`: CLIP scales (needs
/// the noisy CLIP in `model`). `grid`: also write a PNG with the first 8
/// images of every row of the table (one row each).
#[allow(clippy::too_many_arguments)]
pub fn shapes(
    gpu: &Gpu,
    model: &Path,
    n: usize,
    guidance: &[f32],
    clip_guidance: &[f32],
    steps: &str,
    seed: u64,
    grid: Option<&Path>,
) -> Result<()> {
    if n == 0 || n > 100_000 {
        bail!("--n {n} (1..=100000)");
    }
    if guidance.is_empty() && clip_guidance.is_empty() {
        bail!("--guidance or --clip-guidance needs at least one scale");
    }
    // (label, CFG scale, CLIP scale) per table row.
    let methods: Vec<(String, Option<f32>, Option<f32>)> = guidance
        .iter()
        .map(|&g| (format!("cfg {g:.1}"), (g > 0.0).then_some(g), None))
        .chain(
            clip_guidance
                .iter()
                .map(|&g| (format!("clip {g:.1}"), None, Some(g))),
        )
        .collect();
    let clip = if clip_guidance.is_empty() {
        None
    } else {
        Some(crate::generate::load_noisy_clip(gpu, model)?)
    };
    let clip_tok = crate::generate::clip_tokenizer()?;
    let base = crate::generate::load_model(gpu, model, "base")?
        .with_context(|| format!("{}/base/manifest.json not found", model.display()))?;
    let tok = crate::generate::tokenizer()?;
    let size = base.config.image_size;
    let scenes = eval_scenes(n, seed);
    let pb = ProgressBar::new((n * methods.len()) as u64);
    pb.set_style(ProgressStyle::with_template(
        "{prefix} [{bar:32}] {pos}/{len} images {elapsed_precise}",
    )?);
    pb.set_prefix("eval");
    println!(
        "{n} prompts with held-out colour–shape pairs, steps {steps}, model {}",
        model.display()
    );
    println!(
        "{:>9} {:>8} {:>8} {:>8} {:>9} {:>6}",
        "guidance", "colour", "shape", "binding", "relation", "exact"
    );
    const COLS: usize = 8;
    const EVAL_BATCH: usize = 32;
    // Many prompts per batch (one per image): on a GPU a batch of 32
    // small-model images costs about what one does.
    let captions: Vec<Vec<u32>> = scenes.iter().map(|s| tok.encode(&s.caption())).collect();
    let mut rows: Vec<Vec<Vec<u8>>> = Vec::new();
    for (label, cfg, clip_scale) in &methods {
        let mut row = Vec::new();
        let (mut c, mut s, mut b, mut r, mut nr, mut e) = (0f32, 0f32, 0f32, 0f32, 0f32, 0f32);
        for (chunk, (scenes, captions)) in scenes
            .chunks(EVAL_BATCH)
            .zip(captions.chunks(EVAL_BATCH))
            .enumerate()
        {
            let prompts: Vec<&[u32]> = captions.iter().map(|c| c.as_slice()).collect();
            let mut lp = DiffusionLoop::with_prompts(
                gpu,
                &base,
                &prompts,
                steps,
                Sampler::Ancestral,
                *cfg,
                seed.wrapping_add(chunk as u64),
                1.0,
                Extra::default(),
            )?;
            if let (Some(scale), Some((image, text_enc))) = (clip_scale, &clip) {
                let texts: Vec<String> = scenes.iter().map(|s| s.caption()).collect();
                let texts: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
                let mut rec = gpu.recorder();
                let text = text_enc.encode_prompts(&mut rec, &clip_tok, &texts)?;
                rec.submit()?;
                lp = lp.with_clip_guidance(ClipGuidance {
                    image,
                    text,
                    scale: *scale,
                })?;
            }
            while lp.step(gpu)? {}
            let img = pollster::block_on(gpu.read(&lp.sample(gpu)?))?;
            for (scene, rgb) in scenes.iter().zip(to_rgb8(&img, scenes.len(), size)) {
                let sc = score(scene, &detect(&rgb, size));
                if row.len() < COLS {
                    row.push(rgb);
                }
                c += sc.color;
                s += sc.shape;
                b += sc.binding;
                e += sc.exact;
                if let Some(x) = sc.relation {
                    r += x;
                    nr += 1.0;
                }
                pb.inc(1);
            }
        }
        rows.push(row);
        let m = n as f32;
        pb.suspend(|| {
            println!(
                "{label:>9} {:>8.3} {:>8.3} {:>8.3} {:>9} {:>6.3}",
                c / m,
                s / m,
                b / m,
                if nr > 0.0 {
                    format!("{:.3}", r / nr)
                } else {
                    "-".into()
                },
                e / m
            )
        });
    }
    pb.finish_and_clear();
    if let Some(path) = grid {
        let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let (w, h) = (cols * size, rows.len() * size);
        let mut img = vec![255u8; w * h * 3];
        for (ri, row) in rows.iter().enumerate() {
            for (ci, tile) in row.iter().enumerate() {
                for y in 0..size {
                    let dst = ((ri * size + y) * w + ci * size) * 3;
                    img[dst..dst + size * 3]
                        .copy_from_slice(&tile[y * size * 3..(y + 1) * size * 3]);
                }
            }
        }
        let captions: Vec<String> = scenes.iter().take(cols).map(|s| s.caption()).collect();
        let labels: Vec<&str> = methods.iter().map(|m| m.0.as_str()).collect();
        let params = vec![
            ("webglide:rows", labels.join(" | ")),
            ("webglide:columns", captions.join(" | ")),
            ("webglide:steps", steps.to_string()),
            ("webglide:seed", seed.to_string()),
        ];
        crate::generate::write_png(path, &img, w, h, &params)?;
        println!(
            "wrote {} (rows: {}; columns: {})",
            path.display(),
            labels.join(", "),
            captions.join(" | ")
        );
    }
    Ok(())
}
