#!/usr/bin/env bash
# Device call 1 (run from the repo root on the GPU machine, after scripts/device/pack.sh here):
# GPU facts and a CUDA matmul reference, `webglide info` / `bench kernels` / `bench pipeline`,
# then the three demo trainings side by side until BUDGET seconds after the start, converted to
# q8. Everything comes back as $OUT/{base,base-inpaint,upsample}.tar and $OUT/logs.tgz.
#   BUDGET=525 (s)  B64=64 (base/base-inpaint batch)  B16=16 (upsample batch, 128-px crops)
#   SKIPBENCH=1 skips the benchmarks (a local dry run: W=/tmp/x OUT=/tmp/y SKIPBENCH=1 B64=2 B16=1)
set -u
T0=$(date +%s)
END=$((T0 + ${BUDGET:-525}))
W=${W:-/tmp/w}
. .dev/setup.sh run1.log webglide webglide-train webglide-emoji webglide-train-spirv
tar xzf .dev/emoji-src.tar.gz -C "$W"
echo "setup done at +$(($(date +%s) - T0)) s"
(time "$W/webglide-emoji" --twemoji "$W/src/twemoji" --emojibase "$W/src/emojibase" --out "$W/emoji") >"$L/emoji.log" 2>&1 &
EPID=$!
"$W/webglide" info >"$L/info.txt" 2>&1
if [ -z "${SKIPBENCH:-}" ]; then
    # Why did the 2026-11-27 run reach only ~0.5 % of the f32 peak? Clocks under load, and what
    # CUDA reaches on the same chip.
    nvidia-smi -q -d CLOCK,PERFORMANCE >"$L/nvidia-idle.txt" 2>&1
    (sleep 4 && nvidia-smi -q -d CLOCK,PERFORMANCE,UTILIZATION >"$L/nvidia-load.txt" 2>&1) &
    timeout 60 "$W/webglide" bench kernels >"$L/bench-kernels.txt" 2>&1
    echo "bench kernels rc $? at +$(($(date +%s) - T0)) s"
    # The same with naga's loop bounding back on (the suspect of the 2026-11-27 run).
    WEBGLIDE_LOOP_BOUNDING=1 timeout 60 "$W/webglide" bench kernels >"$L/bench-kernels-loop-bounding.txt" 2>&1
    echo "bench kernels (loop bounding) rc $? at +$(($(date +%s) - T0)) s"
    # Buffer bounds checks off, and workgroup memory zeroed (WebGPU's default): what each costs.
    WEBGLIDE_UNCHECKED=1 timeout 40 "$W/webglide" bench kernels >"$L/bench-kernels-unchecked.txt" 2>&1
    echo "bench kernels (unchecked) rc $? at +$(($(date +%s) - T0)) s"
    WEBGLIDE_ZERO_WG=1 timeout 40 "$W/webglide" bench kernels >"$L/bench-kernels-zero-wg.txt" 2>&1
    echo "bench kernels (zeroed workgroup memory) rc $? at +$(($(date +%s) - T0)) s"
    nvidia-smi --query-gpu=pstate,clocks.sm,clocks.max.sm,clocks_event_reasons.active --format=csv >"$L/nvidia-clocks-after.csv" 2>&1
    # Without shader-f16 and subgroups (the portable kernels), to see what they change.
    WEBGLIDE_PORTABLE=1 timeout 40 "$W/webglide" bench kernels >"$L/bench-kernels-portable.txt" 2>&1
    echo "bench kernels (portable) rc $? at +$(($(date +%s) - T0)) s"
    timeout 40 python3 - >"$L/torch-matmul.txt" 2>&1 <<'PY'
import time, torch
torch.backends.cuda.matmul.allow_tf32 = False
a = torch.randn(2048, 2048, device="cuda"); b = torch.randn(2048, 2048, device="cuda")
for _ in range(3): a @ b
torch.cuda.synchronize(); t = time.time()
for _ in range(20): a @ b
torch.cuda.synchronize(); s = (time.time() - t) / 20
print(f"torch {torch.__version__} f32 matmul 2048^3: {2 * 2048**3 / s / 1e9:.0f} GFLOP/s on {torch.cuda.get_device_name()}")
PY
    # The same kernels through OpenGL (EGL) instead of Vulkan: a platform or a backend problem?
    WGPU_BACKEND=gl timeout 40 "$W/webglide" bench kernels >"$L/bench-kernels-gl.txt" 2>&1
    echo "bench kernels (gl) rc $? at +$(($(date +%s) - T0)) s"
    timeout 100 "$W/webglide" bench pipeline --size full --random-weights --quant q8 >"$L/bench-pipeline-full-q8.txt" 2>&1
    echo "bench pipeline rc $? at +$(($(date +%s) - T0)) s"
fi
wait $EPID
echo "emoji done at +$(($(date +%s) - T0)) s"
DATA=(--emoji "$W/emoji")
[ -e "$W/emoji/index.json" ] || { echo "no emoji cache: shapes only"; DATA=(); }
# Samples/s of a training step on this GPU and on its CPU, before spending the minutes.
timeout 90 "$W/webglide-train" bench --device gpu --kind base --batch "${B64:-64}" --steps 2 >"$L/train-bench-gpu.txt" 2>&1
timeout 60 "$W/webglide-train" bench --device cpu --kind base --batch 32 --size 32 --steps 2 >"$L/train-bench-cpu.txt" 2>&1
# The base continues the committed CPU run (same config; EMA weights, fresh optimizer moments).
if [ -e trainer/checkpoints/base/state.json ]; then
    mkdir -p "$W/runs/base" && cp trainer/checkpoints/base/{state.json,ema.safetensors} "$W/runs/base/"
fi
SECS=$((END - $(date +%s) - 45))
MIN=$(python3 -c "print(round($SECS/60, 2))")
echo "training for $MIN minutes"
# base and upsample train with the SPIR-V trainer (burn's `vulkan` feature), base-inpaint with
# the WGSL one at the same batch as base: their loss logs compare the two step rates. A SPIR-V
# run that fails goes on with the WGSL trainer.
train() {
    bin=$1
    kind=$2
    shift 2
    echo "$bin --kind $kind --device gpu --minutes $MIN --lr 5e-4 --min-snr 5 --warmup 100 --save-every 250 ${DATA[*]} $*"
    timeout $((SECS + 60)) "$W/$bin" --kind "$kind" --device gpu --out "$W/runs/$kind" --minutes "$MIN" \
        --lr 5e-4 --min-snr 5 --warmup 100 --save-every 250 "${DATA[@]}" "$@" >"$L/train-$kind.out" 2>&1
    rc=$?
    echo "train $kind ($bin) rc $rc at +$(($(date +%s) - T0)) s"
    if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ "$bin" != webglide-train ]; then
        left=$(python3 -c "print(round(($END - 45 - $(date +%s)) / 60, 2))")
        echo "retrying $kind with webglide-train for $left minutes"
        timeout $((SECS + 60)) "$W/webglide-train" --kind "$kind" --device gpu --out "$W/runs/$kind" \
            --minutes "$left" --lr 5e-4 --min-snr 5 --warmup 100 --save-every 250 "${DATA[@]}" "$@" \
            >>"$L/train-$kind.out" 2>&1
        echo "train $kind (webglide-train) rc $? at +$(($(date +%s) - T0)) s"
    fi
    cp "$W/runs/$kind/loss.log" "$L/$kind-loss.log"
}
train webglide-train-spirv base --batch "${B64:-64}" &
P1=$!
train webglide-train base-inpaint --batch "${B64:-64}" &
P2=$!
train webglide-train-spirv upsample --batch "${B16:-16}" --crop 128 &
P3=$!
# Not a bare `wait`: that would also wait for the `tee` above, which never ends.
wait $P1 $P2 $P3
mkdir -p "$W/models"
for kind in base base-inpaint upsample; do
    "$W/webglide" convert "$W/runs/$kind/weights.safetensors" --config "$W/runs/$kind/config.json" --kind $kind \
        --quant q8 --out "$W/models/$kind" --force >"$L/convert-$kind.txt" 2>&1
    tar cf "$OUT/$kind.tar" -C "$W/models" $kind
done
echo "all done at +$(($(date +%s) - T0)) s"
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$L"
