//! webglide web app (leptos, client-side): GLIDE text-to-image and
//! inpainting on the user's GPU through WebGPU. The engine runs in the page;
//! every sampling step is one GPU submission and the page only reads back the
//! live preview. `state` holds what the page knows, `actions` what it does,
//! `ui` one component per part of the screen.

mod actions;
mod imageio;
mod mask;
mod run;
mod settings;
mod state;
mod store;
mod ui;

use leptos::prelude::*;

use state::{AppState, GpuStatus};
use ui::{About, CanvasColumn, Controls, Gallery, ModelManager, StatusPanel};

#[component]
fn App() -> impl IntoView {
    let st = AppState::new();
    provide_context(st);
    // Settings survive reloads.
    Effect::new(move |_| st.settings.with(|s| s.save()));
    actions::start(st);
    if let Some(sw) = web_sys::window().map(|w| w.navigator().service_worker()) {
        // The app shell works offline after the first visit (models live in Cache Storage).
        let _ = sw.register("sw.js");
    }
    view! {
        <header>
            <h1>"webglide"</h1>
            <p class="tagline">"GLIDE text-to-image and inpainting, and unCLIP (Karlo), running entirely on your GPU."</p>
        </header>
        <main>
            <StatusPanel />
            <section class="workspace" class:hidden=move || !matches!(st.gpu_status.get(), GpuStatus::Ready { .. })>
                <Controls />
                <CanvasColumn />
            </section>
            <Gallery />
            <ModelManager />
            <About />
        </main>
    }
}

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
    // The model-files picker takes whole folders.
    if let Some(el) = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.query_selector("[data-testid=model-files]").ok().flatten())
    {
        let _ = el.set_attribute("webkitdirectory", "");
    }
}
