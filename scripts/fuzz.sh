#!/usr/bin/env bash
# Fuzzes every keygate-core target (core/fuzz, cargo-fuzz + libFuzzer) for SECONDS each, then
# prints executions, exec/s and coverage per target. Exits non-zero if any target crashed
# (an invariant broken or a panic in core); the input is then in core/fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [SECONDS]          # default 60 s per target
#
# Environment:
#   FUZZ_TARGETS="credentials config"  only these targets (default: all eight)
#   FUZZ_SANITIZER=none|address         one sanitizer for every target (default: address,
#                                       but none for sync_message and sync_binary: see below)
#   FUZZ_NICE=10                        niceness of the builds and the fuzzers (default 10)
#   FUZZ_MERGE=1                        afterwards, add the inputs that cover new edges to
#                                       the committed corpus core/fuzz/corpus/<target>, if
#                                       it stays under FUZZ_MERGE_MAX files (default 190)
#
# cargo fuzz needs nightly compiler flags (-Z sanitizer, sancov passes): on a stable toolchain
# RUSTC_BOOTSTRAP=1 lets it use them. AddressSanitizer works that way too; keygate-core has no
# unsafe code, so it only guards the dependencies' (serde_json, base64, sha2). The two sync
# targets run without it by default: each answer walks all 65,536 buckets, which ASan slows
# tenfold.
# Builds without ASan go to core/fuzz/target/sanitizer-none, so neither build evicts the other.
#
# New inputs go to core/fuzz/target/work/<target> (ignored by git); the committed corpus is
# only read, unless FUZZ_MERGE=1. Logs and a summary are in core/fuzz/target/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: $0 [SECONDS]" >&2
    exit 2
fi
all_targets=(credentials path_policy config json sync_message sync_binary header_pairs decision)
read -r -a targets <<<"${FUZZ_TARGETS:-${all_targets[*]}}"
nice=(nice -n "${FUZZ_NICE:-10}")
export RUSTC_BOOTSTRAP=1

# The sanitizer of target $1.
sanitizer_of() {
    if [ -n "${FUZZ_SANITIZER:-}" ]; then
        echo "$FUZZ_SANITIZER"
    elif [ "$1" = sync_message ] || [ "$1" = sync_binary ]; then
        echo none
    else
        echo address
    fi
}
# `cargo fuzz build/run` options for target $1, one per line.
fuzz_opts() {
    local s
    s=$(sanitizer_of "$1")
    printf '%s\n' --sanitizer "$s"
    [ "$s" = address ] || printf '%s\n' --target-dir "fuzz/target/sanitizer-$s"
}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz from crates.io"
    "${nice[@]}" cargo install --locked cargo-fuzz
fi

cd core
logs=fuzz/target/logs
mkdir -p "$logs"
echo "== building ${#targets[@]} fuzz targets"
for t in "${targets[@]}"; do
    mapfile -t opts < <(fuzz_opts "$t")
    "${nice[@]}" cargo fuzz build "${opts[@]}" "$t" >"$logs/build-$t.log" 2>&1 || {
        tail -30 "$logs/build-$t.log" >&2
        echo "fuzz.sh: building $t failed (log: core/$logs/build-$t.log)" >&2
        exit 1
    }
done

# The value of `stat::NAME:` in a libFuzzer log (-print_final_stats=1).
stat() { sed -n "s/^stat::$1: *//p" "$2" | tail -1; }
# A field (cov, ft, corp) of the last status line (`#N ... cov: X ft: Y corp: Z ...`).
field() { grep -E '^#[0-9]+' "$2" | tail -1 | sed -n "s/.* $1: \([^ ]*\).*/\1/p"; }
row() { printf '%-13s %-7s %-8s %11s %8s %6s %6s %12s %6s\n' "$@"; }

summary="$logs/summary.txt"
{
    echo "# scripts/fuzz.sh $secs  ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores," \
        "load $(cut -d' ' -f1-3 /proc/loadavg))"
    row target result sanitizr executions exec/s cov ft corpus new
} >"$summary"
failed=()
for t in "${targets[@]}"; do
    mapfile -t opts < <(fuzz_opts "$t")
    work="fuzz/target/work/$t"
    mkdir -p "$work" "fuzz/artifacts/$t"
    log="$logs/$t.log"
    echo "== fuzzing $t for ${secs}s (sanitizer: $(sanitizer_of "$t"))"
    result=ok
    "${nice[@]}" cargo fuzz run "${opts[@]}" "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 >"$log" 2>&1 || result=CRASH
    if [ "$result" != ok ]; then
        failed+=("$t")
        grep -m1 -E 'panicked at|invariant broken|ERROR: (libFuzzer|AddressSanitizer)' "$log" >&2 || true
        grep -m1 -A1 -E '^thread .* panicked' "$log" | tail -1 >&2 || true
        grep -m1 -E 'Test unit written to' "$log" >&2 || true
    fi
    row "$t" "$result" "$(sanitizer_of "$t")" \
        "$(stat number_of_executed_units "$log")" "$(stat average_exec_per_sec "$log")" \
        "$(field cov "$log")" "$(field ft "$log")" "$(field corp "$log")" \
        "$(stat new_units_added "$log")" >>"$summary"
    if [ "${FUZZ_MERGE:-0}" = 1 ] && [ "$result" = ok ]; then
        # Edges only (-use_counters=0): hit counts would keep many near-duplicates.
        merged="fuzz/target/merge/$t"
        rm -rf "$merged" && mkdir -p "$merged" && cp "fuzz/corpus/$t"/* "$merged"/
        "${nice[@]}" cargo fuzz run "${opts[@]}" "$t" "$merged" "$work" -- \
            -merge=1 -use_counters=0 >"$logs/merge-$t.log" 2>&1
        count=$(find "$merged" -type f | wc -l)
        if [ "$count" -le "${FUZZ_MERGE_MAX:-190}" ]; then
            cp -n "$merged"/* "fuzz/corpus/$t"/
            echo "== merged: core/fuzz/corpus/$t has $count files"
        else
            echo "== not merged: core/fuzz/corpus/$t would have $count files (max ${FUZZ_MERGE_MAX:-190})"
        fi
    fi
done

echo
cat "$summary"
echo "(logs: core/$logs/; executions and exec/s: libFuzzer's final stats; cov: edges covered;" \
    "ft: features; corpus: inputs kept/bytes; new: inputs added this run)"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz.sh: crashes in: ${failed[*]} (inputs in core/fuzz/artifacts/<target>/;" \
        "replay one on stable: cargo run --manifest-path core/fuzz/Cargo.toml --bin <target> -- <file>)" >&2
    exit 1
fi
