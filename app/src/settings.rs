//! The form's settings, kept in localStorage so they survive reloads.

use crate::store::ModelEntry;

const KEY: &str = "webglide.settings.v1";

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Settings {
    /// "text" or "inpaint".
    pub mode: String,
    pub prompt: String,
    pub guidance: f32,
    /// A respacing string: "100", "50", "fast27", "ddim25", …
    pub steps: String,
    /// "ancestral" or "ddim".
    pub sampler: String,
    pub seed: u64,
    pub random_seed: bool,
    pub batch: usize,
    pub upsample: bool,
    /// The upsampler's respacing.
    pub upsample_steps: String,
    /// Brush diameter on the 256-px mask.
    pub brush: u32,
    /// Id of the active model set.
    pub model: String,
    pub custom_models: Vec<ModelEntry>,
}

impl Default for Settings {
    fn default() -> Self {
        // The GLIDE text2im notebook's defaults.
        Settings {
            mode: "text".into(),
            prompt: "an oil painting of a corgi".into(),
            guidance: 3.0,
            steps: "100".into(),
            sampler: "ancestral".into(),
            seed: 0,
            random_seed: true,
            batch: 1,
            upsample: true,
            upsample_steps: "fast27".into(),
            brush: 32,
            model: "demo".into(),
            custom_models: Vec::new(),
        }
    }
}

impl Settings {
    /// Stored settings, repaired where a value is out of range; defaults otherwise.
    pub fn load() -> Self {
        use gloo_storage::Storage;
        let mut s: Settings = gloo_storage::LocalStorage::get(KEY).unwrap_or_default();
        if !s.guidance.is_finite() {
            s.guidance = 3.0;
        }
        s.guidance = s.guidance.clamp(0.0, 20.0);
        s.batch = s.batch.clamp(1, 4);
        s.brush = s.brush.clamp(2, 96);
        if s.mode != "inpaint" {
            s.mode = "text".into();
        }
        if s.sampler != "ddim" {
            s.sampler = "ancestral".into();
        }
        s
    }

    /// Best effort: a full or disabled localStorage only loses the settings.
    pub fn save(&self) {
        use gloo_storage::Storage;
        let _ = gloo_storage::LocalStorage::set(KEY, self);
    }
}
