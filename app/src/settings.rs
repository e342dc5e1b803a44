//! The form's settings, kept in localStorage so they survive reloads. What
//! localStorage holds is outside data (another version of the app, an
//! extension, a user editing it): [`Settings::parse`] takes any string and
//! returns settings within their ranges. Self-contained (serde and the
//! engine's limits only), so `webglide_cli::fuzz` fuzzes it natively; the
//! localStorage side is in `state.rs`.

/// At most this many model sets of the user's are kept.
pub const MAX_CUSTOM_MODELS: usize = 32;
/// Longest id, label or URL of a model set kept.
const MAX_ENTRY_TEXT: usize = 2048;
/// Longest respacing string kept ("100", "fast27", "ddim25", section counts).
const MAX_STEPS_TEXT: usize = 64;

/// A model set the user can choose in the model manager.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelEntry {
    pub id: String,
    pub label: String,
    /// Folder URL (ends with `/`); `None`: files picked by the user, cache only.
    pub url: Option<String>,
}

impl ModelEntry {
    pub fn demo() -> Self {
        ModelEntry {
            id: "demo".into(),
            label: "Embedded demo model".into(),
            url: Some("models/demo/".into()),
        }
    }
}

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
    /// Settings from stored JSON, repaired where a value is out of range,
    /// oversized or unknown; defaults for what does not parse.
    pub fn parse(raw: &str) -> Self {
        let mut s: Settings = serde_json::from_str(raw).unwrap_or_default();
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
        if engine::limits::check_prompt(&s.prompt).is_err() {
            s.prompt = d.prompt.clone();
        }
        for (v, default) in [
            (&mut s.steps, &d.steps),
            (&mut s.upsample_steps, &d.upsample_steps),
            (&mut s.prior_steps, &d.prior_steps),
            (&mut s.decoder_steps, &d.decoder_steps),
            (&mut s.sr_steps, &d.sr_steps),
        ] {
            if v.len() > MAX_STEPS_TEXT {
                *v = default.clone();
            }
        }
        let fits = |t: &str| !t.is_empty() && t.len() <= MAX_ENTRY_TEXT;
        s.custom_models.retain(|e| {
            fits(&e.id) && fits(&e.label) && e.url.as_deref().is_none_or(fits) && e.id != "demo"
        });
        s.custom_models.truncate(MAX_CUSTOM_MODELS);
        if s.model.len() > MAX_ENTRY_TEXT {
            s.model = d.model;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_are_repaired() {
        assert_eq!(Settings::parse("not json"), Settings::default());
        let s = Settings::parse(
            r#"{"guidance": 1e30, "clip_guidance": -3, "batch": 1000, "mode": "x",
                "guidance_method": "both", "steps": "1111111111111111111111111111111111111111111111111111111111111111111111",
                "custom_models": [{"id": "", "label": "a", "url": null}, {"id": "ok", "label": "b", "url": "https://x/"}]}"#,
        );
        assert_eq!((s.guidance, s.clip_guidance, s.batch), (20.0, 0.0, 4));
        assert_eq!(
            (
                s.mode.as_str(),
                s.guidance_method.as_str(),
                s.steps.as_str()
            ),
            ("text", "cfg", "100")
        );
        assert_eq!(s.custom_models.len(), 1);
        let round = Settings::parse(&serde_json::to_string(&s).unwrap());
        assert_eq!(round, s, "valid settings survive a round trip unchanged");
    }
}
