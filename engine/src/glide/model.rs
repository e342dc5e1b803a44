//! The GLIDE UNets (`Text2ImUNet`, `SuperResText2ImUNet`, `InpaintText2ImUNet`,
//! `SuperResInpaintText2ImUnet`) with their text transformer, on the engine's
//! kernels. Module and field names mirror the official state_dict keys
//! (../shared/docs/glide-architecture.md §2–4), so spec and code read side by side.

use serde::{Deserialize, Serialize};

use super::weights::{Loader, WeightSource};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Recorder};
use crate::kernels::attention::{attention, Attention, View};
use crate::kernels::conv::{conv2d, InputNorm, Upsampled};
use crate::kernels::{self, Act};
use crate::quant::WeightDType;
use crate::tensor::{Tensor, Weight};

/// `create_model_and_diffusion` arguments (defaults: `model_and_diffusion_defaults()`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct GlideConfig {
    pub image_size: usize,
    pub num_channels: usize,
    pub num_res_blocks: usize,
    pub channel_mult: String,
    pub num_heads: usize,
    pub num_head_channels: i64,
    pub attention_resolutions: String,
    pub text_ctx: usize,
    pub xf_width: usize,
    pub xf_layers: usize,
    pub xf_heads: usize,
    pub xf_final_ln: bool,
    pub xf_padding: bool,
    pub diffusion_steps: usize,
    pub noise_schedule: String,
    pub timestep_respacing: String,
    pub use_scale_shift_norm: bool,
    pub resblock_updown: bool,
    pub inpaint: bool,
    pub super_res: bool,
    pub n_vocab: usize,
    // Accepted for compatibility with the official kwargs; inference ignores them.
    pub dropout: f64,
    pub num_heads_upsample: i64,
    pub use_fp16: bool,
    pub cache_text_emb: bool,
}

impl Default for GlideConfig {
    fn default() -> Self {
        GlideConfig {
            image_size: 64,
            num_channels: 192,
            num_res_blocks: 3,
            channel_mult: String::new(),
            num_heads: 1,
            num_head_channels: 64,
            attention_resolutions: "32,16,8".into(),
            text_ctx: 128,
            xf_width: 512,
            xf_layers: 16,
            xf_heads: 8,
            xf_final_ln: true,
            xf_padding: true,
            diffusion_steps: 1000,
            noise_schedule: "squaredcos_cap_v2".into(),
            timestep_respacing: String::new(),
            use_scale_shift_norm: true,
            resblock_updown: true,
            inpaint: false,
            super_res: false,
            n_vocab: 50257,
            dropout: 0.1,
            num_heads_upsample: -1,
            use_fp16: false,
            cache_text_emb: false,
        }
    }
}

impl GlideConfig {
    /// The released model's configuration for `kind` (base, upsample,
    /// base-inpaint, upsample-inpaint): `model_and_diffusion_defaults()` and
    /// `..._upsampler()` with the notebooks' respacing.
    pub fn for_kind(kind: &str) -> Result<Self> {
        let base = GlideConfig {
            timestep_respacing: "100".into(),
            ..Default::default()
        };
        let up = GlideConfig {
            image_size: 256,
            num_res_blocks: 2,
            noise_schedule: "linear".into(),
            timestep_respacing: "fast27".into(),
            super_res: true,
            ..Default::default()
        };
        Ok(match kind {
            "base" => base,
            "base-inpaint" => GlideConfig {
                inpaint: true,
                ..base
            },
            "upsample" => up,
            "upsample-inpaint" => GlideConfig {
                inpaint: true,
                ..up
            },
            other => {
                return Err(Error::Invalid(format!(
                    "unknown model kind '{other}' (base, upsample, base-inpaint, upsample-inpaint)"
                )))
            }
        })
    }

    /// The kind name matching this configuration's conditioning inputs.
    pub fn kind(&self) -> &'static str {
        match (self.super_res, self.inpaint) {
            (false, false) => "base",
            (false, true) => "base-inpaint",
            (true, false) => "upsample",
            (true, true) => "upsample-inpaint",
        }
    }

    pub fn channel_mult(&self) -> Result<Vec<usize>> {
        if self.channel_mult.trim().is_empty() {
            return match self.image_size {
                256 => Ok(vec![1, 1, 2, 2, 4, 4]),
                128 => Ok(vec![1, 1, 2, 3, 4]),
                64 => Ok(vec![1, 2, 3, 4]),
                s => Err(Error::Invalid(format!(
                    "no default channel_mult for image_size {s}"
                ))),
            };
        }
        let m: Vec<usize> = self
            .channel_mult
            .split(',')
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| Error::Invalid(format!("channel_mult '{}'", self.channel_mult)))
            })
            .collect::<Result<_>>()?;
        Ok(m)
    }

    /// Downsample factors that get attention.
    pub fn attention_ds(&self) -> Result<Vec<usize>> {
        self.attention_resolutions
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|r| {
                let r: usize = r.trim().parse().map_err(|_| {
                    Error::Invalid(format!(
                        "attention_resolutions '{}'",
                        self.attention_resolutions
                    ))
                })?;
                if r == 0 || !self.image_size.is_multiple_of(r) {
                    return Err(Error::Invalid(format!(
                        "attention resolution {r} does not divide image_size {}",
                        self.image_size
                    )));
                }
                Ok(self.image_size / r)
            })
            .collect()
    }

    pub fn in_channels(&self) -> usize {
        3 + if self.inpaint { 4 } else { 0 } + if self.super_res { 3 } else { 0 }
    }

    pub fn heads(&self, ch: usize) -> Result<usize> {
        if self.num_head_channels > 0 {
            let hc = self.num_head_channels as usize;
            if !ch.is_multiple_of(hc) {
                return Err(Error::Invalid(format!(
                    "{ch} channels not divisible by num_head_channels {hc}"
                )));
            }
            Ok(ch / hc)
        } else {
            Ok(self.num_heads.max(1))
        }
    }

    /// Every weight the architecture needs, `(key, shape)`, in the official
    /// `state_dict()` order. `Glide::load` checks files against this list;
    /// tests check it against the full-size key lists of the released models.
    pub fn weight_shapes(&self) -> Result<Vec<(String, Vec<usize>)>> {
        self.validate()?;
        let (w, ctx) = (self.xf_width, self.text_ctx);
        let mut k = vec![("positional_embedding".to_string(), vec![ctx, w])];
        if self.xf_padding {
            k.push(("padding_embedding".into(), vec![ctx, w]));
        }
        k.extend(self.unet_spec()?.weight_shapes(""));
        let mut add = |name: String, shape: Vec<usize>| k.push((name, shape));
        let pair = weight_and_bias;
        for l in 0..self.xf_layers {
            XfBlock::weight_shapes(&mut add, &format!("transformer.resblocks.{l}"), w);
        }
        if self.xf_final_ln {
            pair(&mut add, "final_ln", vec![w]);
        }
        add("token_embedding.weight".into(), vec![self.n_vocab, w]);
        pair(&mut add, "transformer_proj", vec![4 * self.num_channels, w]);
        Ok(k)
    }

    /// The UNet's sizes (every GLIDE model: 6 output channels, middle attention).
    pub fn unet_spec(&self) -> Result<UNetSpec> {
        Ok(UNetSpec {
            model_channels: self.num_channels,
            in_channels: self.in_channels(),
            out_channels: 6,
            num_res_blocks: self.num_res_blocks,
            channel_mult: self.channel_mult()?,
            attention_ds: self.attention_ds()?,
            head_channels: (self.num_head_channels > 0).then_some(self.num_head_channels as usize),
            num_heads: self.num_heads,
            encoder_channels: self.xf_width,
            scale_shift: self.use_scale_shift_norm,
            middle_attention: true,
        })
    }

    /// Rejects configurations the architecture cannot build.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(format!("config: {m}")));
        if self.num_channels == 0 || !self.num_channels.is_multiple_of(32) {
            return bad(format!(
                "num_channels {} must be a positive multiple of 32 (GroupNorm32)",
                self.num_channels
            ));
        }
        if self.image_size == 0 || self.image_size > 4096 {
            return bad(format!("image_size {}", self.image_size));
        }
        // Far above the released models (192 channels, multipliers ≤ 4 over ≤ 6
        // levels, 3 blocks, a 512-wide 16-layer text transformer), low enough
        // that no size computed from them overflows.
        let mult = self.channel_mult()?;
        if self.num_channels > 4096
            || mult.len() > 8
            || mult.iter().any(|&m| m == 0 || m > 16)
            || self.num_res_blocks > 16
            || self.xf_width > 8192
            || self.xf_layers > 128
            || self.n_vocab > 1 << 20
            || !(1..=100_000).contains(&self.diffusion_steps)
        {
            return bad(format!(
                "num_channels {}, channel_mult '{}', num_res_blocks {}, xf_width {}, xf_layers {}, n_vocab {} or diffusion_steps {} out of range",
                self.num_channels, self.channel_mult, self.num_res_blocks, self.xf_width, self.xf_layers, self.n_vocab, self.diffusion_steps
            ));
        }
        if mult.is_empty() || !self.image_size.is_multiple_of(1 << (mult.len() - 1)) {
            return bad(format!(
                "image_size {} not divisible by 2^{}",
                self.image_size,
                mult.len() - 1
            ));
        }
        if self.xf_width > 0 && (self.xf_heads == 0 || !self.xf_width.is_multiple_of(self.xf_heads))
        {
            return bad(format!(
                "xf_width {} not divisible into {} heads",
                self.xf_width, self.xf_heads
            ));
        }
        if self.text_ctx == 0 || self.text_ctx > 4096 || self.n_vocab == 0 {
            return bad(format!(
                "text_ctx {} / n_vocab {}",
                self.text_ctx, self.n_vocab
            ));
        }
        if !self.use_scale_shift_norm || !self.resblock_updown {
            return bad("only use_scale_shift_norm=True and resblock_updown=True (the released GLIDE models) are supported".into());
        }
        self.attention_ds()?;
        for m in &mult {
            self.heads(m * self.num_channels)?;
        }
        Ok(())
    }
}

/// Whether a weight is stored in the chosen quantised type (conv/linear
/// matrices and the token embedding) or kept f32 (norms, biases, embedding
/// tables, `time_embed` and `emb_layers`, which the official fp16 mode also
/// keeps in f32). Shared by the loader and `webglide convert`.
pub fn quantizable(name: &str, shape: &[usize]) -> bool {
    shape.len() >= 2
        && name.ends_with(".weight")
        && !name.starts_with("time_embed.")
        && !name.contains(".emb_layers.")
}

/// GroupNorm32 affine parameters.
pub struct Norm {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Norm {
    pub(crate) fn load(l: &Loader, name: &str, c: usize) -> Result<Self> {
        Ok(Norm {
            weight: l.tensor(&format!("{name}.weight"), &[c])?,
            bias: l.tensor(&format!("{name}.bias"), &[c])?,
        })
    }
    /// LayerNorm (eps 1e-5) over the last dimension.
    pub(crate) fn layer(&self, rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
        kernels::layer_norm::layer_norm(rec, x, Some(&self.weight), Some(&self.bias), 1e-5)
    }
    /// Folded coefficients for GN(x)(·(1+scale)+shift).
    fn coeffs(&self, rec: &mut Recorder, x: &Tensor, emb: Option<&Tensor>) -> Result<Tensor> {
        kernels::group_norm::norm_coeffs(rec, x, &self.weight, &self.bias, 32, 1e-5, emb)
    }
}

/// A conv (2-D 3×3/1×1 or a 1-D kernel-1 conv used as 1×1) or linear layer.
pub struct Layer {
    pub weight: Weight,
    pub bias: Option<Tensor>,
}

impl Layer {
    fn conv(l: &Loader, name: &str, cout: usize, cin: usize, k: usize) -> Result<Self> {
        Ok(Layer {
            weight: l.weight(&format!("{name}.weight"), &[cout, cin, k, k])?,
            bias: Some(l.tensor(&format!("{name}.bias"), &[cout])?),
        })
    }
    /// Conv1d(kernel 1) weights `[out, in, 1]`, used as a 1×1 conv.
    fn conv1d(l: &Loader, name: &str, cout: usize, cin: usize) -> Result<Self> {
        let mut weight = l.weight(&format!("{name}.weight"), &[cout, cin, 1])?;
        weight.shape = vec![cout, cin, 1, 1];
        Ok(Layer {
            weight,
            bias: Some(l.tensor(&format!("{name}.bias"), &[cout])?),
        })
    }
    pub(crate) fn linear(l: &Loader, name: &str, out: usize, inp: usize) -> Result<Self> {
        Self::linear_named(
            l,
            &format!("{name}.weight"),
            &format!("{name}.bias"),
            out,
            inp,
        )
    }
    /// A linear layer whose tensors are not `{name}.weight`/`.bias` (CLIP's `in_proj_*`).
    pub(crate) fn linear_named(
        l: &Loader,
        weight: &str,
        bias: &str,
        out: usize,
        inp: usize,
    ) -> Result<Self> {
        Ok(Layer {
            weight: l.weight(weight, &[out, inp])?,
            bias: Some(l.tensor(bias, &[out])?),
        })
    }
    fn apply_conv(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        norm: Option<InputNorm>,
        res: Option<&Tensor>,
    ) -> Result<Tensor> {
        conv2d(rec, x, &self.weight, self.bias.as_ref(), norm, res)
    }
    pub(crate) fn apply_linear(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        res: Option<&Tensor>,
        act: Act,
    ) -> Result<Tensor> {
        kernels::matmul::linear(rec, x, &self.weight, self.bias.as_ref(), res, act)
    }
    /// The input gradient of [`Self::apply_linear`] (no activation): `dy·W + res`.
    pub(crate) fn linear_grad(
        &self,
        rec: &mut Recorder,
        dy: &Tensor,
        res: Option<&Tensor>,
    ) -> Result<Tensor> {
        kernels::matmul::linear_grad_input(rec, dy, &self.weight, res)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    None,
    Up,
    Down,
}

/// `ResBlock` with scale-shift norm (keys in_layers.{0,2}, emb_layers.1, out_layers.{0,3}, skip_connection).
pub struct ResBlock {
    pub in_layers_0: Norm,
    pub in_layers_2: Layer,
    pub emb_layers_1: Layer,
    pub out_layers_0: Norm,
    pub out_layers_3: Layer,
    pub skip_connection: Option<Layer>,
    pub resample: Resample,
    /// GN(h)·(1 + scale) + shift from the embedding (GLIDE, Karlo's decoder);
    /// else the embedding is added to h before the norm (Karlo's SR).
    pub scale_shift: bool,
}

impl ResBlock {
    fn load(
        l: &Loader,
        name: &str,
        cin: usize,
        cout: usize,
        emb: usize,
        resample: Resample,
        scale_shift: bool,
    ) -> Result<Self> {
        let emb_out = if scale_shift { 2 * cout } else { cout };
        Ok(ResBlock {
            in_layers_0: Norm::load(l, &format!("{name}.in_layers.0"), cin)?,
            in_layers_2: Layer::conv(l, &format!("{name}.in_layers.2"), cout, cin, 3)?,
            emb_layers_1: Layer::linear(l, &format!("{name}.emb_layers.1"), emb_out, emb)?,
            out_layers_0: Norm::load(l, &format!("{name}.out_layers.0"), cout)?,
            out_layers_3: Layer::conv(l, &format!("{name}.out_layers.3"), cout, cout, 3)?,
            skip_connection: if cin != cout {
                Some(Layer::conv(
                    l,
                    &format!("{name}.skip_connection"),
                    cout,
                    cin,
                    1,
                )?)
            } else {
                None
            },
            resample,
            scale_shift,
        })
    }

    /// `emb_silu` is SiLU(emb), shared by every block of a forward pass.
    fn forward(&self, rec: &mut Recorder, x: &Tensor, emb_silu: &Tensor) -> Result<Tensor> {
        let coef = self.in_layers_0.coeffs(rec, x, None)?;
        let norm = InputNorm {
            coef: &coef,
            silu: true,
        };
        // Resampling comes after GN+SiLU and before the conv, the skip input's too.
        let (h, x, skip_upsampled) = match self.resample {
            Resample::None => (
                self.in_layers_2.apply_conv(rec, x, Some(norm), None)?,
                x.clone(),
                false,
            ),
            // Folded into the convs' loads; the skip (and its 1×1 conv, which
            // commutes with nearest upsampling) stays at the low resolution.
            Resample::Up => {
                let l = &self.in_layers_2;
                let h = kernels::conv::conv2d_upsampled(
                    rec,
                    x,
                    &l.weight,
                    l.bias.as_ref(),
                    Some(norm),
                    None,
                    Upsampled {
                        input: true,
                        res: false,
                    },
                )?;
                (h, x.clone(), true)
            }
            Resample::Down => {
                let h = kernels::group_norm::apply(rec, x, &coef, Act::Silu)?;
                let h = kernels::resample::avgpool2(rec, &h)?;
                let x = kernels::resample::avgpool2(rec, x)?;
                (self.in_layers_2.apply_conv(rec, &h, None, None)?, x, false)
            }
        };
        let e = self
            .emb_layers_1
            .apply_linear(rec, emb_silu, None, Act::None)?;
        let (h, coef2) = if self.scale_shift {
            let coef2 = self.out_layers_0.coeffs(rec, &h, Some(&e))?;
            (h, coef2)
        } else {
            let c = e.shape()[1];
            let e = e.reshape(&[e.shape()[0], c, 1, 1])?;
            let h = kernels::elementwise::binary(
                rec,
                &h,
                &e,
                kernels::elementwise::BinaryOp::Add,
                Act::None,
            )?;
            let coef2 = self.out_layers_0.coeffs(rec, &h, None)?;
            (h, coef2)
        };
        let skip = match &self.skip_connection {
            Some(s) => s.apply_conv(rec, &x, None, None)?,
            None => x,
        };
        kernels::conv::conv2d_upsampled(
            rec,
            &h,
            &self.out_layers_3.weight,
            self.out_layers_3.bias.as_ref(),
            Some(InputNorm {
                coef: &coef2,
                silu: true,
            }),
            Some(&skip),
            Upsampled {
                input: false,
                res: skip_upsampled,
            },
        )
    }
}

/// `AttentionBlock` with text context (keys norm, qkv, encoder_kv, proj_out).
pub struct AttentionBlock {
    pub norm: Norm,
    pub qkv: Layer,
    pub encoder_kv: Layer,
    pub proj_out: Layer,
    pub heads: usize,
    pub channels: usize,
}

impl AttentionBlock {
    fn load(l: &Loader, name: &str, ch: usize, heads: usize, xf_width: usize) -> Result<Self> {
        let mut encoder_kv = Layer::conv1d(l, &format!("{name}.encoder_kv"), 2 * ch, xf_width)?;
        // Applied as a linear on the [N, L, xf_width] text features.
        encoder_kv.weight.shape = vec![2 * ch, xf_width];
        Ok(AttentionBlock {
            norm: Norm::load(l, &format!("{name}.norm"), ch)?,
            qkv: Layer::conv1d(l, &format!("{name}.qkv"), 3 * ch, ch)?,
            encoder_kv,
            proj_out: Layer::conv1d(l, &format!("{name}.proj_out"), ch, ch)?,
            heads,
            channels: ch,
        })
    }

    /// `ekv`: this block's encoder keys/values `[N, L, 2C]` (channel h·2d + {k,v}·d + c);
    /// `mask`: additive `[N, L + H·W]` over the keys (encoder keys first).
    fn forward(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        ekv: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let &[n, c, h, w] = x.shape() else {
            unreachable!("UNet activations are NCHW")
        };
        let t = h * w;
        let coef = self.norm.coeffs(rec, x, None)?;
        let qkv = self.qkv.apply_conv(
            rec,
            x,
            Some(InputNorm {
                coef: &coef,
                silu: false,
            }),
            None,
        )?;
        let d = c / self.heads;
        let s = ekv.shape()[1];
        let q = |j: usize| View {
            t: &qkv,
            base: j * d * t,
            sb: 3 * c * t,
            sh: 3 * d * t,
            st: 1,
            sc: t,
        };
        let e = |j: usize| View {
            t: ekv,
            base: j * d,
            sb: s * 2 * c,
            sh: 2 * d,
            st: 2 * c,
            sc: 1,
        };
        let a = attention(
            rec,
            &Attention {
                q: q(0),
                k: q(1),
                v: q(2),
                enc: Some((e(0), e(1), s)),
                batch: n,
                heads: self.heads,
                tq: t,
                tkv: t,
                d,
                scale: 1.0 / (d as f32).sqrt().sqrt(),
                causal: false,
                mask,
                channels_first: true,
            },
        )?;
        let a = a.reshape(&[n, c, h, w])?;
        self.proj_out.apply_conv(rec, &a, None, Some(x))
    }
}

pub enum Block {
    Conv(Layer),
    Res(ResBlock),
    Attn(AttentionBlock),
}

/// Text transformer residual block (keys ln_1, attn.c_qkv, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj).
pub struct XfBlock {
    pub ln_1: Norm,
    pub attn_c_qkv: Layer,
    pub attn_c_proj: Layer,
    pub ln_2: Norm,
    pub mlp_c_fc: Layer,
    pub mlp_c_proj: Layer,
}

impl XfBlock {
    /// `{prefix}.ln_1`, `.attn.c_qkv`, … of width `w`.
    /// The block's tensor names under `p` and their shapes.
    pub(crate) fn weight_shapes(add: &mut dyn FnMut(String, Vec<usize>), p: &str, w: usize) {
        let pair = weight_and_bias;
        pair(add, &format!("{p}.attn.c_qkv"), vec![3 * w, w]);
        pair(add, &format!("{p}.attn.c_proj"), vec![w, w]);
        pair(add, &format!("{p}.ln_1"), vec![w]);
        pair(add, &format!("{p}.mlp.c_fc"), vec![4 * w, w]);
        pair(add, &format!("{p}.mlp.c_proj"), vec![w, 4 * w]);
        pair(add, &format!("{p}.ln_2"), vec![w]);
    }

    pub(crate) fn load(l: &Loader, prefix: &str, w: usize) -> Result<Self> {
        let p = prefix;
        Ok(XfBlock {
            ln_1: Norm::load(l, &format!("{p}.ln_1"), w)?,
            attn_c_qkv: Layer::linear(l, &format!("{p}.attn.c_qkv"), 3 * w, w)?,
            attn_c_proj: Layer::linear(l, &format!("{p}.attn.c_proj"), w, w)?,
            ln_2: Norm::load(l, &format!("{p}.ln_2"), w)?,
            mlp_c_fc: Layer::linear(l, &format!("{p}.mlp.c_fc"), 4 * w, w)?,
            mlp_c_proj: Layer::linear(l, &format!("{p}.mlp.c_proj"), w, 4 * w)?,
        })
    }

    /// Pre-LN block on `[N, L, W]`: attention with the head-major q|k|v
    /// layout (GLIDE's text transformer, Karlo's prior), exact-erf GELU MLP.
    /// `mask`: additive `[N, L]` over the keys.
    pub(crate) fn forward(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        heads: usize,
        causal: bool,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let h = self.ln_1.layer(rec, x)?;
        let qkv = self.attn_c_qkv.apply_linear(rec, &h, None, Act::None)?;
        let a = kernels::attention::per_head_qkv(rec, &qkv, heads, causal, mask)?;
        let x = self.attn_c_proj.apply_linear(rec, &a, Some(x), Act::None)?;
        let h = self.ln_2.layer(rec, &x)?;
        let f = self.mlp_c_fc.apply_linear(rec, &h, None, Act::Gelu)?;
        self.mlp_c_proj.apply_linear(rec, &f, Some(&x), Act::None)
    }
}

/// Text conditioning computed once per prompt batch and reused every step.
pub struct TextCond {
    /// `transformer_proj(final_ln[:, -1])`, `[N, 4C]`.
    pub xf_proj: Tensor,
    /// Final text features `[N, L, xf_width]` (token-major).
    pub xf_out: Tensor,
    /// Per attention block (in forward order): encoder keys/values `[N, L, 2C]`.
    pub encoder_kv: Vec<Tensor>,
}

/// Extra model inputs of the super-res / inpaint variants.
#[derive(Default, Clone, Copy)]
pub struct Conditioning<'a> {
    /// `[N, 3, h, w]` low-resolution image (bilinearly upsampled inside).
    pub low_res: Option<&'a Tensor>,
    /// `[N, 3, H, W]` image and `[N, 1, H, W]` mask (1 = keep); multiplied inside.
    pub inpaint: Option<(&'a Tensor, &'a Tensor)>,
}

/// The sizes of a GLIDE-family UNet: GLIDE's four models and Karlo's decoder.
#[derive(Clone, Debug)]
pub struct UNetSpec {
    pub model_channels: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub num_res_blocks: usize,
    pub channel_mult: Vec<usize>,
    /// Downsampling factors with attention.
    pub attention_ds: Vec<usize>,
    /// Channels per head (`num_head_channels`), or None: `num_heads` heads.
    pub head_channels: Option<usize>,
    pub num_heads: usize,
    /// Width of the encoder sequence the attention blocks read (`xf_width`).
    pub encoder_channels: usize,
    /// ResBlocks with scale-shift norm (else the embedding is added).
    pub scale_shift: bool,
    /// An attention block between the two middle ResBlocks.
    pub middle_attention: bool,
}

/// `{name}.weight` of `shape` and `{name}.bias` of its first dimension.
pub(crate) fn weight_and_bias(
    add: &mut dyn FnMut(String, Vec<usize>),
    name: &str,
    shape: Vec<usize>,
) {
    let out = shape[0];
    add(format!("{name}.weight"), shape);
    add(format!("{name}.bias"), vec![out]);
}

impl UNetSpec {
    /// Every tensor's official name (under `prefix`) and shape, in load order.
    pub fn weight_shapes(&self, prefix: &str) -> Vec<(String, Vec<usize>)> {
        let mc = self.model_channels;
        let emb = 4 * mc;
        let mut k: Vec<(String, Vec<usize>)> = Vec::new();
        let mut add = |name: String, shape: Vec<usize>| k.push((format!("{prefix}{name}"), shape));
        let pair = weight_and_bias;
        // Scale-shift ResBlocks project the embedding to scale and shift.
        let emb_out = if self.scale_shift { 2 } else { 1 };
        let res = |add: &mut dyn FnMut(String, Vec<usize>), p: &str, cin: usize, cout: usize| {
            pair(add, &format!("{p}.in_layers.0"), vec![cin]);
            pair(add, &format!("{p}.in_layers.2"), vec![cout, cin, 3, 3]);
            pair(add, &format!("{p}.emb_layers.1"), vec![emb_out * cout, emb]);
            pair(add, &format!("{p}.out_layers.0"), vec![cout]);
            pair(add, &format!("{p}.out_layers.3"), vec![cout, cout, 3, 3]);
            if cin != cout {
                pair(add, &format!("{p}.skip_connection"), vec![cout, cin, 1, 1]);
            }
        };
        let enc = self.encoder_channels;
        let attn = |add: &mut dyn FnMut(String, Vec<usize>), p: &str, ch: usize| {
            pair(add, &format!("{p}.norm"), vec![ch]);
            pair(add, &format!("{p}.qkv"), vec![3 * ch, ch, 1]);
            if enc > 0 {
                pair(add, &format!("{p}.encoder_kv"), vec![2 * ch, enc, 1]);
            }
            pair(add, &format!("{p}.proj_out"), vec![ch, ch, 1]);
        };
        pair(&mut add, "time_embed.0", vec![emb, mc]);
        pair(&mut add, "time_embed.2", vec![emb, emb]);
        let mult = &self.channel_mult;
        // unet.py: `ch = input_ch = int(channel_mult[0] * model_channels)`.
        let input_ch = mult.first().map_or(mc, |m| m * mc);
        pair(
            &mut add,
            "input_blocks.0.0",
            vec![input_ch, self.in_channels, 3, 3],
        );
        let (mut ch, mut ds, mut i) = (input_ch, 1, 1);
        let mut skips = vec![input_ch];
        for (level, &m) in mult.iter().enumerate() {
            for _ in 0..self.num_res_blocks {
                res(&mut add, &format!("input_blocks.{i}.0"), ch, m * mc);
                ch = m * mc;
                if self.attention_ds.contains(&ds) {
                    attn(&mut add, &format!("input_blocks.{i}.1"), ch);
                }
                skips.push(ch);
                i += 1;
            }
            if level + 1 != mult.len() {
                res(&mut add, &format!("input_blocks.{i}.0"), ch, ch);
                skips.push(ch);
                ds *= 2;
                i += 1;
            }
        }
        res(&mut add, "middle_block.0", ch, ch);
        let mut last = 1;
        if self.middle_attention {
            attn(&mut add, "middle_block.1", ch);
            last = 2;
        }
        res(&mut add, &format!("middle_block.{last}"), ch, ch);
        let mut o = 0;
        for (level, &m) in mult.iter().enumerate().rev() {
            for j in 0..=self.num_res_blocks {
                let sc = skips.pop().unwrap_or(0);
                res(&mut add, &format!("output_blocks.{o}.0"), ch + sc, m * mc);
                ch = m * mc;
                let mut sub = 1;
                if self.attention_ds.contains(&ds) {
                    attn(&mut add, &format!("output_blocks.{o}.1"), ch);
                    sub = 2;
                }
                if level > 0 && j == self.num_res_blocks {
                    res(&mut add, &format!("output_blocks.{o}.{sub}"), ch, ch);
                    ds /= 2;
                }
                o += 1;
            }
        }
        pair(&mut add, "out.0", vec![ch]);
        pair(&mut add, "out.2", vec![self.out_channels, ch, 3, 3]);
        k
    }

    fn heads(&self, ch: usize) -> Result<usize> {
        match self.head_channels {
            Some(hc) if hc > 0 && ch.is_multiple_of(hc) => Ok(ch / hc),
            Some(hc) => Err(Error::Invalid(format!(
                "{ch} channels not divisible by num_head_channels {hc}"
            ))),
            None => Ok(self.num_heads.max(1)),
        }
    }
}

/// The UNet: timestep MLP, input/middle/output blocks of ResBlocks (scale-
/// shift norm, resampling ResBlocks) and attention blocks over the encoder
/// sequence + the image positions, output GroupNorm + conv. Keys are the
/// official ones under a prefix (`""` for GLIDE, `"model."` in Karlo).
pub struct UNet {
    pub spec: UNetSpec,
    pub time_embed_0: Layer,
    pub time_embed_2: Layer,
    pub input_blocks: Vec<Vec<Block>>,
    pub middle_block: Vec<Block>,
    pub output_blocks: Vec<Vec<Block>>,
    pub out_0: Norm,
    pub out_2: Layer,
}

pub struct Glide {
    pub config: GlideConfig,
    pub token_embedding: Weight,
    pub positional_embedding: Tensor,
    pub padding_embedding: Option<Tensor>,
    pub transformer: Vec<XfBlock>,
    pub final_ln: Option<Norm>,
    pub transformer_proj: Layer,
    pub unet: UNet,
}

/// Named intermediate tensors of one forward pass (for fixture checks).
pub type Capture = Vec<(String, Tensor)>;

fn capture(cap: &mut Option<&mut Capture>, name: impl Into<String>, t: &Tensor) {
    if let Some(c) = cap {
        c.push((name.into(), t.clone()));
    }
}

impl UNet {
    pub fn load(l: &Loader, p: &str, spec: UNetSpec) -> Result<Self> {
        let (mc, w) = (spec.model_channels, spec.encoder_channels);
        let emb = 4 * mc;
        let mult = &spec.channel_mult;
        let attn_ds = &spec.attention_ds;
        // unet.py: `ch = input_ch = int(channel_mult[0] * model_channels)`.
        let input_ch = mult.first().map_or(mc, |m| m * mc);
        let mut input_blocks = vec![vec![Block::Conv(Layer::conv(
            l,
            &format!("{p}input_blocks.0.0"),
            input_ch,
            spec.in_channels,
            3,
        )?)]];
        let mut skip_ch = vec![input_ch];
        let (mut ch, mut ds) = (input_ch, 1);
        for (level, &m) in mult.iter().enumerate() {
            for _ in 0..spec.num_res_blocks {
                let i = input_blocks.len();
                let mut blk = vec![Block::Res(ResBlock::load(
                    l,
                    &format!("{p}input_blocks.{i}.0"),
                    ch,
                    m * mc,
                    emb,
                    Resample::None,
                    spec.scale_shift,
                )?)];
                ch = m * mc;
                if attn_ds.contains(&ds) {
                    blk.push(Block::Attn(AttentionBlock::load(
                        l,
                        &format!("{p}input_blocks.{i}.1"),
                        ch,
                        spec.heads(ch)?,
                        w,
                    )?));
                }
                input_blocks.push(blk);
                skip_ch.push(ch);
            }
            if level + 1 != mult.len() {
                let i = input_blocks.len();
                input_blocks.push(vec![Block::Res(ResBlock::load(
                    l,
                    &format!("{p}input_blocks.{i}.0"),
                    ch,
                    ch,
                    emb,
                    Resample::Down,
                    spec.scale_shift,
                )?)]);
                skip_ch.push(ch);
                ds *= 2;
            }
        }
        let middle_res = |i: usize| -> Result<Block> {
            Ok(Block::Res(ResBlock::load(
                l,
                &format!("{p}middle_block.{i}"),
                ch,
                ch,
                emb,
                Resample::None,
                spec.scale_shift,
            )?))
        };
        let middle_block = if spec.middle_attention {
            vec![
                middle_res(0)?,
                Block::Attn(AttentionBlock::load(
                    l,
                    &format!("{p}middle_block.1"),
                    ch,
                    spec.heads(ch)?,
                    w,
                )?),
                middle_res(2)?,
            ]
        } else {
            vec![middle_res(0)?, middle_res(1)?]
        };
        let mut output_blocks = Vec::new();
        for (level, &m) in mult.iter().enumerate().rev() {
            for i in 0..=spec.num_res_blocks {
                let o = output_blocks.len();
                let sc = skip_ch.pop().expect("skip stack matches the input blocks");
                let mut blk = vec![Block::Res(ResBlock::load(
                    l,
                    &format!("{p}output_blocks.{o}.0"),
                    ch + sc,
                    m * mc,
                    emb,
                    Resample::None,
                    spec.scale_shift,
                )?)];
                ch = m * mc;
                if attn_ds.contains(&ds) {
                    blk.push(Block::Attn(AttentionBlock::load(
                        l,
                        &format!("{p}output_blocks.{o}.1"),
                        ch,
                        spec.heads(ch)?,
                        w,
                    )?));
                }
                if level > 0 && i == spec.num_res_blocks {
                    let j = blk.len();
                    blk.push(Block::Res(ResBlock::load(
                        l,
                        &format!("{p}output_blocks.{o}.{j}"),
                        ch,
                        ch,
                        emb,
                        Resample::Up,
                        spec.scale_shift,
                    )?));
                    ds /= 2;
                }
                output_blocks.push(blk);
            }
        }
        Ok(UNet {
            time_embed_0: Layer::linear(l, &format!("{p}time_embed.0"), emb, mc)?,
            time_embed_2: Layer::linear(l, &format!("{p}time_embed.2"), emb, emb)?,
            input_blocks,
            middle_block,
            output_blocks,
            out_0: Norm::load(l, &format!("{p}out.0"), ch)?,
            out_2: Layer::conv(l, &format!("{p}out.2"), spec.out_channels, ch, 3)?,
            spec,
        })
    }

    pub fn attention_blocks(&self) -> impl Iterator<Item = &AttentionBlock> {
        self.input_blocks
            .iter()
            .flatten()
            .chain(self.middle_block.iter())
            .chain(self.output_blocks.iter().flatten())
            .filter_map(|b| {
                if let Block::Attn(a) = b {
                    Some(a)
                } else {
                    None
                }
            })
    }

    /// One forward on `input` `[N, in_channels, H, W]` at original-scale
    /// `timesteps` `[N]`: `extra_emb` `[N, 4C]` is added to the timestep
    /// embedding, `encoder_kv` holds each attention block's keys/values of
    /// the encoder sequence (`[N, S, 2C]`, forward order) and
    /// `encoder_mask` (host, `N·S`, additive) masks encoder keys.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        rec: &mut Recorder,
        input: &Tensor,
        timesteps: &Tensor,
        extra_emb: Option<&Tensor>,
        encoder_kv: &[Tensor],
        encoder_mask: Option<&[f32]>,
        mut cap: Option<&mut Capture>,
    ) -> Result<Tensor> {
        let sp = &self.spec;
        let &[n, cin, h, w] = input.shape() else {
            return Err(Error::Invalid(format!(
                "UNet input {:?}, expected [N, C, H, W]",
                input.shape()
            )));
        };
        let div = 1 << (sp.channel_mult.len() - 1);
        if cin != sp.in_channels
            || h % div != 0
            || w % div != 0
            || timesteps.shape() != [n]
            || extra_emb.is_some_and(|e| e.shape() != [n, 4 * sp.model_channels])
        {
            return Err(Error::Invalid(format!(
                "UNet input {:?} / timesteps {:?} / conditioning {:?}: expected [N, {}, H, W] with \
                 H, W multiples of {div}",
                input.shape(),
                timesteps.shape(),
                extra_emb.map(|e| e.shape().to_vec()),
                sp.in_channels
            )));
        }
        let temb = kernels::timestep::timestep_embedding(rec, timesteps, sp.model_channels, false)?;
        capture(&mut cap, "timestep_embedding", &temb);
        let t0 = self
            .time_embed_0
            .apply_linear(rec, &temb, None, Act::Silu)?;
        let t1 = self.time_embed_2.apply_linear(rec, &t0, None, Act::None)?;
        capture(&mut cap, "time_embed_out", &t1);
        let emb = match extra_emb {
            Some(e) => kernels::elementwise::binary(
                rec,
                &t1,
                e,
                kernels::elementwise::BinaryOp::Add,
                Act::None,
            )?,
            None => t1,
        };
        capture(&mut cap, "emb", &emb);
        let emb_silu = kernels::elementwise::unary(rec, &emb, Act::Silu, 1.0, 0.0)?;
        // The additive key mask of each resolution: encoder part + zeros for the image keys.
        let mut masks: Vec<(usize, Tensor)> = Vec::new();
        let mut mask_for = |rec: &mut Recorder, s: usize, t: usize| -> Result<Option<Tensor>> {
            let Some(m) = encoder_mask else {
                return Ok(None);
            };
            if m.len() != n * s {
                return Err(Error::Invalid(format!(
                    "encoder mask of {} values for {n} rows of {s} keys",
                    m.len()
                )));
            }
            if let Some((_, t)) = masks.iter().find(|(k, _)| *k == t) {
                return Ok(Some(t.clone()));
            }
            let full: Vec<f32> = m
                .chunks(s)
                .flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(0.0, t)))
                .collect();
            let tensor = rec.gpu().upload(&[n, s + t], &full)?;
            masks.push((t, tensor.clone()));
            Ok(Some(tensor))
        };
        let mut ekv = encoder_kv.iter();
        let mut run = |rec: &mut Recorder, blocks: &[Block], mut h: Tensor| -> Result<Tensor> {
            for b in blocks {
                h = match b {
                    Block::Conv(l) => l.apply_conv(rec, &h, None, None)?,
                    Block::Res(r) => r.forward(rec, &h, &emb_silu)?,
                    Block::Attn(a) => {
                        let kv = ekv.next().ok_or_else(|| {
                            Error::Invalid("text conditioning has too few attention entries".into())
                        })?;
                        let t = h.shape()[2] * h.shape()[3];
                        let mask = mask_for(rec, kv.shape()[1], t)?;
                        a.forward(rec, &h, kv, mask.as_ref())?
                    }
                };
            }
            Ok(h)
        };
        let mut hs = Vec::new();
        let mut hcur = input.clone();
        for (i, blk) in self.input_blocks.iter().enumerate() {
            hcur = run(rec, blk, hcur)?;
            capture(&mut cap, format!("input_blocks.{i}"), &hcur);
            hs.push(hcur.clone());
        }
        hcur = run(rec, &self.middle_block, hcur)?;
        capture(&mut cap, "middle_block", &hcur);
        for (i, blk) in self.output_blocks.iter().enumerate() {
            let skip = hs.pop().expect("one skip per output block");
            let cat = kernels::copy::concat_channels(rec, &[&hcur, &skip])?;
            drop(skip);
            hcur = run(rec, blk, cat)?;
            capture(&mut cap, format!("output_blocks.{i}"), &hcur);
        }
        let coef = self.out_0.coeffs(rec, &hcur, None)?;
        self.out_2.apply_conv(
            rec,
            &hcur,
            Some(InputNorm {
                coef: &coef,
                silu: true,
            }),
            None,
        )
    }
}

impl Glide {
    /// Builds the model from `config` and a safetensors file with the official key names.
    pub fn load(
        gpu: &Gpu,
        config: GlideConfig,
        weights: &WeightSource,
        dtype: WeightDType,
    ) -> Result<Glide> {
        config.validate()?;
        let l = Loader::new(gpu, weights, dtype)?;
        let c = &config;
        let (mc, w) = (c.num_channels, c.xf_width);
        let emb = 4 * mc;
        let xf_layer = |i: usize| XfBlock::load(&l, &format!("transformer.resblocks.{i}"), w);
        let transformer = (0..c.xf_layers).map(xf_layer).collect::<Result<Vec<_>>>()?;
        let spec = c.unet_spec()?;
        let unet = UNet::load(&l, "", spec)?;
        let model = Glide {
            token_embedding: l.weight("token_embedding.weight", &[c.n_vocab, w])?,
            positional_embedding: l.tensor("positional_embedding", &[c.text_ctx, w])?,
            padding_embedding: if c.xf_padding {
                Some(l.tensor("padding_embedding", &[c.text_ctx, w])?)
            } else {
                None
            },
            transformer,
            final_ln: if c.xf_final_ln {
                Some(Norm::load(&l, "final_ln", w)?)
            } else {
                None
            },
            transformer_proj: Layer::linear(&l, "transformer_proj", emb, w)?,
            unet,
            config,
        };
        l.finish()?;
        Ok(model)
    }

    /// Encodes tokens `[N, L]` (u32) with mask `[N, L]` (u32, 1 = real token).
    pub fn encode_text(
        &self,
        rec: &mut Recorder,
        tokens: &Tensor,
        mask: &Tensor,
        mut cap: Option<&mut Capture>,
    ) -> Result<TextCond> {
        let c = &self.config;
        if tokens.shape() != [tokens.shape()[0], c.text_ctx] || mask.shape() != tokens.shape() {
            return Err(Error::Invalid(format!(
                "tokens {:?} / mask {:?}, expected [N, {}]",
                tokens.shape(),
                mask.shape(),
                c.text_ctx
            )));
        }
        let n = tokens.shape()[0];
        let pad = self.padding_embedding.as_ref().map(|p| (p, mask));
        let mut x = kernels::embedding::embed(
            rec,
            tokens,
            &self.token_embedding,
            Some(&self.positional_embedding),
            pad,
        )?;
        capture(&mut cap, "xf_in", &x);
        for b in &self.transformer {
            x = b.forward(rec, &x, c.xf_heads, false, None)?;
        }
        capture(&mut cap, "xf_transformer_out", &x);
        if let Some(ln) = &self.final_ln {
            x = ln.layer(rec, &x)?;
        }
        capture(&mut cap, "xf_final_ln_out", &x);
        let last =
            kernels::copy::slice_channels(rec, &x, c.text_ctx - 1, 1)?.reshape(&[n, c.xf_width])?;
        let xf_proj = self
            .transformer_proj
            .apply_linear(rec, &last, None, Act::None)?;
        capture(&mut cap, "xf_proj", &xf_proj);
        let encoder_kv = self
            .unet
            .attention_blocks()
            .map(|a| a.encoder_kv.apply_linear(rec, &x, None, Act::None))
            .collect::<Result<Vec<_>>>()?;
        Ok(TextCond {
            xf_proj,
            xf_out: x,
            encoder_kv,
        })
    }

    /// One UNet forward: `x` `[N, 3, H, W]`, `timesteps` `[N]` (original 0..999
    /// scale, as f32) → `[N, 6, H, W]` (eps, variance values).
    pub fn forward(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        timesteps: &Tensor,
        text: &TextCond,
        cond: Conditioning,
        mut cap: Option<&mut Capture>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let &[n, 3, h, w] = x.shape() else {
            return Err(Error::Invalid(format!(
                "x_t {:?}, expected [N, 3, H, W]",
                x.shape()
            )));
        };
        let div = 1 << (self.unet.spec.channel_mult.len() - 1);
        if h % div != 0 || w % div != 0 || timesteps.shape() != [n] || text.xf_proj.shape()[0] != n
        {
            return Err(Error::Invalid(format!(
                "x_t {:?} / timesteps {:?} / text batch {}",
                x.shape(),
                timesteps.shape(),
                text.xf_proj.shape()[0]
            )));
        }
        // Input channels: [x_t, image·mask, mask, up(low_res)].
        let mut parts = vec![x.clone()];
        if c.inpaint {
            let (img, mask) = cond
                .inpaint
                .ok_or_else(|| Error::Invalid("inpaint model needs an image and a mask".into()))?;
            if img.shape() != [n, 3, h, w] || mask.shape() != [n, 1, h, w] {
                return Err(Error::Invalid(format!(
                    "inpaint image {:?} / mask {:?} for x_t {:?}",
                    img.shape(),
                    mask.shape(),
                    x.shape()
                )));
            }
            let mask3 = kernels::copy::concat_channels(rec, &[mask, mask, mask])?;
            parts.push(kernels::elementwise::binary(
                rec,
                img,
                &mask3,
                kernels::elementwise::BinaryOp::Mul,
                Act::None,
            )?);
            parts.push(mask.clone());
        }
        if c.super_res {
            let lr = cond.low_res.ok_or_else(|| {
                Error::Invalid("super-res model needs a low-resolution image".into())
            })?;
            if lr.shape().len() != 4 || lr.shape()[..2] != [n, 3] {
                return Err(Error::Invalid(format!(
                    "low_res {:?} for x_t {:?}",
                    lr.shape(),
                    x.shape()
                )));
            }
            let up = kernels::resample::bilinear(rec, lr, h, w)?;
            capture(&mut cap, "low_res_upsampled", &up);
            parts.push(up);
        }
        let input = if parts.len() == 1 {
            parts.pop().unwrap()
        } else {
            kernels::copy::concat_channels(rec, &parts.iter().collect::<Vec<_>>())?
        };
        capture(&mut cap, "unet_input", &input);

        self.unet.forward(
            rec,
            &input,
            timesteps,
            Some(&text.xf_proj),
            &text.encoder_kv,
            None,
            cap,
        )
    }
}
