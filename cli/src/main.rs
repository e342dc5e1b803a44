//! `webglide`: the native command line (desktop and GPU servers).

mod bench;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "webglide",
    version,
    about = "GLIDE / unCLIP text-to-image on your GPU (wgpu)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show the GPU adapter, its optional features and limits.
    Info,
    /// Benchmarks that print numbers.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Each kernel at real GLIDE layer shapes: time, GFLOP/s, GB/s and the ratio
    /// to this adapter's measured f32 matmul peak.
    Kernels {
        /// Timed repetitions per kernel (after one warm-up).
        #[arg(long, default_value_t = 5)]
        iters: u32,
        /// Smaller shapes (a quick smoke run, e.g. on a CPU adapter).
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let gpu = pollster::block_on(engine::Gpu::new(engine::GpuOptions::default()))?;
    match cli.cmd {
        Cmd::Info => print!("{}", gpu.report),
        Cmd::Bench {
            what: BenchWhat::Kernels { iters, quick },
        } => bench::kernels(&gpu, iters.max(1), quick)?,
    }
    Ok(())
}
