//! The right column: the inpainting source and mask editor, the source of
//! unCLIP's image variations, and the live preview.

use leptos::prelude::*;
use wasm_bindgen::JsCast;

use crate::imageio;
use crate::mask::MaskEditor;
use crate::state::AppState;

/// Decodes the file an `<input type=file>` change event picked and hands the
/// RGB8 image to `take`; an unreadable file is an error in the page.
fn decode_upload(
    st: AppState,
    ev: web_sys::Event,
    take: impl FnOnce((Vec<u8>, usize, usize)) + 'static,
) {
    let Some(file) = ev
        .target()
        .and_then(|t| t.dyn_into::<web_sys::HtmlInputElement>().ok())
        .and_then(|input| input.files())
        .and_then(|f| f.get(0))
    else {
        return;
    };
    leptos::task::spawn_local(async move {
        match imageio::decode(&file).await {
            Ok(img) => {
                st.error.set(None);
                take(img);
            }
            Err(e) => st.fail(e),
        }
    });
}

#[component]
pub fn CanvasColumn() -> impl IntoView {
    let st = expect_context::<AppState>();
    let settings = st.settings;
    let brush = Signal::derive(move || settings.with(|s| s.brush));
    let on_upload = move |ev| {
        decode_upload(st, ev, move |img| {
            st.inpaint_src.set(Some(img));
            st.mask.clear();
        })
    };
    let on_variations_upload =
        move |ev| decode_upload(st, ev, move |img| st.variations_src.set(Some(img)));
    let source_ref = NodeRef::<leptos::html::Canvas>::new();
    // Show the variations source (squashed to the canvas, as the visual tower sees it).
    Effect::new(move |_| {
        if let (Some(c), Some((rgb, w, h))) = (source_ref.get(), st.variations_src.get()) {
            let _ = imageio::draw_scaled(&c, &rgb, w, h);
        }
    });
    let variations = move || st.unclip_selected() && settings.with(|s| s.mode == "variations");
    view! {
        <div class="canvas-column">
            <div class:hidden=move || !variations()>
                <h3>"Image variations"</h3>
                <p class="hint">"Upload an image, or use a result's “Variations” button: unCLIP draws new images with its CLIP embedding."</p>
                <input type="file" accept="image/png,image/jpeg,image/webp" data-testid="variations-upload" on:change=on_variations_upload />
                <canvas node_ref=source_ref data-testid="variations-source" class="preview" width="128" height="128"></canvas>
            </div>
            <div class:hidden=move || st.unclip_selected() || settings.with(|s| s.mode != "inpaint")>
                <h3>"Inpainting"</h3>
                <p class="hint">"Paint the region to regenerate; the rest of the image is kept."</p>
                <input type="file" accept="image/png,image/jpeg,image/webp" data-testid="upload" on:change=on_upload />
                <MaskEditor handle=st.mask source=st.inpaint_src brush=brush />
                <label>"Brush size "
                    <input type="range" min="2" max="96" step="1" data-testid="brush-size"
                        prop:value=move || settings.with(|s| s.brush.to_string())
                        on:input=move |ev| {
                            if let Ok(v) = event_target_value(&ev).parse::<u32>() { st.set(|s| s.brush = v.clamp(2, 96)) }
                        } />
                </label>
            </div>
            <h3>"Preview"</h3>
            <canvas node_ref=st.preview data-testid="preview" class="preview" width="64" height="64"></canvas>
        </div>
    }
}
