//! `copy.wgsl`: channel-slice copies — concatenation and splitting along dim 1.

use super::kernel;
use crate::error::{shape_err, Result};
use crate::gpu::{grid, Recorder};
use crate::tensor::Tensor;

kernel!(COPY, "copy.wgsl", "main");

fn split(t: &Tensor) -> Result<(usize, usize, usize)> {
    match t.shape() {
        [n, c, rest @ ..] => Ok((*n, *c, rest.iter().product())),
        s => shape_err("copy", format!("need [N, C, ...], got {s:?}")),
    }
}

/// Copies channels `src_off..src_off+count` of `src` into `dst` at `dst_off`.
pub fn copy_channels(
    rec: &mut Recorder,
    src: &Tensor,
    src_off: usize,
    dst: &Tensor,
    dst_off: usize,
    count: usize,
) -> Result<()> {
    let gpu = rec.gpu();
    let (n, sc, inner) = split(src)?;
    let (dn, dc, dinner) = split(dst)?;
    if n != dn || inner != dinner || src_off + count > sc || dst_off + count > dc {
        return shape_err(
            "copy",
            format!(
                "{count} channels {:?}@{src_off} -> {:?}@{dst_off}",
                src.shape(),
                dst.shape()
            ),
        );
    }
    let items = [(sc * inner) as u64 * 4, (dc * inner) as u64 * 4];
    if items.iter().any(|&b| b > gpu.max_binding) {
        // Items over the binding limit: buffer copies, which bind nothing.
        let bytes = (count * inner) as u64 * 4;
        for i in 0..n {
            let from = ((i * sc + src_off) * inner) as u64 * 4;
            let to = ((i * dc + dst_off) * inner) as u64 * 4;
            rec.copy(src.buffer(), from, dst.buffer(), to, bytes);
        }
        return Ok(());
    }
    for (n0, nc) in gpu.batch_chunks(n, &items)? {
        let total = (nc * count * inner) as u64;
        rec.dispatch(
            &COPY,
            &[],
            &[
                nc as u32,
                count as u32,
                inner as u32,
                sc as u32,
                src_off as u32,
                dc as u32,
                dst_off as u32,
            ],
            &[src.bind_items(n0, nc), dst.bind_items(n0, nc)],
            grid(total.div_ceil(256)),
        )?;
    }
    Ok(())
}

/// `torch.cat(parts, dim=1)`.
pub fn concat_channels(rec: &mut Recorder, parts: &[&Tensor]) -> Result<Tensor> {
    let Some(first) = parts.first() else {
        return shape_err("concat", "nothing to concatenate");
    };
    let mut shape = first.shape().to_vec();
    if shape.len() < 2 {
        return shape_err("concat", format!("need [N, C, ...], got {shape:?}"));
    }
    let mut total = 0;
    for p in parts {
        let s = p.shape();
        if s.len() != shape.len() || s[0] != shape[0] || s[2..] != shape[2..] {
            return shape_err(
                "concat",
                format!("{s:?} does not match {shape:?} outside dim 1"),
            );
        }
        total += s[1];
    }
    shape[1] = total;
    let out = rec.gpu().empty(&shape)?;
    let mut off = 0;
    for p in parts {
        copy_channels(rec, p, 0, &out, off, p.shape()[1])?;
        off += p.shape()[1];
    }
    Ok(out)
}

/// Channels `start..start+count` as a new tensor.
pub fn slice_channels(
    rec: &mut Recorder,
    x: &Tensor,
    start: usize,
    count: usize,
) -> Result<Tensor> {
    let mut shape = x.shape().to_vec();
    if shape.len() < 2 {
        return shape_err("slice", format!("need [N, C, ...], got {shape:?}"));
    }
    shape[1] = count;
    let out = rec.gpu().empty(&shape)?;
    copy_channels(rec, x, start, &out, 0, count)?;
    Ok(out)
}

/// Token `pos[i]` of every sequence `i` of `x` `[N, L, W]` → `[N, W]` (the
/// pooled token of a text tower: CLIP's eot row, the noisy CLIP's last one).
pub fn pick_tokens(rec: &mut Recorder, x: &Tensor, pos: &[usize]) -> Result<Tensor> {
    let &[n, l, w] = x.shape() else {
        return shape_err(
            "pick_tokens",
            format!("need [N, L, W], got {:?}", x.shape()),
        );
    };
    if pos.len() != n || pos.iter().any(|&p| p >= l) {
        return shape_err(
            "pick_tokens",
            format!("positions {pos:?} in {:?}", x.shape()),
        );
    }
    let out = rec.gpu().empty(&[n, w])?;
    let (flat, rows) = (x.reshape(&[1, n * l, w])?, out.reshape(&[1, n, w])?);
    for (i, &p) in pos.iter().enumerate() {
        copy_channels(rec, &flat, i * l + p, &rows, i, 1)?;
    }
    Ok(out)
}

/// `n` copies of a `[1, ...]` tensor along the batch dimension (a learned
/// token every row of a batch starts from): `[n, ...]`.
pub fn repeat_batch(rec: &mut Recorder, x: &Tensor, n: usize) -> Result<Tensor> {
    if x.shape().first() != Some(&1) || n == 0 {
        return shape_err(
            "repeat",
            format!("{n} copies of {:?} (needs [1, ...])", x.shape()),
        );
    }
    let mut shape = x.shape().to_vec();
    shape[0] = n;
    let out = rec.gpu().empty(&shape)?;
    let per = x.numel();
    let (src, dst) = (x.reshape(&[1, 1, per])?, out.reshape(&[1, n, per])?);
    for i in 0..n {
        copy_channels(rec, &src, 0, &dst, i, 1)?;
    }
    Ok(out)
}

/// `[n·R, ...]`: `n` copies of `x` `[R, ...]` stacked along dim 0 (the CFG
/// batch `[x, x]`); `n = 1` is `x` itself.
pub fn repeat_rows(rec: &mut Recorder, x: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let mut shape = x.shape().to_vec();
    if shape.is_empty() {
        return shape_err("repeat_rows", "need [R, ...], got a scalar");
    }
    let copies = repeat_batch(rec, &x.reshape(&[1, x.numel()])?, n)?;
    shape[0] *= n;
    copies.reshape(&shape)
}

/// The first `b` rows of `x` `[R, ...]` (`b = R` is `x` itself).
pub fn first_rows(rec: &mut Recorder, x: &Tensor, b: usize) -> Result<Tensor> {
    let rows = x.shape().first().copied().unwrap_or(0);
    if b == rows {
        return Ok(x.clone());
    }
    if b == 0 || b > rows {
        return shape_err("first_rows", format!("{b} rows of {:?}", x.shape()));
    }
    let per = x.numel() / rows;
    let mut shape = x.shape().to_vec();
    shape[0] = b;
    slice_channels(rec, &x.reshape(&[1, rows, per])?, 0, b)?.reshape(&shape)
}
