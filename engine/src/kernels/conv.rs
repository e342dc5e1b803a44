//! `conv2d.wgsl`: 3×3 / 1×1 convolution (stride 1, same padding) as an implicit
//! GEMM, with GroupNorm(+scale-shift)(+SiLU) fused on the input side and
//! bias + residual on the output side.

use super::{bind_opt, kernel};
use crate::error::{shape_err, Result};
use crate::gpu::Recorder;
use crate::tensor::{Tensor, Weight};

kernel!(CONV2D, "conv2d.wgsl", "main", weights);

/// Input-side normalisation: `coef` is `[N, 3·C_in]` from
/// [`crate::kernels::group_norm::coeffs`]; `silu` applies SiLU after it.
pub struct InputNorm<'a> {
    pub coef: &'a Tensor,
    pub silu: bool,
}

/// `x`: `[N, C_in, H, W]`, `w`: `[C_out, C_in, k, k]` (k = 1 or 3), `bias`: `[C_out]`,
/// `res`: `[N, C_out, H, W]`.
pub fn conv2d(
    rec: &mut Recorder,
    x: &Tensor,
    w: &Weight,
    bias: Option<&Tensor>,
    norm: Option<InputNorm>,
    res: Option<&Tensor>,
) -> Result<Tensor> {
    let gpu = rec.gpu();
    let &[n, cin, h, wd] = x.shape() else {
        return shape_err("conv2d", format!("input must be NCHW, got {:?}", x.shape()));
    };
    let ks = match w.shape.as_slice() {
        &[_, ci, kh, kw] if ci == cin && kh == kw && (kh == 1 || kh == 3) => kh,
        s => return shape_err("conv2d", format!("weight {s:?} for input {:?}", x.shape())),
    };
    let cout = w.rows;
    if let Some(b) = bias {
        if b.numel() != cout {
            return shape_err("conv2d", format!("bias {:?} for {cout} outputs", b.shape()));
        }
    }
    if let Some(nm) = &norm {
        if nm.coef.shape() != [n, 3 * cin] {
            return shape_err(
                "conv2d",
                format!(
                    "norm coefficients {:?}, expected [{n}, {}]",
                    nm.coef.shape(),
                    3 * cin
                ),
            );
        }
    }
    let out_shape = [n, cout, h, wd];
    if let Some(r) = res {
        if r.shape() != out_shape {
            return shape_err(
                "conv2d",
                format!("residual {:?} vs output {:?}", r.shape(), out_shape),
            );
        }
    }
    let out = gpu.empty(&out_shape)?;
    let hw = (h * wd) as u64;
    let norm_code = match &norm {
        None => 0.0,
        Some(InputNorm { silu: false, .. }) => 1.0,
        Some(InputNorm { silu: true, .. }) => 2.0,
    };
    gpu.count_flops(2 * (n * cout * cin * ks * ks) as u64 * hw);
    for (n0, nc) in gpu.batch_chunks(n, &[cin as u64 * hw * 4, cout as u64 * hw * 4])? {
        rec.dispatch(
            &CONV2D,
            &[
                ("W_DTYPE", w.dtype.code() as f64),
                ("KS", ks as f64),
                ("NORM", norm_code),
            ],
            &[
                cin as u32,
                cout as u32,
                h as u32,
                wd as u32,
                w.row_words() as u32,
                res.is_some() as u32,
                n0 as u32,
                bias.is_some() as u32,
            ],
            &[
                x.bind_items(n0, nc),
                w.bind(),
                bind_opt(gpu, bias),
                bind_opt(gpu, norm.as_ref().map(|nm| nm.coef)),
                res.map_or_else(|| bind_opt(gpu, None), |r| r.bind_items(n0, nc)),
                out.bind_items(n0, nc),
            ],
            [
                (h * wd).div_ceil(64) as u32,
                cout.div_ceil(64) as u32,
                nc as u32,
            ],
        )?;
    }
    Ok(out)
}
