//! Karlo's prior (`karlo.modules.xf.PriorTransformer`): a causal pre-LN
//! transformer over 81 tokens — the 77 projected CLIP text tokens, the
//! pooled text feature, the timestep embedding, the noisy image embedding
//! and a learned "prediction" token — whose last position predicts x0 of the
//! CLIP image embedding (../shared/docs/unclip-architecture.md §3). Its
//! blocks are GLIDE's text-transformer blocks (same keys, same layout).

use crate::error::{Error, Result};
use crate::glide::model::{Layer, Norm, XfBlock};
use crate::glide::weights::Loader;
use crate::gpu::Recorder;
use crate::kernels::{self, Act};
use crate::tensor::Tensor;

/// `PriorTransformer` kwargs.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct PriorConfig {
    pub text_ctx: usize,
    pub xf_width: usize,
    pub xf_layers: usize,
    pub xf_heads: usize,
    pub xf_final_ln: bool,
    pub clip_dim: usize,
}

impl PriorConfig {
    /// The 4 tokens after the text: pooled text, time, x_t, prediction.
    pub fn seq_len(&self) -> usize {
        self.text_ctx + 4
    }

    pub fn validate(&self) -> Result<()> {
        let (w, h) = (self.xf_width, self.xf_heads);
        let ok = kernels::attention::heads_fit(w, h)
            && (1..=1024).contains(&self.text_ctx)
            && (1..=128).contains(&self.xf_layers)
            && (1..=8192).contains(&self.clip_dim)
            && w <= 16384;
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!("unsupported prior config {self:?}")))
        }
    }
}

pub struct Prior {
    pub config: PriorConfig,
    clip_img_proj: Layer,
    text_emb_proj: Layer,
    text_enc_proj: Layer,
    time_embed_0: Layer,
    time_embed_2: Layer,
    /// `[S, W]`.
    positional_embedding: Tensor,
    /// `[1, 1, W]`.
    prd_emb: Tensor,
    blocks: Vec<XfBlock>,
    final_ln: Option<Norm>,
    out_proj: Layer,
}

/// The conditioning of one prior call, per row: CLIP's pooled text feature
/// `[N, clip_dim]`, its token features `[N, text_ctx, clip_dim]` and the
/// tokenizer mask (`N·text_ctx` values, 1 = real token).
pub struct PriorText<'a> {
    pub text_emb: &'a Tensor,
    pub text_enc: &'a Tensor,
    pub mask: &'a [u32],
}

/// Named intermediates of one forward (fixture checks).
pub type Capture = Vec<(String, Tensor)>;

impl Prior {
    /// `prefix`: `model.` in Karlo's checkpoint.
    pub fn load(config: PriorConfig, l: &Loader, prefix: &str) -> Result<Self> {
        config.validate()?;
        let (w, d) = (config.xf_width, config.clip_dim);
        let k = |n: &str| format!("{prefix}{n}");
        let positional_embedding =
            l.tensor(&k("positional_embedding"), &[1, config.seq_len(), w])?;
        Ok(Prior {
            clip_img_proj: Layer::linear(l, &k("clip_img_proj"), w, d)?,
            text_emb_proj: Layer::linear(l, &k("text_emb_proj"), w, d)?,
            text_enc_proj: Layer::linear(l, &k("text_enc_proj"), w, d)?,
            time_embed_0: Layer::linear(l, &k("time_embed.0"), w, w)?,
            time_embed_2: Layer::linear(l, &k("time_embed.2"), w, w)?,
            positional_embedding: positional_embedding.reshape(&[config.seq_len(), w])?,
            prd_emb: l.tensor(&k("prd_emb"), &[1, 1, w])?,
            blocks: (0..config.xf_layers)
                .map(|i| XfBlock::load(l, &k(&format!("transformer.resblocks.{i}")), w))
                .collect::<Result<_>>()?,
            final_ln: if config.xf_final_ln {
                Some(Norm::load(l, &k("final_ln"), w)?)
            } else {
                None
            },
            out_proj: Layer::linear(l, &k("out_proj"), d, w)?,
            config,
        })
    }

    /// Predicted x0 `[N, clip_dim]` (normalised CLIP image-embedding space)
    /// for `x` `[N, clip_dim]` at original-scale timesteps `t` `[N]` (f32).
    pub fn forward(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        t: &Tensor,
        text: &PriorText,
        mut cap: Option<&mut Capture>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (w, d, l, s) = (c.xf_width, c.clip_dim, c.text_ctx, c.seq_len());
        let n = x.shape().first().copied().unwrap_or(0);
        if n == 0
            || x.shape() != [n, d]
            || t.shape() != [n]
            || text.text_emb.shape() != [n, d]
            || text.text_enc.shape() != [n, l, d]
            || text.mask.len() != n * l
        {
            return Err(Error::Invalid(format!(
                "prior inputs x {:?}, t {:?}, text_emb {:?}, text_enc {:?}, mask {}: expected \
                 [N, {d}], [N], [N, {d}], [N, {l}, {d}], N·{l}",
                x.shape(),
                t.shape(),
                text.text_emb.shape(),
                text.text_enc.shape(),
                text.mask.len()
            )));
        }
        let mut keep = |name: &str, t: &Tensor| {
            if let Some(c) = cap.as_deref_mut() {
                c.push((name.to_string(), t.clone()));
            }
        };
        let sinusoid = kernels::timestep::timestep_embedding(rec, t, w, false)?;
        keep("t_sinusoid", &sinusoid);
        let h = self
            .time_embed_0
            .apply_linear(rec, &sinusoid, None, Act::Silu)?;
        let t_emb = self.time_embed_2.apply_linear(rec, &h, None, Act::None)?;
        keep("t_emb", &t_emb);
        let text_enc = self
            .text_enc_proj
            .apply_linear(rec, text.text_enc, None, Act::None)?;
        keep("text_enc_proj", &text_enc);
        let text_emb = self
            .text_emb_proj
            .apply_linear(rec, text.text_emb, None, Act::None)?;
        keep("text_emb_proj", &text_emb);
        let x_proj = self.clip_img_proj.apply_linear(rec, x, None, Act::None)?;
        keep("x_proj", &x_proj);
        // One prediction token per row (the learned [1, 1, W] repeated).
        let prd = kernels::copy::repeat_batch(rec, &self.prd_emb, n)?;
        let token = |t: &Tensor| t.reshape(&[n, 1, w]);
        let seq = kernels::copy::concat_channels(
            rec,
            &[
                &text_enc,
                &token(&text_emb)?,
                &token(&t_emb)?,
                &token(&x_proj)?,
                &prd,
            ],
        )?;
        let mut h = kernels::elementwise::binary(
            rec,
            &seq,
            &self.positional_embedding,
            kernels::elementwise::BinaryOp::Add,
            Act::None,
        )?;
        keep("seq_in", &h);
        // Key padding (the 4 trailing tokens always visible) on top of the causal mask.
        let big_negative = -1e30f32;
        let mask: Vec<f32> = text
            .mask
            .chunks(l)
            .flat_map(|row| {
                row.iter()
                    .map(move |&m| if m != 0 { 0.0 } else { big_negative })
                    .chain([0.0; 4])
            })
            .collect();
        let mask = rec.gpu().upload(&[n, s], &mask)?;
        for (i, b) in self.blocks.iter().enumerate() {
            h = b.forward(rec, &h, c.xf_heads, true, Some(&mask))?;
            keep(&format!("layer{i}_out"), &h);
        }
        if let Some(ln) = &self.final_ln {
            h = ln.layer(rec, &h)?;
        }
        keep("final_ln", &h);
        let last = kernels::copy::slice_channels(rec, &h, s - 1, 1)?.reshape(&[n, w])?;
        let out = self.out_proj.apply_linear(rec, &last, None, Act::None)?;
        keep("out", &out);
        Ok(out)
    }
}
