#!/usr/bin/env bash
# Long fuzz runs: every target of webglide_cli::fuzz under libFuzzer
# (cargo-fuzz, nightly), each for EXECS executions (default 10^7): inputs
# ≤ 64 KiB, > 1 s per input is a hang, one allocation over the target's bound
# (webglide_cli::fuzz::TARGETS at 64 KiB, enforced in the binary by
# BoundedAlloc) aborts. Findings land in target/fuzz/artifacts/<target>/;
# each becomes a regression test (a file in fuzz/corpus/<target>/, which the
# test suite's short run replays). Results: target/fuzz/<target>.log,
# summarised in docs/reliability.md. The test suite's own short run is
# cli/tests/fuzz_short.rs.
#
# Built without a sanitizer by default (2–10× more executions: safe Rust has no
# memory errors for ASan to find; FUZZ_SANITIZER=address for it), and without
# comparison tracing for image, mask and the tokenizers, whose time otherwise
# goes to tracing the resizers' arithmetic and the merge tables' lookups (half
# or more of it; the seeds already hold every format's magic, and these
# targets' coverage stops growing within a minute either way).
#
# A timeout whose input takes under 1 s of CPU when run again by itself (the
# machine stalled) is set aside in target/fuzz/artifacts/<target>/stalls/ and
# the run resumes; see below.
#
# Usage: scripts/fuzz.sh [EXECS [TARGET...]]   (FUZZ_SECONDS=N also stops each target after N s)
set -euo pipefail
cd "$(dirname "$0")/.."
TIMEFORMAT='%3U %3S'
execs=${1:-10000000}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(safetensors settings manifest png_text checkpoint glide_tokenizer clip_tokenizer mask image)
fi
sanitizer=${FUZZ_SANITIZER:-none}
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo +stable install cargo-fuzz --locked
mkdir -p target/fuzz
for t in "${targets[@]}"; do
    case $t in
        image | mask | glide_tokenizer | clip_tokenizer) variant=(--no-trace-compares) dir=plain ;;
        *) variant=() dir=cmp ;;
    esac
    build=(--fuzz-dir fuzz -s "$sanitizer" --target-dir "target/fuzz-build/$sanitizer-$dir" ${variant[@]+"${variant[@]}"})
    mkdir -p "target/fuzz/corpus/$t" "target/fuzz/artifacts/$t/stalls"
    echo "== $t: $execs runs ($sanitizer, ${dir})"
    cargo +nightly fuzz build "${build[@]}" "$t" >"target/fuzz/$t.build.log" 2>&1
    binary="target/fuzz-build/$sanitizer-$dir/x86_64-unknown-linux-gnu/release/$t"
    # A timeout on a shared 2-core machine may be a stall: the input is run
    # again by itself three times, and only if one takes over 1 s of CPU time
    # is it a finding; else it moves to artifacts/<t>/stalls/ and the run resumes
    # from the grown corpus. Executions add up over the resumed runs.
    done_runs=0 part=0 started=$SECONDS
    : >"target/fuzz/$t.log"
    while [ "$done_runs" -lt "$execs" ]; do
        left_s=""
        if [ -n "${FUZZ_SECONDS:-}" ]; then
            left_s=$((FUZZ_SECONDS - (SECONDS - started)))
            [ "$left_s" -gt 0 ] || break
        fi
        part=$((part + 1))
        echo "== run $part" >>"target/fuzz/$t.log"
        # New inputs go to target/fuzz/corpus (first folder); fuzz/corpus seeds it.
        status=0
        "$binary" "target/fuzz/corpus/$t" "fuzz/corpus/$t" \
            -runs=$((execs - done_runs)) ${left_s:+-max_total_time=$left_s} -max_len=65536 -timeout=1 \
            -rss_limit_mb=4096 -artifact_prefix="target/fuzz/artifacts/$t/" \
            -print_final_stats=1 >"target/fuzz/$t.part.log" 2>&1 || status=$?
        cat "target/fuzz/$t.part.log" >>"target/fuzz/$t.log"
        n=$(grep -E '^stat::number_of_executed_units' "target/fuzz/$t.part.log" | awk '{print $2}' || true)
        done_runs=$((done_runs + ${n:-0}))
        [ "$status" -eq 0 ] && continue
        unit=$(grep -oE "target/fuzz/artifacts/$t/timeout-[0-9a-f]+" "target/fuzz/$t.part.log" | tail -1 || true)
        if [ -z "$unit" ]; then
            echo "   FINDING: see target/fuzz/$t.log"
            break
        fi
        # CPU time (user + system), which other processes on the machine do not inflate.
        slowest=$(for _ in 1 2 3; do
            { time "$binary" "$unit" >/dev/null 2>&1; } 2>&1 | awk '{ printf "%d\n", ($1 + $2) * 1000 }'
        done | sort -n | tail -1)
        if [ "${slowest:-9999}" -ge 1000 ]; then
            echo "   FINDING: $unit takes ${slowest} ms of CPU by itself; see target/fuzz/$t.log"
            break
        fi
        echo "== stall: $unit took over 1 s in the run, at most ${slowest} ms of CPU by itself" | tee -a "target/fuzz/$t.log"
        mv "$unit" "target/fuzz/artifacts/$t/stalls/"
    done
    echo "   $done_runs runs in $part run(s)"
    grep -E '^stat::(average_exec_per_sec|peak_rss_mb)|^#[0-9]+.*cov: ' "target/fuzz/$t.log" | tail -3
done
