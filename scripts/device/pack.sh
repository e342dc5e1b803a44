#!/usr/bin/env bash
# Prepares what the GPU machine needs (it has no Rust toolchain and no registries) in two
# git-ignored folders that a device call carries:
#   .dev/  the stripped, xz-compressed trainer built with burn's CUDA runtime (`--features cuda`;
#          it also has wgpu and the CPU backend; cubecl-cuda patched to its CUDA C++/NVRTC
#          backend alone: cubecl-cuda-without-llvm.patch, because the LLVM backend's build
#          downloads an LLVM bundle from GitHub, out of reach here), `webglide` when WITH_CLI=1 (the engine's
#          benchmarks), the emoji cache cut to the 100 concepts the base learns (numpy and
#          Pillow: pip install pillow numpy), the scripts, and with START=<run folder> that
#          run's EMA (q8, as committed checkpoints are) for the trainings to start from instead
#          of the committed trainer/checkpoints/base (a CPU line further on this machine);
#   .gl/   the Vulkan/GL loader packages the machine lacks (wgpu's fallback; its README).
# The tracked tree travels too and the whole call is limited to 64 MiB: this prints the total.
# Then, with the device tool: carry [".gl", ".dev"], command "bash .dev/train-and-bench.sh"
# (timeout 595). docs/demo-model.md ("GPU run") says what came back and what was done with it.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
patched=target/patched/cubecl-cuda-0.11.3
if [ ! -e "$patched/.patched" ]; then
    rm -rf "$patched" && mkdir -p target/patched
    cp -r "$(find ~/.cargo/registry/src -maxdepth 2 -name cubecl-cuda-0.11.3 | head -1)" "$patched"
    patch -d "$patched" -p1 <scripts/device/cubecl-cuda-without-llvm.patch && touch "$patched/.patched"
fi
# Not --locked: the patch drops cubecl-llvm from Cargo.lock, restored afterwards.
cp Cargo.lock target/patched/Cargo.lock.orig
trap 'cp target/patched/Cargo.lock.orig Cargo.lock' EXIT
cfg=(--config "patch.crates-io.cubecl-cuda.path=\"$patched\"")
cargo build --release -p webglide-trainer --features cuda "${cfg[@]}"
cp target/patched/Cargo.lock.orig Cargo.lock
NO_BUILD=1 ./scripts/build-emoji.sh
rm -rf .dev
mkdir -p .dev
bins=(webglide-train)
if [ -n "${WITH_CLI:-}" ]; then
    cargo build --release --locked -p webglide-cli
    bins+=(webglide)
fi
for b in "${bins[@]}"; do
    strip -o ".dev/$b" "target/release/$b"
    xz -9 -T2 ".dev/$b"
done
# The emoji of trainer/data/emoji-concepts.txt (no tone variants), each stored as its 64-px
# training image (on white, 4×4 box mean: trainer/src/emoji.rs) blown up 4× by repetition: the
# trainer's own 4×4 box mean gives back exactly those pixels, and the PNGs shrink ~4× (the call's
# 64 MiB). Exact for the base kinds only: the upsampler's 256-px targets are lost.
python3 - trainer/data/emoji trainer/data/emoji-concepts.txt .dev/emoji <<'PY'
import json, os, sys
import numpy as np
from PIL import Image
src, names, dst = sys.argv[1:]
keep = {l.strip() for l in open(names) if l.strip() and not l.startswith("#")}
index = json.load(open(os.path.join(src, "index.json")))
total = len(index["entries"])
entries = [e for e in index["entries"] if e["concept"] in keep and e.get("base") is None]
os.makedirs(dst)
for e in entries:
    rgba = np.asarray(Image.open(os.path.join(src, e["file"])).convert("RGBA"), dtype=np.uint32)
    a = rgba[..., 3:4]
    rgb = (rgba[..., :3] * a + 255 * (255 - a) + 127) // 255
    small = np.floor(rgb.reshape(64, 4, 64, 4, 3).mean(axis=(1, 3)) + 0.5).astype(np.uint8)
    big = small.repeat(4, axis=0).repeat(4, axis=1)
    out = np.concatenate([big, np.full((256, 256, 1), 255, np.uint8)], axis=2)
    Image.fromarray(out, "RGBA").save(os.path.join(dst, e["file"]), optimize=True)
index["entries"] = entries
json.dump(index, open(os.path.join(dst, "index.json"), "w"))
print(f"emoji: {len(entries)} of {total} entries")
PY
tar cf .dev/emoji.tar -C .dev/emoji . && rm -rf .dev/emoji
if [ -n "${START:-}" ]; then
    target/release/webglide-train checkpoint --run "$START" --out .dev/start --emoji trainer/data/emoji
    tar cJf .dev/start.tar.xz -C .dev/start . && rm -rf .dev/start
    echo "start: $START at $(cat "$START/state.json")"
fi
cp scripts/device/setup.sh scripts/device/train-and-bench.sh .dev/
if [ ! -d .gl ]; then
    mkdir -p .gl /tmp/amd64/partial
    o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
    apt-get "${o[@]}" update
    (cd .gl && apt-get "${o[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
du -sh .dev .gl
tracked=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
extra=$(du -cb .dev .gl | tail -1 | cut -f1)
echo "travels: $(((tracked + extra) / 1048576)) MiB of 64 (tracked $((tracked / 1048576)) MiB)"
if [ $((tracked + extra)) -gt $((62 * 1048576)) ]; then
    # What the 2026-12-04 call did: model folders the call does not read, out of the index and
    # ignored for the call (they stay on disk), put back right after it.
    unused="trainer/checkpoints/clip public/models/demo/clip-image-enc public/models/demo/clip-text-enc public/models/demo/upsample"
    echo "too close to the limit: before the call"
    echo "  for p in $unused; do echo /\$p/ >>.git/info/exclude; done; git rm -r -q --cached $unused"
    echo "and after it: remove those lines from .git/info/exclude; git reset -q -- $unused"
fi
