//! `matmul.wgsl`: `y = act(x · Wᵀ + bias + res)` for weights in any storage type
//! (linear layers; 1×1 convs on [tokens, channels] data), and its input
//! gradient `dx = dy · W + res` (CLIP guidance's backward pass).

use super::{bind_opt, kernel, Act};
use crate::error::{shape_err, Result};
use crate::gpu::Recorder;
use crate::tensor::{Tensor, Weight};

kernel!(MATMUL, "matmul.wgsl", "main", weights);
kernel!(MATMUL_GRAD_INPUT, "matmul.wgsl", "grad_input", weights);

/// `x`: `[..., K]`, `w`: `[N, K]`, `bias`: `[N]`, `res`: same shape as the output `[..., N]`.
pub fn linear(
    rec: &mut Recorder,
    x: &Tensor,
    w: &Weight,
    bias: Option<&Tensor>,
    res: Option<&Tensor>,
    act: Act,
) -> Result<Tensor> {
    let gpu = rec.gpu();
    let k = *x.shape().last().unwrap_or(&0);
    if k != w.cols || k == 0 {
        return shape_err(
            "linear",
            format!("x {:?} vs weight [{}, {}]", x.shape(), w.rows, w.cols),
        );
    }
    let m = x.numel() / k;
    let n = w.rows;
    if let Some(b) = bias {
        if b.numel() != n {
            return shape_err("linear", format!("bias {:?} for {n} outputs", b.shape()));
        }
    }
    let mut out_shape = x.shape().to_vec();
    *out_shape.last_mut().unwrap() = n;
    if let Some(r) = res {
        if r.shape() != out_shape.as_slice() {
            return shape_err(
                "linear",
                format!("residual {:?} vs output {:?}", r.shape(), out_shape),
            );
        }
    }
    let out = gpu.empty(&out_shape)?;
    let flat_x = x.reshape(&[m, k])?;
    let flat_o = out.reshape(&[m, n])?;
    let flat_r = res.map(|r| r.reshape(&[m, n])).transpose()?;
    gpu.count_flops(2 * (m * k * n) as u64);
    for (m0, mc) in gpu.batch_chunks(m, &[k as u64 * 4, n as u64 * 4])? {
        rec.dispatch(
            &MATMUL,
            &[("W_DTYPE", w.dtype.code() as f64), ("ACT", act.code())],
            &[
                mc as u32,
                k as u32,
                n as u32,
                w.row_words() as u32,
                bias.is_some() as u32,
                res.is_some() as u32,
            ],
            &[
                flat_x.bind_items(m0, mc),
                w.bind(),
                bind_opt(gpu, bias),
                flat_r
                    .as_ref()
                    .map_or_else(|| bind_opt(gpu, None), |r| r.bind_items(m0, mc)),
                flat_o.bind_items(m0, mc),
            ],
            [n.div_ceil(64) as u32, mc.div_ceil(64) as u32, 1],
        )?;
    }
    Ok(out)
}

/// The input gradient of [`linear`]: `dy` `[..., N]`, `w` `[N, K]`, `res`
/// (gradient already flowing into x, added) `[..., K]` → `dx` `[..., K]`.
pub fn linear_grad_input(
    rec: &mut Recorder,
    dy: &Tensor,
    w: &Weight,
    res: Option<&Tensor>,
) -> Result<Tensor> {
    let gpu = rec.gpu();
    let n = *dy.shape().last().unwrap_or(&0);
    if n != w.rows || n == 0 {
        return shape_err(
            "linear_grad_input",
            format!("dy {:?} vs weight [{}, {}]", dy.shape(), w.rows, w.cols),
        );
    }
    let (m, k) = (dy.numel() / n, w.cols);
    let mut out_shape = dy.shape().to_vec();
    *out_shape.last_mut().unwrap() = k;
    if let Some(r) = res {
        if r.shape() != out_shape.as_slice() {
            return shape_err(
                "linear_grad_input",
                format!("residual {:?} vs dx {:?}", r.shape(), out_shape),
            );
        }
    }
    let out = gpu.empty(&out_shape)?;
    let flat_dy = dy.reshape(&[m, n])?;
    let flat_o = out.reshape(&[m, k])?;
    let flat_r = res.map(|r| r.reshape(&[m, k])).transpose()?;
    gpu.count_flops(2 * (m * k * n) as u64);
    for (m0, mc) in gpu.batch_chunks(m, &[n as u64 * 4, k as u64 * 4])? {
        rec.dispatch(
            &MATMUL_GRAD_INPUT,
            &[("W_DTYPE", w.dtype.code() as f64)],
            &[
                mc as u32,
                k as u32,
                n as u32,
                w.row_words() as u32,
                0,
                res.is_some() as u32,
            ],
            &[
                flat_dy.bind_items(m0, mc),
                w.bind(),
                flat_r
                    .as_ref()
                    .map_or_else(|| bind_opt(gpu, None), |r| r.bind_items(m0, mc)),
                flat_o.bind_items(m0, mc),
            ],
            [k.div_ceil(64) as u32, mc.div_ceil(64) as u32, 1],
        )?;
    }
    Ok(out)
}
