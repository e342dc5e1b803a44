//! OpenAI CLIP's text tower as Karlo uses it (`CustomizedCLIP.encode_text`):
//! token + positional embedding, pre-LN blocks with `nn.MultiheadAttention`
//! (fused `in_proj`, rows `[Wq; Wk; Wv]`, causal mask only) and a QuickGELU
//! MLP, `ln_final` → `txt_feat_seq`, and `txt_feat` = the eot row (argmax of
//! the token ids) times `text_projection` (not normalised). Keys are the
//! official state_dict names (../shared/docs/unclip-architecture.md §2).

use crate::error::{Error, Result};
use crate::glide::model::{Layer, Norm};
use crate::glide::weights::Loader;
use crate::gpu::{Gpu, Recorder};
use crate::kernels::attention::{attention, Attention, View};
use crate::kernels::{self, Act};
use crate::quant::{WeightDType, WeightData};
use crate::tensor::{Tensor, Weight};

/// The text tower's size (`CLIP.__init__` arguments).
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct ClipTextConfig {
    pub embed_dim: usize,
    pub context_length: usize,
    pub vocab_size: usize,
    pub transformer_width: usize,
    pub transformer_heads: usize,
    pub transformer_layers: usize,
}

impl ClipTextConfig {
    /// ViT-L/14's text tower.
    pub fn vit_l_14() -> Self {
        ClipTextConfig {
            embed_dim: 768,
            context_length: 77,
            vocab_size: 49408,
            transformer_width: 768,
            transformer_heads: 12,
            transformer_layers: 12,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let w = self.transformer_width;
        let ok = w > 0
            && self.transformer_heads > 0
            && w.is_multiple_of(self.transformer_heads)
            && w / self.transformer_heads <= kernels::attention::MAX_HEAD_DIM
            && (1..=1024).contains(&self.context_length)
            && (1..=1_000_000).contains(&self.vocab_size)
            && (1..=128).contains(&self.transformer_layers)
            && (1..=8192).contains(&self.embed_dim)
            && w <= 8192;
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "unsupported CLIP text config {self:?}"
            )))
        }
    }
}

/// `transformer.resblocks.{i}`.
struct ResidualAttentionBlock {
    ln_1: Norm,
    in_proj: Layer,
    out_proj: Layer,
    ln_2: Norm,
    c_fc: Layer,
    c_proj: Layer,
}

pub struct ClipText {
    pub config: ClipTextConfig,
    token_embedding: Weight,
    positional_embedding: Tensor,
    blocks: Vec<ResidualAttentionBlock>,
    ln_final: Norm,
    /// `text_projection` `[W, E]` stored transposed as a linear weight `[E, W]`.
    text_projection: Weight,
}

/// What the text tower gives unCLIP: `[N, E]` pooled features and the
/// `[N, L, W]` per-token features (padding positions included).
pub struct TextFeatures {
    pub txt_feat: Tensor,
    pub txt_feat_seq: Tensor,
}

/// Named intermediates of one `encode` (fixture checks).
pub type Capture = Vec<(String, Tensor)>;

impl ClipText {
    /// The text tower's tensors from a loader over CLIP's state_dict (the
    /// visual tower's keys, if present, are left to the caller).
    pub fn load(gpu: &Gpu, config: ClipTextConfig, l: &Loader) -> Result<Self> {
        config.validate()?;
        let (w, e) = (config.transformer_width, config.embed_dim);
        let blocks = (0..config.transformer_layers)
            .map(|i| {
                let p = format!("transformer.resblocks.{i}");
                Ok(ResidualAttentionBlock {
                    ln_1: Norm::load(l, &format!("{p}.ln_1"), w)?,
                    in_proj: Layer::linear_named(
                        l,
                        &format!("{p}.attn.in_proj_weight"),
                        &format!("{p}.attn.in_proj_bias"),
                        3 * w,
                        w,
                    )?,
                    out_proj: Layer::linear_named(
                        l,
                        &format!("{p}.attn.out_proj.weight"),
                        &format!("{p}.attn.out_proj.bias"),
                        w,
                        w,
                    )?,
                    ln_2: Norm::load(l, &format!("{p}.ln_2"), w)?,
                    c_fc: Layer::linear_named(
                        l,
                        &format!("{p}.mlp.c_fc.weight"),
                        &format!("{p}.mlp.c_fc.bias"),
                        4 * w,
                        w,
                    )?,
                    c_proj: Layer::linear_named(
                        l,
                        &format!("{p}.mlp.c_proj.weight"),
                        &format!("{p}.mlp.c_proj.bias"),
                        w,
                        4 * w,
                    )?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let proj = l.raw("text_projection", &[w, e])?;
        let transposed: Vec<f32> = (0..e)
            .flat_map(|o| (0..w).map(move |i| (o, i)))
            .map(|(o, i)| proj[i * e + o])
            .collect();
        // Small (W·E) and read once per prompt: kept in f32.
        let text_projection = gpu.upload_weight(&WeightData::from_f32(
            &[e, w],
            &transposed,
            WeightDType::F32,
        )?)?;
        Ok(ClipText {
            token_embedding: l.weight("token_embedding.weight", &[config.vocab_size, w])?,
            positional_embedding: l.tensor("positional_embedding", &[config.context_length, w])?,
            blocks,
            ln_final: Norm::load(l, "ln_final", w)?,
            text_projection,
            config,
        })
    }

    /// `tokens`: `[N, L]` ids (u32) as padded by the CLIP tokenizer; the
    /// pooled row of each prompt is its largest id (the eot), as CLIP's argmax.
    pub fn encode(
        &self,
        rec: &mut Recorder,
        tokens: &[u32],
        mut cap: Option<&mut Capture>,
    ) -> Result<TextFeatures> {
        let c = &self.config;
        let (l, w) = (c.context_length, c.transformer_width);
        if tokens.is_empty() || !tokens.len().is_multiple_of(l) {
            return Err(Error::Invalid(format!(
                "{} token ids: a multiple of the context {l}",
                tokens.len()
            )));
        }
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::Invalid(format!(
                "token id {bad} outside the vocabulary"
            )));
        }
        let n = tokens.len() / l;
        let ids = rec.gpu().upload_u32(&[n, l], tokens)?;
        let mut x = kernels::embedding::embed(
            rec,
            &ids,
            &self.token_embedding,
            Some(&self.positional_embedding),
            None,
        )?;
        let mut keep = |name: String, t: &Tensor| {
            if let Some(c) = cap.as_deref_mut() {
                c.push((name, t.clone()));
            }
        };
        keep("x_in".into(), &x);
        let heads = c.transformer_heads;
        let d = w / heads;
        for (i, b) in self.blocks.iter().enumerate() {
            let h = b.ln_1.layer(rec, &x)?;
            let qkv = b.in_proj.apply_linear(rec, &h, None, Act::None)?; // [N, L, 3W]: q | k | v
            let view = |part: usize| View {
                t: &qkv,
                base: part * w,
                sb: l * 3 * w,
                sh: d,
                st: 3 * w,
                sc: 1,
            };
            let a = attention(
                rec,
                &Attention {
                    q: view(0),
                    k: view(1),
                    v: view(2),
                    enc: None,
                    batch: n,
                    heads,
                    tq: l,
                    tkv: l,
                    d,
                    // q·k/√d, split as d^(−1/4) on each.
                    scale: 1.0 / (d as f32).sqrt().sqrt(),
                    causal: true,
                    mask: None,
                    channels_first: false,
                },
            )?;
            x = b.out_proj.apply_linear(rec, &a, Some(&x), Act::None)?;
            let h = b.ln_2.layer(rec, &x)?;
            let f = b.c_fc.apply_linear(rec, &h, None, Act::QuickGelu)?;
            x = b.c_proj.apply_linear(rec, &f, Some(&x), Act::None)?;
            keep(format!("layer{i}_out"), &x);
        }
        let seq = self.ln_final.layer(rec, &x)?;
        keep("ln_final".into(), &seq);
        // The eot row of every prompt: rows of the flattened [1, N·L, W] sequence.
        let flat = seq.reshape(&[1, n * l, w])?;
        let pooled = rec.gpu().empty(&[1, n, w])?;
        for (b, row) in tokens.chunks(l).enumerate() {
            let eot = row
                .iter()
                .enumerate()
                .max_by_key(|&(j, &t)| (t, std::cmp::Reverse(j)))
                .map_or(0, |(j, _)| j);
            kernels::copy::copy_channels(rec, &flat, b * l + eot, &pooled, b, 1)?;
        }
        let txt_feat = kernels::matmul::linear(
            rec,
            &pooled.reshape(&[n, w])?,
            &self.text_projection,
            None,
            None,
            Act::None,
        )?;
        keep("txt_feat".into(), &txt_feat);
        Ok(TextFeatures {
            txt_feat,
            txt_feat_seq: seq,
        })
    }
}
