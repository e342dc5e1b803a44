#!/usr/bin/env bash
# Runs every check: formatting, clippy, native tests (wgpu on Vulkan: lavapipe
# when there is no GPU), the kernel tests in headless Chromium (WebGPU on
# SwiftShader), and the end-to-end tests of the built app. The trainer (burn:
# 165 crates of its own, a training backend the app does not ship) has its own
# script, scripts/test-trainer.sh, kept out of this path and so out of CI's time.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$PWD/tools/node_modules/.bin:$HOME/.cargo/bin:$PATH"
# lavapipe complains on stderr without a runtime dir.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy (native and wasm32)"
cargo clippy --workspace --exclude webglide-trainer --all-targets --locked -- -D warnings
cargo clippy -p webglide-app -p webglide-engine --target wasm32-unknown-unknown --locked -- -D warnings
step "native tests"
cargo test --workspace --exclude webglide-trainer --locked
step "kernel tests in headless Chromium (WebGPU)"
CHROMEDRIVER=/usr/bin/chromedriver WASM_BINDGEN_TEST_TIMEOUT=600 \
    CARGO_PROFILE_DEV_DEBUG=0 CARGO_PROFILE_TEST_DEBUG=0 \
    cargo test -p webglide-engine --target wasm32-unknown-unknown --locked
step "web app build + end-to-end tests"
trunk build --release --offline --skip-version-check
./scripts/e2e-models.sh e2e/artifacts/models
node e2e/e2e.js dist e2e/artifacts/models
