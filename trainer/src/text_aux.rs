//! `webglide-train text-aux`: teaches the base's text transformer a
//! caption's structure on text alone.
//!
//! The diffusion loss barely rewards word order: the twenty-fourth session
//! found the base reading its caption as a bag of words (swapping two colours
//! moved the text features by ~1 %, another caption by 15–25 %). So a
//! throwaway head — never exported; GLIDE's weights and names are unchanged —
//! reads back from the transformer's output
//! - at the last position (the one `transformer_proj` pools into the UNet's
//!   embedding): each object's colour and shape, in caption order, and the
//!   relation;
//! - at every word's tokens (what the UNet's cross-attention reads, token by
//!   token): which object the word belongs to, and that object's colour and
//!   shape — "circle" in "a blue square above a red circle" must say red —
//!   and, for the two related objects, the side of the other it is on
//!   ("above" for the square, "below" for the circle): what a place in the
//!   image must look up to find its object (thirty-first session).
//!
//! An anchor keeps the features near the run's own (relative squared change),
//! so the UNet is not handed a new language. Captions with a held-out
//! colour–shape pair are never trained on: they measure whether the reading
//! generalises. A few milliseconds per batch of captions.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use engine::demo::shapes::{held_out, opposite_relation, Rng, Scene, COLORS, RELATIONS, SHAPES};
use engine::glide::model::GlideConfig;
use engine::glide::tokenizer::{pad_tokens, GlideTokenizer};

use crate::model::{Glide, Init, Linear, Named, Visit};
use crate::train::{
    adamw, device, read_run_weights, read_safetensors, text_weight, tokenizer, write_atomic,
    write_run_weights, write_safetensors, State, ADAM_EPS,
};

/// Objects a caption names at most (`Scene::random`).
pub const SLOTS: usize = 3;
const NO_COLOR: usize = COLORS.len();
const NO_SHAPE: usize = SHAPES.len();
const NO_RELATION: usize = RELATIONS.len();
/// The slot of a word that names no object ("above", "and").
const JOINER: usize = SLOTS;
/// Sides are named as the relations are: object 0 is on the relation's
/// side of object 1, object 1 on the opposite one (`opposite_relation`).
const NO_SIDE: usize = RELATIONS.len();

/// Classes of the pooled head's groups: each slot's colour and shape (or
/// none), then the relation (or none).
const POOLED: [usize; 2 * SLOTS + 1] = [
    NO_COLOR + 1,
    NO_SHAPE + 1,
    NO_COLOR + 1,
    NO_SHAPE + 1,
    NO_COLOR + 1,
    NO_SHAPE + 1,
    NO_RELATION + 1,
];
/// Classes of the per-token head's groups: slot (or joiner), colour, shape,
/// side (or none: a joiner, a third object, a caption without relation).
const TOKEN: [usize; 4] = [SLOTS + 1, NO_COLOR + 1, NO_SHAPE + 1, NO_SIDE + 1];
/// Rows of the token head of runs from before the side group.
const TOKEN_WITHOUT_SIDE: usize = SLOTS + 1 + NO_COLOR + 1 + NO_SHAPE + 1;

/// A caption parsed back into its objects, relation and words.
#[derive(Debug, PartialEq)]
pub struct Parsed<'a> {
    pub objects: Vec<(usize, usize)>,
    pub relation: Option<usize>,
    /// Every word with the slot of the object it belongs to (`JOINER` for none).
    pub words: Vec<(&'a str, usize)>,
}

/// Parses the shapes captions `Scene::caption` writes ("a red circle above a
/// blue square and a green star"); anything else (emoji, empty) is `None`.
pub fn parse(caption: &str) -> Option<Parsed<'_>> {
    let words: Vec<&str> = caption.split(' ').collect();
    let mut p = Parsed {
        objects: Vec::new(),
        relation: None,
        words: Vec::new(),
    };
    let mut i = 0;
    while i < words.len() {
        let slot = p.objects.len();
        // Between objects: the relation after the first, "and" after the second.
        let joiner: Vec<&str> = match slot {
            0 => Vec::new(),
            1 => {
                let r = RELATIONS.iter().position(|r| {
                    let r: Vec<&str> = r.split(' ').collect();
                    words[i..].starts_with(&r)
                })?;
                p.relation = Some(r);
                RELATIONS[r].split(' ').collect()
            }
            2 => vec!["and"],
            _ => return None,
        };
        if !words[i..].starts_with(&joiner) {
            return None;
        }
        p.words
            .extend(words[i..i + joiner.len()].iter().map(|&w| (w, JOINER)));
        i += joiner.len();
        let [a, c, s] = words.get(i..i + 3)? else {
            return None;
        };
        let color = COLORS.iter().position(|(n, _)| n == c)?;
        let shape = SHAPES.iter().position(|n| n == s)?;
        if *a != "a" {
            return None;
        }
        p.objects.push((color, shape));
        p.words.extend([a, c, s].map(|&w| (w, slot)));
        i += 3;
    }
    (!p.objects.is_empty()).then_some(p)
}

/// A caption's token ids with what the heads must read back.
#[derive(Debug)]
pub struct Labels {
    pub ids: Vec<u32>,
    /// One class per `POOLED` group.
    pub pooled: [usize; 2 * SLOTS + 1],
    /// One `TOKEN` class per group and id.
    pub tokens: Vec<[usize; 4]>,
}

/// `None` for a caption `parse` does not read, or whose words do not
/// tokenise to the caption's tokens.
pub fn labels(caption: &str, tok: &GlideTokenizer) -> Option<Labels> {
    let p = parse(caption)?;
    let object = |slot: usize| p.objects.get(slot).copied().unwrap_or((NO_COLOR, NO_SHAPE));
    let mut pooled = [0; 2 * SLOTS + 1];
    for slot in 0..SLOTS {
        (pooled[2 * slot], pooled[2 * slot + 1]) = object(slot);
    }
    pooled[2 * SLOTS] = p.relation.unwrap_or(NO_RELATION);
    let (mut ids, mut tokens) = (Vec::new(), Vec::new());
    for (j, &(word, slot)) in p.words.iter().enumerate() {
        // GPT-2's pre-tokenizer splits before each space, so the words'
        // tokens are the caption's.
        let w = tok.encode(&if j == 0 {
            word.to_string()
        } else {
            format!(" {word}")
        });
        let (c, s) = object(slot);
        let side = match (slot, p.relation) {
            (0, Some(r)) => r,
            (1, Some(r)) => opposite_relation(r),
            _ => NO_SIDE,
        };
        tokens.extend(w.iter().map(|_| [slot, c, s, side]));
        ids.extend(w);
    }
    (ids == tok.encode(caption)).then_some(Labels {
        ids,
        pooled,
        tokens,
    })
}

/// The heads: linear reads of the transformer's (final-LayerNormed) output.
#[derive(Module, Debug)]
pub struct Head {
    pub pooled: Linear,
    pub token: Linear,
}

/// A batch of captions as tensors: the transformer's inputs and one-hot targets.
struct Batch {
    tokens: Tensor<2, Int>,
    mask: Tensor<2>,
    pooled: Tensor<2>,
    /// `[B·ctx, Σ TOKEN]`, zero rows at padding.
    token: Tensor<2>,
    real_tokens: usize,
}

fn one_hot(classes: &[usize], groups: &[usize], row: &mut [f32]) {
    let mut off = 0;
    for (&c, &n) in classes.iter().zip(groups) {
        row[off + c] = 1.0;
        off += n;
    }
}

impl Batch {
    fn new(labels: &[Labels], ctx: usize, dev: &Device) -> Batch {
        let b = labels.len();
        let (np, nt) = (POOLED.iter().sum::<usize>(), TOKEN.iter().sum::<usize>());
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        let mut pooled = vec![0f32; b * np];
        let mut token = vec![0f32; b * ctx * nt];
        let mut real_tokens = 0;
        for (i, l) in labels.iter().enumerate() {
            let (t, m) = pad_tokens(&l.ids, ctx);
            ids.extend(t.iter().map(|&v| v as i64));
            mask.extend(m.iter().map(|&v| v as f32));
            one_hot(&l.pooled, &POOLED, &mut pooled[i * np..(i + 1) * np]);
            for (p, classes) in l.tokens.iter().take(ctx).enumerate() {
                let row = (i * ctx + p) * nt;
                one_hot(classes, &TOKEN, &mut token[row..row + nt]);
                real_tokens += 1;
            }
        }
        Batch {
            tokens: Tensor::from_data(TensorData::new(ids, [b, ctx]), dev),
            mask: Tensor::from_data(TensorData::new(mask, [b, ctx]), dev),
            pooled: Tensor::from_data(TensorData::new(pooled, [b, np]), dev),
            token: Tensor::from_data(TensorData::new(token, [b * ctx, nt]), dev),
            real_tokens,
        }
    }
}

/// Summed cross-entropy of the groups of `logits`, over `count` rows.
fn grouped_ce(logits: Tensor<2>, target: Tensor<2>, groups: &[usize], count: usize) -> Tensor<1> {
    let mut off = 0;
    let mut total = Tensor::<1>::zeros([1], &logits.device());
    for &n in groups {
        let l = log_softmax(logits.clone().narrow(1, off, n), 1);
        total = total + (l * target.clone().narrow(1, off, n)).sum().neg();
        off += n;
    }
    total / count.max(1) as f32
}

/// The text features the heads and the anchor read.
struct Features {
    /// `[B, emb]`: what the UNet's timestep embedding gets.
    xf_proj: Tensor<2>,
    /// `[B, ctx, w]`: what the UNet's attention reads.
    xf_out: Tensor<3>,
}

fn features(model: &Glide, batch: &Batch) -> Features {
    let (xf_proj, xf_out) = model.encode_text(batch.tokens.clone(), batch.mask.clone());
    let [b, w, ctx, _] = xf_out.dims();
    Features {
        xf_proj,
        xf_out: xf_out.reshape([b, w, ctx]).swap_dims(1, 2),
    }
}

impl Head {
    pub fn new(init: &Init, dev: &Device, width: usize) -> Head {
        Head {
            pooled: Linear::new(init, dev, "aux.pooled", POOLED.iter().sum(), width),
            token: Linear::new(init, dev, "aux.token", TOKEN.iter().sum(), width),
        }
    }

    /// The heads a run keeps (`head_path`), checked against the shapes this
    /// width needs: a file of another width or a damaged one is an error. A
    /// token head from before the side group gets fresh side rows.
    pub fn load(path: &Path, dev: &Device, width: usize) -> Result<Head> {
        let mut weights = read_safetensors(path)?;
        let fresh = Head::new(&Init::Train, dev, width).export();
        for (name, shape, values) in fresh.iter().filter(|(n, ..)| n.starts_with("aux.token")) {
            let old_shape: Vec<usize> = std::iter::once(TOKEN_WITHOUT_SIDE)
                .chain(shape[1..].iter().copied())
                .collect();
            if let Some((s, v)) = weights.get_mut(name) {
                if *s == old_shape && v.len() == old_shape.iter().product::<usize>() {
                    v.extend_from_slice(&values[v.len()..]);
                    *s = shape.clone();
                }
            }
        }
        for (name, shape, _) in fresh {
            match weights.get(&name) {
                Some((s, v)) if *s == shape && v.len() == shape.iter().product::<usize>() => {}
                _ => bail!(
                    "{}: '{name}' missing or not of shape {shape:?} (heads of another width?)",
                    path.display()
                ),
            }
        }
        Ok(Head::new(&Init::From(&weights), dev, width))
    }

    pub fn export(&self) -> Named {
        let mut v = Visit(Vec::new());
        self.pooled.visit(&mut v, "aux.pooled");
        self.token.visit(&mut v, "aux.token");
        v.0
    }

    /// Logits: pooled `[B, Σ POOLED]` (from the last position), per token `[B·ctx, Σ TOKEN]`.
    fn logits(&self, f: &Features) -> (Tensor<2>, Tensor<2>) {
        let [b, ctx, w] = f.xf_out.dims();
        let last = f.xf_out.clone().narrow(1, ctx - 1, 1).reshape([b, w]);
        let token = self.token.forward2(f.xf_out.clone().reshape([b * ctx, w]));
        (self.pooled.forward2(last), token)
    }

    fn loss(&self, f: &Features, batch: &Batch) -> Tensor<1> {
        let (pooled, token) = self.logits(f);
        let b = pooled.dims()[0];
        grouped_ce(pooled, batch.pooled.clone(), &POOLED, b)
            + grouped_ce(token, batch.token.clone(), &TOKEN, batch.real_tokens)
    }
}

/// `‖new − old‖² / ‖old‖²` (old detached).
fn relative_change<const D: usize>(new: Tensor<D>, old: Tensor<D>) -> Tensor<1> {
    let old = old.detach();
    let scale = old
        .clone()
        .powf_scalar(2.0)
        .sum()
        .into_scalar::<f32>()
        .max(1e-12);
    (new - old).powf_scalar(2.0).sum() / scale
}

/// How often the heads read right: among slots that hold an object, its
/// colour / shape; the relation where there is one; among the words of an
/// object, its slot and (the binding) its colour / shape.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Accuracy {
    pub slot_color: f64,
    pub slot_shape: f64,
    pub relation: f64,
    pub token_slot: f64,
    pub token_color: f64,
    pub token_shape: f64,
    /// Among the words of the two related objects.
    pub token_side: f64,
}

impl std::fmt::Display for Accuracy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pooled colour {:.3} shape {:.3} relation {:.3} | tokens slot {:.3} colour {:.3} shape {:.3} side {:.3}",
            self.slot_color,
            self.slot_shape,
            self.relation,
            self.token_slot,
            self.token_color,
            self.token_shape,
            self.token_side
        )
    }
}

fn argmax_groups(row: &[f32], groups: &[usize]) -> Vec<usize> {
    let mut off = 0;
    groups
        .iter()
        .map(|&n| {
            let g = &row[off..off + n];
            off += n;
            (0..n).fold(0, |best, i| if g[i] > g[best] { i } else { best })
        })
        .collect()
}

/// The heads' reads of `labels` from their features `f`.
fn accuracy(head: &Head, f: &Features, labels: &[Labels]) -> Result<Accuracy> {
    let ctx = f.xf_out.dims()[1];
    let (pooled, token) = head.logits(f);
    let (pooled, token) = (crate::eval::floats(pooled)?, crate::eval::floats(token)?);
    let (np, nt) = (POOLED.iter().sum::<usize>(), TOKEN.iter().sum::<usize>());
    // (right, counted) per measure, in `Accuracy`'s order.
    let mut tally = [(0usize, 0usize); 7];
    let mut count = |i: usize, right: bool| {
        tally[i].0 += right as usize;
        tally[i].1 += 1;
    };
    for (i, l) in labels.iter().enumerate() {
        let got = argmax_groups(&pooled[i * np..(i + 1) * np], &POOLED);
        for slot in 0..SLOTS {
            if l.pooled[2 * slot] != NO_COLOR {
                count(0, got[2 * slot] == l.pooled[2 * slot]);
                count(1, got[2 * slot + 1] == l.pooled[2 * slot + 1]);
            }
        }
        if l.pooled[2 * SLOTS] != NO_RELATION {
            count(2, got[2 * SLOTS] == l.pooled[2 * SLOTS]);
        }
        for (p, want) in l.tokens.iter().take(ctx).enumerate() {
            if want[0] == JOINER {
                continue;
            }
            let row = (i * ctx + p) * nt;
            let got = argmax_groups(&token[row..row + nt], &TOKEN);
            for k in 0..3 {
                count(3 + k, got[k] == want[k]);
            }
            if want[3] != NO_SIDE {
                count(6, got[3] == want[3]);
            }
        }
    }
    let f = |(r, n): (usize, usize)| r as f64 / n.max(1) as f64;
    Ok(Accuracy {
        slot_color: f(tally[0]),
        slot_shape: f(tally[1]),
        relation: f(tally[2]),
        token_slot: f(tally[3]),
        token_color: f(tally[4]),
        token_shape: f(tally[5]),
        token_side: f(tally[6]),
    })
}

/// How far a shape word's features are from "its shape plus its colour":
/// an additive fit `μ + a[shape] + b[colour]` to the features of the shape
/// words of `fit` (the training pairs), then the residual's share of each
/// set's variance (about the fitted mean) for the fitted words and for the
/// words of `held` whose pair is held out. A held-out pair's bound word is
/// only as familiar to the UNet as this fit makes it: equal shares mean a
/// held-out binding is built like a seen one.
pub fn additive_residual(
    fit: &[(usize, usize, Vec<f32>)],
    held: &[(usize, usize, Vec<f32>)],
) -> (f64, f64) {
    let w = fit.first().map_or(0, |f| f.2.len());
    let mean = |rows: &mut dyn Iterator<Item = Vec<f64>>| -> Vec<f64> {
        let (mut sum, mut n) = (vec![0f64; w], 0usize);
        for r in rows {
            sum.iter_mut().zip(&r).for_each(|(a, b)| *a += b);
            n += 1;
        }
        sum.iter().map(|v| v / n.max(1) as f64).collect()
    };
    let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let mu = mean(&mut fit.iter().map(|r| f64s(&r.2)));
    let (mut a, mut b) = (vec![vec![0f64; w]; NO_SHAPE], vec![vec![0f64; w]; NO_COLOR]);
    // Alternating least squares of the two-way layout (converges in a few rounds).
    for _ in 0..20 {
        for (s, a_s) in a.iter_mut().enumerate() {
            *a_s = mean(
                &mut fit
                    .iter()
                    .filter(|r| r.1 == s)
                    .map(|r| (0..w).map(|i| r.2[i] as f64 - mu[i] - b[r.0][i]).collect()),
            );
        }
        for (c, b_c) in b.iter_mut().enumerate() {
            *b_c = mean(
                &mut fit
                    .iter()
                    .filter(|r| r.0 == c)
                    .map(|r| (0..w).map(|i| r.2[i] as f64 - mu[i] - a[r.1][i]).collect()),
            );
        }
    }
    let share = |rows: &[(usize, usize, Vec<f32>)]| {
        let (mut res, mut var) = (0f64, 0f64);
        for (c, s, x) in rows {
            for i in 0..w {
                let d = x[i] as f64 - mu[i];
                res += (d - a[*s][i] - b[*c][i]).powi(2);
                var += d * d;
            }
        }
        res / var.max(1e-30)
    };
    (share(fit), share(held))
}

/// The features of every object's shape word (its last token) with the
/// object's colour and shape, from the features `f` of `labels`; with
/// `held_only`, of held-out pairs alone.
fn shape_word_features(
    f: &Features,
    labels: &[Labels],
    held_only: bool,
) -> Result<Vec<(usize, usize, Vec<f32>)>> {
    let [_, ctx, w] = f.xf_out.dims();
    let x = crate::eval::floats(f.xf_out.clone())?;
    let mut out = Vec::new();
    for (i, l) in labels.iter().enumerate() {
        let n = l.tokens.len().min(ctx);
        for p in 0..n {
            let [slot, c, s, _] = l.tokens[p];
            let last_of_object = slot < SLOTS && (p + 1 == n || l.tokens[p + 1][0] != slot);
            if last_of_object && (!held_only || held_out(c, s)) {
                let row = (i * ctx + p) * w;
                out.push((c, s, x[row..row + w].to_vec()));
            }
        }
    }
    Ok(out)
}

/// `n` labelled captions of random scenes of training pairs; with
/// `held_out_only`, only scenes naming at least one held-out pair.
fn captions(
    tok: &GlideTokenizer,
    rng: &mut Rng,
    n: usize,
    held_out_only: bool,
) -> Result<Vec<Labels>> {
    let allow = |c: usize, s: usize| held_out_only || !held_out(c, s);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let scene = Scene::random(rng, &allow);
        if held_out_only && !scene.objects.iter().any(|o| held_out(o.color, o.shape)) {
            continue;
        }
        let caption = scene.caption();
        out.push(labels(&caption, tok).with_context(|| format!("caption '{caption}'"))?);
    }
    Ok(out)
}

/// The auxiliary task inside diffusion training (`--text-aux W`): the heads
/// `text-aux` left in the run keep reading each batch's shapes captions, so
/// the diffusion loss, which does not reward the structure, cannot wear it
/// away from the text transformer.
pub struct InTraining {
    head: Head,
    optim: burn::optim::ModuleOptimizer,
    weight: f32,
}

impl InTraining {
    pub fn load(run: &Path, width: usize, weight: f64, dev: &Device) -> Result<InTraining> {
        let path = head_path(run);
        if !path.exists() {
            bail!(
                "--text-aux: {} holds no heads; run `webglide-train text-aux --run {}` first",
                run.display(),
                run.display()
            );
        }
        Ok(InTraining {
            head: Head::load(&path, dev, width)?,
            optim: adamw(0.0, ADAM_EPS),
            weight: weight as f32,
        })
    }

    /// The weighted loss on the batch's shapes captions (`None` when it has none:
    /// emoji and dropped captions are skipped).
    pub fn loss(
        &self,
        model: &Glide,
        captions: &[String],
        tok: &GlideTokenizer,
        dev: &Device,
    ) -> Option<Tensor<1>> {
        let labels: Vec<Labels> = captions.iter().filter_map(|c| labels(c, tok)).collect();
        if labels.is_empty() {
            return None;
        }
        let batch = Batch::new(&labels, model.config.text_ctx, dev);
        Some(self.head.loss(&features(model, &batch), &batch) * self.weight)
    }

    /// Steps the heads on their gradients (taken out of `grads`).
    pub fn step(&mut self, grads: &mut burn::tensor::Gradients, lr: f64) {
        let g = GradientsParams::from_module(grads, &self.head);
        self.head = self.optim.step(lr, self.head.clone(), g);
    }

    pub fn save(&self, run: &Path) -> Result<()> {
        write_safetensors(&head_path(run), &self.head.export())
    }
}

#[derive(clap::Args)]
pub struct TextAuxArgs {
    /// The base run whose text transformer learns: its model.safetensors (or
    /// ema.safetensors) is read, and both get the new text weights.
    #[arg(long)]
    pub run: PathBuf,
    #[arg(long, default_value_t = 2000)]
    pub steps: u64,
    /// Captions per step.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Weight of the anchor: the relative squared change of the text
    /// features (xf_out and xf_proj) from the run's.
    #[arg(long, default_value_t = 1.0)]
    pub anchor: f64,
    /// Train the heads alone on the frozen transformer (a linear probe of
    /// what it already encodes) and write nothing.
    #[arg(long)]
    pub probe: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Where a run keeps the heads between `text-aux` calls.
pub fn head_path(run: &Path) -> PathBuf {
    run.join("text-aux-head.safetensors")
}

pub fn run(args: &TextAuxArgs) -> Result<()> {
    if args.batch == 0 || args.batch > 4096 || !(args.lr > 0.0 && args.lr < 1.0) {
        bail!("--batch 1..=4096 and 0 < --lr < 1");
    }
    if !(0.0..=1e6).contains(&args.anchor) {
        bail!("--anchor is a weight (0 or more)");
    }
    let run = &args.run;
    let cfg: GlideConfig = serde_json::from_slice(
        &std::fs::read(run.join("config.json")).context("--run DIR: a run folder")?,
    )?;
    let st = State::read(run, "base")?;
    let dev = device("cpu")?.autodiff();
    dev.seed(args.seed);
    let (mut ema, mut live) = read_run_weights(run)?;
    let mut model = Glide::new(&cfg, &Init::From(live.as_ref().unwrap_or(&ema)), &dev)?;
    let before = model.clone();
    let head_file = head_path(run);
    let mut head = if head_file.exists() && !args.probe {
        Head::load(&head_file, &dev, cfg.xf_width)?
    } else {
        Head::new(&Init::Train, &dev, cfg.xf_width)
    };
    let tok = tokenizer()?;
    let ctx = cfg.text_ctx;
    let mut eval_rng = Rng(0xacc);
    let seen = captions(&tok, &mut eval_rng, 512, false)?;
    let unseen = captions(&tok, &mut eval_rng, 512, true)?;
    let (mut optim_text, mut optim_head) = (adamw(0.0, ADAM_EPS), adamw(0.0, ADAM_EPS));
    let mut rng = Rng(args.seed ^ 0x7e47_a0c5);
    let (mut acc_aux, mut acc_anchor, mut n) = (0f64, 0f64, 0usize);
    let mut log_line = String::new();
    for step in 1..=args.steps {
        let batch = Batch::new(&captions(&tok, &mut rng, args.batch, false)?, ctx, &dev);
        let f = features(&model, &batch);
        let aux = head.loss(&f, &batch);
        let old = features(&before, &batch);
        let anchor =
            relative_change(f.xf_out, old.xf_out) + relative_change(f.xf_proj, old.xf_proj);
        acc_aux += aux.clone().into_scalar::<f32>() as f64;
        acc_anchor += anchor.clone().into_scalar::<f32>() as f64;
        n += 1;
        let loss = if args.probe {
            aux
        } else {
            aux + anchor * args.anchor as f32
        };
        let lr = args.lr * (step as f64 / 100.0).min(1.0);
        let mut grads = loss.backward();
        let head_grads = GradientsParams::from_module(&mut grads, &head);
        head = optim_head.step(lr, head, head_grads);
        if !args.probe {
            let text_grads = GradientsParams::from_grads(grads, &model);
            model = optim_text.step(lr, model, text_grads);
        }
        if step % 200 == 0 || step == args.steps {
            // One forward per caption set serves both measures.
            let on_seen = features(&model, &Batch::new(&seen, ctx, &dev));
            let on_unseen = features(&model, &Batch::new(&unseen, ctx, &dev));
            let (fit, held) = additive_residual(
                &shape_word_features(&on_seen, &seen, false)?,
                &shape_word_features(&on_unseen, &unseen, true)?,
            );
            log_line = format!(
                "step {step} aux {:.4} anchor {:.4} | seen: {} | held-out pairs: {} | shape words off colour+shape: seen {fit:.3} held-out {held:.3}",
                acc_aux / n as f64,
                acc_anchor / n as f64,
                accuracy(&head, &on_seen, &seen)?,
                accuracy(&head, &on_unseen, &unseen)?
            );
            eprintln!("{log_line}");
            (acc_aux, acc_anchor, n) = (0.0, 0.0, 0);
        }
    }
    if args.probe {
        return Ok(());
    }
    // The new text weights go into the live model and its EMA alike (an
    // average with the old ones would mix two encodings).
    let trained = model.export();
    for (name, shape, values) in trained.iter().filter(|(n, ..)| text_weight(n)) {
        for map in std::iter::once(&mut ema).chain(live.as_mut()) {
            map.insert(name.clone(), (shape.clone(), values.clone()));
        }
    }
    let in_order = |map: &crate::model::WeightMap| -> Named {
        trained
            .iter()
            .map(|(n, s, _)| (n.clone(), s.clone(), map[n].1.clone()))
            .collect()
    };
    write_run_weights(run, &in_order(&ema), live.as_ref().map(in_order).as_ref())?;
    write_safetensors(&head_file, &head.export())?;
    // Adam's second moments of the text weights were taken on the diffusion
    // gradients alone; against the new weights' larger gradients they made
    // steps of up to ~30× the rate and wrecked the transformer within 20
    // steps (twenty-fifth session). burn keeps no per-parameter reset, so the
    // run resumes with fresh moments, which warm up again.
    let moments = run.join("optim.bpk");
    if moments.exists() {
        std::fs::remove_file(&moments)?;
        eprintln!(
            "removed {}: the run resumes with fresh AdamW moments",
            moments.display()
        );
    }
    let note = format!(
        "# text-aux at step {} steps {} batch {} lr {} anchor {}: {log_line}\n",
        st.step, args.steps, args.batch, args.lr, args.anchor
    );
    let log = run.join("loss.log");
    let mut text = std::fs::read_to_string(&log).unwrap_or_default();
    text.push_str(&note);
    write_atomic(&log, text.as_bytes())?;
    eprintln!("wrote the text weights into {}", run.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_parse_back_into_their_scenes() {
        let mut rng = Rng(5);
        for _ in 0..300 {
            let scene = Scene::random(&mut rng, &|_, _| true);
            let caption = scene.caption();
            let p = parse(&caption).unwrap();
            let objects: Vec<_> = scene.objects.iter().map(|o| (o.color, o.shape)).collect();
            assert_eq!(p.objects, objects, "{caption}");
            assert_eq!(p.relation, scene.relation, "{caption}");
            let words: Vec<&str> = p.words.iter().map(|w| w.0).collect();
            assert_eq!(words.join(" "), caption);
        }
        for bad in [
            "",
            "a red",
            "a red circle above",
            "a red circle near a blue square",
            "an emoji of a cat",
            "a red circle above a blue square and a green star and a red circle",
            "a red circle a blue square",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn every_token_is_labelled_with_its_object() {
        let tok = tokenizer().unwrap();
        let l = labels("a red circle to the left of a blue square", &tok).unwrap();
        assert_eq!(
            l.ids,
            tok.encode("a red circle to the left of a blue square")
        );
        let (red, circle, blue, square) = (0, 0, 4, 1);
        assert_eq!(l.pooled, [red, circle, blue, square, NO_COLOR, NO_SHAPE, 2]);
        // One token per word here: "a red circle" object 0, the relation's
        // four words none, "a blue square" object 1.
        let slots: Vec<usize> = l.tokens.iter().map(|t| t[0]).collect();
        assert_eq!(slots, [0, 0, 0, JOINER, JOINER, JOINER, JOINER, 1, 1, 1]);
        let (left, right) = (2, 3);
        assert_eq!(l.tokens[2], [0, red, circle, left]);
        assert_eq!(l.tokens[8], [1, blue, square, right]);
        assert_eq!(l.tokens[4], [JOINER, NO_COLOR, NO_SHAPE, NO_SIDE]);
        let l = labels("a red circle below a blue square and a red star", &tok).unwrap();
        let sides: Vec<usize> = l.tokens.iter().map(|t| t[3]).collect();
        let (above, below, none) = (0, 1, NO_SIDE);
        assert_eq!(
            sides,
            [below, below, below, none, above, above, above, none, none, none, none]
        );
        let l = labels("a red circle", &tok).unwrap();
        assert!(l.tokens.iter().all(|t| t[3] == NO_SIDE));
    }

    /// A run's heads from before the side group load with their rows kept
    /// and fresh side rows; heads of another width are refused.
    #[test]
    fn heads_without_the_side_group_load_with_fresh_side_rows() {
        let dev = device("cpu").unwrap();
        let dir = std::env::temp_dir().join(format!("webglide-aux-head-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("head.safetensors");
        let width = 8;
        let head = Head::new(&Init::Random(4), &dev, width).export();
        let old: Named = head
            .iter()
            .map(|(n, shape, v)| {
                if !n.starts_with("aux.token") {
                    return (n.clone(), shape.clone(), v.clone());
                }
                let row = v.len() / shape[0];
                let mut s = shape.clone();
                s[0] = TOKEN_WITHOUT_SIDE;
                (n.clone(), s, v[..TOKEN_WITHOUT_SIDE * row].to_vec())
            })
            .collect();
        write_safetensors(&path, &old).unwrap();
        let loaded = Head::load(&path, &dev, width).unwrap().export();
        for ((n, s, v), (_, s_old, v_old)) in loaded.iter().zip(&old) {
            let want: Vec<usize> = match n.as_str() {
                "aux.token.weight" => vec![TOKEN.iter().sum(), width],
                "aux.token.bias" => vec![TOKEN.iter().sum()],
                _ => s_old.clone(),
            };
            assert_eq!(s, &want, "{n}");
            assert_eq!(&v[..v_old.len()], &v_old[..], "{n}");
        }
        assert!(Head::load(&path, &dev, width + 1).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Additive features fit to the noise's share for seen and held-out
    /// pairs alike; features that are a new vector per pair leave the
    /// held-out ones far off.
    #[test]
    fn the_additive_residual_tells_built_from_new_features() {
        let mut rng = Rng(11);
        let mut vec = |scale: f32| {
            (0..16)
                .map(|_| scale * (rng.f32() - 0.5))
                .collect::<Vec<f32>>()
        };
        let shape: Vec<_> = (0..NO_SHAPE).map(|_| vec(2.0)).collect();
        let color: Vec<_> = (0..NO_COLOR).map(|_| vec(2.0)).collect();
        let pair: Vec<Vec<_>> = (0..NO_COLOR)
            .map(|_| (0..NO_SHAPE).map(|_| vec(2.0)).collect())
            .collect();
        let mut rows = |held: bool, entangled: bool| {
            let mut out = Vec::new();
            for c in 0..NO_COLOR {
                for s in 0..NO_SHAPE {
                    if held_out(c, s) != held {
                        continue;
                    }
                    for _ in 0..10 {
                        let noise = vec(0.2);
                        let x = (0..16)
                            .map(|i| {
                                let own = if entangled {
                                    pair[c][s][i]
                                } else {
                                    shape[s][i] + color[c][i]
                                };
                                own + noise[i]
                            })
                            .collect();
                        out.push((c, s, x));
                    }
                }
            }
            out
        };
        let (fit, held) = additive_residual(&rows(false, false), &rows(true, false));
        assert!(fit < 0.05 && held < 0.05, "{fit} {held}");
        let (fit, held) = additive_residual(&rows(false, true), &rows(true, true));
        assert!(held > 0.8 && held > 1.5 * fit, "{fit} {held}");
    }

    /// The heads learn to read the structure on a tiny transformer, the
    /// bound colour of a shape word included, and the anchor holds the
    /// features where they were.
    #[test]
    fn the_heads_learn_to_read_a_caption() {
        let dev = device("cpu").unwrap().autodiff();
        dev.seed(3);
        let mut cfg = crate::train::demo_config("base").unwrap();
        cfg.xf_width = 32;
        cfg.xf_heads = 2;
        cfg.num_channels = 32;
        let model = Glide::new(&cfg, &Init::Train, &dev).unwrap();
        let tok = tokenizer().unwrap();
        let mut head = Head::new(&Init::Train, &dev, cfg.xf_width);
        let mut model_t = model.clone();
        let (mut o1, mut o2) = (adamw(0.0, ADAM_EPS), adamw(0.0, ADAM_EPS));
        let mut rng = Rng(9);
        let test = captions(&tok, &mut Rng(1), 256, false).unwrap();
        let test_batch = Batch::new(&test, cfg.text_ctx, &dev);
        let start = accuracy(&head, &features(&model_t, &test_batch), &test).unwrap();
        for _ in 0..300 {
            let b = Batch::new(
                &captions(&tok, &mut rng, 64, false).unwrap(),
                cfg.text_ctx,
                &dev,
            );
            let loss = head.loss(&features(&model_t, &b), &b);
            let mut grads = loss.backward();
            let hg = GradientsParams::from_module(&mut grads, &head);
            head = o1.step(3e-3, head, hg);
            let tg = GradientsParams::from_grads(grads, &model_t);
            model_t = o2.step(3e-3, model_t, tg);
        }
        let end = accuracy(&head, &features(&model_t, &test_batch), &test).unwrap();
        eprintln!("start {start}\nend {end}");
        assert!(end.slot_color > 0.9 && end.slot_shape > 0.9, "{end}");
        assert!(end.token_slot > 0.95 && end.token_color > 0.9, "{end}");
        assert!(end.token_side > 0.9, "{end}");
        assert!(start.token_color < 0.5, "{start}");
        // The UNet's weights are untouched: only text weights had gradients.
        let (a, b) = (model.export(), model_t.export());
        for ((name, _, va), (_, _, vb)) in a.iter().zip(&b) {
            assert_eq!(
                va == vb,
                !text_weight(name) || name.starts_with("transformer_proj"),
                "{name}"
            );
        }
    }
}
