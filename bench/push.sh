#!/usr/bin/env bash
# meshd at scale (issue 17), measured with bench/push-load (simulated sidecars on MeshIO event
# loops: thousands of keep-alive mTLS config streams in one process, a few threads). Three
# scenarios, each on a fresh meshd, in one run, one report (bench/RESULTS-push.md):
#   push   N sidecars (1,000), ROUNDS applies (20): per apply, the time from just before the apply
#          until every sidecar ACKed it; p50 and p99 over the applies. Bar: p99 under 1 s.
#   scale  BIG_N sidecars (10,000) on one meshd, in BIG_NAMESPACES namespaces each with a Sidecar
#          resource (egress hosts ["./*"], SCOPE=sidecar): meshd's RSS, CPU and threads idle and
#          during applies that touch one service; only that namespace's sidecars should get a push
#          (pushes to the others are counted). Bars: RSS under 1 GB, dependents ACKed within 1 s.
#   csr    CSR signing per second: CSR_C keep-alive clients for CSR_SECONDS against every API
#          (with REPLICAS=3, first against one meshd on the file store, the baseline of the run)
#          address; with REPLICAS=3, three meshd replicas on a 3-member etcd sharing one --ca-dir
#          (one meshd on the file store otherwise, or when this meshd has no --store).
# Also for each: push-load's own CPU and RSS, so the figures show it was not the bottleneck.
# Every process started here (meshd, etcd) is stopped on every exit path; temp dirs removed.
#
# Environment: SCENARIOS="push scale csr" N=1000 ROUNDS=20 NAMESPACES=10 BIG_N=10000
#   BIG_NAMESPACES=100 BIG_ROUNDS=5 SCOPE=sidecar|none CSR_C=16 CSR_SECONDS=10 REPLICAS=1|3
#   LOAD_THREADS=2 IDLE=10s MESHD_BIN=.build/release/meshd LOAD_BIN=next to MESHD_BIN
#   (by default the script builds meshd and push-load first; NO_BUILD=1 skips that)
#   RESULTS=bench/RESULTS-push.md KEEP_TMP=1 (keep logs and summaries)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
# shellcheck source=bench/tools/provenance.sh
. "$HERE/tools/provenance.sh"
prov_init push.sh "SCENARIOS N ROUNDS NAMESPACES BIG_N BIG_NAMESPACES BIG_ROUNDS SCOPE CSR_C CSR_SECONDS REPLICAS LOAD_THREADS IDLE NO_BUILD MESHD_BIN LOAD_BIN RESULTS"
SCENARIOS="${SCENARIOS:-push scale csr}"
N="${N:-1000}"; ROUNDS="${ROUNDS:-20}"; NAMESPACES="${NAMESPACES:-10}"
BIG_N="${BIG_N:-10000}"; BIG_NAMESPACES="${BIG_NAMESPACES:-100}"; BIG_ROUNDS="${BIG_ROUNDS:-5}"; SCOPE="${SCOPE:-sidecar}"
CSR_C="${CSR_C:-16}"; CSR_SECONDS="${CSR_SECONDS:-10}"; REPLICAS="${REPLICAS:-1}"
LOAD_THREADS="${LOAD_THREADS:-2}"; IDLE="${IDLE:-10s}"
MESHD_BIN="${MESHD_BIN:-.build/release/meshd}"
LOAD_BIN="${LOAD_BIN:-$(dirname "$MESHD_BIN")/push-load}"
RESULTS="${RESULTS:-$HERE/RESULTS-push.md}"
for s in $SCENARIOS; do
    case "$s" in push|scale|csr) ;; *) echo "push.sh: SCENARIOS: unknown scenario \"$s\" (push, scale, csr)" >&2; exit 2 ;; esac
done
case "$SCOPE" in sidecar|none) ;; *) echo "push.sh: SCOPE must be sidecar or none, got \"$SCOPE\"" >&2; exit 2 ;; esac
case "$REPLICAS" in 1|3) ;; *) echo "push.sh: REPLICAS must be 1 or 3, got \"$REPLICAS\"" >&2; exit 2 ;; esac
if [ -z "${NO_BUILD:-}" ]; then
    for p in meshd push-load; do swift build -c release --static-swift-stdlib --product "$p" >/dev/null; done
fi
[ -x "$MESHD_BIN" ] || { echo "push.sh: $MESHD_BIN is missing (build it, or set MESHD_BIN)" >&2; exit 2; }
[ -x "$LOAD_BIN" ] || { echo "push.sh: $LOAD_BIN is missing (swift build -c release --product push-load, or set LOAD_BIN)" >&2; exit 2; }

# Descriptors: meshd holds one per sidecar, push-load one per stream (both inherit this limit).
NEED=$(( (BIG_N > N ? BIG_N : N) + 4096 ))
WANT=$(( NEED > 65536 ? NEED : 65536 ))
if [ "$(ulimit -n)" -lt "$WANT" ]; then
    { [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$WANT" ] && ulimit -Hn "$WANT"; } 2>/dev/null || true
    ulimit -n "$WANT" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi
[ "$(ulimit -n)" -ge "$NEED" ] || { echo "push.sh: ulimit -n is $(ulimit -n), under the $NEED descriptors needed (run as root or raise the hard limit)" >&2; exit 2; }

OUT=$(mktemp -d)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "${KEEP_TMP:-}" ]; then echo "push.sh: kept $OUT" >&2; else rm -rf "$OUT"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# stop_all: ends every meshd and etcd started so far (between scenarios).
stop_all() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}

# meshd_cmd STATE_DIR API_PORT ADMIN_PORT [STORE] [CA_DIR]: the one meshd command line of this
# script, into the array MESHD_CMD. STORE: empty (the file store in STATE_DIR) or
# etcd://HOST:PORT,... (replicas, which share CA_DIR).
meshd_cmd() {
    local state="$1" api="$2" admin="$3" store="${4:-}" ca="${5:-}"
    MESHD_CMD=("$MESHD_BIN" --state-dir "$state" --api-port "$api" --admin-port "$admin" --log-level warn)
    if [ -n "$store" ]; then MESHD_CMD+=(--store "$store"); fi
    if [ -n "$ca" ]; then MESHD_CMD+=(--ca-dir "$ca"); fi
}

# start_meshd NAME [STORE] [CA_DIR]: starts one meshd, waits for /ready; sets MESHD_PID, API, ADMIN.
start_meshd() {
    local name="$1" store="${2:-}" ca="${3:-}"
    API=$(port); ADMIN=$(port)
    meshd_cmd "$OUT/$name" "$API" "$ADMIN" "$store" "$ca"
    "${MESHD_CMD[@]}" > "$OUT/$name.log" 2>&1 &
    MESHD_PID=$!
    PIDS+=("$MESHD_PID")
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$ADMIN/ready" >/dev/null && return 0; sleep 0.1; done
    echo "push.sh: meshd $name did not become ready; its log:" >&2; tail -n 20 "$OUT/$name.log" >&2
    exit 1
}

# start_etcd: a 3-member etcd on free 127.0.0.1 ports with temp data dirs; sets ETCD_ENDPOINTS.
start_etcd() {
    local i cluster="" cps=() pps=()
    for i in 0 1 2; do cps+=("$(port)"); pps+=("$(port)"); cluster+="${cluster:+,}e$i=http://127.0.0.1:${pps[$i]}"; done
    ETCD_ENDPOINTS=""
    for i in 0 1 2; do
        etcd --name "e$i" --data-dir "$OUT/etcd$i" \
            --listen-client-urls "http://127.0.0.1:${cps[$i]}" --advertise-client-urls "http://127.0.0.1:${cps[$i]}" \
            --listen-peer-urls "http://127.0.0.1:${pps[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${pps[$i]}" \
            --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token push-bench \
            > "$OUT/etcd$i.log" 2>&1 &
        PIDS+=("$!")
        ETCD_ENDPOINTS+="${ETCD_ENDPOINTS:+,}127.0.0.1:${cps[$i]}"
    done
    for _ in $(seq 1 100); do
        ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" endpoint health >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "push.sh: etcd did not become healthy; logs in $OUT/etcd*.log" >&2
    exit 1
}

# load NAME ARGS...: runs push-load against the meshd(s) started last; its summary -> OUT/NAME.kv.
FAILED=""
# CSR signing against one meshd on the file store; its summary is $OUT/NAME.kv.
csr_one() {
    start_meshd "$1"
    ROOT_CERT="$OUT/$1/root-cert.pem"; ADMIN_TOKEN="$OUT/$1/admin-token"
    load "$1" --api "127.0.0.1:$API" --admin "http://127.0.0.1:$ADMIN" --watch-pid "$MESHD_PID" \
        --streams 0 --csr-clients "$CSR_C" --csr-seconds "$CSR_SECONDS"
}

load() {
    local name="$1"; shift
    local rc=0
    echo "push.sh: $name: push-load $*" >&2
    # In the background and waited for: a signal to this script then stops it (and everything) at once.
    timeout 1800 "$LOAD_BIN" --root-cert "$ROOT_CERT" --admin-token-file "$ADMIN_TOKEN" --threads "$LOAD_THREADS" "$@" \
        > "$OUT/$name.kv" 2> "$OUT/$name.err" &
    local lp=$!
    PIDS+=("$lp")
    wait "$lp" || rc=$?
    grep '^push-load: apply\|^push-load: all\|error' "$OUT/$name.err" >&2 || true
    if [ "$rc" -ne 0 ]; then
        FAILED+=" $name"
        echo "rc=$rc" >> "$OUT/$name.kv"
        echo "error=$(grep -m1 'error:\|only ' "$OUT/$name.err" | tr '|' '/' || true)" >> "$OUT/$name.kv"
    fi
}

for s in $SCENARIOS; do
    case "$s" in
    push)
        start_meshd push
        ROOT_CERT="$OUT/push/root-cert.pem"; ADMIN_TOKEN="$OUT/push/admin-token"
        load push --api "127.0.0.1:$API" --admin "http://127.0.0.1:$ADMIN" --watch-pid "$MESHD_PID" \
            --streams "$N" --namespaces "$NAMESPACES" --register 1 --applies "$ROUNDS" --idle "$IDLE"
        stop_all
        ;;
    scale)
        start_meshd scale
        ROOT_CERT="$OUT/scale/root-cert.pem"; ADMIN_TOKEN="$OUT/scale/admin-token"
        scope=(); [ "$SCOPE" = sidecar ] && scope=(--sidecar-scope)
        load scale --api "127.0.0.1:$API" --admin "http://127.0.0.1:$ADMIN" --watch-pid "$MESHD_PID" \
            --streams "$BIG_N" --namespaces "$BIG_NAMESPACES" --register 1 --applies "$BIG_ROUNDS" --idle "$IDLE" \
            --connect-timeout 600s "${scope[@]}"
        stop_all
        ;;
    csr)
        CSR_SETUP="one meshd on the file store"
        if [ "$REPLICAS" = 3 ] && "$MESHD_BIN" --help 2>&1 | grep -q -- '--store'; then
            # First one meshd on the file store, the same clients: the baseline of this run.
            csr_one csr1
            echo "setup=one meshd on the file store" >> "$OUT/csr1.kv"
            stop_all
            "$ROOT/certs/make-pki.sh" "$OUT/ca" bench >/dev/null
            start_etcd
            apis=(); admins=(); pids=()
            for r in 0 1 2; do
                start_meshd "csr$r" "etcd://$ETCD_ENDPOINTS" "$OUT/ca"
                apis+=("127.0.0.1:$API"); admins+=("http://127.0.0.1:$ADMIN"); pids+=("$MESHD_PID")
            done
            CSR_SETUP="3 meshd replicas on a 3-member etcd ($(etcd --version 2>/dev/null | awk '/etcd Version/ {print "etcd " $3}')), one --ca-dir"
            ROOT_CERT="$OUT/csr0/root-cert.pem"; ADMIN_TOKEN="$OUT/csr0/admin-token"
            load csr --api "$(IFS=,; echo "${apis[*]}")" --admin "$(IFS=,; echo "${admins[*]}")" \
                --watch-pid "$(IFS=,; echo "${pids[*]}")" --streams 0 --csr-clients "$CSR_C" --csr-seconds "$CSR_SECONDS"
        else
            [ "$REPLICAS" = 3 ] && CSR_SETUP="one meshd on the file store (REPLICAS=3 was asked, but this meshd has no --store flag)"
            csr_one csr
        fi
        echo "setup=$CSR_SETUP" >> "$OUT/csr.kv"
        stop_all
        ;;
    esac
done

python3 - "$OUT" "$OUT/body.md" "$SCENARIOS" "$N" "$ROUNDS" "$BIG_N" "$BIG_NAMESPACES" "$SCOPE" <<'PY'
import sys, os
out, body, scenarios, n, rounds, big_n, big_ns, scope = sys.argv[1:9]
def kv(name):
    p = f"{out}/{name}.kv"
    d = {}
    if os.path.exists(p):
        for line in open(p):
            k, _, v = line.rstrip("\n").partition("=")
            if k: d[k] = v
    return d
def num(d, k, default=None):
    try: return float(d[k])
    except (KeyError, ValueError): return default
def ms(d, k):
    v = num(d, k)
    return "-" if v is None else f"{v:.0f} ms"
def meets(ok): return "**meets**" if ok else "**misses**"
L = []
def failed(d, name):
    if d.get("result") == "ok": return False
    L.append(f"**{name} did not complete** (push-load exit {d.get('rc', '?')}): {d.get('error') or 'see the summary below'}.")
    L.append("")
    return True
def applies_table(d):
    L.append("| apply | version | should get it | ACKed | p50 ACK | all ACKed | pushes to the others |")
    L.append("|---:|---:|---:|---:|---:|---:|---:|")
    k = 1
    while f"apply_{k}_version" in d:
        a = f"apply_{k}_"
        L.append(f"| {k} | {d[a+'version']} | {d[a+'expected']} | {d[a+'acked']} | {ms(d, a+'p50_ms')} | {ms(d, a+'all_ms')} | {d[a+'unexpected_pushes']} |")
        k += 1
    L.append("")
    if "pushes_delta" in d:
        L.append(f"Pushes received over the whole run: {d['pushes_full']} whole texts ({num(d, 'push_bytes_full', 0) / 1e3:,.0f} kB), "
                 f"{d['pushes_delta']} deltas ({num(d, 'push_bytes_delta', 0) / 1e3:,.0f} kB; trust bundle included in both).")
        L.append("")
def procs(d, rows):
    L.append("| | CPU (% of one core) | RSS | threads |")
    L.append("|---|---:|---:|---:|")
    for label, p in rows:
        if f"{p}_cpu_percent" in d:
            L.append(f"| {label} | {d[p+'_cpu_percent']}% ({d[p+'_cpu_seconds']} s over {d[p+'_window_seconds']} s) | {d[p+'_rss_mb']} MB | {d[p+'_threads']} |")
    L.append("")
scen = scenarios.split()
if "push" in scen:
    d = kv("push")
    L += [f"## 1. Config push: {n} sidecars, {rounds} applies", ""]
    if not failed(d, "The push scenario") or "apply_1_version" in d:
        p99 = num(d, "apply_all_acked_p99_ms")
        L.append(f"{d.get('streams_with_config', '?')} of {n} simulated sidecars in {d.get('namespaces', '?')} namespaces had their first config "
                 f"{d.get('connect_seconds', '?')} s after the first connect (one registered workload per namespace). Each apply changes the "
                 "VirtualService of one service, which every sidecar depends on (no Sidecar scope): all of them should get it.")
        L.append("")
        applies_table(d)
        if p99 is not None and d.get("applies_completed") == d.get("applies"):
            L.append(f"Time from the apply until all {n} ACKed, over the {d.get('applies_completed')} applies: **p50 {ms(d, 'apply_all_acked_p50_ms')}, "
                     f"p99 {ms(d, 'apply_all_acked_p99_ms')}** (bar: p99 under 1 s: {meets(p99 < 1000)}). Single ACKs over all applies: "
                     f"p50 {ms(d, 'ack_p50_ms')}, p99 {ms(d, 'ack_p99_ms')}.")
        else:
            L.append(f"Only {d.get('applies_completed', 0)} of {d.get('applies', rounds)} applies reached every sidecar within push-load's apply timeout: "
                     "bar: p99 under 1 s: **misses**.")
        L.append("")
        procs(d, [("meshd idle", "meshd_idle"), ("meshd during the applies", "meshd_apply"),
                  ("push-load idle", "load_idle"), ("push-load during the applies", "load_apply")])
if "scale" in scen:
    d = kv("scale")
    L += [f"## 2. {big_n} connected sidecars on one meshd", ""]
    if not failed(d, "The scale scenario") or "streams_with_config" in d:
        scoped = scope == "sidecar"
        L.append(f"{d.get('streams_with_config', '?')} of {big_n} simulated sidecars in {big_ns} namespaces had their first config "
                 f"{d.get('connect_seconds', '?')} s after the first connect. "
                 + ("Every namespace has a Sidecar resource (`egress: [{hosts: [\"./*\"]}]`), so an apply that changes the VirtualService "
                    "of the service in namespace load-0 should reach only load-0's sidecars; pushes to any other sidecar are counted."
                    if scoped else "No Sidecar scope (SCOPE=none): every sidecar depends on every service and should get each apply."))
        L.append("")
        if "apply_1_version" in d:
            applies_table(d)
        rss = max(num(d, "meshd_idle_rss_mb", 0), num(d, "meshd_apply_rss_mb_max", 0))
        allmax = num(d, "apply_all_acked_max_ms")
        done = d.get("applies_completed") == d.get("applies") and d.get("applies") not in (None, "0")
        L.append(f"meshd RSS: {d.get('meshd_idle_rss_mb', '-')} MB idle, at most {d.get('meshd_apply_rss_mb_max', '-')} MB during the applies "
                 f"(bar: under 1 GB: {meets(rss > 0 and rss < 1024)}). Time until every sidecar that should get an apply ACKed it: "
                 f"p50 {ms(d, 'apply_all_acked_p50_ms')}, max {ms(d, 'apply_all_acked_max_ms')} "
                 f"(bar: under 1 s: {meets(done and allmax is not None and allmax < 1000)}). "
                 f"Pushes to sidecars that should not get it: **{d.get('unexpected_pushes', '-')}**.")
        L.append("")
        procs(d, [("meshd idle", "meshd_idle"), ("meshd during the applies", "meshd_apply"),
                  ("push-load idle", "load_idle"), ("push-load during the applies", "load_apply")])
if "csr" in scen:
    d = kv("csr")
    L += ["## 3. CSR signing", ""]
    if not failed(d, "The CSR scenario") or "csr_signed" in d:
        L.append(f"{d.get('setup', '?')}; {d.get('csr_clients', '?')} keep-alive clients spread over {d.get('csr_api_addresses', '?')} API "
                 f"address(es) post the same CSR with a join token for {d.get('csr_seconds', '?')} s; every answer is a full signing.")
        L.append("")
        L.append("| setup | clients | signed | certificates/s | refused | connections broken | meshd CPU per certificate |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        rows = ([kv("csr1")] if os.path.exists(os.path.join(out, "csr1.kv")) else []) + [d]
        for r in rows:
            L.append(f"| {r.get('setup', '?')} | {r.get('csr_clients', '-')} | {r.get('csr_signed', '-')} | **{r.get('csr_per_second', '-')}** | "
                     f"{r.get('csr_refused', '-')} | {r.get('csr_connections_broken', '-')} | {r.get('meshd_cpu_us_per_certificate', '-')} µs |")
        L.append("")
        if len(rows) > 1:
            procs(rows[0], [("meshd (one, file store) while signing", "meshd_csr"), ("push-load while signing", "load_csr")])
        procs(d, [("meshd (all replicas) while signing", "meshd_csr"), ("push-load while signing", "load_csr")])
L += ["push-load: simulated sidecars on MeshIO event loops (a few threads, no thread per stream), each stream one keep-alive mTLS "
      "connection speaking the config stream with MeshControlWire's messages: GET /v1/config long poll, ACK, GET again with the "
      "new version and digest. An apply is timed from just before push-load posts it to the admin port until the ACK of a version at "
      "least the applied one came back from every sidecar that should get it (timestamps taken on the loops); p50/p99 over applies "
      "are nearest-rank. CPU is utime+stime from /proc over each window; RSS is VmRSS at its end.", ""]
L.append("<details><summary>push-load summaries (key=value)</summary>")
L.append("")
for s in (["csr1"] if os.path.exists(f"{out}/csr1.kv") else []) + scen:
    L.append(f"{s}:")
    L.append("```")
    L.append(open(f"{out}/{s}.kv").read().rstrip() if os.path.exists(f"{out}/{s}.kv") else "(none)")
    L.append("```")
L.append("</details>")
open(body, "w").write("\n".join(L) + "\n")
PY
prov_bins "$(readlink -f "$MESHD_BIN")" "$(readlink -f "$LOAD_BIN")"
prov_tools openssl
prov_write "$RESULTS" "meshd at scale: config push and CSR signing" "$OUT/body.md" \
    "meshd ($(nproc) cores shared with push-load, which simulates the sidecars) measured by \`bench/push-load\`: scenarios $SCENARIOS."
cat "$OUT/body.md" | sed -n '1,/<details>/p' | head -n -1 >&2
echo "push.sh: wrote $RESULTS" >&2
if [ -n "$FAILED" ]; then echo "push.sh: scenario(s) did not complete:$FAILED" >&2; exit 1; fi
