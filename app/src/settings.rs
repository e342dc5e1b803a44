//! The form's settings, kept in localStorage so they survive reloads.

use crate::store::ModelEntry;

const KEY: &str = "webglide.settings.v1";

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Settings {
    /// "glide" or "unclip".
    pub pipeline: String,
    /// "text", "inpaint" (GLIDE) or "variations" (unCLIP).
    pub mode: String,
    pub prompt: String,
    /// GLIDE text to image: "cfg" (classifier-free) or "clip" (the noisy CLIP's gradient).
    pub guidance_method: String,
    pub guidance: f32,
    /// The CLIP guidance scale (clip_guided.ipynb: 3).
    pub clip_guidance: f32,
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
    /// unCLIP: classifier-free guidance of the prior (on x0) and the decoder (on eps).
    pub prior_guidance: f32,
    pub decoder_guidance: f32,
    /// unCLIP respacings: prior "25", decoder "50" (or "25", Karlo's fast mode).
    pub prior_steps: String,
    pub decoder_steps: String,
    /// Super-resolution: Karlo's "7" (its last step by the second network).
    pub sr_steps: String,
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
            pipeline: "glide".into(),
            mode: "text".into(),
            prompt: "an oil painting of a corgi".into(),
            guidance_method: "cfg".into(),
            guidance: 3.0,
            clip_guidance: 3.0,
            steps: "100".into(),
            sampler: "ancestral".into(),
            seed: 0,
            random_seed: true,
            batch: 1,
            upsample: true,
            upsample_steps: "fast27".into(),
            // Karlo's t2i defaults.
            prior_guidance: 4.0,
            decoder_guidance: 8.0,
            prior_steps: "25".into(),
            decoder_steps: "50".into(),
            sr_steps: "7".into(),
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
        let d = Settings::default();
        for (v, default) in [
            (&mut s.guidance, d.guidance),
            (&mut s.clip_guidance, d.clip_guidance),
            (&mut s.prior_guidance, d.prior_guidance),
            (&mut s.decoder_guidance, d.decoder_guidance),
        ] {
            *v = if v.is_finite() {
                v.clamp(0.0, 20.0)
            } else {
                default
            };
        }
        s.batch = s.batch.clamp(1, 4);
        s.brush = s.brush.clamp(2, 96);
        if s.pipeline != "unclip" {
            s.pipeline = "glide".into();
        }
        if !["text", "inpaint", "variations"].contains(&s.mode.as_str()) {
            s.mode = "text".into();
        }
        if s.guidance_method != "clip" {
            s.guidance_method = "cfg".into();
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
