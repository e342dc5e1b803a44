//! Loading named tensors from safetensors (f32 / f16 / bf16) onto the GPU,
//! checking every shape against the architecture and rejecting missing or
//! unknown keys with the key's name.

use std::cell::RefCell;
use std::collections::BTreeSet;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::quant::{WeightDType, WeightData};
use crate::tensor::{Tensor, Weight};

/// How a tensor is stored in a converted model (from `manifest.json`).
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
pub struct StoredTensor {
    pub shard: String,
    /// "f32", "f16", "q8" or "q4".
    pub dtype: String,
    /// The logical (original) shape.
    pub shape: Vec<usize>,
}

/// (name, logical shape, f32 values) of every tensor.
pub type NamedTensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// Weights as safetensors: one plain file (f32/f16/bf16 with the official
/// names) or converted shards where matmul weights may be stored pre-packed
/// (`webglide convert`; q8/q4 as u32 words `[rows, row_words]`).
pub struct WeightSource<'a> {
    shards: Vec<(String, safetensors::SafeTensors<'a>)>,
    stored: std::collections::HashMap<String, StoredTensor>,
}

impl<'a> WeightSource<'a> {
    pub fn single(bytes: &'a [u8]) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| Error::Invalid(format!("not a valid safetensors file: {e}")))?;
        Ok(WeightSource {
            shards: vec![(String::new(), st)],
            stored: Default::default(),
        })
    }

    /// `shards`: (file name, bytes) of every shard listed in the manifest.
    pub fn shards(
        tensors: std::collections::HashMap<String, StoredTensor>,
        shards: &'a [(String, Vec<u8>)],
    ) -> Result<Self> {
        let mut parsed = Vec::new();
        for (name, bytes) in shards {
            let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
                Error::Invalid(format!("shard {name}: not a valid safetensors file: {e}"))
            })?;
            parsed.push((name.clone(), st));
        }
        Ok(WeightSource {
            shards: parsed,
            stored: tensors,
        })
    }

    fn find(&self, name: &str) -> Option<safetensors::tensor::TensorView<'_>> {
        match self.stored.get(name) {
            Some(s) => self
                .shards
                .iter()
                .find(|(n, _)| *n == s.shard)
                .and_then(|(_, st)| st.tensor(name).ok()),
            None => self.shards.iter().find_map(|(_, st)| st.tensor(name).ok()),
        }
    }

    fn names(&self) -> Vec<String> {
        self.shards
            .iter()
            .flat_map(|(_, st)| st.names().into_iter().map(String::from))
            .collect()
    }

    /// Every tensor as f32 values with its logical shape, q8/q4 weights
    /// dequantised as the kernels see them (for CPU tools: evaluating a
    /// shipped model, continuing training from it).
    pub fn dequantized(&self) -> Result<NamedTensors> {
        let mut names = self.names();
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let t = self
                    .find(&name)
                    .ok_or_else(|| bad(&name, "missing from its shard"))?;
                let values = match self.stored.get(&name) {
                    Some(s) if s.dtype == "q8" || s.dtype == "q4" => {
                        packed(&name, WeightDType::parse(&s.dtype)?, &s.shape, &t)?.to_f32()
                    }
                    _ => to_f32(&name, &t)?,
                };
                let shape = match self.stored.get(&name) {
                    Some(s) => s.shape.clone(),
                    None => t.shape().to_vec(),
                };
                Ok((name, shape, values))
            })
            .collect()
    }
}

pub struct Loader<'a> {
    st: &'a WeightSource<'a>,
    gpu: &'a Gpu,
    /// Storage type for matmul/conv/embedding weights (norms, biases and
    /// embedding tables stay f32).
    pub dtype: WeightDType,
    used: RefCell<BTreeSet<String>>,
}

fn bad(name: &str, msg: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("weight '{name}': {msg}"))
}

/// Decodes a safetensors tensor to f32.
pub fn to_f32(name: &str, t: &safetensors::tensor::TensorView) -> Result<Vec<f32>> {
    let d = t.data();
    Ok(match t.dtype() {
        safetensors::Dtype::F32 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        safetensors::Dtype::F16 => d
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        safetensors::Dtype::BF16 => d
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => return Err(bad(name, format!("unsupported dtype {other:?}"))),
    })
}

/// A q8/q4 weight as `webglide convert` stores it (little-endian u32 words,
/// `[rows, row_words]`) for a tensor of logical `shape`; the file may lie, so
/// every size is checked before a word is read.
pub fn packed(
    name: &str,
    dtype: WeightDType,
    shape: &[usize],
    t: &safetensors::tensor::TensorView,
) -> Result<WeightData> {
    let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let (rows, numel) = match (shape.first(), numel) {
        (Some(&rows), Some(numel)) if rows > 0 => (rows, numel),
        _ => return Err(bad(name, format!("logical shape {shape:?}"))),
    };
    let cols = numel / rows;
    let row_words = dtype.row_words(cols);
    if t.dtype() != safetensors::Dtype::U32 || t.shape() != [rows, row_words] {
        return Err(bad(
            name,
            format!(
                "stored as {:?} {:?}, expected U32 [{rows}, {row_words}]",
                t.dtype(),
                t.shape()
            ),
        ));
    }
    let words = t
        .data()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(WeightData {
        dtype,
        shape: shape.to_vec(),
        rows,
        cols,
        words,
    })
}

impl<'a> Loader<'a> {
    pub fn new(gpu: &'a Gpu, source: &'a WeightSource<'a>, dtype: WeightDType) -> Result<Self> {
        Ok(Loader {
            st: source,
            gpu,
            dtype,
            used: RefCell::default(),
        })
    }

    /// The storage type asked for the quantisable weights.
    pub fn dtype(&self) -> WeightDType {
        self.dtype
    }

    /// The tensor's values, checked against `shape`.
    pub fn raw(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        if let Some(s) = self.st.stored.get(name) {
            if s.dtype == "q8" || s.dtype == "q4" {
                return Err(bad(
                    name,
                    "is stored quantised where the architecture needs f32",
                ));
            }
        }
        let t = self
            .st
            .find(name)
            .ok_or_else(|| bad(name, "missing from the weights file"))?;
        if t.shape() != shape {
            return Err(bad(
                name,
                format!("shape {:?}, the architecture needs {shape:?}", t.shape()),
            ));
        }
        self.used.borrow_mut().insert(name.to_string());
        to_f32(name, &t)
    }

    /// An f32 tensor (norm params, biases, embedding tables).
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let v = self.raw(name, shape)?;
        self.gpu.upload(shape, &v)
    }

    /// A matmul/conv weight: in the loader's storage type when
    /// [`super::model::quantizable`], else f32. `shape` is the file's shape.
    pub fn weight(&self, name: &str, shape: &[usize]) -> Result<Weight> {
        let dtype = if super::model::quantizable(name, shape) {
            self.dtype
        } else {
            WeightDType::F32
        };
        self.weight_as(name, shape, dtype)
    }

    pub fn weight_as(&self, name: &str, shape: &[usize], dtype: WeightDType) -> Result<Weight> {
        if let Some(s) = self.st.stored.get(name) {
            if s.dtype == "q8" || s.dtype == "q4" {
                // Pre-packed by `webglide convert`: upload the words as they are.
                let q = WeightDType::parse(&s.dtype)?;
                if s.shape != shape {
                    return Err(bad(
                        name,
                        format!("shape {:?}, the architecture needs {shape:?}", s.shape),
                    ));
                }
                let t = self
                    .st
                    .find(name)
                    .ok_or_else(|| bad(name, "missing from its shard"))?;
                let w = packed(name, q, shape, &t)?;
                self.used.borrow_mut().insert(name.to_string());
                return self.gpu.upload_weight(&w);
            }
        }
        let v = self.raw(name, shape)?;
        self.gpu
            .upload_weight(&WeightData::from_f32(shape, &v, dtype)?)
    }

    /// Fails on keys the architecture did not use.
    pub fn finish(self) -> Result<()> {
        self.finish_except(&[])
    }

    /// Like `finish`, leaving keys under `prefixes` alone (towers of a
    /// checkpoint that another part of a pipeline loads, or none).
    pub fn finish_except(self, prefixes: &[&str]) -> Result<()> {
        let used = self.used.into_inner();
        let unknown: Vec<String> = self
            .st
            .names()
            .into_iter()
            .filter(|n| !used.contains(n) && !prefixes.iter().any(|p| n.starts_with(p)))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            let shown: Vec<_> = unknown.iter().take(5).cloned().collect();
            Err(Error::Invalid(format!(
                "{} unknown weight key(s) for this architecture: {}{}",
                unknown.len(),
                shown.join(", "),
                if unknown.len() > 5 { ", …" } else { "" }
            )))
        }
    }
}

/// A model family's configuration as `manifest.json` stores it.
pub trait ModelConfig:
    Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned
{
    /// The manifest's `format` for this family.
    const FORMAT: &'static str;
}

impl ModelConfig for super::model::GlideConfig {
    const FORMAT: &'static str = MANIFEST_FORMAT;
}

impl ModelConfig for crate::unclip::weights::UnclipConfig {
    const FORMAT: &'static str = "webglide-unclip/1";
}

/// `manifest.json` of a converted model folder (`webglide convert`).
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(bound = "C: ModelConfig")]
pub struct Manifest<C = super::model::GlideConfig> {
    pub format: String,
    /// GLIDE: base | upsample | base-inpaint | upsample-inpaint;
    /// unCLIP: clip-text | clip-visual | prior | decoder | sr.
    pub kind: String,
    pub config: C,
    /// Storage type of the quantisable weights.
    pub quant: String,
    pub tensors: std::collections::BTreeMap<String, StoredTensor>,
    pub shards: Vec<Shard>,
}

#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
pub struct Shard {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

pub const MANIFEST_FORMAT: &str = "webglide-glide/1";

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl<C: ModelConfig> Manifest<C> {
    pub fn parse(json: &[u8]) -> Result<Self> {
        // The format first, so a folder of the other family gets a clear error.
        #[derive(serde::Deserialize)]
        struct Format {
            format: String,
        }
        let f: Format = serde_json::from_slice(json)
            .map_err(|e| Error::Invalid(format!("manifest.json: {e}")))?;
        if f.format != C::FORMAT {
            return Err(Error::Invalid(format!(
                "manifest.json: format '{}', expected '{}'",
                f.format,
                C::FORMAT
            )));
        }
        let m: Self = serde_json::from_slice(json)
            .map_err(|e| Error::Invalid(format!("manifest.json: {e}")))?;
        m.check_limits()?;
        Ok(m)
    }

    /// What a manifest may ask us to fetch, read or hold ([`crate::limits`]).
    fn check_limits(&self) -> Result<()> {
        use crate::limits::*;
        let too_many = |what: &str, n: usize, max: usize| {
            Error::Invalid(format!("manifest.json: {n} {what} (at most {max})"))
        };
        if self.tensors.len() > MAX_TENSORS {
            return Err(too_many("tensors", self.tensors.len(), MAX_TENSORS));
        }
        if self.shards.len() > MAX_SHARDS {
            return Err(too_many("shards", self.shards.len(), MAX_SHARDS));
        }
        let mut total = 0u64;
        for s in &self.shards {
            check_shard_name(&s.file)?;
            if s.bytes > MAX_SHARD_BYTES {
                return Err(Error::Invalid(format!(
                    "manifest.json: shard {} of {} bytes (at most {MAX_SHARD_BYTES})",
                    s.file, s.bytes
                )));
            }
            total += s.bytes;
        }
        if total > MAX_MODEL_BYTES {
            return Err(Error::Invalid(format!(
                "manifest.json: {total} bytes of shards (at most {MAX_MODEL_BYTES})"
            )));
        }
        Ok(())
    }

    /// Checks a downloaded/read shard against the manifest (size and sha256).
    pub fn verify_shard(&self, file: &str, bytes: &[u8]) -> Result<()> {
        let s = self
            .shards
            .iter()
            .find(|s| s.file == file)
            .ok_or_else(|| Error::Invalid(format!("shard '{file}' is not in the manifest")))?;
        if s.bytes != bytes.len() as u64 {
            return Err(Error::Invalid(format!(
                "shard '{file}': {} bytes, the manifest says {} (truncated download?)",
                bytes.len(),
                s.bytes
            )));
        }
        let h = sha256_hex(bytes);
        if h != s.sha256 {
            return Err(Error::Invalid(format!(
                "shard '{file}': sha256 {h} does not match the manifest ({})",
                s.sha256
            )));
        }
        Ok(())
    }
}

/// Shard file names with their bytes.
pub type Shards = Vec<(String, Vec<u8>)>;

/// Reads a converted model folder (`webglide convert`), verifying every
/// shard's size and sha256 against the manifest.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_model_dir<C: ModelConfig>(dir: &std::path::Path) -> Result<(Manifest<C>, Shards)> {
    let read = |f: &str, max: u64| crate::limits::read_at_most(&dir.join(f), max);
    let manifest = Manifest::<C>::parse(&read(
        "manifest.json",
        crate::limits::MAX_MANIFEST_BYTES as u64,
    )?)?;
    let mut shards = Vec::new();
    for s in &manifest.shards {
        let bytes = read(&s.file, s.bytes)?;
        manifest.verify_shard(&s.file, &bytes)?;
        shards.push((s.file.clone(), bytes));
    }
    Ok((manifest, shards))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(shards: &str, tensors: usize) -> String {
        let tensors: Vec<String> = (0..tensors)
            .map(|i| {
                format!(r#""t{i}": {{"shard": "a.safetensors", "dtype": "f32", "shape": [1]}}"#)
            })
            .collect();
        let config = serde_json::to_string(&crate::glide::model::GlideConfig::default()).unwrap();
        format!(
            r#"{{"format": "{MANIFEST_FORMAT}", "kind": "base", "config": {config}, "quant": "f32",
                "tensors": {{{}}}, "shards": [{shards}]}}"#,
            tensors.join(",")
        )
    }

    #[test]
    fn manifests_over_the_limits_are_refused() {
        let shard = |file: &str, bytes: u64| {
            format!(r#"{{"file": "{file}", "bytes": {bytes}, "sha256": ""}}"#)
        };
        let ok = manifest(&shard("a.safetensors", 100), 3);
        assert!(Manifest::<crate::glide::model::GlideConfig>::parse(ok.as_bytes()).is_ok());
        for (bad, why) in [
            (
                manifest(&shard("../../etc/passwd", 100), 1),
                "a path for a shard",
            ),
            (manifest(&shard("/abs", 100), 1), "an absolute path"),
            (
                manifest(&shard("a.safetensors", 3 << 30), 1),
                "a 3 GiB shard",
            ),
            (
                manifest(&vec![shard("a.safetensors", 1 << 30); 40].join(","), 1),
                "40 GiB in all",
            ),
            (
                manifest(&shard("a.safetensors", 1), crate::limits::MAX_TENSORS + 1),
                "too many tensors",
            ),
        ] {
            let r = Manifest::<crate::glide::model::GlideConfig>::parse(bad.as_bytes());
            assert!(r.is_err(), "{why} was accepted");
        }
    }

    #[test]
    fn packed_words_read_back_and_lying_sizes_are_refused() {
        let v: Vec<f32> = (0..5 * 3 * 3 * 3)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let shape = [5, 3, 3, 3];
        for q in [WeightDType::Q8, WeightDType::Q4] {
            let w = WeightData::from_f32(&shape, &v, q).unwrap();
            let bytes: Vec<u8> = w.words.iter().flat_map(|x| x.to_le_bytes()).collect();
            let stored = [5, q.row_words(27)];
            let t = safetensors::tensor::TensorView::new(
                safetensors::Dtype::U32,
                stored.to_vec(),
                &bytes,
            )
            .unwrap();
            assert_eq!(packed("w", q, &shape, &t).unwrap().to_f32(), w.to_f32());
            for lie in [&[5, 3, 3, 4][..], &[0, 3], &[], &[usize::MAX, 2, 2]] {
                assert!(packed("w", q, lie, &t).is_err(), "{lie:?}");
            }
        }
        let f32s: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let t = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![5, 27], &f32s)
            .unwrap();
        assert!(packed("w", WeightDType::Q8, &shape, &t).is_err());
    }
}
