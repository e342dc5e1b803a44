//! `patches.wgsl`: images ↔ rows of non-overlapping patches with a
//! per-channel affine map (the noisy CLIP's pixel normalisation and
//! `patch_proj`, a stride-P conv, as a linear layer), and the reverse for
//! the gradient of the patch rows.

use super::kernel;
use crate::error::{shape_err, Result};
use crate::gpu::{grid, Recorder};
use crate::tensor::Tensor;

kernel!(TO_PATCHES, "patches.wgsl", "to_patches");
kernel!(FROM_PATCHES, "patches.wgsl", "from_patches");

/// Per channel `y = x·slope + offset`.
#[derive(Clone, Copy, Debug)]
pub struct ChannelAffine {
    pub slope: [f32; 3],
    pub offset: [f32; 3],
}

fn params(b: usize, s: usize, patch: usize, a: &ChannelAffine) -> Vec<u32> {
    let f = super::f;
    vec![
        b as u32,
        s as u32,
        patch as u32,
        (s / patch) as u32,
        f(a.slope[0]),
        f(a.slope[1]),
        f(a.slope[2]),
        0,
        f(a.offset[0]),
        f(a.offset[1]),
        f(a.offset[2]),
        0,
    ]
}

fn image_dims(what: &str, t: &Tensor, patch: usize) -> Result<(usize, usize)> {
    match *t.shape() {
        [b, 3, s, s2] if s == s2 && patch > 0 && s.is_multiple_of(patch) => Ok((b, s)),
        _ => shape_err(
            "patches",
            format!(
                "{what} {:?}: need [B, 3, S, S] with S a multiple of {patch}",
                t.shape()
            ),
        ),
    }
}

/// `[B, 3, S, S]` → `[B, (S/P)², 3·P·P]` of `affine(x)`.
pub fn to_patches(
    rec: &mut Recorder,
    x: &Tensor,
    patch: usize,
    affine: &ChannelAffine,
) -> Result<Tensor> {
    let (b, s) = image_dims("image", x, patch)?;
    let g = s / patch;
    let out = rec.gpu().empty(&[b, g * g, 3 * patch * patch])?;
    rec.dispatch(
        &TO_PATCHES,
        &[],
        &params(b, s, patch, affine),
        &[x.bind(), out.bind()],
        grid(((b * 3 * s * s) as u64).div_ceil(256)),
    )?;
    Ok(out)
}

/// The gradient of [`to_patches`]: `[B, (S/P)², 3·P·P]` → `[B, 3, S, S]`
/// (`like` gives the image shape).
pub fn from_patches(
    rec: &mut Recorder,
    dpatches: &Tensor,
    like: &Tensor,
    patch: usize,
    affine: &ChannelAffine,
) -> Result<Tensor> {
    let (b, s) = image_dims("image", like, patch)?;
    let g = s / patch;
    if dpatches.shape() != [b, g * g, 3 * patch * patch] {
        return shape_err(
            "patches",
            format!(
                "patch gradient {:?} for image {:?}",
                dpatches.shape(),
                like.shape()
            ),
        );
    }
    let out = rec.gpu().empty(like.shape())?;
    rec.dispatch(
        &FROM_PATCHES,
        &[],
        &params(b, s, patch, affine),
        &[dpatches.bind(), out.bind()],
        grid(((b * 3 * s * s) as u64).div_ceil(256)),
    )?;
    Ok(out)
}
