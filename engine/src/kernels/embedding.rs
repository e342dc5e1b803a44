//! `embedding.wgsl`: token-embedding gather (+ positional table), with GLIDE's
//! padding-embedding replacement at masked positions.

use super::{bind_opt, kernel};
use crate::error::{shape_err, Result};
use crate::gpu::{grid, Recorder};
use crate::tensor::{Tensor, Weight};

kernel!(EMBEDDING, "embedding.wgsl", "main", weights);

/// `ids`: u32 `[B, L]`; `table`: `[V, D]`; `pos`: `[L, D]`; `pad`: (`[L, D]`,
/// u32 mask `[B, L]`, 1 = real token). Returns `[B, L, D]`.
pub fn embed(
    rec: &mut Recorder,
    ids: &Tensor,
    table: &Weight,
    pos: Option<&Tensor>,
    pad: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    let gpu = rec.gpu();
    let &[b, l] = ids.shape() else {
        return shape_err(
            "embedding",
            format!("ids must be [B, L], got {:?}", ids.shape()),
        );
    };
    let d = table.cols;
    for (what, t) in [("positional", pos), ("padding", pad.map(|p| p.0))] {
        if let Some(t) = t {
            if t.numel() != l * d {
                return shape_err(
                    "embedding",
                    format!("{what} table {:?}, expected [{l}, {d}]", t.shape()),
                );
            }
        }
    }
    if let Some((_, m)) = pad {
        if m.shape() != [b, l] {
            return shape_err(
                "embedding",
                format!("mask {:?}, expected [{b}, {l}]", m.shape()),
            );
        }
    }
    let out = gpu.empty(&[b, l, d])?;
    rec.dispatch(
        &EMBEDDING,
        &[("W_DTYPE", table.dtype.code() as f64)],
        &[
            (b * l) as u32,
            d as u32,
            l as u32,
            table.row_words() as u32,
            pos.is_some() as u32,
            pad.is_some() as u32,
            table.rows as u32,
        ],
        &[
            ids.bind(),
            table.bind(),
            bind_opt(gpu, pos),
            bind_opt(gpu, pad.map(|p| p.0)),
            bind_opt(gpu, pad.map(|p| p.1)),
            out.bind(),
        ],
        grid(((b * l * d) as u64).div_ceil(256)),
    )?;
    Ok(out)
}
