//! Pixels in and out of the page: canvases, PNG files with the generation
//! parameters in text chunks, and decoding of uploaded images (the browser's
//! own PNG/JPEG/WebP decoders, through `createImageBitmap`).

use js_sys::{Array, Uint8Array};
use wasm_bindgen::{Clamped, JsCast};
use wasm_bindgen_futures::JsFuture;
use web_sys::{CanvasRenderingContext2d, HtmlCanvasElement};

use crate::store::js_err;

pub fn context(canvas: &HtmlCanvasElement) -> Result<CanvasRenderingContext2d, String> {
    canvas
        .get_context("2d")
        .map_err(js_err)?
        .ok_or("no 2D canvas context")?
        .dyn_into()
        .map_err(|_| "no 2D canvas context".to_string())
}

fn rgba(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 255])
        .collect()
}

/// Shows images (RGB8, `size`²) side by side on a canvas.
pub fn draw_rgb(canvas: &HtmlCanvasElement, images: &[Vec<u8>], size: u32) -> Result<(), String> {
    let n = images.len().max(1) as u32;
    if canvas.width() != size * n || canvas.height() != size {
        canvas.set_width(size * n);
        canvas.set_height(size);
    }
    let ctx = context(canvas)?;
    for (i, img) in images.iter().enumerate() {
        let data = rgba(img);
        let id = web_sys::ImageData::new_with_u8_clamped_array_and_sh(Clamped(&data), size, size)
            .map_err(js_err)?;
        ctx.put_image_data(&id, (i as u32 * size) as f64, 0.0)
            .map_err(js_err)?;
    }
    Ok(())
}

/// An RGB8 image as PNG bytes with `params` as iTXt chunks.
pub fn png_bytes(rgb: &[u8], size: u32, params: &[(String, String)]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, size, size);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    for (k, v) in params {
        enc.add_itxt_chunk(k.clone(), v.clone())
            .map_err(|e| e.to_string())?;
    }
    let mut w = enc.write_header().map_err(|e| e.to_string())?;
    w.write_image_data(rgb).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

pub fn blob_url(bytes: &[u8], mime: &str) -> Result<String, String> {
    let opts = web_sys::BlobPropertyBag::new();
    opts.set_type(mime);
    let blob = web_sys::Blob::new_with_u8_array_sequence_and_options(
        &Array::of1(&Uint8Array::from(bytes)),
        &opts,
    )
    .map_err(js_err)?;
    web_sys::Url::create_object_url_with_blob(&blob).map_err(js_err)
}

pub fn new_canvas(w: u32, h: u32) -> Result<HtmlCanvasElement, String> {
    let canvas: HtmlCanvasElement = web_sys::window()
        .and_then(|w| w.document())
        .ok_or("no document")?
        .create_element("canvas")
        .map_err(js_err)?
        .unchecked_into();
    canvas.set_width(w);
    canvas.set_height(h);
    Ok(canvas)
}

/// Decodes an uploaded file (any format the browser reads) to RGB8.
pub async fn decode(file: &web_sys::File) -> Result<(Vec<u8>, usize, usize), String> {
    let bad = |e| {
        format!(
            "{}: not a readable image ({}); use PNG, JPEG or WebP",
            file.name(),
            js_err(e)
        )
    };
    let max = engine::limits::MAX_IMAGE_FILE_BYTES;
    if file.size() > max as f64 {
        return Err(format!(
            "{}: {} bytes, at most {max} accepted",
            file.name(),
            file.size()
        ));
    }
    let window = web_sys::window().ok_or("no window")?;
    let promise = window.create_image_bitmap_with_blob(file).map_err(bad)?;
    let bmp: web_sys::ImageBitmap = JsFuture::from(promise).await.map_err(bad)?.unchecked_into();
    let (w, h) = (bmp.width(), bmp.height());
    engine::limits::check_image(w as usize, h as usize)
        .map_err(|e| format!("{}: {e}", file.name()))?;
    let canvas = new_canvas(w, h)?;
    let ctx = context(&canvas)?;
    ctx.draw_image_with_image_bitmap(&bmp, 0.0, 0.0)
        .map_err(js_err)?;
    let data = ctx
        .get_image_data(0.0, 0.0, w as f64, h as f64)
        .map_err(js_err)?
        .data();
    // Transparent pixels are composited on white, as a viewer shows them.
    let rgb = engine::glide::pipeline::rgba8_on_white(&data);
    Ok((rgb, w as usize, h as usize))
}

/// Draws an RGB8 image of any size scaled to fill the canvas.
pub fn draw_scaled(
    canvas: &HtmlCanvasElement,
    rgb: &[u8],
    w: usize,
    h: usize,
) -> Result<(), String> {
    let src = new_canvas(w as u32, h as u32)?;
    let data = web_sys::ImageData::new_with_u8_clamped_array_and_sh(
        wasm_bindgen::Clamped(&rgba(rgb)),
        w as u32,
        h as u32,
    )
    .map_err(js_err)?;
    context(&src)?
        .put_image_data(&data, 0.0, 0.0)
        .map_err(js_err)?;
    let ctx = context(canvas)?;
    ctx.clear_rect(0.0, 0.0, canvas.width() as f64, canvas.height() as f64);
    ctx.draw_image_with_html_canvas_element_and_dw_and_dh(
        &src,
        0.0,
        0.0,
        canvas.width() as f64,
        canvas.height() as f64,
    )
    .map_err(js_err)
}
