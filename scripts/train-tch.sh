#!/usr/bin/env bash
# Opt-in, never in the test path: the trainer on burn's LibTorch backend (`--device tch`,
# PyTorch's CPU kernels; docs/demo-model.md, "CPU training speed"). Installs PyTorch 2.9.0 (the
# version tch 0.22 links; PyPI's wheel brings its CUDA libraries along, ~4.8 GB in all) in .torch/
# once, builds the trainer with `--features tch` into target/tch/ (its own folder: the default
# build must not link libtorch), and runs it with the arguments given:
#   ./scripts/train-tch.sh bench --kind base --batch 32 --size 32 --device tch
#   nice -n 10 ./scripts/train-tch.sh --kind base --out target/demo-train/base --device tch ...
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
venv=.torch
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install torch==2.9.0 >&2
fi
LIBTORCH=$("$venv/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')
export LIBTORCH
CARGO_TARGET_DIR=target/tch cargo build --release --locked -p webglide-trainer --features tch >&2
export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec target/tch/release/webglide-train "$@"
