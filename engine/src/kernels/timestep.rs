//! `timestep_embedding.wgsl`: sinusoidal timestep embedding.

use super::kernel;
use crate::error::{shape_err, Result};
use crate::gpu::Recorder;
use crate::tensor::Tensor;

kernel!(TIMESTEP, "timestep_embedding.wgsl", "main");

/// `exp((-ln(10000)·i) / half)` in f32, the order torch uses. Computed on the
/// host (correctly rounded exp) so every adapter sees the same frequencies:
/// with t up to 999 a 1-ulp difference in exp() moves the output by ~1e-4.
pub fn frequencies(dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let mut f: Vec<f32> = (0..half)
        .map(|i| ((-(10000f64.ln() as f32) * i as f32) / half as f32).exp())
        .collect();
    f.push(0.0); // keeps the buffer non-empty for dim < 2
    f
}

/// `t`: `[N]` timesteps (as f32, original 0..999 scale); returns `[N, dim]`,
/// `[cos | sin]` (guided-diffusion / GLIDE) or `[sin | cos]` with `sin_first`.
pub fn timestep_embedding(
    rec: &mut Recorder,
    t: &Tensor,
    dim: usize,
    sin_first: bool,
) -> Result<Tensor> {
    if t.shape().len() != 1 || dim == 0 {
        return shape_err(
            "timestep_embedding",
            format!("t {:?}, dim {dim}", t.shape()),
        );
    }
    let n = t.numel();
    let gpu = rec.gpu();
    let freqs = gpu.cached_constant(&format!("timestep_freqs:{dim}"), &[dim / 2 + 1], || {
        frequencies(dim)
    })?;
    let out = gpu.empty(&[n, dim])?;
    rec.dispatch(
        &TIMESTEP,
        &[],
        &[n as u32, dim as u32, sin_first as u32],
        &[t.bind(), freqs.bind(), out.bind()],
        [((n * dim) as u32).div_ceil(256), 1, 1],
    )?;
    Ok(out)
}
