#!/usr/bin/env bash
# Device call 2 (after train-and-bench.sh; unpack its model tars into public/models/demo here
# first, so they travel with the working tree): `webglide eval shapes` per guidance scale (four
# processes in parallel), an 8-prompt grid, and sample images of the models in
# public/models/demo. Back: $OUT/samples.tar and $OUT/logs2.tgz.
#   N=200 prompts, STEPS=50, BUDGET=220 (s: every job ends by then, so the results are packed
#   inside the call's timeout; on 2026-11-27 N=200 at 50 steps did not finish in 200 s).
set -u
T0=$(date +%s)
END=$((T0 + ${BUDGET:-220}))
W=${W:-/tmp/w2}
. .dev/setup.sh run2.log webglide
mkdir -p "$W/s"
M=public/models/demo
N=${N:-200}
STEPS=${STEPS:-50}
left() { echo $((END - $(date +%s))); }
PIDS=()
for g in 0 1 3 5; do
    (time timeout "$(left)" $W/webglide eval shapes --model $M --n "$N" --guidance $g --steps "$STEPS") \
        >"$L/eval-g$g.txt" 2>&1 &
    PIDS+=($!)
done
timeout "$(left)" $W/webglide eval shapes --model $M --n 8 --guidance 0,1,3,5 --steps "$STEPS" \
    --grid $W/s/shapes-grid.png >"$L/eval-grid.txt" 2>&1 &
PIDS+=($!)
sample() {
    slug=$1
    shift
    [ "$(left)" -gt 5 ] || return 0
    timeout "$(left)" $W/webglide "$@" --model $M --batch 4 --seed 1 --out "$W/s/$slug.png" >"$L/sample-$slug.txt" 2>&1
    echo "sample $slug rc $? at +$(($(date +%s) - T0)) s"
}
(
    sample apple generate --prompt "emoji of red apple"
    sample cat generate --prompt "emoji of cat face"
    sample rocket generate --prompt "emoji of rocket"
    sample pizza generate --prompt "pizza"
    sample japan generate --prompt "flag of japan"
    sample shapes generate --prompt "a red circle above a blue square"
    sample inpaint-apple inpaint --image .dev/apple.png --mask .dev/mask.png --prompt "emoji of red apple"
    sample inpaint-pear inpaint --image .dev/apple.png --mask .dev/mask.png --prompt "emoji of pear"
) &
PIDS+=($!)
wait "${PIDS[@]}"
echo "all done at +$(($(date +%s) - T0)) s"
tar cf "$OUT/samples.tar" -C $W s
tar czf "$OUT/logs2.tgz" -C "$OUT" logs && rm -rf "$L"
