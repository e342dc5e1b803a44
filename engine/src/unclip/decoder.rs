//! Karlo's decoder (`karlo.modules.unet.PLMImUNet`): GLIDE's UNet
//! conditioned on a CLIP image embedding `y` and CLIP text features instead
//! of its own text transformer (../shared/docs/unclip-architecture.md §4):
//! - emb = time MLP + `clip_emb(y)` + `text_feat_proj(txt_feat)`;
//! - the encoder sequence: 4 tokens from `clip_tok_proj(y)` followed by
//!   `LayerNorm(Linear(txt_feat_seq))` (77 tokens), read by every attention
//!   block with the tokenizer mask on the text keys;
//! - `cf_param` is the `y` of the unconditional half of a CFG batch.

use crate::error::{Error, Result};
use crate::glide::model::{Capture, Layer, Norm, UNet, UNetSpec};
use crate::glide::weights::Loader;
use crate::gpu::{Gpu, Recorder};
use crate::kernels::{self, Act};
use crate::quant::WeightData;
use crate::tensor::Tensor;

/// `PLMImUNet` kwargs (module_kwargs of the fixture, the YAML's hparams).
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct DecoderConfig {
    pub text_ctx: usize,
    pub xf_width: usize,
    pub in_channels: usize,
    pub model_channels: usize,
    pub out_channels: usize,
    pub num_res_blocks: usize,
    /// Downsampling factors with attention (already converted from resolutions).
    pub attention_resolutions: Vec<usize>,
    pub channel_mult: Vec<usize>,
    pub num_heads: i64,
    pub num_head_channels: i64,
    pub use_scale_shift_norm: bool,
    pub resblock_updown: bool,
    pub clip_dim: usize,
    pub clip_emb_mult: usize,
}

impl DecoderConfig {
    pub fn validate(&self) -> Result<()> {
        let ok = self.in_channels == 3
            && self.out_channels == 6
            && self.use_scale_shift_norm
            && self.resblock_updown
            && self.model_channels.is_multiple_of(32)
            && (1..=8).contains(&self.channel_mult.len())
            && (1..=1024).contains(&self.text_ctx)
            && (1..=8192).contains(&self.clip_dim)
            && (1..=16).contains(&self.clip_emb_mult)
            && (1..=16384).contains(&self.xf_width);
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "unsupported decoder config (the released decoder has 3 input and 6 output \
                 channels, scale-shift norm and resampling ResBlocks): {self:?}"
            )))
        }
    }

    pub(crate) fn unet_spec(&self) -> UNetSpec {
        UNetSpec {
            model_channels: self.model_channels,
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            num_res_blocks: self.num_res_blocks,
            channel_mult: self.channel_mult.clone(),
            attention_ds: self.attention_resolutions.clone(),
            head_channels: (self.num_head_channels > 0).then_some(self.num_head_channels as usize),
            num_heads: self.num_heads.max(1) as usize,
            encoder_channels: self.xf_width,
            scale_shift: true,
            middle_attention: true,
        }
    }

    /// The 4 image tokens, then the text tokens.
    pub fn encoder_len(&self) -> usize {
        self.clip_emb_mult + self.text_ctx
    }
}

pub struct Decoder {
    pub config: DecoderConfig,
    pub unet: UNet,
    clip_emb: Layer,
    text_feat_proj: Layer,
    text_seq_proj_0: Layer,
    text_seq_proj_1: Norm,
    /// `clip_tok_proj` with its output rows reordered token-major (see `load`).
    clip_tok_proj: Layer,
    /// `[clip_dim]`: the unconditional rows' `y`.
    pub cf_param: Tensor,
}

/// The per-row conditioning of a decoder call.
pub struct DecoderCond<'a> {
    /// `[N, clip_dim]` CLIP image embedding (the prior's output; `cf_param` for uncond rows).
    pub y: &'a Tensor,
    /// `[N, clip_dim]` pooled CLIP text feature.
    pub txt_feat: &'a Tensor,
    /// `[N, text_ctx, clip_dim]` per-token CLIP text features.
    pub txt_feat_seq: &'a Tensor,
    /// `N·text_ctx` tokenizer mask values (1 = real token).
    pub mask: &'a [u32],
}

/// What the conditioning computes once per prompt batch (reused every step).
pub struct DecoderText {
    pub extra_emb: Tensor,
    pub encoder_kv: Vec<Tensor>,
    /// Host additive mask `N·(4 + text_ctx)`.
    pub encoder_mask: Vec<f32>,
}

impl Decoder {
    /// `prefix`: `model.` in Karlo's checkpoint.
    pub fn load(gpu: &Gpu, config: DecoderConfig, l: &Loader, prefix: &str) -> Result<Self> {
        config.validate()?;
        let unet = UNet::load(l, prefix, config.unet_spec())?;
        let (d, w, k) = (config.clip_dim, config.xf_width, config.clip_emb_mult);
        let emb = 4 * config.model_channels;
        let key = |n: &str| format!("{prefix}{n}");
        // clip_tok_proj(y).reshape(N, W, k): output o = c·k + j is channel c of
        // token j. Reordering the rows to j·W + c makes the output token-major.
        let wt = l.raw(&key("clip_tok_proj.weight"), &[w * k, d])?;
        let bias = l.raw(&key("clip_tok_proj.bias"), &[w * k])?;
        let src = |row: usize| (row % w) * k + row / w;
        let wt: Vec<f32> = (0..w * k)
            .flat_map(|r| wt[src(r) * d..(src(r) + 1) * d].to_vec())
            .collect();
        let bias: Vec<f32> = (0..w * k).map(|r| bias[src(r)]).collect();
        let clip_tok_proj = Layer {
            weight: gpu.upload_weight(&WeightData::from_f32(&[w * k, d], &wt, l.dtype())?)?,
            bias: Some(gpu.upload(&[w * k], &bias)?),
        };
        Ok(Decoder {
            clip_emb: Layer::linear(l, &key("clip_emb"), emb, d)?,
            text_feat_proj: Layer::linear(l, &key("text_feat_proj"), emb, d)?,
            text_seq_proj_0: Layer::linear(l, &key("text_seq_proj.0"), w, d)?,
            text_seq_proj_1: Norm::load(l, &key("text_seq_proj.1"), w)?,
            clip_tok_proj,
            cf_param: l.tensor(&key("cf_param"), &[d])?,
            unet,
            config,
        })
    }

    /// The conditioning of a batch of rows (once per prompt batch).
    pub fn condition(
        &self,
        rec: &mut Recorder,
        c: &DecoderCond,
        mut cap: Option<&mut Capture>,
    ) -> Result<DecoderText> {
        let cfg = &self.config;
        let (d, w, l, k) = (cfg.clip_dim, cfg.xf_width, cfg.text_ctx, cfg.clip_emb_mult);
        let n = c.y.shape().first().copied().unwrap_or(0);
        if n == 0
            || c.y.shape() != [n, d]
            || c.txt_feat.shape() != [n, d]
            || c.txt_feat_seq.shape() != [n, l, d]
            || c.mask.len() != n * l
        {
            return Err(Error::Invalid(format!(
                "decoder conditioning y {:?}, txt_feat {:?}, txt_feat_seq {:?}, mask {}: \
                 expected [N, {d}], [N, {d}], [N, {l}, {d}], N·{l}",
                c.y.shape(),
                c.txt_feat.shape(),
                c.txt_feat_seq.shape(),
                c.mask.len()
            )));
        }
        let mut keep = |name: &str, t: &Tensor| {
            if let Some(cap) = cap.as_deref_mut() {
                cap.push((name.to_string(), t.clone()));
            }
        };
        let clip_emb = self.clip_emb.apply_linear(rec, c.y, None, Act::None)?;
        keep("clip_emb", &clip_emb);
        let text_feat = self
            .text_feat_proj
            .apply_linear(rec, c.txt_feat, None, Act::None)?;
        keep("text_feat_proj", &text_feat);
        let extra_emb = kernels::elementwise::binary(
            rec,
            &clip_emb,
            &text_feat,
            kernels::elementwise::BinaryOp::Add,
            Act::None,
        )?;
        let image_tokens = self
            .clip_tok_proj
            .apply_linear(rec, c.y, None, Act::None)?
            .reshape(&[n, k, w])?;
        let seq = self
            .text_seq_proj_0
            .apply_linear(rec, c.txt_feat_seq, None, Act::None)?;
        let seq = self.text_seq_proj_1.layer(rec, &seq)?;
        keep("text_seq_proj", &seq);
        let xf_out = kernels::copy::concat_channels(rec, &[&image_tokens, &seq])?;
        keep("xf_out_tokens", &xf_out);
        let encoder_kv = self
            .unet
            .attention_blocks()
            .map(|a| a.encoder_kv.apply_linear(rec, &xf_out, None, Act::None))
            .collect::<Result<Vec<_>>>()?;
        let encoder_mask = c
            .mask
            .chunks(l)
            .flat_map(|row| {
                std::iter::repeat_n(0.0, k)
                    .chain(row.iter().map(|&m| if m != 0 { 0.0 } else { -1e30 }))
            })
            .collect();
        Ok(DecoderText {
            extra_emb,
            encoder_kv,
            encoder_mask,
        })
    }

    /// `[N, 6, H, W]`: eps and the learned-range variance values.
    pub fn forward(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        timesteps: &Tensor,
        text: &DecoderText,
        cap: Option<&mut Capture>,
    ) -> Result<Tensor> {
        self.unet.forward(
            rec,
            x,
            timesteps,
            Some(&text.extra_emb),
            &text.encoder_kv,
            Some(&text.encoder_mask),
            cap,
        )
    }
}
