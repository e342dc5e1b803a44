//! webglide engine: a small wgpu runtime plus hand-written WGSL kernels for
//! diffusion inference (GLIDE, unCLIP). The same code runs natively
//! (Vulkan/Metal/DX12) and in the browser (WebGPU).
//!
//! Layout:
//! - [`gpu`]: adapter/device acquisition, feature report, pipeline cache,
//!   command recording with a per-submission uniform arena.
//! - [`tensor`]: GPU tensors backed by a reusing buffer pool; upload/read-back.
//! - [`quant`]: weight storage types (f32, packed f16, block int8/int4).
//! - [`kernels`]: one module per WGSL kernel family (launcher + shape checks).
//! - [`reference`]: plain CPU references the kernels are tested against.
//! - [`rng`]: Philox4x32-10 Gaussian noise, identical on GPU and CPU.

// wgpu objects are !Send on wasm32; Arc still gives shared ownership there.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

pub mod bpe;
pub mod demo;
pub mod error;
pub mod glide;
pub mod gpu;
pub mod kernels;
pub mod limits;
pub mod quant;
pub mod reference;
pub mod rng;
pub mod tensor;
pub mod unclip;

pub use error::{Error, Result};
pub use gpu::{Gpu, GpuOptions, GpuReport, Recorder};
pub use quant::{WeightDType, WeightData};
pub use tensor::{Tensor, Weight};
