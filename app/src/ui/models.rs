//! The model manager: the active set and its state, the sets to choose from,
//! stored bytes and deletion, loading a set from a URL or from picked files.

use leptos::html;
use leptos::prelude::*;

use crate::actions;
use crate::state::{mb, AppState, ModelState};
use crate::store::ModelEntry;

#[component]
pub fn ModelManager() -> impl IntoView {
    let st = expect_context::<AppState>();
    let model_url = RwSignal::new(String::new());
    let files_ref = NodeRef::<html::Input>::new();
    let load_url = move |_| {
        let url = model_url.get_untracked().trim().to_string();
        if url.is_empty() {
            return;
        }
        let url = if url.ends_with('/') {
            url
        } else {
            format!("{url}/")
        };
        let id = format!(
            "url-{}",
            &engine::glide::weights::sha256_hex(url.as_bytes())[..12]
        );
        actions::load_models(
            st,
            ModelEntry {
                id,
                label: url.clone(),
                url: Some(url),
            },
        );
    };
    let on_pick_files = move |_| {
        if let Some(list) = files_ref.get_untracked().and_then(|input| input.files()) {
            actions::import_picked(st, list);
        }
    };
    view! {
        <section class="models">
            <h2>"Models"</h2>
            <ModelStatus />
            <div class="row">
                <label>"Model set "
                    <select data-testid="model-select"
                        prop:value=move || st.settings.with(|s| s.model.clone())
                        on:change=move |ev| {
                            let id = event_target_value(&ev);
                            if let Some(e) = st.entries().into_iter().find(|e| e.id == id) { actions::load_models(st, e) }
                        }>
                        {move || st.entries().into_iter().map(|e| view! { <option value=e.id.clone()>{e.label.clone()}</option> }).collect_view()}
                    </select>
                </label>
                <button data-testid="model-delete" on:click=move |_| actions::delete_model(st)>"Delete stored files"</button>
            </div>
            <p class="muted" data-testid="storage">{move || st.stored.get()}</p>
            <div class="row">
                <input data-testid="model-url" size="40" placeholder="https://example.org/glide-q8/ (folder with base/manifest.json)"
                    prop:value=move || model_url.get()
                    on:input=move |ev| model_url.set(event_target_value(&ev)) />
                <button data-testid="model-url-load" on:click=load_url>"Load from URL"</button>
            </div>
            <p class="hint">"Or pick a folder converted with " <code>"webglide convert"</code> " (base/, upsample/, base-inpaint/, upsample-inpaint/): "
                <input type="file" multiple node_ref=files_ref data-testid="model-files" on:change=on_pick_files /></p>
        </section>
    }
}

/// "ready · label: kinds · quant · size", or the load's progress.
#[component]
fn ModelStatus() -> impl IntoView {
    let st = expect_context::<AppState>();
    let state = st.model_state;
    view! {
        <p>
            <span data-testid="model-status">{move || match state.get() {
                ModelState::Ready { .. } => "ready".to_string(),
                ModelState::Loading(_) => "loading".to_string(),
                ModelState::Failed => "failed".to_string(),
                ModelState::None => "no model".to_string(),
            }}</span>
            " "
            <span data-testid="model-detail" class="muted">{move || match state.get() {
                ModelState::Ready { label, summary } => format!("{label}: {summary}"),
                ModelState::Loading(p) if p.total > 0 => format!("{} — {} of {}", p.what, mb(p.done), mb(p.total)),
                ModelState::Loading(p) => p.what,
                _ => String::new(),
            }}</span>
        </p>
        <progress data-testid="model-progress"
            class:hidden=move || !matches!(state.get(), ModelState::Loading(_))
            max=move || match state.get() { ModelState::Loading(p) => p.total.max(1), _ => 1 }
            value=move || match state.get() { ModelState::Loading(p) => p.done, _ => 0 }></progress>
    }
}
