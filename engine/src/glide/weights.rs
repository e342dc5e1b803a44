//! Loading named tensors from safetensors (f32 / f16 / bf16) onto the GPU,
//! checking every shape against the architecture and rejecting missing or
//! unknown keys with the key's name.

use std::cell::RefCell;
use std::collections::BTreeSet;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::quant::{WeightDType, WeightData};
use crate::tensor::{Tensor, Weight};

pub struct Loader<'a> {
    st: safetensors::SafeTensors<'a>,
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

impl<'a> Loader<'a> {
    pub fn new(gpu: &'a Gpu, bytes: &'a [u8], dtype: WeightDType) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| Error::Invalid(format!("not a valid safetensors file: {e}")))?;
        Ok(Loader {
            st,
            gpu,
            dtype,
            used: RefCell::default(),
        })
    }

    /// The tensor's values, checked against `shape`.
    pub fn raw(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self
            .st
            .tensor(name)
            .map_err(|_| bad(name, "missing from the weights file"))?;
        if t.shape() != shape {
            return Err(bad(
                name,
                format!("shape {:?}, the architecture needs {shape:?}", t.shape()),
            ));
        }
        self.used.borrow_mut().insert(name.to_string());
        to_f32(name, &t)
    }

    pub fn has(&self, name: &str) -> bool {
        self.st.tensor(name).is_ok()
    }

    /// An f32 tensor (norm params, biases, embedding tables).
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let v = self.raw(name, shape)?;
        self.gpu.upload(shape, &v)
    }

    /// A matmul/conv weight in the loader's storage type; `shape` is the file's shape.
    pub fn weight(&self, name: &str, shape: &[usize]) -> Result<Weight> {
        self.weight_as(name, shape, self.dtype)
    }

    pub fn weight_as(&self, name: &str, shape: &[usize], dtype: WeightDType) -> Result<Weight> {
        let v = self.raw(name, shape)?;
        self.gpu
            .upload_weight(&WeightData::from_f32(shape, &v, dtype)?)
    }

    /// Fails on keys the architecture did not use.
    pub fn finish(self) -> Result<()> {
        let used = self.used.into_inner();
        let unknown: Vec<String> = self
            .st
            .names()
            .into_iter()
            .filter(|n| !used.contains(*n))
            .map(String::from)
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
