//! webglide web app (leptos, client-side): GLIDE text-to-image and
//! inpainting on the user's GPU through WebGPU. The engine runs in the page;
//! every sampling step is one GPU submission and the page only reads back the
//! live preview.

mod imageio;
mod mask;
mod run;
mod settings;
mod store;

use std::rc::Rc;

use engine::glide::pipeline::Sampler;
use engine::glide::tokenizer::GlideTokenizer;
use engine::kernels::{self, Act};
use engine::{Gpu, GpuOptions};
use leptos::html;
use leptos::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use mask::{MaskEditor, MaskHandle, MASK_SIZE};
use run::{Failure, Models};
use settings::Settings;
use store::{LoadProgress, ModelEntry};

#[derive(Clone, PartialEq)]
enum GpuStatus {
    Checking,
    /// No `navigator.gpu`, or it offers no adapter (detail).
    NoWebGpu(String),
    Failed(String),
    Ready {
        report: String,
        /// One line: adapter name and backend.
        adapter: String,
        f16: String,
    },
}

#[derive(Clone, PartialEq)]
enum ModelState {
    None,
    Loading(LoadProgress),
    Ready { label: String, summary: String },
    Failed,
}

#[derive(Clone, PartialEq)]
struct ResultItem {
    id: u32,
    url: String,
    rgb: Vec<u8>,
    size: usize,
    settings: Settings,
    seed: u64,
    seconds: f64,
}

/// What the page holds that is not `Send` (GPU objects).
#[derive(Clone, Default)]
struct Engine {
    gpu: Option<Rc<Gpu>>,
    models: Option<Rc<Models>>,
    tok: Option<Rc<GlideTokenizer>>,
}

fn has_webgpu() -> bool {
    let Some(window) = web_sys::window() else {
        return false;
    };
    js_sys::Reflect::get(&window.navigator(), &"gpu".into())
        .is_ok_and(|g| !g.is_undefined() && !g.is_null())
}

fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// A small q8 conv on the GPU compared with the CPU reference: proves the
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

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn random_seed() -> u64 {
    (js_sys::Math::random() * 4294967296.0) as u64
}

fn png_params(s: &Settings, seed: u64, model: &str) -> Vec<(String, String)> {
    [
        (
            "Software",
            format!("webglide {}", env!("CARGO_PKG_VERSION")),
        ),
        ("webglide:mode", s.mode.clone()),
        ("webglide:prompt", s.prompt.clone()),
        ("webglide:guidance", s.guidance.to_string()),
        ("webglide:steps", s.steps.clone()),
        ("webglide:sampler", s.sampler.clone()),
        (
            "webglide:upsample_steps",
            if s.upsample {
                s.upsample_steps.clone()
            } else {
                "none".into()
            },
        ),
        ("webglide:seed", seed.to_string()),
        ("webglide:model", model.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The warning shown for an optional model that is present but unusable.
fn unavailable(problem: &str) -> String {
    format!("{problem} — this model is left out; everything that does not need it works.")
}

#[component]
fn App() -> impl IntoView {
    let gpu_status = RwSignal::new(GpuStatus::Checking);
    let self_check_text = RwSignal::new(String::new());
    let model_state = RwSignal::new(ModelState::None);
    let error = RwSignal::new(None::<Failure>);
    let warnings = RwSignal::new(Vec::<String>::new());
    let settings = RwSignal::new(Settings::load());
    let running = RwSignal::new(false);
    let cancel = RwSignal::new(false);
    let progress = RwSignal::new((String::new(), 0usize, 0usize));
    let status_line = RwSignal::new(String::new());
    let gallery = RwSignal::new(Vec::<ResultItem>::new());
    let next_id = StoredValue::new(0u32);
    let inpaint_src = RwSignal::new(None::<(Vec<u8>, usize, usize)>);
    let stored = RwSignal::new(String::new());
    // Which optional kinds the loaded set has: (upsample, base-inpaint, upsample-inpaint).
    let caps = RwSignal::new((false, false, false));
    let model_url = RwSignal::new(String::new());
    let engine = StoredValue::new_local(Engine::default());
    let mask = MaskHandle::new();
    let preview_ref = NodeRef::<html::Canvas>::new();
    let files_ref = NodeRef::<html::Input>::new();

    // Settings survive reloads.
    Effect::new(move |_| settings.with(|s| s.save()));

    let entries = move || {
        let mut v = vec![ModelEntry::demo()];
        v.extend(settings.with(|s| s.custom_models.clone()));
        v
    };
    let active_entry = move || {
        let id = settings.with_untracked(|s| s.model.clone());
        entries()
            .into_iter()
            .find(|e| e.id == id)
            .unwrap_or_else(ModelEntry::demo)
    };

    let refresh_stored = move || {
        leptos::task::spawn_local(async move {
            let id = settings.with_untracked(|s| s.model.clone());
            let size = store::stored_bytes(&id).await.unwrap_or(0);
            let est = store::storage_estimate().await.unwrap_or_default();
            stored.set(format!("{} stored for this model · {est}", mb(size)));
        });
    };

    // Loads a model set onto the GPU (cache first); a failure keeps the old set.
    let load_models = move |entry: ModelEntry| {
        leptos::task::spawn_local(async move {
            let Some(gpu) = engine.with_value(|e| e.gpu.clone()) else {
                return;
            };
            error.set(None);
            warnings.set(Vec::new());
            model_state.set(ModelState::Loading(LoadProgress {
                what: "reading the manifest".into(),
                ..Default::default()
            }));
            let loaded = store::load(
                &entry,
                |p| model_state.set(ModelState::Loading(p)),
                |w| warnings.update(|ws| ws.push(w)),
            )
            .await;
            let comps = match loaded {
                Ok(l) => {
                    warnings.update(|ws| ws.extend(l.unavailable.iter().map(|u| unavailable(u))));
                    l.components
                }
                Err(e) => {
                    error.set(Some(Failure::msg(e)));
                    model_state.set(ModelState::Failed);
                    refresh_stored();
                    return;
                }
            };
            let bytes: u64 = comps
                .iter()
                .flat_map(|c| c.manifest.shards.iter().map(|s| s.bytes))
                .sum();
            let kinds: Vec<String> = comps.iter().map(|c| c.manifest.kind.clone()).collect();
            model_state.set(ModelState::Loading(LoadProgress {
                what: "uploading the weights to the GPU".into(),
                done: bytes,
                total: bytes,
            }));
            store::yield_now().await;
            // Release the previous set's GPU memory first.
            engine.update_value(|e| e.models = None);
            match run::upload(&gpu, comps) {
                Ok((models, broken)) => {
                    warnings.update(|ws| ws.extend(broken.iter().map(|u| unavailable(u))));
                    caps.set((
                        models.upsample.is_some(),
                        models.inpaint.is_some(),
                        models.upsample_inpaint.is_some(),
                    ));
                    let summary =
                        format!("{} · {} · {}", kinds.join(", "), models.quant, mb(bytes));
                    engine.update_value(|e| e.models = Some(Rc::new(models)));
                    model_state.set(ModelState::Ready {
                        label: entry.label.clone(),
                        summary,
                    });
                    settings.update(|s| {
                        s.model = entry.id.clone();
                        if entry.id != "demo" && !s.custom_models.contains(&entry) {
                            s.custom_models.push(entry.clone());
                        }
                    });
                }
                Err(f) => {
                    error.set(Some(f));
                    model_state.set(ModelState::Failed);
                }
            }
            refresh_stored();
        });
    };

    // Opens the GPU, then loads the chosen model set (also the "retry" after a lost device).
    let start = move || {
        leptos::task::spawn_local(async move {
            error.set(None);
            if !has_webgpu() {
                gpu_status.set(GpuStatus::NoWebGpu("navigator.gpu is missing".into()));
                return;
            }
            gpu_status.set(GpuStatus::Checking);
            engine.set_value(Engine::default());
            match Gpu::new(GpuOptions::default()).await {
                Err(engine::Error::NoAdapter(detail)) => {
                    gpu_status.set(GpuStatus::NoWebGpu(detail))
                }
                Err(err) => gpu_status.set(GpuStatus::Failed(err.to_string())),
                Ok(gpu) => {
                    let f16 = match (gpu.report.shader_f16, gpu.report.subgroups) {
                        (true, true) => "computing in f32; shader-f16 used for f16 weights, subgroups for reductions",
                        (true, false) => "computing in f32; shader-f16 used for f16 weights (no subgroups)",
                        (false, true) => "computing in f32; subgroups used for reductions (no shader-f16: f16 weights unpacked in the shaders)",
                        (false, false) => "computing in f32 (no shader-f16 or subgroups: portable kernels)",
                    };
                    let name = if gpu.report.name.is_empty() {
                        "unnamed adapter"
                    } else {
                        gpu.report.name.as_str()
                    };
                    gpu_status.set(GpuStatus::Ready {
                        report: gpu.report.to_string(),
                        adapter: format!("{name} ({})", gpu.report.backend),
                        f16: f16.into(),
                    });
                    let gpu = Rc::new(gpu);
                    let tok = run::tokenizer().ok().map(Rc::new);
                    engine.set_value(Engine {
                        gpu: Some(gpu.clone()),
                        models: None,
                        tok,
                    });
                    load_models(active_entry());
                    self_check_text.set(self_check(&gpu).await.unwrap_or_else(|e| e));
                }
            }
        });
    };
    start();
    if let Some(sw) = web_sys::window().map(|w| w.navigator().service_worker()) {
        // The app shell works offline after the first visit (models live in Cache Storage).
        let _ = sw.register("sw.js");
    }

    let generate = move || {
        if running.get_untracked() {
            return;
        }
        let Engine {
            gpu: Some(gpu),
            models: Some(models),
            tok: Some(tok),
        } = engine.get_value()
        else {
            error.set(Some(Failure::msg(
                "no model is loaded yet (see Models below)".into(),
            )));
            return;
        };
        let mut s = settings.get_untracked();
        let (has_up, has_inpaint, has_up_inpaint) = caps.get_untracked();
        if s.mode == "inpaint" && !has_inpaint {
            error.set(Some(Failure::msg(
                "this model set has no inpainting model (base-inpaint)".into(),
            )));
            return;
        }
        // Upsample only where the set has an upsampler for this mode.
        s.upsample &= if s.mode == "inpaint" {
            has_up_inpaint
        } else {
            has_up
        };
        if s.random_seed {
            s.seed = random_seed();
            settings.update(|st| st.seed = s.seed);
        }
        let inpaint = if s.mode == "inpaint" {
            let Some((rgb, w, h)) = inpaint_src.get_untracked() else {
                error.set(Some(Failure::msg(
                    "choose an image to inpaint first (upload one, or send a result to inpainting)"
                        .into(),
                )));
                return;
            };
            let regen = mask.regen().unwrap_or_default();
            Some(run::InpaintInput {
                rgb,
                w,
                h,
                regen,
                mw: MASK_SIZE as usize,
                mh: MASK_SIZE as usize,
            })
        } else {
            None
        };
        let job = run::Job {
            prompt: s.prompt.clone(),
            guidance: s.guidance,
            steps: s.steps.trim().to_string(),
            sampler: if s.sampler == "ddim" {
                Sampler::Ddim
            } else {
                Sampler::Ancestral
            },
            seed: s.seed,
            batch: s.batch,
            upsample: s.upsample,
            upsample_steps: s.upsample_steps.trim().to_string(),
            inpaint,
        };
        let model_label = active_entry().label;
        error.set(None);
        cancel.set(false);
        running.set(true);
        status_line.set(format!("seed {}", s.seed));
        leptos::task::spawn_local(async move {
            let t0 = now_ms();
            let result = run::run(
                &gpu,
                &models,
                &tok,
                &job,
                &|| cancel.get_untracked(),
                |ev| match ev {
                    run::Event::Step { stage, done, total } => {
                        progress.set((stage.to_string(), done, total))
                    }
                    run::Event::Preview { images, size } => {
                        if let Some(c) = preview_ref.get_untracked() {
                            let _ = imageio::draw_rgb(&c, &images, size as u32);
                        }
                    }
                },
            )
            .await;
            let seconds = (now_ms() - t0) / 1000.0;
            match result {
                Ok(Some(out)) => {
                    for rgb in out.images {
                        let params = png_params(&s, s.seed, &model_label);
                        let url = imageio::png_bytes(&rgb, out.size as u32, &params)
                            .and_then(|png| imageio::blob_url(&png, "image/png"));
                        match url {
                            Ok(url) => {
                                let id = next_id.get_value();
                                next_id.set_value(id + 1);
                                gallery.update(|g| {
                                    g.insert(
                                        0,
                                        ResultItem {
                                            id,
                                            url,
                                            rgb,
                                            size: out.size,
                                            settings: s.clone(),
                                            seed: s.seed,
                                            seconds,
                                        },
                                    )
                                });
                            }
                            Err(e) => error.set(Some(Failure::msg(e))),
                        }
                    }
                    status_line.set(format!("done in {seconds:.1} s · seed {}", s.seed));
                }
                Ok(None) => status_line.set(format!("cancelled after {seconds:.1} s")),
                Err(f) => {
                    status_line.set("failed".into());
                    error.set(Some(f));
                }
            }
            running.set(false);
        });
    };

    let on_upload = move |ev: web_sys::Event| {
        let Some(input) = ev
            .target()
            .and_then(|t| t.dyn_into::<web_sys::HtmlInputElement>().ok())
        else {
            return;
        };
        let Some(file) = input.files().and_then(|f| f.get(0)) else {
            return;
        };
        leptos::task::spawn_local(async move {
            match imageio::decode(&file).await {
                Ok(img) => {
                    error.set(None);
                    inpaint_src.set(Some(img));
                    mask.clear();
                }
                Err(e) => error.set(Some(Failure::msg(e))),
            }
        });
    };

    let on_pick_files = move |_| {
        let Some(input) = files_ref.get_untracked() else {
            return;
        };
        let Some(list) = input.files() else { return };
        leptos::task::spawn_local(async move {
            let mut files = Vec::new();
            let mut folder = String::from("files");
            for i in 0..list.length() {
                let Some(f) = list.get(i) else { continue };
                let path = js_sys::Reflect::get(&f, &"webkitRelativePath".into())
                    .ok()
                    .and_then(|p| p.as_string())
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| f.name());
                if let Some(first) = path.split('/').next() {
                    folder = first.to_string();
                }
                match JsFuture::from(f.array_buffer()).await {
                    Ok(buf) => files.push((path, js_sys::Uint8Array::new(&buf).to_vec())),
                    Err(e) => {
                        error.set(Some(Failure::msg(format!(
                            "could not read {}: {}",
                            f.name(),
                            store::js_err(e)
                        ))));
                        return;
                    }
                }
            }
            let id = format!("local-{folder}");
            model_state.set(ModelState::Loading(LoadProgress {
                what: "verifying the picked files".into(),
                ..Default::default()
            }));
            match store::import_files(&id, &files).await {
                Ok(_) => load_models(ModelEntry {
                    id,
                    label: format!("{folder} (local files)"),
                    url: None,
                }),
                Err(e) => {
                    model_state.set(ModelState::Failed);
                    error.set(Some(Failure::msg(e)));
                }
            }
        });
    };

    let delete_model = move |_| {
        let entry = active_entry();
        leptos::task::spawn_local(async move {
            if let Err(e) = store::delete(&entry.id).await {
                error.set(Some(Failure::msg(e)));
            }
            if entry.id != "demo" {
                // A removed set leaves the list; the page goes back to the demo model.
                settings.update(|s| {
                    s.custom_models.retain(|m| m.id != entry.id);
                    s.model = "demo".into();
                });
                engine.update_value(|e| e.models = None);
                model_state.set(ModelState::None);
                load_models(ModelEntry::demo());
            } else {
                refresh_stored();
            }
        });
    };

    let set = move |f: &dyn Fn(&mut Settings)| settings.update(|s| f(s));
    let ready = move || matches!(model_state.get(), ModelState::Ready { .. });
    let brush = Signal::derive(move || settings.with(|s| s.brush));
    let upsample_available = move || {
        let (up, _, up_inpaint) = caps.get();
        if settings.with(|s| s.mode == "inpaint") {
            up_inpaint
        } else {
            up
        }
    };

    view! {
        <header>
            <h1>"webglide"</h1>
            <p class="tagline">"GLIDE text-to-image and inpainting, running entirely on your GPU."</p>
        </header>
        <main>
            {move || match gpu_status.get() {
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
                        <button on:click=move |_| start()>"Retry"</button>
                    </section>
                }.into_any(),
                GpuStatus::Checking => view! { <p class="muted">"Looking for a GPU…"</p> }.into_any(),
                GpuStatus::Ready { adapter, f16, .. } => view! {
                    <p class="muted" data-testid="gpu-line">"GPU: "{adapter}" · "{f16}</p>
                }.into_any(),
            }}
            {move || error.get().map(|f| view! {
                <section data-testid="error" class="error" role="alert">
                    <p>{f.message.clone()}</p>
                    {f.device_lost.then(|| view! {
                        <button data-testid="retry" on:click=move |_| start()>"Reopen the GPU and retry"</button>
                    })}
                    <button class="link" on:click=move |_| error.set(None)>"Dismiss"</button>
                </section>
            })}
            {move || {
                warnings
                    .get()
                    .into_iter()
                    .map(|w| view! { <p class="warning" data-testid="warning">{w}</p> })
                    .collect_view()
            }}

            <section class="workspace" class:hidden=move || !matches!(gpu_status.get(), GpuStatus::Ready { .. })>
                <div class="controls">
                    <label class="mode">
                        "Mode "
                        <select data-testid="mode"
                            prop:value=move || settings.with(|s| s.mode.clone())
                            on:change=move |ev| { let v = event_target_value(&ev); set(&|s| s.mode = v.clone()) }>
                            <option value="text">"Text to image"</option>
                            <option value="inpaint" prop:disabled=move || !caps.get().1>"Inpainting"</option>
                        </select>
                    </label>
                    <label for="prompt">"Prompt"</label>
                    <textarea id="prompt" data-testid="prompt" rows="3"
                        placeholder="an oil painting of a corgi"
                        prop:value=move || settings.with(|s| s.prompt.clone())
                        on:input=move |ev| { let v = event_target_value(&ev); set(&|s| s.prompt = v.clone()) }
                        on:keydown=move |ev: web_sys::KeyboardEvent| {
                            if (ev.ctrl_key() || ev.meta_key()) && ev.key() == "Enter" {
                                ev.prevent_default();
                                generate();
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
                                    set(&|s| s.guidance = v.clamp(0.0, 20.0))
                                }
                            } />
                    </label>
                    <div class="row">
                        <label>"Steps "
                            <input data-testid="steps" size="7"
                                title="Sampling steps: a number (e.g. 100, 50) or a GLIDE schedule such as fast27 or ddim25"
                                prop:value=move || settings.with(|s| s.steps.clone())
                                on:input=move |ev| { let v = event_target_value(&ev); set(&|s| s.steps = v.clone()) } />
                        </label>
                        <label>"Sampler "
                            <select data-testid="sampler"
                                prop:value=move || settings.with(|s| s.sampler.clone())
                                on:change=move |ev| { let v = event_target_value(&ev); set(&|s| s.sampler = v.clone()) }>
                                <option value="ancestral">"ancestral"</option>
                                <option value="ddim">"DDIM"</option>
                            </select>
                        </label>
                        <label>"Batch "
                            <input type="number" min="1" max="4" data-testid="batch"
                                prop:value=move || settings.with(|s| s.batch.to_string())
                                on:input=move |ev| {
                                    if let Ok(v) = event_target_value(&ev).parse::<usize>() {
                                        set(&|s| s.batch = v.clamp(1, 4))
                                    }
                                } />
                        </label>
                    </div>
                    <div class="row">
                        <label>"Seed "
                            <input type="number" min="0" data-testid="seed"
                                prop:value=move || settings.with(|s| s.seed.to_string())
                                prop:disabled=move || settings.with(|s| s.random_seed)
                                on:input=move |ev| {
                                    if let Ok(v) = event_target_value(&ev).trim().parse::<u64>() {
                                        set(&|s| s.seed = v.min(u32::MAX as u64))
                                    }
                                } />
                        </label>
                        <label><input type="checkbox" data-testid="random-seed"
                            prop:checked=move || settings.with(|s| s.random_seed)
                            on:change=move |ev| { let v = event_target_checked(&ev); set(&|s| s.random_seed = v) } />
                            " random"</label>
                        <label title=move || if upsample_available() { "" } else { "this model set has no upsampler for this mode" }>
                            <input type="checkbox" data-testid="upsample"
                            prop:disabled=move || !upsample_available()
                            prop:checked=move || settings.with(|s| s.upsample) && upsample_available()
                            on:change=move |ev| { let v = event_target_checked(&ev); set(&|s| s.upsample = v) } />
                            " upsample to 4×"</label>
                        <label>"Upsampler steps "
                            <input data-testid="upsample-steps" size="7"
                                title="The upsampler's steps; the GLIDE notebooks use fast27"
                                prop:value=move || settings.with(|s| s.upsample_steps.clone())
                                prop:disabled=move || settings.with(|s| !s.upsample)
                                on:input=move |ev| { let v = event_target_value(&ev); set(&|s| s.upsample_steps = v.clone()) } />
                        </label>
                    </div>
                    <div class="row buttons">
                        <button class="primary" data-testid="generate"
                            prop:disabled=move || running.get() || !ready()
                            on:click=move |_| generate()>"Generate"</button>
                        <button data-testid="cancel"
                            prop:disabled=move || !running.get()
                            on:click=move |_| cancel.set(true)>"Cancel"</button>
                    </div>
                    <div class="progress-row">
                        <progress data-testid="progress"
                            max=move || progress.with(|p| p.2.max(1))
                            value=move || progress.with(|p| p.1)></progress>
                        <span data-testid="progress-text">{move || {
                            let (stage, done, total) = progress.get();
                            if total == 0 { String::new() } else { format!("{stage} {done}/{total}") }
                        }}</span>
                        <span data-testid="run-status" class="muted">{move || status_line.get()}</span>
                    </div>
                </div>

                <div class="canvas-column">
                    <div class:hidden=move || settings.with(|s| s.mode != "inpaint")>
                        <h3>"Inpainting"</h3>
                        <p class="hint">"Paint the region to regenerate; the rest of the image is kept."</p>
                        <input type="file" accept="image/png,image/jpeg,image/webp" data-testid="upload" on:change=on_upload />
                        <MaskEditor handle=mask source=inpaint_src brush=brush />
                        <label>"Brush size "
                            <input type="range" min="2" max="96" step="1" data-testid="brush-size"
                                prop:value=move || settings.with(|s| s.brush.to_string())
                                on:input=move |ev| {
                                    if let Ok(v) = event_target_value(&ev).parse::<u32>() { set(&|s| s.brush = v.clamp(2, 96)) }
                                } />
                        </label>
                    </div>
                    <h3>"Preview"</h3>
                    <canvas node_ref=preview_ref data-testid="preview" class="preview" width="64" height="64"></canvas>
                </div>
            </section>

            <section class="gallery" class:hidden=move || gallery.with(|g| g.is_empty())>
                <h2>"Results"</h2>
                <div class="grid">
                    <For each=move || gallery.get() key=|it| it.id children=move |it: ResultItem| {
                        let newest = move || gallery.with(|g| g.first().map(|f| f.id)) == Some(it.id);
                        let for_reuse = it.clone();
                        let for_inpaint = it.clone();
                        let caption = format!(
                            "{} — guidance {}, {} steps ({}), seed {}, {}px, {:.1} s",
                            if it.settings.prompt.is_empty() { "(no prompt)" } else { &it.settings.prompt },
                            it.settings.guidance, it.settings.steps, it.settings.sampler, it.seed, it.size, it.seconds
                        );
                        view! {
                            <figure>
                                <img src=it.url.clone() alt=it.settings.prompt.clone()
                                    data-testid=move || if newest() { "result" } else { "gallery-image" } />
                                <figcaption>{caption}</figcaption>
                                <div class="row">
                                    <a href=it.url.clone() download=format!("webglide-{}.png", it.seed) data-testid="download">"Download PNG"</a>
                                    <button on:click=move |_| {
                                        let mut s = for_reuse.settings.clone();
                                        s.seed = for_reuse.seed;
                                        s.random_seed = false;
                                        settings.update(|cur| {
                                            cur.prompt = s.prompt; cur.guidance = s.guidance; cur.steps = s.steps;
                                            cur.sampler = s.sampler; cur.seed = s.seed; cur.random_seed = false;
                                            cur.upsample = s.upsample; cur.upsample_steps = s.upsample_steps; cur.mode = s.mode;
                                        });
                                    }>"Reuse settings"</button>
                                    <button data-testid="send-to-inpaint" on:click=move |_| {
                                        inpaint_src.set(Some((for_inpaint.rgb.clone(), for_inpaint.size, for_inpaint.size)));
                                        mask.clear();
                                        set(&|s| s.mode = "inpaint".into());
                                    }>"Inpaint this"</button>
                                </div>
                            </figure>
                        }
                    } />
                </div>
            </section>

            <section class="models">
                <h2>"Models"</h2>
                <p>
                    <span data-testid="model-status">{move || match model_state.get() {
                        ModelState::Ready { .. } => "ready".to_string(),
                        ModelState::Loading(_) => "loading".to_string(),
                        ModelState::Failed => "failed".to_string(),
                        ModelState::None => "no model".to_string(),
                    }}</span>
                    " "
                    <span data-testid="model-detail" class="muted">{move || match model_state.get() {
                        ModelState::Ready { label, summary } => format!("{label}: {summary}"),
                        ModelState::Loading(p) if p.total > 0 => format!("{} — {} of {}", p.what, mb(p.done), mb(p.total)),
                        ModelState::Loading(p) => p.what,
                        _ => String::new(),
                    }}</span>
                </p>
                <progress data-testid="model-progress"
                    class:hidden=move || !matches!(model_state.get(), ModelState::Loading(_))
                    max=move || match model_state.get() { ModelState::Loading(p) => p.total.max(1), _ => 1 }
                    value=move || match model_state.get() { ModelState::Loading(p) => p.done, _ => 0 }></progress>
                <div class="row">
                    <label>"Model set "
                        <select data-testid="model-select"
                            prop:value=move || settings.with(|s| s.model.clone())
                            on:change=move |ev| {
                                let id = event_target_value(&ev);
                                if let Some(e) = entries().into_iter().find(|e| e.id == id) { load_models(e) }
                            }>
                            {move || entries().into_iter().map(|e| view! { <option value=e.id.clone()>{e.label.clone()}</option> }).collect_view()}
                        </select>
                    </label>
                    <button data-testid="model-delete" on:click=delete_model>"Delete stored files"</button>
                </div>
                <p class="muted" data-testid="storage">{move || stored.get()}</p>
                <div class="row">
                    <input data-testid="model-url" size="40" placeholder="https://example.org/glide-q8/ (folder with base/manifest.json)"
                        prop:value=move || model_url.get()
                        on:input=move |ev| model_url.set(event_target_value(&ev)) />
                    <button data-testid="model-url-load" on:click=move |_| {
                        let url = model_url.get_untracked().trim().to_string();
                        if url.is_empty() { return; }
                        let url = if url.ends_with('/') { url } else { format!("{url}/") };
                        let id = format!("url-{}", &engine::glide::weights::sha256_hex(url.as_bytes())[..12]);
                        load_models(ModelEntry { id, label: url.clone(), url: Some(url) });
                    }>"Load from URL"</button>
                </div>
                <p class="hint">"Or pick a folder converted with " <code>"webglide convert"</code> " (base/, upsample/, base-inpaint/, upsample-inpaint/): "
                    <input type="file" multiple node_ref=files_ref data-testid="model-files" on:change=on_pick_files /></p>
            </section>

            <details class="about">
                <summary>"GPU and about"</summary>
                {move || match gpu_status.get() {
                    GpuStatus::Ready { report, f16, .. } => view! {
                        <pre data-testid="adapter">{report}</pre>
                        <p data-testid="f16">{f16}</p>
                        <p data-testid="self-check">{move || self_check_text.get()}</p>
                    }.into_any(),
                    _ => ().into_any(),
                }}
                <h3>"About and licences"</h3>
                <ul>
                    <li>"webglide (engine, shaders, app): MIT licence."</li>
                    <li>"GLIDE architecture, sampling procedures and the BPE vocabulary (public/tokenizer): OpenAI's glide-text2im, MIT licence, © 2021 OpenAI."</li>
                    <li>"The embedded demo model (GLIDE architecture, small) is trained by this project's trainer on Twemoji artwork and on synthetic scenes of coloured shapes that its own code draws; weights MIT. See NOTICE."</li>
                    <li data-testid="twemoji-notice">"Emoji artwork used to train this model: Twemoji, Copyright 2019 Twitter, Inc and other contributors (maintained at github.com/jdecked/twemoji), licensed under CC BY 4.0 ("
                        <a href="licenses/CC-BY-4.0.txt">"licence text"</a>
                        ", https://creativecommons.org/licenses/by/4.0/). The images were rasterised, resized and placed on a white background for training; this model and its outputs are not made or endorsed by the Twemoji authors."</li>
                    <li>"Emoji names and keywords: Unicode CLDR annotations, Copyright © 1991-2025 Unicode, Inc., Unicode License v3 (https://www.unicode.org/license.txt), via Emojibase (Copyright (c) 2017-2019 Miles Johnson, "
                        <a href="licenses/emojibase-data-MIT.txt">"MIT License"</a>
                        ")."</li>
                    <li>"Libraries: wgpu (MIT/Apache-2.0), leptos (MIT), safetensors (Apache-2.0), png (MIT/Apache-2.0), sha2 (MIT/Apache-2.0)."</li>
                    <li>"Fonts: none shipped; the page uses your system fonts."</li>
                </ul>
            </details>
        </main>
    }
}

fn main() {
    console_error_panic_hook::set_once();
    // The model-files picker takes whole folders.
    leptos::mount::mount_to_body(App);
    if let Some(el) = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.query_selector("[data-testid=model-files]").ok().flatten())
    {
        let _ = el.set_attribute("webkitdirectory", "");
    }
}
