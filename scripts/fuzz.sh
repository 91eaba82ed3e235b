#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ (a package of its own, never built by the root package or
# CI) and runs each one for SECONDS (default 60), one after the other, on a copy of its committed
# seed corpus (fuzz/corpus/<Target>) in a scratch directory under .build-fuzz/runs (not in git),
# with the target's dictionary when there is one (fuzz/<Target>.dict). Per target it prints the
# executions done and exec/s (libFuzzer's final stats), the corpus size at the end and the crashes
# (a crash, leak, timeout or out-of-memory artifact is kept in the scratch directory, with the
# command that reproduces it). Exits non-zero if any target crashed or failed to build.
# Bounded: each run stops at SECONDS (libFuzzer's -max_total_time, with a hard `timeout` on top).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   targets: FuzzHTTP1 FuzzHTTP2 FuzzExchangeHead FuzzConfig FuzzJoinToken FuzzCSR FuzzDNS
#   scripts/fuzz.sh --seeds                 regenerate fuzz/corpus (make_seeds.py + GenSeeds)
#
# Environment: FUZZ_ARGS adds libFuzzer flags (e.g. "-max_len=8192"); FUZZ_BUILD_PATH moves
# the build (default .build-fuzz).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
BUILD="${FUZZ_BUILD_PATH:-$ROOT/.build-fuzz}"
ALL=(FuzzHTTP1 FuzzHTTP2 FuzzExchangeHead FuzzConfig FuzzJoinToken FuzzCSR FuzzDNS)

if [[ "${1:-}" == "--seeds" ]]; then
    python3 fuzz/make_seeds.py || exit 1
    mkdir -p "$BUILD"
    (cd fuzz && swift build --build-path "$BUILD/seeds" --product GenSeeds >"$BUILD/seeds.log" 2>&1) \
        || { tail -20 "$BUILD/seeds.log"; exit 1; }
    "$BUILD/seeds/debug/GenSeeds" fuzz/corpus
    exit $?
fi

SECONDS_PER_TARGET=60
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then SECONDS_PER_TARGET="$1"; shift; fi
TARGETS=("$@")
[[ ${#TARGETS[@]} -eq 0 ]] && TARGETS=("${ALL[@]}")

# Debug configuration with -O: optimised, with Swift's overflow and bounds checks kept as in the
# shipped release build (which also turns off run-time exclusivity checks in the data path; here
# they stay on).
mkdir -p "$BUILD"
# The root package is a path dependency: SwiftPM does not notice files added to its targets
# since the last plan, so drop the cached plan (objects stay; the build stays incremental).
rm -f "$BUILD/debug.yaml" "$BUILD"/*/debug/description.json
status=0
for t in "${TARGETS[@]}"; do
    echo "fuzz: building $t"
    if ! (cd fuzz && swift build --build-path "$BUILD" --product "$t" \
            -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library -Xswiftc -O) >"$BUILD/build-$t.log" 2>&1; then
        grep -E "error:" "$BUILD/build-$t.log" | head -20
        echo "fuzz: $t failed to build (log: $BUILD/build-$t.log)"
        exit 1
    fi
done
BIN="$(cd fuzz && swift build --build-path "$BUILD" --show-bin-path 2>/dev/null)"

stamp="$(date +%Y%m%d-%H%M%S)"
summary=()
for t in "${TARGETS[@]}"; do
    run="$BUILD/runs/$t-$stamp"
    mkdir -p "$run/corpus" "$run/artifacts"
    cp -r "fuzz/corpus/$t/." "$run/corpus/" 2>/dev/null
    dict=()
    [[ -f "fuzz/$t.dict" ]] && dict=(-dict="$ROOT/fuzz/$t.dict")
    echo "fuzz: running $t for ${SECONDS_PER_TARGET}s (scratch: $run)"
    # shellcheck disable=SC2086
    SWIFT_BACKTRACE=enable=no ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}" \
        timeout --kill-after=30 $((SECONDS_PER_TARGET + 120)) \
        "$BIN/$t" -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$run/artifacts/" "${dict[@]}" ${FUZZ_ARGS:-} "$run/corpus" >"$run/log.txt" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$run/log.txt" | grep -o '[0-9]*$' | tail -1)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$run/log.txt" | grep -o '[0-9]*$' | tail -1)
    corpus=$(find "$run/corpus" -type f | wc -l)
    crashes=$(find "$run/artifacts" -type f | wc -l)
    line="$t: ${execs:-?} executions, ${rate:-?} exec/s, ${SECONDS_PER_TARGET}s, corpus ${corpus} files, crashes ${crashes}"
    if [[ $crashes -gt 0 || $rc -ne 0 ]]; then
        status=1
        line="$line (exit $rc)"
        grep -E "Fatal error|ERROR: AddressSanitizer|ERROR: LeakSanitizer|SUMMARY|deadly signal|timeout|out-of-memory" "$run/log.txt" | head -5
        for a in "$run"/artifacts/*; do [[ -f "$a" ]] && echo "fuzz: reproduce with: $BIN/$t $a"; done
    fi
    echo "fuzz: $line"
    summary+=("$line")
done
echo "fuzz: summary ($(date -u +%Y-%m-%dT%H:%MZ))"
for l in "${summary[@]}"; do echo "  $l"; done
exit $status
