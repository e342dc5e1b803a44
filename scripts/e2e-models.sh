#!/usr/bin/env bash
# Converts the tiny official-architecture GLIDE fixtures (../shared) into a
# q8 model set for the end-to-end tests: OUT/{base,upsample,base-inpaint,upsample-inpaint}.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-e2e/artifacts/models}"
fx="${FIXTURES:-../shared/fixtures/glide}"
rm -rf "$out"
mkdir -p "$out"
for pair in text2im_base:base upsample:upsample inpaint_base:base-inpaint inpaint_upsample:upsample-inpaint; do
    case="${pair%%:*}" kind="${pair##*:}"
    cargo run -q --locked -p webglide-cli -- convert "$fx/$case/weights.safetensors" \
        --config "$fx/$case/config.json" --kind "$kind" --quant q8 --out "$out/$kind"
done
