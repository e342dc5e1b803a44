#!/usr/bin/env bash
# Converts the tiny official-architecture fixtures (../shared) into a model set
# for the end-to-end tests, the way real models are converted:
# OUT/{base,upsample,base-inpaint,upsample-inpaint} (GLIDE, q8), the noisy CLIP
# OUT/{clip-image-enc,clip-text-enc} (f16) and
# OUT/unclip/{clip-text,clip-visual,prior,decoder,sr} (Karlo; the decoder from its .ckpt).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-e2e/artifacts/models}"
fx="${FIXTURES:-../shared/fixtures/glide}"
ux="${UNCLIP_FIXTURES:-../shared/fixtures/unclip}"
rm -rf "$out"
mkdir -p "$out"
for pair in text2im_base:base upsample:upsample inpaint_base:base-inpaint inpaint_upsample:upsample-inpaint; do
    case="${pair%%:*}" kind="${pair##*:}"
    cargo run -q --locked -p webglide-cli -- convert "$fx/$case/weights.safetensors" \
        --config "$fx/$case/config.json" --kind "$kind" --quant q8 --out "$out/$kind"
done
convert() { cargo run -q --locked -p webglide-cli -- convert "$@"; }
for k in image text; do
    convert "$fx/clip/${k}_enc.safetensors" --config "$fx/clip/config.json" --kind "clip-$k-enc" --quant f16 --out "$out/clip-$k-enc"
done
convert "$ux/clip_text/weights.safetensors" --config "$ux/clip_text/config.json" --kind clip-text --quant q8 --out "$out/unclip/clip-text"
convert "$ux/clip_text/weights.safetensors" --config "$ux/clip_text/config.json" --kind clip-visual --quant q8 --out "$out/unclip/clip-visual"
convert "$ux/prior/weights.safetensors" --config "$ux/prior/config.json" --stats "$ux/prior/clip_stats.safetensors" \
    --kind prior --quant q8 --out "$out/unclip/prior"
convert "$ux/decoder/checkpoint.ckpt" --config "$ux/decoder/config.json" --kind decoder --quant q8 --out "$out/unclip/decoder"
# The fixture's SR makes 64 px from the 32-px decoder (Karlo: 256 from 64).
convert "$ux/sr/weights.safetensors" --config "$ux/sr/config.json" --kind sr --sr-size 64 --quant q8 --out "$out/unclip/sr"
