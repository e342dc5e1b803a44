//! GLIDE's noise-aware CLIP (`glide_text2im/clip/`): a text encoder and a ViT
//! image encoder that also sees the diffusion timestep, and `cond_fn`, the
//! gradient of their image–text score with respect to the noisy image x_t,
//! computed on the GPU by a hand-written backward pass through the image
//! encoder. Modules mirror the official keys (`blocks.input`,
//! `blocks.block_{i}.f_attn|f_mlp`, `blocks.output`);
//! ../shared/docs/glide-architecture.md §8.

use crate::error::{Error, Result};
use crate::glide::model::Layer;
use crate::glide::weights::Loader;
use crate::gpu::Recorder;
use crate::kernels::{self, attention, elementwise::BinaryOp, patches::ChannelAffine, Act};
use crate::tensor::{Tensor, Weight};
use crate::unclip::tokenizer::{ClipTokenizer, EOT_TOKEN, PAD_TOKEN, SOT_TOKEN};

/// `clip/config.yaml` of the released encoders (the values `create_clip_model` reads).
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct NoisyClipConfig {
    pub logit_scale: f32,
    pub n_timesteps: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub n_vocab: usize,
    pub max_text_len: usize,
    pub n_embd: usize,
    pub n_head_state_text: usize,
    pub n_head_text: usize,
    pub n_xf_blocks_text: usize,
    pub n_head_state_image: usize,
    pub n_head_image: usize,
    pub n_xf_blocks_image: usize,
}

impl NoisyClipConfig {
    /// The released `clip_image_enc.pt` / `clip_text_enc.pt`.
    pub fn released() -> Self {
        NoisyClipConfig {
            logit_scale: 100.0,
            n_timesteps: 1000,
            image_size: 64,
            patch_size: 4,
            n_vocab: 65536,
            max_text_len: 77,
            n_embd: 512,
            n_head_state_text: 64,
            n_head_text: 8,
            n_xf_blocks_text: 12,
            n_head_state_image: 64,
            n_head_image: 12,
            n_xf_blocks_image: 12,
        }
    }

    pub fn text_width(&self) -> usize {
        self.n_head_state_text * self.n_head_text
    }

    pub fn image_width(&self) -> usize {
        self.n_head_state_image * self.n_head_image
    }

    /// Image tokens: the time token and the patches.
    pub fn image_tokens(&self) -> usize {
        let g = self.image_size / self.patch_size.max(1);
        1 + g * g
    }

    pub fn validate(&self) -> Result<()> {
        let head_ok = |state: usize, heads: usize| {
            (1..=attention::MAX_HEAD_DIM).contains(&state) && (1..=64).contains(&heads)
        };
        let ok = head_ok(self.n_head_state_text, self.n_head_text)
            && head_ok(self.n_head_state_image, self.n_head_image)
            && self.patch_size > 0
            && self.image_size.is_multiple_of(self.patch_size)
            && (1..=1024).contains(&self.image_tokens())
            && (3..=1024).contains(&self.max_text_len)
            && (1..=1_000_000).contains(&self.n_vocab)
            && (1..=100_000).contains(&self.n_timesteps)
            && (1..=8192).contains(&self.n_embd)
            && (1..=128).contains(&self.n_xf_blocks_text)
            && (1..=128).contains(&self.n_xf_blocks_image)
            && self.logit_scale.is_finite();
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "unsupported noisy CLIP config {self:?}"
            )))
        }
    }
}

/// The converter's kinds: `clip_image_enc.pt` and `clip_text_enc.pt`.
pub const KINDS: [&str; 2] = ["clip-image-enc", "clip-text-enc"];

impl crate::glide::weights::ModelConfig for NoisyClipConfig {
    const FORMAT: &'static str = "webglide-noisy-clip/1";
}

impl NoisyClipConfig {
    /// Every key of one encoder's state_dict with its shape, in state_dict order.
    pub fn weight_shapes(&self, kind: &str) -> Result<Vec<(String, Vec<usize>)>> {
        self.validate()?;
        let mut v: Vec<(String, Vec<usize>)> = Vec::new();
        let mut add = |n: String, s: &[usize]| v.push((n, s.to_vec()));
        let (w, blocks) = match kind {
            "clip-image-enc" => {
                let (w, p) = (self.image_width(), self.patch_size);
                add("blocks.input.w_t".into(), &[self.n_timesteps, w]);
                add("blocks.input.patch_proj".into(), &[w, 3, p, p]);
                add("blocks.input.w_pos".into(), &[self.image_tokens(), w]);
                add("blocks.input.ln.g".into(), &[w]);
                add("blocks.input.ln.b".into(), &[w]);
                (w, self.n_xf_blocks_image)
            }
            "clip-text-enc" => {
                let w = self.text_width();
                add("blocks.input.w_voc".into(), &[self.n_vocab, w]);
                add("blocks.input.w_pos".into(), &[self.max_text_len, w]);
                (w, self.n_xf_blocks_text)
            }
            k => return Err(Error::Invalid(format!("unknown noisy CLIP kind '{k}'"))),
        };
        for i in 0..blocks {
            let a = format!("blocks.block_{i}.f_attn");
            let m = format!("blocks.block_{i}.f_mlp");
            for (n, s) in [
                (format!("{a}.ln.g"), vec![w]),
                (format!("{a}.ln.b"), vec![w]),
                (format!("{a}.f_q.w"), vec![w, w]),
                (format!("{a}.f_q.b"), vec![w]),
                (format!("{a}.f_k.w"), vec![w, w]),
                (format!("{a}.f_v.w"), vec![w, w]),
                (format!("{a}.f_v.b"), vec![w]),
                (format!("{a}.f_c.w"), vec![w, w]),
                (format!("{a}.f_c.b"), vec![w]),
                (format!("{m}.ln.g"), vec![w]),
                (format!("{m}.ln.b"), vec![w]),
                (format!("{m}.f_1.w"), vec![4 * w, w]),
                (format!("{m}.f_1.b"), vec![4 * w]),
                (format!("{m}.f_2.w"), vec![w, 4 * w]),
                (format!("{m}.f_2.b"), vec![w]),
            ] {
                add(n, &s);
            }
        }
        add("blocks.output.ln.g".into(), &[w]);
        add("blocks.output.ln.b".into(), &[w]);
        add("blocks.output.f.w".into(), &[self.n_embd, w]);
        Ok(v)
    }

    /// The matrices the loader reads in the requested storage type: the
    /// affine weights, `patch_proj` and the token/time embedding tables
    /// (gathered row by row); the positional tables and norms stay f32.
    pub fn quantizable(name: &str, shape: &[usize]) -> bool {
        shape.len() >= 2 && !name.ends_with(".w_pos")
    }
}

/// `[sot] + ids[:max_len − 2] + [eot]`, zero padded to `max_len`, and the
/// text length (`clip/encoders.py`'s tokenisation).
pub fn clip_tokens(tok: &ClipTokenizer, text: &str, max_len: usize) -> (Vec<u32>, usize) {
    let ids = tok.encode(text);
    let mut out = vec![SOT_TOKEN];
    out.extend(ids.iter().take(max_len.saturating_sub(2)));
    out.push(EOT_TOKEN);
    let len = out.len();
    out.resize(max_len, PAD_TOKEN);
    (out, len)
}

/// An `Affine` layer (`w` `[out, in]`, optional `b`): GLIDE's linear [`Layer`].
type Affine = Layer;

fn affine(l: &Loader, p: &str, out: usize, inp: usize, bias: bool) -> Result<Affine> {
    Ok(Layer {
        weight: l.weight_as(&format!("{p}.w"), &[out, inp], l.dtype())?,
        bias: bias
            .then(|| l.tensor(&format!("{p}.b"), &[out]))
            .transpose()?,
    })
}

/// `LayerNorm` with `g`/`b` and eps 1e-5.
struct Ln {
    g: Tensor,
    b: Tensor,
}

impl Ln {
    fn load(l: &Loader, p: &str, w: usize) -> Result<Self> {
        Ok(Ln {
            g: l.tensor(&format!("{p}.g"), &[w])?,
            b: l.tensor(&format!("{p}.b"), &[w])?,
        })
    }
    fn forward(&self, rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
        kernels::layer_norm::layer_norm(rec, x, Some(&self.g), Some(&self.b), 1e-5)
    }
    fn grad(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        dy: &Tensor,
        res: Option<&Tensor>,
    ) -> Result<Tensor> {
        kernels::layer_norm::layer_norm_backward(rec, x, Some(&self.g), dy, res, 1e-5)
    }
}

/// `f_attn`: pre-LN attention with its residual.
struct AttentionBlock {
    ln: Ln,
    f_q: Affine,
    f_k: Affine,
    f_v: Affine,
    f_c: Affine,
}

/// `f_mlp`: pre-LN MLP (×4, erf GELU) with its residual.
struct MlpBlock {
    ln: Ln,
    f_1: Affine,
    f_2: Affine,
}

/// `blocks.block_{i}`.
struct TransformerBlock {
    f_attn: AttentionBlock,
    f_mlp: MlpBlock,
}

/// What one block keeps for its backward pass.
struct BlockTape {
    x: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    x2: Tensor,
    /// `f_1`'s output before the GELU.
    u: Tensor,
}

struct Heads {
    heads: usize,
    state: usize,
    causal: bool,
}

impl Heads {
    /// q and k are each scaled by state^(−1/4).
    fn scale(&self) -> f32 {
        (self.state as f32).powf(-0.25)
    }
}

impl TransformerBlock {
    fn load(l: &Loader, p: &str, w: usize) -> Result<Self> {
        let a = format!("{p}.f_attn");
        let m = format!("{p}.f_mlp");
        Ok(TransformerBlock {
            f_attn: AttentionBlock {
                ln: Ln::load(l, &format!("{a}.ln"), w)?,
                f_q: affine(l, &format!("{a}.f_q"), w, w, true)?,
                f_k: affine(l, &format!("{a}.f_k"), w, w, false)?,
                f_v: affine(l, &format!("{a}.f_v"), w, w, true)?,
                f_c: affine(l, &format!("{a}.f_c"), w, w, true)?,
            },
            f_mlp: MlpBlock {
                ln: Ln::load(l, &format!("{m}.ln"), w)?,
                f_1: affine(l, &format!("{m}.f_1"), 4 * w, w, true)?,
                f_2: affine(l, &format!("{m}.f_2"), w, 4 * w, true)?,
            },
        })
    }

    /// `x` `[B, L, W]` → `[B, L, W]`, and the tape when asked for.
    fn forward(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        heads: &Heads,
        keep: bool,
    ) -> Result<(Tensor, Option<BlockTape>)> {
        let a = &self.f_attn;
        let h = a.ln.forward(rec, x)?;
        let q = a.f_q.apply_linear(rec, &h, None, Act::None)?;
        let k = a.f_k.apply_linear(rec, &h, None, Act::None)?;
        let v = a.f_v.apply_linear(rec, &h, None, Act::None)?;
        let att = attend(rec, &q, &k, &v, heads)?;
        let x2 = a.f_c.apply_linear(rec, &att, Some(x), Act::None)?;
        let m = &self.f_mlp;
        let h2 = m.ln.forward(rec, &x2)?;
        if !keep {
            let g = m.f_1.apply_linear(rec, &h2, None, Act::Gelu)?;
            return Ok((m.f_2.apply_linear(rec, &g, Some(&x2), Act::None)?, None));
        }
        let u = m.f_1.apply_linear(rec, &h2, None, Act::None)?;
        let g = kernels::elementwise::unary(rec, &u, Act::Gelu, 1.0, 0.0)?;
        let out = m.f_2.apply_linear(rec, &g, Some(&x2), Act::None)?;
        let tape = BlockTape {
            x: x.clone(),
            q,
            k,
            v,
            x2,
            u,
        };
        Ok((out, Some(tape)))
    }

    /// ∂L/∂x from ∂L/∂out.
    fn backward(
        &self,
        rec: &mut Recorder,
        t: &BlockTape,
        dout: &Tensor,
        heads: &Heads,
    ) -> Result<Tensor> {
        let m = &self.f_mlp;
        let dg = m.f_2.linear_grad(rec, dout, None)?;
        let du = kernels::elementwise::binary(rec, &dg, &t.u, BinaryOp::GeluGrad, Act::None)?;
        let dh2 = m.f_1.linear_grad(rec, &du, None)?;
        let dx2 = m.ln.grad(rec, &t.x2, &dh2, Some(dout))?;
        let a = &self.f_attn;
        let datt = a.f_c.linear_grad(rec, &dx2, None)?;
        let (dq, dk, dv) = kernels::attention_backward::attention_backward(
            rec,
            &t.q,
            &t.k,
            &t.v,
            &datt,
            heads.heads,
            heads.scale(),
            heads.causal,
        )?;
        let dh = a.f_q.linear_grad(rec, &dq, None)?;
        let dh = a.f_k.linear_grad(rec, &dk, Some(&dh))?;
        let dh = a.f_v.linear_grad(rec, &dv, Some(&dh))?;
        a.ln.grad(rec, &t.x, &dh, Some(&dx2))
    }
}

/// Attention over `[B, L, W]` q, k, v (separate tensors) → `[B, L, W]`.
fn attend(rec: &mut Recorder, q: &Tensor, k: &Tensor, v: &Tensor, h: &Heads) -> Result<Tensor> {
    let &[b, l, w] = q.shape() else {
        return Err(Error::Invalid(format!("attention input {:?}", q.shape())));
    };
    let view = |t| attention::View {
        t,
        base: 0,
        sb: l * w,
        sh: h.state,
        st: w,
        sc: 1,
    };
    attention::attention(
        rec,
        &attention::Attention {
            q: view(q),
            k: view(k),
            v: view(v),
            enc: None,
            batch: b,
            heads: h.heads,
            tq: l,
            tkv: l,
            d: h.state,
            scale: h.scale(),
            causal: h.causal,
            mask: None,
            channels_first: false,
        },
    )
}

/// `blocks.output`: `f(LN(h[:, row]))`, no bias.
struct Output {
    ln: Ln,
    f: Affine,
}

impl Output {
    fn load(l: &Loader, w: usize, e: usize) -> Result<Self> {
        Ok(Output {
            ln: Ln::load(l, "blocks.output.ln", w)?,
            f: affine(l, "blocks.output.f", e, w, false)?,
        })
    }
}

/// Named intermediates (fixture checks), as the official `blocks` names.
pub type Capture = Vec<(String, Tensor)>;

fn keep(cap: &mut Option<&mut Capture>, name: &str, t: &Tensor) {
    if let Some(c) = cap.as_deref_mut() {
        c.push((name.to_string(), t.clone()));
    }
}

/// `TextEncoder` (`clip_text_enc.pt`).
pub struct TextEncoder {
    pub config: NoisyClipConfig,
    w_voc: Weight,
    w_pos: Tensor,
    blocks: Vec<TransformerBlock>,
    output: Output,
}

impl TextEncoder {
    pub fn load(config: NoisyClipConfig, l: &Loader) -> Result<Self> {
        config.validate()?;
        let w = config.text_width();
        Ok(TextEncoder {
            w_voc: l.weight_as("blocks.input.w_voc", &[config.n_vocab, w], l.dtype())?,
            w_pos: l.tensor("blocks.input.w_pos", &[config.max_text_len, w])?,
            blocks: (0..config.n_xf_blocks_text)
                .map(|i| TransformerBlock::load(l, &format!("blocks.block_{i}"), w))
                .collect::<Result<_>>()?,
            output: Output::load(l, w, config.n_embd)?,
            config,
        })
    }

    /// `tokens` `[B, max_text_len]` (see [`clip_tokens`]) and each prompt's
    /// length → the raw (unnormalised) text embeddings `[B, n_embd]`.
    pub fn encode(
        &self,
        rec: &mut Recorder,
        tokens: &[u32],
        lens: &[usize],
        mut cap: Option<&mut Capture>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let l = c.max_text_len;
        let b = lens.len();
        if b == 0 || tokens.len() != b * l {
            return Err(Error::Invalid(format!(
                "{} CLIP token ids for {b} prompts of {l}",
                tokens.len()
            )));
        }
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= c.n_vocab) {
            return Err(Error::Invalid(format!(
                "CLIP token id {bad} outside the vocabulary"
            )));
        }
        if let Some(bad) = lens.iter().find(|&&n| n == 0 || n > l) {
            return Err(Error::Invalid(format!("CLIP text length {bad} (1..={l})")));
        }
        let ids = rec.gpu().upload_u32(&[b, l], tokens)?;
        let mut x = kernels::embedding::embed(rec, &ids, &self.w_voc, Some(&self.w_pos), None)?;
        keep(&mut cap, "input", &x);
        let heads = Heads {
            heads: c.n_head_text,
            state: c.n_head_state_text,
            causal: true,
        };
        for (i, blk) in self.blocks.iter().enumerate() {
            x = blk.forward(rec, &x, &heads, false)?.0;
            keep(&mut cap, &format!("block_{i}"), &x);
        }
        // The hidden state at each prompt's last token (text_len − 1).
        let last: Vec<usize> = lens.iter().map(|&n| n - 1).collect();
        let pooled = kernels::copy::pick_tokens(rec, &x, &last)?;
        let h = self.output.ln.forward(rec, &pooled)?;
        let z = self.output.f.apply_linear(rec, &h, None, Act::None)?;
        keep(&mut cap, "output", &z);
        Ok(z)
    }
}

impl TextEncoder {
    /// Raw text embeddings `[B, n_embd]` of `prompts` (one row each).
    pub fn encode_prompts(
        &self,
        rec: &mut Recorder,
        tok: &ClipTokenizer,
        prompts: &[&str],
    ) -> Result<Tensor> {
        let l = self.config.max_text_len;
        let (mut ids, mut lens) = (Vec::new(), Vec::new());
        for p in prompts {
            let (t, n) = clip_tokens(tok, p, l);
            ids.extend(t);
            lens.push(n);
        }
        self.encode(rec, &ids, &lens, None)
    }
}

/// `ImageEncoder` (`clip_image_enc.pt`): a ViT over `(x + 1)·127.5`
/// normalised with CLIP's pixel statistics, whose first token is the
/// timestep's embedding `w_t[t]` in place of a class token.
pub struct ImageEncoder {
    pub config: NoisyClipConfig,
    w_t: Weight,
    /// `patch_proj` `[W, 3, P, P]` as a linear weight `[W, 3·P·P]`.
    patch_proj: Weight,
    w_pos: Tensor,
    ln: Ln,
    blocks: Vec<TransformerBlock>,
    output: Output,
}

/// What [`ImageEncoder::forward`] keeps for [`ImageEncoder::backward`].
pub struct ImageTape {
    x: Tensor,
    seq: Tensor,
    blocks: Vec<BlockTape>,
    last: Tensor,
}

const PIXEL_MEAN: [f64; 3] = [122.77093945, 116.74601272, 104.09373519];
const PIXEL_STD: [f64; 3] = [68.50053285, 66.63215831, 70.32316309];

/// `((x + 1)·127.5 − mean_c) / std_c` as `x·slope + offset` (rounded to f32
/// once; the official code computes it in two f32 steps, ~1 ulp apart).
fn pixel_affine() -> ChannelAffine {
    ChannelAffine {
        slope: [0, 1, 2].map(|c| (127.5 / PIXEL_STD[c]) as f32),
        offset: [0, 1, 2].map(|c| ((127.5 - PIXEL_MEAN[c]) / PIXEL_STD[c]) as f32),
    }
}

impl ImageEncoder {
    pub fn load(config: NoisyClipConfig, l: &Loader) -> Result<Self> {
        config.validate()?;
        let (w, p) = (config.image_width(), config.patch_size);
        let mut patch_proj = l.weight_as("blocks.input.patch_proj", &[w, 3, p, p], l.dtype())?;
        patch_proj.shape = vec![w, 3 * p * p];
        Ok(ImageEncoder {
            w_t: l.weight_as("blocks.input.w_t", &[config.n_timesteps, w], l.dtype())?,
            patch_proj,
            w_pos: l.tensor("blocks.input.w_pos", &[config.image_tokens(), w])?,
            ln: Ln::load(l, "blocks.input.ln", w)?,
            blocks: (0..config.n_xf_blocks_image)
                .map(|i| TransformerBlock::load(l, &format!("blocks.block_{i}"), w))
                .collect::<Result<_>>()?,
            output: Output::load(l, w, config.n_embd)?,
            config,
        })
    }

    fn heads(&self) -> Heads {
        Heads {
            heads: self.config.n_head_image,
            state: self.config.n_head_state_image,
            causal: false,
        }
    }

    /// `x` `[B, 3, S, S]` in the diffusion's [−1, 1] convention and each
    /// image's ORIGINAL timestep → the raw image embeddings `[B, n_embd]`,
    /// with the tape for [`Self::backward`] when `keep_tape`.
    pub fn forward(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        timesteps: &[u32],
        keep_tape: bool,
        mut cap: Option<&mut Capture>,
    ) -> Result<(Tensor, Option<ImageTape>)> {
        let c = &self.config;
        let s = c.image_size;
        let b = timesteps.len();
        if x.shape() != [b, 3, s, s] {
            return Err(Error::Invalid(format!(
                "noisy CLIP image {:?} for {b} timesteps: expected [{b}, 3, {s}, {s}]",
                x.shape()
            )));
        }
        if let Some(bad) = timesteps.iter().find(|&&t| t as usize >= c.n_timesteps) {
            return Err(Error::Invalid(format!(
                "timestep {bad} (0..{})",
                c.n_timesteps
            )));
        }
        let patches = kernels::patches::to_patches(rec, x, c.patch_size, &pixel_affine())?;
        let emb = kernels::matmul::linear(rec, &patches, &self.patch_proj, None, None, Act::None)?;
        let ids = rec.gpu().upload_u32(&[b, 1], timesteps)?;
        let time = kernels::embedding::embed(rec, &ids, &self.w_t, None, None)?;
        let seq = kernels::copy::concat_channels(rec, &[&time, &emb])?;
        let seq = kernels::elementwise::binary(rec, &seq, &self.w_pos, BinaryOp::Add, Act::None)?;
        let mut h = self.ln.forward(rec, &seq)?;
        keep(&mut cap, "input", &h);
        let heads = self.heads();
        let mut tapes = Vec::new();
        for (i, blk) in self.blocks.iter().enumerate() {
            let (out, tape) = blk.forward(rec, &h, &heads, keep_tape)?;
            tapes.extend(tape);
            h = out;
            keep(&mut cap, &format!("block_{i}"), &h);
        }
        let w = c.image_width();
        let first = kernels::copy::slice_channels(rec, &h, 0, 1)?.reshape(&[b, w])?;
        let ln = self.output.ln.forward(rec, &first)?;
        let z = self.output.f.apply_linear(rec, &ln, None, Act::None)?;
        keep(&mut cap, "output", &z);
        let tape = keep_tape.then(|| ImageTape {
            x: x.clone(),
            seq,
            blocks: tapes,
            last: first,
        });
        Ok((z, tape))
    }

    /// ∂L/∂x `[B, 3, S, S]` from ∂L/∂z `[B, n_embd]` (no gradient flows into
    /// the timestep, an index).
    pub fn backward(&self, rec: &mut Recorder, tape: &ImageTape, dz: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (w, l) = (c.image_width(), c.image_tokens());
        let b = tape.x.shape()[0];
        let dln = self.output.f.linear_grad(rec, dz, None)?;
        let dfirst = self.output.ln.grad(rec, &tape.last, &dln, None)?;
        // Only the time token feeds the output: the other rows start at zero.
        let dh = rec.gpu().upload(&[b, l, w], &vec![0.0; b * l * w])?;
        kernels::copy::copy_channels(rec, &dfirst.reshape(&[b, 1, w])?, 0, &dh, 0, 1)?;
        let heads = self.heads();
        let mut dh = dh;
        for (blk, t) in self.blocks.iter().zip(&tape.blocks).rev() {
            dh = blk.backward(rec, t, &dh, &heads)?;
        }
        let dseq = self.ln.grad(rec, &tape.seq, &dh, None)?;
        let demb = kernels::copy::slice_channels(rec, &dseq, 1, l - 1)?;
        let dpatches = kernels::matmul::linear_grad_input(rec, &demb, &self.patch_proj, None)?;
        kernels::patches::from_patches(rec, &dpatches, &tape.x, c.patch_size, &pixel_affine())
    }
}

/// A converted kind (`webglide convert --kind clip-…`): its manifest and verified shards.
pub type Converted<'a> = (
    &'a crate::glide::weights::Manifest<NoisyClipConfig>,
    &'a crate::glide::weights::Shards,
);

/// Both encoders from their converted kinds (each checked to be the kind it is
/// used as; every key used exactly).
pub fn load_converted(
    gpu: &crate::Gpu,
    image: Converted,
    text: Converted,
) -> Result<(ImageEncoder, TextEncoder)> {
    fn part<T>(
        gpu: &crate::Gpu,
        (m, shards): Converted,
        kind: &str,
        build: impl Fn(NoisyClipConfig, &Loader) -> Result<T>,
    ) -> Result<T> {
        let named = |e: Error| Error::Invalid(format!("{kind}: {e}"));
        if m.kind != kind {
            return Err(Error::Invalid(format!(
                "{kind}: the manifest describes '{}'",
                m.kind
            )));
        }
        let dtype = crate::WeightDType::parse(&m.quant).map_err(named)?;
        let source = crate::glide::weights::WeightSource::shards(
            m.tensors.clone().into_iter().collect(),
            shards,
        )
        .map_err(named)?;
        let l = Loader::new(gpu, &source, dtype)?;
        let t = build(m.config.clone(), &l).map_err(named)?;
        l.finish().map_err(named)?;
        Ok(t)
    }
    Ok((
        part(gpu, image, "clip-image-enc", ImageEncoder::load)?,
        part(gpu, text, "clip-text-enc", TextEncoder::load)?,
    ))
}

/// GLIDE's `cond_fn`: `grad_scale · ∂/∂x_t [exp(logit_scale)·Σ_b
/// normalize(z_t[b])·normalize(z_i(x_t[b], t[b]))]` with `text` the raw text
/// embeddings `[B, n_embd]` (one row per image). Everything stays on the GPU;
/// the tape's activations are dropped when this returns.
pub fn cond_fn(
    rec: &mut Recorder,
    image: &ImageEncoder,
    text: &Tensor,
    x: &Tensor,
    timesteps: &[u32],
    grad_scale: f32,
) -> Result<Tensor> {
    let (z, tape) = image.forward(rec, x, timesteps, true, None)?;
    let tape = tape.ok_or_else(|| Error::Invalid("no tape kept for the backward pass".into()))?;
    let scale = image.config.logit_scale * grad_scale;
    let dz = kernels::clip_score::score_grad(rec, text, &z, scale)?;
    image.backward(rec, &tape, &dz)
}
