//! `layer_norm.wgsl`: LayerNorm over the last dimension (two-pass, f32);
//! `layer_norm_backward.wgsl`: its input gradient (CLIP guidance).

use super::{bind_opt, kernel};
use crate::error::{shape_err, Result};
use crate::gpu::{grid, Recorder};
use crate::tensor::Tensor;

kernel!(LAYER_NORM, "layer_norm.wgsl", "main", reduce);
kernel!(
    LAYER_NORM_BACKWARD,
    "layer_norm_backward.wgsl",
    "main",
    reduce
);

pub fn layer_norm(
    rec: &mut Recorder,
    x: &Tensor,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
) -> Result<Tensor> {
    let gpu = rec.gpu();
    let dim = *x.shape().last().unwrap_or(&0);
    if dim == 0 {
        return shape_err("layer_norm", "empty last dimension");
    }
    if gamma.is_some() != beta.is_some() {
        return shape_err(
            "layer_norm",
            "gamma and beta must both be given or both absent",
        );
    }
    for p in [gamma, beta].into_iter().flatten() {
        if p.numel() != dim {
            return shape_err(
                "layer_norm",
                format!("affine {:?} for width {dim}", p.shape()),
            );
        }
    }
    let rows = x.numel() / dim;
    let out = gpu.empty(x.shape())?;
    rec.dispatch(
        &LAYER_NORM,
        &[],
        &[
            rows as u32,
            dim as u32,
            super::f(eps),
            gamma.is_some() as u32,
        ],
        &[
            x.bind(),
            bind_opt(gpu, gamma),
            bind_opt(gpu, beta),
            out.bind(),
        ],
        grid(rows as u64),
    )?;
    Ok(out)
}

/// `dx = ∂LN(x)/∂x ᵀ · dy + res` for `y = LN(x)·gamma + beta` (eps as the forward).
pub fn layer_norm_backward(
    rec: &mut Recorder,
    x: &Tensor,
    gamma: Option<&Tensor>,
    dy: &Tensor,
    res: Option<&Tensor>,
    eps: f32,
) -> Result<Tensor> {
    let gpu = rec.gpu();
    let dim = *x.shape().last().unwrap_or(&0);
    if dim == 0 {
        return shape_err("layer_norm_backward", "empty last dimension");
    }
    if gamma.is_some_and(|g| g.numel() != dim) {
        return shape_err("layer_norm_backward", format!("gamma for width {dim}"));
    }
    for (what, t) in [("dy", Some(dy)), ("res", res)] {
        if let Some(t) = t {
            if t.shape() != x.shape() {
                return shape_err(
                    "layer_norm_backward",
                    format!("{what} {:?} vs x {:?}", t.shape(), x.shape()),
                );
            }
        }
    }
    let rows = x.numel() / dim;
    let dx = gpu.empty(x.shape())?;
    rec.dispatch(
        &LAYER_NORM_BACKWARD,
        &[],
        &[
            rows as u32,
            dim as u32,
            super::f(eps),
            gamma.is_some() as u32,
            res.is_some() as u32,
        ],
        &[
            x.bind(),
            bind_opt(gpu, gamma),
            dy.bind(),
            bind_opt(gpu, res),
            dx.bind(),
        ],
        grid(rows as u64),
    )?;
    Ok(dx)
}
