#!/usr/bin/env bash
# Overload: a sidecar driven far beyond its upstream's capacity (issue 9, DESIGN §8 "Overload:
# bounded queues and connection limits answer 503 quickly instead of growing memory").
#
# What it measures: one outbound sidecar (static config, concurrency 1, the one overloaded and
# measured) -> mTLS -> an inbound sidecar -> a slow app (tools/upstream.py, GET /slow?ms=SLOW_MS).
# Two hosts route there, each with DestinationRule connectionPool limits:
#   phase h1: host `pool`  (mTLS HTTP/1.1 hop, tcp.maxConnections 8, http.http1MaxPendingRequests
#             16) loaded by `h2load --h1 -c 200 -D PHASE_SECONDS`;
#   phase h2: host `inflight` (mTLS HTTP/2 hop, http.http2MaxRequests 16) loaded over h2c by
#             `h2load -c 20 -m 20 -D PHASE_SECONDS` (400 concurrent streams).
# Capacity is ~ limit / SLOW_MS, so nearly everything above it must be a fast local 503 with
# `x-mesh-response-flags: UO`. Reported per phase: 200 vs 503 (and anything else) counts with
# p50/p99/max latency per status (from h2load's per-request log), a sequential curl probe during
# the load that records each answer's status, flag and time (its 503 p99 is the latency a caller
# sees for a refused request), the sidecar's upstream_overflow counter, and VmRSS sampled every
# 0.5 s: before, max during each phase, after (memory must stay flat). Everything binds 127.0.0.1,
# every load is time-bounded (`h2load -D`, wrapped in `timeout`).
#
# Run:   bench/overload.sh                      (~60 s)
# Env:   PHASE_SECONDS=20 SLOW_MS=100 SIDECAR_BIN (default .build/release/sidecar)
#        MAX_SECONDS=300  RESULTS=bench/out/overload.md
# RESULTS is overwritten in one piece: a header naming the commit, machine, binaries, tools and
# these settings (bench/tools/provenance.sh), then the table.
set -euo pipefail
SCRIPT=overload.sh
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
# shellcheck source=bench/tools/common.sh
. "$HERE/tools/common.sh"
prov_init overload.sh "PHASE_SECONDS SLOW_MS MAX_SECONDS SIDECAR_BIN RESULTS"

PHASE_SECONDS="${PHASE_SECONDS:-20}"
SLOW_MS="${SLOW_MS:-100}"
MAX_SECONDS="${MAX_SECONDS:-300}"
RESULTS="${RESULTS:-$HERE/out/overload.md}"
mkdir -p "$(dirname "$RESULTS")"

setup_common
find_bins 0
for t in h2load curl python3; do command -v "$t" >/dev/null || die "'$t' not found"; done
alloc_ports 8
PKI="$TMPD/pki"
make_pki "$PKI" client server

next_port; APP=$PORT; next_port; OUTB=$PORT; next_port; ADM=$PORT; next_port; INB=$PORT; next_port; IADM=$PORT
start_proc app "$TMPD/app.log" python3 "$ROOT/tools/upstream.py" --port "$APP" --name slow
wait_port "$APP" 10
cat >"$TMPD/server.yaml" <<EOF
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {name: server, namespace: default}
spec:
  workload: {service: server, serviceAccount: server}
  concurrency: 1
  admin: {address: 127.0.0.1, port: $IADM}
  tls:
    certChain: $PKI/server/cert-chain.pem
    privateKey: $PKI/server/key.pem
    trustBundle: $PKI/root-cert.pem
  inbound:
    address: 127.0.0.1
    port: $INB
    appAddress: 127.0.0.1:$APP
    headerTimeout: 10s
EOF
start_proc server "$TMPD/server.log" "$SIDECAR_BIN" --config "$TMPD/server.yaml"
wait_http "http://127.0.0.1:$IADM/ready" 20 server

cat >"$TMPD/front.yaml" <<EOF
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {name: front, namespace: default}
spec:
  workload: {service: front}
  concurrency: 1
  admin: {address: 127.0.0.1, port: $ADM}
  tls:
    certChain: $PKI/client/cert-chain.pem
    privateKey: $PKI/client/key.pem
    trustBundle: $PKI/root-cert.pem
  outbound:
    address: 127.0.0.1
    port: $OUTB
    headerTimeout: 10s
  clusters:
    - name: pool
      tls: ISTIO_MUTUAL
      subjectAltNames: [spiffe://cluster.local/ns/default/sa/server]
      protocol: HTTP1
      endpoints:
        - 127.0.0.1:$INB
    - name: inflight
      tls: ISTIO_MUTUAL
      subjectAltNames: [spiffe://cluster.local/ns/default/sa/server]
      endpoints:
        - 127.0.0.1:$INB
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: pool}
spec:
  hosts: [pool]
  http:
  - name: main
    route:
    - destination: {host: pool}
    timeout: 30s
    retries: {attempts: 0}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pool}
spec:
  host: pool
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 8}
      http: {http1MaxPendingRequests: 16}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: inflight}
spec:
  hosts: [inflight]
  http:
  - name: main
    route:
    - destination: {host: inflight}
    timeout: 30s
    retries: {attempts: 0}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: inflight}
spec:
  host: inflight
  trafficPolicy:
    connectionPool:
      http: {http2MaxRequests: 16}
EOF
start_proc sidecar "$TMPD/sidecar.log" "$SIDECAR_BIN" --config "$TMPD/front.yaml"
wait_http "http://127.0.0.1:$ADM/ready" 20 sidecar
SPID="${PID_OF[sidecar]}"
for h in pool inflight; do
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: $h" "http://127.0.0.1:$OUTB/slow?ms=1")"
    [ "$code" = 200 ] || die "host $h: GET /slow through the sidecar answered $code"
done

# RSS sampler: "seconds-since-start phase rss_kb" every 0.5 s
PHASE_FILE="$TMPD/phase"; echo before >"$PHASE_FILE"
RSS_LOG="$TMPD/rss.tsv"
T0=$(date +%s.%N)
( while kill -0 "$SPID" 2>/dev/null; do
      printf '%s\t%s\t%s\n' "$(awk -v a="$(date +%s.%N)" -v b="$T0" 'BEGIN {printf "%.1f", a - b}')" "$(cat "$PHASE_FILE")" "$(rss_kb "$SPID")"
      sleep 0.5
  done ) >"$RSS_LOG" 2>/dev/null &
ALL_PIDS+=("$!")
sleep 3

# probe HOST OUTFILE: sequential curls until the phase file changes; "status flag seconds"
probe() {
    local host="$1" out="$2" phase; phase="$(cat "$PHASE_FILE")"
    sleep 1   # let the load ramp up first
    while [ "$(cat "$PHASE_FILE")" = "$phase" ]; do
        curl -s -o /dev/null --max-time 10 -H "Host: $host" \
            -w '%{http_code} %header{x-mesh-response-flags} %{time_total}\n' \
            "http://127.0.0.1:$OUTB/slow?ms=$SLOW_MS" >>"$out" 2>/dev/null || echo "000 - 10" >>"$out"
        sleep 0.02
    done
}

RAWJ="$TMPD/phases.jsonl"; : >"$RAWJ"
run_phase() { # NAME HOST h2load-args...
    local name="$1" host="$2"; shift 2
    local ov0 rq0; ov0="$(stat_of "$ADM" upstream_overflow)"; rq0="$(stat_of "$ADM" requests_total)"
    echo "$name" >"$PHASE_FILE"
    note "phase $name: h2load $* -D $PHASE_SECONDS against host $host (/slow?ms=$SLOW_MS)"
    probe "$host" "$TMPD/probe-$name.txt" &
    local probe_pid=$!; ALL_PIDS+=("$probe_pid")
    rm -f "$TMPD/h2load-$name.log"
    timeout -k 5 $(( PHASE_SECONDS + 40 )) h2load "$@" -D "$PHASE_SECONDS" -T 20 -H ":authority: $host" \
        --log-file "$TMPD/h2load-$name.log" "http://127.0.0.1:$OUTB/slow?ms=$SLOW_MS" >"$TMPD/h2load-$name.txt" 2>&1 \
        || { tail -n 20 "$TMPD/h2load-$name.txt" >&2; note "phase $name: h2load exited non-zero"; }
    echo "gap-after-$name" >"$PHASE_FILE"
    wait "$probe_pid" 2>/dev/null || true
    alive_or_die sidecar
    local ov1 rq1; ov1="$(stat_of "$ADM" upstream_overflow)"; rq1="$(stat_of "$ADM" requests_total)"
    python3 - "$name" "$host" "$TMPD/h2load-$name.txt" "$TMPD/probe-$name.txt" "$((ov1 - ov0))" "$((rq1 - rq0))" \
        "$(python3 "$HERE/tools/latency.py" "$TMPD/h2load-$name.log")" "$*" >>"$RAWJ" <<'EOF'
import json, re, sys
name, host, txt, probe, overflow, reqs, lat, args = sys.argv[1:]
s = open(txt).read()
m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", s)
m2 = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", s)
m3 = re.search(r"finished in [^,]+, ([\d.]+) req/s", s)
pr = [l.split() for l in open(probe) if l.strip()] if __import__("os").path.exists(probe) else []
p503 = sorted(float(x[-1]) for x in pr if x[0] == "503")
p200 = sorted(float(x[-1]) for x in pr if x[0] == "200")
def pct(v, q):
    if not v: return None
    k = max(0, min(len(v) - 1, int(round(q / 100.0 * len(v) + 0.5)) - 1))
    return round(v[k] * 1000, 2)
flags = {}
for x in pr:
    k = f"{x[0]} {x[1] if len(x) > 2 else '-'}"
    flags[k] = flags.get(k, 0) + 1
out = {"phase": name, "host": host, "h2load": args,
       "total": int(m.group(1)) if m else None, "done": int(m.group(3)) if m else None,
       "errored": int(m.group(6)) if m else None, "timeout": int(m.group(7)) if m else None,
       "s2xx": int(m2.group(1)) if m2 else None, "s4xx": int(m2.group(3)) if m2 else None,
       "s5xx": int(m2.group(4)) if m2 else None, "rps": float(m3.group(1)) if m3 else None,
       "by_status": json.loads(lat), "probe_answers": flags,
       "probe_503_p50_ms": pct(p503, 50), "probe_503_p99_ms": pct(p503, 99), "probe_503_max_ms": round(p503[-1] * 1000, 2) if p503 else None,
       "probe_200_p50_ms": pct(p200, 50), "overflow_counter": int(overflow), "sidecar_requests": int(reqs)}
print(json.dumps(out))
EOF
    tail -n 1 "$RAWJ" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("overload.sh: phase %s: %s req/s, 2xx %s, 5xx %s, errored %s; per status %s; probe %s, 503 p99 %s ms" % (d["phase"], d["rps"], d["s2xx"], d["s5xx"], d["errored"], d["by_status"], d["probe_answers"], d["probe_503_p99_ms"]))' >&2
    sleep 3
}

run_phase h1 pool --h1 -t 1 -c 200
run_phase h2 inflight -t 1 -c 20 -m 20
echo after >"$PHASE_FILE"
sleep 5
alive_or_die sidecar
echo done >"$PHASE_FILE"
sleep 0.6

prov_tools h2load curl python3
BODY="$TMPD/body.md"
python3 - "$RAWJ" "$RSS_LOG" "$BODY" "$SLOW_MS" "$PHASE_SECONDS" "$(hwm_kb "$SPID")" <<'EOF'
import json, sys
rawj, rsslog, results, slow, secs, hwm = sys.argv[1:]
phases = [json.loads(l) for l in open(rawj) if l.strip()]
rss = [l.rstrip("\n").split("\t") for l in open(rsslog) if l.count("\t") == 2]
def rs(ph):
    v = [int(r[2]) for r in rss if r[1] == ph and r[2].isdigit()]
    return v
def mbs(v): return f"{v / 1024:.1f}" if v else "-"
before = rs("before"); after = rs("after")
out = [f"- outbound sidecar (concurrency 1, measured) -> mTLS -> inbound sidecar -> tools/upstream.py `GET /slow?ms={slow}`; each phase {secs} s of h2load; "
       "retries off on both routes", "",
       "| phase | limits | load | req/s | 200 | 503 | other/errored | 200 p50 / p99 ms | 503 p50 / p99 / max ms | probe: answers | probe 503 p99 ms | upstream_overflow |",
       "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
lim = {"pool": "maxConnections 8, http1MaxPendingRequests 16 (mTLS HTTP/1.1 hop)",
       "inflight": "http2MaxRequests 16 (mTLS HTTP/2 hop)"}
for p in phases:
    bs = p["by_status"]
    s200 = bs.get("200", {}); s503 = bs.get("503", {})
    other = sum(v["count"] for k, v in bs.items() if k not in ("200", "503")) + (p["errored"] or 0)
    out.append(f"| {p['phase']} | {lim[p['host']]} | `h2load {p['h2load']}` | {p['rps']} | {s200.get('count', 0)} | {s503.get('count', 0)} | {other} | "
               f"{s200.get('p50_ms', '-')} / {s200.get('p99_ms', '-')} | {s503.get('p50_ms', '-')} / {s503.get('p99_ms', '-')} / {s503.get('max_ms', '-')} | "
               f"{', '.join(f'{k}: {v}' for k, v in sorted(p['probe_answers'].items()))} | {p['probe_503_p99_ms']} | {p['overflow_counter']} |")
out.append("")
line = f"Sidecar VmRSS: before {mbs(max(before) if before else 0)} MB"
for p in phases:
    d = rs(p["phase"])
    if d:
        line += f"; during {p['phase']}: first {mbs(d[0])}, max {mbs(max(d))}, last {mbs(d[-1])} MB"
line += f"; after {mbs(after[-1] if after else 0)} MB; VmHWM {mbs(int(hwm))} MB."
out.append(line)
out.append("")
out.append("Counts and latencies per status from h2load's per-request log (`-1` = no response). The probe is a sequential "
           "curl (`%{http_code} %header{x-mesh-response-flags} %{time_total}`) on its own connection during the load.")
text = "\n".join(out) + "\n"
open(results, "w").write(text)
print(text)
EOF
prov_write "$RESULTS" "Overload: connection-pool limits under load far past capacity" "$BODY" \
    "One outbound sidecar (one worker) driven far past its upstream's capacity: the excess must be answered 503 \`UO\` at once, with flat memory."
note "wrote $RESULTS"
