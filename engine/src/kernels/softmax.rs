//! `softmax.wgsl`: row softmax of `scale·x (+ mask)` in f32.

use super::{bind_opt, kernel};
use crate::error::{shape_err, Result};
use crate::gpu::{grid, Recorder};
use crate::tensor::Tensor;

kernel!(SOFTMAX, "softmax.wgsl", "main", reduce);

/// Softmax over the last dim; `mask` (additive) is `[mask_rows, D]`, row r uses `r % mask_rows`.
pub fn softmax(
    rec: &mut Recorder,
    x: &Tensor,
    scale: f32,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let gpu = rec.gpu();
    let dim = *x.shape().last().unwrap_or(&0);
    if dim == 0 {
        return shape_err("softmax", "empty last dimension");
    }
    let rows = x.numel() / dim;
    let mask_rows = match mask {
        Some(m) if m.numel() % dim == 0 && m.numel() > 0 => m.numel() / dim,
        Some(m) => return shape_err("softmax", format!("mask {:?} for rows of {dim}", m.shape())),
        None => 1,
    };
    let out = gpu.empty(x.shape())?;
    rec.dispatch(
        &SOFTMAX,
        &[],
        &[
            rows as u32,
            dim as u32,
            super::f(scale),
            mask.is_some() as u32,
            mask_rows as u32,
        ],
        &[x.bind(), bind_opt(gpu, mask), out.bind()],
        grid(rows as u64),
    )?;
    Ok(out)
}
