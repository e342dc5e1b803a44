//! `philox.wgsl`: standard-normal noise from Philox4x32-10 + Box-Muller.
//! [`crate::rng::randn`] is the bit-compatible CPU version.

use super::kernel;
use crate::error::Result;
use crate::gpu::{grid, Recorder};
use crate::tensor::Tensor;

kernel!(PHILOX, "philox.wgsl", "main");

/// Fills `out` with N(0, 1) noise for `(seed, stream)`; element i depends only
/// on (seed, stream, i), so any adapter gives the same numbers.
pub fn randn_into(rec: &mut Recorder, out: &Tensor, seed: u64, stream: u32) -> Result<()> {
    let n = out.numel();
    rec.dispatch(
        &PHILOX,
        &[],
        &[n as u32, seed as u32, (seed >> 32) as u32, stream],
        &[out.bind()],
        grid((n as u64).div_ceil(4).div_ceil(256)),
    )
}

pub fn randn(rec: &mut Recorder, shape: &[usize], seed: u64, stream: u32) -> Result<Tensor> {
    let out = rec.gpu().empty(shape)?;
    randn_into(rec, &out, seed, stream)?;
    Ok(out)
}
