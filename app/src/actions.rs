//! What the page does: open the GPU, load a model set, generate. Each takes
//! the page's state and runs in the background (`spawn_local`).

use std::rc::Rc;

use engine::glide::pipeline::Sampler;
use engine::kernels::{self, Act};
use engine::{Gpu, GpuOptions};
use leptos::prelude::*;

use crate::imageio;
use crate::mask::MASK_SIZE;
use crate::run::{self, Failure};
use crate::settings::Settings;
use crate::state::{mb, AppState, Caps, Engine, GpuStatus, ModelState, ResultItem};
use crate::store::{self, LoadProgress, ModelEntry};

fn has_webgpu() -> bool {
    let Some(window) = web_sys::window() else {
        return false;
    };
    js_sys::Reflect::get(&window.navigator(), &"gpu".into())
        .is_ok_and(|g| !g.is_undefined() && !g.is_null())
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

/// The warning shown for an optional model that is present but unusable.
fn unavailable(problem: &str) -> String {
    format!("{problem} — this model is left out; everything that does not need it works.")
}

/// Opens the GPU, then loads the chosen model set (also the "retry" after a lost device).
pub fn start(st: AppState) {
    leptos::task::spawn_local(async move {
        st.error.set(None);
        if !has_webgpu() {
            st.gpu_status
                .set(GpuStatus::NoWebGpu("navigator.gpu is missing".into()));
            return;
        }
        st.gpu_status.set(GpuStatus::Checking);
        st.engine.set_value(Engine::default());
        match Gpu::new(GpuOptions::default()).await {
            Err(engine::Error::NoAdapter(detail)) => st.gpu_status.set(GpuStatus::NoWebGpu(detail)),
            Err(err) => st.gpu_status.set(GpuStatus::Failed(err.to_string())),
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
                st.gpu_status.set(GpuStatus::Ready {
                    report: gpu.report.to_string(),
                    adapter: format!("{name} ({})", gpu.report.backend),
                    f16: f16.into(),
                });
                let gpu = Rc::new(gpu);
                install_test_hooks(&gpu);
                let tok = run::tokenizer().ok().map(Rc::new);
                st.engine.set_value(Engine {
                    gpu: Some(gpu.clone()),
                    models: None,
                    tok,
                    clip_tok: None,
                });
                load_models(st, st.active_entry());
                st.self_check
                    .set(self_check(&gpu).await.unwrap_or_else(|e| e));
            }
        }
    });
}

/// With `?test-hooks` in the URL, `window.webglideLoseDevice()` destroys the
/// GPU device, so the end-to-end tests see what a lost device (a driver
/// reset, the browser reclaiming the GPU) does to the page.
fn install_test_hooks(gpu: &Rc<Gpu>) {
    use wasm_bindgen::closure::Closure;
    let Some(w) = web_sys::window() else {
        return;
    };
    if !w
        .location()
        .search()
        .unwrap_or_default()
        .contains("test-hooks")
    {
        return;
    }
    let gpu = Rc::downgrade(gpu);
    let lose = Closure::<dyn Fn()>::new(move || {
        if let Some(g) = gpu.upgrade() {
            g.device.destroy();
        }
    });
    let _ = js_sys::Reflect::set(&w, &"webglideLoseDevice".into(), lose.as_ref());
    lose.forget();
}

/// Shows how much the active set keeps in browser storage.
pub fn refresh_stored(st: AppState) {
    leptos::task::spawn_local(async move {
        let id = st.settings.with_untracked(|s| s.model.clone());
        let size = store::stored_bytes(&id).await.unwrap_or(0);
        let est = store::storage_estimate().await.unwrap_or_default();
        st.stored
            .set(format!("{} stored for this model · {est}", mb(size)));
    });
}

/// Loads a model set onto the GPU (cache first); a failure keeps the old set.
pub fn load_models(st: AppState, entry: ModelEntry) {
    leptos::task::spawn_local(async move {
        let Some(gpu) = st.engine.with_value(|e| e.gpu.clone()) else {
            return;
        };
        st.error.set(None);
        st.warnings.set(Vec::new());
        st.model_state.set(ModelState::Loading(LoadProgress {
            what: "reading the manifest".into(),
            ..Default::default()
        }));
        let loaded = store::load(
            &entry,
            |p| st.model_state.set(ModelState::Loading(p)),
            |w| st.warnings.update(|ws| ws.push(w)),
        )
        .await;
        let comps = match loaded {
            Ok(l) => {
                st.warnings
                    .update(|ws| ws.extend(l.unavailable.iter().map(|u| unavailable(u))));
                l.components
            }
            Err(e) => {
                st.fail(e);
                st.model_state.set(ModelState::Failed);
                refresh_stored(st);
                return;
            }
        };
        let bytes: u64 = comps
            .iter()
            .flat_map(|c| c.manifest.shards().iter().map(|s| s.bytes))
            .sum();
        let kinds: Vec<&str> = comps.iter().map(|c| c.kind).collect();
        st.model_state.set(ModelState::Loading(LoadProgress {
            what: "uploading the weights to the GPU".into(),
            done: bytes,
            total: bytes,
        }));
        store::yield_now().await;
        // Release the previous set's GPU memory first.
        st.engine.update_value(|e| e.models = None);
        match run::upload(&gpu, &entry, comps) {
            Ok((models, broken)) => {
                st.warnings
                    .update(|ws| ws.extend(broken.iter().map(|u| unavailable(u))));
                let caps = Caps {
                    glide: models.base.is_some(),
                    unclip: models.unclip.is_some(),
                    variations: models.unclip.as_ref().is_some_and(|u| u.visual.is_some()),
                    upsample: models.upsample.is_some(),
                    inpaint: models.inpaint.is_some(),
                    upsample_inpaint: models.upsample_inpaint.is_some(),
                    clip_guidance: models.noisy_clip.is_some(),
                };
                if (caps.unclip || caps.clip_guidance)
                    && st.engine.with_value(|e| e.clip_tok.is_none())
                {
                    match run::clip_tokenizer().await {
                        Ok(t) => st.engine.update_value(|e| e.clip_tok = Some(Rc::new(t))),
                        Err(e) => st.warnings.update(|w| w.push(e)),
                    }
                }
                st.caps.set(caps);
                // Stay on a pipeline (and a mode) the set has.
                st.set(|s| {
                    if s.pipeline == "unclip" && !caps.unclip {
                        s.pipeline = "glide".into();
                    } else if s.pipeline == "glide" && !caps.glide {
                        s.pipeline = "unclip".into();
                    }
                    s.mode = fit_mode(s, caps);
                });
                let summary = format!("{} · {} · {}", kinds.join(", "), models.quant, mb(bytes));
                st.engine.update_value(|e| e.models = Some(Rc::new(models)));
                st.model_state.set(ModelState::Ready {
                    label: entry.label.clone(),
                    summary,
                });
                st.set(|s| {
                    s.model = entry.id.clone();
                    if entry.id != "demo" && !s.custom_models.contains(&entry) {
                        s.custom_models.push(entry.clone());
                    }
                });
            }
            Err(f) => {
                st.error.set(Some(f));
                st.model_state.set(ModelState::Failed);
            }
        }
        refresh_stored(st);
    });
}

/// Removes the active set's stored files; a custom set also leaves the list.
pub fn delete_model(st: AppState) {
    let entry = st.active_entry();
    leptos::task::spawn_local(async move {
        if let Err(e) = store::delete(&entry.id).await {
            st.fail(e);
        }
        if entry.id != "demo" {
            // A removed set leaves the list; the page goes back to the demo model.
            st.set(|s| {
                s.custom_models.retain(|m| m.id != entry.id);
                s.model = "demo".into();
            });
            st.engine.update_value(|e| e.models = None);
            st.model_state.set(ModelState::None);
            load_models(st, ModelEntry::demo());
        } else {
            refresh_stored(st);
        }
    });
}

/// The mode if the pipeline and set offer it, else text → image.
pub fn fit_mode(s: &Settings, caps: Caps) -> String {
    let ok = match (s.pipeline.as_str(), s.mode.as_str()) {
        ("glide", "inpaint") => caps.inpaint,
        ("unclip", "variations") => caps.variations,
        (_, m) => m == "text",
    };
    if ok {
        s.mode.clone()
    } else {
        "text".into()
    }
}

fn random_seed() -> u64 {
    (js_sys::Math::random() * 4294967296.0) as u64
}

fn png_params(s: &Settings, seed: u64, model: &str) -> Vec<(String, String)> {
    let mut p = vec![
        (
            "Software",
            format!("webglide {}", env!("CARGO_PKG_VERSION")),
        ),
        ("webglide:pipeline", s.pipeline.clone()),
        ("webglide:mode", s.mode.clone()),
        ("webglide:prompt", s.prompt.clone()),
    ];
    if s.pipeline == "unclip" {
        if s.mode != "variations" {
            p.push(("webglide:prior_guidance", s.prior_guidance.to_string()));
            p.push(("webglide:prior_steps", s.prior_steps.clone()));
        }
        p.push(("webglide:decoder_guidance", s.decoder_guidance.to_string()));
        p.push(("webglide:decoder_steps", s.decoder_steps.clone()));
        p.push(("webglide:sr_steps", s.sr_steps.clone()));
    } else {
        if clip_guided(s) {
            p.push(("webglide:clip_guidance", s.clip_guidance.to_string()));
        } else {
            p.push(("webglide:guidance", s.guidance.to_string()));
        }
        p.push(("webglide:steps", s.steps.clone()));
        p.push(("webglide:sampler", s.sampler.clone()));
        p.push((
            "webglide:upsample_steps",
            if s.upsample {
                s.upsample_steps.clone()
            } else {
                "none".into()
            },
        ));
    }
    p.push(("webglide:seed", seed.to_string()));
    p.push(("webglide:model", model.to_string()));
    p.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The job the form describes, or why there is none.
/// GLIDE text to image steered by the noisy CLIP (the guidance-method switch).
pub fn clip_guided(s: &Settings) -> bool {
    s.pipeline == "glide" && s.mode == "text" && s.guidance_method == "clip"
}

fn job(st: AppState, s: &Settings) -> Result<run::Job, String> {
    let inpaint = if s.mode == "inpaint" {
        let Some((rgb, w, h)) = st.inpaint_src.get_untracked() else {
            return Err(
                "choose an image to inpaint first (upload one, or send a result to inpainting)"
                    .into(),
            );
        };
        Some(run::InpaintInput {
            rgb,
            w,
            h,
            regen: st.mask.regen().unwrap_or_default(),
            mw: MASK_SIZE as usize,
            mh: MASK_SIZE as usize,
        })
    } else {
        None
    };
    let clip = clip_guided(s);
    Ok(run::Job {
        prompt: s.prompt.clone(),
        guidance: s.guidance,
        clip_guidance: clip.then_some(s.clip_guidance),
        steps: s.steps.trim().to_string(),
        // CLIP guidance is the notebook's ancestral procedure.
        sampler: if s.sampler == "ddim" && !clip {
            Sampler::Ddim
        } else {
            Sampler::Ancestral
        },
        seed: s.seed,
        batch: s.batch,
        upsample: s.upsample,
        upsample_steps: s.upsample_steps.trim().to_string(),
        inpaint,
    })
}

/// Adds a finished image to the front of the gallery.
fn add_result(st: AppState, rgb: Vec<u8>, size: usize, s: &Settings, seconds: f64, model: &str) {
    let params = png_params(s, s.seed, model);
    let url = imageio::png_bytes(&rgb, size as u32, &params)
        .and_then(|png| imageio::blob_url(&png, "image/png"));
    match url {
        Ok(url) => {
            let id = st.next_id.get_value();
            st.next_id.set_value(id + 1);
            st.gallery.update(|g| {
                g.insert(
                    0,
                    ResultItem {
                        id,
                        url,
                        rgb,
                        size,
                        settings: s.clone(),
                        seed: s.seed,
                        seconds,
                    },
                )
            });
        }
        Err(e) => st.fail(e),
    }
}

/// What a run needs that is not `Send`, and what it does.
enum Work {
    Glide(
        run::Job,
        Rc<run::Models>,
        Rc<engine::glide::tokenizer::GlideTokenizer>,
        /// For CLIP guidance.
        Option<Rc<engine::unclip::tokenizer::ClipTokenizer>>,
    ),
    Unclip(
        run::UnclipJob,
        Rc<run::Models>,
        Rc<engine::unclip::tokenizer::ClipTokenizer>,
    ),
}

/// The form's run, or why there is none.
fn work(st: AppState, s: &mut Settings) -> Result<Work, String> {
    engine::limits::check_prompt(&s.prompt).map_err(|e| e.to_string())?;
    let e = st.engine.get_value();
    let models = e
        .models
        .ok_or("no model is loaded yet (see Models below)")?;
    let caps = st.caps.get_untracked();
    if s.pipeline == "unclip" {
        let tok = e
            .clip_tok
            .ok_or("unCLIP is not available with this model set")?;
        if !caps.unclip {
            return Err("this model set has no unCLIP models (unclip/…)".into());
        }
        let variations_of = if s.mode == "variations" {
            Some(st.variations_src.get_untracked().ok_or(
                "choose an image to make variations of first (upload one, or use a result)",
            )?)
        } else {
            None
        };
        let params = engine::unclip::pipeline::UnclipParams {
            prior_guidance: s.prior_guidance,
            decoder_guidance: s.decoder_guidance,
            prior_steps: s.prior_steps.trim().to_string(),
            decoder_steps: s.decoder_steps.trim().to_string(),
            sr_steps: s.sr_steps.trim().to_string(),
        };
        let job = run::UnclipJob {
            prompt: s.prompt.clone(),
            params,
            seed: s.seed,
            batch: s.batch,
            variations_of,
        };
        return Ok(Work::Unclip(job, models, tok));
    }
    let tok = e.tok.ok_or("the GLIDE tokenizer did not load")?;
    if s.mode == "inpaint" && !caps.inpaint {
        return Err("this model set has no inpainting model (base-inpaint)".into());
    }
    if clip_guided(s) && !caps.clip_guidance {
        return Err(
            "this model set has no noisy CLIP (clip-image-enc, clip-text-enc): choose classifier-free guidance"
                .into(),
        );
    }
    // Upsample only where the set has an upsampler for this mode.
    s.upsample &= if s.mode == "inpaint" {
        caps.upsample_inpaint
    } else {
        caps.upsample
    };
    Ok(Work::Glide(job(st, s)?, models, tok, e.clip_tok))
}

/// Generates with the form's settings: previews while it runs, results into the gallery.
pub fn generate(st: AppState) {
    if st.running.get_untracked() {
        return;
    }
    let Some(gpu) = st.engine.with_value(|e| e.gpu.clone()) else {
        return st.fail("the GPU is not open");
    };
    // Ctrl+Enter reaches here while the button is disabled: a run on the set
    // being replaced would hold its GPU memory next to the new one.
    if matches!(st.model_state.get_untracked(), ModelState::Loading(_)) {
        return st.fail("a model set is loading: generate when it is ready");
    }
    let mut s = st.settings.get_untracked();
    if s.random_seed {
        s.seed = random_seed();
        st.set(|st| st.seed = s.seed);
    }
    let work = match work(st, &mut s) {
        Ok(w) => w,
        Err(e) => return st.fail(e),
    };
    let model_label = st.active_entry().label;
    st.error.set(None);
    st.cancel.set(false);
    st.running.set(true);
    st.status_line.set(format!("seed {}", s.seed));
    leptos::task::spawn_local(async move {
        let t0 = js_sys::Date::now();
        let on = |ev| match ev {
            run::Event::Step { stage, done, total } => {
                st.progress.set((stage.to_string(), done, total))
            }
            run::Event::Preview { images, size } => {
                if let Some(c) = st.preview.get_untracked() {
                    let _ = imageio::draw_rgb(&c, &images, size as u32);
                }
            }
        };
        let cancelled = || st.cancel.get_untracked();
        let result = match &work {
            Work::Glide(job, models, tok, clip_tok) => {
                run::run(&gpu, models, tok, clip_tok.as_deref(), job, &cancelled, on).await
            }
            Work::Unclip(job, models, tok) => match &models.unclip {
                Some(set) => run::run_unclip(&gpu, set, tok, job, &cancelled, on).await,
                None => Err(Failure::msg("this model set has no unCLIP models".into())),
            },
        };
        let seconds = (js_sys::Date::now() - t0) / 1000.0;
        match result {
            Ok(Some(out)) => {
                for rgb in out.images {
                    add_result(st, rgb, out.size, &s, seconds, &model_label);
                }
                st.status_line
                    .set(format!("done in {seconds:.1} s · seed {}", s.seed));
            }
            Ok(None) => st
                .status_line
                .set(format!("cancelled after {seconds:.1} s")),
            Err(f) => {
                st.status_line.set("failed".into());
                st.error.set(Some(f));
            }
        }
        st.running.set(false);
    });
}

/// Imports a model folder the user picked (every shard verified), then loads it.
pub fn import_picked(st: AppState, list: web_sys::FileList) {
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
            match gloo_file::futures::read_as_bytes(&gloo_file::Blob::from(f.clone())).await {
                Ok(bytes) => files.push((path, bytes)),
                Err(e) => return st.fail(format!("could not read {}: {e}", f.name())),
            }
        }
        let id = format!("local-{folder}");
        st.model_state.set(ModelState::Loading(LoadProgress {
            what: "verifying the picked files".into(),
            ..Default::default()
        }));
        match store::import_files(&id, &files).await {
            Ok(_) => load_models(
                st,
                ModelEntry {
                    id,
                    label: format!("{folder} (local files)"),
                    url: None,
                },
            ),
            Err(e) => {
                st.model_state.set(ModelState::Failed);
                st.error.set(Some(Failure::msg(e)));
            }
        }
    });
}
