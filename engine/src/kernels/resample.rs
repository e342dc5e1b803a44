//! `resample.wgsl`: nearest ×2, 2×2 average pool, bilinear (align_corners=False)
//! and antialiased bicubic resize on `[N, C, H, W]`.

use super::kernel;
use crate::error::{shape_err, Result};
use crate::gpu::{grid, Kernel, Recorder};
use crate::tensor::Tensor;

kernel!(NEAREST2X, "resample.wgsl", "nearest2x");
kernel!(AVGPOOL2, "resample.wgsl", "avgpool2");
kernel!(BILINEAR, "resample.wgsl", "bilinear");
kernel!(BICUBIC_AA, "resample.wgsl", "bicubic_aa");

fn launch(
    rec: &mut Recorder,
    kernel: &Kernel,
    x: &Tensor,
    hout: usize,
    wout: usize,
) -> Result<Tensor> {
    let gpu = rec.gpu();
    let &[n, c, h, w] = x.shape() else {
        return shape_err(
            "resample",
            format!("input must be NCHW, got {:?}", x.shape()),
        );
    };
    if h == 0 || w == 0 || hout == 0 || wout == 0 {
        return shape_err("resample", format!("empty image {h}x{w} -> {hout}x{wout}"));
    }
    let out = gpu.empty(&[n, c, hout, wout])?;
    // Planes are independent: an item over the binding limit goes in channel ranges.
    for piece in gpu.pieces(n, c, &[(h * w) as u64 * 4, (hout * wout) as u64 * 4], 1)? {
        let planes = piece.nc * piece.cc;
        rec.dispatch(
            kernel,
            &[],
            &[planes as u32, h as u32, w as u32, hout as u32, wout as u32],
            &[x.bind_piece(piece), out.bind_piece(piece)],
            grid(((planes * hout * wout) as u64).div_ceil(256)),
        )?;
    }
    Ok(out)
}

pub fn nearest2x(rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
    let s = x.shape().to_vec();
    if s.len() != 4 {
        return shape_err("nearest2x", format!("input must be NCHW, got {s:?}"));
    }
    launch(rec, &NEAREST2X, x, s[2] * 2, s[3] * 2)
}

pub fn avgpool2(rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
    let s = x.shape().to_vec();
    if s.len() != 4 || !s[2].is_multiple_of(2) || !s[3].is_multiple_of(2) {
        return shape_err(
            "avgpool2",
            format!("input must be NCHW with even H, W, got {s:?}"),
        );
    }
    launch(rec, &AVGPOOL2, x, s[2] / 2, s[3] / 2)
}

pub fn bilinear(rec: &mut Recorder, x: &Tensor, hout: usize, wout: usize) -> Result<Tensor> {
    launch(rec, &BILINEAR, x, hout, wout)
}

pub fn bicubic_aa(rec: &mut Recorder, x: &Tensor, hout: usize, wout: usize) -> Result<Tensor> {
    launch(rec, &BICUBIC_AA, x, hout, wout)
}
