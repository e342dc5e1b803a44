//! `elementwise.wgsl`: unary maps and binary ops with NumPy-style broadcasting
//! of the second operand, with a fused activation.

use super::{kernel, Act};
use crate::error::{shape_err, Result};
use crate::gpu::{grid, Recorder};
use crate::tensor::Tensor;

kernel!(ELEMENTWISE, "elementwise.wgsl", "main");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Mul,
    Sub,
    /// `a · gelu′(b)`: the backward of an erf GELU (a: output gradient, b: its input).
    GeluGrad,
}

/// `b` right-aligned against `a`; its non-1 dims must be one contiguous run equal
/// to `a`'s dims there. Returns (inner, size): b index = (i / inner) % size.
fn broadcast(a: &[usize], b: &[usize]) -> Option<(usize, usize)> {
    if b.len() > a.len() {
        return None;
    }
    let off = a.len() - b.len();
    let dims: Vec<usize> = (0..b.len()).filter(|&i| b[i] != 1).collect();
    let Some((&first, &last)) = dims.first().zip(dims.last()) else {
        return Some((1, 1));
    };
    if last - first + 1 != dims.len() || dims.iter().any(|&i| b[i] != a[off + i]) {
        return None;
    }
    let inner = a[off + last + 1..].iter().product();
    Some((inner, b.iter().product()))
}

fn launch(
    rec: &mut Recorder,
    a: &Tensor,
    b: Option<&Tensor>,
    op: u32,
    act: Act,
    alpha: f32,
    beta: f32,
) -> Result<Tensor> {
    let gpu = rec.gpu();
    let (inner, size) = match b {
        Some(b) => broadcast(a.shape(), b.shape()).map_or_else(
            || {
                shape_err(
                    "elementwise",
                    format!("{:?} does not broadcast to {:?}", b.shape(), a.shape()),
                )
            },
            Ok,
        )?,
        None => (1, 1),
    };
    let out = gpu.empty(a.shape())?;
    let n = a.numel();
    let b_chunked = b.is_some_and(|b| b.numel() == n && n > 0);
    // Flat chunks of a multiple of 64 elements keep offsets 256-byte aligned.
    let max_elems = ((gpu.max_binding / 4) / 64 * 64).max(64) as usize;
    let mut start = 0;
    while start < n {
        let len = max_elems.min(n - start);
        fn range(t: &Tensor, start: usize, len: usize) -> crate::gpu::Bind<'_> {
            crate::gpu::Bind {
                buffer: t.buffer(),
                offset: start as u64 * 4,
                size: len as u64 * 4,
            }
        }
        let b_bind = match b {
            Some(bt) if b_chunked => range(bt, start, len),
            Some(bt) => bt.bind(),
            None => super::bind_opt(gpu, None),
        };
        rec.dispatch(
            &ELEMENTWISE,
            &[
                ("OP", op as f64),
                ("ACT", act.code()),
                ("B_CHUNKED", b_chunked as u32 as f64),
            ],
            &[
                len as u32,
                inner as u32,
                size as u32,
                start as u32,
                super::f(alpha),
                super::f(beta),
            ],
            &[range(a, start, len), b_bind, range(&out, start, len)],
            grid((len as u64).div_ceil(256)),
        )?;
        start += len;
    }
    Ok(out)
}

/// `act(alpha * x + beta)`.
pub fn unary(rec: &mut Recorder, x: &Tensor, act: Act, alpha: f32, beta: f32) -> Result<Tensor> {
    launch(rec, x, None, 0, act, alpha, beta)
}

/// `act(a op b)` with `b` broadcast to `a`'s shape.
pub fn binary(
    rec: &mut Recorder,
    a: &Tensor,
    b: &Tensor,
    op: BinaryOp,
    act: Act,
) -> Result<Tensor> {
    let code = match op {
        BinaryOp::Add => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Sub => 3,
        BinaryOp::GeluGrad => 4,
    };
    launch(rec, a, Some(b), code, act, 1.0, 0.0)
}

#[cfg(test)]
mod tests {
    use super::broadcast;
    #[test]
    fn broadcast_rules() {
        assert_eq!(broadcast(&[2, 3, 4, 5], &[2, 3, 4, 5]), Some((1, 120)));
        assert_eq!(broadcast(&[2, 3, 4, 5], &[3, 1, 1]), Some((20, 3)));
        assert_eq!(broadcast(&[2, 3, 4, 5], &[2, 3, 1, 1]), Some((20, 6)));
        assert_eq!(broadcast(&[2, 3, 4, 5], &[5]), Some((1, 5)));
        assert_eq!(broadcast(&[2, 3, 4, 5], &[1]), Some((1, 1)));
        assert_eq!(broadcast(&[2, 3, 4, 5], &[3, 1, 5]), None);
        assert_eq!(broadcast(&[2, 3], &[4]), None);
    }
}
