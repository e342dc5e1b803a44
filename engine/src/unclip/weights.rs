//! What a converted unCLIP model folder holds: one network (or the two SR
//! networks) per folder, its configuration in `manifest.json`, the official
//! tensor names and shapes (the converter checks every released file against
//! them), and loading a folder's stage.

use super::clip::{ClipText, ClipTextConfig, ClipVisual, ClipVisualConfig};
use super::decoder::{Decoder, DecoderConfig};
use super::pipeline::{DecoderStage, Network, PriorStage, SrStage, Stages};
use super::prior::{Prior, PriorConfig};
use super::sr::{SuperRes, SuperResConfig};
use crate::error::{Error, Result};
use crate::glide::model::{weight_and_bias, XfBlock};
use crate::glide::weights::{Loader, Manifest, WeightSource};
use crate::gpu::Gpu;
use crate::quant::WeightDType;

/// Key prefixes of Karlo's checkpoints (`.ckpt["state_dict"]`).
pub const PRIOR_PREFIX: &str = "model.";
pub const DECODER_PREFIX: &str = "model.";
pub const SR_FIRST_PREFIX: &str = "model_first_steps.";
pub const SR_LAST_PREFIX: &str = "model_last_step.";
/// The prior folder also stores `ViT-L-14_stats.th` under these names.
pub const CLIP_MEAN: &str = "clip_mean";
pub const CLIP_STD: &str = "clip_std";

/// One converted unCLIP folder's network and sizes (`manifest.json`'s config).
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnclipConfig {
    ClipText(ClipTextConfig),
    ClipVisual(ClipVisualConfig),
    Prior(PriorConfig),
    Decoder {
        module: DecoderConfig,
        /// Side of the images it makes (64 in Karlo).
        image_size: usize,
    },
    Sr {
        first_steps: SuperResConfig,
        last_step: SuperResConfig,
        /// Side of the images they make (256 in Karlo).
        image_size: usize,
    },
}

/// The folder names of an unCLIP model set, one per kind.
pub const KINDS: [&str; 5] = ["clip-text", "clip-visual", "prior", "decoder", "sr"];

impl UnclipConfig {
    /// The folder/`--kind` name.
    pub fn kind(&self) -> &'static str {
        match self {
            UnclipConfig::ClipText(_) => "clip-text",
            UnclipConfig::ClipVisual(_) => "clip-visual",
            UnclipConfig::Prior(_) => "prior",
            UnclipConfig::Decoder { .. } => "decoder",
            UnclipConfig::Sr { .. } => "sr",
        }
    }

    /// Karlo's released sizes of `kind`.
    pub fn released(kind: &str) -> Result<Self> {
        Ok(match kind {
            "clip-text" => UnclipConfig::ClipText(ClipTextConfig::vit_l_14()),
            "clip-visual" => UnclipConfig::ClipVisual(ClipVisualConfig::vit_l_14()),
            "prior" => UnclipConfig::Prior(PriorConfig {
                text_ctx: 77,
                xf_width: 2048,
                xf_layers: 20,
                xf_heads: 32,
                xf_final_ln: true,
                clip_dim: 768,
            }),
            "decoder" => UnclipConfig::Decoder {
                module: DecoderConfig {
                    text_ctx: 77,
                    xf_width: 1536,
                    in_channels: 3,
                    model_channels: 320,
                    out_channels: 6,
                    num_res_blocks: 3,
                    attention_resolutions: vec![2, 4, 8],
                    channel_mult: vec![1, 2, 3, 4],
                    num_heads: -1,
                    num_head_channels: 64,
                    use_scale_shift_norm: true,
                    resblock_updown: true,
                    clip_dim: 768,
                    clip_emb_mult: 4,
                },
                image_size: 64,
            },
            "sr" => {
                let net = SuperResConfig {
                    in_channels: 3,
                    model_channels: 320,
                    out_channels: 3,
                    num_res_blocks: 3,
                    attention_resolutions: vec![],
                    channel_mult: vec![1, 2, 3, 4],
                    resblock_updown: true,
                    use_middle_attention: false,
                };
                UnclipConfig::Sr {
                    first_steps: net.clone(),
                    last_step: net,
                    image_size: 256,
                }
            }
            k => {
                return Err(Error::Invalid(format!(
                    "unknown unCLIP kind '{k}' ({})",
                    KINDS.join(", ")
                )))
            }
        })
    }

    /// A configuration file for `kind`: a manifest's config, or the official
    /// side's JSON (a fixture `config.json` or an entry of
    /// `full_size_configs.json`: `ctor_args[_in_order]`, `module_kwargs[_model_…]`,
    /// the decoder's image size from the yaml hparams). `sr_size` is the SR
    /// output side when the file does not say (256 in Karlo).
    pub fn from_json(kind: &str, json: &[u8], sr_size: usize) -> Result<Self> {
        let bad = |m: String| Error::Invalid(format!("{kind} config: {m}"));
        let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
        if let Ok(c) = serde_json::from_value::<UnclipConfig>(v.clone()) {
            if c.kind() != kind {
                return Err(bad(format!("the file describes a '{}' model", c.kind())));
            }
            return Ok(c);
        }
        let field = |names: &[&str]| -> serde_json::Value {
            names
                .iter()
                .map(|n| &v[*n])
                .find(|x| !x.is_null())
                .unwrap_or(&v)
                .clone()
        };
        fn typed<T: serde::de::DeserializeOwned>(x: serde_json::Value) -> Result<T> {
            serde_json::from_value(x).map_err(|e| Error::Invalid(e.to_string()))
        }
        let wrap = |r: Result<UnclipConfig>| r.map_err(|e| bad(e.to_string()));
        let config = match kind {
            "clip-text" => {
                wrap(typed(field(&["ctor_args_in_order", "ctor_args"])).map(UnclipConfig::ClipText))
            }
            "clip-visual" => wrap(
                typed(field(&["ctor_args_in_order", "ctor_args"])).map(UnclipConfig::ClipVisual),
            ),
            "prior" => wrap(typed(field(&["module_kwargs"])).map(UnclipConfig::Prior)),
            "decoder" => {
                let hparams = ["yaml_config", "yaml"]
                    .iter()
                    .map(|y| &v[*y]["model"]["hparams"]["image_size"])
                    .find_map(|x| x.as_u64())
                    .ok_or_else(|| bad("no yaml model.hparams.image_size".into()))?;
                wrap(
                    typed(field(&["module_kwargs"])).map(|module| UnclipConfig::Decoder {
                        module,
                        image_size: hparams as usize,
                    }),
                )
            }
            "sr" => wrap((|| {
                Ok(UnclipConfig::Sr {
                    first_steps: typed(v["module_kwargs_model_first_steps"].clone())?,
                    last_step: typed(v["module_kwargs_model_last_step"].clone())?,
                    image_size: sr_size,
                })
            })()),
            k => Self::released(k),
        }?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            UnclipConfig::ClipText(c) => c.validate(),
            UnclipConfig::ClipVisual(c) => c.validate(),
            UnclipConfig::Prior(c) => c.validate(),
            UnclipConfig::Decoder { module, image_size } => {
                module.validate()?;
                check_size(*image_size, module.channel_mult.len())
            }
            UnclipConfig::Sr {
                first_steps,
                last_step,
                image_size,
            } => {
                first_steps.validate()?;
                last_step.validate()?;
                check_size(*image_size, first_steps.channel_mult.len())?;
                check_size(*image_size, last_step.channel_mult.len())
            }
        }
    }

    /// Every tensor's official name and shape, in a fixed order (the prior
    /// folder's CLIP statistics included).
    pub fn weight_shapes(&self) -> Result<Vec<(String, Vec<usize>)>> {
        self.validate()?;
        let mut k: Vec<(String, Vec<usize>)> = Vec::new();
        let mut add = |name: String, shape: Vec<usize>| k.push((name, shape));
        let pair = weight_and_bias;
        match self {
            UnclipConfig::ClipText(c) => {
                let w = c.transformer_width;
                add("token_embedding.weight".into(), vec![c.vocab_size, w]);
                add("positional_embedding".into(), vec![c.context_length, w]);
                for i in 0..c.transformer_layers {
                    clip_block_shapes(&mut add, &format!("transformer.resblocks.{i}"), w);
                }
                pair(&mut add, "ln_final", vec![w]);
                add("text_projection".into(), vec![w, c.embed_dim]);
            }
            UnclipConfig::ClipVisual(c) => {
                let (w, p) = (c.vision_width, c.vision_patch_size);
                let grid = c.image_resolution / p;
                add("visual.conv1.weight".into(), vec![w, 3, p, p]);
                add("visual.class_embedding".into(), vec![w]);
                add(
                    "visual.positional_embedding".into(),
                    vec![grid * grid + 1, w],
                );
                pair(&mut add, "visual.ln_pre", vec![w]);
                for i in 0..c.vision_layers {
                    clip_block_shapes(&mut add, &format!("visual.transformer.resblocks.{i}"), w);
                }
                pair(&mut add, "visual.ln_post", vec![w]);
                add("visual.proj".into(), vec![w, c.embed_dim]);
            }
            UnclipConfig::Prior(c) => {
                let (w, d) = (c.xf_width, c.clip_dim);
                let p = |n: &str| format!("{PRIOR_PREFIX}{n}");
                add(p("positional_embedding"), vec![1, c.seq_len(), w]);
                add(p("prd_emb"), vec![1, 1, w]);
                pair(&mut add, &p("time_embed.0"), vec![w, w]);
                pair(&mut add, &p("time_embed.2"), vec![w, w]);
                pair(&mut add, &p("text_enc_proj"), vec![w, d]);
                pair(&mut add, &p("text_emb_proj"), vec![w, d]);
                pair(&mut add, &p("clip_img_proj"), vec![w, d]);
                for i in 0..c.xf_layers {
                    XfBlock::weight_shapes(&mut add, &p(&format!("transformer.resblocks.{i}")), w);
                }
                if c.xf_final_ln {
                    pair(&mut add, &p("final_ln"), vec![w]);
                }
                pair(&mut add, &p("out_proj"), vec![d, w]);
                add(CLIP_MEAN.into(), vec![d]);
                add(CLIP_STD.into(), vec![d]);
            }
            UnclipConfig::Decoder { module: c, .. } => {
                let (d, w) = (c.clip_dim, c.xf_width);
                let emb = 4 * c.model_channels;
                let p = |n: &str| format!("{DECODER_PREFIX}{n}");
                for (name, shape) in c.unet_spec().weight_shapes(DECODER_PREFIX) {
                    add(name, shape);
                }
                pair(&mut add, &p("clip_emb"), vec![emb, d]);
                pair(&mut add, &p("text_feat_proj"), vec![emb, d]);
                pair(&mut add, &p("text_seq_proj.0"), vec![w, d]);
                pair(&mut add, &p("text_seq_proj.1"), vec![w]);
                pair(&mut add, &p("clip_tok_proj"), vec![w * c.clip_emb_mult, d]);
                add(p("cf_param"), vec![d]);
            }
            UnclipConfig::Sr {
                first_steps,
                last_step,
                ..
            } => {
                k.extend(first_steps.unet_spec().weight_shapes(SR_FIRST_PREFIX));
                k.extend(last_step.unet_spec().weight_shapes(SR_LAST_PREFIX));
            }
        }
        Ok(k)
    }

    /// Keys a released file may hold that this kind leaves out: the other
    /// CLIP tower, CLIP's contrastive `logit_scale` and the TorchScript
    /// archive's integer attributes.
    pub fn ignored(&self, name: &str) -> bool {
        let clip_extra = matches!(
            name,
            "logit_scale" | "input_resolution" | "context_length" | "vocab_size"
        );
        match self {
            UnclipConfig::ClipText(_) => clip_extra || name.starts_with("visual."),
            UnclipConfig::ClipVisual(_) => clip_extra || !name.starts_with("visual."),
            _ => false,
        }
    }

    /// Whether a tensor may be stored quantised: GLIDE's rule on the name
    /// without its checkpoint prefix, except `clip_tok_proj`, whose rows the
    /// loader reorders from f32 values (CLIP's `text_projection`/`proj` are
    /// not `.weight`s and stay f32 by the rule).
    pub fn quantizable(&self, name: &str, shape: &[usize]) -> bool {
        let unet_or_linear = crate::glide::model::quantizable(
            name.trim_start_matches(DECODER_PREFIX)
                .trim_start_matches(SR_FIRST_PREFIX)
                .trim_start_matches(SR_LAST_PREFIX),
            shape,
        );
        unet_or_linear && !name.contains("clip_tok_proj")
    }
}

fn check_size(image_size: usize, levels: usize) -> Result<()> {
    if image_size == 0 || image_size > 4096 || !image_size.is_multiple_of(1 << (levels - 1)) {
        return Err(Error::Invalid(format!(
            "image_size {image_size}: a positive size divisible by 2^{}",
            levels - 1
        )));
    }
    Ok(())
}

/// CLIP's `ResidualAttentionBlock` (fused `in_proj`, QuickGELU MLP).
fn clip_block_shapes(add: &mut dyn FnMut(String, Vec<usize>), p: &str, w: usize) {
    add(format!("{p}.attn.in_proj_weight"), vec![3 * w, w]);
    add(format!("{p}.attn.in_proj_bias"), vec![3 * w]);
    weight_and_bias(add, &format!("{p}.attn.out_proj"), vec![w, w]);
    weight_and_bias(add, &format!("{p}.ln_1"), vec![w]);
    weight_and_bias(add, &format!("{p}.mlp.c_fc"), vec![4 * w, w]);
    weight_and_bias(add, &format!("{p}.mlp.c_proj"), vec![w, 4 * w]);
    weight_and_bias(add, &format!("{p}.ln_2"), vec![w]);
}

/// One loaded unCLIP folder.
pub enum UnclipNet {
    ClipText(ClipText),
    ClipVisual(ClipVisual),
    Prior(PriorStage),
    Decoder(DecoderStage),
    Sr(SrStage),
}

impl UnclipNet {
    /// The sampling stage this network is (None for the CLIP towers).
    pub fn stages(&self) -> Option<Stages<'_>> {
        let none = Stages::default();
        Some(match self {
            UnclipNet::Prior(p) => Stages {
                prior: Some(p),
                ..none
            },
            UnclipNet::Decoder(d) => Stages {
                decoder: Some(d),
                ..none
            },
            UnclipNet::Sr(s) => Stages {
                sr: Some(s),
                ..none
            },
            UnclipNet::ClipText(_) | UnclipNet::ClipVisual(_) => return None,
        })
    }
}

/// Loads a converted folder's network from its manifest config and shards;
/// of an SR folder, only the network `only` names (both when None).
pub fn load_net(
    gpu: &Gpu,
    config: &UnclipConfig,
    source: &WeightSource,
    dtype: WeightDType,
    only: Option<Network>,
) -> Result<UnclipNet> {
    config.validate()?;
    if let Some(n) = only {
        if n.kind() != config.kind() {
            return Err(Error::Invalid(format!(
                "the {} network is not in a '{}' folder",
                n.name(),
                config.kind()
            )));
        }
    }
    let l = Loader::new(gpu, source, dtype)?;
    let mut skipped = Vec::new();
    let net = match config.clone() {
        UnclipConfig::ClipText(c) => UnclipNet::ClipText(ClipText::load(gpu, c, &l)?),
        UnclipConfig::ClipVisual(c) => UnclipNet::ClipVisual(ClipVisual::load(gpu, c, &l)?),
        UnclipConfig::Prior(c) => {
            let d = c.clip_dim;
            let (mean, std) = (l.raw(CLIP_MEAN, &[d])?, l.raw(CLIP_STD, &[d])?);
            let model = Prior::load(c, &l, PRIOR_PREFIX)?;
            UnclipNet::Prior(PriorStage::new(gpu, model, &mean, &std)?)
        }
        UnclipConfig::Decoder { module, image_size } => UnclipNet::Decoder(DecoderStage {
            model: Decoder::load(gpu, module, &l, DECODER_PREFIX)?,
            image_size,
        }),
        UnclipConfig::Sr {
            first_steps,
            last_step,
            image_size,
        } => {
            let mut part = |config, prefix, wanted: Network| {
                if only.is_none_or(|n| n == wanted) {
                    SuperRes::load(config, &l, prefix).map(Some)
                } else {
                    skipped.push(prefix);
                    Ok(None)
                }
            };
            UnclipNet::Sr(SrStage {
                first_steps: part(first_steps, SR_FIRST_PREFIX, Network::SrFirstSteps)?,
                last_step: part(last_step, SR_LAST_PREFIX, Network::SrLastStep)?,
                image_size,
            })
        }
    };
    l.finish_except(&skipped)?;
    Ok(net)
}

/// Loads a converted folder (`webglide convert` output: its manifest and
/// verified shards) with the storage type the manifest names. A manifest
/// whose kind and config disagree is an error.
pub fn load_converted(
    gpu: &Gpu,
    manifest: &Manifest<UnclipConfig>,
    shards: &[(String, Vec<u8>)],
    only: Option<Network>,
) -> Result<UnclipNet> {
    if manifest.kind != manifest.config.kind() {
        return Err(Error::Invalid(format!(
            "manifest.json: kind '{}' but the config describes a '{}' model",
            manifest.kind,
            manifest.config.kind()
        )));
    }
    let source = WeightSource::shards(manifest.tensors.clone().into_iter().collect(), shards)?;
    load_net(
        gpu,
        &manifest.config,
        &source,
        WeightDType::parse(&manifest.quant)?,
        only,
    )
}
