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
