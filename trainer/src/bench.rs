//! `webglide-train bench`: how fast a training step runs on this machine, and
//! where its time goes, against the backend's own matrix-multiply rate.

use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{bail, Result};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Tensor};
use engine::demo::shapes::Rng;
use engine::glide::schedule::Schedule;

use crate::model::{Glide, Init, FORWARD_FLOPS};
use crate::train::{self, Data};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// base, upsample or base-inpaint.
    #[arg(long, default_value = "base")]
    pub kind: String,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Training image side (base kinds: a curriculum size such as 32; upsampler: the crop).
    #[arg(long)]
    pub size: Option<usize>,
    /// Timed steps after one warm-up step.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// burn (burn's conv2d, the trainer's default) or gemm (im2col + matmul).
    #[arg(long, default_value = "burn")]
    pub conv: String,
    /// cpu (flex), tch (LibTorch on the CPU; the `tch` feature), gpu (wgpu) or cuda (the `cuda`
    /// feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// reuse (the trainer's allocator keeps freed large blocks) or system.
    #[arg(long, default_value = "reuse")]
    pub alloc: String,
}

/// Seconds of the fastest of `n` runs of `f`.
fn best_of(n: usize, mut f: impl FnMut()) -> f64 {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// GFLOP/s of one large f32 matrix product through the training backend.
pub fn matmul_rate(dev: &Device) -> f64 {
    let n = 1536;
    let a = Tensor::<2>::random([n, n], Distribution::Normal(0.0, 1.0), dev);
    let b = Tensor::<2>::random([n, n], Distribution::Normal(0.0, 1.0), dev);
    let secs = best_of(4, || {
        let c = a.clone().matmul(b.clone());
        let _ = c.slice([0..1, 0..1]).into_scalar::<f32>();
    });
    2.0 * (n as f64).powi(3) / secs / 1e9
}

pub fn run(args: &BenchArgs) -> Result<()> {
    crate::model::set_conv(&args.conv)?;
    match args.alloc.as_str() {
        "reuse" | "system" => crate::ALLOCATOR
            .enabled
            .store(args.alloc == "reuse", Ordering::Relaxed),
        a => bail!("--alloc {a}: reuse or system"),
    }
    if args.batch == 0 || args.batch > 256 || args.steps == 0 || args.steps > 100 {
        bail!("--batch 1..=256 and --steps 1..=100");
    }
    let plain = train::device(&args.device)?;
    let dev = plain.clone().autodiff();
    let cfg = train::demo_config(&args.kind)?;
    // --size is the training image side: the crop for the upsampler.
    let data = if cfg.super_res {
        Data {
            crop: args.size,
            ..Data::shapes()
        }
    } else {
        Data {
            size: args.size,
            ..Data::shapes()
        }
    };
    let tok = train::tokenizer()?;
    let sched = Schedule::new(
        &cfg.noise_schedule,
        cfg.diffusion_steps,
        &cfg.diffusion_steps.to_string(),
    )?;
    let rate = matmul_rate(&plain);
    println!(
        "{} matmul (f32 1536^3 through burn): {rate:.1} GFLOP/s",
        args.device
    );

    let model = Glide::new(&cfg, &Init::Train, &dev)?;
    let frozen = model.clone().no_grad();
    let mut optim = crate::train::adamw(0.0, crate::train::ADAM_EPS);
    let mut rng = Rng(1);
    let b = args.batch;
    let (mut data_s, mut fwd_s, mut full_bwd_s, mut input_bwd_s, mut opt_s) =
        (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut step_flops = 0u64;
    let mut size = 0;
    let mut model = model;
    for i in 0..=args.steps {
        let t0 = Instant::now();
        let batch = train::make_batch(&cfg, &tok, &data, &mut rng, b, 0.2)?;
        let t: Vec<usize> = (0..b).map(|_| rng.below(cfg.diffusion_steps)).collect();
        let s = batch.size;
        size = s;
        let noise = || Tensor::<4>::random([b, 3, s, s], Distribution::Normal(0.0, 1.0), &dev);
        let plain = train::EpsWeighting::default();
        let t1 = Instant::now();
        FORWARD_FLOPS.store(0, Ordering::Relaxed);
        let (total, ..) = train::loss(&model, &sched, &batch, &t, noise(), &dev, plain);
        let _ = total.clone().into_scalar::<f32>();
        step_flops = FORWARD_FLOPS.load(Ordering::Relaxed);
        let t2 = Instant::now();
        let grads = GradientsParams::from_grads(total.backward(), &model);
        let t3 = Instant::now();
        model = optim.step(1e-4, model, grads);
        let t4 = Instant::now();
        // The input gradients alone: frozen weights, gradient wrt the noise.
        let n = noise().require_grad();
        let (total, ..) = train::loss(&frozen, &sched, &batch, &t, n.clone(), &dev, plain);
        let t5 = Instant::now();
        let g = total.backward();
        let _ = n.grad(&g).map(|g| g.sum().into_scalar::<f32>());
        let t6 = Instant::now();
        if i > 0 {
            data_s += (t1 - t0).as_secs_f64();
            fwd_s += (t2 - t1).as_secs_f64();
            full_bwd_s += (t3 - t2).as_secs_f64();
            opt_s += (t4 - t3).as_secs_f64();
            input_bwd_s += (t6 - t5).as_secs_f64();
        }
    }
    let n = args.steps as f64;
    let (data_s, fwd_s, full_bwd_s, input_bwd_s, opt_s) = (
        data_s / n,
        fwd_s / n,
        full_bwd_s / n,
        input_bwd_s / n,
        opt_s / n,
    );
    let weight_bwd_s = (full_bwd_s - input_bwd_s).max(0.0);
    let step_s = data_s + fwd_s + full_bwd_s + opt_s;
    // Forward, input gradient and weight gradient are one product of the same size each.
    let train_gflop = 3.0 * step_flops as f64 / 1e9;
    let ms = |s: f64| format!("{:.0} ms ({:.0} %)", s * 1e3, 100.0 * s / step_s);
    println!(
        "{} batch {b} at {size} px, conv {}, alloc {}: {:.2} GFLOP forward, {train_gflop:.2} GFLOP per training step (3x forward)",
        args.kind,
        args.conv,
        args.alloc,
        step_flops as f64 / 1e9
    );
    println!("  data             {}", ms(data_s));
    println!("  forward          {}", ms(fwd_s));
    println!("  input gradient   {}", ms(input_bwd_s));
    println!("  weight gradient  {}", ms(weight_bwd_s));
    println!("  optimizer        {}", ms(opt_s));
    println!(
        "  step {:.0} ms: {:.2} samples/s, {:.1} GFLOP/s = {:.0} % of the matmul rate",
        step_s * 1e3,
        b as f64 / step_s,
        train_gflop / step_s,
        100.0 * train_gflop / step_s / rate
    );
    Ok(())
}
