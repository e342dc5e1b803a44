//! The inpainting canvas: the source image (squashed to a square, as the
//! model sees it) under a transparent overlay where the user paints the
//! region to regenerate. Brush, eraser, clear, invert and undo.

use leptos::html;
use leptos::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{HtmlCanvasElement, ImageData};

use crate::imageio::{context, draw_rgb, new_canvas};

/// Resolution of the mask overlay (the upsampler's output size).
pub const MASK_SIZE: u32 = 256;
const PAINT: &str = "rgba(255, 48, 96, 1)";

/// Handles the page keeps to read the painted mask and reset it.
#[derive(Clone, Copy)]
pub struct MaskHandle {
    pub canvas: NodeRef<html::Canvas>,
    undo: StoredValue<Vec<ImageData>, LocalStorage>,
}

impl MaskHandle {
    pub fn new() -> Self {
        MaskHandle {
            canvas: NodeRef::new(),
            undo: StoredValue::new_local(Vec::new()),
        }
    }

    fn ctx(&self) -> Option<(HtmlCanvasElement, web_sys::CanvasRenderingContext2d)> {
        let c = self.canvas.get_untracked()?;
        let ctx = context(&c).ok()?;
        Some((c, ctx))
    }

    fn snapshot(&self) {
        if let Some((_, ctx)) = self.ctx() {
            if let Ok(d) = ctx.get_image_data(0.0, 0.0, MASK_SIZE as f64, MASK_SIZE as f64) {
                self.undo.update_value(|u| {
                    u.push(d);
                    if u.len() > 50 {
                        u.remove(0);
                    }
                });
            }
        }
    }

    pub fn clear(&self) {
        self.snapshot();
        if let Some((_, ctx)) = self.ctx() {
            ctx.clear_rect(0.0, 0.0, MASK_SIZE as f64, MASK_SIZE as f64);
        }
    }

    /// Painted ↔ unpainted.
    pub fn invert(&self) {
        self.snapshot();
        if let Some((_, ctx)) = self.ctx() {
            let Ok(d) = ctx.get_image_data(0.0, 0.0, MASK_SIZE as f64, MASK_SIZE as f64) else {
                return;
            };
            let mut px = d.data().0;
            for p in px.chunks_exact_mut(4) {
                let a = 255 - p[3];
                p.copy_from_slice(&[255, 48, 96, a]);
            }
            if let Ok(d) = ImageData::new_with_u8_clamped_array_and_sh(
                wasm_bindgen::Clamped(&px),
                MASK_SIZE,
                MASK_SIZE,
            ) {
                let _ = ctx.put_image_data(&d, 0.0, 0.0);
            }
        }
    }

    pub fn undo(&self) {
        let last = self.undo.try_update_value(|u| u.pop()).flatten();
        if let (Some(d), Some((_, ctx))) = (last, self.ctx()) {
            let _ = ctx.put_image_data(&d, 0.0, 0.0);
        }
    }

    /// The painted region as 1 = regenerate (`MASK_SIZE`², soft edges fractional).
    pub fn regen(&self) -> Option<Vec<f32>> {
        let (_, ctx) = self.ctx()?;
        let d = ctx
            .get_image_data(0.0, 0.0, MASK_SIZE as f64, MASK_SIZE as f64)
            .ok()?;
        Some(
            d.data()
                .0
                .chunks_exact(4)
                .map(|p| p[3] as f32 / 255.0)
                .collect(),
        )
    }
}

/// Draws the source into the square under the overlay.
fn show_source(canvas: &HtmlCanvasElement, src: &(Vec<u8>, usize, usize)) -> Result<(), String> {
    let (rgb, w, h) = src;
    let tmp = new_canvas(*w as u32, *h as u32)?;
    let ctx = context(&tmp)?;
    // draw_rgb wants a square; draw row-major RGB of any shape directly.
    let rgba: Vec<u8> = rgb
        .chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 255])
        .collect();
    let id = ImageData::new_with_u8_clamped_array_and_sh(
        wasm_bindgen::Clamped(&rgba),
        *w as u32,
        *h as u32,
    )
    .map_err(crate::store::js_err)?;
    ctx.put_image_data(&id, 0.0, 0.0)
        .map_err(crate::store::js_err)?;
    canvas.set_width(MASK_SIZE);
    canvas.set_height(MASK_SIZE);
    let out = context(canvas)?;
    out.set_image_smoothing_enabled(true);
    out.draw_image_with_html_canvas_element_and_dw_and_dh(
        &tmp,
        0.0,
        0.0,
        MASK_SIZE as f64,
        MASK_SIZE as f64,
    )
    .map_err(crate::store::js_err)
}

#[component]
pub fn MaskEditor(
    handle: MaskHandle,
    source: RwSignal<Option<(Vec<u8>, usize, usize)>>,
    brush: Signal<u32>,
) -> impl IntoView {
    let source_ref = NodeRef::<html::Canvas>::new();
    let eraser = RwSignal::new(false);
    let last = StoredValue::new_local(None::<(f64, f64)>);

    Effect::new(move |_| {
        let src = source.get();
        if let Some(c) = source_ref.get() {
            match &src {
                Some(s) => {
                    let _ = show_source(&c, s);
                }
                None => {
                    let _ = draw_rgb(&c, &[vec![236; 3 * 16 * 16]], 16);
                }
            }
        }
    });

    let pos = move |ev: &web_sys::PointerEvent| -> Option<(f64, f64)> {
        let c: HtmlCanvasElement = ev.target()?.dyn_into().ok()?;
        let r = c.get_bounding_client_rect();
        if r.width() <= 0.0 || r.height() <= 0.0 {
            return None;
        }
        Some((
            (ev.client_x() as f64 - r.left()) * MASK_SIZE as f64 / r.width(),
            (ev.client_y() as f64 - r.top()) * MASK_SIZE as f64 / r.height(),
        ))
    };
    let stroke = move |from: (f64, f64), to: (f64, f64)| {
        let Some((_, ctx)) = handle.ctx() else { return };
        let _ = ctx.set_global_composite_operation(if eraser.get_untracked() {
            "destination-out"
        } else {
            "source-over"
        });
        ctx.set_stroke_style_str(PAINT);
        ctx.set_fill_style_str(PAINT);
        ctx.set_line_cap("round");
        ctx.set_line_width(brush.get_untracked() as f64);
        ctx.begin_path();
        ctx.move_to(from.0, from.1);
        ctx.line_to(to.0, to.1);
        ctx.stroke();
        ctx.begin_path();
        let _ = ctx.arc(
            to.0,
            to.1,
            brush.get_untracked() as f64 / 2.0,
            0.0,
            std::f64::consts::TAU,
        );
        ctx.fill();
    };

    view! {
        <div class="mask-editor">
            <div class="mask-stack">
                <canvas node_ref=source_ref class="mask-source" width="16" height="16"></canvas>
                <canvas
                    node_ref=handle.canvas
                    data-testid="mask-canvas"
                    class="mask-overlay"
                    width=MASK_SIZE
                    height=MASK_SIZE
                    on:pointerdown=move |ev: web_sys::PointerEvent| {
                        ev.prevent_default();
                        if let Some(p) = pos(&ev) {
                            handle.snapshot();
                            if let Some(t) = ev.target().and_then(|t| t.dyn_into::<web_sys::Element>().ok()) {
                                let _ = t.set_pointer_capture(ev.pointer_id());
                            }
                            stroke(p, p);
                            last.set_value(Some(p));
                        }
                    }
                    on:pointermove=move |ev: web_sys::PointerEvent| {
                        if let (Some(from), Some(to)) = (last.get_value(), pos(&ev)) {
                            stroke(from, to);
                            last.set_value(Some(to));
                        }
                    }
                    on:pointerup=move |_| last.set_value(None)
                    on:pointercancel=move |_| last.set_value(None)
                ></canvas>
            </div>
            <div class="mask-tools">
                <button
                    class:active=move || !eraser.get()
                    on:click=move |_| eraser.set(false)
                >"Brush"</button>
                <button
                    data-testid="eraser"
                    class:active=move || eraser.get()
                    on:click=move |_| eraser.set(true)
                >"Eraser"</button>
                <button data-testid="mask-undo" on:click=move |_| handle.undo()>"Undo"</button>
                <button data-testid="mask-clear" on:click=move |_| handle.clear()>"Clear"</button>
                <button data-testid="mask-invert" on:click=move |_| handle.invert()>"Invert"</button>
            </div>
        </div>
    }
}
