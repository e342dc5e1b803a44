//! `webglide-train checkpoint`: a run's EMA weights as the small checkpoint
//! committed to the repository (`trainer/checkpoints/<kind>/`), from which a
//! run continues on a new machine (fresh optimizer moments).
//!
//! The weights are stored in f16, and the rows of the 50257-token embedding
//! that no training caption uses are set to zero. Those rows never receive a
//! gradient (AdamW moves a parameter only by its gradient's moments, and
//! there is no weight decay), so they hold random initial values that mean
//! nothing; as zeros they cost almost nothing in git's compressed pack, where
//! the embedding is over half of the model's parameters.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use engine::demo::shapes::{COLORS, RELATIONS, SHAPES};
use engine::glide::tokenizer::{GlideTokenizer, END_TOKEN};

use crate::emoji::Emoji;
use crate::model::WeightMap;
use crate::train::{read_safetensors, tokenizer, write_atomic, State};

#[derive(clap::Args)]
pub struct CheckpointArgs {
    /// The run folder (its ema.safetensors, config.json and state.json).
    #[arg(long)]
    pub run: PathBuf,
    /// Where to write the checkpoint (created; its files are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// The emoji cache the run trained on (its captions' tokens are kept);
    /// without it, the shapes captions' tokens only.
    #[arg(long)]
    pub emoji: Option<PathBuf>,
}

pub fn run(args: &CheckpointArgs) -> Result<()> {
    let state: State = serde_json::from_slice(
        &std::fs::read(args.run.join("state.json"))
            .with_context(|| format!("{}: no state.json", args.run.display()))?,
    )?;
    if !["base", "base-inpaint", "upsample"].contains(&state.kind.as_str()) {
        bail!(
            "{}: a {} run; checkpoints are for the GLIDE kinds",
            args.run.display(),
            state.kind
        );
    }
    let config = std::fs::read(args.run.join("config.json"))
        .with_context(|| format!("{}: no config.json", args.run.display()))?;
    let mut weights = read_safetensors(&args.run.join("ema.safetensors"))?;
    let emoji = args.emoji.as_deref().map(Emoji::load).transpose()?;
    let used = used_tokens(&tokenizer()?, emoji.as_ref());
    let (shape, values) = weights
        .get_mut("token_embedding.weight")
        .context("ema.safetensors has no token_embedding.weight")?;
    let vocab = shape.first().copied().unwrap_or(0);
    let zeroed = zero_unused_rows(shape, values, &used)?;
    std::fs::create_dir_all(&args.out)?;
    write_atomic(
        &args.out.join("ema.safetensors"),
        &f16_safetensors(&weights)?,
    )?;
    write_atomic(&args.out.join("config.json"), &config)?;
    write_atomic(&args.out.join("state.json"), &serde_json::to_vec(&state)?)?;
    println!(
        "{}: step {}, {} samples; {} of {} token rows kept, {zeroed} zeroed (f16)",
        args.out.display(),
        state.step,
        state.samples,
        vocab - zeroed,
        vocab
    );
    Ok(())
}

/// Every token id a training caption can hold: the shapes scenes' captions
/// and, with `emoji`, every sampled entry's. GPT-2's BPE splits text into
/// words before merging, so a word's tokens depend only on the space before
/// it, and these templates cover every position a word takes.
pub fn used_tokens(tok: &GlideTokenizer, emoji: Option<&Emoji>) -> BTreeSet<u32> {
    let mut used = BTreeSet::from([END_TOKEN]);
    for (c, _) in COLORS {
        for s in SHAPES {
            for r in RELATIONS {
                used.extend(tok.encode(&format!("a {c} {s} {r} a {c} {s} and a {c} {s}")));
            }
        }
    }
    if let Some(e) = emoji {
        used.extend(e.caption_tokens(tok));
    }
    used
}

/// Zeroes the rows of a `[vocab, width]` embedding whose token is not in
/// `used`; returns how many.
fn zero_unused_rows(shape: &[usize], values: &mut [f32], used: &BTreeSet<u32>) -> Result<usize> {
    let &[vocab, width] = shape else {
        bail!("token_embedding.weight: shape {shape:?}, not [vocab, width]");
    };
    if values.len() != vocab * width {
        bail!(
            "token_embedding.weight: {} values for {shape:?}",
            values.len()
        );
    }
    let mut zeroed = 0;
    for (token, row) in values.chunks_mut(width).enumerate() {
        if !used.contains(&(token as u32)) {
            row.fill(0.0);
            zeroed += 1;
        }
    }
    Ok(zeroed)
}

fn f16_safetensors(tensors: &WeightMap) -> Result<Vec<u8>> {
    let bytes: Vec<(&str, &[usize], Vec<u8>)> = tensors
        .iter()
        .map(|(n, (s, v))| {
            let b = v
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect();
            (n.as_str(), s.as_slice(), b)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| {
            Ok((
                n.to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F16, s.to_vec(), b)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::serialize(views, None)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::demo::shapes::{held_out, Rng, Scene};

    #[test]
    fn every_shapes_caption_uses_only_kept_tokens_and_few_rows_are_kept() {
        let tok = tokenizer().unwrap();
        let used = used_tokens(&tok, None);
        let mut rng = Rng(3);
        for _ in 0..3000 {
            let s = Scene::random(&mut rng, &|c, sh| !held_out(c, sh));
            let ids = tok.encode(&s.caption());
            assert!(ids.iter().all(|t| used.contains(t)), "{}", s.caption());
        }
        assert!(used.len() < 100, "{}", used.len());
    }

    #[test]
    fn unused_rows_become_zero_and_used_ones_stay() {
        let used = BTreeSet::from([1, 3]);
        let mut v: Vec<f32> = (1..=8).map(|x| x as f32).collect();
        assert_eq!(zero_unused_rows(&[4, 2], &mut v, &used).unwrap(), 2);
        assert_eq!(v, [0.0, 0.0, 3.0, 4.0, 0.0, 0.0, 7.0, 8.0]);
        assert!(zero_unused_rows(&[8], &mut v, &used).is_err());
        assert!(zero_unused_rows(&[3, 2], &mut v, &used).is_err());
    }
}
