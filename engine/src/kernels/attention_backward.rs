//! `attention_backward.wgsl`: the input gradients of multi-head attention
//! over `[B, L, H·d]` q, k, v (separate projections, as the noisy CLIP's
//! `f_q`/`f_k`/`f_v`), with the scale applied to q and to k and an optional
//! causal mask. Two dispatches per batch chunk: row probabilities and logit
//! gradients into a scratch `[2, B, H, L, L]`, then dq, dk, dv.

use super::kernel;
use crate::error::{shape_err, Result};
use crate::gpu::Recorder;
use crate::tensor::Tensor;

kernel!(PROBS, "attention_backward.wgsl", "probs");
kernel!(GRADS, "attention_backward.wgsl", "grads");

/// Gradients `(dq, dk, dv)` of `O = attention(q, k, v)` given `dout` = ∂L/∂O,
/// all `[B, L, H·d]`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    rec: &mut Recorder,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dout: &Tensor,
    heads: usize,
    scale: f32,
    causal: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let gpu = rec.gpu();
    let &[b, l, w] = q.shape() else {
        return shape_err(
            "attention_backward",
            format!("q must be [B, L, W], got {:?}", q.shape()),
        );
    };
    if [k, v, dout].iter().any(|t| t.shape() != q.shape()) {
        return shape_err(
            "attention_backward",
            format!(
                "q {:?}, k {:?}, v {:?}, dout {:?} must agree",
                q.shape(),
                k.shape(),
                v.shape(),
                dout.shape()
            ),
        );
    }
    if !super::attention::heads_fit(w, heads) || b == 0 || l == 0 {
        return shape_err(
            "attention_backward",
            format!("{heads} heads of width {w}, batch {b}, length {l}"),
        );
    }
    let d = w / heads;
    let (dq, dk, dv) = (
        gpu.empty(q.shape())?,
        gpu.empty(q.shape())?,
        gpu.empty(q.shape())?,
    );
    let item = (l * w) as u64 * 4;
    let scratch_item = 2 * (heads * l * l) as u64 * 4;
    // q·k (three times), dO·v, and the three reductions of `grads`.
    gpu.count_flops(2 * (b * heads * l * l * d) as u64 * 7);
    for (b0, bc) in gpu.batch_chunks(b, &[item, scratch_item])? {
        let scratch = gpu.empty(&[2, bc, heads, l, l])?;
        let params = [
            bc as u32,
            l as u32,
            heads as u32,
            d as u32,
            super::f(scale),
            causal as u32,
        ];
        let rows = l.div_ceil(64) as u32;
        rec.dispatch(
            &PROBS,
            &[],
            &params,
            &[
                q.bind_items(b0, bc),
                k.bind_items(b0, bc),
                dout.bind_items(b0, bc),
                v.bind_items(b0, bc),
                scratch.bind(),
            ],
            [rows, heads as u32, bc as u32],
        )?;
        rec.dispatch(
            &GRADS,
            &[],
            &params,
            &[
                q.bind_items(b0, bc),
                k.bind_items(b0, bc),
                dout.bind_items(b0, bc),
                scratch.bind(),
                dq.bind_items(b0, bc),
                dk.bind_items(b0, bc),
                dv.bind_items(b0, bc),
            ],
            [rows, w as u32, bc as u32],
        )?;
    }
    Ok((dq, dk, dv))
}
