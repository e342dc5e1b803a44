//! The form: mode, prompt, guidance, steps, sampler, batch, seed, upsampling,
//! Generate / Cancel and the progress line.

use leptos::prelude::*;

use crate::actions;
use crate::state::AppState;

#[component]
pub fn Controls() -> impl IntoView {
    let st = expect_context::<AppState>();
    let settings = st.settings;
    view! {
        <div class="controls">
            <label class="mode">
                "Mode "
                <select data-testid="mode"
                    prop:value=move || settings.with(|s| s.mode.clone())
                    on:change=move |ev| { let v = event_target_value(&ev); st.set(|s| s.mode = v) }>
                    <option value="text">"Text to image"</option>
                    <option value="inpaint" prop:disabled=move || !st.caps.get().inpaint>"Inpainting"</option>
                </select>
            </label>
            <label for="prompt">"Prompt"</label>
            <textarea id="prompt" data-testid="prompt" rows="3"
                placeholder="an oil painting of a corgi"
                prop:value=move || settings.with(|s| s.prompt.clone())
                on:input=move |ev| { let v = event_target_value(&ev); st.set(|s| s.prompt = v) }
                on:keydown=move |ev: web_sys::KeyboardEvent| {
                    if (ev.ctrl_key() || ev.meta_key()) && ev.key() == "Enter" {
                        ev.prevent_default();
                        actions::generate(st);
                    }
                }></textarea>
            <p class="hint">"Ctrl+Enter generates."</p>
            <label>
                "Guidance scale "
                <output data-testid="guidance-value">{move || format!("{:.1}", settings.with(|s| s.guidance))}</output>
                <input type="range" min="0" max="20" step="0.5" data-testid="guidance"
                    title="Classifier-free guidance: higher follows the prompt more closely; 0 runs the model without guidance"
                    prop:value=move || settings.with(|s| s.guidance.to_string())
                    on:input=move |ev| {
                        if let Ok(v) = event_target_value(&ev).parse::<f32>() {
                            st.set(|s| s.guidance = v.clamp(0.0, 20.0))
                        }
                    } />
            </label>
            <SamplingRow />
            <SeedRow />
            <div class="row buttons">
                <button class="primary" data-testid="generate"
                    prop:disabled=move || st.running.get() || !st.model_ready()
                    on:click=move |_| actions::generate(st)>"Generate"</button>
                <button data-testid="cancel"
                    prop:disabled=move || !st.running.get()
                    on:click=move |_| st.cancel.set(true)>"Cancel"</button>
            </div>
            <ProgressRow />
        </div>
    }
}

/// Steps, sampler and batch size.
#[component]
fn SamplingRow() -> impl IntoView {
    let st = expect_context::<AppState>();
    let settings = st.settings;
    view! {
        <div class="row">
            <label>"Steps "
                <input data-testid="steps" size="7"
                    title="Sampling steps: a number (e.g. 100, 50) or a GLIDE schedule such as fast27 or ddim25"
                    prop:value=move || settings.with(|s| s.steps.clone())
                    on:input=move |ev| { let v = event_target_value(&ev); st.set(|s| s.steps = v) } />
            </label>
            <label>"Sampler "
                <select data-testid="sampler"
                    prop:value=move || settings.with(|s| s.sampler.clone())
                    on:change=move |ev| { let v = event_target_value(&ev); st.set(|s| s.sampler = v) }>
                    <option value="ancestral">"ancestral"</option>
                    <option value="ddim">"DDIM"</option>
                </select>
            </label>
            <label>"Batch "
                <input type="number" min="1" max="4" data-testid="batch"
                    prop:value=move || settings.with(|s| s.batch.to_string())
                    on:input=move |ev| {
                        if let Ok(v) = event_target_value(&ev).parse::<usize>() {
                            st.set(|s| s.batch = v.clamp(1, 4))
                        }
                    } />
            </label>
        </div>
    }
}

/// Seed (or random) and the upsampler.
#[component]
fn SeedRow() -> impl IntoView {
    let st = expect_context::<AppState>();
    let settings = st.settings;
    view! {
        <div class="row">
            <label>"Seed "
                <input type="number" min="0" data-testid="seed"
                    prop:value=move || settings.with(|s| s.seed.to_string())
                    prop:disabled=move || settings.with(|s| s.random_seed)
                    on:input=move |ev| {
                        if let Ok(v) = event_target_value(&ev).trim().parse::<u64>() {
                            st.set(|s| s.seed = v.min(u32::MAX as u64))
                        }
                    } />
            </label>
            <label><input type="checkbox" data-testid="random-seed"
                prop:checked=move || settings.with(|s| s.random_seed)
                on:change=move |ev| { let v = event_target_checked(&ev); st.set(|s| s.random_seed = v) } />
                " random"</label>
            <label title=move || if st.upsample_available() { "" } else { "this model set has no upsampler for this mode" }>
                <input type="checkbox" data-testid="upsample"
                prop:disabled=move || !st.upsample_available()
                prop:checked=move || settings.with(|s| s.upsample) && st.upsample_available()
                on:change=move |ev| { let v = event_target_checked(&ev); st.set(|s| s.upsample = v) } />
                " upsample to 4×"</label>
            <label>"Upsampler steps "
                <input data-testid="upsample-steps" size="7"
                    title="The upsampler's steps; the GLIDE notebooks use fast27"
                    prop:value=move || settings.with(|s| s.upsample_steps.clone())
                    prop:disabled=move || settings.with(|s| !s.upsample)
                    on:input=move |ev| { let v = event_target_value(&ev); st.set(|s| s.upsample_steps = v) } />
            </label>
        </div>
    }
}

#[component]
fn ProgressRow() -> impl IntoView {
    let st = expect_context::<AppState>();
    view! {
        <div class="progress-row">
            <progress data-testid="progress"
                max=move || st.progress.with(|p| p.2.max(1))
                value=move || st.progress.with(|p| p.1)></progress>
            <span data-testid="progress-text">{move || {
                let (stage, done, total) = st.progress.get();
                if total == 0 { String::new() } else { format!("{stage} {done}/{total}") }
            }}</span>
            <span data-testid="run-status" class="muted">{move || st.status_line.get()}</span>
        </div>
    }
}
