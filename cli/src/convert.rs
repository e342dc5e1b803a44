//! `webglide convert`: released GLIDE checkpoints (`.pt`, f32 or f16) to
//! safetensors shards (≤ 64 MiB) + `manifest.json`, in pure Rust. Writes into a
//! temporary folder and renames it into place only when everything succeeded,
//! so a failure never leaves a partial output folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use engine::glide::model::{quantizable, GlideConfig};
use engine::glide::weights::{sha256_hex, Manifest, Shard, StoredTensor, MANIFEST_FORMAT};
use engine::{WeightDType, WeightData};

use crate::pickle::{read_checkpoint, Checkpoint, DType};

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

pub fn convert(
    checkpoint: &Path,
    kind: &str,
    quant: WeightDType,
    config: Option<&Path>,
    out: &Path,
    force: bool,
) -> Result<Manifest> {
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
    if out.exists() && !force {
        bail!(
            "{} already exists (use --force to replace it)",
            out.display()
        );
    }
    let expected = cfg.weight_shapes()?;
    let bytes =
        std::fs::read(checkpoint).with_context(|| format!("reading {}", checkpoint.display()))?;
    // torch.save zips start with "PK"; a file with a .safetensors name is read
    // as safetensors with the official key names (e.g. the fixture weights).
    let ckpt = if checkpoint.extension().is_some_and(|e| e == "safetensors") {
        read_safetensors(&bytes).with_context(|| format!("reading {}", checkpoint.display()))?
    } else {
        read_checkpoint(&bytes)
            .with_context(|| format!("reading checkpoint {}", checkpoint.display()))?
    };
    let mut by_name: BTreeMap<&str, (&Vec<usize>, &Vec<f32>)> = BTreeMap::new();
    for (name, shape, _, vals) in &ckpt.tensors {
        by_name.insert(name.as_str(), (shape, vals));
    }
    let known: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let unknown: Vec<&str> = by_name
        .keys()
        .copied()
        .filter(|n| !known.contains(n))
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
    for (name, shape) in &expected {
        match by_name.get(name.as_str()) {
            None => bail!("key '{name}' missing from the checkpoint (is --kind right?)"),
            Some((s, _)) if *s != shape => {
                bail!("key '{name}': shape {s:?}, a {kind} model needs {shape:?}")
            }
            _ => {}
        }
    }

    // Write everything into a temporary sibling folder, then rename it into place.
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
    let result = write_shards(&tmp, kind, &cfg, quant, &expected, &by_name);
    match result {
        Ok(manifest) => {
            if out.exists() {
                std::fs::remove_dir_all(out)
                    .with_context(|| format!("removing the old {}", out.display()))?;
            }
            std::fs::rename(&tmp, out)
                .with_context(|| format!("moving the result to {}", out.display()))?;
            Ok(manifest)
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
    kind: &str,
    cfg: &GlideConfig,
    quant: WeightDType,
    expected: &[(String, Vec<usize>)],
    tensors: &BTreeMap<&str, (&Vec<usize>, &Vec<f32>)>,
) -> Result<Manifest> {
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
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        kind: kind.into(),
        config: cfg.clone(),
        quant: quant.name().into(),
        tensors: stored,
        shards,
    };
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    Ok(manifest)
}

/// Reads a converted model folder, verifying every shard's size and sha256.
pub fn read_model_dir(dir: &Path) -> Result<(Manifest, engine::glide::weights::Shards)> {
    Ok(engine::glide::weights::read_model_dir(dir)?)
}
