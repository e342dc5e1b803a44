//! GPU tensors and the buffer pool behind them.
//!
//! Activations are f32 (token ids u32), row-major, 4 bytes per element. A
//! tensor owns a pooled buffer: when the last clone is dropped the buffer goes
//! back to the pool, so a sampling loop that repeats the same shapes every step
//! allocates nothing after the first step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use crate::error::{Error, Result};
use crate::gpu::{Bind, Gpu};
use crate::quant::{WeightDType, WeightData};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// GPU buffers created so far (a steady-state loop must not raise this).
    pub created: u64,
    /// Bytes held in GPU buffers (in use or free in the pool).
    pub bytes: u64,
    /// Most bytes ever held.
    pub peak_bytes: u64,
    /// The largest single buffer created (what one binding can be at most).
    pub largest_buffer: u64,
    /// Bytes of the buffers on loan (tensors alive), and the most ever:
    /// what `peak_bytes` would be if the pool kept nothing free.
    pub in_use: u64,
    pub peak_in_use: u64,
}

pub(crate) struct BufferPool {
    device: wgpu::Device,
    free: Mutex<HashMap<(u64, u32), Vec<FreeBuffer>>>,
    stats: Mutex<PoolStats>,
    recording: Mutex<Recording>,
    /// Set when idle free buffers pile up (see [`BufferPool::take_pressure`]).
    pressure: std::sync::atomic::AtomicBool,
}

/// Idle bytes in free buffers that make the pool ask for a flush + trim:
/// a quarter of the bytes in use, at least 256 MiB. Steps of a sampling loop
/// stay far below it; Karlo's SR at 256 px (tensors of 20 to 240 MiB freed
/// within one step's recording) would otherwise hold 1.5 times what it uses.
fn idle_limit(in_use: u64) -> u64 {
    (in_use / 4).max(256 << 20)
}

/// Open recorders, and a generation that advances whenever all work recorded
/// so far has been submitted.
#[derive(Default)]
struct Recording {
    open: usize,
    generation: u64,
}

/// A returned buffer. One returned while a [`crate::Recorder`] was open may
/// still be read by recorded, unsubmitted work: `queue.write_buffer` lands
/// before that work runs, so such a buffer is not handed out for host writes
/// until the recording is submitted (kernel outputs may reuse it at once:
/// recorded work runs in order).
struct FreeBuffer {
    buffer: wgpu::Buffer,
    dirty_in: Option<u64>,
}

/// A buffer on loan from the pool; returned on drop.
pub struct PooledBuffer {
    pub buffer: wgpu::Buffer,
    size: u64,
    usage: wgpu::BufferUsages,
    pool: Weak<BufferPool>,
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.stats.lock().unwrap().in_use -= self.size;
            let dirty_in = {
                let r = pool.recording.lock().unwrap();
                (r.open > 0).then_some(r.generation)
            };
            pool.free
                .lock()
                .unwrap()
                .entry((self.size, self.usage.bits()))
                .or_default()
                .push(FreeBuffer {
                    buffer: self.buffer.clone(),
                    dirty_in,
                });
        }
    }
}

impl BufferPool {
    pub(crate) fn new(device: wgpu::Device) -> Self {
        BufferPool {
            device,
            free: Mutex::default(),
            stats: Mutex::default(),
            recording: Mutex::default(),
            pressure: Default::default(),
        }
    }

    /// True (once) when the free buffers hold more than [`idle_limit`]:
    /// the recorder then submits what it holds, so that the buffers freed
    /// while recording stop being pending, and trims the pool.
    pub(crate) fn take_pressure(&self) -> bool {
        self.pressure
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn begin_recording(&self) {
        self.recording.lock().unwrap().open += 1;
    }

    /// A recorder submitted everything it holds: if it is the only one open,
    /// every buffer returned so far is free of pending reads.
    pub(crate) fn submitted(&self) {
        let mut r = self.recording.lock().unwrap();
        if r.open == 1 {
            r.generation += 1;
        }
    }

    pub(crate) fn end_recording(&self) {
        let mut r = self.recording.lock().unwrap();
        r.open -= 1;
        if r.open == 0 {
            r.generation += 1;
        }
    }

    pub(crate) fn stats(&self) -> PoolStats {
        *self.stats.lock().unwrap()
    }

    /// A buffer of at least `size` bytes (rounded up to 256) for GPU-side
    /// writes (kernel outputs, copies). Contents are arbitrary.
    pub(crate) fn get(self: &Arc<Self>, size: u64, usage: wgpu::BufferUsages) -> PooledBuffer {
        self.take(size, usage, false)
    }

    /// A buffer the host will fill with `queue.write_buffer`: never one that
    /// unsubmitted recorded work may still read.
    pub(crate) fn get_for_write(
        self: &Arc<Self>,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> PooledBuffer {
        self.take(size, usage, true)
    }

    fn take(self: &Arc<Self>, size: u64, usage: wgpu::BufferUsages, host: bool) -> PooledBuffer {
        let size = size.max(16).div_ceil(256) * 256;
        let generation = self.recording.lock().unwrap().generation;
        let usable = |f: &FreeBuffer| !host || f.dirty_in.is_none_or(|g| g < generation);
        let reused = {
            let mut free = self.free.lock().unwrap();
            // The smallest free buffer that fits, at most four times the
            // request: tensors of a step come in many sizes, and exact matches
            // alone leave the large ones idle while others are created.
            let fit = free
                .iter()
                .filter(|(&(s, u), v)| {
                    u == usage.bits() && s >= size && s <= 4 * size && v.iter().any(usable)
                })
                .map(|(&key, _)| key)
                .min();
            fit.map(|key| {
                let v = free.get_mut(&key).expect("found above");
                let i = v.iter().rposition(usable).expect("found above");
                (key.0, v.swap_remove(i).buffer)
            })
        };
        let (size, buffer) = reused.unwrap_or_else(|| {
            let mut s = self.stats.lock().unwrap();
            s.created += 1;
            s.bytes += size;
            s.peak_bytes = s.peak_bytes.max(s.bytes);
            s.largest_buffer = s.largest_buffer.max(size);
            if s.bytes - s.in_use - size > idle_limit(s.in_use + size) {
                self.pressure
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage,
                mapped_at_creation: false,
            });
            (size, buffer)
        });
        {
            let mut s = self.stats.lock().unwrap();
            s.in_use += size;
            s.peak_in_use = s.peak_in_use.max(s.in_use);
        }
        PooledBuffer {
            buffer,
            size,
            usage,
            pool: Arc::downgrade(self),
        }
    }

    /// Destroys the free buffers (e.g. after a model is unloaded), except
    /// those unsubmitted recorded work may still use.
    pub(crate) fn trim(&self) {
        let generation = self.recording.lock().unwrap().generation;
        let mut free = self.free.lock().unwrap();
        let mut s = self.stats.lock().unwrap();
        for (&(size, _), bufs) in free.iter_mut() {
            bufs.retain(|f| {
                let pending = f.dirty_in.is_some_and(|g| g >= generation);
                if !pending {
                    s.bytes -= size;
                    f.buffer.destroy();
                }
                pending
            });
        }
        free.retain(|_, bufs| !bufs.is_empty());
    }
}

const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_DST)
    .union(wgpu::BufferUsages::COPY_SRC);

/// A GPU tensor: shape + pooled storage of 4-byte elements.
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    buf: Arc<PooledBuffer>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor{:?}", self.shape)
    }
}

impl Tensor {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn bytes(&self) -> u64 {
        self.numel() as u64 * 4
    }
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buf.buffer
    }
    /// Same storage, new shape (element count must match).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if shape.iter().product::<usize>() != self.numel() {
            return crate::error::shape_err("reshape", format!("{:?} -> {:?}", self.shape, shape));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            buf: self.buf.clone(),
        })
    }
    /// Binding of the whole tensor.
    pub fn bind(&self) -> Bind<'_> {
        Bind {
            buffer: &self.buf.buffer,
            offset: 0,
            size: self.bytes(),
        }
    }
    /// Binding of items `start..start+count` along the first dimension.
    pub fn bind_items(&self, start: usize, count: usize) -> Bind<'_> {
        let item = self.bytes() / self.shape[0].max(1) as u64;
        Bind {
            buffer: &self.buf.buffer,
            offset: start as u64 * item,
            size: count as u64 * item,
        }
    }
    /// Binding of `piece` of this `[N, C, ...]` tensor (see [`Piece`]).
    pub(crate) fn bind_piece(&self, piece: Piece) -> Bind<'_> {
        let item = self.bytes() / self.shape[0].max(1) as u64;
        let channel = item / self.shape.get(1).copied().unwrap_or(1).max(1) as u64;
        Bind {
            buffer: &self.buf.buffer,
            offset: piece.n0 as u64 * item + piece.c0 as u64 * channel,
            size: (piece.nc as u64 - 1) * item + piece.cc as u64 * channel,
        }
    }
    /// True when both tensors share storage.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.buf, &other.buf)
    }
}

/// A weight matrix `[rows, cols]` in one of the storage types; conv weights
/// are `[c_out, c_in·k·k]` (the PyTorch layout flattened).
pub struct Weight {
    pub dtype: WeightDType,
    pub rows: usize,
    pub cols: usize,
    /// The original tensor shape (e.g. `[c_out, c_in, 3, 3]`).
    pub shape: Vec<usize>,
    buf: PooledBuffer,
    words: usize,
}

impl Weight {
    pub fn bind(&self) -> Bind<'_> {
        Bind {
            buffer: &self.buf.buffer,
            offset: 0,
            size: self.words as u64 * 4,
        }
    }
    /// u32 words per row in the storage layout.
    pub fn row_words(&self) -> usize {
        self.dtype.row_words(self.cols)
    }
}

impl Gpu {
    /// An uninitialised tensor from the pool.
    pub fn empty(&self, shape: &[usize]) -> Result<Tensor> {
        let bytes = shape.iter().product::<usize>() as u64 * 4;
        self.alloc(shape, bytes, self.poison)
    }

    /// `host`: the buffer will be written with `queue.write_buffer`.
    fn alloc(&self, shape: &[usize], bytes: u64, host: bool) -> Result<Tensor> {
        if bytes > self.report.max_buffer_size {
            return Err(Error::TooLarge {
                what: format!("tensor {shape:?}"),
                bytes,
                limit: self.report.max_buffer_size,
            });
        }
        let buf = if host {
            self.pool.get_for_write(bytes, STORAGE)
        } else {
            self.pool.get(bytes, STORAGE)
        };
        let t = Tensor {
            shape: shape.to_vec(),
            buf: Arc::new(buf),
        };
        if self.poison && bytes > 0 {
            let nan = vec![f32::NAN; bytes as usize / 4];
            self.queue
                .write_buffer(t.buffer(), 0, bytemuck::cast_slice(&nan));
        }
        Ok(t)
    }

    /// A tensor in a buffer of its own, filled at creation (no queued write), so it
    /// is safe to create while a [`crate::Recorder`] holds work. For constants.
    pub fn constant(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        if shape.iter().product::<usize>() != data.len() {
            return crate::error::shape_err(
                "constant",
                format!("shape {shape:?} but {} values", data.len()),
            );
        }
        let size = (data.len() as u64 * 4).max(16).div_ceil(16) * 16;
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("constant"),
            size,
            usage: STORAGE,
            mapped_at_creation: true,
        });
        {
            let mut view = buffer
                .slice(..)
                .get_mapped_range_mut()
                // On a lost device every new buffer is invalid: report the loss.
                .map_err(|e| self.lost_or(Error::Gpu(e.to_string())))?;
            let mut bytes = vec![0u8; size as usize];
            bytes[..data.len() * 4].copy_from_slice(bytemuck::cast_slice(data));
            view.copy_from_slice(&bytes);
        }
        buffer.unmap();
        Ok(Tensor {
            shape: shape.to_vec(),
            buf: Arc::new(PooledBuffer {
                buffer,
                size,
                usage: STORAGE,
                pool: Weak::new(),
            }),
        })
    }

    pub fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        self.upload_words(shape, bytemuck::cast_slice(data))
    }

    pub fn upload_u32(&self, shape: &[usize], data: &[u32]) -> Result<Tensor> {
        self.upload_words(shape, data)
    }

    fn upload_words(&self, shape: &[usize], data: &[u32]) -> Result<Tensor> {
        if shape.iter().product::<usize>() != data.len() {
            return crate::error::shape_err(
                "upload",
                format!("shape {shape:?} but {} values", data.len()),
            );
        }
        // Safe while a Recorder holds work: the buffer is not one that work reads.
        let t = self.alloc(shape, data.len() as u64 * 4, true)?;
        if !data.is_empty() {
            self.queue
                .write_buffer(t.buffer(), 0, bytemuck::cast_slice(data));
        }
        Ok(t)
    }

    /// Overwrites a tensor's contents from the host. The write lands before
    /// any work recorded but not yet submitted: do not overwrite a tensor an
    /// open [`crate::Recorder`] reads.
    pub fn write(&self, t: &Tensor, data: &[f32]) -> Result<()> {
        if t.numel() != data.len() {
            return crate::error::shape_err(
                "write",
                format!("tensor {:?} but {} values", t.shape(), data.len()),
            );
        }
        self.queue
            .write_buffer(t.buffer(), 0, bytemuck::cast_slice(data));
        Ok(())
    }

    pub fn upload_weight(&self, w: &WeightData) -> Result<Weight> {
        let bytes = w.words.len() as u64 * 4;
        if bytes > self.max_binding {
            return Err(Error::TooLarge {
                what: format!("weight {:?}", w.shape),
                bytes,
                limit: self.max_binding,
            });
        }
        let buf = self.pool.get_for_write(bytes, STORAGE);
        self.queue
            .write_buffer(&buf.buffer, 0, bytemuck::cast_slice(&w.words));
        Ok(Weight {
            dtype: w.dtype,
            rows: w.rows,
            cols: w.cols,
            shape: w.shape.clone(),
            buf,
            words: w.words.len(),
        })
    }

    /// Reads a tensor back to the host as f32.
    pub async fn read(&self, t: &Tensor) -> Result<Vec<f32>> {
        let words = self.read_words(t.buffer(), t.bytes()).await?;
        Ok(bytemuck::cast_slice(&words).to_vec())
    }

    pub async fn read_u32(&self, t: &Tensor) -> Result<Vec<u32>> {
        self.read_words(t.buffer(), t.bytes()).await
    }

    pub(crate) async fn read_words(&self, src: &wgpu::Buffer, bytes: u64) -> Result<Vec<u32>> {
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let staging = self.pool.get(
            bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        enc.copy_buffer_to_buffer(src, 0, &staging.buffer, 0, bytes);
        self.queue.submit([enc.finish()]);
        let (tx, rx) = futures_channel::oneshot::channel();
        staging
            .buffer
            .slice(..bytes)
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        // A failed map on a lost device reports the loss (the page offers to reopen the GPU).
        let failed = |e: String| {
            self.check()
                .err()
                .unwrap_or_else(|| self.lost_or(Error::Readback(e)))
        };
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| failed(e.to_string()))?;
        rx.await
            .map_err(|_| failed("map callback dropped".into()))?
            .map_err(|e| failed(e.to_string()))?;
        // wgpu reports a loss from a poll after the work drained: poll once
        // more, or a device lost after the last submission reads back
        // garbage as a success.
        #[cfg(not(target_arch = "wasm32"))]
        let _ = self.device.poll(wgpu::PollType::Poll);
        self.check()?;
        let out = {
            let view = staging
                .buffer
                .slice(..bytes)
                .get_mapped_range()
                .map_err(|e| failed(e.to_string()))?;
            bytemuck::cast_slice::<u8, u32>(&view).to_vec()
        };
        staging.buffer.unmap();
        Ok(out)
    }

    /// Frees the pooled buffers nobody uses.
    pub fn trim_memory(&self) {
        self.pool.trim();
    }

    /// Splits `n` items along the first dimension into chunks whose bindings
    /// stay within `max_binding`. `item_bytes` lists the per-item size of each
    /// batched binding. Items must start at 256-byte offsets when split.
    pub(crate) fn batch_chunks(&self, n: usize, item_bytes: &[u64]) -> Result<Vec<(usize, usize)>> {
        let limit = self.max_binding;
        let biggest = item_bytes.iter().copied().max().unwrap_or(0);
        if biggest * n as u64 <= limit || n == 0 {
            return Ok(vec![(0, n)]);
        }
        if biggest > limit {
            return Err(Error::TooLarge {
                what: "one batch item of a binding".into(),
                bytes: biggest,
                limit,
            });
        }
        if item_bytes.iter().any(|b| b % 256 != 0) {
            return Err(Error::Invalid(format!(
                "a tensor over the binding limit ({limit} bytes) must have batch items of a multiple of 256 bytes"
            )));
        }
        let per = (limit / biggest) as usize;
        Ok((0..n).step_by(per).map(|s| (s, per.min(n - s))).collect())
    }
}

/// One dispatch's share of `[N, C, ...]` tensors: items `n0..n0+nc` whole, or,
/// when one item is over the binding limit (Karlo's SR at 256 px holds 960
/// channels, 240 MiB), channels `c0..c0+cc` of item `n0` alone (`nc` = 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    pub n0: usize,
    pub nc: usize,
    pub c0: usize,
    pub cc: usize,
}

impl Gpu {
    /// Pieces of `n` items of `c` channels for tensors bound together, each
    /// with `channel_bytes` per channel. Channel ranges hold whole multiples
    /// of `align` channels (GroupNorm groups) and start 256-byte aligned.
    pub(crate) fn pieces(
        &self,
        n: usize,
        c: usize,
        channel_bytes: &[u64],
        align: usize,
    ) -> Result<Vec<Piece>> {
        let items: Vec<u64> = channel_bytes.iter().map(|b| b * c as u64).collect();
        if items.iter().all(|&b| b <= self.max_binding) {
            let chunks = self.batch_chunks(n, &items)?;
            return Ok(chunks
                .into_iter()
                .map(|(n0, nc)| Piece {
                    n0,
                    nc,
                    c0: 0,
                    cc: c,
                })
                .collect());
        }
        let ranges = self.channel_ranges(c, channel_bytes, align)?;
        if n > 1 && items.iter().any(|b| b % 256 != 0) {
            return Err(Error::Invalid(format!(
                "a tensor over the binding limit ({} bytes) must have batch items of a multiple of 256 bytes",
                self.max_binding
            )));
        }
        Ok((0..n)
            .flat_map(|n0| {
                ranges
                    .iter()
                    .map(move |&(c0, cc)| Piece { n0, nc: 1, c0, cc })
            })
            .collect())
    }

    /// Splits `c` channels into the fewest near-equal ranges whose bindings
    /// (`channel_bytes` per channel, per bound tensor) stay within the
    /// binding limit; range starts are multiples of `align` channels at
    /// 256-byte offsets.
    pub(crate) fn channel_ranges(
        &self,
        c: usize,
        channel_bytes: &[u64],
        align: usize,
    ) -> Result<Vec<(usize, usize)>> {
        let align = align.max(1);
        let widest = channel_bytes.iter().copied().max().unwrap_or(0);
        if widest * c as u64 <= self.max_binding || c == 0 {
            return Ok(vec![(0, c)]);
        }
        // The smallest multiple of `align` channels that keeps every offset aligned.
        let step = (1..=256)
            .map(|k| k * align)
            .find(|s| {
                channel_bytes
                    .iter()
                    .all(|b| (*s as u64 * b).is_multiple_of(256))
            })
            .ok_or_else(|| {
                Error::Invalid("channel ranges cannot start at 256-byte offsets".into())
            })?;
        let steps_per_range = (self.max_binding / (step as u64 * widest)) as usize;
        if steps_per_range == 0 {
            return Err(Error::TooLarge {
                what: format!("{step} channels of a binding"),
                bytes: step as u64 * widest,
                limit: self.max_binding,
            });
        }
        let count = c.div_ceil(steps_per_range * step);
        let per = c.div_ceil(count).div_ceil(step) * step;
        Ok((0..c)
            .step_by(per)
            .map(|c0| (c0, per.min(c - c0)))
            .collect())
    }
}

// Make the wgpu::Buffer accessible for ad-hoc binds from the pool type.
impl std::ops::Deref for PooledBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}
