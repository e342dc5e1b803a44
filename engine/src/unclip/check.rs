//! Parity checks of unCLIP parts against the official fixtures
//! (`../shared/fixtures/unclip/`), shared by the tests and `webglide check-fixture`.

use crate::error::{Error, Result};
use crate::glide::check::{Report, Tensors};
use crate::glide::weights::{Loader, WeightSource};
use crate::gpu::Gpu;
use crate::quant::WeightDType;
use crate::unclip::clip::{ClipText, ClipTextConfig};
use crate::unclip::tokenizer::ClipTokenizer;

/// One tokenizer case: the text and what differs (None = exact).
pub struct TokenizerCase {
    pub text: String,
    pub mismatch: Option<String>,
}

/// Every entry of `tokenizer/tokens.json`: the raw BPE ids and the padded
/// tokens and mask at the file's context length must equal the official ones.
pub fn check_tokenizer(tok: &ClipTokenizer, tokens_json: &[u8]) -> Result<Vec<TokenizerCase>> {
    let bad = |m: &str| Error::Invalid(format!("tokens.json: {m}"));
    let v: serde_json::Value =
        serde_json::from_slice(tokens_json).map_err(|e| bad(&e.to_string()))?;
    let ctx = v["text_ctx"].as_u64().ok_or_else(|| bad("no text_ctx"))? as usize;
    if !(2..=4096).contains(&ctx) {
        return Err(bad("text_ctx out of range"));
    }
    let ids = |x: &serde_json::Value, what: &str| -> Result<Vec<u32>> {
        x.as_array()
            .ok_or_else(|| bad(what))?
            .iter()
            .map(|n| {
                // Masks are booleans, ids numbers.
                n.as_bool()
                    .map(u64::from)
                    .or_else(|| n.as_u64())
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| bad(what))
            })
            .collect()
    };
    let entries = v["entries"].as_array().ok_or_else(|| bad("no entries"))?;
    entries
        .iter()
        .map(|e| {
            let text = e["text"]
                .as_str()
                .ok_or_else(|| bad("entry without text"))?;
            let (want_bpe, want_tokens, want_mask) = (
                ids(&e["bpe_ids"], "bpe_ids")?,
                ids(&e["tokens"], "tokens")?,
                ids(&e["mask"], "mask")?,
            );
            let got_bpe = tok.encode(text);
            let (tokens, mask) = tok.padded(text, ctx);
            let mismatch = if got_bpe != want_bpe {
                Some(format!("bpe ids {got_bpe:?}, expected {want_bpe:?}"))
            } else if tokens != want_tokens || mask != want_mask {
                Some(format!("padded tokens/mask differ: {tokens:?} {mask:?}"))
            } else {
                None
            };
            Ok(TokenizerCase {
                text: text.to_string(),
                mismatch,
            })
        })
        .collect()
}

#[derive(serde::Deserialize)]
struct ClipCase {
    ctor_args_in_order: ClipTextConfig,
}

/// `clip_text/`: the text tower built from `config.json` alone, run on the
/// recorded tokens, every recorded intermediate compared.
pub async fn check_clip_text(
    gpu: &Gpu,
    config_json: &[u8],
    weights: &WeightSource<'_>,
    io: &[u8],
    tol: f64,
    dtype: WeightDType,
) -> Result<Report> {
    let case: ClipCase = serde_json::from_slice(config_json)
        .map_err(|e| Error::Invalid(format!("config.json: {e}")))?;
    let loader = Loader::new(gpu, weights, dtype)?;
    let clip = ClipText::load(gpu, case.ctor_args_in_order, &loader)?;
    // The visual tower and logit_scale belong to other checks.
    loader.finish_except(&["visual.", "logit_scale"])?;
    let io = Tensors::new(io, "io.safetensors")?;
    let (_, tokens) = io.get("text.tokens")?;
    let tokens: Vec<u32> = tokens.iter().map(|&t| t as u32).collect();
    let mut cap = Vec::new();
    let mut rec = gpu.recorder();
    let feats = clip.encode(&mut rec, &tokens, Some(&mut cap))?;
    rec.submit()?;
    cap.push(("txt_feat_seq".into(), feats.txt_feat_seq));
    let mut report = Report::default();
    for (name, t) in cap {
        let want = io.get(&format!("text.{name}"))?.1;
        report.push(format!("text.{name}"), &gpu.read(&t).await?, &want, tol);
    }
    Ok(report)
}
