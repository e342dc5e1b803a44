//! PNG output with the generation parameters as text chunks.

use anyhow::{bail, Result};

/// Encodes RGB8 pixels as a PNG with one iTXt chunk per (key, value): UTF-8
/// values (prompts) as they are; keys must be PNG keywords (1–79 Latin-1).
pub fn encode_png(
    out: impl std::io::Write,
    rgb: &[u8],
    w: usize,
    h: usize,
    params: &[(&str, String)],
) -> Result<()> {
    if rgb.len() != w * h * 3 {
        bail!("{} bytes of RGB for a {w}×{h} image", rgb.len());
    }
    let mut enc = png::Encoder::new(out, w as u32, h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    for (k, v) in params {
        enc.add_itxt_chunk(k.to_string(), v.clone())?;
    }
    let mut wr = enc.write_header()?;
    wr.write_image_data(rgb)?;
    wr.finish()?;
    Ok(())
}
