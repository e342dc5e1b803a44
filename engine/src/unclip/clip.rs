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
        let ok = kernels::attention::heads_fit(w, self.transformer_heads)
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

impl ResidualAttentionBlock {
    fn load(l: &Loader, p: &str, w: usize) -> Result<Self> {
        Ok(ResidualAttentionBlock {
            ln_1: Norm::load(l, &format!("{p}.ln_1"), w)?,
            in_proj: Layer::linear_named(
                l,
                &format!("{p}.attn.in_proj_weight"),
                &format!("{p}.attn.in_proj_bias"),
                3 * w,
                w,
            )?,
            out_proj: Layer::linear(l, &format!("{p}.attn.out_proj"), w, w)?,
            ln_2: Norm::load(l, &format!("{p}.ln_2"), w)?,
            c_fc: Layer::linear(l, &format!("{p}.mlp.c_fc"), 4 * w, w)?,
            c_proj: Layer::linear(l, &format!("{p}.mlp.c_proj"), w, 4 * w)?,
        })
    }

    /// `x += out_proj(MHA(ln_1 x))`, `x += c_proj(QuickGELU(c_fc(ln_2 x)))` on
    /// `[N, L, W]`; the fused q | k | v projection is read in place.
    fn forward(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        heads: usize,
        causal: bool,
    ) -> Result<Tensor> {
        let h = self.ln_1.layer(rec, x)?;
        let qkv = self.in_proj.apply_linear(rec, &h, None, Act::None)?; // [N, L, 3W]
        let a = kernels::attention::fused_qkv(rec, &qkv, heads, causal)?;
        let x = self.out_proj.apply_linear(rec, &a, Some(x), Act::None)?;
        let h = self.ln_2.layer(rec, &x)?;
        let f = self.c_fc.apply_linear(rec, &h, None, Act::QuickGelu)?;
        self.c_proj.apply_linear(rec, &f, Some(&x), Act::None)
    }
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
            .map(|i| ResidualAttentionBlock::load(l, &format!("transformer.resblocks.{i}"), w))
            .collect::<Result<Vec<_>>>()?;
        let text_projection = transposed(gpu, &l.raw("text_projection", &[w, e])?, w, e)?;
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
        let l = c.context_length;
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
        for (i, b) in self.blocks.iter().enumerate() {
            x = b.forward(rec, &x, heads, true)?;
            keep(format!("layer{i}_out"), &x);
        }
        let seq = self.ln_final.layer(rec, &x)?;
        keep("ln_final".into(), &seq);
        // The eot row of every prompt (CLIP's argmax of the ids).
        let eot: Vec<usize> = tokens
            .chunks(l)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .max_by_key(|&(j, &t)| (t, std::cmp::Reverse(j)))
                    .map_or(0, |(j, _)| j)
            })
            .collect();
        let pooled = kernels::copy::pick_tokens(rec, &seq, &eot)?;
        let txt_feat =
            kernels::matmul::linear(rec, &pooled, &self.text_projection, None, None, Act::None)?;
        keep("txt_feat".into(), &txt_feat);
        Ok(TextFeatures {
            txt_feat,
            txt_feat_seq: seq,
        })
    }
}

/// The visual tower's size (`CLIP.__init__`'s vision arguments; heads = width / 64).
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct ClipVisualConfig {
    pub embed_dim: usize,
    pub image_resolution: usize,
    pub vision_layers: usize,
    pub vision_width: usize,
    pub vision_patch_size: usize,
}

impl ClipVisualConfig {
    /// ViT-L/14's visual tower.
    pub fn vit_l_14() -> Self {
        ClipVisualConfig {
            embed_dim: 768,
            image_resolution: 224,
            vision_layers: 24,
            vision_width: 1024,
            vision_patch_size: 14,
        }
    }

    fn heads(&self) -> usize {
        (self.vision_width / 64).max(1)
    }

    fn grid(&self) -> usize {
        self.image_resolution / self.vision_patch_size.max(1)
    }

    pub fn validate(&self) -> Result<()> {
        let (w, p) = (self.vision_width, self.vision_patch_size);
        let ok = kernels::attention::heads_fit(w, self.heads())
            && p > 0
            && self.image_resolution.is_multiple_of(p)
            && (1..=1024).contains(&self.grid())
            && (1..=128).contains(&self.vision_layers)
            && (1..=8192).contains(&self.embed_dim)
            && w <= 8192;
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "unsupported CLIP visual config {self:?}"
            )))
        }
    }
}

/// CLIP's visual tower (`VisionTransformer`, keys `visual.*`): patches (the
/// bias-free patch conv as a linear on patches cut on the host), the class
/// token and positional embedding, `ln_pre`, the residual blocks (no mask),
/// `ln_post` of the class token, `proj` → the image embedding (not normalised).
pub struct ClipVisual {
    pub config: ClipVisualConfig,
    /// `conv1` `[W, 3·P·P]`.
    patch_embed: Weight,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: Norm,
    blocks: Vec<ResidualAttentionBlock>,
    ln_post: Norm,
    /// `proj` `[W, E]` stored transposed as a linear weight `[E, W]`.
    proj: Weight,
}

/// `[rows, cols]` row-major → a `[cols, rows]` linear weight (f32).
fn transposed(gpu: &Gpu, v: &[f32], rows: usize, cols: usize) -> Result<Weight> {
    let t: Vec<f32> = (0..cols)
        .flat_map(|o| (0..rows).map(move |i| (o, i)))
        .map(|(o, i)| v[i * cols + o])
        .collect();
    gpu.upload_weight(&WeightData::from_f32(&[cols, rows], &t, WeightDType::F32)?)
}

impl ClipVisual {
    pub fn load(gpu: &Gpu, config: ClipVisualConfig, l: &Loader) -> Result<Self> {
        config.validate()?;
        let (w, p, e) = (
            config.vision_width,
            config.vision_patch_size,
            config.embed_dim,
        );
        let tokens = config.grid() * config.grid() + 1;
        let mut patch_embed = l.weight("visual.conv1.weight", &[w, 3, p, p])?;
        patch_embed.shape = vec![w, 3 * p * p];
        Ok(ClipVisual {
            patch_embed,
            class_embedding: l
                .tensor("visual.class_embedding", &[w])?
                .reshape(&[1, 1, w])?,
            positional_embedding: l.tensor("visual.positional_embedding", &[tokens, w])?,
            ln_pre: Norm::load(l, "visual.ln_pre", w)?,
            blocks: (0..config.vision_layers)
                .map(|i| {
                    ResidualAttentionBlock::load(l, &format!("visual.transformer.resblocks.{i}"), w)
                })
                .collect::<Result<_>>()?,
            ln_post: Norm::load(l, "visual.ln_post", w)?,
            proj: transposed(gpu, &l.raw("visual.proj", &[w, e])?, w, e)?,
            config,
        })
    }

    /// `pixels`: `n` CLIP-normalised RGB images `[n, 3, R, R]` (host, planar).
    /// Returns the image embeddings `[n, E]`.
    pub fn encode(
        &self,
        rec: &mut Recorder,
        pixels: &[f32],
        n: usize,
        mut cap: Option<&mut Capture>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (r, p, g, w) = (
            c.image_resolution,
            c.vision_patch_size,
            c.grid(),
            c.vision_width,
        );
        if n == 0 || pixels.len() != n * 3 * r * r {
            return Err(Error::Invalid(format!(
                "{} pixel values for {n} images of 3×{r}×{r}",
                pixels.len()
            )));
        }
        let mut keep = |name: &str, t: &Tensor| {
            if let Some(c) = cap.as_deref_mut() {
                c.push((name.to_string(), t.clone()));
            }
        };
        // Patches in conv1's (channel, ky, kx) order, one row per (image, gy, gx).
        let mut patches = Vec::with_capacity(pixels.len());
        for b in 0..n {
            for gy in 0..g {
                for gx in 0..g {
                    for ch in 0..3 {
                        for ky in 0..p {
                            let row = ((b * 3 + ch) * r + gy * p + ky) * r + gx * p;
                            patches.extend_from_slice(&pixels[row..row + p]);
                        }
                    }
                }
            }
        }
        let gpu = rec.gpu();
        let patches = gpu.upload(&[n, g * g, 3 * p * p], &patches)?;
        let emb = kernels::matmul::linear(rec, &patches, &self.patch_embed, None, None, Act::None)?;
        keep("conv1_tokens", &emb);
        let class = kernels::copy::repeat_batch(rec, &self.class_embedding, n)?;
        let seq = kernels::copy::concat_channels(rec, &[&class, &emb])?;
        let seq = kernels::elementwise::binary(
            rec,
            &seq,
            &self.positional_embedding,
            kernels::elementwise::BinaryOp::Add,
            Act::None,
        )?;
        let mut x = self.ln_pre.layer(rec, &seq)?;
        keep("ln_pre", &x);
        for b in &self.blocks {
            x = b.forward(rec, &x, c.heads(), false)?;
        }
        keep("transformer_out", &x);
        let cls = kernels::copy::slice_channels(rec, &x, 0, 1)?.reshape(&[n, w])?;
        let cls = self.ln_post.layer(rec, &cls)?;
        keep("ln_post", &cls);
        let feat = kernels::matmul::linear(rec, &cls, &self.proj, None, None, Act::None)?;
        keep("img_feat", &feat);
        Ok(feat)
    }
}
