//! Images and masks from users, decoded within [`engine::limits`]: the
//! header's size is checked before any pixel is decoded, and the decoder may
//! not allocate more than the largest accepted image needs.

use std::path::Path;

use anyhow::{Context, Result};
use engine::limits::{
    check_image, read_at_most, MAX_IMAGE_FILE_BYTES, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE,
};

fn decode(bytes: &[u8]) -> Result<image::DynamicImage> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .context("reading the image")?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE as u32);
    limits.max_image_height = Some(MAX_IMAGE_SIDE as u32);
    // RGBA8 of the largest accepted image, plus the decoders' own buffers.
    limits.max_alloc = Some(MAX_IMAGE_PIXELS as u64 * 4 + (64 << 20));
    reader.limits(limits.clone());
    let (w, h) = reader.into_dimensions().map_err(|e| match e {
        // The decoder refuses a side over the limit as it reads the header;
        // the error says which limit.
        image::ImageError::Limits(l)
            if l.kind() == image::error::LimitErrorKind::DimensionError =>
        {
            anyhow::anyhow!(
                "the image is too large ({})",
                engine::limits::image_limits()
            )
        }
        e => anyhow::Error::new(e).context("not a readable PNG/JPEG/WebP image"),
    })?;
    check_image(w as usize, h as usize)?;
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format()?;
    reader.limits(limits);
    // The decoders are third-party code: zune-jpeg 0.5.15 (the image crate's
    // JPEG decoder, the newest) still asserts on some malformed files (found
    // by fuzzing: `fuzz/corpus/image/regress-zune-upsampler-panic`), so a
    // panic in them is this file's error, not the program's end.
    DECODING.set(true);
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode()));
    DECODING.set(false);
    decoded
        .map_err(|_| anyhow::anyhow!("the image decoder failed on this file (a malformed image)"))?
        .context("not a readable PNG/JPEG/WebP image")
}

thread_local! {
    /// Set while a third-party decoder runs on this thread.
    static DECODING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Wraps the panic hook so a decoder's panic, which [`decode`] turns into an
/// error, prints nothing (and, under libFuzzer, does not abort); every other
/// panic goes to the hook as before. Call once at start.
pub fn quiet_decoder_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !DECODING.with(|d| d.get()) {
            previous(info)
        }
    }));
}

/// Decodes an image to interleaved RGB8 (transparent pixels on white, as the
/// web app reads them) with its width and height.
pub fn decode_rgb(bytes: &[u8]) -> Result<(Vec<u8>, usize, usize)> {
    let img = decode(bytes)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if !img.color().has_alpha() {
        // Opaque: on white is the image itself (and a large photo is not copied twice).
        return Ok((img.into_rgb8().into_raw(), w, h));
    }
    Ok((
        engine::glide::pipeline::rgba8_on_white(img.into_rgba8().as_raw()),
        w,
        h,
    ))
}

/// Decodes a mask to its 8-bit luminance (255 = white) with its width and height.
pub fn decode_luma(bytes: &[u8]) -> Result<(Vec<u8>, usize, usize)> {
    let img = decode(bytes)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    // A grey image is not copied; others are converted once.
    Ok((img.into_luma8().into_raw(), w, h))
}

/// [`decode_rgb`] of an image file.
pub fn read_rgb(path: &Path) -> Result<(Vec<u8>, usize, usize)> {
    decode_rgb(&read_at_most(path, MAX_IMAGE_FILE_BYTES as u64)?)
        .with_context(|| path.display().to_string())
}

/// [`decode_luma`] of a mask file.
pub fn read_luma(path: &Path) -> Result<(Vec<u8>, usize, usize)> {
    decode_luma(&read_at_most(path, MAX_IMAGE_FILE_BYTES as u64)?)
        .with_context(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(color: image::ColorType, w: u32, h: u32, raw: &[u8]) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::write_buffer_with_format(&mut out, raw, w, h, color, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    /// An opaque image decodes to its own pixels, whether stored as RGB or as
    /// RGBA with full alpha; a transparent pixel lands on white, a half
    /// transparent one half way.
    #[test]
    fn images_decode_to_rgb_on_white() {
        let rgb: Vec<u8> = (0..5 * 3 * 3).map(|i| (i * 37 % 256) as u8).collect();
        let rgba: Vec<u8> = rgb
            .chunks(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect();
        let opaque = decode_rgb(&png(image::ColorType::Rgb8, 5, 3, &rgb)).unwrap();
        assert_eq!(opaque, (rgb.clone(), 5, 3));
        let full_alpha = decode_rgb(&png(image::ColorType::Rgba8, 5, 3, &rgba)).unwrap();
        assert_eq!(full_alpha, (rgb, 5, 3));
        let see_through = [10, 20, 30, 0, 0, 0, 0, 128];
        let (px, w, h) = decode_rgb(&png(image::ColorType::Rgba8, 2, 1, &see_through)).unwrap();
        assert_eq!((px, w, h), (vec![255, 255, 255, 127, 127, 127], 2, 1));
    }
}
