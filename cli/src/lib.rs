//! The parts of the `webglide` CLI that read files from anywhere — PyTorch
//! checkpoints and images — as a library, so that the fuzz targets
//! ([`fuzz`], run by `tests/fuzz_short.rs` and by `fuzz/` under libFuzzer)
//! exercise exactly the code the CLI runs.

pub mod fuzz;
pub mod inputs;
pub mod output;
pub mod pickle;
