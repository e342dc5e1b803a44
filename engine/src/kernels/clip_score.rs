//! `clip_score.wgsl`: the gradient of GLIDE's CLIP guidance score
//! `scale · normalize(text) · normalize(image)` with respect to the raw
//! (unnormalised) image embedding, per batch row.

use super::kernel;
use crate::error::{shape_err, Result};
use crate::gpu::{grid, Recorder};
use crate::tensor::Tensor;

kernel!(CLIP_SCORE, "clip_score.wgsl", "main", reduce);

/// `text`, `image`: raw embeddings `[B, E]` (row b of each pairs up).
pub fn score_grad(rec: &mut Recorder, text: &Tensor, image: &Tensor, scale: f32) -> Result<Tensor> {
    let &[b, e] = image.shape() else {
        return shape_err("clip_score", format!("image embedding {:?}", image.shape()));
    };
    if text.shape() != image.shape() || e == 0 {
        return shape_err(
            "clip_score",
            format!("text {:?} vs image {:?}", text.shape(), image.shape()),
        );
    }
    let dz = rec.gpu().empty(&[b, e])?;
    rec.dispatch(
        &CLIP_SCORE,
        &[],
        &[b as u32, e as u32, super::f(scale)],
        &[text.bind(), image.bind(), dz.bind()],
        grid(b as u64),
    )?;
    Ok(dz)
}
