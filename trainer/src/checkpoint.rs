//! `webglide-train checkpoint`: a run's EMA weights as the small checkpoint
//! committed to the repository (`trainer/checkpoints/<kind>/`), from which a
//! run continues on a new machine (fresh optimizer moments).
//!
//! The weights are stored in int8 with one f32 scale per row (`--dtype q8`,
//! the default: half of f16's bytes, and each session's commit adds to the
//! repository's packed size for good; the rounding, at most 1/254 of a row's
//! largest weight, is a few optimizer steps' worth) or in f16; vectors
//! (biases, norms) stay f16. Not the engine's q8 (`WeightData`: one f32 scale
//! per 32 values), which the shipped shards use: its scales make the
//! checkpoint 14 % larger in git's pack (3.10 MB against 2.73 MB, zlib, the
//! base's EMA at step 900), and the pack's budget is what limits commits.
//!
//! The rows of the 50257-token embedding that no training caption uses are
//! set to zero. Those rows never receive a gradient (AdamW moves a parameter
//! only by its gradient's moments, and there is no weight decay), so they
//! hold random initial values that mean nothing; as zeros they cost almost
//! nothing in git's compressed pack, where the embedding is over half of the
//! model's parameters.

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
    /// q8 (int8, one scale per row) or f16.
    #[arg(long, default_value = "q8")]
    pub dtype: String,
}

/// The name suffix of a q8 tensor's per-row scales (`<name>.q8_scale`).
pub const Q8_SCALE: &str = ".q8_scale";

pub fn run(args: &CheckpointArgs) -> Result<()> {
    let q8 = match args.dtype.as_str() {
        "q8" => true,
        "f16" => false,
        d => bail!("--dtype {d}: q8 or f16"),
    };
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
        &checkpoint_safetensors(&weights, q8)?,
    )?;
    write_atomic(&args.out.join("config.json"), &config)?;
    // The text-structure heads (~20 KB) go along, for `--text-aux` after a resume.
    let heads = crate::text_aux::head_path(&args.run);
    if heads.exists() {
        write_atomic(
            &crate::text_aux::head_path(&args.out),
            &std::fs::read(&heads)?,
        )?;
    }
    write_atomic(&args.out.join("state.json"), &serde_json::to_vec(&state)?)?;
    println!(
        "{}: step {}, {} samples; {} of {} token rows kept, {zeroed} zeroed ({})",
        args.out.display(),
        state.step,
        state.samples,
        vocab - zeroed,
        vocab,
        args.dtype
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

/// Rows (the first dimension) of `values` in int8, each with the scale
/// that maps its largest magnitude to 127; an all-zero row has scale 0.
fn quantize_rows(shape: &[usize], values: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let rows = shape.first().copied().unwrap_or(1).max(1);
    let width = values.len() / rows;
    let mut q = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(rows);
    for row in values.chunks(width.max(1)) {
        let scale = row.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
        q.extend(row.iter().map(|x| {
            if scale > 0.0 {
                (x / scale).round().clamp(-127.0, 127.0) as i8
            } else {
                0
            }
        }));
        scales.push(scale);
    }
    (q, scales)
}

/// The inverse of `quantize_rows`, checking sizes (the file may lie).
pub fn dequantize_rows(name: &str, shape: &[usize], q: &[u8], scales: &[f32]) -> Result<Vec<f32>> {
    let rows = shape.first().copied().unwrap_or(1);
    let numel: usize = shape.iter().product();
    if rows == 0 || scales.len() != rows || q.len() != numel {
        bail!(
            "{name}: int8 tensor of shape {shape:?} with {} values and {} scales",
            q.len(),
            scales.len()
        );
    }
    let width = numel / rows;
    Ok(q.chunks(width)
        .zip(scales)
        .flat_map(|(row, &s)| row.iter().map(move |&b| b as i8 as f32 * s))
        .collect())
}

/// The checkpoint file: matrices and kernels (two or more dimensions) in
/// int8 with per-row scales when `q8`, everything else in f16.
fn checkpoint_safetensors(tensors: &WeightMap, q8: bool) -> Result<Vec<u8>> {
    use safetensors::Dtype;
    let mut bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (n, (s, v)) in tensors {
        if q8 && s.len() >= 2 {
            let (q, scales) = quantize_rows(s, v);
            bytes.push((
                n.clone(),
                Dtype::I8,
                s.clone(),
                q.iter().map(|&b| b as u8).collect(),
            ));
            let sb = scales.iter().flat_map(|x| x.to_le_bytes()).collect();
            bytes.push((format!("{n}{Q8_SCALE}"), Dtype::F32, vec![scales.len()], sb));
        } else {
            let b = v
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect();
            bytes.push((n.clone(), Dtype::F16, s.clone(), b));
        }
    }
    let views = bytes
        .iter()
        .map(|(n, d, s, b)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b)?,
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

    #[test]
    fn a_q8_checkpoint_reads_back_within_half_a_step_per_row() {
        let mut w = WeightMap::new();
        let mut rng = Rng(11);
        let mut uniform = || rng.f32() * 2.0 - 1.0;
        // A conv kernel (odd sizes), an embedding with a zero row, a bias.
        let conv: Vec<f32> = (0..5 * 3 * 3 * 3)
            .map(|i| uniform() * (1 + i % 5) as f32)
            .collect();
        let mut emb: Vec<f32> = (0..7 * 4).map(|_| uniform() * 0.02).collect();
        emb[8..12].fill(0.0);
        let bias: Vec<f32> = (0..5).map(|_| uniform()).collect();
        w.insert("c.weight".into(), (vec![5, 3, 3, 3], conv.clone()));
        w.insert("token_embedding.weight".into(), (vec![7, 4], emb.clone()));
        w.insert("c.bias".into(), (vec![5], bias.clone()));
        let dir = std::env::temp_dir().join(format!("webglide-q8-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for q8 in [true, false] {
            let path = dir.join("ema.safetensors");
            std::fs::write(&path, checkpoint_safetensors(&w, q8).unwrap()).unwrap();
            let back = read_safetensors(&path).unwrap();
            assert_eq!(back.len(), 3, "scales are not weights");
            for (name, (shape, v)) in &w {
                let (s, got) = &back[name];
                assert_eq!(s, shape);
                let rows = shape[0];
                for (row, got_row) in v.chunks(v.len() / rows).zip(got.chunks(v.len() / rows)) {
                    let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let bound = if q8 && shape.len() >= 2 {
                        max / 254.0
                    } else {
                        max / 1024.0
                    };
                    for (a, b) in row.iter().zip(got_row) {
                        assert!(
                            (a - b).abs() <= bound * 1.0001 + 1e-12,
                            "{name}: {a} vs {b}"
                        );
                    }
                }
            }
            assert!(back["token_embedding.weight"].1[8..12]
                .iter()
                .all(|&x| x == 0.0));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_q8_tensor_without_its_scales_or_with_the_wrong_count_is_refused() {
        assert!(dequantize_rows("x", &[2, 3], &[0; 6], &[1.0]).is_err());
        assert!(dequantize_rows("x", &[2, 3], &[0; 5], &[1.0, 1.0]).is_err());
        assert!(dequantize_rows("x", &[0, 3], &[], &[]).is_err());
        assert_eq!(
            dequantize_rows("x", &[2, 2], &[1, 255, 127, 0], &[0.5, 2.0]).unwrap(),
            [0.5, -0.5, 254.0, 0.0]
        );
        let q = checkpoint_safetensors(
            &WeightMap::from([("m".to_string(), (vec![2, 2], vec![1.0, -1.0, 0.5, 0.25]))]),
            true,
        )
        .unwrap();
        // Drop the scales: rebuild the file with the int8 tensor alone.
        let st = safetensors::SafeTensors::deserialize(&q).unwrap();
        let m = st.tensor("m").unwrap();
        let alone = safetensors::serialize([("m", m)], None).unwrap();
        let path = std::env::temp_dir().join(format!(
            "webglide-q8-alone-{}.safetensors",
            std::process::id()
        ));
        std::fs::write(&path, alone).unwrap();
        let err = read_safetensors(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains("without m.q8_scale"), "{err}");
    }
}
