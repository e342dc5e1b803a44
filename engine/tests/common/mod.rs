//! Shared test helpers: one GPU per test process (native: lavapipe or any
//! Vulkan adapter; wasm: the browser's WebGPU), seeded random inputs and an
//! error metric. The same test bodies run natively and in headless Chromium.
#![allow(dead_code)]

use engine::{Gpu, GpuOptions};

/// Binding cap of the second device, small enough that modest tensors must be split.
pub const SMALL_BINDING: u64 = 16 * 1024;

fn opts(cap: Option<u64>) -> GpuOptions {
    GpuOptions {
        poison: true,
        max_binding_cap: cap,
        ..Default::default()
    }
}

/// Without the optional shader features: the portable kernels (SwiftShader's path).
fn portable_opts() -> GpuOptions {
    GpuOptions {
        allow_f16: false,
        allow_subgroups: false,
        ..opts(None)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::*;
    use std::sync::OnceLock;
    static GPU: OnceLock<Gpu> = OnceLock::new();
    static SMALL: OnceLock<Gpu> = OnceLock::new();
    static PORTABLE: OnceLock<Gpu> = OnceLock::new();
    fn get(slot: &'static OnceLock<Gpu>, opts: GpuOptions) -> &'static Gpu {
        slot.get_or_init(|| {
            pollster::block_on(Gpu::new(opts))
                .expect("no GPU adapter (install mesa-vulkan-drivers for lavapipe)")
        })
    }
    pub async fn gpu() -> &'static Gpu {
        get(&GPU, opts(None))
    }
    pub async fn small_gpu() -> &'static Gpu {
        get(&SMALL, opts(Some(SMALL_BINDING)))
    }
    pub async fn portable_gpu() -> &'static Gpu {
        get(&PORTABLE, portable_opts())
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::*;
    use std::cell::Cell;
    thread_local! {
        static GPU: Cell<Option<&'static Gpu>> = const { Cell::new(None) };
        static SMALL: Cell<Option<&'static Gpu>> = const { Cell::new(None) };
        static PORTABLE: Cell<Option<&'static Gpu>> = const { Cell::new(None) };
    }
    async fn get(
        slot: &'static std::thread::LocalKey<Cell<Option<&'static Gpu>>>,
        opts: GpuOptions,
    ) -> &'static Gpu {
        if let Some(g) = slot.with(|c| c.get()) {
            return g;
        }
        let g: &'static Gpu = Box::leak(Box::new(Gpu::new(opts).await.expect("no WebGPU adapter")));
        slot.with(|c| c.set(Some(g)));
        g
    }
    pub async fn gpu() -> &'static Gpu {
        get(&GPU, opts(None)).await
    }
    pub async fn small_gpu() -> &'static Gpu {
        get(&SMALL, opts(Some(SMALL_BINDING))).await
    }
    pub async fn portable_gpu() -> &'static Gpu {
        get(&PORTABLE, portable_opts()).await
    }
}

pub use imp::{gpu, portable_gpu, small_gpu};

/// The default device, and the portable one too where the default uses
/// optional shader features (lavapipe has `shader-f16` and subgroups;
/// SwiftShader neither), so both kernel variants are tested.
pub async fn devices() -> Vec<&'static Gpu> {
    let g = gpu().await;
    if g.report.shader_f16 || g.report.subgroups {
        vec![g, portable_gpu().await]
    } else {
        vec![g]
    }
}

/// A new device, not shared with other tests (for allocation counting).
pub async fn fresh_gpu() -> Gpu {
    Gpu::new(opts(None)).await.expect("no GPU adapter")
}

/// Declares a GPU test that runs natively (#[test]) and in the browser (wasm-bindgen-test).
#[macro_export]
macro_rules! gpu_test {
    ($name:ident) => {
        mod $name {
            #[cfg(not(target_arch = "wasm32"))]
            #[test]
            fn run() {
                pollster::block_on(super::$name()).unwrap();
            }
            #[cfg(target_arch = "wasm32")]
            #[wasm_bindgen_test::wasm_bindgen_test]
            async fn run() {
                super::$name().await.unwrap();
            }
        }
    };
}

pub type TestResult = Result<(), String>;

/// Deterministic inputs (SplitMix64 + Box-Muller), no OS randomness (works in wasm).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f32 {
        let (u1, u2) = (self.uniform(), self.uniform());
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    pub fn normals(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
    pub fn uniforms(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n)
            .map(|_| lo + (hi - lo) * self.uniform() as f32)
            .collect()
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Max |got − want| divided by max(max |want|, 1e-6): the error relative to
/// the tensor's scale. NaN (e.g. an unwritten, poisoned element) fails.
pub fn check(name: &str, got: &[f32], want: &[f32], tol: f64) -> TestResult {
    if got.len() != want.len() {
        return Err(format!(
            "{name}: {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    let scale = want
        .iter()
        .fold(0f64, |m, &w| m.max((w as f64).abs()))
        .max(1e-6);
    let mut worst = (0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = (g as f64 - w as f64).abs() / scale;
        if !e.is_finite() || g.is_nan() {
            return Err(format!("{name}: element {i} is {g}, expected {w}"));
        }
        if e > worst.0 {
            worst = (e, i);
        }
    }
    if worst.0 > tol {
        let i = worst.1;
        return Err(format!(
            "{name}: relative error {:.3e} > {tol:.1e} at {i} (got {}, want {})",
            worst.0, got[i], want[i]
        ));
    }
    Ok(())
}

pub fn err(e: engine::Error) -> String {
    e.to_string()
}

/// A tensor from a safetensors file embedded in the test binary.
pub fn fixture(bytes: &[u8], name: &str) -> (Vec<usize>, Vec<f32>) {
    let st = safetensors::SafeTensors::deserialize(bytes).expect("fixture parses");
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("fixture tensor {name}"));
    let data = t.data();
    let vals = match t.dtype() {
        safetensors::Dtype::F32 => data
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        safetensors::Dtype::I64 => data
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        d => panic!("unsupported fixture dtype {d:?}"),
    };
    (t.shape().to_vec(), vals)
}
