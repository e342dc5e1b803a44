//! `webglide-train`: trains the embedded demo model — small configurations
//! of the GLIDE architectures — with burn, and exports safetensors with the
//! official key names plus `config.json`, which `webglide convert` turns into
//! the app's quantised shards.
//!
//! Loss: GLIDE's hybrid objective (improved DDPM): MSE on eps plus the
//! variational bound on the learned variance (mean detached). Classifier-free
//! guidance is learned by dropping the caption; the inpainting model gets
//! random masks. EMA weights, checkpoints with optimizer state, and resume.

use clap::Parser;
use webglide_trainer::train::{self, Args};

fn main() {
    let args = Args::parse();
    if let Err(e) = train::run(&args) {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
