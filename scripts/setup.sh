#!/usr/bin/env bash
# Installs everything webglide needs on Debian 12, idempotently: Vulkan on the
# CPU (lavapipe) for native tests, Chromium + chromedriver for browser tests,
# the wasm32 target, trunk + wasm-bindgen-cli (from crates.io) and npm's
# binaryen (wasm-opt) + playwright-core. Downloads only from the package
# registries and rustup's target server. Versions: ../shared/docs/toolchain.md.
set -euo pipefail
cd "$(dirname "$0")/.."

TRUNK_VERSION=0.21.14
WASM_BINDGEN_VERSION=0.2.130   # must equal the wasm-bindgen crate in Cargo.lock

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need_pkgs=()
for p in mesa-vulkan-drivers libvulkan1 chromium chromium-driver; do
    dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
command -v node >/dev/null 2>&1 || need_pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || need_pkgs+=(npm)
command -v cc >/dev/null 2>&1 || need_pkgs+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_pkgs+=(pkg-config)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "apt-get install ${need_pkgs[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need_pkgs[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install the Rust toolchain with rustup (https://rustup.rs), then rerun." >&2
    exit 1
fi
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -q wasm32-unknown-unknown; then
    log "rustup target add wasm32-unknown-unknown"
    rustup target add wasm32-unknown-unknown
fi

if [ "$(trunk --version 2>/dev/null)" != "trunk $TRUNK_VERSION" ]; then
    # Trunk's release profile asks for fat LTO and one codegen unit: minutes of
    # build for no difference a dev tool would notice.
    log "cargo install trunk $TRUNK_VERSION (about 10 minutes on 2 cores)"
    CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
        cargo install trunk --version "$TRUNK_VERSION" --locked
fi
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $WASM_BINDGEN_VERSION" ]; then
    # No --locked: its lock pins a webpki-roots the registry no longer serves.
    log "cargo install wasm-bindgen-cli $WASM_BINDGEN_VERSION (about 9 minutes)"
    cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
fi

for dir in tools e2e; do
    if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
        log "npm ci in $dir/"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error && touch node_modules)
    fi
done
log "ok"
