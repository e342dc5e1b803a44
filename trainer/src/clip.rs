//! The demo's noisy CLIP (GLIDE's `clip/` encoders, small): a ViT image
//! encoder that also sees the diffusion timestep and a causal text encoder,
//! trained contrastively on noised demo images x_t (as GLIDE trained its
//! noise-aware CLIP), and exported with the official key names
//! (`blocks.input`, `blocks.block_{i}.f_attn|f_mlp`, `blocks.output`) for
//! `webglide convert --kind clip-image-enc|clip-text-enc`.
//! ../shared/docs/glide-architecture.md §8.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Result};
use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::activation::{gelu, log_softmax, softmax};
use burn::tensor::module::embedding;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use engine::demo::shapes::Rng;
use engine::glide::clip::{clip_tokens, NoisyClipConfig};
use engine::glide::schedule::Schedule;
use engine::unclip::tokenizer::ClipTokenizer;

use crate::model::WeightMap;
use crate::train::{make_batch, read_safetensors, write_atomic, Data, State};

/// The demo's encoders: 64-px images in 8-px patches, narrow and shallow.
pub fn demo_clip_config() -> NoisyClipConfig {
    NoisyClipConfig {
        logit_scale: 100.0,
        n_timesteps: 1000,
        image_size: 64,
        patch_size: 8,
        n_vocab: engine::unclip::tokenizer::VOCAB_SIZE,
        max_text_len: 32,
        n_embd: 64,
        n_head_state_text: 32,
        n_head_text: 2,
        n_xf_blocks_text: 3,
        n_head_state_image: 32,
        n_head_image: 4,
        n_xf_blocks_image: 4,
    }
}

pub fn clip_tokenizer() -> Result<ClipTokenizer> {
    Ok(ClipTokenizer::from_gz(include_bytes!(
        "../../public/tokenizer/bpe_simple_vocab_16e6.txt.gz"
    ))?)
}

/// Parameters by official name: from a weight map, or CLIP-style random
/// (the official construction leaves the affine weights uninitialised). The
/// second field names the encoder (`text.`, `image.`): both use the same key
/// names, and a parameter's id is derived from its name.
struct Init<'a>(Option<&'a WeightMap>, &'static str);

impl Init<'_> {
    fn param<const D: usize>(
        &self,
        dev: &Device,
        name: &str,
        shape: [usize; D],
        std: f64,
    ) -> Param<Tensor<D>> {
        let t = match self.0 {
            Some(map) => match map.get(name) {
                Some((s, v)) if s.iter().product::<usize>() == shape.iter().product::<usize>() => {
                    Tensor::<D>::from_data(TensorData::new(v.clone(), shape), dev)
                }
                _ => panic!("weight '{name}' missing or of the wrong size"),
            },
            None if std == 0.0 => Tensor::<D>::zeros(shape, dev),
            None if std < 0.0 => Tensor::<D>::ones(shape, dev),
            None => Tensor::<D>::random(shape, Distribution::Normal(0.0, std), dev),
        };
        crate::model::named_param(&format!("{}{name}", self.1), t)
    }
}

pub use crate::model::Named;

/// Collects (name, shape, values).
#[derive(Default)]
struct Visit(Named);

impl Visit {
    fn add<const D: usize>(&mut self, name: &str, p: &Param<Tensor<D>>) {
        let t = p.val().detach();
        let shape = t.dims().to_vec();
        let v = t
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32");
        self.0.push((name.to_string(), shape, v));
    }
}

#[derive(Module, Debug)]
struct Affine {
    w: Param<Tensor<2>>,
    b: Option<Param<Tensor<1>>>,
}

impl Affine {
    fn new(
        init: &Init,
        dev: &Device,
        p: &str,
        out: usize,
        inp: usize,
        bias: bool,
        std: f64,
    ) -> Self {
        Affine {
            w: init.param(dev, &format!("{p}.w"), [out, inp], std),
            b: bias.then(|| init.param(dev, &format!("{p}.b"), [out], 0.0)),
        }
    }
    fn visit(&self, v: &mut Visit, p: &str) {
        v.add(&format!("{p}.w"), &self.w);
        if let Some(b) = &self.b {
            v.add(&format!("{p}.b"), b);
        }
    }
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, l, i] = x.dims();
        let o = self.w.dims()[0];
        let y = x.reshape([b * l, i]).matmul(self.w.val().transpose());
        let y = match &self.b {
            Some(bias) => y + bias.val().reshape([1, o]),
            None => y,
        };
        y.reshape([b, l, o])
    }
}

#[derive(Module, Debug)]
struct Ln {
    g: Param<Tensor<1>>,
    b: Param<Tensor<1>>,
}

impl Ln {
    fn new(init: &Init, dev: &Device, p: &str, w: usize) -> Self {
        Ln {
            g: init.param(dev, &format!("{p}.g"), [w], -1.0),
            b: init.param(dev, &format!("{p}.b"), [w], 0.0),
        }
    }
    fn visit(&self, v: &mut Visit, p: &str) {
        v.add(&format!("{p}.g"), &self.g);
        v.add(&format!("{p}.b"), &self.b);
    }
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let w = self.g.dims()[0];
        let mean = x.clone().mean_dim(2);
        let d = x - mean;
        let var = d.clone().powi_scalar(2).mean_dim(2);
        let y = d / (var + 1e-5).sqrt();
        y * self.g.val().reshape([1, 1, w]) + self.b.val().reshape([1, 1, w])
    }
}

#[derive(Module, Debug)]
struct Block {
    attn_ln: Ln,
    f_q: Affine,
    f_k: Affine,
    f_v: Affine,
    f_c: Affine,
    mlp_ln: Ln,
    f_1: Affine,
    f_2: Affine,
    #[module(skip)]
    heads: usize,
}

impl Block {
    fn new(init: &Init, dev: &Device, p: &str, w: usize, heads: usize, depth: usize) -> Self {
        let (a, m) = (format!("{p}.f_attn"), format!("{p}.f_mlp"));
        let std = (w as f64).powf(-0.5);
        let proj = std / (2.0 * depth as f64).sqrt();
        Block {
            attn_ln: Ln::new(init, dev, &format!("{a}.ln"), w),
            f_q: Affine::new(init, dev, &format!("{a}.f_q"), w, w, true, std),
            f_k: Affine::new(init, dev, &format!("{a}.f_k"), w, w, false, std),
            f_v: Affine::new(init, dev, &format!("{a}.f_v"), w, w, true, std),
            f_c: Affine::new(init, dev, &format!("{a}.f_c"), w, w, true, proj),
            mlp_ln: Ln::new(init, dev, &format!("{m}.ln"), w),
            f_1: Affine::new(init, dev, &format!("{m}.f_1"), 4 * w, w, true, std),
            f_2: Affine::new(init, dev, &format!("{m}.f_2"), w, 4 * w, true, proj / 2.0),
            heads,
        }
    }
    fn visit(&self, v: &mut Visit, p: &str) {
        let (a, m) = (format!("{p}.f_attn"), format!("{p}.f_mlp"));
        self.attn_ln.visit(v, &format!("{a}.ln"));
        self.f_q.visit(v, &format!("{a}.f_q"));
        self.f_k.visit(v, &format!("{a}.f_k"));
        self.f_v.visit(v, &format!("{a}.f_v"));
        self.f_c.visit(v, &format!("{a}.f_c"));
        self.mlp_ln.visit(v, &format!("{m}.ln"));
        self.f_1.visit(v, &format!("{m}.f_1"));
        self.f_2.visit(v, &format!("{m}.f_2"));
    }
    /// `mask`: additive `[L, L]` (causal) or none.
    fn forward(&self, x: Tensor<3>, mask: Option<Tensor<2>>) -> Tensor<3> {
        let [b, l, w] = x.dims();
        let (h, d) = (self.heads, w / self.heads);
        let s = (d as f64).powf(-0.25);
        let n = self.attn_ln.forward(x.clone());
        let split = |t: Tensor<3>| t.reshape([b, l, h, d]).swap_dims(1, 2) * s; // [b, h, l, d]
        let q = split(self.f_q.forward(n.clone()));
        let k = split(self.f_k.forward(n.clone()));
        let v = self.f_v.forward(n).reshape([b, l, h, d]).swap_dims(1, 2);
        let mut logits = q.matmul(k.swap_dims(2, 3)); // [b, h, l, l]
        if let Some(m) = mask {
            logits = logits + m.reshape([1, 1, l, l]);
        }
        let a = softmax(logits, 3)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([b, l, w]);
        let x = x + self.f_c.forward(a);
        let m = self
            .f_2
            .forward(gelu(self.f_1.forward(self.mlp_ln.forward(x.clone()))));
        x + m
    }
}

/// Both encoders and the learned temperature (exported as the config's
/// `logit_scale`, which the engine's guidance multiplies by).
#[derive(Module, Debug)]
pub struct NoisyClip {
    // Text encoder.
    w_voc: Param<Tensor<2>>,
    text_pos: Param<Tensor<2>>,
    text_blocks: Vec<Block>,
    text_out_ln: Ln,
    text_out: Affine,
    // Image encoder.
    w_t: Param<Tensor<2>>,
    patch_proj: Param<Tensor<4>>,
    image_pos: Param<Tensor<2>>,
    image_in_ln: Ln,
    image_blocks: Vec<Block>,
    image_out_ln: Ln,
    image_out: Affine,
    /// log of the softmax temperature's inverse.
    log_scale: Param<Tensor<1>>,
    #[module(skip)]
    cfg: NoisyClipConfig,
}

const PIXEL_MEAN: [f32; 3] = [122.770_94, 116.746_01, 104.093_735];
const PIXEL_STD: [f32; 3] = [68.500_53, 66.632_16, 70.323_16];

impl NoisyClip {
    pub fn new(
        cfg: &NoisyClipConfig,
        text: Option<&WeightMap>,
        image: Option<&WeightMap>,
        log_scale: f32,
        dev: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        let (ti, ii) = (Init(text, "text."), Init(image, "image."));
        let (tw, iw) = (cfg.text_width(), cfg.image_width());
        let p = cfg.patch_size;
        let blocks = |init: &Init, n: usize, w: usize, heads: usize| -> Vec<Block> {
            (0..n)
                .map(|i| Block::new(init, dev, &format!("blocks.block_{i}"), w, heads, n))
                .collect()
        };
        Ok(NoisyClip {
            w_voc: ti.param(dev, "blocks.input.w_voc", [cfg.n_vocab, tw], 0.02),
            text_pos: ti.param(dev, "blocks.input.w_pos", [cfg.max_text_len, tw], 0.01),
            text_blocks: blocks(&ti, cfg.n_xf_blocks_text, tw, cfg.n_head_text),
            text_out_ln: Ln::new(&ti, dev, "blocks.output.ln", tw),
            text_out: Affine::new(
                &ti,
                dev,
                "blocks.output.f",
                cfg.n_embd,
                tw,
                false,
                (tw as f64).powf(-0.5),
            ),
            w_t: ii.param(dev, "blocks.input.w_t", [cfg.n_timesteps, iw], 0.02),
            patch_proj: ii.param(
                dev,
                "blocks.input.patch_proj",
                [iw, 3, p, p],
                (3.0 * (p * p) as f64).powf(-0.5),
            ),
            image_pos: ii.param(dev, "blocks.input.w_pos", [cfg.image_tokens(), iw], 0.01),
            image_in_ln: Ln::new(&ii, dev, "blocks.input.ln", iw),
            image_blocks: blocks(&ii, cfg.n_xf_blocks_image, iw, cfg.n_head_image),
            image_out_ln: Ln::new(&ii, dev, "blocks.output.ln", iw),
            image_out: Affine::new(
                &ii,
                dev,
                "blocks.output.f",
                cfg.n_embd,
                iw,
                false,
                (iw as f64).powf(-0.5),
            ),
            log_scale: crate::model::named_param(
                "logit_scale",
                Tensor::<1>::from_data(TensorData::new(vec![log_scale], [1]), dev),
            ),
            cfg: cfg.clone(),
        })
    }

    /// Raw text embeddings `[B, E]`: tokens `[B, L]`, `last` one-hot `[B, L]`
    /// at each prompt's text_len − 1.
    pub fn encode_text(&self, tokens: Tensor<2, Int>, last: Tensor<2>) -> Tensor<2> {
        let [b, l] = tokens.dims();
        let w = self.cfg.text_width();
        let mut x = embedding(self.w_voc.val(), tokens) + self.text_pos.val().reshape([1, l, w]);
        let dev = x.device();
        let causal: Vec<f32> = (0..l * l)
            .map(|i| if i % l > i / l { -1e9 } else { 0.0 })
            .collect();
        let mask = Tensor::<2>::from_data(TensorData::new(causal, [l, l]), &dev);
        for blk in &self.text_blocks {
            x = blk.forward(x, Some(mask.clone()));
        }
        let picked = (x * last.reshape([b, l, 1])).sum_dim(1); // [b, 1, w]
        self.text_out
            .forward(self.text_out_ln.forward(picked))
            .reshape([b, self.cfg.n_embd])
    }

    /// Raw image embeddings `[B, E]` of x_t `[B, 3, S, S]` at original timesteps `t` `[B, 1]`.
    pub fn encode_image(&self, x: Tensor<4>, t: Tensor<2, Int>) -> Tensor<2> {
        let c = &self.cfg;
        let [b, _, s, _] = x.dims();
        let (p, g, w) = (c.patch_size, s / c.patch_size, c.image_width());
        let dev = x.device();
        let slope: Vec<f32> = (0..3).map(|i| 127.5 / PIXEL_STD[i]).collect();
        let offset: Vec<f32> = (0..3)
            .map(|i| (127.5 - PIXEL_MEAN[i]) / PIXEL_STD[i])
            .collect();
        let x = x * Tensor::<4>::from_data(TensorData::new(slope, [1, 3, 1, 1]), &dev)
            + Tensor::<4>::from_data(TensorData::new(offset, [1, 3, 1, 1]), &dev);
        // Patches in (channel, ky, kx) order, rows (gy, gx): the stride-P conv as a product.
        let patches = x
            .reshape([b, 3, g, p, g, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b * g * g, 3 * p * p]);
        let emb = patches
            .matmul(self.patch_proj.val().reshape([w, 3 * p * p]).transpose())
            .reshape([b, g * g, w]);
        let time = embedding(self.w_t.val(), t); // [b, 1, w]
        let seq = Tensor::cat(vec![time, emb], 1) + self.image_pos.val().reshape([1, g * g + 1, w]);
        let mut h = self.image_in_ln.forward(seq);
        for blk in &self.image_blocks {
            h = blk.forward(h, None);
        }
        let first = h.narrow(1, 0, 1);
        self.image_out
            .forward(self.image_out_ln.forward(first))
            .reshape([b, c.n_embd])
    }

    pub fn scale(&self) -> Tensor<1> {
        self.log_scale.val().clamp_max(100f32.ln()).exp()
    }

    /// `(text, image)` weights with the official names, in state_dict order.
    pub fn export(&self) -> Result<(Named, Named)> {
        let mut t = Visit::default();
        t.add("blocks.input.w_voc", &self.w_voc);
        t.add("blocks.input.w_pos", &self.text_pos);
        for (i, blk) in self.text_blocks.iter().enumerate() {
            blk.visit(&mut t, &format!("blocks.block_{i}"));
        }
        self.text_out_ln.visit(&mut t, "blocks.output.ln");
        self.text_out.visit(&mut t, "blocks.output.f");
        let mut im = Visit::default();
        im.add("blocks.input.w_t", &self.w_t);
        im.add("blocks.input.patch_proj", &self.patch_proj);
        im.add("blocks.input.w_pos", &self.image_pos);
        self.image_in_ln.visit(&mut im, "blocks.input.ln");
        for (i, blk) in self.image_blocks.iter().enumerate() {
            blk.visit(&mut im, &format!("blocks.block_{i}"));
        }
        self.image_out_ln.visit(&mut im, "blocks.output.ln");
        self.image_out.visit(&mut im, "blocks.output.f");
        // The engine's key list is the contract.
        for (kind, v) in [("clip-text-enc", &t.0), ("clip-image-enc", &im.0)] {
            let want = self.cfg.weight_shapes(kind)?;
            let got: Vec<_> = v.iter().map(|(n, s, _)| (n.clone(), s.clone())).collect();
            if got != want {
                bail!("{kind}: exported keys differ from the engine's");
            }
        }
        Ok((t.0, im.0))
    }

    /// The config with the learned temperature as `logit_scale`.
    pub fn export_config(&self) -> NoisyClipConfig {
        let s: f32 = self.scale().into_scalar();
        NoisyClipConfig {
            logit_scale: s,
            ..self.cfg.clone()
        }
    }
}

/// A contrastive batch: noised images, their timesteps, caption tokens.
pub struct ClipBatch {
    pub x_t: Tensor<4>,
    pub t: Tensor<2, Int>,
    pub tokens: Tensor<2, Int>,
    pub last: Tensor<2>,
    /// Row-normalised targets: 1 where two captions are equal (duplicates are
    /// not negatives).
    pub targets: Tensor<2>,
}

#[allow(clippy::too_many_arguments)]
pub fn clip_batch(
    cfg: &NoisyClipConfig,
    tok: &ClipTokenizer,
    glide_tok: &engine::glide::tokenizer::GlideTokenizer,
    sched: &Schedule,
    data: &Data,
    rng: &mut Rng,
    b: usize,
    t_max: Option<usize>,
    dev: &Device,
) -> Result<ClipBatch> {
    let base = crate::train::demo_config("base")?;
    let batch = make_batch(&base, glide_tok, data, rng, b, 0.0)?;
    let s = batch.size;
    if s != cfg.image_size {
        bail!("CLIP images are {}px, the batch {s}px", cfg.image_size);
    }
    let l = cfg.max_text_len;
    let (mut ids, mut last) = (Vec::new(), vec![0f32; b * l]);
    for (i, c) in batch.captions.iter().enumerate() {
        let (t, n) = clip_tokens(tok, c, l);
        ids.extend(t.iter().map(|&v| v as i64));
        last[i * l + n - 1] = 1.0;
    }
    let ts: Vec<usize> = (0..b)
        .map(|_| rng.below(t_max.unwrap_or(cfg.n_timesteps)))
        .collect();
    let ac = &sched.alphas_cumprod;
    let noise = engine::rng::randn(b * 3 * s * s, rng.below(1 << 30) as u64, 0);
    let per = 3 * s * s;
    let x_t: Vec<f32> = (0..b * per)
        .map(|e| {
            let a = ac[ts[e / per]];
            (a.sqrt() * batch.x0[e] as f64 + (1.0 - a).sqrt() * noise[e] as f64) as f32
        })
        .collect();
    let mut targets = vec![0f32; b * b];
    for i in 0..b {
        let same: Vec<usize> = (0..b)
            .filter(|&j| batch.captions[j] == batch.captions[i])
            .collect();
        for &j in &same {
            targets[i * b + j] = 1.0 / same.len() as f32;
        }
    }
    Ok(ClipBatch {
        x_t: Tensor::<4>::from_data(TensorData::new(x_t, [b, 3, s, s]), dev),
        t: Tensor::<2, Int>::from_data(
            TensorData::new(ts.iter().map(|&v| v as i64).collect::<Vec<_>>(), [b, 1]),
            dev,
        ),
        tokens: Tensor::<2, Int>::from_data(TensorData::new(ids, [b, l]), dev),
        last: Tensor::<2>::from_data(TensorData::new(last, [b, l]), dev),
        targets: Tensor::<2>::from_data(TensorData::new(targets, [b, b]), dev),
    })
}

/// Symmetric cross-entropy of the scaled cosine similarities, and the
/// image→text top-1 accuracy.
pub fn clip_loss(model: &NoisyClip, batch: &ClipBatch) -> (Tensor<1>, f32) {
    let norm = |z: Tensor<2>| {
        let n = z.clone().powi_scalar(2).sum_dim(1).sqrt() + 1e-12;
        z / n
    };
    let zi = norm(model.encode_image(batch.x_t.clone(), batch.t.clone()));
    let zt = norm(model.encode_text(batch.tokens.clone(), batch.last.clone()));
    let b = zi.dims()[0];
    let logits = zi.matmul(zt.transpose()) * model.scale().reshape([1, 1]);
    let ce = |l: Tensor<2>, t: Tensor<2>| (log_softmax(l, 1) * t).sum().neg() / b as f32;
    let loss = (ce(logits.clone(), batch.targets.clone())
        + ce(
            logits.clone().transpose(),
            batch.targets.clone().transpose(),
        ))
        / 2.0;
    let best = logits.detach().argmax(1).reshape([b]);
    let hit: Vec<f32> = batch
        .targets
        .clone()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default();
    let best: Vec<i64> = best
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .unwrap_or_default();
    let acc = best
        .iter()
        .enumerate()
        .filter(|&(i, &j)| hit[i * b + j as usize] > 0.0)
        .count() as f32
        / b as f32;
    (loss, acc)
}

/// `webglide-train --kind clip`: contrastive training on noised demo images.
pub fn run(args: &crate::train::Args) -> Result<()> {
    let cfg = match &args.config {
        Some(p) => serde_json::from_slice(&std::fs::read(p)?)?,
        None => demo_clip_config(),
    };
    cfg.validate()?;
    let (dev, out, data) = crate::train::prepare(args, Some(cfg.image_size))?;
    let out = &out;
    let (tok, glide_tok) = (clip_tokenizer()?, crate::train::tokenizer()?);
    let sched = Schedule::new(
        "squaredcos_cap_v2",
        cfg.n_timesteps,
        &cfg.n_timesteps.to_string(),
    )?;
    let state_path = out.join("state.json");
    let (mut model, mut optim, mut step, mut samples) = if state_path.exists() {
        let st = State::read(out, "clip")?;
        let saved: NoisyClipConfig =
            serde_json::from_slice(&std::fs::read(out.join("config.json"))?)?;
        let text = read_safetensors(&out.join("text_enc.safetensors"))?;
        let image = read_safetensors(&out.join("image_enc.safetensors"))?;
        let model = NoisyClip::new(
            &cfg,
            Some(&text),
            Some(&image),
            saved.logit_scale.ln(),
            &dev,
        )?;
        // The noisy CLIP trained (and shipped) with burn's epsilon; kept.
        let (optim, _) = crate::train::resume_optim(out, &st, 0.01, crate::train::BURN_ADAM_EPS)?;
        eprintln!("resuming {} at step {}", out.display(), st.step);
        (model, optim, st.step, st.samples)
    } else {
        let model = NoisyClip::new(&cfg, None, None, (1.0f32 / 0.07).ln(), &dev)?;
        (
            model,
            crate::train::adamw(0.01, crate::train::BURN_ADAM_EPS),
            0,
            0,
        )
    };
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join("loss.log"))?;
    writeln!(
        log,
        "# kind clip batch {} lr {} device {} emoji {} shapes_share {} config {}",
        args.batch,
        args.lr,
        args.device,
        data.emoji.as_ref().map_or(0, |e| e.entries.len()),
        data.shapes_share,
        serde_json::to_string(&cfg)?
    )?;
    let save = |model: &NoisyClip,
                optim: &burn::optim::ModuleOptimizer,
                step: u64,
                samples: u64|
     -> Result<()> {
        let (text, image) = model.export()?;
        write_atomic(
            &out.join("text_enc.safetensors"),
            &crate::train::safetensors_bytes(&text)?,
        )?;
        write_atomic(
            &out.join("image_enc.safetensors"),
            &crate::train::safetensors_bytes(&image)?,
        )?;
        write_atomic(
            &out.join("config.json"),
            &serde_json::to_vec_pretty(&model.export_config())?,
        )?;
        crate::train::save_optim(optim, &out.join("optim.bpk"))?;
        write_atomic(
            &state_path,
            &serde_json::to_vec(&State {
                step,
                kind: "clip".into(),
                samples,
                moments_from: 0,
                moments_by_name: true,
                adam_eps: Some(crate::train::BURN_ADAM_EPS),
            })?,
        )
    };
    let mut rng = Rng(args.seed ^ step.wrapping_mul(0x9e37_79b9) ^ 0xc11f);
    let started = Instant::now();
    let (mut acc_loss, mut acc_top1, mut n) = (0f64, 0f64, 0usize);
    while step < args.steps && started.elapsed().as_secs_f64() < args.minutes * 60.0 {
        let batch = clip_batch(
            &cfg, &tok, &glide_tok, &sched, &data, &mut rng, args.batch, None, &dev,
        )?;
        let (loss, top1) = clip_loss(&model, &batch);
        acc_loss += loss.clone().into_scalar::<f32>() as f64;
        acc_top1 += top1 as f64;
        n += 1;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let lr = args.lr * ((step + 1) as f64 / args.warmup.max(1) as f64).min(1.0);
        model = optim.step(lr, model, grads);
        step += 1;
        samples += args.batch as u64;
        if step % 20 == 0 {
            let scale: f32 = model.scale().into_scalar();
            let line = format!(
                "step {step} samples {samples} loss {:.4} top1 {:.3} scale {scale:.1} elapsed {:.0}s",
                acc_loss / n as f64,
                acc_top1 / n as f64,
                started.elapsed().as_secs_f64()
            );
            eprintln!("{line}");
            writeln!(log, "{line}")?;
            (acc_loss, acc_top1, n) = (0.0, 0.0, 0);
        }
        if step % args.save_every == 0 {
            save(&model, &optim, step, samples)?;
        }
    }
    save(&model, &optim, step, samples)?;
    eprintln!(
        "step {step}: wrote {}/{{text_enc,image_enc}}.safetensors + config.json",
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both encoders use the same key names; their parameter ids (which key
    /// saved optimizer moments) must not collide.
    #[test]
    fn the_two_encoders_parameter_ids_are_distinct() {
        let dev = Device::flex();
        let cfg = demo_clip_config();
        let model = NoisyClip::new(&cfg, None, None, 0.0, &dev).unwrap();
        let ids = crate::model::param_ids(&model);
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        let again = NoisyClip::new(&cfg, None, None, 0.0, &dev).unwrap();
        assert_eq!(crate::model::param_ids(&again), ids);
    }

    /// The burn encoders compute what the engine's do: the tiny official
    /// fixture weights give the fixture's embeddings.
    #[test]
    fn encoders_match_the_official_fixture() {
        let fix = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/fixtures/glide/clip"
        );
        let case: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{fix}/config.json")).unwrap()).unwrap();
        let cfg: NoisyClipConfig =
            serde_json::from_value(case["clip_config_yaml_values"].clone()).unwrap();
        let text =
            read_safetensors(std::path::Path::new(&format!("{fix}/text_enc.safetensors"))).unwrap();
        let image = read_safetensors(std::path::Path::new(&format!(
            "{fix}/image_enc.safetensors"
        )))
        .unwrap();
        let dev = Device::flex();
        let model = NoisyClip::new(&cfg, Some(&text), Some(&image), 100f32.ln(), &dev).unwrap();
        let io_bytes = std::fs::read(format!("{fix}/io.safetensors")).unwrap();
        let io = safetensors::SafeTensors::deserialize(&io_bytes).unwrap();
        let ints = |n: &str| -> Vec<i64> {
            let t = io.tensor(n).unwrap();
            t.data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let floats = |n: &str| engine::glide::weights::to_f32(n, &io.tensor(n).unwrap()).unwrap();
        let (b, l) = (2, cfg.max_text_len);
        let lens = ints("text.lens");
        let mut last = vec![0f32; b * l];
        for (i, &n) in lens.iter().enumerate() {
            last[i * l + n as usize - 1] = 1.0;
        }
        let zt = model.encode_text(
            Tensor::<2, Int>::from_data(TensorData::new(ints("text.tokens"), [b, l]), &dev),
            Tensor::<2>::from_data(TensorData::new(last, [b, l]), &dev),
        );
        let s = cfg.image_size;
        let x = Tensor::<4>::from_data(TensorData::new(floats("image.x"), [b, 3, s, s]), &dev);
        let t = Tensor::<2, Int>::from_data(TensorData::new(ints("image.t"), [b, 1]), &dev);
        let zi = model.encode_image(x, t);
        for (name, got) in [("text.z_t_raw", zt), ("image.z_i_raw", zi)] {
            let got = got
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap();
            let want = &floats(name);
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = got
                .iter()
                .zip(want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= 1e-4 * scale, "{name}: {err} vs scale {scale}");
        }
        let (t, im) = model.export().unwrap();
        assert_eq!(t.len(), text.len());
        assert_eq!(im.len(), image.len());
    }

    /// A few steps on shapes scenes lower the contrastive loss.
    #[test]
    fn contrastive_training_lowers_the_loss() {
        let cfg = NoisyClipConfig {
            image_size: 64,
            patch_size: 16,
            max_text_len: 16,
            n_embd: 16,
            n_head_state_text: 8,
            n_head_text: 2,
            n_xf_blocks_text: 1,
            n_head_state_image: 8,
            n_head_image: 2,
            n_xf_blocks_image: 1,
            ..demo_clip_config()
        };
        let dev = Device::flex().autodiff();
        dev.seed(1);
        let mut model = NoisyClip::new(&cfg, None, None, (1.0f32 / 0.07).ln(), &dev).unwrap();
        let (tok, gtok) = (
            clip_tokenizer().unwrap(),
            crate::train::tokenizer().unwrap(),
        );
        let sched = Schedule::new("squaredcos_cap_v2", 1000, "1000").unwrap();
        let data = Data {
            size: Some(64),
            ..Data::shapes()
        };
        let mut rng = Rng(2);
        // One fixed batch of clean-ish images: the loss on it must fall.
        let batch = clip_batch(
            &cfg,
            &tok,
            &gtok,
            &sched,
            &data,
            &mut rng,
            8,
            Some(50),
            &dev,
        )
        .unwrap();
        let mut optim = burn::optim::AdamWConfig::new().init();
        let first: f32 = clip_loss(&model, &batch).0.into_scalar();
        for _ in 0..15 {
            let (loss, _) = clip_loss(&model, &batch);
            let g = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(3e-3, model, g);
        }
        let last: f32 = clip_loss(&model, &batch).0.into_scalar();
        assert!(last < 0.7 * first, "{first} -> {last}");
    }
}
