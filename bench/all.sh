#!/usr/bin/env bash
# Every benchmark on the current commit, one after the other, each writing its RESULTS file:
#
#   build      swift build -c release --static-swift-stdlib (sidecar, meshd, meshctl; skip: NO_BUILD=1)
#   main       run.sh, all pairs: sidecar sidecar-h1 envoy envoy-h2 nginx haproxy haproxy-h2 -> RESULTS.md
#   h2         run.sh, HTTP/2 hops: sidecar envoy-h2 haproxy-h2                               -> RESULTS-h2.md
#   metrics    run.sh, sidecar vs sidecar-nometrics, c=64 only, 9 rounds of 60000              -> RESULTS-metrics.md
#   routes     routes.sh                                                                       -> RESULTS-routes.md
#   ca         ca.sh                                                                           -> RESULTS-ca.md
#   push       push.sh                                                                         -> RESULTS-push.md
#   hardening  hardening.sh (idle-conns, overload, faults, faults 16 callers)                 -> RESULTS-hardening.md
#   tracing    tracing.sh: tracing off, 1% and 100% sampling, interleaved                       -> RESULTS-tracing.md
#   idle       idle-rss.sh (idle RSS of a mesh-mode sidecar and the peers, smaps breakdown)   -> RESULTS-idle-rss.md
#
# Run:   bench/all.sh                  (defaults: about 35-40 minutes on this 2-core machine)
#        QUICK=1 RESULTS_DIR=/tmp/bench-smoke bench/all.sh   (tiny settings everywhere, about 5 minutes;
#                                      never point a QUICK run at bench/: it would replace the real files)
# Env:   ONLY="main h2 metrics routes ca push hardening ingress tracing idle"  the steps to run (build is separate: NO_BUILD=1)
#        MAX_SECONDS=3600   hard limit for the whole run; each step gets what is left, at most its own limit
#        RESULTS_DIR=bench  where the RESULTS*.md files go;  OUT=bench/out/all  logs and raw data
#        QUICK=1            smoke settings (small N, 1 round, short phases) for every step
# Each step is run with NO_BUILD=1 and the binaries just built (SIDECAR_BIN, MESHD_BIN, MESHCTL_BIN),
# BENCH_PARENT=all.sh and BENCH_BUILD naming the build, so every header names the same commit and
# binaries. A step that fails does not stop the others. At the end a summary (step, file, exit
# status, seconds) is printed and written to OUT/summary.md (not a RESULTS file). Exit status 0
# only if every step succeeded. The commit must be the same at the start and the end; commit
# first, since a dirty tree is named "-dirty" in every header.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
# shellcheck source=bench/tools/provenance.sh
. "$HERE/tools/provenance.sh"

ONLY="${ONLY:-main h2 metrics routes ca push hardening ingress tracing idle}"
MAX_SECONDS="${MAX_SECONDS:-3600}"
RESULTS_DIR="${RESULTS_DIR:-$HERE}"
OUT="${OUT:-$HERE/out/all}"
QUICK="${QUICK:-0}"
mkdir -p "$OUT" "$RESULTS_DIR"
OUT="$(cd "$OUT" && pwd)"; RESULTS_DIR="$(cd "$RESULTS_DIR" && pwd)"
if [ "$QUICK" = 1 ] && [ "$RESULTS_DIR" = "$HERE" ]; then
    echo "all.sh: error: QUICK=1 would overwrite bench/RESULTS*.md with smoke figures; set RESULTS_DIR" >&2; exit 1
fi
note() { echo "all.sh: $*" >&2; }
START=$(date +%s)
COMMIT="$(prov_commit)"
note "commit $COMMIT; steps: $ONLY; at most ${MAX_SECONDS}s; results in $RESULTS_DIR, logs in $OUT"
case "$COMMIT" in *-dirty) note "warning: the tree has uncommitted changes; every header will say $COMMIT";; esac

CHILD=""
trap '[ -n "$CHILD" ] && kill -TERM "$CHILD" 2>/dev/null; wait 2>/dev/null; exit 130' INT TERM

# ------------------------------------------------------------------ build
BIN="$ROOT/.build/release"
if [ "${NO_BUILD:-0}" != 1 ]; then
    note "building: swift build -c release --static-swift-stdlib (log $OUT/build.log)"
    t0=$(date +%s)
    swift build -c release --static-swift-stdlib >"$OUT/build.log" 2>&1 \
        || { tail -n 30 "$OUT/build.log" >&2; note "error: release build failed"; exit 1; }
    BENCH_BUILD="\`swift build -c release --static-swift-stdlib\` by bench/all.sh at $COMMIT, $(date -u '+%Y-%m-%d %H:%M UTC') ($(( $(date +%s) - t0 )) s)"
else
    BENCH_BUILD="not built by bench/all.sh (NO_BUILD=1): existing binaries in $BIN"
fi
export BENCH_BUILD BENCH_PARENT=all.sh NO_BUILD=1
export SIDECAR_BIN="${SIDECAR_BIN:-$BIN/sidecar}" MESHD_BIN="${MESHD_BIN:-$BIN/meshd}" MESHCTL_BIN="${MESHCTL_BIN:-$BIN/meshctl}"
for b in "$SIDECAR_BIN" "$MESHD_BIN" "$MESHCTL_BIN"; do [ -x "$b" ] || { note "error: $b missing"; exit 1; }; done

# ------------------------------------------------------------------ steps
declare -a STEPS=()
declare -A S_FILE=() S_RC=() S_SECS=() S_CMD=()

# step NAME RESULTS_FILE STEP_MAX SCRIPT VAR=VALUE...   (the script's own MAX_SECONDS is set where it has one)
step() {
    local name="$1" file="$2" smax="$3" script="$4"; shift 4
    local left=$(( MAX_SECONDS - ($(date +%s) - START) )) a q=""
    for a in "$@"; do q+="${a%%=*}=$(printf '%q' "${a#*=}") "; done
    STEPS+=("$name"); S_FILE[$name]="$file"; S_CMD[$name]="${q}bench/$script"
    if [ "$left" -lt 60 ]; then
        note "$name: skipped, the ${MAX_SECONDS}s budget is spent"
        S_RC[$name]="skipped"; S_SECS[$name]=0; return
    fi
    [ "$smax" -gt "$left" ] && smax=$left
    note "$name: ${S_CMD[$name]} (at most ${smax}s; log $OUT/$name.log)"
    local t0; t0=$(date +%s)
    local before=""; [ -f "$RESULTS_DIR/$file" ] && before="$(stat -c %Y "$RESULTS_DIR/$file")"
    env "$@" RESULTS="$RESULTS_DIR/$file" timeout -k 15 $(( smax + 30 )) "$HERE/$script" >"$OUT/$name.log" 2>&1 &
    CHILD=$!
    wait "$CHILD"; local rc=$?
    CHILD=""
    S_SECS[$name]=$(( $(date +%s) - t0 ))
    # a step counts as written only if it replaced its file during this run
    if [ ! -f "$RESULTS_DIR/$file" ] || [ "$(stat -c %Y "$RESULTS_DIR/$file")" = "$before" ] || [ "$(stat -c %Y "$RESULTS_DIR/$file")" -lt "$t0" ]; then
        S_RC[$name]="$rc, no report written"
    else
        S_RC[$name]="$rc"
    fi
    [ "$rc" = 124 ] && S_RC[$name]="124 (timed out after ${smax}s)"
    note "$name: exit ${S_RC[$name]} after ${S_SECS[$name]}s"
}

ALL_PAIRS="sidecar sidecar-h1 envoy envoy-h2 nginx haproxy haproxy-h2"
for s in $ONLY; do
    left=$(( MAX_SECONDS - ($(date +%s) - START) ))
    case "$s" in
    main)
        if [ "$QUICK" = 1 ]; then q=(ROUNDS=1 N1=500 N64=2000 WARMUP=100); else q=(ROUNDS=3 N1=10000 N64=40000 WARMUP=2000); fi
        step main RESULTS.md 1500 run.sh PROXIES="$ALL_PAIRS" "${q[@]}" MAX_SECONDS=$(( left < 1500 ? left : 1500 )) OUT="$OUT/run-main" ;;
    h2)
        if [ "$QUICK" = 1 ]; then q=(ROUNDS=1 N1=500 N64=2000 WARMUP=100); else q=(ROUNDS=3 N1=10000 N64=40000 WARMUP=2000); fi
        step h2 RESULTS-h2.md 900 run.sh PROXIES="sidecar envoy-h2 haproxy-h2" "${q[@]}" MAX_SECONDS=$(( left < 900 ? left : 900 )) OUT="$OUT/run-h2" ;;
    metrics)
        if [ "$QUICK" = 1 ]; then q=(ROUNDS=1 N64=2000 WARMUP=100); else q=(ROUNDS=9 N64=60000 WARMUP=2000); fi
        step metrics RESULTS-metrics.md 900 run.sh PROXIES="sidecar sidecar-nometrics" CONCURRENCIES=64 "${q[@]}" MAX_SECONDS=$(( left < 900 ? left : 900 )) OUT="$OUT/run-metrics" ;;
    routes)
        if [ "$QUICK" = 1 ]; then q=(ROUNDS=1 N=2000 WARMUP=200); else q=(ROUNDS=5 N=60000 WARMUP=3000); fi
        step routes RESULTS-routes.md 600 routes.sh "${q[@]}" OUT="$OUT/routes" ;;
    ca)
        if [ "$QUICK" = 1 ]; then q=(N=200 C="1 4"); else q=(N=4000 C="1 4 16"); fi
        step ca RESULTS-ca.md 400 ca.sh "${q[@]}" ;;
    push)
        if [ "$QUICK" = 1 ]; then q=(N=50 ROUNDS=2 BIG_N=200 BIG_NAMESPACES=4 BIG_ROUNDS=2 CSR_SECONDS=2 IDLE=1s); else q=(N=1000 ROUNDS=20); fi
        step push RESULTS-push.md 1200 push.sh "${q[@]}" ;;
    hardening)
        if [ "$QUICK" = 1 ]; then
            q=(IDLE_N=300 IDLE_HOLD_ROUNDS=1 IDLE_SETTLE=1 PHASE_SECONDS=3 SCENARIOS="a b c d" REPEAT=2 MESHD_RESTARTS=1 HEAVY_D_CYCLES=1 HEAVY_LOAD=2)
        else
            q=(IDLE_N=10000 IDLE_HOLD_ROUNDS=2 IDLE_SETTLE=8 PHASE_SECONDS=20 SCENARIOS="a b c d" REPEAT=25 MESHD_RESTARTS=5 HEAVY_D_CYCLES=3 HEAVY_LOAD=8)
        fi
        step hardening RESULTS-hardening.md 1560 hardening.sh "${q[@]}" MAX_SECONDS=$(( left < 1500 ? left : 1500 )) OUT="$OUT/hardening" ;;
    ingress)
        if [ "$QUICK" = 1 ]; then q=(ROUNDS=1 N=2000 WARMUP=100); else q=(ROUNDS=3 N=40000 WARMUP=2000); fi
        step ingress RESULTS-ingress.md 900 ingress.sh "${q[@]}" MAX_SECONDS=$(( left < 900 ? left : 900 )) OUT="$OUT/ingress" ;;
    tracing)
        if [ "$QUICK" = 1 ]; then q=(ROUNDS=1 N=2000 WARMUP=100); else q=(ROUNDS=3 N=40000 WARMUP=2000); fi
        step tracing RESULTS-tracing.md 900 tracing.sh "${q[@]}" MAX_SECONDS=$(( left < 900 ? left : 900 )) OUT="$OUT/tracing" ;;
    idle)
        if [ "$QUICK" = 1 ]; then q=(REQUESTS=5); else q=(REQUESTS=20 SETTLE=8); fi
        step idle RESULTS-idle-rss.md 300 idle-rss.sh "${q[@]}" MAX_SECONDS=$(( left < 300 ? left : 300 )) ;;
    *) note "error: unknown step '$s' (main h2 metrics routes ca push hardening ingress tracing idle)"; exit 1 ;;
    esac
done

# ------------------------------------------------------------------ summary
END_COMMIT="$(prov_commit)"
failed=0
{
    echo "# bench/all.sh summary (not a RESULTS file)"
    echo
    echo "- commit: $COMMIT at start, $END_COMMIT at the end; $(date -u -d "@$START" '+%Y-%m-%d %H:%M UTC'), $(( $(date +%s) - START )) s in all"
    echo "- build: $BENCH_BUILD"
    echo
    echo "| step | RESULTS file | command | exit status | seconds |"
    echo "|---|---|---|---|---:|"
    for s in "${STEPS[@]}"; do
        echo "| $s | $RESULTS_DIR/${S_FILE[$s]} | \`${S_CMD[$s]}\` | ${S_RC[$s]} | ${S_SECS[$s]} |"
        [ "${S_RC[$s]}" = 0 ] || failed=1
    done
    echo
    echo "Logs: $OUT/STEP.log. hardening exits 1 when faults.sh found a problem (see its report): its RESULTS file is still written."
} >"$OUT/summary.md"
[ "$END_COMMIT" = "$COMMIT" ] || { echo "WARNING: the commit changed during the run ($COMMIT -> $END_COMMIT)" >>"$OUT/summary.md"; failed=1; }
cat "$OUT/summary.md"
exit $failed
