//! The GPU context: adapter/device acquisition with the adapter's real limits,
//! optional-feature detection, a pipeline cache keyed by shader + entry point +
//! specialisation constants, and [`Recorder`], which records many dispatches
//! into one command submission.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::quant::WeightDType;
use crate::tensor::{BufferPool, PooledBuffer};

/// One WGSL kernel: a family file plus the shared helpers it uses, compiled
/// once per device and helper variant, and specialised per constants.
pub struct Kernel {
    pub name: &'static str,
    /// The family file (`shaders/<name>`).
    pub source: &'static str,
    pub entry: &'static str,
    /// `load_w()` from `common/weights.wgsl` (or `weights_f16.wgsl`).
    pub weights: bool,
    /// `wg_sum()`/`wg_max()` from `common/reduce.wgsl` (or `reduce_subgroup.wgsl`).
    pub reduce: bool,
}

/// Shared WGSL helpers (portable sin/cos/erf, grid indexing), prepended to every kernel.
pub const MATH_WGSL: &str = include_str!("../../shaders/common/math.wgsl");
const WEIGHTS_WGSL: &str = include_str!("../../shaders/common/weights.wgsl");
const WEIGHTS_F16_WGSL: &str = include_str!("../../shaders/common/weights_f16.wgsl");
const REDUCE_WGSL: &str = include_str!("../../shaders/common/reduce.wgsl");
const REDUCE_SUBGROUP_WGSL: &str = include_str!("../../shaders/common/reduce_subgroup.wgsl");

/// Which helper variants a kernel's module is built with on this device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Variant {
    /// f16 weights read as native `f16` (`shader-f16`).
    f16: bool,
    /// Reductions with subgroup operations.
    subgroups: bool,
}

impl Variant {
    /// The module's WGSL: enable directives first, then the helpers, then the family file.
    fn source(self, kernel: &Kernel) -> String {
        let mut src = String::new();
        if self.f16 {
            src.push_str("enable f16;\n");
        }
        // Browsers need the directives; naga (native) has subgroups built in
        // and rejects `enable subgroups` as not yet implemented.
        if self.subgroups && cfg!(target_arch = "wasm32") {
            src.push_str("enable subgroups;\nrequires subgroup_id;\n");
        }
        src.push_str(MATH_WGSL);
        if kernel.weights {
            src.push_str(if self.f16 {
                WEIGHTS_F16_WGSL
            } else {
                WEIGHTS_WGSL
            });
        }
        if kernel.reduce {
            src.push_str(if self.subgroups {
                REDUCE_SUBGROUP_WGSL
            } else {
                REDUCE_WGSL
            });
        }
        src.push_str(kernel.source);
        src
    }

    fn label(self, kernel: &Kernel) -> String {
        let mut label = kernel.name.to_string();
        if self.f16 {
            label.push_str("+f16");
        }
        if self.subgroups {
            label.push_str("+subgroups");
        }
        label
    }
}

#[derive(Clone, Debug)]
pub struct GpuOptions {
    pub power_preference: wgpu::PowerPreference,
    /// Cap on a single storage binding, below the adapter's own limit (tests use
    /// it to force the binding-split paths on small tensors).
    pub max_binding_cap: Option<u64>,
    /// Use `shader-f16` when the adapter has it (f16 weights read natively).
    pub allow_f16: bool,
    /// Use subgroup operations when the adapter has them (reductions).
    pub allow_subgroups: bool,
    /// Fill every new tensor with NaN (tests: unwritten outputs must fail).
    pub poison: bool,
    /// naga's forced loop bounding (a hidden counter in every shader loop).
    /// Off by default: it blocks loop unrolling, so register tiles such as the
    /// matmul's 4×4 accumulators go to memory, and on NVIDIA Vulkan it costs up
    /// to 100× (wgpu#7698; our H100 run reached ~0.5 % of peak with it). Every
    /// loop in `shaders/` is bounded by sizes checked in Rust before dispatch;
    /// buffer bounds checks stay on either way. Native only: browsers apply
    /// their own checks.
    pub loop_bounding: bool,
    /// Buffer bounds checks off as well (`ShaderRuntimeChecks::unchecked()`):
    /// a benchmark variant only, to measure what the checks cost on a GPU
    /// (issue 15); an out-of-range index is then undefined behaviour.
    pub unchecked_bounds: bool,
    /// Zero workgroup memory at every dispatch (WebGPU's default; off here,
    /// since every kernel writes its tiles before reading them): a benchmark variant.
    pub zero_workgroup_memory: bool,
    /// Allocate and check every buffer and binding but dispatch nothing: the
    /// memory plan of a procedure (peak bytes, largest buffer) at sizes an
    /// adapter could not run in reasonable time. Results are garbage.
    pub dry_run: bool,
    /// Fault injection: destroy the device right after this many command
    /// submissions (tests of device loss mid-generation, e.g. the CLI's).
    pub lose_device_after: Option<u64>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            power_preference: wgpu::PowerPreference::HighPerformance,
            max_binding_cap: None,
            allow_f16: true,
            allow_subgroups: true,
            poison: false,
            loop_bounding: false,
            unchecked_bounds: false,
            zero_workgroup_memory: false,
            dry_run: false,
            lose_device_after: None,
        }
    }
}

/// What the adapter is and what we found on it (printed by `webglide info`).
#[derive(Clone, Debug)]
pub struct GpuReport {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub timestamps: bool,
    /// Whether the adapter offers wgpu's experimental cooperative matrices
    /// (tensor cores; wgpu 30 supports only 8×8 f32 tiles). Reported, not
    /// used: it decides whether a tensor-core kernel is worth writing.
    pub cooperative_matrix: bool,
    pub max_storage_binding: u64,
    pub max_buffer_size: u64,
    pub max_invocations_per_workgroup: u32,
    pub max_workgroup_storage: u32,
    pub max_workgroups_per_dim: u32,
    /// Whether shaders were built with naga's forced loop bounding (see
    /// [`GpuOptions::loop_bounding`]).
    pub loop_bounding: bool,
    /// See [`GpuOptions::unchecked_bounds`] and [`GpuOptions::zero_workgroup_memory`].
    pub unchecked_bounds: bool,
    pub zero_workgroup_memory: bool,
}

impl std::fmt::Display for GpuReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.name.is_empty() {
            "(unnamed)"
        } else {
            &self.name
        };
        writeln!(f, "adapter:   {name}")?;
        writeln!(f, "backend:   {} ({})", self.backend, self.device_type)?;
        if !self.driver.is_empty() {
            writeln!(f, "driver:    {}", self.driver)?;
        }
        let yn = |b: bool| if b { "yes" } else { "no" };
        writeln!(
            f,
            "features:  shader-f16 {}, subgroups {}, timestamp-query {}; cooperative matrix (8x8 f32, unused) {}",
            yn(self.shader_f16),
            yn(self.subgroups),
            yn(self.timestamps),
            yn(self.cooperative_matrix)
        )?;
        writeln!(
            f,
            "limits:    storage binding {} MiB, buffer {} MiB, {} invocations/workgroup, {} KiB workgroup storage",
            self.max_storage_binding >> 20,
            self.max_buffer_size >> 20,
            self.max_invocations_per_workgroup,
            self.max_workgroup_storage >> 10
        )?;
        writeln!(
            f,
            "shaders:   buffer bounds checks {}, loop bounding {}, workgroup memory zeroed {}; f16 weights {}, reductions {}",
            if self.unchecked_bounds { "OFF" } else { "on" },
            if self.loop_bounding { "on" } else { "off" },
            if self.zero_workgroup_memory { "yes" } else { "no" },
            if self.shader_f16 {
                "native f16"
            } else {
                "unpacked to f32"
            },
            if self.subgroups {
                "by subgroups"
            } else {
                "in workgroup memory"
            }
        )
    }
}

/// Size of one slot of the per-submission uniform arena (the WebGPU maximum of
/// `minUniformBufferOffsetAlignment`, so it is valid everywhere).
const PARAM_SLOT: u64 = 256;
/// Slots per arena; a submission that records more dispatches is flushed early.
const ARENA_SLOTS: u64 = 1024;

pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub report: GpuReport,
    /// Largest storage binding the launchers may create (bytes).
    pub max_binding: u64,
    pub(crate) poison: bool,
    pub(crate) dry_run: bool,
    pub(crate) pool: Arc<BufferPool>,
    modules: Mutex<HashMap<String, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<String, wgpu::ComputePipeline>>,
    /// Bound where a kernel has an optional input that is absent.
    pub(crate) dummy: wgpu::Buffer,
    errors: Arc<Mutex<Option<String>>>,
    lost: Arc<Mutex<Option<String>>>,
    submissions: Mutex<u64>,
    lose_device_after: Option<u64>,
    flops: std::sync::atomic::AtomicU64,
    constants: Mutex<HashMap<String, crate::Tensor>>,
}

impl Gpu {
    /// Opens the best adapter (honours `WGPU_BACKEND` / `WGPU_ADAPTER_NAME` natively).
    pub async fn new(opts: GpuOptions) -> Result<Gpu> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: opts.power_preference,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::NoAdapter(e.to_string()))?;
        Self::from_adapter(adapter, opts).await
    }

    pub async fn from_adapter(adapter: wgpu::Adapter, opts: GpuOptions) -> Result<Gpu> {
        let available = adapter.features();
        let mut features = wgpu::Features::empty();
        for (f, wanted) in [
            (wgpu::Features::SHADER_F16, opts.allow_f16),
            (
                wgpu::Features::SUBGROUP,
                opts.allow_subgroups && wgsl_has_subgroup_id(),
            ),
            (wgpu::Features::TIMESTAMP_QUERY, true),
        ] {
            if wanted && available.contains(f) {
                features |= f;
            }
        }
        // Ask for everything the adapter really offers, not the WebGPU defaults.
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("webglide"),
                required_features: features,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::RequestDevice(e.to_string()))?;
        let info = adapter.get_info();
        let report = GpuReport {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: format!("{} {}", info.driver, info.driver_info)
                .trim()
                .to_string(),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            cooperative_matrix: available.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
            loop_bounding: opts.loop_bounding,
            unchecked_bounds: opts.unchecked_bounds,
            zero_workgroup_memory: opts.zero_workgroup_memory,
        };
        Ok(Self::from_parts(device, queue, report, opts))
    }

    /// Wraps an existing device (e.g. one shared with burn in the trainer).
    pub fn from_parts(
        device: wgpu::Device,
        queue: wgpu::Queue,
        mut report: GpuReport,
        opts: GpuOptions,
    ) -> Gpu {
        report.loop_bounding = opts.loop_bounding;
        report.unchecked_bounds = opts.unchecked_bounds;
        report.zero_workgroup_memory = opts.zero_workgroup_memory;
        let errors: Arc<Mutex<Option<String>>> = Arc::default();
        let lost: Arc<Mutex<Option<String>>> = Arc::default();
        {
            let errors = errors.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                let mut slot = errors.lock().unwrap();
                if slot.is_none() {
                    *slot = Some(e.to_string());
                }
            }));
            let lost = lost.clone();
            device.set_device_lost_callback(move |reason, msg| {
                let why = if msg.is_empty() {
                    format!("{reason:?}")
                } else {
                    format!("{reason:?}: {msg}")
                };
                *lost.lock().unwrap() = Some(why);
            });
        }
        let max_binding = match opts.max_binding_cap {
            Some(cap) => cap.min(report.max_storage_binding),
            None => report.max_storage_binding,
        };
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let pool = Arc::new(BufferPool::new(device.clone()));
        Gpu {
            device,
            queue,
            report,
            max_binding,
            poison: opts.poison,
            dry_run: opts.dry_run,
            lose_device_after: opts.lose_device_after,
            pool,
            modules: Mutex::default(),
            pipelines: Mutex::default(),
            dummy,
            errors,
            lost,
            submissions: Mutex::new(0),
            flops: Default::default(),
            constants: Mutex::default(),
        }
    }

    /// Fails if the device was lost or an earlier command raised a GPU error.
    pub fn check(&self) -> Result<()> {
        if let Some(msg) = self.lost.lock().unwrap().clone() {
            return Err(Error::DeviceLost(msg));
        }
        if let Some(msg) = self.errors.lock().unwrap().take() {
            return Err(self.lost_or(Error::Gpu(msg)));
        }
        Ok(())
    }

    /// `err`, unless the device is lost: then every new object is invalid and
    /// the errors they raise are symptoms, so the loss is what to report.
    /// Waits for the queue first (native), as wgpu reports a loss only once
    /// the submitted work has drained.
    pub(crate) fn lost_or(&self, err: Error) -> Error {
        #[cfg(not(target_arch = "wasm32"))]
        let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
        match self.lost.lock().unwrap().clone() {
            Some(msg) => Error::DeviceLost(msg),
            None => err,
        }
    }

    /// A constant tensor created once per device under `key` (e.g. frequency
    /// tables), so repeated kernel launches allocate nothing.
    pub fn cached_constant(
        &self,
        key: &str,
        shape: &[usize],
        make: impl FnOnce() -> Vec<f32>,
    ) -> Result<crate::Tensor> {
        if let Some(t) = self.constants.lock().unwrap().get(key) {
            return Ok(t.clone());
        }
        let t = self.constant(shape, &make())?;
        self.constants
            .lock()
            .unwrap()
            .insert(key.to_string(), t.clone());
        Ok(t)
    }

    /// Number of command submissions so far (tests check one per model step).
    /// Whether dispatches are skipped ([`GpuOptions::dry_run`]).
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    pub fn submissions(&self) -> u64 {
        *self.submissions.lock().unwrap()
    }

    /// Buffer-pool statistics: (buffers created, bytes live in GPU buffers, peak bytes).
    pub fn memory_stats(&self) -> crate::tensor::PoolStats {
        self.pool.stats()
    }

    pub(crate) fn pipeline(
        &self,
        kernel: &Kernel,
        constants: &[(&str, f64)],
    ) -> wgpu::ComputePipeline {
        let mut key = format!("{}:{}", kernel.name, kernel.entry);
        for (k, v) in constants {
            key.push_str(&format!(":{k}={v}"));
        }
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return p.clone();
        }
        // The f16 helper declares the weights as `vec2<f16>`, so it serves
        // only the f16 storage type; the launchers pass it as `W_DTYPE`.
        let variant = Variant {
            f16: kernel.weights
                && self.report.shader_f16
                && constants
                    .iter()
                    .any(|&(k, v)| k == "W_DTYPE" && v == WeightDType::F16.code() as f64),
            subgroups: kernel.reduce && self.report.subgroups,
        };
        let label = variant.label(kernel);
        let module = {
            let mut modules = self.modules.lock().unwrap();
            modules
                .entry(label.clone())
                .or_insert_with(|| {
                    let desc = wgpu::ShaderModuleDescriptor {
                        label: Some(&label),
                        source: wgpu::ShaderSource::Wgsl(variant.source(kernel).into()),
                    };
                    let base = if self.report.unchecked_bounds {
                        wgpu::ShaderRuntimeChecks::unchecked()
                    } else {
                        wgpu::ShaderRuntimeChecks::checked()
                    };
                    let checks = wgpu::ShaderRuntimeChecks {
                        force_loop_bounding: self.report.loop_bounding,
                        ..base
                    };
                    // SAFETY: buffer bounds checks stay on (unless a benchmark
                    // asks for `unchecked_bounds`); without loop
                    // bounding a shader must not loop forever, and every loop
                    // in shaders/ runs to a bound derived from sizes the
                    // launchers validate (see GpuOptions::loop_bounding).
                    unsafe { self.device.create_shader_module_trusted(desc, checks) }
                })
                .clone()
        };
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&key),
                layout: None,
                module: &module,
                entry_point: Some(kernel.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    zero_initialize_workgroup_memory: self.report.zero_workgroup_memory,
                },
                cache: None,
            });
        self.pipelines.lock().unwrap().insert(key, pipeline.clone());
        pipeline
    }

    /// The shader modules built so far, by kernel file and helper variant
    /// (`softmax.wgsl+subgroups`, `matmul.wgsl+f16`, `conv2d.wgsl`, …), sorted.
    pub fn shader_modules(&self) -> Vec<String> {
        let mut names: Vec<String> = self.modules.lock().unwrap().keys().cloned().collect();
        names.sort();
        names
    }

    /// Starts recording one command submission.
    pub fn recorder(&self) -> Recorder<'_> {
        Recorder::new(self)
    }

    /// Records with `record`, submits, and returns the GPU time the recorded
    /// compute passes took (seconds, from timestamp queries written at the
    /// start and end of each pass), or `None` where the adapter has no
    /// timestamp queries (callers fall back to wall-clock time).
    pub async fn gpu_time(
        &self,
        record: impl FnOnce(&mut Recorder<'_>) -> Result<()>,
    ) -> Result<Option<f64>> {
        let mut rec = self.recorder();
        if self.report.timestamps {
            let set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("pass timer"),
                ty: wgpu::QueryType::Timestamp,
                count: TIMER_QUERIES,
            });
            rec.timer = Some((set, 0));
        }
        record(&mut rec)?;
        let Some((set, used)) = rec.timer.take() else {
            rec.submit()?;
            return Ok(None);
        };
        if used == 0 {
            rec.submit()?;
            return Ok(Some(0.0));
        }
        let bytes = used as u64 * 8;
        let resolved = self.pool.get(
            bytes,
            wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        );
        rec.raw_encoder()
            .resolve_query_set(&set, 0..used, &resolved.buffer, 0);
        rec.submit()?;
        let words = self.read_words(&resolved.buffer, bytes).await?;
        let ticks: u64 = words
            .chunks_exact(4)
            .map(|w| {
                let begin = w[0] as u64 | (w[1] as u64) << 32;
                let end = w[2] as u64 | (w[3] as u64) << 32;
                end.saturating_sub(begin)
            })
            .sum();
        Ok(Some(
            ticks as f64 * self.queue.get_timestamp_period() as f64 * 1e-9,
        ))
    }

    /// Blocks (native) or yields (wasm) until all submitted work is done.
    pub async fn wait_idle(&self) -> Result<()> {
        let (tx, rx) = futures_channel::oneshot::channel();
        self.queue.on_submitted_work_done(move || {
            let _ = tx.send(());
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(e.to_string()))?;
        rx.await.map_err(|_| Error::Gpu("queue dropped".into()))?;
        self.check()
    }

    /// Floating-point operations (a multiply-add counts 2) of the matmul,
    /// conv and attention dispatches recorded on this device so far: the
    /// model's arithmetic, for rates in benchmarks. Other kernels are
    /// memory-bound and not counted.
    pub fn flops_recorded(&self) -> u64 {
        self.flops.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn count_flops(&self, flops: u64) {
        self.flops
            .fetch_add(flops, std::sync::atomic::Ordering::Relaxed);
    }

    fn count_submission(&self) {
        let mut n = self.submissions.lock().unwrap();
        *n += 1;
        if self.lose_device_after == Some(*n) {
            self.device.destroy();
        }
    }
}

/// Whether WGSL has the `subgroup_id`/`num_subgroups` builtins the subgroup
/// reductions index by: always in naga; in a browser, where its WGSL reports
/// the `subgroup_id` language extension (Chrome 144+).
fn wgsl_has_subgroup_id() -> bool {
    #[cfg(target_arch = "wasm32")]
    {
        use js_sys::{Function, Reflect};
        use wasm_bindgen::{JsCast, JsValue};
        let get = |v: &JsValue, k: &str| Reflect::get(v, &JsValue::from_str(k)).ok();
        let features = get(&js_sys::global(), "navigator")
            .and_then(|n| get(&n, "gpu"))
            .and_then(|g| get(&g, "wgslLanguageFeatures"));
        let Some(features) = features.filter(|f| f.is_object()) else {
            return false;
        };
        get(&features, "has")
            .and_then(|has| has.dyn_into::<Function>().ok())
            .and_then(|has| has.call1(&features, &JsValue::from_str("subgroup_id")).ok())
            .is_some_and(|v| v.is_truthy())
    }
    #[cfg(not(target_arch = "wasm32"))]
    true
}

/// A storage binding: a byte range of a buffer.
#[derive(Clone, Copy)]
pub struct Bind<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

/// Records dispatches into one command encoder; [`Recorder::submit`] sends
/// them as one submission. Kernel parameters go into a pooled uniform arena
/// written once per submission, so steady-state recording allocates no GPU
/// buffers.
pub struct Recorder<'g> {
    gpu: &'g Gpu,
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    params: Vec<u8>,
    arena: PooledBuffer,
    dispatches: u64,
    /// Timestamp queries written at the start and end of every compute pass
    /// (set by [`Gpu::gpu_time`]), and how many are used.
    timer: Option<(wgpu::QuerySet, u32)>,
}

/// Timestamp queries one timed recording may use: two per compute pass.
const TIMER_QUERIES: u32 = 256;

impl<'g> Recorder<'g> {
    fn new(gpu: &'g Gpu) -> Self {
        gpu.pool.begin_recording();
        let arena = gpu.pool.get_for_write(
            PARAM_SLOT * ARENA_SLOTS,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        );
        Recorder {
            gpu,
            encoder: None,
            pass: None,
            params: Vec::new(),
            arena,
            dispatches: 0,
            timer: None,
        }
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    /// Number of dispatches recorded so far.
    pub fn dispatches(&self) -> u64 {
        self.dispatches
    }

    fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.encoder.get_or_insert_with(|| {
            self.gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
        })
    }

    fn end_pass(&mut self) {
        self.pass = None;
    }

    /// Records one dispatch. `params` (≤ 256 bytes of u32/f32 words) is bound at
    /// binding 0 as a uniform; `binds` follow at bindings 1, 2, ….
    pub fn dispatch(
        &mut self,
        kernel: &Kernel,
        constants: &[(&str, f64)],
        params: &[u32],
        binds: &[Bind<'_>],
        groups: [u32; 3],
    ) -> Result<()> {
        assert!(
            params.len() * 4 <= PARAM_SLOT as usize,
            "kernel params exceed one slot"
        );
        let max_groups = self.gpu.report.max_workgroups_per_dim;
        if groups.iter().any(|&g| g > max_groups) {
            return Err(Error::TooLarge {
                what: format!("{} dispatch {:?} workgroups", kernel.name, groups),
                bytes: *groups.iter().max().unwrap() as u64,
                limit: max_groups as u64,
            });
        }
        if groups.contains(&0) {
            return Ok(());
        }
        for b in binds {
            if b.size > self.gpu.max_binding {
                return Err(Error::TooLarge {
                    what: format!("a {} binding", kernel.name),
                    bytes: b.size,
                    limit: self.gpu.max_binding,
                });
            }
        }
        if self.gpu.pool.take_pressure() {
            // Idle buffers of other sizes pile up: submitting makes those freed
            // while recording safe to destroy.
            self.flush();
            self.gpu.pool.trim();
        }
        if self.gpu.dry_run {
            self.dispatches += 1;
            return Ok(());
        }
        if self.params.len() as u64 >= PARAM_SLOT * ARENA_SLOTS {
            self.flush();
        }
        let offset = self.params.len() as u64;
        let mut words = params.to_vec();
        words.resize(words.len().div_ceil(4).max(1) * 4, 0);
        self.params.extend_from_slice(bytemuck::cast_slice(&words));
        self.params.resize((offset + PARAM_SLOT) as usize, 0);

        let pipeline = self.gpu.pipeline(kernel, constants);
        let layout = pipeline.get_bind_group_layout(0);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.arena.buffer,
                offset,
                size: wgpu::BufferSize::new((words.len() * 4) as u64),
            }),
        }];
        for (i, b) in binds.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.buffer,
                    offset: b.offset,
                    size: wgpu::BufferSize::new(b.size.max(4)),
                }),
            });
        }
        let bind_group = self
            .gpu
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &layout,
                entries: &entries,
            });
        if self.pass.is_none() {
            let timer = match &mut self.timer {
                Some((set, used)) if *used + 2 <= TIMER_QUERIES => {
                    *used += 2;
                    Some((set.clone(), *used - 2))
                }
                // Out of queries: the sum would miss passes, so stop timing
                // (gpu_time then reports none, as without the feature).
                _ => {
                    self.timer = None;
                    None
                }
            };
            let pass = self
                .encoder()
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: timer.as_ref().map(|(set, i)| {
                        wgpu::ComputePassTimestampWrites {
                            query_set: set,
                            beginning_of_pass_write_index: Some(*i),
                            end_of_pass_write_index: Some(*i + 1),
                        }
                    }),
                })
                .forget_lifetime();
            self.pass = Some(pass);
        }
        let pass = self.pass.as_mut().unwrap();
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        self.dispatches += 1;
        Ok(())
    }

    /// Records a buffer-to-buffer copy (ends the current compute pass).
    pub fn copy(
        &mut self,
        src: &wgpu::Buffer,
        src_off: u64,
        dst: &wgpu::Buffer,
        dst_off: u64,
        size: u64,
    ) {
        self.end_pass();
        self.encoder()
            .copy_buffer_to_buffer(src, src_off, dst, dst_off, size);
    }

    /// Access to the raw encoder (ends the current compute pass).
    pub fn raw_encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.end_pass();
        self.encoder()
    }

    /// Writes the parameter arena and submits everything recorded so far.
    fn flush(&mut self) {
        self.end_pass();
        if let Some(encoder) = self.encoder.take() {
            if !self.params.is_empty() {
                self.gpu
                    .queue
                    .write_buffer(&self.arena.buffer, 0, &self.params);
            }
            self.gpu.queue.submit([encoder.finish()]);
            self.gpu.count_submission();
        }
        self.gpu.pool.submitted();
        self.params.clear();
    }

    /// Submits the recorded work (one submission unless the arena overflowed).
    pub fn submit(mut self) -> Result<()> {
        self.flush();
        self.gpu.check()
    }
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        // Work recorded but never submitted is still sent: dropping silently
        // would leave outputs unwritten.
        self.flush();
        self.gpu.pool.end_recording();
    }
}

/// Splits a 1-D count of workgroups over x/y so no dimension exceeds the limit.
/// Kernels rebuild the linear id as `wg.x + wg.y * num_workgroups.x`.
pub fn grid(groups: u64) -> [u32; 3] {
    const MAX: u64 = 65535;
    if groups <= MAX {
        [groups as u32, 1, 1]
    } else {
        let y = groups.div_ceil(MAX);
        [groups.div_ceil(y) as u32, y as u32, 1]
    }
}
