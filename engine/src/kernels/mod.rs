//! Kernel launchers: one module per WGSL kernel family. Each launcher checks
//! shapes in Rust before recording a dispatch, splits work that would exceed
//! the binding limit, and returns freshly pooled output tensors.

pub mod attention;
pub mod attention_backward;
pub mod clip_score;
pub mod conv;
pub mod copy;
pub mod elementwise;
pub mod embedding;
pub mod group_norm;
pub mod layer_norm;
pub mod matmul;
pub mod patches;
pub mod resample;
pub mod rng;
pub mod sampler;
pub mod softmax;
pub mod timestep;

use crate::gpu::{Bind, Gpu};

/// Activation fused at a kernel's output (the shaders' `activate()` codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    None,
    Silu,
    Gelu,
    QuickGelu,
    Relu,
    /// clamp(x, −1, 1): Karlo clamps the decoder's images before resizing them for SR.
    HardTanh,
}

impl Act {
    pub fn code(self) -> f64 {
        match self {
            Act::None => 0.0,
            Act::Silu => 1.0,
            Act::Gelu => 2.0,
            Act::QuickGelu => 3.0,
            Act::Relu => 4.0,
            Act::HardTanh => 5.0,
        }
    }
}

/// Defines a `Kernel` from a family file in `shaders/`, with the shared helpers
/// it uses (`weights`: `load_w`; `reduce`: `wg_sum`/`wg_max`).
macro_rules! kernel {
    ($name:ident, $file:literal, $entry:literal $(, $helper:ident)*) => {
        pub(crate) static $name: $crate::gpu::Kernel = $crate::gpu::Kernel {
            name: $file,
            source: include_str!(concat!("../../../shaders/", $file)),
            entry: $entry,
            weights: $crate::kernels::uses!(weights $(, $helper)*),
            reduce: $crate::kernels::uses!(reduce $(, $helper)*),
        };
    };
}
/// Whether a helper name is in a `kernel!` helper list.
macro_rules! uses {
    (weights) => { false };
    (reduce) => { false };
    (weights, weights $(, $rest:ident)*) => { true };
    (reduce, reduce $(, $rest:ident)*) => { true };
    ($want:ident, $other:ident $(, $rest:ident)*) => { $crate::kernels::uses!($want $(, $rest)*) };
}
pub(crate) use kernel;
pub(crate) use uses;

/// Optional tensor input: the tensor, or the device's dummy buffer.
pub(crate) fn bind_opt<'a>(gpu: &'a Gpu, t: Option<&'a crate::Tensor>) -> Bind<'a> {
    match t {
        Some(t) => t.bind(),
        None => Bind {
            buffer: &gpu.dummy,
            offset: 0,
            size: 16,
        },
    }
}

pub(crate) fn f(x: f32) -> u32 {
    x.to_bits()
}
