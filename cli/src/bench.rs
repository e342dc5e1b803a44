//! `webglide bench kernels`: every kernel family at the real GLIDE layer shapes.

use std::time::Instant;

use anyhow::Result;
use engine::kernels::{self, Act};
use engine::{Gpu, Recorder, Tensor, WeightDType, WeightData};

/// Runs `record` `iters` times in one submission after a warm-up. Returns
/// seconds per run: the GPU time of its compute passes where the adapter has
/// timestamp queries (else the wall-clock time), and the wall-clock time of
/// submission to completion. A large gap between them points at the driver
/// or the submission path rather than the kernel.
fn time(
    gpu: &Gpu,
    iters: u32,
    mut record: impl FnMut(&mut Recorder) -> engine::Result<()>,
) -> Result<(f64, f64)> {
    let mut rec = gpu.recorder();
    record(&mut rec)?;
    rec.submit()?;
    pollster::block_on(gpu.wait_idle())?;
    let start = Instant::now();
    let gpu_secs = pollster::block_on(gpu.gpu_time(|rec| {
        for _ in 0..iters {
            record(rec)?;
        }
        Ok(())
    }))?;
    pollster::block_on(gpu.wait_idle())?;
    let wall = start.elapsed().as_secs_f64() / iters as f64;
    Ok((gpu_secs.map_or(wall, |s| s / iters as f64), wall))
}

fn noise(gpu: &Gpu, shape: &[usize], seed: u64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    Ok(gpu.upload(shape, &engine::rng::randn(n, seed, 0))?)
}

fn weight(gpu: &Gpu, shape: &[usize], dtype: WeightDType) -> Result<engine::Weight> {
    let n: usize = shape.iter().product();
    let w: Vec<f32> = engine::rng::randn(n, 7, 1)
        .iter()
        .map(|x| x * 0.02)
        .collect();
    Ok(gpu.upload_weight(&WeightData::from_f32(shape, &w, dtype)?)?)
}

struct Row {
    name: String,
    shape: String,
    secs: f64,
    wall: f64,
    flops: f64,
    bytes: f64,
}

pub fn kernels(gpu: &Gpu, iters: u32, quick: bool) -> Result<()> {
    print!("{}", gpu.report);
    // Scale spatial sizes down for --quick so a CPU adapter finishes in seconds.
    let s = |full: usize| if quick { (full / 4).max(4) } else { full };
    let mut rows = Vec::new();

    // Peak: a large square f32 matmul.
    let pk = if quick { 512 } else { 2048 };
    let a = noise(gpu, &[pk, pk], 1)?;
    let wpk = weight(gpu, &[pk, pk], WeightDType::F32)?;
    let (secs, _) = time(gpu, iters, |r| {
        kernels::matmul::linear(r, &a, &wpk, None, None, Act::None).map(drop)
    })?;
    let peak = 2.0 * (pk as f64).powi(3) / secs;
    println!(
        "\nmeasured f32 matmul peak ({pk}^3): {:.1} GFLOP/s\n",
        peak / 1e9
    );

    for dtype in [
        WeightDType::F32,
        WeightDType::F16,
        WeightDType::Q8,
        WeightDType::Q4,
    ] {
        // Text transformer MLP: 2 prompts x 128 tokens, 512 -> 2048.
        let x = noise(gpu, &[256, 512], 2)?;
        let w = weight(gpu, &[2048, 512], dtype)?;
        let (secs, wall) = time(gpu, iters, |r| {
            kernels::matmul::linear(r, &x, &w, None, None, Act::Gelu).map(drop)
        })?;
        let wbytes = 2048.0 * dtype.row_words(512) as f64 * 4.0;
        rows.push(Row {
            name: format!("linear {}", dtype.name()),
            shape: "256x512 -> 2048".into(),
            secs,
            wall,
            flops: 2.0 * 256.0 * 512.0 * 2048.0,
            bytes: wbytes + 4.0 * (256.0 * 512.0 + 256.0 * 2048.0),
        });
    }

    for (cin, cout, hw, ks, dtype, fused) in [
        (384, 384, 32, 3, WeightDType::F32, false),
        (384, 384, 32, 3, WeightDType::F32, true),
        (384, 384, 32, 3, WeightDType::Q8, true),
        (192, 192, 64, 3, WeightDType::F16, true),
        (768, 768, 8, 3, WeightDType::Q4, true),
        (576, 384, 32, 1, WeightDType::F32, false),
    ] {
        let (h, n) = (s(hw), 2);
        let x = noise(gpu, &[n, cin, h, h], 3)?;
        let w = weight(gpu, &[cout, cin, ks, ks], dtype)?;
        let bias = gpu.upload(&[cout], &vec![0.1; cout])?;
        let (g, b) = (
            gpu.upload(&[cin], &vec![1.0; cin])?,
            gpu.upload(&[cin], &vec![0.0; cin])?,
        );
        let emb = noise(gpu, &[n, 2 * cin], 4)?;
        let (secs, wall) = time(gpu, iters, |r| {
            let coef = if fused {
                Some(kernels::group_norm::norm_coeffs(
                    r,
                    &x,
                    &g,
                    &b,
                    32,
                    1e-5,
                    Some(&emb),
                )?)
            } else {
                None
            };
            kernels::conv::conv2d(
                r,
                &x,
                &w,
                Some(&bias),
                coef.as_ref().map(|c| kernels::conv::InputNorm {
                    coef: c,
                    silu: true,
                }),
                None,
            )
            .map(drop)
        })?;
        let flops = 2.0 * (n * cout * cin * ks * ks * h * h) as f64;
        let bytes = 4.0 * (n * (cin + cout) * h * h) as f64
            + (cout * dtype.row_words(cin * ks * ks) * 4) as f64;
        let name = format!(
            "conv{ks}x{ks} {}{}",
            dtype.name(),
            if fused { " +GN+SiLU" } else { "" }
        );
        rows.push(Row {
            name,
            shape: format!("2x{cin}x{h}x{h} -> {cout}"),
            secs,
            wall,
            flops,
            bytes,
        });
    }

    // UNet attention at 32x32 (+128 text tokens), 6 heads of 64, CFG batch 2.
    {
        let (t, heads, d, sct, n) = (s(32) * s(32), 6, 64, 128, 2);
        let qkv = noise(gpu, &[n, heads * 3 * d, t], 5)?;
        let ekv = noise(gpu, &[n, heads * 2 * d, sct], 6)?;
        let (secs, wall) = time(gpu, iters, |r| {
            kernels::attention::legacy_qkv(r, &qkv, Some(&ekv), heads).map(drop)
        })?;
        let flops = 4.0 * (n * heads * t * (t + sct) * d) as f64;
        let bytes = 4.0 * (n * heads * d * (4 * t + 2 * sct)) as f64;
        rows.push(Row {
            name: "attention".into(),
            shape: format!("2x{heads}h x {t}q x {}k, d{d}", t + sct),
            secs,
            wall,
            flops,
            bytes,
        });
    }
    // Text transformer self-attention: 128 tokens, 8 heads of 64.
    {
        let qkv = noise(gpu, &[2, 128, 1536], 7)?;
        let (secs, wall) = time(gpu, iters, |r| {
            kernels::attention::per_head_qkv(r, &qkv, 8, false, None).map(drop)
        })?;
        rows.push(Row {
            name: "attention (text)".into(),
            shape: "2x8h x 128 x 128, d64".into(),
            secs,
            wall,
            flops: 4.0 * (2 * 8 * 128 * 128 * 64) as f64,
            bytes: 4.0 * (2 * 128 * 2048) as f64,
        });
    }

    // Memory-bound kernels.
    let hw = s(64);
    let x = noise(gpu, &[2, 192, hw, hw], 8)?;
    let numel = (2 * 192 * hw * hw) as f64;
    let (g, b) = (
        gpu.upload(&[192], &[1.0; 192])?,
        gpu.upload(&[192], &[0.0; 192])?,
    );
    let (secs, wall) = time(gpu, iters, |r| {
        kernels::group_norm::group_norm(r, &x, &g, &b, 32, 1e-5, None, Act::Silu).map(drop)
    })?;
    rows.push(Row {
        name: "group_norm+SiLU".into(),
        shape: format!("2x192x{hw}x{hw}"),
        secs,
        wall,
        flops: 0.0,
        bytes: 4.0 * 3.0 * numel,
    });
    let (secs, wall) = time(gpu, iters, |r| {
        kernels::elementwise::binary(r, &x, &x, kernels::elementwise::BinaryOp::Add, Act::None)
            .map(drop)
    })?;
    rows.push(Row {
        name: "add".into(),
        shape: format!("2x192x{hw}x{hw}"),
        secs,
        wall,
        flops: 0.0,
        bytes: 4.0 * 3.0 * numel,
    });
    let (secs, wall) = time(gpu, iters, |r| {
        kernels::copy::concat_channels(r, &[&x, &x]).map(drop)
    })?;
    rows.push(Row {
        name: "concat".into(),
        shape: format!("2x(192+192)x{hw}x{hw}"),
        secs,
        wall,
        flops: 0.0,
        bytes: 4.0 * 4.0 * numel,
    });
    let (secs, wall) = time(gpu, iters, |r| {
        kernels::resample::nearest2x(r, &x).map(drop)
    })?;
    rows.push(Row {
        name: "nearest2x".into(),
        shape: format!("2x192x{hw}x{hw}"),
        secs,
        wall,
        flops: 0.0,
        bytes: 4.0 * 5.0 * numel,
    });
    let (secs, wall) = time(gpu, iters, |r| kernels::resample::avgpool2(r, &x).map(drop))?;
    rows.push(Row {
        name: "avgpool2".into(),
        shape: format!("2x192x{hw}x{hw}"),
        secs,
        wall,
        flops: 0.0,
        bytes: 4.0 * 1.25 * numel,
    });

    let lo = noise(gpu, &[1, 3, s(64), s(64)], 9)?;
    let up = s(256);
    let (secs, wall) = time(gpu, iters, |r| {
        kernels::resample::bilinear(r, &lo, up, up).map(drop)
    })?;
    rows.push(Row {
        name: "bilinear".into(),
        shape: format!("3x{0}x{0} -> {up}", s(64)),
        secs,
        wall,
        flops: 0.0,
        bytes: 4.0 * 3.0 * (up * up) as f64,
    });
    let (secs, wall) = time(gpu, iters, |r| {
        kernels::resample::bicubic_aa(r, &lo, up, up).map(drop)
    })?;
    rows.push(Row {
        name: "bicubic_aa".into(),
        shape: format!("3x{0}x{0} -> {up}", s(64)),
        secs,
        wall,
        flops: 0.0,
        bytes: 4.0 * 3.0 * (up * up) as f64,
    });

    let img = [1usize, 3, up, up];
    let (secs, wall) = time(gpu, iters, |r| kernels::rng::randn(r, &img, 1, 2).map(drop))?;
    rows.push(Row {
        name: "philox randn".into(),
        shape: format!("{img:?}"),
        secs,
        wall,
        flops: 0.0,
        bytes: 4.0 * (3 * up * up) as f64,
    });
    let mo = noise(gpu, &[2, 6, up, up], 10)?;
    let xt = noise(gpu, &[2, 3, up, up], 11)?;
    let nz = noise(gpu, &[1, 3, up, up], 12)?;
    let (secs, wall) = time(gpu, iters, |r| {
        kernels::sampler::sampler_step(
            r,
            &kernels::sampler::Step {
                model_out: &mo,
                x_t: &xt,
                noise: &nz,
                guidance: Some(3.0),
                ddim: false,
                predict_x0: false,
                learned_variance: true,
                clamp_x0: Some(1.0),
                pin: None,
                grad: None,
                last: false,
                replicate: true,
                coeffs: Default::default(),
            },
        )
        .map(drop)
    })?;
    rows.push(Row {
        name: "guidance+sampler step".into(),
        shape: format!("CFG 2x6x{up}x{up}"),
        secs,
        wall,
        flops: 0.0,
        bytes: 4.0 * (3 * up * up * (12 + 1 + 1 + 4)) as f64,
    });

    println!(
        "timing: {}\n",
        if gpu.report.timestamps {
            "GPU timestamps around the compute passes (ms); wall ms = submission to completion"
        } else {
            "wall clock (no timestamp queries on this adapter)"
        }
    );
    println!(
        "{:<24} {:<28} {:>10} {:>10} {:>9} {:>8} {:>10}",
        "kernel", "shape", "ms", "GFLOP/s", "GB/s", "% peak", "wall ms"
    );
    for r in rows {
        let gflops = r.flops / r.secs / 1e9;
        let pct = if r.flops > 0.0 {
            format!("{:.0}%", 100.0 * r.flops / r.secs / peak)
        } else {
            "-".into()
        };
        let gf = if r.flops > 0.0 {
            format!("{gflops:.1}")
        } else {
            "-".into()
        };
        println!(
            "{:<24} {:<28} {:>10.3} {:>10} {:>9.2} {:>8} {:>10.3}",
            r.name,
            r.shape,
            r.secs * 1e3,
            gf,
            r.bytes / r.secs / 1e9,
            pct,
            r.wall * 1e3
        );
    }
    Ok(())
}

/// The prompt of the benchmarks, "an oil painting of a corgi" (GLIDE BPE).
const CORGI: &[u32] = &[272, 3056, 12036, 286, 257, 1162, 12397];
/// The same prompt as text, for the CLIP tokenizer.
const CORGI_TEXT: &str = "an oil painting of a corgi";

/// The released architecture of `kind` ("full"), the same topology with
/// narrow channels and a small text transformer ("small"), or that with one
/// res block per level and one transformer layer ("tiny": a smoke test of the
/// procedure on a CPU adapter, which computes 1–3 GFLOP/s).
fn sized_config(kind: &str, size: &str) -> Result<engine::glide::model::GlideConfig> {
    let mut c = engine::glide::model::GlideConfig::for_kind(kind)?;
    match size {
        "full" => {}
        "small" | "tiny" => {
            c.num_channels = 32;
            c.num_head_channels = 32;
            c.xf_width = 64;
            c.xf_heads = 2;
            c.xf_layers = 2;
        }
        s => anyhow::bail!("unknown --size '{s}' (full, small, tiny)"),
    }
    if size == "tiny" {
        c.num_res_blocks = 1;
        c.xf_layers = 1;
    }
    Ok(c)
}

/// Random weights for `cfg` as an in-memory safetensors file (norm gains 1,
/// biases 0, other tensors N(0, 1/fan_in)), so the real architecture runs
/// without a checkpoint.
fn random_weights(shapes: &[(String, Vec<usize>)], seed: u64) -> Result<Vec<u8>> {
    synthetic_weights(shapes, Some(seed))
}

/// Zeros in the layout of [`random_weights`]: a dry run allocates the weights
/// but never reads them, and drawing a billion normals takes minutes.
fn placeholder_weights(shapes: &[(String, Vec<usize>)]) -> Result<Vec<u8>> {
    synthetic_weights(shapes, None)
}

fn synthetic_weights(shapes: &[(String, Vec<usize>)], seed: Option<u64>) -> Result<Vec<u8>> {
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, (name, shape)) in shapes.iter().enumerate() {
        let n: usize = shape.iter().product();
        let fan_in = if shape.len() > 1 { n / shape[0] } else { 1 };
        let vals: Vec<f32> = if name.ends_with(".bias") || seed.is_none() {
            vec![0.0; n]
        } else if shape.len() == 1 {
            vec![1.0; n]
        } else {
            let s = 1.0 / (fan_in as f32).sqrt();
            engine::rng::randn(n, seed.unwrap_or(0), i as u32)
                .iter()
                .map(|v| v * s)
                .collect()
        };
        data.push((
            name.clone(),
            shape.clone(),
            vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
    }
    let views = data
        .iter()
        .map(|(n, s, b)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?,
            ))
        })
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()?;
    Ok(safetensors::tensor::serialize(views, None)?)
}

/// `webglide bench pipeline`: the text2im notebook procedure with random
/// weights; prints ms per base / upsampler step, seconds per image and peak GPU memory.
pub fn pipeline(
    gpu: &Gpu,
    size: &str,
    quant: WeightDType,
    steps: usize,
    batch: usize,
    clip_guidance: Option<f32>,
) -> Result<()> {
    use engine::glide::model::Glide;
    use engine::glide::pipeline::{ClipGuidance, DiffusionLoop, Extra, Sampler};
    use engine::glide::weights::WeightSource;
    let (base_cfg, up_cfg) = (sized_config("base", size)?, sized_config("upsample", size)?);
    print!("{}", gpu.report);
    match clip_guidance {
        None => println!("pipeline: {size} GLIDE with random weights, {} storage, batch {batch}, CFG (base batch {})", quant.name(), 2 * batch),
        Some(s) => println!("pipeline: {size} GLIDE with random weights, {} storage, batch {batch}, CLIP guidance {s} (noisy CLIP forward + backward per base step)", quant.name()),
    }
    println!(
        "binding limit {:.0} MiB",
        gpu.max_binding as f64 / 1048576.0
    );
    let clip = match clip_guidance {
        Some(_) => Some(noisy_clip(gpu, size, quant)?),
        None => None,
    };
    let mut results = Vec::new();
    for (what, cfg, full_steps) in [("base", base_cfg, 100usize), ("upsample", up_cfg, 27usize)] {
        let t0 = Instant::now();
        let bytes = if gpu.is_dry_run() {
            placeholder_weights(&cfg.weight_shapes()?)?
        } else {
            random_weights(&cfg.weight_shapes()?, 1)?
        };
        let source = WeightSource::single(&bytes)?;
        let model = Glide::load(gpu, cfg.clone(), &source, quant)?;
        drop(source);
        drop(bytes);
        pollster::block_on(gpu.wait_idle())?;
        let load_s = t0.elapsed().as_secs_f64();
        let (guidance, sampler, extra) = if cfg.super_res {
            let low = gpu.upload(&[batch, 3, 64, 64], &vec![0.0; batch * 3 * 64 * 64])?;
            (
                None,
                Sampler::Ddim,
                Extra {
                    low_res: Some(low),
                    inpaint: None,
                },
            )
        } else if clip_guidance.is_some() {
            (None, Sampler::Ancestral, Extra::default())
        } else {
            (Some(3.0), Sampler::Ancestral, Extra::default())
        };
        let lp = DiffusionLoop::new(
            gpu,
            &model,
            CORGI,
            batch,
            &full_steps.to_string(),
            sampler,
            guidance,
            1,
            1.0,
            extra,
        )?;
        let mut lp = match (&clip, clip_guidance) {
            (Some((image, text_enc)), Some(scale)) if !cfg.super_res => {
                let tok = crate::generate::clip_tokenizer()?;
                let mut rec = gpu.recorder();
                let text = text_enc.encode_prompts(
                    &mut rec,
                    &tok,
                    &vec!["an oil painting of a corgi"; batch],
                )?;
                rec.submit()?;
                lp.with_clip_guidance(ClipGuidance { image, text, scale })?
            }
            _ => lp,
        };
        lp.step(gpu)?; // warm-up: pipelines compile, buffers settle
        pollster::block_on(gpu.wait_idle())?;
        let t = Instant::now();
        let flops0 = gpu.flops_recorded();
        let n = steps.min(full_steps - 1).max(1);
        for _ in 0..n {
            lp.step(gpu)?;
        }
        pollster::block_on(gpu.wait_idle())?;
        let ms = t.elapsed().as_secs_f64() * 1e3 / n as f64;
        let gflop = (gpu.flops_recorded() - flops0) as f64 / n as f64 / 1e9;
        println!(
            "{what:<9} load {load_s:6.1} s   {ms:9.1} ms/step ({n} timed steps)   x{full_steps} steps = {:.2} s   {gflop:.1} GFLOP/step (conv, matmul, attention) = {:.1} GFLOP/s",
            ms * full_steps as f64 / 1e3,
            gflop / ms * 1e3
        );
        results.push(ms * full_steps as f64 / 1e3);
        // Free this stage's weights and activations before the next one.
        drop(lp);
        drop(model);
        gpu.trim_memory();
    }
    let stats = gpu.memory_stats();
    println!(
        "seconds per image (base + upsampler): {:.2} s",
        results.iter().sum::<f64>()
    );
    println!(
        "peak GPU memory held by the engine: {:.0} MiB (tensors alive at most {:.0} MiB); largest buffer {:.1} MiB",
        stats.peak_bytes as f64 / 1048576.0,
        stats.peak_in_use as f64 / 1048576.0,
        stats.largest_buffer as f64 / 1048576.0
    );
    Ok(())
}

/// A noisy CLIP with random weights: the released encoders ("full") or a
/// narrow one of the same topology ("small").
fn noisy_clip(
    gpu: &Gpu,
    size: &str,
    quant: WeightDType,
) -> Result<(
    engine::glide::clip::ImageEncoder,
    engine::glide::clip::TextEncoder,
)> {
    use engine::glide::clip::{ImageEncoder, NoisyClipConfig, TextEncoder};
    use engine::glide::weights::{Loader, WeightSource};
    let mut cfg = NoisyClipConfig::released();
    if size != "full" {
        (cfg.n_head_text, cfg.n_head_image, cfg.n_embd) = (2, 2, 64);
        (cfg.n_head_state_text, cfg.n_head_state_image) = (32, 32);
    }
    let weights = |kind: &str| -> Result<Vec<u8>> {
        let shapes = cfg.weight_shapes(kind)?;
        if gpu.is_dry_run() {
            placeholder_weights(&shapes)
        } else {
            random_weights(&shapes, 2)
        }
    };
    let bytes = weights("clip-image-enc")?;
    let src = WeightSource::single(&bytes)?;
    let l = Loader::new(gpu, &src, quant)?;
    let image = ImageEncoder::load(cfg.clone(), &l)?;
    l.finish()?;
    let bytes = weights("clip-text-enc")?;
    let src = WeightSource::single(&bytes)?;
    let l = Loader::new(gpu, &src, quant)?;
    let text = TextEncoder::load(cfg, &l)?;
    l.finish()?;
    Ok((image, text))
}

/// unCLIP's configurations at `size`: the released ones, or narrow ones of
/// the same topology (`small`).
fn unclip_config(kind: &str, size: &str) -> Result<engine::unclip::weights::UnclipConfig> {
    use engine::unclip::weights::UnclipConfig as C;
    let c = C::released(kind)?;
    Ok(match (size, c) {
        ("full", c) => c,
        ("small", C::ClipText(mut t)) => {
            (
                t.embed_dim,
                t.transformer_width,
                t.transformer_heads,
                t.transformer_layers,
            ) = (64, 64, 2, 2);
            C::ClipText(t)
        }
        ("small", C::Prior(mut p)) => {
            (p.xf_width, p.xf_layers, p.xf_heads, p.clip_dim) = (128, 2, 2, 64);
            C::Prior(p)
        }
        (
            "small",
            C::Decoder {
                mut module,
                image_size,
            },
        ) => {
            module.model_channels = 32;
            module.num_head_channels = 32;
            module.xf_width = 64;
            module.clip_dim = 64;
            C::Decoder { module, image_size }
        }
        (
            "small",
            C::Sr {
                mut first_steps,
                mut last_step,
                image_size,
            },
        ) => {
            first_steps.model_channels = 32;
            last_step.model_channels = 32;
            C::Sr {
                first_steps,
                last_step,
                image_size,
            }
        }
        (s, _) => anyhow::bail!("unknown --size '{s}' (full, small)"),
    })
}

/// `webglide bench pipeline --pipeline unclip`: Karlo's t2i procedure with
/// random weights, one network resident at a time (loaded, run, freed): load
/// time, ms per step (one warm-up step, then `steps` timed ones; the
/// per-step cost does not depend on the respacing, so each stage runs
/// `steps + 1` respaced steps and the table scales to Karlo's counts),
/// seconds per image, peak GPU memory and the largest buffer.
pub fn unclip_pipeline(
    gpu: &Gpu,
    size: &str,
    quant: WeightDType,
    steps: usize,
    batch: usize,
    decoder_steps: usize,
) -> Result<()> {
    use engine::glide::weights::WeightSource;
    use engine::unclip::pipeline::{Draws, Network, UnclipParams, UnclipRun};
    use engine::unclip::weights::{load_net, UnclipNet};
    print!("{}", gpu.report);
    if gpu.is_dry_run() {
        println!("DRY RUN: buffers allocated, nothing computed (memory plan only; times are meaningless)");
    }
    println!(
        "pipeline: {size} unCLIP (Karlo) with random weights, {} storage, batch {batch} (CFG batch {}), bindings capped at {} MiB",
        quant.name(),
        2 * batch,
        gpu.max_binding >> 20
    );
    let load = |kind: &str, only: Option<Network>| -> Result<(UnclipNet, f64)> {
        let t0 = Instant::now();
        let cfg = unclip_config(kind, size)?;
        let bytes = if gpu.is_dry_run() {
            placeholder_weights(&cfg.weight_shapes()?)?
        } else {
            random_weights(&cfg.weight_shapes()?, 1)?
        };
        let source = WeightSource::single(&bytes)?;
        let net = load_net(gpu, &cfg, &source, quant, only)?;
        pollster::block_on(gpu.wait_idle())?;
        Ok((net, t0.elapsed().as_secs_f64()))
    };
    let per = (steps + 1).to_string();
    let params = UnclipParams {
        prior_steps: per.clone(),
        decoder_steps: per,
        // The first-steps SR network gets a warm-up and `steps` timed steps too.
        sr_steps: (steps + 2).to_string(),
        ..UnclipParams::default()
    };
    let tok = crate::generate::clip_tokenizer()?;
    let mut total = 0.0;
    let (clip, load_s) = load("clip-text", None)?;
    let UnclipNet::ClipText(clip) = clip else {
        unreachable!("clip-text")
    };
    let t = Instant::now();
    let prompts = vec![CORGI_TEXT; batch];
    let mut run = UnclipRun::text_to_image(gpu, &clip, &tok, &prompts, params, Draws::Seed(1))?;
    pollster::block_on(gpu.wait_idle())?;
    let encode_s = t.elapsed().as_secs_f64();
    total += encode_s;
    println!(
        "{:<9} load {load_s:6.1} s   encode {:9.1} ms",
        "clip-text",
        encode_s * 1e3
    );
    drop(clip);
    gpu.trim_memory();
    while let Some(network) = run.network() {
        let (net, load_s) = load(network.kind(), Some(network))?;
        let stages = net.stages().expect("a sampling stage");
        // Warm-up: pipelines compile, buffers settle.
        let (t, warm_flops) = (Instant::now(), gpu.flops_recorded());
        run.step(gpu, &stages)?;
        pollster::block_on(gpu.wait_idle())?;
        let warm_ms = t.elapsed().as_secs_f64() * 1e3;
        let (t, flops0) = (Instant::now(), gpu.flops_recorded());
        let mut n = 0;
        while run.network() == Some(network) {
            run.step(gpu, &stages)?;
            n += 1;
        }
        pollster::block_on(gpu.wait_idle())?;
        let ms = if n > 0 {
            t.elapsed().as_secs_f64() * 1e3 / n as f64
        } else {
            warm_ms
        };
        // A network with one step (Karlo's last SR step) has only the warm-up.
        let gflop = if n > 0 {
            (gpu.flops_recorded() - flops0) as f64 / n as f64 / 1e9
        } else {
            (flops0 - warm_flops) as f64 / 1e9
        };
        let karlo = match network {
            Network::Prior => 25,
            Network::Decoder => decoder_steps,
            Network::SrFirstSteps => 6,
            Network::SrLastStep => 1,
        };
        println!(
            "{:<9} load {load_s:6.1} s   {ms:9.1} ms/step ({n} timed, warm-up {warm_ms:.0} ms)   x{karlo} steps = {:.2} s   {gflop:.1} GFLOP/step = {:.1} GFLOP/s",
            network.name(),
            ms * karlo as f64 / 1e3,
            gflop / ms * 1e3
        );
        total += ms * karlo as f64 / 1e3;
        drop(net);
        gpu.trim_memory();
        let stats = gpu.memory_stats();
        println!(
            "{:<9} peak so far {:.0} MiB (tensors alive at most {:.0} MiB), largest buffer so far {:.1} MiB",
            "",
            stats.peak_bytes as f64 / 1048576.0,
            stats.peak_in_use as f64 / 1048576.0,
            stats.largest_buffer as f64 / 1048576.0
        );
    }
    let stats = gpu.memory_stats();
    println!("seconds per image (clip + prior 25 + decoder {decoder_steps} + SR 7): {total:.2} s");
    println!(
        "peak GPU memory held by the engine: {:.0} MiB (tensors alive at most {:.0} MiB); largest buffer {:.1} MiB",
        stats.peak_bytes as f64 / 1048576.0,
        stats.peak_in_use as f64 / 1048576.0,
        stats.largest_buffer as f64 / 1048576.0
    );
    Ok(())
}

/// `webglide bench quant`: the error of each storage type against f32 on
/// random weights of the released architecture (the same generator as
/// `bench pipeline`). Per layer: the relative RMS error of every quantised
/// weight; end to end: one forward pass (text encoder + UNet at t = 500) with
/// the intermediates of the fixture table, max error relative to the f32
/// tensor's max magnitude. `res` runs the UNet at another image size (it is
/// convolutional) to bound the time on slow adapters.
pub fn quant(
    gpu: &Gpu,
    kind: &str,
    size: &str,
    res: Option<usize>,
    dtypes: &[WeightDType],
    seed: u64,
) -> Result<()> {
    use engine::glide::model::{quantizable, Capture, Conditioning, Glide};
    use engine::glide::weights::WeightSource;
    let cfg = sized_config(kind, size)?;
    let res = res.unwrap_or(cfg.image_size);
    let div = 1usize << (cfg.channel_mult()?.len() - 1);
    if res == 0
        || !res.is_multiple_of(div)
        || res > 1024
        || (cfg.super_res && !res.is_multiple_of(4))
    {
        anyhow::bail!("--res {res}: a multiple of {div} (and of 4 for upsamplers), at most 1024");
    }
    print!("{}", gpu.report);
    println!(
        "quantisation error: {size} {kind} with random weights (seed {seed}), forward at {res} px, batch 1, t = 500\n"
    );
    let bytes = random_weights(&cfg.weight_shapes()?, seed)?;

    // Per layer.
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let mut per_layer: Vec<Vec<(f64, String)>> = vec![Vec::new(); dtypes.len()];
    for (name, view) in st.tensors() {
        if !quantizable(&name, view.shape()) {
            continue;
        }
        let w = engine::glide::weights::to_f32(&name, &view)?;
        let norm = w.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        for (d, &dtype) in dtypes.iter().enumerate() {
            let q = WeightData::from_f32(view.shape(), &w, dtype)?.to_f32();
            let err = q
                .iter()
                .zip(&w)
                .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            per_layer[d].push((err / norm.max(1e-30), name.clone()));
        }
    }
    println!("per layer: relative RMS error of each quantised weight (||Q(w) - w|| / ||w||)");
    println!(
        "{:<6} {:>7} {:>10} {:>10} {:>10}  worst layer",
        "type", "layers", "median", "mean", "max"
    );
    for (d, &dtype) in dtypes.iter().enumerate() {
        let v = &mut per_layer[d];
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        let Some(worst) = v.last() else { continue };
        let mean = v.iter().map(|e| e.0).sum::<f64>() / v.len() as f64;
        println!(
            "{:<6} {:>7} {:>10.2e} {:>10.2e} {:>10.2e}  {}",
            dtype.name(),
            v.len(),
            v[v.len() / 2].0,
            mean,
            worst.0,
            worst.1
        );
    }

    // End to end: the same inputs through the model stored as each type.
    let source = WeightSource::single(&bytes)?;
    let n_in = 3 * res * res;
    let x = engine::rng::randn(n_in, seed, 100);
    let low = cfg
        .super_res
        .then(|| engine::rng::randn(n_in / 16, seed, 101));
    let image = engine::rng::randn(n_in, seed, 102);
    let keep: Vec<f32> = (0..res * res)
        .map(|i| ((i % res) < res / 2) as u32 as f32)
        .collect();
    let (tok, mask) = engine::glide::tokenizer::pad_tokens(CORGI, cfg.text_ctx);
    let run = |dtype: WeightDType| -> Result<Vec<(String, Vec<f32>)>> {
        let t0 = Instant::now();
        let model = Glide::load(gpu, cfg.clone(), &source, dtype)?;
        let xt = gpu.upload(&[1, 3, res, res], &x)?;
        let tt = gpu.upload(&[1], &[500.0])?;
        let tokens = gpu.upload_u32(&[1, cfg.text_ctx], &tok)?;
        let mask_t = gpu.upload_u32(&[1, cfg.text_ctx], &mask)?;
        let low_t = match &low {
            Some(l) => Some(gpu.upload(&[1, 3, res / 4, res / 4], l)?),
            None => None,
        };
        let inp = if cfg.inpaint {
            Some((
                gpu.upload(&[1, 3, res, res], &image)?,
                gpu.upload(&[1, 1, res, res], &keep)?,
            ))
        } else {
            None
        };
        let mut cap: Capture = Vec::new();
        let mut rec = gpu.recorder();
        let text = model.encode_text(&mut rec, &tokens, &mask_t, Some(&mut cap))?;
        let cond = Conditioning {
            low_res: low_t.as_ref(),
            inpaint: inp.as_ref().map(|(a, b)| (a, b)),
        };
        let out = model.forward(&mut rec, &xt, &tt, &text, cond, Some(&mut cap))?;
        rec.submit()?;
        cap.push(("output".into(), out));
        let mut host = Vec::new();
        for (name, t) in &cap {
            host.push((name.clone(), pollster::block_on(gpu.read(t))?));
        }
        eprintln!(
            "{}: forward done in {:.1} s",
            dtype.name(),
            t0.elapsed().as_secs_f64()
        );
        drop(cap);
        drop(model);
        gpu.trim_memory();
        Ok(host)
    };
    let reference = run(WeightDType::F32)?;
    let mut errs: Vec<Vec<f64>> = Vec::new();
    for &dtype in dtypes {
        let got = run(dtype)?;
        errs.push(
            reference
                .iter()
                .zip(&got)
                .map(|((_, want), (_, g))| engine::glide::check::max_error(g, want).1)
                .collect(),
        );
    }
    // The rows of the fixture table: text features, emb, one block per
    // stage, the output, and the worst over every intermediate.
    let names: Vec<&str> = reference.iter().map(|(n, _)| n.as_str()).collect();
    let count = |p: &str| names.iter().filter(|n| n.starts_with(p)).count();
    let (ins, outs) = (count("input_blocks."), count("output_blocks."));
    let rows = [
        "xf_final_ln_out".to_string(),
        "emb".to_string(),
        format!("input_blocks.{}", ins / 2),
        format!("input_blocks.{}", ins.saturating_sub(1)),
        "middle_block".to_string(),
        format!("output_blocks.{}", outs / 2),
        format!("output_blocks.{}", outs.saturating_sub(1)),
        "output".to_string(),
    ];
    println!("\nend to end: max |Q - f32| / max |f32| per tensor");
    print!("{:<22}", "tensor");
    for d in dtypes {
        print!(" {:>10}", d.name());
    }
    println!();
    for row in &rows {
        let Some(i) = names.iter().position(|n| n == row) else {
            continue;
        };
        print!("{row:<22}");
        for e in &errs {
            print!(" {:>10.2e}", e[i]);
        }
        println!();
    }
    print!("{:<22}", "worst intermediate");
    for e in &errs {
        print!(" {:>10.2e}", e.iter().fold(0f64, |m, v| m.max(*v)));
    }
    println!();
    Ok(())
}
