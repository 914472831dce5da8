#!/usr/bin/env bash
# Runs the `verify` fuzz target for a bounded time and prints executions and crashes.
#   crates/lethe-proto/fuzz/run.sh SECONDS      (default 60)
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Exit status is
# non-zero if the fuzzer found a crash (artifacts under fuzz/artifacts/verify/).
# The working corpus lives in $FUZZ_CORPUS (default target/fuzz-corpus/verify), seeded
# from fuzz/seeds/; it is not committed. libFuzzer's random seed is printed; set
# LETHE_TEST_SEED to it (and keep the corpus) to replay a run.
set -euo pipefail
secs="${1:-60}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}/fuzz"
corpus="${FUZZ_CORPUS:-$root/target/fuzz-corpus/verify}"
mkdir -p "$corpus"
cp -n "$here"/seeds/* "$corpus"/ 2>/dev/null || true
cd "$here"
log="$(mktemp)"
status=0
seed_arg=()
if [[ -n "${LETHE_TEST_SEED:-}" ]]; then seed_arg=(-seed="$LETHE_TEST_SEED"); fi
cargo +nightly fuzz run verify --target-dir "$target_dir" "$corpus" -- \
    -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
    -dict="$here/verify.dict" -print_final_stats=1 ${seed_arg[@]+"${seed_arg[@]}"} \
    >"$log" 2>&1 || status=$?
seed="$(grep -oE '^INFO: Seed: [0-9]+' "$log" | head -1 | awk '{print $3}')"
echo "fuzz verify: seed ${seed:-unknown} (replay with LETHE_TEST_SEED=${seed:-?} and the same corpus)"
execs="$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' | tail -1)"
crashes="$(ls "$here/artifacts/verify" 2>/dev/null | grep -cE '^(crash|oom|timeout|leak)-' || true)"
tail -n 25 "$log" | grep -E '^(stat::|Done|==[0-9]+==|SUMMARY)' | tail -n 12 || true
echo "fuzz verify: seconds=$secs executions=${execs:-0} crashes=$crashes status=$status"
rm -f "$log"
[ "$status" -eq 0 ] && [ "$crashes" -eq 0 ]
