//! What the page knows, as signals every component reads from one context.

use std::rc::Rc;

use engine::glide::tokenizer::GlideTokenizer;
use engine::unclip::tokenizer::ClipTokenizer;
use engine::Gpu;
use leptos::html;
use leptos::prelude::*;

use crate::mask::MaskHandle;
use crate::run::{Failure, Models};
use crate::settings::Settings;
use crate::store::{LoadProgress, ModelEntry};

#[derive(Clone, PartialEq)]
pub enum GpuStatus {
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
pub enum ModelState {
    None,
    Loading(LoadProgress),
    Ready { label: String, summary: String },
    Failed,
}

/// One generated image in the gallery.
#[derive(Clone, PartialEq)]
pub struct ResultItem {
    pub id: u32,
    pub url: String,
    pub rgb: Vec<u8>,
    pub size: usize,
    pub settings: Settings,
    pub seed: u64,
    pub seconds: f64,
}

/// What the page holds that is not `Send` (GPU objects).
#[derive(Clone, Default)]
pub struct Engine {
    pub gpu: Option<Rc<Gpu>>,
    pub models: Option<Rc<Models>>,
    pub tok: Option<Rc<GlideTokenizer>>,
    /// Fetched when a set with unCLIP loads.
    pub clip_tok: Option<Rc<ClipTokenizer>>,
}

/// Which pipelines and optional kinds the loaded set has.
#[derive(Clone, Copy, Default, PartialEq)]
pub struct Caps {
    /// GLIDE (a base model).
    pub glide: bool,
    /// unCLIP text → image (CLIP text tower, prior, decoder, SR).
    pub unclip: bool,
    /// unCLIP image variations (also the CLIP visual tower).
    pub variations: bool,
    pub upsample: bool,
    pub inpaint: bool,
    pub upsample_inpaint: bool,
    /// GLIDE's noisy CLIP (CLIP guidance).
    pub clip_guidance: bool,
}

/// The page's state; `Copy`, so components and actions take it by value.
#[derive(Clone, Copy)]
pub struct AppState {
    pub gpu_status: RwSignal<GpuStatus>,
    pub self_check: RwSignal<String>,
    pub model_state: RwSignal<ModelState>,
    pub error: RwSignal<Option<Failure>>,
    pub warnings: RwSignal<Vec<String>>,
    pub settings: RwSignal<Settings>,
    pub running: RwSignal<bool>,
    pub cancel: RwSignal<bool>,
    /// (stage, steps done, steps in the stage)
    pub progress: RwSignal<(String, usize, usize)>,
    pub status_line: RwSignal<String>,
    pub gallery: RwSignal<Vec<ResultItem>>,
    pub next_id: StoredValue<u32>,
    /// The inpainting source image (RGB8, w, h).
    pub inpaint_src: RwSignal<Option<(Vec<u8>, usize, usize)>>,
    /// The image unCLIP makes variations of (RGB8, w, h).
    pub variations_src: RwSignal<Option<(Vec<u8>, usize, usize)>>,
    /// "x MB stored for this model · …"
    pub stored: RwSignal<String>,
    pub caps: RwSignal<Caps>,
    pub engine: StoredValue<Engine, LocalStorage>,
    pub mask: MaskHandle,
    pub preview: NodeRef<html::Canvas>,
}

impl AppState {
    pub fn new() -> Self {
        AppState {
            gpu_status: RwSignal::new(GpuStatus::Checking),
            self_check: RwSignal::new(String::new()),
            model_state: RwSignal::new(ModelState::None),
            error: RwSignal::new(None),
            warnings: RwSignal::new(Vec::new()),
            settings: RwSignal::new(Settings::load()),
            running: RwSignal::new(false),
            cancel: RwSignal::new(false),
            progress: RwSignal::new((String::new(), 0, 0)),
            status_line: RwSignal::new(String::new()),
            gallery: RwSignal::new(Vec::new()),
            next_id: StoredValue::new(0),
            inpaint_src: RwSignal::new(None),
            variations_src: RwSignal::new(None),
            stored: RwSignal::new(String::new()),
            caps: RwSignal::new(Caps::default()),
            engine: StoredValue::new_local(Engine::default()),
            mask: MaskHandle::new(),
            preview: NodeRef::new(),
        }
    }

    /// Changes the settings (saved to localStorage by an effect).
    pub fn set(&self, f: impl FnOnce(&mut Settings)) {
        self.settings.update(f);
    }

    pub fn fail(&self, message: impl Into<String>) {
        self.error.set(Some(Failure::msg(message.into())));
    }

    /// The built-in set, then the user's.
    pub fn entries(&self) -> Vec<ModelEntry> {
        let mut v = vec![ModelEntry::demo()];
        v.extend(self.settings.with(|s| s.custom_models.clone()));
        v
    }

    pub fn active_entry(&self) -> ModelEntry {
        let id = self.settings.with_untracked(|s| s.model.clone());
        self.entries()
            .into_iter()
            .find(|e| e.id == id)
            .unwrap_or_else(ModelEntry::demo)
    }

    pub fn model_ready(&self) -> bool {
        matches!(self.model_state.get(), ModelState::Ready { .. })
    }

    pub fn unclip_selected(&self) -> bool {
        self.settings.with(|s| s.pipeline == "unclip")
    }

    /// Whether the set has an upsampler for the current mode.
    pub fn upsample_available(&self) -> bool {
        let caps = self.caps.get();
        if self.settings.with(|s| s.mode == "inpaint") {
            caps.upsample_inpaint
        } else {
            caps.upsample
        }
    }
}

/// The settings' localStorage key.
const SETTINGS_KEY: &str = "webglide.settings.v1";

impl Settings {
    /// Stored settings (see [`Settings::parse`]); defaults when there are none.
    pub fn load() -> Self {
        use gloo_storage::Storage;
        let raw = gloo_storage::LocalStorage::raw()
            .get_item(SETTINGS_KEY)
            .ok()
            .flatten();
        raw.map_or_else(Settings::default, |r| Settings::parse(&r))
    }

    /// Best effort: a full or disabled localStorage only loses the settings.
    pub fn save(&self) {
        use gloo_storage::Storage;
        let _ = gloo_storage::LocalStorage::set(SETTINGS_KEY, self);
    }
}

pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}
