//! Karlo's prior and decoder fixtures replayed in the browser on WebGPU, at
//! the same 1e-4 tolerance as natively. The fixture files are embedded in the
//! test's wasm.
#![cfg(target_arch = "wasm32")]

use engine::glide::check::Report;
use engine::glide::weights::WeightSource;
use engine::unclip::check::{check_decoder, check_prior};
use engine::{Gpu, GpuOptions, WeightDType};

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

fn assert_ok(case: &str, report: &Report) {
    let bad: Vec<String> = report
        .rows
        .iter()
        .filter(|r| !r.ok)
        .map(|r| format!("{} ({:.2e})", r.name, r.rel))
        .collect();
    assert!(
        report.ok(),
        "{case}: over tolerance in the browser: {bad:?}"
    );
    let worst = report.rows.iter().map(|r| r.rel).fold(0.0, f64::max);
    wasm_bindgen_test::console_log!(
        "{case}: {} tensors within 1e-4 (worst {worst:.2e})",
        report.rows.len()
    );
}

#[wasm_bindgen_test::wasm_bindgen_test]
async fn prior_fixture_in_the_browser() {
    let gpu = Gpu::new(GpuOptions::default())
        .await
        .expect("WebGPU adapter");
    let weights = include_bytes!("../../../shared/fixtures/unclip/prior/weights.safetensors");
    let source = WeightSource::single(weights).unwrap();
    let report = check_prior(
        &gpu,
        include_bytes!("../../../shared/fixtures/unclip/prior/config.json"),
        &source,
        include_bytes!("../../../shared/fixtures/unclip/prior/io.safetensors"),
        1e-4,
        WeightDType::F32,
    )
    .await
    .unwrap();
    assert_ok("prior", &report);
}

#[wasm_bindgen_test::wasm_bindgen_test]
async fn decoder_fixture_in_the_browser() {
    let gpu = Gpu::new(GpuOptions::default())
        .await
        .expect("WebGPU adapter");
    let weights = include_bytes!("../../../shared/fixtures/unclip/decoder/weights.safetensors");
    let source = WeightSource::single(weights).unwrap();
    let report = check_decoder(
        &gpu,
        include_bytes!("../../../shared/fixtures/unclip/decoder/config.json"),
        &source,
        include_bytes!("../../../shared/fixtures/unclip/decoder/io.safetensors"),
        1e-4,
        WeightDType::F32,
    )
    .await
    .unwrap();
    assert_ok("decoder", &report);
}
