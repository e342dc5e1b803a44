//! The GLIDE UNets and their text transformer in burn, for training. Module
//! and field names mirror the official state_dict keys (the same names the
//! engine loads; ../shared/docs/glide-architecture.md §2–4), and every weight
//! is kept in PyTorch's layout, so export is a walk that prints names.
//!
//! Construction and export are both walks over names: `Init` hands out each
//! parameter by name (random, or from a weight map), `Visit` collects them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use burn::module::{Module, Param};
use burn::tensor::activation::{gelu, silu, softmax};
use burn::tensor::module::{conv2d, embedding};
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use engine::demo::shapes::Rng;
use engine::glide::model::GlideConfig;

use crate::train::normal;

/// FLOPs of the matrix products (convs, linears, attention) of the forward
/// passes run so far (2 per multiply-add); `webglide-train bench` reads it.
pub static FORWARD_FLOPS: AtomicU64 = AtomicU64::new(0);

fn count_flops(n: usize) {
    FORWARD_FLOPS.fetch_add(n as u64, Ordering::Relaxed);
}

/// Convs as one matrix product over an im2col tensor instead of burn's
/// conv2d. Measured on the 2-core CPU with burn's `x86-v4` (AVX-512) gemm
/// (docs/demo-model.md): burn's conv2d is faster there (3.64 vs 2.34
/// samples/s for the base at batch 8), so it is the default; the GEMM path
/// stays for `webglide-train bench --conv gemm` on other backends.
pub static CONV_AS_GEMM: AtomicBool = AtomicBool::new(false);

/// `--conv burn|gemm`: sets [`CONV_AS_GEMM`] for this process.
pub fn set_conv(name: &str) -> anyhow::Result<()> {
    match name {
        "gemm" => CONV_AS_GEMM.store(true, Ordering::Relaxed),
        "burn" => CONV_AS_GEMM.store(false, Ordering::Relaxed),
        c => anyhow::bail!("--conv {c}: burn or gemm"),
    }
    Ok(())
}

/// Named f32 tensors in PyTorch layout: name → (shape, values).
pub type WeightMap = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Named tensors (name, shape, values) in state_dict order.
pub type Named = Vec<(String, Vec<usize>, Vec<f32>)>;

/// How parameters are initialised.
pub enum Init<'a> {
    /// GLIDE's training initialisation (zero-initialised output convs), seeded.
    Train,
    /// Every parameter random and non-zero (tests), drawn on the host from
    /// the seed and the parameter's name: burn's global generator is shared
    /// by the tests running in parallel, so weights drawn from it were not
    /// the same from run to run.
    Random(u64),
    /// From exported weights.
    From(&'a WeightMap),
}

/// What a parameter is, for random initialisation.
#[derive(Clone, Copy)]
enum Kind {
    /// Conv/linear weight: uniform ±1/sqrt(fan_in) (PyTorch's default).
    Weight,
    /// Bias: uniform ±1/sqrt(fan_in).
    Bias(usize),
    /// GroupNorm/LayerNorm gain (1) and bias (0).
    Gain,
    Zero,
    /// Output convs GLIDE zero-initialises (`zero_module`).
    ZeroInit(usize),
    /// Embedding tables: N(0, std).
    Normal(f64),
}

impl Init<'_> {
    fn param<const D: usize>(
        &self,
        dev: &Device,
        name: &str,
        shape: [usize; D],
        kind: Kind,
    ) -> Param<Tensor<D>> {
        let fan_in = |s: &[usize]| s[1..].iter().product::<usize>().max(1) as f64;
        let t = match self {
            Init::From(map) => match map.get(name) {
                Some((s, v)) if s.iter().product::<usize>() == shape.iter().product::<usize>() => {
                    Tensor::<D>::from_data(TensorData::new(v.clone(), shape), dev)
                }
                _ => panic!("weight '{name}' missing or of the wrong size"),
            },
            Init::Random(seed) => {
                let mut rng = Rng(seed ^ name_id(name));
                let n = shape.iter().product::<usize>();
                let mut uniform = |b: f64| -> Vec<f32> {
                    (0..n)
                        .map(|_| ((2.0 * rng.f32() - 1.0) as f64 * b) as f32)
                        .collect()
                };
                let values = match kind {
                    Kind::Weight => uniform(1.0 / fan_in(&shape).sqrt()),
                    Kind::Bias(f) | Kind::ZeroInit(f) => uniform(1.0 / (f as f64).sqrt()),
                    Kind::Gain => (0..n).map(|_| 1.0 + 0.1 * normal(&mut rng)).collect(),
                    Kind::Zero => (0..n).map(|_| 0.1 * normal(&mut rng)).collect(),
                    Kind::Normal(std) => (0..n).map(|_| std as f32 * normal(&mut rng)).collect(),
                };
                Tensor::<D>::from_data(TensorData::new(values, shape), dev)
            }
            Init::Train => {
                let uniform =
                    |b: f64| Tensor::<D>::random(shape, Distribution::Uniform(-b, b), dev);
                match kind {
                    Kind::Weight => uniform(1.0 / fan_in(&shape).sqrt()),
                    Kind::Bias(f) => uniform(1.0 / (f as f64).sqrt()),
                    Kind::ZeroInit(_) | Kind::Zero => Tensor::<D>::zeros(shape, dev),
                    Kind::Gain => Tensor::<D>::ones(shape, dev),
                    Kind::Normal(std) => {
                        Tensor::<D>::random(shape, Distribution::Normal(0.0, std), dev)
                    }
                }
            }
        };
        named_param(name, t)
    }
}

/// A trainable parameter whose id is a hash of its official name. burn keys
/// saved optimizer moments by parameter id, and `Param::from_tensor` draws a
/// random one, so in a new process the loaded moments would find no
/// parameter (and the run would go on with fresh ones at the full rate).
pub fn named_param<const D: usize>(name: &str, t: Tensor<D>) -> Param<Tensor<D>> {
    let mut p = Param::from_tensor(t);
    p.id = param_id(name);
    p
}

/// The id `named_param` gives the parameter of this (official) name.
pub fn param_id(name: &str) -> burn::module::ParamId {
    burn::module::ParamId::from(name_id(name))
}

/// FNV-1a of a parameter name: stable across processes and builds.
fn name_id(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Every float parameter's id, in visiting order (tests: ids are distinct
/// within a model and the same in every build of it).
#[cfg(test)]
pub(crate) fn param_ids<M: Module>(model: &M) -> Vec<u64> {
    struct Ids(Vec<u64>);
    impl burn::module::ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.push(p.id.val());
        }
    }
    let mut ids = Ids(Vec::new());
    model.visit(&mut ids);
    ids.0
}

/// Collects (name, shape, values) in the official order.
pub struct Visit(pub Named);

impl Visit {
    fn add<const D: usize>(&mut self, name: &str, p: &Param<Tensor<D>>) {
        self.add_tensor(name, p.val());
    }
    fn add_tensor<const D: usize>(&mut self, name: &str, t: Tensor<D>) {
        let t = t.detach();
        let shape = t.dims().to_vec();
        let values = t
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 tensor");
        self.0.push((name.to_string(), shape, values));
    }
}

#[derive(Module, Debug)]
pub struct Norm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
}

impl Norm {
    fn new(init: &Init, dev: &Device, name: &str, c: usize) -> Self {
        Norm {
            weight: init.param(dev, &format!("{name}.weight"), [c], Kind::Gain),
            bias: init.param(dev, &format!("{name}.bias"), [c], Kind::Zero),
        }
    }
    fn visit(&self, v: &mut Visit, name: &str) {
        v.add(&format!("{name}.weight"), &self.weight);
        v.add(&format!("{name}.bias"), &self.bias);
    }
    /// GroupNorm(32, eps 1e-5) over `[B, C, H, W]`.
    fn group(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let g = x.reshape([b, 32, c / 32 * h * w]);
        let (var, mean) = g.clone().var_mean_bias(2);
        let n = (g - mean) / (var + 1e-5).sqrt();
        n.reshape([b, c, h, w]) * self.weight.val().reshape([1, c, 1, 1])
            + self.bias.val().reshape([1, c, 1, 1])
    }
    /// LayerNorm(eps 1e-5) over the last dim of `[B, T, C]`.
    fn layer(&self, x: Tensor<3>) -> Tensor<3> {
        let c = x.dims()[2];
        let (var, mean) = x.clone().var_mean_bias(2);
        (x - mean) / (var + 1e-5).sqrt() * self.weight.val().reshape([1, 1, c])
            + self.bias.val().reshape([1, 1, c])
    }
}

/// A conv (3×3 padded, 1×1, or a kernel-1 Conv1d stored `[out, in, 1]`).
#[derive(Module, Debug)]
pub struct Conv {
    pub weight: Param<Tensor<4>>,
    pub bias: Param<Tensor<1>>,
    /// Exported as a Conv1d weight `[out, in, 1]`.
    #[module(skip)]
    pub conv1d: bool,
}

impl Conv {
    fn new(
        init: &Init,
        dev: &Device,
        name: &str,
        cout: usize,
        cin: usize,
        k: usize,
        zero: bool,
    ) -> Self {
        let fan = cin * k * k;
        let wk = if zero {
            Kind::ZeroInit(fan)
        } else {
            Kind::Weight
        };
        let bk = if zero {
            Kind::ZeroInit(fan)
        } else {
            Kind::Bias(fan)
        };
        Conv {
            weight: init.param(dev, &format!("{name}.weight"), [cout, cin, k, k], wk),
            bias: init.param(dev, &format!("{name}.bias"), [cout], bk),
            conv1d: false,
        }
    }
    fn new1d(init: &Init, dev: &Device, name: &str, cout: usize, cin: usize, zero: bool) -> Self {
        Conv {
            conv1d: true,
            ..Conv::new(init, dev, name, cout, cin, 1, zero)
        }
    }
    fn visit(&self, v: &mut Visit, name: &str) {
        if self.conv1d {
            let t = self.weight.val();
            let [o, i, _, _] = t.dims();
            v.add_tensor(&format!("{name}.weight"), t.reshape([o, i, 1]));
        } else {
            v.add(&format!("{name}.weight"), &self.weight);
        }
        v.add(&format!("{name}.bias"), &self.bias);
    }
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [o, c, k, _] = self.weight.dims();
        let [b, _, h, w] = x.dims();
        count_flops(2 * b * o * c * k * k * h * w);
        let pad = k / 2;
        if !CONV_AS_GEMM.load(Ordering::Relaxed) {
            return conv2d(
                x,
                self.weight.val(),
                Some(self.bias.val()),
                ConvOptions::new([1, 1], [pad, pad], [1, 1], 1),
            );
        }
        // im2col: the k·k shifted views of the padded input, tap-major, then
        // channel: `[B, k·k·C, H·W]`, matched by the weight as `[O, ky, kx, C]`.
        let cols = if k == 1 {
            x.reshape([b, c, h * w])
        } else {
            let xp = x.pad((pad, pad, pad, pad), PadMode::Constant(0.0));
            let taps = (0..k)
                .flat_map(|dy| (0..k).map(move |dx| (dy, dx)))
                .map(|(dy, dx)| xp.clone().narrow(2, dy, h).narrow(3, dx, w))
                .collect();
            Tensor::cat(taps, 1).reshape([b, k * k * c, h * w])
        };
        let wm = self
            .weight
            .val()
            .permute([0, 2, 3, 1])
            .reshape([1, o, k * k * c]);
        (wm.matmul(cols) + self.bias.val().reshape([1, o, 1])).reshape([b, o, h, w])
    }
}

/// A linear layer with PyTorch's `[out, in]` weight.
#[derive(Module, Debug)]
pub struct Linear {
    pub weight: Param<Tensor<2>>,
    pub bias: Param<Tensor<1>>,
}

impl Linear {
    pub(crate) fn new(init: &Init, dev: &Device, name: &str, out: usize, inp: usize) -> Self {
        Linear {
            weight: init.param(dev, &format!("{name}.weight"), [out, inp], Kind::Weight),
            bias: init.param(dev, &format!("{name}.bias"), [out], Kind::Bias(inp)),
        }
    }
    pub(crate) fn visit(&self, v: &mut Visit, name: &str) {
        v.add(&format!("{name}.weight"), &self.weight);
        v.add(&format!("{name}.bias"), &self.bias);
    }
    pub(crate) fn forward2(&self, x: Tensor<2>) -> Tensor<2> {
        let out = self.bias.dims()[0];
        let [n, inp] = x.dims();
        count_flops(2 * n * inp * out);
        x.matmul(self.weight.val().transpose()) + self.bias.val().reshape([1, out])
    }
    pub(crate) fn forward3(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, c] = x.dims();
        let out = self.bias.dims()[0];
        self.forward2(x.reshape([b * t, c])).reshape([b, t, out])
    }
}

fn avg_pool2(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b * c * h / 2, 2, w / 2, 2])
        .mean_dim(3)
        .mean_dim(1)
        .reshape([b, c, h / 2, w / 2])
}

fn nearest2(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b * c * h, 1, w, 1])
        .repeat_dim(1, 2)
        .repeat_dim(3, 2)
        .reshape([b, c, 2 * h, 2 * w])
}

/// Bilinear resize, align_corners=False, no antialias (PyTorch's
/// `F.interpolate(mode="bilinear")`), as two interpolation matrices.
pub fn bilinear(x: Tensor<4>, size: usize) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let dev = x.device();
    let matrix = |n_in: usize, n_out: usize| {
        let mut m = vec![0f32; n_out * n_in];
        let scale = n_in as f32 / n_out as f32;
        for o in 0..n_out {
            let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(n_in - 1);
            let i1 = (i0 + 1).min(n_in - 1);
            let f = src - i0 as f32;
            m[o * n_in + i0] += 1.0 - f;
            m[o * n_in + i1] += f;
        }
        Tensor::<2>::from_data(TensorData::new(m, [n_out, n_in]), &dev)
    };
    let (mh, mw) = (matrix(h, size), matrix(w, size));
    let rows = x.reshape([b * c * h, w]).matmul(mw.transpose()); // [bch, size]
    let t = rows
        .reshape([b * c, h, size])
        .swap_dims(1, 2)
        .reshape([b * c * size, h]);
    t.matmul(mh.transpose())
        .reshape([b * c, size, size])
        .swap_dims(1, 2)
        .reshape([b, c, size, size])
}

#[derive(Module, Debug)]
pub struct ResBlock {
    pub in_norm: Norm,
    pub in_conv: Conv,
    pub emb: Linear,
    pub out_norm: Norm,
    pub out_conv: Conv,
    pub skip: Option<Conv>,
    /// 0 none, 1 up, 2 down.
    #[module(skip)]
    pub resample: u8,
}

impl ResBlock {
    fn new(
        init: &Init,
        dev: &Device,
        p: &str,
        cin: usize,
        cout: usize,
        emb: usize,
        resample: u8,
    ) -> Self {
        ResBlock {
            in_norm: Norm::new(init, dev, &format!("{p}.in_layers.0"), cin),
            in_conv: Conv::new(init, dev, &format!("{p}.in_layers.2"), cout, cin, 3, false),
            emb: Linear::new(init, dev, &format!("{p}.emb_layers.1"), 2 * cout, emb),
            out_norm: Norm::new(init, dev, &format!("{p}.out_layers.0"), cout),
            out_conv: Conv::new(init, dev, &format!("{p}.out_layers.3"), cout, cout, 3, true),
            skip: (cin != cout).then(|| {
                Conv::new(
                    init,
                    dev,
                    &format!("{p}.skip_connection"),
                    cout,
                    cin,
                    1,
                    false,
                )
            }),
            resample,
        }
    }
    fn visit(&self, v: &mut Visit, p: &str) {
        self.in_norm.visit(v, &format!("{p}.in_layers.0"));
        self.in_conv.visit(v, &format!("{p}.in_layers.2"));
        self.emb.visit(v, &format!("{p}.emb_layers.1"));
        self.out_norm.visit(v, &format!("{p}.out_layers.0"));
        self.out_conv.visit(v, &format!("{p}.out_layers.3"));
        if let Some(s) = &self.skip {
            s.visit(v, &format!("{p}.skip_connection"));
        }
    }
    fn forward(&self, x: Tensor<4>, emb: &Tensor<2>) -> Tensor<4> {
        let mut h = silu(self.in_norm.group(x.clone()));
        let mut x = x;
        match self.resample {
            1 => {
                h = nearest2(h);
                x = nearest2(x);
            }
            2 => {
                h = avg_pool2(h);
                x = avg_pool2(x);
            }
            _ => {}
        }
        let h = self.in_conv.forward(h);
        let c = h.dims()[1];
        let e = self.emb.forward2(silu(emb.clone()));
        let scale = e
            .clone()
            .narrow(1, 0, c)
            .unsqueeze_dim::<3>(2)
            .unsqueeze_dim::<4>(3);
        let shift = e
            .narrow(1, c, c)
            .unsqueeze_dim::<3>(2)
            .unsqueeze_dim::<4>(3);
        let h = self.out_norm.group(h) * (scale + 1.0) + shift;
        let h = self.out_conv.forward(silu(h));
        match &self.skip {
            Some(s) => s.forward(x) + h,
            None => x + h,
        }
    }
}

#[derive(Module, Debug)]
pub struct AttentionBlock {
    pub norm: Norm,
    pub qkv: Conv,
    pub encoder_kv: Conv,
    pub proj_out: Conv,
    #[module(skip)]
    pub heads: usize,
}

impl AttentionBlock {
    fn new(init: &Init, dev: &Device, p: &str, ch: usize, heads: usize, xf_width: usize) -> Self {
        AttentionBlock {
            norm: Norm::new(init, dev, &format!("{p}.norm"), ch),
            qkv: Conv::new1d(init, dev, &format!("{p}.qkv"), 3 * ch, ch, false),
            encoder_kv: Conv::new1d(
                init,
                dev,
                &format!("{p}.encoder_kv"),
                2 * ch,
                xf_width,
                false,
            ),
            proj_out: Conv::new1d(init, dev, &format!("{p}.proj_out"), ch, ch, true),
            heads,
        }
    }
    fn visit(&self, v: &mut Visit, p: &str) {
        self.norm.visit(v, &format!("{p}.norm"));
        self.qkv.visit(v, &format!("{p}.qkv"));
        self.encoder_kv.visit(v, &format!("{p}.encoder_kv"));
        self.proj_out.visit(v, &format!("{p}.proj_out"));
    }
    /// `xf_out`: `[B, xf_width, ctx, 1]`.
    fn forward(&self, x: Tensor<4>, xf_out: &Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let (heads, t) = (self.heads, h * w);
        let d = c / heads;
        let ctx = xf_out.dims()[2];
        // Legacy layout: channel h·3d + j·d + c (q, k, v inside each head).
        let qkv = self
            .qkv
            .forward(self.norm.group(x.clone()))
            .reshape([b * heads, 3, d, t]);
        let ekv = self
            .encoder_kv
            .forward(xf_out.clone())
            .reshape([b * heads, 2, d, ctx]);
        let s = 1.0 / (d as f64).sqrt().sqrt();
        let q = qkv.clone().narrow(1, 0, 1).reshape([b * heads, d, t]) * s;
        let k = Tensor::cat(
            vec![
                ekv.clone().narrow(1, 0, 1).reshape([b * heads, d, ctx]),
                qkv.clone().narrow(1, 1, 1).reshape([b * heads, d, t]),
            ],
            2,
        ) * s;
        let v = Tensor::cat(
            vec![
                ekv.narrow(1, 1, 1).reshape([b * heads, d, ctx]),
                qkv.narrow(1, 2, 1).reshape([b * heads, d, t]),
            ],
            2,
        );
        count_flops(2 * 2 * b * heads * t * (ctx + t) * d);
        let weights = softmax(q.swap_dims(1, 2).matmul(k), 2); // [bh, t, ctx + t]
        let a = v.matmul(weights.swap_dims(1, 2)); // [bh, d, t]
        x + self.proj_out.forward(a.reshape([b, c, h, w]))
    }
}

#[derive(Module, Debug)]
pub struct XfBlock {
    pub ln_1: Norm,
    pub c_qkv: Linear,
    pub c_proj: Linear,
    pub ln_2: Norm,
    pub c_fc: Linear,
    pub mlp_proj: Linear,
    #[module(skip)]
    pub heads: usize,
}

impl XfBlock {
    fn new(init: &Init, dev: &Device, p: &str, w: usize, heads: usize) -> Self {
        XfBlock {
            c_qkv: Linear::new(init, dev, &format!("{p}.attn.c_qkv"), 3 * w, w),
            c_proj: Linear::new(init, dev, &format!("{p}.attn.c_proj"), w, w),
            ln_1: Norm::new(init, dev, &format!("{p}.ln_1"), w),
            c_fc: Linear::new(init, dev, &format!("{p}.mlp.c_fc"), 4 * w, w),
            mlp_proj: Linear::new(init, dev, &format!("{p}.mlp.c_proj"), w, 4 * w),
            ln_2: Norm::new(init, dev, &format!("{p}.ln_2"), w),
            heads,
        }
    }
    fn visit(&self, v: &mut Visit, p: &str) {
        self.c_qkv.visit(v, &format!("{p}.attn.c_qkv"));
        self.c_proj.visit(v, &format!("{p}.attn.c_proj"));
        self.ln_1.visit(v, &format!("{p}.ln_1"));
        self.c_fc.visit(v, &format!("{p}.mlp.c_fc"));
        self.mlp_proj.visit(v, &format!("{p}.mlp.c_proj"));
        self.ln_2.visit(v, &format!("{p}.ln_2"));
    }
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, w] = x.dims();
        let heads = self.heads;
        let d = w / heads;
        // Per token [heads, 3·d]: q | k | v inside each head.
        let qkv = self
            .c_qkv
            .forward3(self.ln_1.layer(x.clone()))
            .reshape([b, t, heads, 3 * d])
            .swap_dims(1, 2); // [b, heads, t, 3d]
        let s = 1.0 / (d as f64).sqrt().sqrt();
        let q = qkv.clone().narrow(3, 0, d) * s;
        let k = qkv.clone().narrow(3, d, d) * s;
        let v = qkv.narrow(3, 2 * d, d);
        count_flops(2 * 2 * b * heads * t * t * d);
        let a = softmax(q.matmul(k.swap_dims(2, 3)), 3).matmul(v); // [b, heads, t, d]
        let a = a.swap_dims(1, 2).reshape([b, t, w]);
        let x = x + self.c_proj.forward3(a);
        let m = self
            .mlp_proj
            .forward3(gelu(self.c_fc.forward3(self.ln_2.layer(x.clone()))));
        x + m
    }
}

/// An input/output block: conv 0, or ResBlock (+ attention) (+ resample ResBlock).
#[derive(Module, Debug)]
pub struct Block {
    pub conv: Option<Conv>,
    pub res: Option<ResBlock>,
    pub attn: Option<AttentionBlock>,
    pub resample: Option<ResBlock>,
}

impl Block {
    fn forward(&self, mut h: Tensor<4>, emb: &Tensor<2>, xf_out: &Tensor<4>) -> Tensor<4> {
        if let Some(c) = &self.conv {
            h = c.forward(h);
        }
        if let Some(r) = &self.res {
            h = r.forward(h, emb);
        }
        if let Some(a) = &self.attn {
            h = a.forward(h, xf_out);
        }
        if let Some(r) = &self.resample {
            h = r.forward(h, emb);
        }
        h
    }
    fn visit(&self, v: &mut Visit, p: &str) {
        if let Some(c) = &self.conv {
            c.visit(v, &format!("{p}.0"));
        }
        if let Some(r) = &self.res {
            r.visit(v, &format!("{p}.0"));
        }
        let mut sub = 1;
        if let Some(a) = &self.attn {
            a.visit(v, &format!("{p}.1"));
            sub = 2;
        }
        if let Some(r) = &self.resample {
            // A down block is alone at index 0; an up block follows the ResBlock (+ attention).
            let idx = if self.res.is_none() { 0 } else { sub };
            r.visit(v, &format!("{p}.{idx}"));
        }
    }
}

/// Model inputs besides x_t and t.
pub struct Cond {
    /// `[B, ctx]` token ids and mask (1 = real token).
    pub tokens: Tensor<2, Int>,
    pub mask: Tensor<2>,
    /// Upsamplers: `[B, 3, h, w]` low-res image.
    pub low_res: Option<Tensor<4>>,
    /// Inpainting: image `[B, 3, H, W]` and keep-mask `[B, 1, H, W]`.
    pub inpaint: Option<(Tensor<4>, Tensor<4>)>,
    /// Training's `--pooled-drop`: `[B, 1]`, 0 where the pooled text is cut.
    pub pooled_keep: Option<Tensor<2>>,
}

#[derive(Module, Debug)]
pub struct Glide {
    pub positional_embedding: Param<Tensor<2>>,
    pub padding_embedding: Option<Param<Tensor<2>>>,
    pub time_embed_0: Linear,
    pub time_embed_2: Linear,
    pub input_blocks: Vec<Block>,
    pub middle_res_0: ResBlock,
    pub middle_attn: AttentionBlock,
    pub middle_res_2: ResBlock,
    pub output_blocks: Vec<Block>,
    pub out_norm: Norm,
    pub out_conv: Conv,
    pub resblocks: Vec<XfBlock>,
    pub final_ln: Option<Norm>,
    pub token_embedding: Param<Tensor<2>>,
    pub transformer_proj: Linear,
    #[module(skip)]
    pub config: GlideConfig,
}

impl Glide {
    pub fn new(cfg: &GlideConfig, init: &Init, dev: &Device) -> anyhow::Result<Self> {
        cfg.validate()?;
        if let Init::From(map) = init {
            // Weights of another architecture are an error, not a panic below.
            for (name, shape) in cfg.weight_shapes()? {
                match map.get(&name) {
                    Some((s, _)) if s.iter().product::<usize>() == shape.iter().product::<usize>() => {}
                    Some((s, _)) => anyhow::bail!(
                        "weight '{name}' has shape {s:?}, this architecture needs {shape:?} (weights of another config?)"
                    ),
                    None => anyhow::bail!("weight '{name}' is missing (weights of another config?)"),
                }
            }
        }
        let (mc, w, ctx) = (cfg.num_channels, cfg.xf_width, cfg.text_ctx);
        let emb = 4 * mc;
        let mult = cfg.channel_mult()?;
        let attn_ds = cfg.attention_ds()?;
        let attn = |p: &str, ch: usize| -> anyhow::Result<AttentionBlock> {
            Ok(AttentionBlock::new(init, dev, p, ch, cfg.heads(ch)?, w))
        };
        // unet.py: `ch = input_ch = int(channel_mult[0] * model_channels)`.
        let input_ch = mult.first().map_or(mc, |m| m * mc);
        let mut input_blocks = vec![Block {
            conv: Some(Conv::new(
                init,
                dev,
                "input_blocks.0.0",
                input_ch,
                cfg.in_channels(),
                3,
                false,
            )),
            res: None,
            attn: None,
            resample: None,
        }];
        let (mut ch, mut ds) = (input_ch, 1);
        let mut skips = vec![input_ch];
        for (level, &m) in mult.iter().enumerate() {
            for _ in 0..cfg.num_res_blocks {
                let i = input_blocks.len();
                let res = ResBlock::new(
                    init,
                    dev,
                    &format!("input_blocks.{i}.0"),
                    ch,
                    m * mc,
                    emb,
                    0,
                );
                ch = m * mc;
                let a = if attn_ds.contains(&ds) {
                    Some(attn(&format!("input_blocks.{i}.1"), ch)?)
                } else {
                    None
                };
                input_blocks.push(Block {
                    conv: None,
                    res: Some(res),
                    attn: a,
                    resample: None,
                });
                skips.push(ch);
            }
            if level + 1 != mult.len() {
                let i = input_blocks.len();
                let down = ResBlock::new(init, dev, &format!("input_blocks.{i}.0"), ch, ch, emb, 2);
                input_blocks.push(Block {
                    conv: None,
                    res: None,
                    attn: None,
                    resample: Some(down),
                });
                skips.push(ch);
                ds *= 2;
            }
        }
        let middle_res_0 = ResBlock::new(init, dev, "middle_block.0", ch, ch, emb, 0);
        let middle_attn = attn("middle_block.1", ch)?;
        let middle_res_2 = ResBlock::new(init, dev, "middle_block.2", ch, ch, emb, 0);
        let mut output_blocks = Vec::new();
        for (level, &m) in mult.iter().enumerate().rev() {
            for j in 0..=cfg.num_res_blocks {
                let o = output_blocks.len();
                let sc = skips.pop().unwrap_or(0);
                let res = ResBlock::new(
                    init,
                    dev,
                    &format!("output_blocks.{o}.0"),
                    ch + sc,
                    m * mc,
                    emb,
                    0,
                );
                ch = m * mc;
                let mut sub = 1;
                let a = if attn_ds.contains(&ds) {
                    sub = 2;
                    Some(attn(&format!("output_blocks.{o}.1"), ch)?)
                } else {
                    None
                };
                let up = if level > 0 && j == cfg.num_res_blocks {
                    ds /= 2;
                    Some(ResBlock::new(
                        init,
                        dev,
                        &format!("output_blocks.{o}.{sub}"),
                        ch,
                        ch,
                        emb,
                        1,
                    ))
                } else {
                    None
                };
                output_blocks.push(Block {
                    conv: None,
                    res: Some(res),
                    attn: a,
                    resample: up,
                });
            }
        }
        let heads = cfg.xf_heads;
        Ok(Glide {
            positional_embedding: init.param(
                dev,
                "positional_embedding",
                [ctx, w],
                Kind::Normal(0.01),
            ),
            padding_embedding: cfg
                .xf_padding
                .then(|| init.param(dev, "padding_embedding", [ctx, w], Kind::Normal(0.01))),
            time_embed_0: Linear::new(init, dev, "time_embed.0", emb, mc),
            time_embed_2: Linear::new(init, dev, "time_embed.2", emb, emb),
            input_blocks,
            middle_res_0,
            middle_attn,
            middle_res_2,
            output_blocks,
            out_norm: Norm::new(init, dev, "out.0", ch),
            out_conv: Conv::new(init, dev, "out.2", 6, ch, 3, true),
            resblocks: (0..cfg.xf_layers)
                .map(|l| XfBlock::new(init, dev, &format!("transformer.resblocks.{l}"), w, heads))
                .collect(),
            final_ln: cfg.xf_final_ln.then(|| Norm::new(init, dev, "final_ln", w)),
            token_embedding: init.param(
                dev,
                "token_embedding.weight",
                [cfg.n_vocab, w],
                Kind::Normal(0.02),
            ),
            transformer_proj: Linear::new(init, dev, "transformer_proj", emb, w),
            config: cfg.clone(),
        })
    }

    /// Every weight with its official name, in `state_dict()` order.
    pub fn export(&self) -> Named {
        let mut v = Visit(Vec::new());
        v.add("positional_embedding", &self.positional_embedding);
        if let Some(p) = &self.padding_embedding {
            v.add("padding_embedding", p);
        }
        self.time_embed_0.visit(&mut v, "time_embed.0");
        self.time_embed_2.visit(&mut v, "time_embed.2");
        for (i, b) in self.input_blocks.iter().enumerate() {
            b.visit(&mut v, &format!("input_blocks.{i}"));
        }
        self.middle_res_0.visit(&mut v, "middle_block.0");
        self.middle_attn.visit(&mut v, "middle_block.1");
        self.middle_res_2.visit(&mut v, "middle_block.2");
        for (i, b) in self.output_blocks.iter().enumerate() {
            b.visit(&mut v, &format!("output_blocks.{i}"));
        }
        self.out_norm.visit(&mut v, "out.0");
        self.out_conv.visit(&mut v, "out.2");
        for (l, r) in self.resblocks.iter().enumerate() {
            r.visit(&mut v, &format!("transformer.resblocks.{l}"));
        }
        if let Some(n) = &self.final_ln {
            n.visit(&mut v, "final_ln");
        }
        v.add("token_embedding.weight", &self.token_embedding);
        self.transformer_proj.visit(&mut v, "transformer_proj");
        v.0
    }

    /// Text transformer: (xf_proj `[B, emb]`, xf_out `[B, w, ctx, 1]`).
    pub fn encode_text(&self, tokens: Tensor<2, Int>, mask: Tensor<2>) -> (Tensor<2>, Tensor<4>) {
        let [b, ctx] = tokens.dims();
        let w = self.positional_embedding.dims()[1];
        let e = embedding(self.token_embedding.val(), tokens)
            + self.positional_embedding.val().unsqueeze_dim::<3>(0);
        let mut x = match &self.padding_embedding {
            Some(p) => {
                let m = mask.reshape([b, ctx, 1]);
                e * m.clone() + p.val().unsqueeze_dim::<3>(0) * (m.neg() + 1.0)
            }
            None => e,
        };
        for r in &self.resblocks {
            x = r.forward(x);
        }
        if let Some(n) = &self.final_ln {
            x = n.layer(x);
        }
        let last = x.clone().narrow(1, ctx - 1, 1).reshape([b, w]);
        let xf_proj = self.transformer_proj.forward2(last);
        (xf_proj, x.swap_dims(1, 2).reshape([b, w, ctx, 1]))
    }

    /// `export` as a map by name (tests: weights to build another model from).
    #[cfg(test)]
    pub(crate) fn export_map(&self) -> WeightMap {
        self.export()
            .into_iter()
            .map(|(name, shape, v)| (name, (shape, v)))
            .collect()
    }

    /// The model again with its exported weights changed by `edit(name,
    /// shape, values)` (tests: a path cut, a projection scaled).
    #[cfg(test)]
    pub(crate) fn edited(
        &self,
        dev: &Device,
        edit: impl Fn(&str, &[usize], &mut [f32]),
    ) -> anyhow::Result<Glide> {
        let mut map = self.export_map();
        for (name, (shape, v)) in map.iter_mut() {
            edit(name, shape, v);
        }
        Glide::new(&self.config, &Init::From(&map), dev)
    }

    /// `[B, 6, H, W]`: eps and the variance-interpolation values. `t`: original timesteps.
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>, cond: &Cond) -> Tensor<4> {
        let (xf_proj, xf_out) = self.encode_text(cond.tokens.clone(), cond.mask.clone());
        self.forward_encoded(x, t, cond, xf_proj, xf_out)
    }

    /// `forward` with the text already encoded (`encode_text`); `cond`'s
    /// tokens are not read. The probe gives the two paths different captions.
    pub fn forward_encoded(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        cond: &Cond,
        xf_proj: Tensor<2>,
        xf_out: Tensor<4>,
    ) -> Tensor<4> {
        let cfg = &self.config;
        let [b, _, h, _] = x.dims();
        let mc = cfg.num_channels;
        let half = mc / 2;
        let dev = x.device();
        let freqs: Vec<f32> = (0..half)
            .map(|i| (-(10000f32.ln()) * i as f32 / half as f32).exp())
            .collect();
        let freqs = Tensor::<2>::from_data(TensorData::new(freqs, [1, half]), &dev);
        let args = t.reshape([b, 1]) * freqs;
        let temb = Tensor::cat(vec![args.clone().cos(), args.sin()], 1);
        let emb = self
            .time_embed_2
            .forward2(silu(self.time_embed_0.forward2(temb)));
        let xf_proj = match &cond.pooled_keep {
            Some(keep) => xf_proj * keep.clone(),
            None => xf_proj,
        };
        let emb = emb + xf_proj;
        let mut parts = vec![x];
        if let Some((img, mask)) = &cond.inpaint {
            parts.push(img.clone() * mask.clone());
            parts.push(mask.clone());
        }
        if let Some(lr) = &cond.low_res {
            parts.push(bilinear(lr.clone(), h));
        }
        let mut hcur = Tensor::cat(parts, 1);
        let mut skips = Vec::new();
        for blk in &self.input_blocks {
            hcur = blk.forward(hcur, &emb, &xf_out);
            skips.push(hcur.clone());
        }
        hcur = self.middle_res_0.forward(hcur, &emb);
        hcur = self.middle_attn.forward(hcur, &xf_out);
        hcur = self.middle_res_2.forward(hcur, &emb);
        for blk in &self.output_blocks {
            let s = skips.pop().expect("skip");
            hcur = blk.forward(Tensor::cat(vec![hcur, s], 1), &emb, &xf_out);
        }
        self.out_conv.forward(silu(self.out_norm.group(hcur)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Saved optimizer moments are keyed by these ids (`named_param`).
    #[test]
    fn parameter_ids_are_distinct_and_the_same_in_every_build() {
        let dev = Device::flex();
        for kind in ["base", "base-inpaint", "upsample"] {
            let cfg = crate::train::demo_config(kind).unwrap();
            let ids = param_ids(&Glide::new(&cfg, &Init::Train, &dev).unwrap());
            let unique: std::collections::HashSet<_> = ids.iter().collect();
            assert_eq!(unique.len(), ids.len(), "{kind}");
            assert_eq!(ids.len(), cfg.weight_shapes().unwrap().len(), "{kind}");
            let again = param_ids(&Glide::new(&cfg, &Init::Train, &dev).unwrap());
            assert_eq!(ids, again, "{kind}");
        }
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    fn max_rel_err(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        a.iter()
            .zip(b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
    }

    /// The GEMM conv and burn's conv2d agree in value and in all three
    /// gradients, for 3×3 and 1×1 kernels and odd sizes.
    #[test]
    fn gemm_conv_matches_burn_conv_forward_and_backward() {
        let dev = Device::flex().autodiff();
        for (b, cin, cout, k, h, w) in [(2, 3, 5, 3, 7, 9), (1, 6, 4, 1, 5, 3), (3, 4, 7, 3, 4, 4)]
        {
            let x = engine::rng::randn(b * cin * h * w, 11, 0);
            let wt = engine::rng::randn(cout * cin * k * k, 12, 0);
            let bias = engine::rng::randn(cout, 13, 0);
            let up = engine::rng::randn(b * cout * h * w, 14, 0);
            let run = |gemm: bool| {
                CONV_AS_GEMM.store(gemm, Ordering::Relaxed);
                let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), [b, cin, h, w]), &dev)
                    .require_grad();
                let conv = Conv {
                    weight: Param::from_tensor(Tensor::<4>::from_data(
                        TensorData::new(wt.clone(), [cout, cin, k, k]),
                        &dev,
                    )),
                    bias: Param::from_tensor(Tensor::<1>::from_data(
                        TensorData::new(bias.clone(), [cout]),
                        &dev,
                    )),
                    conv1d: false,
                };
                let out = conv.forward(xt.clone());
                let upstream =
                    Tensor::<4>::from_data(TensorData::new(up.clone(), [b, cout, h, w]), &dev);
                let grads = (out.clone() * upstream).sum().backward();
                let g = |t: Tensor<4>| values(t.grad(&grads).expect("gradient"));
                (
                    values(out),
                    g(xt),
                    g(conv.weight.val()),
                    values(conv.bias.val().grad(&grads).expect("bias gradient")),
                )
            };
            let (gemm, burn) = (run(true), run(false));
            CONV_AS_GEMM.store(true, Ordering::Relaxed);
            for (what, a, r) in [
                ("output", &gemm.0, &burn.0),
                ("input gradient", &gemm.1, &burn.1),
                ("weight gradient", &gemm.2, &burn.2),
                ("bias gradient", &gemm.3, &burn.3),
            ] {
                let e = max_rel_err(a, r);
                assert!(
                    e < 1e-5,
                    "{what} of a {k}x{k} conv {b}x{cin}x{h}x{w}: rel err {e}"
                );
            }
        }
    }
}
