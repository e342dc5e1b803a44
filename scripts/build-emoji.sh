#!/usr/bin/env bash
# Builds the emoji half of the demo dataset: installs the pinned npm packages
# (trainer/data/package-lock.json: @twemoji/svg 15.0.0, emojibase-data 17.0.0)
# and renders them into the cache (default trainer/data/emoji). Does nothing
# when the cache already matches the package versions.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
out="${1:-trainer/data/emoji}"
(cd trainer/data && { [ -d node_modules ] && [ node_modules -nt package-lock.json ] ||
    { npm ci --no-audit --no-fund --loglevel=error && touch node_modules; }; })
# NO_BUILD=1: target/release/webglide-emoji is already built (scripts/device/pack.sh builds it
# with the trainer's CUDA features; a plain build here would rebuild burn without them).
[ -n "${NO_BUILD:-}" ] || cargo build --release --locked -p webglide-trainer --bin webglide-emoji
./target/release/webglide-emoji --twemoji trainer/data/node_modules/@twemoji/svg \
    --emojibase trainer/data/node_modules/emojibase-data --out "$out"
