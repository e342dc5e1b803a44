//! Reading PyTorch checkpoints (`torch.save` zip archives) without Python: a
//! small pickle machine for the opcodes `torch.save` emits for state dicts,
//! plus tensor reconstruction from the archive's storage files.

use std::collections::HashMap;
use std::io::Read;

use anyhow::{anyhow, bail, Context, Result};

// Payloads of scalar variants are only read through Debug (error messages).
#[allow(dead_code)]
#[derive(Clone, Debug)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    /// persistent id (torch storages)
    Persistent(Box<Value>),
    Tensor(TensorRef),
    /// A TorchScript module (`__torch__.…` class): its attributes, set by BUILD.
    Object(Vec<(Value, Value)>),
    /// An object we do not interpret (e.g. a module's state); kept opaque.
    Opaque,
}

#[derive(Clone, Debug)]
pub struct TensorRef {
    pub dtype: DType,
    pub storage_key: String,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    /// Integer tensors (e.g. CLIP's `context_length` buffer), read as f32.
    I64,
    I32,
}

impl DType {
    fn from_storage(name: &str) -> Result<Self> {
        Ok(match name {
            "FloatStorage" => DType::F32,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "DoubleStorage" => DType::F64,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            other => bail!("unsupported tensor storage type torch.{other}"),
        })
    }
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::F64 | DType::I64 => 8,
        }
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Values copied in or out of the memo or walked by nesting checks so
    /// far, and the most allowed.
    work: usize,
    max_work: usize,
}

/// Values memo copies may make in all, per byte of pickle (and at least
/// `MIN_COPIES`): torch.save's state dicts copy ~37 values per tensor, whose
/// pickle takes ~115 bytes (0.3 a byte); a pickle of 300 bytes that doubles
/// a list forty times would copy 2⁴⁰.
const COPIES_PER_BYTE: usize = 4;
const MIN_COPIES: usize = 1 << 16;

/// How deep values may nest: dropping, copying and printing them recurse.
const MAX_DEPTH: usize = 200;

/// Fails when a value about to go into a container is nested too deep. The
/// check walks the values, so its walking is counted like memo copies (a
/// pickle wrapping one wide value over and over would walk it each time).
fn nest<'v>(m: &mut Machine, items: impl IntoIterator<Item = &'v Value>) -> Result<()> {
    for v in items {
        if v.deeper_than(MAX_DEPTH, &mut m.work) {
            bail!("pickle values nested over {MAX_DEPTH} deep (not a checkpoint?)");
        }
        if m.work > m.max_work {
            bail!(
                "pickle values walked over {} times (not a checkpoint?)",
                m.max_work
            );
        }
    }
    Ok(())
}

impl Value {
    /// Whether this value nests more than `limit` levels (a scalar is one),
    /// counting the values it looks at in `walked`.
    fn deeper_than(&self, limit: usize, walked: &mut usize) -> bool {
        *walked += 1;
        if limit == 0 {
            return true;
        }
        match self {
            Value::Tuple(v) | Value::List(v) => v.iter().any(|x| x.deeper_than(limit - 1, walked)),
            Value::Dict(d) | Value::Object(d) => d
                .iter()
                .any(|(k, x)| k.deeper_than(limit - 1, walked) || x.deeper_than(limit - 1, walked)),
            Value::Persistent(v) => v.deeper_than(limit - 1, walked),
            _ => false,
        }
    }

    /// The values in this one (itself included), counting up to `limit`.
    fn nodes(&self, limit: usize) -> usize {
        let mut n = 1;
        let add = |v: &Value, n: &mut usize| {
            if *n < limit {
                *n += v.nodes(limit - *n);
            }
        };
        match self {
            Value::Tuple(v) | Value::List(v) => v.iter().for_each(|x| add(x, &mut n)),
            Value::Dict(d) | Value::Object(d) => d.iter().for_each(|(k, x)| {
                add(k, &mut n);
                add(x, &mut n);
            }),
            Value::Persistent(v) => add(v, &mut n),
            _ => {}
        }
        n
    }
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.data.len() - self.pos {
            bail!("pickle data ends early (truncated checkpoint?)");
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn line(&mut self) -> Result<String> {
        let start = self.pos;
        while self.pos < self.data.len() && self.data[self.pos] != b'\n' {
            self.pos += 1;
        }
        let s = String::from_utf8_lossy(&self.data[start..self.pos]).into_owned();
        self.take(1)?;
        Ok(s)
    }
    /// A copy of memo entry `i`. Values are copied, not shared, so copies
    /// are counted: a few bytes of GET/PUT pairs could otherwise double a
    /// value per opcode (a "billion laughs" pickle).
    fn memo_get(&mut self, i: u32) -> Result<Value> {
        let v = self
            .memo
            .get(&i)
            .ok_or_else(|| anyhow!("pickle memo {i} missing"))?;
        self.charge(v.nodes(self.max_work + 1))?;
        Ok(self.memo[&i].clone())
    }
    /// Counts a copy of `nodes` values against the allowance (before making it).
    fn charge(&mut self, nodes: usize) -> Result<()> {
        self.work += nodes;
        if self.work > self.max_work {
            bail!(
                "pickle memo copies over {} values (not a checkpoint?)",
                self.max_work
            );
        }
        Ok(())
    }
    /// Stores a copy of the top of the stack as memo entry `i` (counted like [`Self::memo_get`]).
    fn memo_put(&mut self, i: u32) -> Result<()> {
        let top = self
            .stack
            .last()
            .ok_or_else(|| anyhow!("memo of empty stack"))?;
        self.charge(top.nodes(self.max_work + 1))?;
        let top = self.stack[self.stack.len() - 1].clone();
        self.memo.insert(i, top);
        Ok(())
    }
    fn pop(&mut self) -> Result<Value> {
        self.stack
            .pop()
            .ok_or_else(|| anyhow!("pickle stack underflow"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| anyhow!("pickle MARK missing"))?;
        if m > self.stack.len() {
            bail!("pickle MARK beyond the stack");
        }
        Ok(self.stack.split_off(m))
    }
    fn str(&mut self, n: usize) -> Result<Value> {
        Ok(Value::Str(
            String::from_utf8(self.take(n)?.to_vec()).context("pickle string is not UTF-8")?,
        ))
    }

    fn reduce(callable: Value, args: Value) -> Result<Value> {
        let Value::Global(module, name) = &callable else {
            return Ok(Value::Opaque);
        };
        let args = match args {
            Value::Tuple(a) => a,
            _ => bail!("pickle REDUCE without an argument tuple"),
        };
        match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") => Ok(Value::Dict(Vec::new())),
            // TorchScript archives pickle their modules as objects of code/ classes.
            (m, _) if m == "__torch__" || m.starts_with("__torch__.") => {
                Ok(Value::Object(Vec::new()))
            }
            // A Parameter wraps its tensor.
            ("torch._utils", "_rebuild_parameter") => match args.into_iter().next() {
                Some(t @ Value::Tensor(_)) => Ok(t),
                _ => bail!("unexpected _rebuild_parameter arguments"),
            },
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                let mut it = args.into_iter();
                let (
                    Some(Value::Persistent(pid)),
                    Some(Value::Int(offset)),
                    Some(Value::Tuple(size)),
                    Some(Value::Tuple(stride)),
                ) = (it.next(), it.next(), it.next(), it.next())
                else {
                    bail!("unexpected _rebuild_tensor arguments");
                };
                let Value::Tuple(pid) = *pid else {
                    bail!("unexpected storage id")
                };
                let (dtype, key) = match pid.as_slice() {
                    [Value::Str(kind), Value::Global(_, storage), Value::Str(key), ..]
                        if kind == "storage" =>
                    {
                        (DType::from_storage(storage)?, key.clone())
                    }
                    _ => bail!("unexpected storage id (a tuple of {} values)", pid.len()),
                };
                let ints = |v: Vec<Value>| -> Result<Vec<usize>> {
                    v.into_iter()
                        .map(|x| match x {
                            Value::Int(i) if i >= 0 => Ok(i as usize),
                            Value::Int(i) => Err(anyhow!("negative tensor dimension {i}")),
                            _ => Err(anyhow!("a tensor dimension that is not an integer")),
                        })
                        .collect()
                };
                Ok(Value::Tensor(TensorRef {
                    dtype,
                    storage_key: key,
                    offset: offset.max(0) as usize,
                    shape: ints(size)?,
                    stride: ints(stride)?,
                }))
            }
            _ => Ok(Value::Opaque),
        }
    }

    fn run(mut self) -> Result<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?;
                } // PROTO
                0x95 => {
                    self.take(8)?;
                } // FRAME
                b'.' => return self.pop(), // STOP
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().unwrap());
                    self.stack.push(Value::Int(v as i64))
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64))
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take(2)?.try_into().unwrap());
                    self.stack.push(Value::Int(v as i64))
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    let mut v: i64 = 0;
                    for (i, &x) in b.iter().enumerate().take(8) {
                        v |= (x as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(v))
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.stack.push(Value::Float(v))
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.str(n)?;
                    self.stack.push(v)
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.str(n)?;
                    self.stack.push(v)
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.take(8)?.try_into().unwrap()) as usize;
                    let v = self.str(n)?;
                    self.stack.push(v)
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    let v = self.memo_get(i)?;
                    self.stack.push(v)
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo_get(i)?;
                    self.stack.push(v)
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(module, name))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => bail!("STACK_GLOBAL without strings"),
                    }
                }
                b't' => {
                    let items = self.pop_mark()?;
                    nest(&mut self, &items)?;
                    self.stack.push(Value::Tuple(items))
                }
                0x85 => {
                    let a = self.pop()?;
                    nest(&mut self, [&a])?;
                    self.stack.push(Value::Tuple(vec![a]))
                }
                0x86 => {
                    let b = self.pop()?;
                    let a = self.pop()?;
                    nest(&mut self, [&a, &b])?;
                    self.stack.push(Value::Tuple(vec![a, b]))
                }
                0x87 => {
                    let c = self.pop()?;
                    let b = self.pop()?;
                    let a = self.pop()?;
                    nest(&mut self, [&a, &b, &c])?;
                    self.stack.push(Value::Tuple(vec![a, b, c]))
                }
                b'Q' => {
                    let pid = self.pop()?;
                    nest(&mut self, [&pid])?;
                    self.stack.push(Value::Persistent(Box::new(pid)))
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.stack.push(Self::reduce(callable, args)?)
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args)
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.stack.push(Self::reduce(cls, args)?)
                }
                b'b' => {
                    // BUILD: a TorchScript module's attributes; any other
                    // object's state (e.g. a state dict's _metadata) is not needed.
                    let state = self.pop()?;
                    nest(&mut self, [&state])?;
                    if let (Some(Value::Object(attrs)), Value::Dict(d)) =
                        (self.stack.last_mut(), state)
                    {
                        *attrs = d;
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    nest(&mut self, [&k, &v])?;
                    match self.stack.last_mut() {
                        Some(Value::Dict(d)) => d.push((k, v)),
                        _ => bail!("SETITEM on a non-dict"),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    nest(&mut self, &items)?;
                    match self.stack.last_mut() {
                        Some(Value::Dict(d)) => {
                            let mut it = items.into_iter();
                            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                                d.push((k, v));
                            }
                        }
                        _ => bail!("SETITEMS on a non-dict"),
                    }
                }
                b'a' => {
                    let v = self.pop()?;
                    nest(&mut self, [&v])?;
                    match self.stack.last_mut() {
                        Some(Value::List(l)) => l.push(v),
                        _ => bail!("APPEND on a non-list"),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    nest(&mut self, &items)?;
                    match self.stack.last_mut() {
                        Some(Value::List(l)) => l.extend(items),
                        _ => bail!("APPENDS on a non-list"),
                    }
                }
                other => bail!("unsupported pickle opcode 0x{other:02x} at byte {} (not a torch.save state dict?)", self.pos - 1),
            }
        }
    }
}

/// The tensors of a TorchScript module tree, named `sub.module.attr`.
fn flatten_module(
    prefix: &str,
    attrs: Vec<(Value, Value)>,
    out: &mut Vec<(Value, Value)>,
    depth: usize,
) -> Result<()> {
    if depth > 64 {
        bail!("TorchScript modules nested over 64 deep");
    }
    for (k, v) in attrs {
        let Value::Str(name) = k else { continue };
        match v {
            t @ Value::Tensor(_) => out.push((Value::Str(format!("{prefix}{name}")), t)),
            Value::Object(sub) => flatten_module(&format!("{prefix}{name}."), sub, out, depth + 1)?,
            _ => {} // flags such as `training`, ints, strings
        }
    }
    Ok(())
}

/// One checkpoint tensor: name, shape, stored dtype, f32 values.
pub type NamedTensor = (String, Vec<usize>, DType, Vec<f32>);

/// A loaded checkpoint: its tensors in file order.
pub struct Checkpoint {
    pub tensors: Vec<NamedTensor>,
}

/// Reads a zip entry whole. Its size must be one the archive (`archive_len`
/// bytes) can hold: stored as is, or deflated at most 1032 : 1 — so a lying
/// header cannot make us allocate more than the file could expand to.
fn read_entry(
    zip: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
    name: &str,
    archive_len: usize,
) -> Result<Vec<u8>> {
    let entry = zip
        .by_name(name)
        .with_context(|| format!("{name} missing from the archive"))?;
    let limit = (entry.compressed_size().min(archive_len as u64)).saturating_mul(1032);
    if entry.size() > limit {
        bail!(
            "{name}: {} bytes claimed by {} stored",
            entry.size(),
            entry.compressed_size()
        );
    }
    let mut buf = Vec::new();
    entry
        .take(limit)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {name}"))?;
    Ok(buf)
}

/// Reads a `torch.save` zip checkpoint holding a state dict (or a dict with a
/// `state_dict` / `model` entry holding one).
pub fn read_checkpoint(bytes: &[u8]) -> Result<Checkpoint> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .context("not a torch.save zip archive (or it is truncated)")?;
    let pkl_name = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).map(str::to_string))
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| anyhow!("no data.pkl in the archive"))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let pkl = read_entry(&mut zip, &pkl_name, bytes.len())?;
    let root = Machine {
        data: &pkl,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        work: 0,
        max_work: (pkl.len() * COPIES_PER_BYTE).max(MIN_COPIES),
    }
    .run()?;
    let mut dict = match root {
        Value::Dict(d) => d,
        // A TorchScript module: its tensors by dotted attribute path, as state_dict() names them.
        Value::Object(attrs) => {
            let mut flat = Vec::new();
            flatten_module("", attrs, &mut flat, 0)?;
            flat
        }
        // A tuple of tensors (e.g. CLIP's (mean, std) stats): named "0", "1", ….
        Value::Tuple(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| (Value::Str(i.to_string()), v))
            .collect(),
        _ => bail!("the checkpoint is not a dict of tensors"),
    };
    // Lightning-style {"state_dict": {...}} wrappers.
    if let Some(inner) = dict.iter().find_map(|(k, v)| match (k, v) {
        (Value::Str(k), Value::Dict(d)) if k == "state_dict" || k == "model" => Some(d.clone()),
        _ => None,
    }) {
        dict = inner;
    }
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut tensors = Vec::new();
    for (k, v) in dict {
        let (Value::Str(name), Value::Tensor(t)) = (k, v) else {
            continue;
        };
        if !storages.contains_key(&t.storage_key) {
            let entry = format!("{prefix}data/{}", t.storage_key);
            let buf = read_entry(&mut zip, &entry, bytes.len())
                .with_context(|| format!("storage {} of '{name}'", t.storage_key))?;
            storages.insert(t.storage_key.clone(), buf);
        }
        let raw = &storages[&t.storage_key];
        let es = t.dtype.size();
        // Every element lies in the storage, so the storage bounds what the
        // shape may claim (before anything is allocated for it).
        let past = || anyhow!("tensor '{name}' reaches past its storage (truncated checkpoint?)");
        let numel = t
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(past)?;
        if t.shape.len() != t.stride.len() {
            bail!(
                "tensor '{name}': {} sizes but {} strides",
                t.shape.len(),
                t.stride.len()
            );
        }
        if numel > 0 {
            // The farthest element: offset + Σ (size − 1)·stride.
            let last = t
                .shape
                .iter()
                .zip(&t.stride)
                .try_fold(t.offset, |o, (&d, &st)| {
                    o.checked_add((d - 1).checked_mul(st)?)
                })
                .ok_or_else(past)?;
            if last >= raw.len() / es || numel > raw.len() / es {
                return Err(past());
            }
        }
        // Contiguity: the released checkpoints store contiguous tensors; gather by stride anyway.
        let mut vals = Vec::with_capacity(numel);
        let mut idx = vec![0usize; t.shape.len()];
        for _ in 0..numel {
            let off = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
            let b = raw.get(off * es..(off + 1) * es).ok_or_else(past)?;
            vals.push(match t.dtype {
                DType::F32 => f32::from_le_bytes(b.try_into().unwrap()),
                DType::F16 => half::f16::from_le_bytes(b.try_into().unwrap()).to_f32(),
                DType::BF16 => half::bf16::from_le_bytes(b.try_into().unwrap()).to_f32(),
                DType::F64 => f64::from_le_bytes(b.try_into().unwrap()) as f32,
                DType::I64 => i64::from_le_bytes(b.try_into().unwrap()) as f32,
                DType::I32 => i32::from_le_bytes(b.try_into().unwrap()) as f32,
            });
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < t.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        tensors.push((name, t.shape, t.dtype, vals));
    }
    if tensors.is_empty() {
        bail!("the checkpoint holds no tensors");
    }
    Ok(Checkpoint { tensors })
}
