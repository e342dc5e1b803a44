//! The results: each image with its parameters, a download link, and buttons
//! to reuse its settings or inpaint it.

use leptos::prelude::*;

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
    let caption = format!(
        "{} — guidance {}, {} steps ({}), seed {}, {}px, {:.1} s",
        if it.settings.prompt.is_empty() {
            "(no prompt)"
        } else {
            &it.settings.prompt
        },
        it.settings.guidance,
        it.settings.steps,
        it.settings.sampler,
        it.seed,
        it.size,
        it.seconds
    );
    let (for_reuse, for_inpaint) = (it.clone(), it.clone());
    let reuse = move |_| {
        let s = for_reuse.settings.clone();
        let seed = for_reuse.seed;
        st.set(|cur| {
            cur.prompt = s.prompt;
            cur.guidance = s.guidance;
            cur.steps = s.steps;
            cur.sampler = s.sampler;
            cur.seed = seed;
            cur.random_seed = false;
            cur.upsample = s.upsample;
            cur.upsample_steps = s.upsample_steps;
            cur.mode = s.mode;
        });
    };
    let inpaint = move |_| {
        st.inpaint_src.set(Some((
            for_inpaint.rgb.clone(),
            for_inpaint.size,
            for_inpaint.size,
        )));
        st.mask.clear();
        st.set(|s| s.mode = "inpaint".into());
    };
    view! {
        <figure>
            <img src=it.url.clone() alt=it.settings.prompt.clone()
                data-testid=move || if newest() { "result" } else { "gallery-image" } />
            <figcaption>{caption}</figcaption>
            <div class="row">
                <a href=it.url.clone() download=format!("webglide-{}.png", it.seed) data-testid="download">"Download PNG"</a>
                <button on:click=reuse>"Reuse settings"</button>
                <button data-testid="send-to-inpaint" on:click=inpaint>"Inpaint this"</button>
            </div>
        </figure>
    }
}
