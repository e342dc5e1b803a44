//! Helpers shared by the CLI integration tests.
#![allow(dead_code)]

pub const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/glide");

/// Runs the built `webglide` binary.
pub fn webglide(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_webglide"))
        .args(args)
        .output()
        .expect("run webglide")
}
