//! The results: each image with its parameters, a download link, and buttons
//! to reuse its settings or inpaint it.

use leptos::prelude::*;

use crate::settings::Settings;
use crate::state::{AppState, ResultItem};

#[component]
pub fn Gallery() -> impl IntoView {
    let st = expect_context::<AppState>();
    view! {
        <section class="gallery" class:hidden=move || st.gallery.with(|g| g.is_empty())>
            <h2>"Results"</h2>
            <div class="grid">
                <For each=move || st.gallery.get() key=|it| it.id children=move |it: ResultItem| {
                    view! { <Figure it=it /> }
                } />
            </div>
        </section>
    }
}

#[component]
fn Figure(it: ResultItem) -> impl IntoView {
    let st = expect_context::<AppState>();
    let id = it.id;
    let newest = move || st.gallery.with(|g| g.first().map(|f| f.id)) == Some(id);
    let s = &it.settings;
    let prompt = if s.mode == "variations" {
        "(variation)"
    } else if s.prompt.is_empty() {
        "(no prompt)"
    } else {
        &s.prompt
    };
    let how = if s.pipeline == "unclip" {
        format!(
            "unCLIP, prior guidance {} ({} steps), decoder guidance {} ({} steps), SR {} steps",
            s.prior_guidance, s.prior_steps, s.decoder_guidance, s.decoder_steps, s.sr_steps
        )
    } else {
        format!("guidance {}, {} steps ({})", s.guidance, s.steps, s.sampler)
    };
    let caption = format!(
        "{prompt} — {how}, seed {}, {}px, {:.1} s",
        it.seed, it.size, it.seconds
    );
    let (for_reuse, for_inpaint, for_variations) = (it.clone(), it.clone(), it.clone());
    let reuse = move |_| {
        let s = for_reuse.settings.clone();
        let seed = for_reuse.seed;
        // Everything that made the image; the brush and the model list stay as they are.
        st.set(|cur| {
            *cur = Settings {
                seed,
                random_seed: false,
                brush: cur.brush,
                model: cur.model.clone(),
                custom_models: std::mem::take(&mut cur.custom_models),
                ..s
            }
        });
    };
    let inpaint = move |_| {
        st.inpaint_src.set(Some((
            for_inpaint.rgb.clone(),
            for_inpaint.size,
            for_inpaint.size,
        )));
        st.mask.clear();
        st.set(|s| {
            s.pipeline = "glide".into();
            s.mode = "inpaint".into();
        });
    };
    let variations = move |_| {
        st.variations_src.set(Some((
            for_variations.rgb.clone(),
            for_variations.size,
            for_variations.size,
        )));
        st.set(|s| {
            s.pipeline = "unclip".into();
            s.mode = "variations".into();
        });
    };
    view! {
        <figure>
            <img src=it.url.clone() alt=it.settings.prompt.clone()
                data-testid=move || if newest() { "result" } else { "gallery-image" } />
            <figcaption>{caption}</figcaption>
            <div class="row">
                <a href=it.url.clone() download=format!("webglide-{}.png", it.seed) data-testid="download">"Download PNG"</a>
                <button on:click=reuse>"Reuse settings"</button>
                <button data-testid="send-to-inpaint" class:hidden=move || !st.caps.get().inpaint
                    on:click=inpaint>"Inpaint this"</button>
                <button data-testid="send-to-variations" class:hidden=move || !st.caps.get().variations
                    on:click=variations>"Variations"</button>
            </div>
        </figure>
    }
}
