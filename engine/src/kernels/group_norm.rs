//! `group_norm*.wgsl`: GroupNorm as stats → per-channel coefficients → apply.
//! The coefficients fold the affine params and an optional scale-shift
//! embedding (GLIDE ResBlock `out_layers`), so [`crate::kernels::conv::conv2d`]
//! can apply the whole norm (+SiLU) while loading its input.

use super::{bind_opt, kernel, Act};
use crate::error::{shape_err, Result};
use crate::gpu::{grid, Recorder};
use crate::tensor::Tensor;

kernel!(GN_STATS, "group_norm.wgsl", "stats_main", reduce);
kernel!(GN_COEFFS, "group_norm_coeffs.wgsl", "main");
kernel!(GN_APPLY, "group_norm_apply.wgsl", "main");

fn dims(x: &Tensor) -> Result<(usize, usize, usize)> {
    match x.shape() {
        [n, c, rest @ ..] => Ok((*n, *c, rest.iter().product())),
        s => shape_err(
            "group_norm",
            format!("input must be [N, C, ...], got {s:?}"),
        ),
    }
}

/// Per-(n, group) `[mean, 1/sqrt(var + eps)]`, shape `[N, G, 2]`.
pub fn stats(rec: &mut Recorder, x: &Tensor, groups: usize, eps: f32) -> Result<Tensor> {
    let gpu = rec.gpu();
    let (n, c, hw) = dims(x)?;
    if groups == 0 || c % groups != 0 {
        return shape_err(
            "group_norm",
            format!("{c} channels not divisible into {groups} groups"),
        );
    }
    let out = gpu.empty(&[n, groups, 2])?;
    let cg = c / groups;
    for piece in gpu.pieces(n, c, &[hw as u64 * 4], cg)? {
        rec.dispatch(
            &GN_STATS,
            &[],
            &[
                piece.cc as u32,
                (piece.cc / cg) as u32,
                hw as u32,
                super::f(eps),
                piece.n0 as u32,
                (piece.c0 / cg) as u32,
                groups as u32,
                piece.nc as u32,
            ],
            &[x.bind_piece(piece), out.bind()],
            [(piece.cc / cg) as u32, piece.nc as u32, 1],
        )?;
    }
    Ok(out)
}

/// `[N, 3C]` coefficients (mean, A, B per channel) for `(x - mean)·A + B`,
/// where A = rstd·γ·(1+scale), B = β·(1+scale) + shift and `emb` rows are
/// `[scale (C) | shift (C) | ...]`.
pub fn coeffs(
    rec: &mut Recorder,
    stats: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    emb: Option<&Tensor>,
    c: usize,
) -> Result<Tensor> {
    let gpu = rec.gpu();
    let &[n, groups, 2] = stats.shape() else {
        return shape_err(
            "group_norm",
            format!("stats must be [N, G, 2], got {:?}", stats.shape()),
        );
    };
    if gamma.numel() != c || beta.numel() != c {
        return shape_err(
            "group_norm",
            format!(
                "affine params {:?}/{:?} for {c} channels",
                gamma.shape(),
                beta.shape()
            ),
        );
    }
    let emb_stride = match emb {
        Some(e) => match e.shape() {
            &[en, s] if en == n && s >= 2 * c => s,
            s => {
                return shape_err(
                    "group_norm",
                    format!("scale-shift embedding {s:?}, expected [{n}, >= {}]", 2 * c),
                )
            }
        },
        None => 0,
    };
    let out = gpu.empty(&[n, 3 * c])?;
    rec.dispatch(
        &GN_COEFFS,
        &[],
        &[
            c as u32,
            groups as u32,
            0,
            0,
            0,
            emb.is_some() as u32,
            emb_stride as u32,
            n as u32,
        ],
        &[
            stats.bind(),
            gamma.bind(),
            beta.bind(),
            bind_opt(gpu, emb),
            out.bind(),
        ],
        [(n * c).div_ceil(256) as u32, 1, 1],
    )?;
    Ok(out)
}

/// `act((x - mean)·A + B)` with coefficients from [`coeffs`].
pub fn apply(rec: &mut Recorder, x: &Tensor, coef: &Tensor, act: Act) -> Result<Tensor> {
    let gpu = rec.gpu();
    let (n, c, hw) = dims(x)?;
    if coef.shape() != [n, 3 * c] {
        return shape_err(
            "group_norm",
            format!("coefficients {:?} for input {:?}", coef.shape(), x.shape()),
        );
    }
    let out = gpu.empty(x.shape())?;
    for piece in gpu.pieces(n, c, &[hw as u64 * 4], 1)? {
        let total = piece.nc * piece.cc * hw;
        rec.dispatch(
            &GN_APPLY,
            &[("ACT", act.code())],
            &[
                piece.cc as u32,
                hw as u32,
                piece.n0 as u32,
                total as u32,
                piece.c0 as u32,
                c as u32,
            ],
            &[x.bind_piece(piece), coef.bind(), out.bind_piece(piece)],
            grid((total as u64).div_ceil(256)),
        )?;
    }
    Ok(out)
}

/// Coefficients for `GroupNorm(groups, eps)(x)·(1+scale)+shift` (emb optional).
pub fn norm_coeffs(
    rec: &mut Recorder,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f32,
    emb: Option<&Tensor>,
) -> Result<Tensor> {
    let s = stats(rec, x, groups, eps)?;
    coeffs(rec, &s, gamma, beta, emb, x.shape()[1])
}

/// Full GroupNorm (+ scale-shift) + activation as a standalone op.
#[allow(clippy::too_many_arguments)]
pub fn group_norm(
    rec: &mut Recorder,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f32,
    emb: Option<&Tensor>,
    act: Act,
) -> Result<Tensor> {
    let coef = norm_coeffs(rec, x, gamma, beta, groups, eps, emb)?;
    apply(rec, x, &coef, act)
}
