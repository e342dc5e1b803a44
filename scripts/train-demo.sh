#!/usr/bin/env bash
# Trains the embedded demo model and converts it into public/models/demo/<kind>/ (q8 shards).
#   DEVICE=cpu|tch|gpu  KINDS="base base-inpaint upsample clip"  MINUTES_<KIND>=N  BATCH=N  OUT=dir
#   (clip: the noisy CLIP for CLIP guidance -> clip-image-enc/ (f16) and clip-text-enc/ (q8);
#   batch BATCH_CLIP, default 64, learning rate LR_CLIP, default 1e-3)
#   SIZE_<KIND>=N (base kinds: train at N px, e.g. 32 for the curriculum's first stage)
#   MIN_SNR=γ (default 5; 0 = the plain eps loss)  LR=x (default 4e-4)
#   EMOJI=dir (default trainer/data/emoji, built first by scripts/build-emoji.sh; EMOJI= for shapes only)
#   (tch: PyTorch's CPU kernels through burn's LibTorch backend, ~3.8x the samples/s of cpu on this
#   machine; scripts/train-tch.sh installs PyTorch in .torch/ once, ~4.8 GB)
# Runs resume from OUT/<kind> when a checkpoint is there, else from the committed
# trainer/checkpoints/<kind>/ (EMA weights, fresh optimizer moments); a new base-inpaint run
# starts from OUT/base's weights when they exist. The exact commands of every shipped run are recorded in
# docs/demo-model.md with their logs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
device="${DEVICE:-cpu}"
out="${OUT:-target/demo-train}"
batch="${BATCH:-8}"
emoji="${EMOJI-trainer/data/emoji}"
data=()
if [ -n "$emoji" ]; then
    ./scripts/build-emoji.sh "$emoji"
    data=(--emoji "$emoji")
fi
# One package per command: building both together unifies their dependencies' features
# differently and rebuilds burn from scratch (~40 min on 2 cores).
train=(./target/release/webglide-train)
if [ "$device" = tch ]; then
    train=(./scripts/train-tch.sh)
else
    cargo build --release --locked -p webglide-trainer
fi
cargo build --release --locked -p webglide-cli
for kind in ${KINDS:-base base-inpaint upsample}; do
    var="MINUTES_$(echo "$kind" | tr 'a-z-' 'A-Z_')"
    minutes="${!var:-8}"
    if [ "$kind" = clip ]; then
        if [ ! -e "$out/clip/state.json" ] && [ -e trainer/checkpoints/clip/state.json ]; then
            mkdir -p "$out/clip"
            cp trainer/checkpoints/clip/{state.json,config.json,text_enc.safetensors,image_enc.safetensors} "$out/clip/"
        fi
        "${train[@]}" --kind clip --device "$device" --out "$out/clip" \
            --minutes "$minutes" --batch "${BATCH_CLIP:-64}" --lr "${LR_CLIP:-1e-3}" --warmup 100 \
            --save-every 100 --shapes-share 0.7 "${data[@]}"
        ./target/release/webglide convert "$out/clip/image_enc.safetensors" --config "$out/clip/config.json" \
            --kind clip-image-enc --quant f16 --out public/models/demo/clip-image-enc --force
        ./target/release/webglide convert "$out/clip/text_enc.safetensors" --config "$out/clip/config.json" \
            --kind clip-text-enc --quant q8 --out public/models/demo/clip-text-enc --force
        cp "$out/clip/loss.log" docs/demo/clip-loss.log
        continue
    fi
    size_var="SIZE_$(echo "$kind" | tr 'a-z-' 'A-Z_')"
    size=()
    [ -n "${!size_var:-}" ] && size=(--size "${!size_var}")
    if [ ! -e "$out/$kind/state.json" ] && [ -e "trainer/checkpoints/$kind/state.json" ]; then
        mkdir -p "$out/$kind"
        # With its config.json: a checkpoint continues in the architecture it was trained in.
        cp trainer/checkpoints/"$kind"/{state.json,ema.safetensors,config.json} "$out/$kind/"
    fi
    init=()
    if [ "$kind" = base-inpaint ] && [ ! -e "$out/$kind/state.json" ] && [ -e "$out/base/weights.safetensors" ]; then
        init=(--init "$out/base/weights.safetensors")
    fi
    "${train[@]}" --kind "$kind" --device "$device" --out "$out/$kind" \
        --minutes "$minutes" --batch "$batch" --lr "${LR:-4e-4}" --min-snr "${MIN_SNR:-5}" --warmup 30 \
        --save-every 100 "${size[@]}" "${data[@]}" "${init[@]}"
    ./target/release/webglide convert "$out/$kind/weights.safetensors" --config "$out/$kind/config.json" \
        --kind "$kind" --quant q8 --out "public/models/demo/$kind" --force
    cp "$out/$kind/loss.log" "docs/demo/$kind-loss.log"
done
