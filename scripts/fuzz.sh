#!/usr/bin/env bash
# Long fuzz runs: every target of webglide_cli::fuzz under libFuzzer
# (cargo-fuzz, nightly, AddressSanitizer), each for EXECS executions
# (default 10^7): inputs ≤ 64 KiB, > 1 s per input is a hang, one malloc
# over the target's bound is a finding (the bounds of webglide_cli::fuzz::TARGETS
# at 64 KiB). Findings land in target/fuzz/artifacts/<target>/; each becomes a
# regression test (a file in fuzz/corpus/<target>/, which the test suite's
# short run replays). Results: target/fuzz/<target>.log, summarised in
# docs/reliability.md. The test suite's own short run is cli/tests/fuzz_short.rs.
#
# Usage: scripts/fuzz.sh [EXECS [TARGET...]]   (FUZZ_SECONDS=N also stops each target after N s)
set -euo pipefail
cd "$(dirname "$0")/.."
execs=${1:-10000000}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(checkpoint manifest safetensors glide_tokenizer clip_tokenizer image mask png_text)
fi
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo +stable install cargo-fuzz --locked
mkdir -p target/fuzz
for t in "${targets[@]}"; do
    case $t in
        image | mask) malloc_mb=320 ;;
        checkpoint) malloc_mb=160 ;;
        *) malloc_mb=32 ;;
    esac
    mkdir -p "target/fuzz/corpus/$t" "target/fuzz/artifacts/$t"
    echo "== $t: $execs runs (malloc limit $malloc_mb MiB)"
    # New inputs go to target/fuzz/corpus (first folder); fuzz/corpus seeds it.
    cargo +nightly fuzz run --fuzz-dir fuzz "$t" "target/fuzz/corpus/$t" "fuzz/corpus/$t" -- \
        -runs="$execs" ${FUZZ_SECONDS:+-max_total_time=$FUZZ_SECONDS} -max_len=65536 -timeout=1 -malloc_limit_mb="$malloc_mb" \
        -rss_limit_mb=4096 -artifact_prefix="target/fuzz/artifacts/$t/" \
        -print_final_stats=1 >"target/fuzz/$t.log" 2>&1 || echo "   FINDING: see target/fuzz/$t.log"
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)|^#[0-9]+.*cov: ' "target/fuzz/$t.log" | tail -4
done
