//! `webglide generate --pipeline unclip` and `webglide variations`: Karlo's
//! t2i and i2i procedures on converted unCLIP folders (`clip-text/`,
//! `clip-visual/`, `prior/`, `decoder/`, `sr/`), one stage on the GPU at a time.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use engine::unclip::pipeline::{to_rgb8, Draws, Network, UnclipParams, UnclipRun};
use engine::unclip::weights::{load_converted, UnclipConfig, UnclipNet};
use engine::Gpu;

use crate::generate::{bar, clip_tokenizer, write_pngs};

pub struct Options {
    /// Text → image: the prompt; variations: None.
    pub prompt: Option<String>,
    /// Variations: the source image.
    pub image: Option<PathBuf>,
    pub model: PathBuf,
    pub params: UnclipParams,
    pub seed: u64,
    pub batch: usize,
    pub out: PathBuf,
}

/// Loads `dir/<kind>/` (a `webglide convert --kind <kind>` folder); of the
/// SR folder only the network `only` names.
fn load(gpu: &Gpu, dir: &Path, kind: &str, only: Option<Network>) -> Result<UnclipNet> {
    let Some((manifest, shards)) = crate::convert::read_kind::<UnclipConfig>(dir, kind)? else {
        bail!(
            "{}/manifest.json not found (convert the model with `webglide convert --kind {kind}`)",
            dir.join(kind).display()
        );
    };
    load_converted(gpu, &manifest, &shards, only)
        .with_context(|| format!("loading {}", dir.join(kind).display()))
}

/// Karlo's i2i input: the image file decoded and prepared for the visual tower.
fn clip_image(path: &Path, resolution: usize) -> Result<Vec<f32>> {
    let (rgb, w, h) = webglide_cli::inputs::read_rgb(path)?;
    engine::unclip::pipeline::clip_pixels(&rgb, w, h, resolution)
        .with_context(|| path.display().to_string())
}

pub fn run(gpu: &Gpu, o: &Options) -> Result<()> {
    // Before anything of the batch's size is allocated.
    engine::limits::check_batch(o.batch, engine::limits::MAX_UNCLIP_BATCH)?;
    let tok = clip_tokenizer()?;
    let draws = Draws::Seed(o.seed);
    // The text tower (and the visual one) only start the run.
    let mut run = {
        let UnclipNet::ClipText(clip) = load(gpu, &o.model, "clip-text", None)? else {
            unreachable!("load checks the kind")
        };
        match (&o.prompt, &o.image) {
            (Some(prompt), None) => {
                let prompts = vec![prompt.as_str(); o.batch];
                UnclipRun::text_to_image(gpu, &clip, &tok, &prompts, o.params.clone(), draws)?
            }
            (None, Some(image)) => {
                let UnclipNet::ClipVisual(visual) = load(gpu, &o.model, "clip-visual", None)?
                else {
                    unreachable!("load checks the kind")
                };
                let pixels = clip_image(image, visual.config.image_resolution)?;
                UnclipRun::variations(
                    gpu,
                    &clip,
                    &visual,
                    &tok,
                    &pixels,
                    o.batch,
                    o.params.clone(),
                    draws,
                )?
            }
            _ => bail!("a prompt or an image, not both"),
        }
    };
    gpu.trim_memory();
    let pb = bar(run.total_steps(), "unclip");
    // One network resident at a time: each is loaded when the run reaches it.
    while let Some(network) = run.network() {
        pb.set_prefix(network.name());
        let net = load(gpu, &o.model, network.kind(), Some(network))?;
        let stages = net.stages().expect("a sampling stage");
        while run.network() == Some(network) {
            run.step(gpu, &stages)?;
            pb.inc(1);
        }
        // The next network reuses this one's memory, not the pool's spares.
        drop(net);
        gpu.trim_memory();
    }
    let images = run.images().expect("the run is done");
    let size = images.shape()[2];
    // Reading the result waits for the GPU, so the bar's time is the real time.
    let values = pollster::block_on(gpu.read(images))?;
    pb.finish();
    let p = &o.params;
    let mut params = vec![
        (
            "Software",
            format!("webglide {}", env!("CARGO_PKG_VERSION")),
        ),
        ("webglide:pipeline", "unclip".to_string()),
        ("webglide:prior_guidance", p.prior_guidance.to_string()),
        ("webglide:decoder_guidance", p.decoder_guidance.to_string()),
        ("webglide:prior_steps", p.prior_steps.clone()),
        ("webglide:decoder_steps", p.decoder_steps.clone()),
        ("webglide:sr_steps", p.sr_steps.clone()),
        ("webglide:seed", o.seed.to_string()),
        ("webglide:model", o.model.display().to_string()),
    ];
    match (&o.prompt, &o.image) {
        (Some(prompt), _) => {
            params.push(("webglide:mode", "text2im".into()));
            params.push(("webglide:prompt", prompt.clone()));
        }
        (_, Some(image)) => {
            params.push(("webglide:mode", "variations".into()));
            params.push(("webglide:image", image.display().to_string()));
            // The prior does not run for variations.
            params.retain(|(k, _)| !k.starts_with("webglide:prior"));
        }
        _ => {}
    }
    let paths = write_pngs(&o.out, &to_rgb8(&values, o.batch, size), size, &params)?;
    for p in paths {
        println!("wrote {} (seed {})", p.display(), o.seed);
    }
    Ok(())
}
