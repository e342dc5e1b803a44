//! The form: pipeline and mode, prompt, each pipeline's guidance and steps,
//! seed and batch, Generate / Cancel and the progress line.

use leptos::prelude::*;

use crate::actions;
use crate::state::AppState;

#[component]
pub fn Controls() -> impl IntoView {
    let st = expect_context::<AppState>();
    let settings = st.settings;
    let glide = move || settings.with(|s| s.pipeline == "glide");
    let clip = move || settings.with(actions::clip_guided) && st.caps.get().clip_guidance;
    view! {
        <div class="controls">
            <PipelineAndMode />
            <label for="prompt">"Prompt"</label>
            <textarea id="prompt" data-testid="prompt" rows="3" maxlength=engine::limits::MAX_PROMPT_BYTES
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
            <div class:hidden=move || !glide()>
                <GuidanceMethod />
                <div class:hidden=clip>
                    <Slider label="Guidance scale " testid="guidance"
                        title="Classifier-free guidance: higher follows the prompt more closely; 0 runs the model without guidance"
                        get=Signal::derive(move || settings.with(|s| s.guidance))
                        put=move |v| st.set(|s| s.guidance = v) />
                </div>
                <div class:hidden=move || !clip()>
                    <Slider label="CLIP guidance scale " testid="clip-guidance"
                        title="CLIP guidance: each step moves toward images the noisy CLIP matches with the prompt; 0 runs the model without guidance"
                        get=Signal::derive(move || settings.with(|s| s.clip_guidance))
                        put=move |v| st.set(|s| s.clip_guidance = v) />
                </div>
                <GlideSteps />
            </div>
            <div class:hidden=glide>
                <UnclipSettings />
            </div>
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

/// GLIDE or unCLIP (whichever the set has), and the pipeline's modes.
#[component]
fn PipelineAndMode() -> impl IntoView {
    let st = expect_context::<AppState>();
    let settings = st.settings;
    let set_pipeline = move |ev| {
        let v = event_target_value(&ev);
        let caps = st.caps.get_untracked();
        st.set(|s| {
            s.pipeline = v;
            s.mode = actions::fit_mode(s, caps);
        });
    };
    let unclip = move || settings.with(|s| s.pipeline == "unclip");
    view! {
        <div class="row">
            <label class="mode">
                "Pipeline "
                <select data-testid="pipeline"
                    prop:value=move || settings.with(|s| s.pipeline.clone())
                    on:change=set_pipeline>
                    <option value="glide" prop:disabled=move || !st.caps.get().glide>"GLIDE"</option>
                    <option value="unclip" prop:disabled=move || !st.caps.get().unclip>"unCLIP (Karlo)"</option>
                </select>
            </label>
            <label class="mode">
                "Mode "
                <select data-testid="mode"
                    prop:value=move || settings.with(|s| s.mode.clone())
                    on:change=move |ev| { let v = event_target_value(&ev); st.set(|s| s.mode = v) }>
                    <option value="text">"Text to image"</option>
                    <option value="inpaint" class:hidden=unclip
                        prop:disabled=move || unclip() || !st.caps.get().inpaint>"Inpainting"</option>
                    <option value="variations" class:hidden=move || !unclip()
                        prop:disabled=move || !unclip() || !st.caps.get().variations>"Image variations"</option>
                </select>
            </label>
        </div>
    }
}

/// Classifier-free or CLIP guidance (text to image, when the set has a noisy CLIP).
#[component]
fn GuidanceMethod() -> impl IntoView {
    let st = expect_context::<AppState>();
    let settings = st.settings;
    let shown = move || st.caps.get().clip_guidance && settings.with(|s| s.mode == "text");
    view! {
        <label class="mode" class:hidden=move || !shown()
            title="Classifier-free guidance (the text2im notebook) or the noisy CLIP's gradient (clip_guided.ipynb: ancestral steps, no CFG batch)">
            "Guidance "
            <select data-testid="guidance-method"
                prop:value=move || settings.with(|s| s.guidance_method.clone())
                on:change=move |ev| { let v = event_target_value(&ev); st.set(|s| s.guidance_method = v) }>
                <option value="cfg">"classifier-free"</option>
                <option value="clip">"CLIP"</option>
            </select>
        </label>
    }
}

/// A 0–20 slider with its value shown.
#[component]
fn Slider(
    label: &'static str,
    testid: &'static str,
    title: &'static str,
    get: Signal<f32>,
    put: impl Fn(f32) + 'static,
) -> impl IntoView {
    view! {
        <label title=title>
            {label}
            <output data-testid=format!("{testid}-value")>{move || format!("{:.1}", get.get())}</output>
            <input type="range" min="0" max="20" step="0.5" data-testid=testid
                prop:value=move || get.get().to_string()
                on:input=move |ev| {
                    if let Ok(v) = event_target_value(&ev).parse::<f32>() {
                        put(v.clamp(0.0, 20.0))
                    }
                } />
        </label>
    }
}

/// A respacing text field ("100", "fast27", "ddim25", …).
#[component]
fn StepsInput(
    label: &'static str,
    testid: &'static str,
    title: &'static str,
    get: Signal<String>,
    put: impl Fn(String) + 'static,
    #[prop(optional)] disabled: Option<Signal<bool>>,
) -> impl IntoView {
    view! {
        <label title=title>{label}
            <input data-testid=testid size="7"
                prop:value=move || get.get()
                prop:disabled=move || disabled.is_some_and(|d| d.get())
                on:input=move |ev| put(event_target_value(&ev)) />
        </label>
    }
}

/// GLIDE: steps, sampler and the upsampler.
#[component]
fn GlideSteps() -> impl IntoView {
    let st = expect_context::<AppState>();
    let settings = st.settings;
    let clip = move || settings.with(actions::clip_guided) && st.caps.get().clip_guidance;
    view! {
        <div class="row">
            <StepsInput label="Steps " testid="steps"
                title="Sampling steps: a number (e.g. 100, 50) or a GLIDE schedule such as fast27 or ddim25"
                get=Signal::derive(move || settings.with(|s| s.steps.clone()))
                put=move |v| st.set(|s| s.steps = v) />
            <label title=move || if clip() { "CLIP guidance uses the ancestral sampler" } else { "" }>"Sampler "
                <select data-testid="sampler"
                    prop:value=move || if clip() { "ancestral".into() } else { settings.with(|s| s.sampler.clone()) }
                    prop:disabled=clip
                    on:change=move |ev| { let v = event_target_value(&ev); st.set(|s| s.sampler = v) }>
                    <option value="ancestral">"ancestral"</option>
                    <option value="ddim">"DDIM"</option>
                </select>
            </label>
        </div>
        <div class="row">
            <label title=move || if st.upsample_available() { "" } else { "this model set has no upsampler for this mode" }>
                <input type="checkbox" data-testid="upsample"
                prop:disabled=move || !st.upsample_available()
                prop:checked=move || settings.with(|s| s.upsample) && st.upsample_available()
                on:change=move |ev| { let v = event_target_checked(&ev); st.set(|s| s.upsample = v) } />
                " upsample to 4×"</label>
            <StepsInput label="Upsampler steps " testid="upsample-steps"
                title="The upsampler's steps; the GLIDE notebooks use fast27"
                get=Signal::derive(move || settings.with(|s| s.upsample_steps.clone()))
                put=move |v| st.set(|s| s.upsample_steps = v)
                disabled=Signal::derive(move || settings.with(|s| !s.upsample)) />
        </div>
    }
}

/// unCLIP: the prior's and the decoder's guidance, and each stage's steps.
#[component]
fn UnclipSettings() -> impl IntoView {
    let st = expect_context::<AppState>();
    let settings = st.settings;
    let variations = move || settings.with(|s| s.mode == "variations");
    view! {
        <div class:hidden=variations>
            <Slider label="Prior guidance " testid="prior-guidance"
                title="Guidance of the prior (text → CLIP image embedding); Karlo uses 4"
                get=Signal::derive(move || settings.with(|s| s.prior_guidance))
                put=move |v| st.set(|s| s.prior_guidance = v) />
        </div>
        <Slider label="Decoder guidance " testid="decoder-guidance"
            title="Guidance of the decoder (embedding + text → 64-px image); Karlo uses 8"
            get=Signal::derive(move || settings.with(|s| s.decoder_guidance))
            put=move |v| st.set(|s| s.decoder_guidance = v) />
        <div class="row">
            <StepsInput label="Prior steps " testid="prior-steps"
                title="The prior's steps; Karlo uses 25"
                get=Signal::derive(move || settings.with(|s| s.prior_steps.clone()))
                put=move |v| st.set(|s| s.prior_steps = v)
                disabled=Signal::derive(variations) />
            <StepsInput label="Decoder steps " testid="decoder-steps"
                title="The decoder's steps: Karlo uses 50, or 25 in its fast mode"
                get=Signal::derive(move || settings.with(|s| s.decoder_steps.clone()))
                put=move |v| st.set(|s| s.decoder_steps = v) />
            <StepsInput label="SR steps " testid="sr-steps"
                title="Super-resolution steps: Karlo uses 7 (the last one by its second network)"
                get=Signal::derive(move || settings.with(|s| s.sr_steps.clone()))
                put=move |v| st.set(|s| s.sr_steps = v) />
        </div>
    }
}

/// Seed (or random) and batch size.
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
