#!/usr/bin/env bash
# Sets everything up (idempotent) and serves the web app on http://127.0.0.1:8080
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$PWD/tools/node_modules/.bin:$HOME/.cargo/bin:$PATH"
cargo fetch --locked
exec trunk serve --release --offline --skip-version-check "$@"
