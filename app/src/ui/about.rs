//! The adapter report, the kernel self-check, and the licences.

use leptos::prelude::*;

use crate::state::{AppState, GpuStatus};

#[component]
pub fn About() -> impl IntoView {
    let st = expect_context::<AppState>();
    view! {
        <details class="about">
            <summary>"GPU and about"</summary>
            {move || match st.gpu_status.get() {
                GpuStatus::Ready { report, f16, .. } => view! {
                    <pre data-testid="adapter">{report}</pre>
                    <p data-testid="f16">{f16}</p>
                    <p data-testid="self-check">{move || st.self_check.get()}</p>
                }.into_any(),
                _ => ().into_any(),
            }}
            <h3>"About and licences"</h3>
            <ul>
                <li>"webglide (engine, shaders, app): MIT licence."</li>
                <li>"GLIDE architecture, sampling procedures and the BPE vocabulary (public/tokenizer): OpenAI's glide-text2im, MIT licence, © 2021 OpenAI."</li>
                <li>"The embedded demo model (GLIDE architecture, small) is trained by this project's trainer on Twemoji artwork and on synthetic scenes of coloured shapes that its own code draws; weights MIT. See NOTICE."</li>
                <li data-testid="twemoji-notice">"Emoji artwork used to train this model: Twemoji, Copyright 2019 Twitter, Inc and other contributors (maintained at github.com/jdecked/twemoji), licensed under CC BY 4.0 ("
                    <a href="licenses/CC-BY-4.0.txt">"licence text"</a>
                    ", https://creativecommons.org/licenses/by/4.0/). The images were rasterised, resized and placed on a white background for training; this model and its outputs are not made or endorsed by the Twemoji authors."</li>
                <li>"Emoji names and keywords: Unicode CLDR annotations, Copyright © 1991-2025 Unicode, Inc., Unicode License v3 (https://www.unicode.org/license.txt), via Emojibase (Copyright (c) 2017-2019 Miles Johnson, "
                    <a href="licenses/emojibase-data-MIT.txt">"MIT License"</a>
                    ")."</li>
                <li>"Libraries: wgpu (MIT/Apache-2.0), leptos (MIT), safetensors (Apache-2.0), png (MIT/Apache-2.0), sha2 (MIT/Apache-2.0), gloo (MIT/Apache-2.0)."</li>
                <li>"Fonts: none shipped; the page uses your system fonts."</li>
            </ul>
        </details>
    }
}
