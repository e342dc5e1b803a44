//! `attention.wgsl`: multi-head attention with online softmax. Operands are
//! strided views, so GLIDE's legacy interleaved QKV (`[N, H·3·d, T]`), its
//! text transformer's per-token layout (`[N, L, H·3·d]`) and encoder keys/values
//! are read in place.

use super::{bind_opt, kernel};
use crate::error::{shape_err, Result};
use crate::gpu::Recorder;
use crate::tensor::Tensor;

kernel!(ATTENTION, "attention.wgsl", "main");

/// Largest head dimension the kernel supports (GLIDE, CLIP and Karlo all use 64).
pub const MAX_HEAD_DIM: usize = 64;

/// Whether `width` channels split into `heads` heads this kernel can run
/// (a transformer config's check before anything is loaded).
pub fn heads_fit(width: usize, heads: usize) -> bool {
    width > 0 && heads > 0 && width.is_multiple_of(heads) && width / heads <= MAX_HEAD_DIM
}

/// A strided view: element (b, h, t, c) is at `base + b·sb + h·sh + t·st + c·sc`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub t: &'a Tensor,
    pub base: usize,
    pub sb: usize,
    pub sh: usize,
    pub st: usize,
    pub sc: usize,
}

impl View<'_> {
    fn words(&self) -> [u32; 8] {
        [self.base, self.sb, self.sh, self.st, self.sc, 0, 0, 0].map(|v| v as u32)
    }
    fn check(&self, what: &str, b: usize, h: usize, t: usize, d: usize) -> Result<()> {
        if t == 0 {
            return Ok(());
        }
        let last = self.base
            + (b - 1) * self.sb
            + (h - 1) * self.sh
            + (t - 1) * self.st
            + (d - 1) * self.sc;
        if last >= self.t.numel() {
            return shape_err(
                "attention",
                format!(
                    "{what} view reaches element {last} of a {:?} tensor",
                    self.t.shape()
                ),
            );
        }
        Ok(())
    }
}

pub struct Attention<'a> {
    pub q: View<'a>,
    pub k: View<'a>,
    pub v: View<'a>,
    /// Encoder keys/values prepended to the self keys (S tokens).
    pub enc: Option<(View<'a>, View<'a>, usize)>,
    pub batch: usize,
    pub heads: usize,
    pub tq: usize,
    pub tkv: usize,
    pub d: usize,
    /// Applied to q and to k.
    pub scale: f32,
    pub causal: bool,
    /// Additive mask `[B, S + T_kv]`.
    pub mask: Option<&'a Tensor>,
    /// Output layout: `[B, H·d, T]` when true, else `[B, T, H·d]`.
    pub channels_first: bool,
}

pub fn attention(rec: &mut Recorder, a: &Attention) -> Result<Tensor> {
    let gpu = rec.gpu();
    if a.d == 0 || a.d > MAX_HEAD_DIM {
        return shape_err(
            "attention",
            format!("head dim {} (supported 1..={MAX_HEAD_DIM})", a.d),
        );
    }
    if a.batch == 0 || a.heads == 0 || a.tq == 0 {
        return shape_err("attention", "empty batch, heads or queries");
    }
    let s = a.enc.map_or(0, |e| e.2);
    if a.tkv + s == 0 {
        return shape_err("attention", "no keys");
    }
    a.q.check("q", a.batch, a.heads, a.tq, a.d)?;
    a.k.check("k", a.batch, a.heads, a.tkv, a.d)?;
    a.v.check("v", a.batch, a.heads, a.tkv, a.d)?;
    if let Some((ek, ev, s)) = a.enc {
        ek.check("encoder k", a.batch, a.heads, s, a.d)?;
        ev.check("encoder v", a.batch, a.heads, s, a.d)?;
    }
    if let Some(m) = a.mask {
        if m.numel() != a.batch * (s + a.tkv) {
            return shape_err(
                "attention",
                format!(
                    "mask {:?}, expected [{}, {}]",
                    m.shape(),
                    a.batch,
                    s + a.tkv
                ),
            );
        }
    }
    let w = a.heads * a.d;
    let (out, o) = if a.channels_first {
        let out = gpu.empty(&[a.batch, w, a.tq])?;
        let o = [0, w * a.tq, a.d * a.tq, 1, a.tq];
        (out, o)
    } else {
        let out = gpu.empty(&[a.batch, a.tq, w])?;
        let o = [0, w * a.tq, a.d, w, 1];
        (out, o)
    };
    let ov = View {
        t: &out,
        base: o[0],
        sb: o[1],
        sh: o[2],
        st: o[3],
        sc: o[4],
    };
    let (ek, ev) = match a.enc {
        Some((ek, ev, _)) => (ek, ev),
        None => (a.k, a.v),
    };
    let mut params = Vec::with_capacity(55);
    for v in [&a.q, &a.k, &a.v, &ek, &ev, &ov] {
        params.extend(v.words());
    }
    params.extend([
        a.tq as u32,
        a.tkv as u32,
        s as u32,
        a.heads as u32,
        super::f(a.scale),
        a.causal as u32,
        a.mask.is_some() as u32,
    ]);
    // q·k and p·v: two multiply-adds per (query, key, channel).
    gpu.count_flops(4 * (a.batch * a.heads * a.tq * (s + a.tkv) * a.d) as u64);
    rec.dispatch(
        &ATTENTION,
        &[("D", a.d as f64)],
        &params,
        &[
            a.q.t.bind(),
            a.k.t.bind(),
            a.v.t.bind(),
            ek.t.bind(),
            ev.t.bind(),
            bind_opt(gpu, a.mask),
            out.bind(),
        ],
        [a.tq.div_ceil(64) as u32, a.heads as u32, a.batch as u32],
    )?;
    Ok(out)
}

/// GLIDE `QKVAttentionLegacy` with encoder keys/values: `qkv` `[N, H·3·d, T]`
/// (channel h·3d + {q,k,v}·d + c), `ekv` `[N, H·2·d, S]`; returns `[N, H·d, T]`.
pub fn legacy_qkv(
    rec: &mut Recorder,
    qkv: &Tensor,
    ekv: Option<&Tensor>,
    heads: usize,
) -> Result<Tensor> {
    let &[n, c3, t] = qkv.shape() else {
        return shape_err(
            "attention",
            format!("qkv must be [N, 3C, T], got {:?}", qkv.shape()),
        );
    };
    if heads == 0 || c3 % (3 * heads) != 0 {
        return shape_err("attention", format!("{c3} qkv channels for {heads} heads"));
    }
    let d = c3 / (3 * heads);
    let view = |j: usize| View {
        t: qkv,
        base: j * d * t,
        sb: c3 * t,
        sh: 3 * d * t,
        st: 1,
        sc: t,
    };
    let enc = match ekv {
        Some(e) => {
            let &[en, c2, s] = e.shape() else {
                return shape_err(
                    "attention",
                    format!("encoder kv must be [N, 2C, S], got {:?}", e.shape()),
                );
            };
            if en != n || c2 != 2 * heads * d {
                return shape_err(
                    "attention",
                    format!("encoder kv {:?} for qkv {:?}", e.shape(), qkv.shape()),
                );
            }
            let ev = |j: usize| View {
                t: e,
                base: j * d * s,
                sb: c2 * s,
                sh: 2 * d * s,
                st: 1,
                sc: s,
            };
            Some((ev(0), ev(1), s))
        }
        None => None,
    };
    attention(
        rec,
        &Attention {
            q: view(0),
            k: view(1),
            v: view(2),
            enc,
            batch: n,
            heads,
            tq: t,
            tkv: t,
            d,
            scale: 1.0 / (d as f32).sqrt().sqrt(),
            causal: false,
            mask: None,
            channels_first: true,
        },
    )
}

/// Transformer attention on `qkv` `[N, L, H·3·d]` split q|k|v inside each head
/// (GLIDE text transformer, Karlo's prior); returns `[N, L, H·d]`.
pub fn per_head_qkv(
    rec: &mut Recorder,
    qkv: &Tensor,
    heads: usize,
    causal: bool,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    token_major_qkv(rec, qkv, heads, causal, mask, true)
}

/// Transformer attention on `qkv` `[N, L, 3·H·d]` laid out q | k | v with the
/// heads inside each third (CLIP's fused `in_proj`); returns `[N, L, H·d]`.
pub fn fused_qkv(rec: &mut Recorder, qkv: &Tensor, heads: usize, causal: bool) -> Result<Tensor> {
    token_major_qkv(rec, qkv, heads, causal, None, false)
}

/// Token-major q/k/v read in place: `head_major` = `[h][q|k|v][d]` per token,
/// else `[q|k|v][h][d]`. q·k is scaled by 1/√d (d^(−1/4) on each).
fn token_major_qkv(
    rec: &mut Recorder,
    qkv: &Tensor,
    heads: usize,
    causal: bool,
    mask: Option<&Tensor>,
    head_major: bool,
) -> Result<Tensor> {
    let &[n, l, c3] = qkv.shape() else {
        return shape_err(
            "attention",
            format!("qkv must be [N, L, 3W], got {:?}", qkv.shape()),
        );
    };
    if heads == 0 || c3 % (3 * heads) != 0 {
        return shape_err("attention", format!("{c3} qkv channels for {heads} heads"));
    }
    let d = c3 / (3 * heads);
    let view = |j: usize| View {
        t: qkv,
        base: if head_major { j * d } else { j * heads * d },
        sb: l * c3,
        sh: if head_major { 3 * d } else { d },
        st: c3,
        sc: 1,
    };
    attention(
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
            scale: 1.0 / (d as f32).sqrt().sqrt(),
            causal,
            mask,
            channels_first: false,
        },
    )
}
