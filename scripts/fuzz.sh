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
# Usage: scripts/fuzz.sh [EXECS [TARGET...]]   (FUZZ_SECONDS=N also stops each target after N s)
set -euo pipefail
cd "$(dirname "$0")/.."
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
    mkdir -p "target/fuzz/corpus/$t" "target/fuzz/artifacts/$t"
    echo "== $t: $execs runs ($sanitizer, ${dir})"
    # New inputs go to target/fuzz/corpus (first folder); fuzz/corpus seeds it.
    cargo +nightly fuzz run "${build[@]}" "$t" "target/fuzz/corpus/$t" "fuzz/corpus/$t" -- \
        -runs="$execs" ${FUZZ_SECONDS:+-max_total_time=$FUZZ_SECONDS} -max_len=65536 -timeout=1 \
        -rss_limit_mb=4096 -artifact_prefix="target/fuzz/artifacts/$t/" \
        -print_final_stats=1 >"target/fuzz/$t.log" 2>&1 || echo "   FINDING: see target/fuzz/$t.log"
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)|^#[0-9]+.*cov: ' "target/fuzz/$t.log" | tail -4
done
