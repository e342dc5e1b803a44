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
