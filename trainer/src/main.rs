//! `webglide-train`: trains the embedded demo model — small configurations
//! of the GLIDE architectures — with burn, and exports safetensors with the
//! official key names plus `config.json`, which `webglide convert` turns into
//! the app's quantised shards. `webglide-train bench` measures a training step.
//!
//! Loss: GLIDE's hybrid objective (improved DDPM): MSE on eps plus the
//! variational bound on the learned variance (mean detached). Classifier-free
//! guidance is learned by dropping the caption; the inpainting model gets
//! random masks. EMA weights, checkpoints with optimizer state, and resume.

use clap::Parser;
use webglide_trainer::bench::{self, BenchArgs};
use webglide_trainer::checkpoint::{self, CheckpointArgs};
use webglide_trainer::eval::{self, EvalArgs};
use webglide_trainer::text_aux::{self, TextAuxArgs};
use webglide_trainer::train::{self, Args};

#[derive(Parser)]
#[command(
    name = "webglide-train",
    about = "Train the webglide demo model",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: Args,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Time one training step (data, forward, gradients, optimizer) against the matmul rate.
    Bench(BenchArgs),
    /// The shapes evaluation of `webglide eval shapes`, sampled on the CPU through burn.
    Eval(Box<EvalArgs>),
    /// A run's EMA weights as the committed checkpoint: int8 with per-row
    /// scales (or f16), the embedding rows of tokens no training caption uses zeroed.
    Checkpoint(CheckpointArgs),
    /// Teach a base run's text transformer its captions' structure (which
    /// object has which colour and shape, the relation) on text alone,
    /// through throwaway heads; the run's weights keep GLIDE's names.
    TextAux(TextAuxArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Bench(b)) => bench::run(b),
        Some(Command::Eval(e)) => eval::run(e),
        Some(Command::Checkpoint(c)) => checkpoint::run(c),
        Some(Command::TextAux(t)) => text_aux::run(t),
        None => train::run(&cli.train),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
