//! The GLIDE base fixture (forward with intermediates + the whole CFG sampling
//! trace) replayed in the browser on WebGPU, at the same 1e-4 tolerance as
//! natively. The fixture files are embedded in the test's wasm.
#![cfg(target_arch = "wasm32")]

use engine::glide::check::check_case;
use engine::glide::weights::WeightSource;
use engine::{Gpu, GpuOptions, WeightDType};

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

const CASE: &str = "../../../shared/fixtures/glide/text2im_base";

#[wasm_bindgen_test::wasm_bindgen_test]
async fn text2im_base_fixture_in_the_browser() {
    let gpu = Gpu::new(GpuOptions::default())
        .await
        .expect("WebGPU adapter");
    let weights = include_bytes!("../../../shared/fixtures/glide/text2im_base/weights.safetensors");
    let source = WeightSource::single(weights).unwrap();
    let report = check_case(
        &gpu,
        include_bytes!("../../../shared/fixtures/glide/text2im_base/config.json"),
        &source,
        include_bytes!("../../../shared/fixtures/glide/text2im_base/io.safetensors"),
        Some(include_bytes!(
            "../../../shared/fixtures/glide/text2im_base/trace.safetensors"
        )),
        1e-4,
        WeightDType::F32,
    )
    .await
    .unwrap();
    let bad: Vec<String> = report
        .rows
        .iter()
        .filter(|r| !r.ok)
        .map(|r| format!("{} ({:.2e})", r.name, r.rel))
        .collect();
    assert!(
        report.ok(),
        "{CASE}: over tolerance in the browser: {bad:?}"
    );
    let worst = report.rows.iter().map(|r| r.rel).fold(0.0, f64::max);
    wasm_bindgen_test::console_log!(
        "{} tensors within 1e-4 (worst {worst:.2e})",
        report.rows.len()
    );
}
