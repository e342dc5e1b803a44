//! Kernel launchers: one module per WGSL kernel family. Each launcher checks
//! shapes in Rust before recording a dispatch, splits work that would exceed
//! the binding limit, and returns freshly pooled output tensors.

pub mod attention;
pub mod conv;
pub mod copy;
pub mod elementwise;
pub mod embedding;
pub mod group_norm;
pub mod layer_norm;
pub mod matmul;
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
}

impl Act {
    pub fn code(self) -> f64 {
        match self {
            Act::None => 0.0,
            Act::Silu => 1.0,
            Act::Gelu => 2.0,
            Act::QuickGelu => 3.0,
            Act::Relu => 4.0,
        }
    }
}

/// Defines a `Kernel` whose source is `math.wgsl` (+ extra common files) + the family file.
macro_rules! kernel {
    ($name:ident, $file:literal, $entry:literal) => {
        pub(crate) static $name: $crate::gpu::Kernel = $crate::gpu::Kernel {
            name: $file,
            sources: &[
                $crate::gpu::MATH_WGSL,
                include_str!(concat!("../../../shaders/", $file)),
            ],
            entry: $entry,
        };
    };
    ($name:ident, $file:literal, $entry:literal, weights) => {
        pub(crate) static $name: $crate::gpu::Kernel = $crate::gpu::Kernel {
            name: $file,
            sources: &[
                $crate::gpu::MATH_WGSL,
                include_str!("../../../shaders/common/weights.wgsl"),
                include_str!(concat!("../../../shaders/", $file)),
            ],
            entry: $entry,
        };
    };
}
pub(crate) use kernel;

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
