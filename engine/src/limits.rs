//! What webglide accepts from outside, in one place (the table in
//! `docs/reliability.md`): anything over these limits gets a clear error,
//! in the CLI and in the page, before it can cost memory or time.

use crate::error::{Error, Result};

/// Longest side of an image or mask a user gives us (inpainting sources,
/// variations, masks). Every model input is 64–256 px; a phone photo is ~4000.
pub const MAX_IMAGE_SIDE: usize = 8192;
/// Pixels of such an image (a 16 MP phone photo is 4896 × 3264; RGBA8 of
/// 16 MP is 64 MiB, and squashing it to the model's size costs ~8 multiply-adds
/// a pixel and channel: decoding it and resizing it twice took 1.2 s at 24 MP
/// in the fuzzing build, over the 1-s bound a hang is, 0.8 s at 16 MP).
pub const MAX_IMAGE_PIXELS: usize = 16_000_000;
/// Bytes of an image file.
pub const MAX_IMAGE_FILE_BYTES: usize = 64 << 20;
/// Bytes of a prompt. The tokenizers keep the first 128 (GLIDE) or 77 (CLIP)
/// tokens as the official code does, but byte-pair merging costs the square
/// of a word's length: megabytes of text would stall the page.
pub const MAX_PROMPT_BYTES: usize = 2048;
/// Images per GLIDE run (its CFG batch is twice this).
pub const MAX_GLIDE_BATCH: usize = 64;
/// Images per unCLIP run (its CFG batch is twice this; every stage keeps all
/// of them resident).
pub const MAX_UNCLIP_BATCH: usize = 16;

/// A converted model folder (`manifest.json` + safetensors shards; our
/// converter writes shards of ≤ 64 MiB, Karlo's largest folder is ~5.5 GB f32).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
pub const MAX_TENSORS: usize = 100_000;
pub const MAX_SHARDS: usize = 4096;
pub const MAX_SHARD_BYTES: u64 = 2 << 30;
pub const MAX_MODEL_BYTES: u64 = 32 << 30;

/// A shard's file name is a plain name (letters, digits, `.`, `_`, `-`, not
/// starting with `.`): the CLI joins it to the folder and the page to the
/// folder's URL, so `../` or `/etc/…` must not reach either.
pub fn check_shard_name(name: &str) -> Result<()> {
    let plain = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if plain {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "manifest.json: shard file name {name:?} is not a plain file name"
        )))
    }
}

/// A file from outside read whole, refused before reading when it is larger
/// than `max` bytes (what a manifest says a shard holds, or a limit).
#[cfg(not(target_arch = "wasm32"))]
pub fn read_at_most(path: &std::path::Path, max: u64) -> Result<Vec<u8>> {
    let err = |e: std::io::Error| Error::Invalid(format!("reading {}: {e}", path.display()));
    let len = std::fs::metadata(path).map_err(err)?.len();
    if len > max {
        return Err(Error::Invalid(format!(
            "{}: {len} bytes, at most {max} expected",
            path.display()
        )));
    }
    std::fs::read(path).map_err(err)
}

/// An image of `w × h` pixels is within the limits.
pub fn check_image(w: usize, h: usize) -> Result<()> {
    if w == 0 || h == 0 {
        return Err(Error::Invalid(format!("an empty image ({w}×{h})")));
    }
    if w.max(h) > MAX_IMAGE_SIDE || w.saturating_mul(h) > MAX_IMAGE_PIXELS {
        return Err(Error::Invalid(format!(
            "a {w}×{h} image is too large ({})",
            image_limits()
        )));
    }
    Ok(())
}

/// The image limits as the errors state them (also where a decoder refuses
/// an image before we know its size).
pub fn image_limits() -> String {
    format!(
        "at most {MAX_IMAGE_SIDE} px a side and {} MP",
        MAX_IMAGE_PIXELS / 1_000_000
    )
}

/// A prompt is within the limits.
pub fn check_prompt(text: &str) -> Result<()> {
    if text.len() > MAX_PROMPT_BYTES {
        return Err(Error::Invalid(format!(
            "a prompt of {} bytes (at most {MAX_PROMPT_BYTES}; the models read its first 77–128 tokens)",
            text.len()
        )));
    }
    Ok(())
}

/// A batch of `batch` images is within 1..=`max` (checked before anything
/// of that size is allocated).
pub fn check_batch(batch: usize, max: usize) -> Result<()> {
    if batch == 0 || batch > max {
        return Err(Error::Invalid(format!("batch size {batch} (1..={max})")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_reject_what_they_name() {
        assert!(check_image(4000, 3000).is_ok());
        assert!(check_image(0, 10).is_err());
        assert!(check_image(MAX_IMAGE_SIDE + 1, 1).is_err());
        assert!(check_image(4896, 3264).is_ok()); // 16 MP
        assert!(check_image(6000, 4000).is_err()); // 24 MP
        assert!(check_image(8000, 8000).is_err()); // 64 MP
        assert!(check_image(usize::MAX, usize::MAX).is_err());
        assert!(check_prompt(&"a".repeat(MAX_PROMPT_BYTES)).is_ok());
        assert!(check_prompt(&"a".repeat(MAX_PROMPT_BYTES + 1)).is_err());
        assert!(check_batch(1, MAX_GLIDE_BATCH).is_ok());
        assert!(check_batch(MAX_GLIDE_BATCH, MAX_GLIDE_BATCH).is_ok());
        for bad in [0, MAX_GLIDE_BATCH + 1, usize::MAX] {
            assert!(check_batch(bad, MAX_GLIDE_BATCH).is_err(), "{bad}");
        }
        assert!(check_shard_name("model-00001.safetensors").is_ok());
        for bad in ["", "../x", "/etc/passwd", ".hidden", "a/b", "a\\b", "é"] {
            assert!(check_shard_name(bad).is_err(), "{bad}");
        }
    }
}
