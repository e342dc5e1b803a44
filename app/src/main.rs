//! webglide web app (leptos, client-side). For now: WebGPU detection, the
//! adapter report, and an in-browser kernel self-check; the generation UI
//! arrives with the GLIDE pipeline.

use engine::kernels::{self, Act};
use engine::{Gpu, GpuOptions};
use leptos::prelude::*;

#[derive(Clone, PartialEq)]
enum Status {
    Checking,
    /// No `navigator.gpu`, or it offers no adapter (detail).
    NoWebGpu(String),
    Failed(String),
    Ready(String),
}

fn has_webgpu() -> bool {
    let Some(window) = web_sys::window() else {
        return false;
    };
    js_sys::Reflect::get(&window.navigator(), &"gpu".into())
        .is_ok_and(|g| !g.is_undefined() && !g.is_null())
}

/// A small conv on the GPU compared with the CPU reference: proves the
/// kernels compile and run on this adapter.
async fn self_check(gpu: &Gpu) -> Result<String, String> {
    let e = |e: engine::Error| e.to_string();
    let x: Vec<f32> = engine::rng::randn(2 * 8 * 9 * 9, 1, 0);
    let w: Vec<f32> = engine::rng::randn(4 * 8 * 9, 2, 0);
    let wd = engine::WeightData::from_f32(&[4, 8, 3, 3], &w, engine::WeightDType::Q8).map_err(e)?;
    let xt = gpu.upload(&[2, 8, 9, 9], &x).map_err(e)?;
    let wt = gpu.upload_weight(&wd).map_err(e)?;
    let mut rec = gpu.recorder();
    let y = kernels::conv::conv2d(&mut rec, &xt, &wt, None, None, None).map_err(e)?;
    let y = kernels::elementwise::unary(&mut rec, &y, Act::Silu, 1.0, 0.0).map_err(e)?;
    rec.submit().map_err(e)?;
    let got = gpu.read(&y).await.map_err(e)?;
    let want: Vec<f32> =
        engine::reference::conv2d(&x, 2, 8, 9, 9, &wd.to_f32(), 4, 3, None, None, None)
            .iter()
            .map(|&v| engine::reference::act(v as f64, Act::Silu) as f32)
            .collect();
    let err = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    if err < 1e-3 {
        Ok(format!("kernel self-check passed (max error {err:.1e})"))
    } else {
        Err(format!("kernel self-check FAILED (max error {err:.1e})"))
    }
}

#[component]
fn App() -> impl IntoView {
    let status = RwSignal::new(Status::Checking);
    let check = RwSignal::new(String::new());
    leptos::task::spawn_local(async move {
        if !has_webgpu() {
            status.set(Status::NoWebGpu("navigator.gpu is missing".into()));
            return;
        }
        match Gpu::new(GpuOptions::default()).await {
            Err(engine::Error::NoAdapter(detail)) => status.set(Status::NoWebGpu(detail)),
            Err(err) => status.set(Status::Failed(err.to_string())),
            Ok(gpu) => {
                status.set(Status::Ready(gpu.report.to_string()));
                check.set(self_check(&gpu).await.unwrap_or_else(|e| e));
            }
        }
    });
    view! {
        <main>
            <h1>"webglide"</h1>
            <p class="tagline">"GLIDE text-to-image, running entirely on your GPU."</p>
            {move || match status.get() {
                Status::Checking => view! { <p data-testid="model-status">"Looking for a GPU…"</p> }.into_any(),
                Status::NoWebGpu(detail) => view! {
                    <section data-testid="error" class="error">
                        <h2>"WebGPU is not available in this browser"</h2>
                        <p>"webglide runs the model on your GPU through WebGPU. Use Chrome or Edge 113+ (desktop or Android), Safari 26+, or Firefox 141+ on Windows. On Linux Chrome, enable chrome://flags/#enable-unsafe-webgpu and Vulkan."</p>
                        <p class="detail">"Detail: "{detail}</p>
                    </section>
                }.into_any(),
                Status::Failed(msg) => view! {
                    <section data-testid="error" class="error"><h2>"Could not open the GPU"</h2><p>{msg}</p></section>
                }.into_any(),
                Status::Ready(report) => view! {
                    <section>
                        <h2>"GPU"</h2>
                        <pre data-testid="adapter">{report}</pre>
                        <p data-testid="self-check">{move || check.get()}</p>
                    </section>
                }.into_any(),
            }}
        </main>
    }
}

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}
