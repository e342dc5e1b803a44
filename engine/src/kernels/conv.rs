//! `conv2d.wgsl`: 3×3 / 1×1 convolution (stride 1, same padding) as an implicit
//! GEMM, with GroupNorm(+scale-shift)(+SiLU) and nearest ×2 upsampling fused
//! on the input side and bias + residual (optionally upsampled) on the output side.

use super::{bind_opt, kernel};
use crate::error::{shape_err, Result};
use crate::gpu::Recorder;
use crate::tensor::{Piece, Tensor, Weight};

kernel!(CONV2D, "conv2d.wgsl", "main", weights);

/// Input-side normalisation: `coef` is `[N, 3·C_in]` from
/// [`crate::kernels::group_norm::coeffs`]; `silu` applies SiLU after it.
pub struct InputNorm<'a> {
    pub coef: &'a Tensor,
    pub silu: bool,
}

/// Nearest ×2 upsampling folded into the loads (GLIDE's up ResBlock): the
/// input and/or the residual are read at half the output's resolution, so
/// the upsampled tensors (160 MiB each in Karlo's SR) never exist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Upsampled {
    pub input: bool,
    pub res: bool,
}

/// `x`: `[N, C_in, H, W]`, `w`: `[C_out, C_in, k, k]` (k = 1 or 3), `bias`: `[C_out]`,
/// `res`: `[N, C_out, H, W]`. An item over the binding limit is computed in
/// channel ranges of input and output.
pub fn conv2d(
    rec: &mut Recorder,
    x: &Tensor,
    w: &Weight,
    bias: Option<&Tensor>,
    norm: Option<InputNorm>,
    res: Option<&Tensor>,
) -> Result<Tensor> {
    conv2d_upsampled(rec, x, w, bias, norm, res, Upsampled::default())
}

/// [`conv2d`] of `nearest2x(x)` (when `up.input`; the output is `[N, C_out,
/// 2H, 2W]`) plus `nearest2x(res)` (when `up.res`; `res` at half the output's size).
pub fn conv2d_upsampled(
    rec: &mut Recorder,
    x: &Tensor,
    w: &Weight,
    bias: Option<&Tensor>,
    norm: Option<InputNorm>,
    res: Option<&Tensor>,
    up: Upsampled,
) -> Result<Tensor> {
    let gpu = rec.gpu();
    let &[n, cin, hin, win] = x.shape() else {
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
    let (h, wd) = if up.input {
        (2 * hin, 2 * win)
    } else {
        (hin, win)
    };
    let out_shape = [n, cout, h, wd];
    let res_shape = if up.res {
        if !h.is_multiple_of(2) || !wd.is_multiple_of(2) {
            return shape_err("conv2d", format!("an upsampled residual for {out_shape:?}"));
        }
        [n, cout, h / 2, wd / 2]
    } else {
        out_shape
    };
    if let Some(r) = res {
        if r.shape() != res_shape {
            return shape_err(
                "conv2d",
                format!("residual {:?}, expected {res_shape:?}", r.shape()),
            );
        }
    }
    let out = gpu.empty(&out_shape)?;
    let hw = (h * wd) as u64;
    let (hw_in, hw_res) = ((hin * win) as u64, (res_shape[2] * res_shape[3]) as u64);
    let norm_code = match &norm {
        None => 0.0,
        Some(InputNorm { silu: false, .. }) => 1.0,
        Some(InputNorm { silu: true, .. }) => 2.0,
    };
    gpu.count_flops(2 * (n * cout * cin * ks * ks) as u64 * hw);
    // `res` is the caller's residual (in `res_shape`, upsampled when its flag
    // says so) for the first input range, then the partial sum so far.
    let dispatch = |rec: &mut Recorder,
                    inp: Piece,
                    outp: Piece,
                    first: bool,
                    res: Option<(&Tensor, Piece, bool)>,
                    dst: (&Tensor, Piece)|
     -> Result<()> {
        let res_up = res.is_some_and(|r| r.2);
        rec.dispatch(
            &CONV2D,
            &[
                ("W_DTYPE", w.dtype.code() as f64),
                ("KS", ks as f64),
                ("NORM", norm_code),
                ("UP_IN", up.input as u32 as f64),
                ("UP_RES", res_up as u32 as f64),
            ],
            &[
                inp.cc as u32,
                outp.cc as u32,
                h as u32,
                wd as u32,
                w.row_words() as u32,
                res.is_some() as u32,
                inp.n0 as u32,
                (first && bias.is_some()) as u32,
                inp.c0 as u32,
                cin as u32,
                outp.c0 as u32,
            ],
            &[
                x.bind_piece(inp),
                w.bind(),
                bind_opt(gpu, bias),
                bind_opt(gpu, norm.as_ref().map(|nm| nm.coef)),
                res.map_or_else(|| bind_opt(gpu, None), |(r, p, _)| r.bind_piece(p)),
                dst.0.bind_piece(dst.1),
            ],
            [
                (h * wd).div_ceil(64) as u32,
                outp.cc.div_ceil(64) as u32,
                inp.nc as u32,
            ],
        )
    };
    let items = [
        cin as u64 * hw_in * 4,
        cout as u64 * hw * 4,
        cout as u64 * hw_res * 4,
    ];
    if items.iter().all(|&b| b <= gpu.max_binding) {
        for (n0, nc) in gpu.batch_chunks(n, &items)? {
            let piece = |c| Piece {
                n0,
                nc,
                c0: 0,
                cc: c,
            };
            let res = res.map(|r| (r, piece(cout), up.res));
            dispatch(rec, piece(cin), piece(cout), true, res, (&out, piece(cout)))?;
        }
        return Ok(out);
    }
    // One item is over the binding limit: output channel ranges, each summed
    // over input channel ranges. Partial sums alternate between the output
    // range and a scratch tensor of one range (a binding may not be read and
    // written at once), ordered so that the last input range lands in `out`.
    let in_ranges = gpu.channel_ranges(cin, &[hw_in * 4], 1)?;
    let out_ranges = gpu.channel_ranges(cout, &[hw * 4, hw_res * 4], 1)?;
    let widest = out_ranges.iter().map(|r| r.1).max().unwrap_or(0);
    let scratch = if in_ranges.len() > 1 {
        Some(gpu.empty(&[1, widest, h, wd])?)
    } else {
        None
    };
    let last = in_ranges.len() - 1;
    for n0 in 0..n {
        for &(co0, coc) in &out_ranges {
            let outp = Piece {
                n0,
                nc: 1,
                c0: co0,
                cc: coc,
            };
            let mut prev = res.map(|r| (r, outp, up.res));
            for (j, &(ci0, cic)) in in_ranges.iter().enumerate() {
                let inp = Piece {
                    n0,
                    nc: 1,
                    c0: ci0,
                    cc: cic,
                };
                let dst = match &scratch {
                    Some(s) if (last - j) % 2 == 1 => (
                        s,
                        Piece {
                            n0: 0,
                            nc: 1,
                            c0: 0,
                            cc: coc,
                        },
                    ),
                    _ => (&out, outp),
                };
                dispatch(rec, inp, outp, j == 0, prev, dst)?;
                prev = Some((dst.0, dst.1, false));
            }
        }
    }
    Ok(out)
}
