#!/usr/bin/env bash
# The trainer's checks (clippy and its tests: burn's modules against the engine
# and the official fixture, the losses, the datasets, the eval). Not part of
# scripts/test.sh: burn is heavy optional tooling that the app does not ship.
# Run it after changing trainer/ (or the engine, which the trainer uses).
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
cargo fmt --all -- --check
cargo clippy -p webglide-trainer --all-targets --locked -- -D warnings
cargo test -p webglide-trainer --locked
