//! `webglide convert`: released GLIDE checkpoints (`.pt`, f32 or f16) to
//! safetensors shards (≤ 64 MiB) + `manifest.json`, in pure Rust. Writes into a
//! temporary folder and renames it into place only when everything succeeded,
//! so a failure never leaves a partial output folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use engine::glide::clip::NoisyClipConfig;
use engine::glide::model::{quantizable, GlideConfig};
use engine::glide::weights::{sha256_hex, Manifest, ModelConfig, Shard, StoredTensor};
use engine::unclip::weights::{UnclipConfig, CLIP_MEAN, CLIP_STD};
use engine::{WeightDType, WeightData};

use webglide_cli::pickle::{read_checkpoint, Checkpoint, DType, NamedTensor};

fn read_safetensors(bytes: &[u8]) -> Result<Checkpoint> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .context("neither a torch.save zip nor a safetensors file")?;
    let mut tensors = Vec::new();
    for (name, t) in st.tensors() {
        let vals = engine::glide::weights::to_f32(&name, &t)?;
        tensors.push((name, t.shape().to_vec(), DType::F32, vals));
    }
    Ok(Checkpoint { tensors })
}

pub const SHARD_LIMIT: usize = 64 << 20;

/// Reads a config: create-kwargs JSON, or a fixture `config.json` holding them.
pub fn read_config(path: &Path) -> Result<GlideConfig> {
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", path.display()))?;
    let kwargs = v
        .get("create_model_and_diffusion_kwargs")
        .cloned()
        .unwrap_or(v);
    serde_json::from_value(kwargs)
        .with_context(|| format!("{}: not a GLIDE configuration", path.display()))
}

/// The noisy CLIP's `config.yaml` values as JSON, or a fixture `config.json`
/// holding them under `clip_config_yaml_values`.
pub fn read_clip_config(path: &Path) -> Result<NoisyClipConfig> {
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", path.display()))?;
    let values = v.get("clip_config_yaml_values").cloned().unwrap_or(v);
    serde_json::from_value(values)
        .with_context(|| format!("{}: not a noisy CLIP configuration", path.display()))
}

/// What a conversion wrote (for the summary line).
pub struct Converted {
    pub tensors: usize,
    pub shards: Vec<Shard>,
    pub quant: String,
}

/// Converts one model: GLIDE kinds (base, upsample, base-inpaint,
/// upsample-inpaint, and the noisy CLIP's clip-image-enc, clip-text-enc) or unCLIP kinds (clip-text, clip-visual, prior, decoder,
/// sr). `stats`: the prior's `ViT-L-14_stats.th` (or a safetensors file with
/// `clip_mean`/`clip_std`). `sr_size`: the SR output side (unCLIP only).
#[allow(clippy::too_many_arguments)]
pub fn convert(
    checkpoint: &Path,
    kind: &str,
    quant: WeightDType,
    config: Option<&Path>,
    stats: Option<&Path>,
    sr_size: usize,
    out: &Path,
    force: bool,
) -> Result<Converted> {
    if out.exists() && !force {
        bail!(
            "{} already exists (use --force to replace it)",
            out.display()
        );
    }
    if engine::unclip::weights::KINDS.contains(&kind) {
        let cfg = match config {
            Some(p) => UnclipConfig::from_json(
                kind,
                &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
                sr_size,
            )?,
            None => match UnclipConfig::released(kind)? {
                UnclipConfig::Sr {
                    first_steps,
                    last_step,
                    ..
                } => UnclipConfig::Sr {
                    first_steps,
                    last_step,
                    image_size: sr_size,
                },
                c => c,
            },
        };
        let expected = cfg.weight_shapes()?;
        let mut ckpt = read_tensors(checkpoint)?;
        if kind == "prior" {
            let Some(stats) = stats else {
                bail!("the prior needs the CLIP statistics: --stats ViT-L-14_stats.th");
            };
            ckpt.tensors.extend(read_stats(stats)?);
        } else if stats.is_some() {
            bail!("--stats belongs to the prior");
        }
        let by_name = by_name(&ckpt);
        check_keys(kind, &expected, &by_name, &|n| cfg.ignored(n))?;
        let quantizable = |n: &str, s: &[usize]| cfg.quantizable(n, s);
        return write_folder(
            out,
            kind,
            cfg.clone(),
            quant,
            &expected,
            &by_name,
            &quantizable,
        );
    }
    if stats.is_some() {
        bail!("--stats belongs to unCLIP's prior");
    }
    if engine::glide::clip::KINDS.contains(&kind) {
        let cfg = match config {
            Some(p) => read_clip_config(p)?,
            None => NoisyClipConfig::released(),
        };
        let expected = cfg.weight_shapes(kind)?;
        let ckpt = read_tensors(checkpoint)?;
        let by_name = by_name(&ckpt);
        check_keys(kind, &expected, &by_name, &|_| false)?;
        return write_folder(
            out,
            kind,
            cfg,
            quant,
            &expected,
            &by_name,
            &NoisyClipConfig::quantizable,
        );
    }
    let cfg = match config {
        Some(p) => read_config(p)?,
        None => GlideConfig::for_kind(kind)?,
    };
    if cfg.kind() != kind {
        bail!(
            "--kind {kind} but the configuration describes a '{}' model",
            cfg.kind()
        );
    }
    let expected = cfg.weight_shapes()?;
    let ckpt = read_tensors(checkpoint)?;
    let by_name = by_name(&ckpt);
    check_keys(kind, &expected, &by_name, &|_| false)?;
    write_folder(out, kind, cfg, quant, &expected, &by_name, &quantizable)
}

/// A torch.save zip (a state dict, or a dict holding one under `state_dict`)
/// or, by its `.safetensors` name, safetensors with the official key names.
fn read_tensors(path: &Path) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "safetensors") {
        read_safetensors(&bytes).with_context(|| format!("reading {}", path.display()))
    } else {
        read_checkpoint(&bytes).with_context(|| format!("reading checkpoint {}", path.display()))
    }
}

/// `ViT-L-14_stats.th` (a pickled (mean, std) tuple) or a safetensors file
/// with `clip_mean` / `clip_std`, as the prior folder's two tensors.
fn read_stats(path: &Path) -> Result<Vec<NamedTensor>> {
    let ckpt = read_tensors(path)?;
    let find = |names: &[&str]| {
        ckpt.tensors
            .iter()
            .find(|t| names.contains(&t.0.as_str()))
            .cloned()
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: no {} tensor (expected (mean, std) or clip_mean/clip_std)",
                    path.display(),
                    names[0]
                )
            })
    };
    let (mut mean, mut std) = (find(&["clip_mean", "0"])?, find(&["clip_std", "1"])?);
    // The released stats are [1, 768]: the prior folder keeps them flat.
    for (t, name) in [(&mut mean, CLIP_MEAN), (&mut std, CLIP_STD)] {
        t.0 = name.to_string();
        t.1 = vec![t.3.len()];
    }
    Ok(vec![mean, std])
}

fn by_name(ckpt: &Checkpoint) -> BTreeMap<&str, (&Vec<usize>, &Vec<f32>)> {
    ckpt.tensors
        .iter()
        .map(|(name, shape, _, vals)| (name.as_str(), (shape, vals)))
        .collect()
}

/// Every expected key present with its shape, nothing unknown but `ignored` keys.
fn check_keys(
    kind: &str,
    expected: &[(String, Vec<usize>)],
    by_name: &BTreeMap<&str, (&Vec<usize>, &Vec<f32>)>,
    ignored: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let known: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let unknown: Vec<&str> = by_name
        .keys()
        .copied()
        .filter(|n| !known.contains(n) && !ignored(n))
        .collect();
    if !unknown.is_empty() {
        bail!(
            "{} unknown key(s) for a {kind} model: {}{}",
            unknown.len(),
            unknown
                .iter()
                .take(5)
                .copied()
                .collect::<Vec<_>>()
                .join(", "),
            if unknown.len() > 5 { ", …" } else { "" }
        );
    }
    for (name, shape) in expected {
        match by_name.get(name.as_str()) {
            None => bail!("key '{name}' missing from the checkpoint (is --kind right?)"),
            Some((s, _)) if *s != shape => {
                bail!("key '{name}': shape {s:?}, a {kind} model needs {shape:?}")
            }
            _ => {}
        }
    }
    Ok(())
}

/// Writes the shards and manifest into a temporary sibling folder, then
/// renames it into place (replacing `out`), so a failure leaves nothing.
fn write_folder<C: ModelConfig>(
    out: &Path,
    kind: &str,
    config: C,
    quant: WeightDType,
    expected: &[(String, Vec<usize>)],
    by_name: &BTreeMap<&str, (&Vec<usize>, &Vec<f32>)>,
    quantizable: &dyn Fn(&str, &[usize]) -> bool,
) -> Result<Converted> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp: PathBuf = parent.join(format!(
        ".{}.partial-{}",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("model"),
        std::process::id()
    ));
    let result = (|| -> Result<Converted> {
        let (tensors, shards) = write_shards(&tmp, quant, expected, by_name, quantizable)?;
        let manifest = Manifest {
            format: C::FORMAT.into(),
            kind: kind.into(),
            config,
            quant: quant.name().into(),
            tensors,
            shards,
        };
        std::fs::write(
            tmp.join("manifest.json"),
            serde_json::to_vec_pretty(&manifest)?,
        )?;
        Ok(Converted {
            tensors: manifest.tensors.len(),
            shards: manifest.shards,
            quant: manifest.quant,
        })
    })();
    match result {
        Ok(done) => {
            if out.exists() {
                std::fs::remove_dir_all(out)
                    .with_context(|| format!("removing the old {}", out.display()))?;
            }
            std::fs::rename(&tmp, out)
                .with_context(|| format!("moving the result to {}", out.display()))?;
            Ok(done)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

type Entry = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

fn write_shards(
    dir: &Path,
    quant: WeightDType,
    expected: &[(String, Vec<usize>)],
    tensors: &BTreeMap<&str, (&Vec<usize>, &Vec<f32>)>,
    quantizable: &dyn Fn(&str, &[usize]) -> bool,
) -> Result<(BTreeMap<String, StoredTensor>, Vec<Shard>)> {
    std::fs::create_dir_all(dir)?;
    let mut stored = BTreeMap::new();
    let mut shards = Vec::new();
    let mut pending: Vec<Entry> = Vec::new();
    let mut pending_bytes = 0usize;
    let flush = |pending: &mut Vec<Entry>, shards: &mut Vec<Shard>| -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let file = format!("model-{:05}.safetensors", shards.len() + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> = pending
            .iter()
            .map(|(n, d, s, b)| {
                Ok((
                    n.clone(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b)?,
                ))
            })
            .collect::<std::result::Result<_, safetensors::SafeTensorError>>()?;
        let data = safetensors::tensor::serialize(views, None)?;
        std::fs::write(dir.join(&file), &data)?;
        shards.push(Shard {
            file,
            bytes: data.len() as u64,
            sha256: sha256_hex(&data),
        });
        pending.clear();
        Ok(())
    };
    for (name, shape) in expected {
        let (_, vals) = tensors[name.as_str()];
        let dtype = if quantizable(name, shape) {
            quant
        } else {
            WeightDType::F32
        };
        let (st_dtype, st_shape, bytes): (safetensors::Dtype, Vec<usize>, Vec<u8>) = match dtype {
            WeightDType::F32 => (
                safetensors::Dtype::F32,
                shape.clone(),
                vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            WeightDType::F16 => (
                safetensors::Dtype::F16,
                shape.clone(),
                vals.iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
            ),
            WeightDType::Q8 | WeightDType::Q4 => {
                let w = WeightData::from_f32(shape, vals, dtype)?;
                (
                    safetensors::Dtype::U32,
                    vec![w.rows, dtype.row_words(w.cols)],
                    w.words.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            }
        };
        if pending_bytes + bytes.len() > SHARD_LIMIT && !pending.is_empty() {
            flush(&mut pending, &mut shards)?;
            pending_bytes = 0;
        }
        if bytes.len() > SHARD_LIMIT {
            bail!(
                "tensor '{name}' alone is {} bytes, over the {SHARD_LIMIT}-byte shard limit",
                bytes.len()
            );
        }
        stored.insert(
            name.clone(),
            StoredTensor {
                shard: format!("model-{:05}.safetensors", shards.len() + 1),
                dtype: dtype.name().into(),
                shape: shape.clone(),
            },
        );
        pending_bytes += bytes.len();
        pending.push((name.clone(), st_dtype, st_shape, bytes));
    }
    flush(&mut pending, &mut shards)?;
    Ok((stored, shards))
}

/// Reads a converted model folder, verifying every shard's size and sha256.
pub fn read_model_dir<C: ModelConfig>(
    dir: &Path,
) -> Result<(Manifest<C>, engine::glide::weights::Shards)> {
    Ok(engine::glide::weights::read_model_dir(dir)?)
}

/// `dir/<kind>/` (a `webglide convert --kind <kind>` folder) if it exists,
/// its manifest checked to describe that kind and every shard verified.
pub fn read_kind<C: ModelConfig>(
    dir: &Path,
    kind: &str,
) -> Result<Option<(Manifest<C>, engine::glide::weights::Shards)>> {
    let sub = dir.join(kind);
    if !sub.join("manifest.json").exists() {
        return Ok(None);
    }
    let (manifest, shards) = read_model_dir::<C>(&sub)?;
    if manifest.kind != kind {
        bail!(
            "{}: manifest says kind '{}', expected '{kind}'",
            sub.display(),
            manifest.kind
        );
    }
    Ok(Some((manifest, shards)))
}

/// A converted folder of either family: its tensors and verified shards.
pub fn read_any_model_dir(
    dir: &Path,
) -> Result<(
    BTreeMap<String, StoredTensor>,
    engine::glide::weights::Shards,
)> {
    // The manifest's format names the family; a broken folder of either
    // family gets that family's error.
    let format = std::fs::read(dir.join("manifest.json"))
        .ok()
        .and_then(|j| serde_json::from_slice::<serde_json::Value>(&j).ok())
        .and_then(|v| v["format"].as_str().map(String::from));
    if format.as_deref() == Some(UnclipConfig::FORMAT) {
        let (m, shards) = read_model_dir::<UnclipConfig>(dir)?;
        Ok((m.tensors, shards))
    } else if format.as_deref() == Some(NoisyClipConfig::FORMAT) {
        let (m, shards) = read_model_dir::<NoisyClipConfig>(dir)?;
        Ok((m.tensors, shards))
    } else {
        let (m, shards) = read_model_dir::<GlideConfig>(dir)?;
        Ok((m.tensors, shards))
    }
}
