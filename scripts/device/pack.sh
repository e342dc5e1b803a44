#!/usr/bin/env bash
# Prepares what the GPU machine needs (it has no Rust toolchain and no registries) in two
# git-ignored folders that a device call carries:
#   .dev/  stripped, xz-compressed release binaries (webglide, webglide-train, webglide-emoji, and
#          webglide-train-spirv: the trainer with burn's `vulkan` feature), the
#          Twemoji/Emojibase sources the emoji cache is rendered from, the inpainting inputs, and
#          the scripts themselves;
#   .gl/   the Vulkan/GL loader packages the machine lacks (its README: "bring the loaders").
# Then, with the device tool:  carry [".gl", ".dev"], command "BUDGET=525 bash .dev/train-and-bench.sh" (timeout 590),
# then "BUDGET=220 bash .dev/eval-and-samples.sh" (timeout 250) on the models that came back (see docs/demo-model.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
./scripts/build-emoji.sh
rm -rf .dev
mkdir -p .dev/src/twemoji .dev/src/emojibase/en
# One package per command (see scripts/train-demo.sh); the SPIR-V trainer first, so the
# default one is what target/release holds afterwards.
cargo build --release --locked -p webglide-trainer --features vulkan
strip -o .dev/webglide-train-spirv target/release/webglide-train
cargo build --release --locked -p webglide-trainer
cargo build --release --locked -p webglide-cli
for b in webglide webglide-train webglide-emoji; do
    strip -o ".dev/$b" "target/release/$b"
done
for b in webglide webglide-train webglide-emoji webglide-train-spirv; do
    xz -9 -T2 ".dev/$b"
done
nm=trainer/data/node_modules
cp "$nm"/@twemoji/svg/*.svg "$nm"/@twemoji/svg/package.json .dev/src/twemoji/
cp "$nm"/emojibase-data/package.json .dev/src/emojibase/
cp "$nm"/emojibase-data/en/data.json "$nm"/emojibase-data/en/messages.json .dev/src/emojibase/en/
tar czf .dev/emoji-src.tar.gz -C .dev src
rm -rf .dev/src
cp trainer/data/emoji/1f34e.png .dev/apple.png # the Twemoji red apple, 256 px RGBA
cp scripts/device/inpaint-mask.png .dev/mask.png
cp scripts/device/setup.sh scripts/device/train-and-bench.sh scripts/device/eval-and-samples.sh .dev/
if [ ! -d .gl ]; then
    mkdir -p .gl /tmp/amd64/partial
    o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
    apt-get "${o[@]}" update
    (cd .gl && apt-get "${o[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
du -sh .dev .gl
