//! GLIDE models at parity with the official implementation: every shared
//! fixture case (forward with all intermediates + the whole sampling trace
//! with recorded draws) in f32, relative error <= 1e-4.
#![cfg(not(target_arch = "wasm32"))]

use engine::glide::check::check_case;
use engine::{Gpu, GpuOptions, WeightDType};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/glide");

fn run_case(case: &str) {
    let dir = format!("{FIX}/{case}");
    let read =
        |f: &str| std::fs::read(format!("{dir}/{f}")).unwrap_or_else(|e| panic!("{dir}/{f}: {e}"));
    let gpu = pollster::block_on(Gpu::new(GpuOptions::default())).expect("GPU adapter");
    let weights = read("weights.safetensors");
    let source = engine::glide::weights::WeightSource::single(&weights).unwrap();
    let report = pollster::block_on(check_case(
        &gpu,
        &read("config.json"),
        &source,
        &read("io.safetensors"),
        Some(&read("trace.safetensors")),
        1e-4,
        WeightDType::F32,
    ))
    .unwrap();
    let mut failed = Vec::new();
    for r in &report.rows {
        println!(
            "{:<60} max abs {:.3e}  rel {:.3e} {}",
            r.name,
            r.max_abs,
            r.rel,
            if r.ok { "" } else { "FAIL" }
        );
        if !r.ok {
            failed.push(r.name.clone());
        }
    }
    assert!(
        report.ok(),
        "{case}: {} tensors over tolerance: {failed:?}",
        failed.len()
    );
}

#[test]
fn text2im_base() {
    run_case("text2im_base");
}

/// The tiny text2im base of the fixtures, in f32.
fn tiny_base(gpu: &Gpu) -> engine::glide::model::Glide {
    let dir = format!("{FIX}/text2im_base");
    let read =
        |f: &str| std::fs::read(format!("{dir}/{f}")).unwrap_or_else(|e| panic!("{dir}/{f}: {e}"));
    let case: serde_json::Value = serde_json::from_slice(&read("config.json")).unwrap();
    let cfg = serde_json::from_value(case["create_model_and_diffusion_kwargs"].clone()).unwrap();
    let weights = read("weights.safetensors");
    let source = engine::glide::weights::WeightSource::single(&weights).unwrap();
    engine::glide::model::Glide::load(gpu, cfg, &source, WeightDType::F32).unwrap()
}

#[test]
fn upsample() {
    run_case("upsample");
}

#[test]
fn inpaint_base() {
    run_case("inpaint_base");
}

#[test]
fn inpaint_upsample() {
    run_case("inpaint_upsample");
}

/// A batch of different prompts samples each image exactly as a batch of
/// one prompt does at the same position (same noise, rows independent), with
/// and without CFG: what `webglide eval shapes` relies on.
#[test]
fn batch_of_prompts_equals_separate_runs() {
    use engine::glide::pipeline::{DiffusionLoop, Extra, Sampler};
    let gpu = pollster::block_on(Gpu::new(GpuOptions::default())).expect("GPU adapter");
    let model = tiny_base(&gpu);
    let prompts: [&[u32]; 2] = [&[272, 3056, 12036], &[1162, 12397]];
    let run = |loop_: engine::Result<DiffusionLoop>| {
        let mut lp = loop_.unwrap();
        while lp.step(&gpu).unwrap() {}
        pollster::block_on(gpu.read(&lp.sample(&gpu).unwrap())).unwrap()
    };
    for guidance in [None, Some(3.0)] {
        let both = run(DiffusionLoop::with_prompts(
            &gpu,
            &model,
            &prompts,
            "3",
            Sampler::Ancestral,
            guidance,
            7,
            1.0,
            Extra::default(),
        ));
        let half = both.len() / 2;
        let mut alone_runs = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let alone = run(DiffusionLoop::new(
                &gpu,
                &model,
                p,
                2,
                "3",
                Sampler::Ancestral,
                guidance,
                7,
                1.0,
                Extra::default(),
            ));
            let rows = i * half..(i + 1) * half;
            assert_eq!(
                both[rows.clone()],
                alone[rows],
                "prompt {i}, guidance {guidance:?}"
            );
            alone_runs.push(alone);
        }
        // The prompt matters: the same noise under the other prompt differs.
        assert_ne!(both[half..], alone_runs[0][half..]);
    }
}

/// The noisy CLIP: both encoders with intermediates, `cond_fn`, and the
/// CLIP-guided sampling trace (with the tiny text2im base), in f32.
#[test]
fn clip() {
    let read = |f: &str| std::fs::read(format!("{FIX}/{f}")).unwrap_or_else(|e| panic!("{f}: {e}"));
    let gpu = pollster::block_on(Gpu::new(GpuOptions::default())).expect("GPU adapter");
    let (image_w, text_w, base_w) = (
        read("clip/image_enc.safetensors"),
        read("clip/text_enc.safetensors"),
        read("text2im_base/weights.safetensors"),
    );
    let src = |b| engine::glide::weights::WeightSource::single(b).unwrap();
    let (image_s, text_s, base_s) = (src(&image_w), src(&text_w), src(&base_w));
    let (trace, base_config) = (
        read("clip/trace.safetensors"),
        read("text2im_base/config.json"),
    );
    let report = pollster::block_on(engine::glide::check::check_clip_case(
        &gpu,
        &read("clip/config.json"),
        &image_s,
        &text_s,
        &read("clip/io.safetensors"),
        Some((&trace, &base_config, &base_s)),
        1e-4,
        WeightDType::F32,
    ))
    .unwrap();
    for r in &report.rows {
        println!(
            "{:<60} max abs {:.3e}  rel {:.3e} {}",
            r.name,
            r.max_abs,
            r.rel,
            if r.ok { "" } else { "FAIL" }
        );
    }
    assert!(report.ok(), "clip: tensors over tolerance");
}

/// A lost GPU device (driver reset, a browser reclaiming the GPU) surfaces as
/// `Error::DeviceLost` from the next step or read, never as a panic; the page
/// offers to reopen the GPU on exactly that error.
#[test]
fn a_lost_device_is_an_error_not_a_panic() {
    use engine::glide::pipeline::{DiffusionLoop, Extra, Sampler};
    let gpu = pollster::block_on(Gpu::new(GpuOptions::default())).expect("GPU adapter");
    let model = tiny_base(&gpu);
    let mut lp = DiffusionLoop::new(
        &gpu,
        &model,
        &[272, 3056],
        1,
        "5",
        Sampler::Ancestral,
        Some(3.0),
        1,
        1.0,
        Extra::default(),
    )
    .unwrap();
    assert!(lp.step(&gpu).unwrap());
    gpu.device.destroy();
    let mut failed = None;
    for _ in 0..4 {
        if let Err(e) = lp.step(&gpu) {
            failed = Some(e);
            break;
        }
    }
    let err = match failed {
        Some(e) => e,
        None => pollster::block_on(gpu.read(&lp.sample(&gpu).unwrap_or_else(|e| panic!("{e}"))))
            .expect_err("reading from a destroyed device"),
    };
    assert!(matches!(err, engine::Error::DeviceLost(_)), "{err:?}");
}

/// The noisy CLIP's encoders of the fixture (f32).
fn tiny_clip(
    gpu: &Gpu,
) -> (
    engine::glide::clip::ImageEncoder,
    engine::glide::clip::TextEncoder,
) {
    use engine::glide::clip::{ImageEncoder, NoisyClipConfig, TextEncoder};
    use engine::glide::weights::{Loader, WeightSource};
    let read = |f: &str| std::fs::read(format!("{FIX}/clip/{f}")).unwrap();
    let case: serde_json::Value = serde_json::from_slice(&read("config.json")).unwrap();
    let cfg: NoisyClipConfig =
        serde_json::from_value(case["clip_config_yaml_values"].clone()).unwrap();
    let (iw, tw) = (read("image_enc.safetensors"), read("text_enc.safetensors"));
    let (is, ts) = (
        WeightSource::single(&iw).unwrap(),
        WeightSource::single(&tw).unwrap(),
    );
    let image = ImageEncoder::load(
        cfg.clone(),
        &Loader::new(gpu, &is, WeightDType::F32).unwrap(),
    );
    let text = TextEncoder::load(cfg, &Loader::new(gpu, &ts, WeightDType::F32).unwrap());
    (image.unwrap(), text.unwrap())
}

/// cond_fn's gradient, computed by the GPU backward kernels, against central
/// finite differences of the GPU forward pass's score, on the coordinates
/// where the gradient is largest (other widths than the fixture's come from
/// the kernel tests; this checks the whole chain as the sampler uses it).
#[test]
fn clip_gradient_matches_finite_differences_of_the_score() {
    let gpu = pollster::block_on(Gpu::new(GpuOptions::default())).expect("GPU adapter");
    let (image, text) = tiny_clip(&gpu);
    let s = image.config.image_size;
    let n = 3 * s * s;
    let x: Vec<f32> = engine::rng::randn(n, 3, 0);
    let tok = engine::unclip::tokenizer::ClipTokenizer::from_gz(include_bytes!(
        "../../public/tokenizer/bpe_simple_vocab_16e6.txt.gz"
    ))
    .unwrap();
    let t = [640u32];
    let mut rec = gpu.recorder();
    let z_t = text
        .encode_prompts(&mut rec, &tok, &["a red circle above a blue square"])
        .unwrap();
    rec.submit().unwrap();
    let zt = pollster::block_on(gpu.read(&z_t)).unwrap();
    let score = |x: &[f32]| -> f64 {
        let xt = gpu.upload(&[1, 3, s, s], x).unwrap();
        let mut rec = gpu.recorder();
        let (z, _) = image.forward(&mut rec, &xt, &t, false, None).unwrap();
        rec.submit().unwrap();
        let zi = pollster::block_on(gpu.read(&z)).unwrap();
        let norm = |v: &[f32]| v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt() + 1e-12;
        let dot: f64 = zt.iter().zip(&zi).map(|(&a, &b)| a as f64 * b as f64).sum();
        image.config.logit_scale as f64 * dot / (norm(&zt) * norm(&zi))
    };
    let xt = gpu.upload(&[1, 3, s, s], &x).unwrap();
    let mut rec = gpu.recorder();
    let g = engine::glide::clip::cond_fn(&mut rec, &image, &z_t, &xt, &t, 1.0).unwrap();
    rec.submit().unwrap();
    let g = pollster::block_on(gpu.read(&g)).unwrap();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
    let eps = 1e-2f32;
    for &k in order.iter().take(8) {
        let (mut xp, mut xm) = (x.clone(), x.clone());
        xp[k] += eps;
        xm[k] -= eps;
        let fd = (score(&xp) - score(&xm)) / (2.0 * eps as f64);
        let rel = (fd - g[k] as f64).abs() / (g[k] as f64).abs();
        assert!(
            rel < 0.05,
            "x[{k}]: gradient {} vs finite differences {fd} ({rel:.3})",
            g[k]
        );
    }
}

/// CLIP-guided steps hold no more GPU memory after the first than before it:
/// the tape's activations go back to the pool at the end of every step.
#[test]
fn clip_guided_steps_free_their_activations() {
    use engine::glide::pipeline::{ClipGuidance, DiffusionLoop, Extra, Sampler};
    let gpu = pollster::block_on(Gpu::new(GpuOptions::default())).expect("GPU adapter");
    let model = tiny_base(&gpu);
    let (image, text) = tiny_clip(&gpu);
    let tok = engine::unclip::tokenizer::ClipTokenizer::from_gz(include_bytes!(
        "../../public/tokenizer/bpe_simple_vocab_16e6.txt.gz"
    ))
    .unwrap();
    let mut rec = gpu.recorder();
    let z = text
        .encode_prompts(&mut rec, &tok, &["a corgi", "a fox"])
        .unwrap();
    rec.submit().unwrap();
    let prompts: [&[u32]; 2] = [&[272, 3056], &[1162]];
    let mut lp = DiffusionLoop::with_prompts(
        &gpu,
        &model,
        &prompts,
        "6",
        Sampler::Ancestral,
        None,
        2,
        1.0,
        Extra::default(),
    )
    .unwrap()
    .with_clip_guidance(ClipGuidance {
        image: &image,
        text: z,
        scale: 3.0,
    })
    .unwrap();
    // In use between steps, and the most held during one (the tape included).
    let mut between = Vec::new();
    let mut more = true;
    while more {
        more = lp.step(&gpu).unwrap();
        pollster::block_on(gpu.wait_idle()).unwrap();
        between.push(gpu.memory_stats());
    }
    let peak = between.iter().map(|m| m.peak_in_use).max().unwrap();
    let lo = between.iter().map(|m| m.in_use).min().unwrap();
    let hi = between.iter().map(|m| m.in_use).max().unwrap();
    // The pool may hand a tensor a larger free buffer on a later step; a kept
    // tape would add a step's activations (peak − in use) every step.
    assert!(
        (hi - lo) * 4 < peak - lo,
        "in use between steps {lo}..{hi} bytes, a step's peak {peak}"
    );
    // The pool settles within the first steps (sizes find their buffers), then creates nothing.
    assert_eq!(
        between[2].created,
        between.last().unwrap().created,
        "steps after the third created new buffers"
    );
}
