//! The GPU line, the error banner (with a retry after a lost device) and warnings.

use leptos::prelude::*;

use crate::actions;
use crate::state::{AppState, GpuStatus};

#[component]
pub fn StatusPanel() -> impl IntoView {
    let st = expect_context::<AppState>();
    view! {
        {move || match st.gpu_status.get() {
            GpuStatus::NoWebGpu(detail) => view! {
                <section data-testid="error" class="error">
                    <h2>"WebGPU is not available in this browser"</h2>
                    <p>"webglide runs the model on your GPU through WebGPU. Use Chrome or Edge 113+ (desktop or Android), Safari 26+, or Firefox 141+ on Windows. On Linux Chrome, enable chrome://flags/#enable-unsafe-webgpu and Vulkan."</p>
                    <p class="detail">"Detail: "{detail}</p>
                </section>
            }.into_any(),
            GpuStatus::Failed(msg) => view! {
                <section data-testid="error" class="error">
                    <h2>"Could not open the GPU"</h2><p>{msg}</p>
                    <button on:click=move |_| actions::start(st)>"Retry"</button>
                </section>
            }.into_any(),
            GpuStatus::Checking => view! { <p class="muted">"Looking for a GPU…"</p> }.into_any(),
            GpuStatus::Ready { adapter, f16, .. } => view! {
                <p class="muted" data-testid="gpu-line">"GPU: "{adapter}" · "{f16}</p>
            }.into_any(),
        }}
        {move || st.error.get().map(|f| view! {
            <section data-testid="error" class="error" role="alert">
                <p>{f.message.clone()}</p>
                {f.device_lost.then(|| view! {
                    <button data-testid="retry" on:click=move |_| actions::start(st)>"Reopen the GPU and retry"</button>
                })}
                <button class="link" on:click=move |_| st.error.set(None)>"Dismiss"</button>
            </section>
        })}
        {move || {
            st.warnings
                .get()
                .into_iter()
                .map(|w| view! { <p class="warning" data-testid="warning">{w}</p> })
                .collect_view()
        }}
    }
}
