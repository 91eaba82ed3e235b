#!/usr/bin/env bash
# Fault scenarios against the release sidecar and meshd (issue 9, DESIGN §5 and §8). Each
# scenario reports requests sent and failed and the kinds of failure; RESULTS gets a table.
#
#  a  upstream killed mid-response. bench/tools/fault_upstream.py serves each connection from a
#     forked process that sends a response partly and then SIGKILLs itself: `/cl` declares
#     Content-Length 100000 and sends 30000 bytes, `/chunked` sends 5 chunks and no last chunk.
#     Reached through one outbound sidecar two ways: host `direct` (plain HTTP/1.1 upstream) and
#     host `meshed` (mTLS HTTP/2 hop to an inbound sidecar whose app is the dying one). Clients:
#     curl HTTP/1.1, curl h2c (prior knowledge), nghttp -v (h2c). A clean error is curl exit 18
#     (partial), 56 (recv failure), 92 (HTTP/2 stream not closed cleanly), 16 (HTTP/2 framing),
#     52 (empty reply), or nghttp seeing RST_STREAM / GOAWAY; curl exit 0 or nghttp seeing
#     END_STREAM is a truncated body passed off as complete: a BUG. /ok (full body) is the control.
#     (h2c clients go to `meshed` only: the sidecar refuses h2c to an HTTP/1.1 cluster with 502 UPE,
#     checked once and reported.)
#  b  upstream that accepts and never answers (`/hang`), route timeout 1s: each request must get
#     504 with x-mesh-response-flags UT after ~1 s. Host `hang` (plain HTTP/1.1 upstream, curl
#     HTTP/1.1) and `hangm` (via the inbound sidecar; curl HTTP/1.1 and h2c), 10 concurrent each,
#     2 rounds.
#  c  meshd SIGKILLed and restarted MESHD_RESTARTS times (default 5) under continuous traffic
#     (bench/tools/loadgen.py: 2 keep-alive + 2 new-connection-per-request clients) between two
#     mesh-mode sidecars (productpage -> reviews); after each restart: time until both sidecars
#     are connected again and a `meshctl apply --wait` round trip. Expect 0 failed requests.
#  d  one of two endpoints' sidecars stopped while callers keep sending: caller sidecar ->
#     (mTLS) -> 2 inbound sidecars + apps, route with retries (connect-failure, refused-stream,
#     reset, 503) and outlier detection. Endpoint 1's sidecar is sent SIGTERM, restarted, then
#     SIGKILL, restarted. Reports sent/failed per window, the worst latency right after each stop
#     (how fast callers failed over) and when the restarted endpoint got traffic again.
#
# Run:   bench/faults.sh                          (~3 minutes)
#        SCENARIOS="a b" REPEAT=10 bench/faults.sh
# Env:   SCENARIOS="a b c d"  REPEAT=25 (per client and case in a)  MESHD_RESTARTS=5
#        D_CYCLES=1 (SIGTERM + SIGKILL pairs in d)  LOAD_KEEPALIVE=2 LOAD_FRESH=2 (clients in c, d)
#        SIDECAR_BIN / MESHD_BIN / MESHCTL_BIN (default .build/release/*; build with
#        `swift build -c release --static-swift-stdlib`)  MAX_SECONDS=900
#        RESULTS=bench/out/faults.md (overwritten in one piece: a header naming the commit,
#        machine, binaries, tools and these settings, then the tables)
# Everything binds 127.0.0.1; every child is stopped on exit (trap), keys live in a temp dir.
set -euo pipefail
SCRIPT=faults.sh
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
# shellcheck source=bench/tools/common.sh
. "$HERE/tools/common.sh"
prov_init faults.sh "SCENARIOS REPEAT MESHD_RESTARTS D_CYCLES LOAD_KEEPALIVE LOAD_FRESH MAX_SECONDS SIDECAR_BIN MESHD_BIN MESHCTL_BIN RESULTS"

SCENARIOS="${SCENARIOS:-a b c d}"
REPEAT="${REPEAT:-25}"
MESHD_RESTARTS="${MESHD_RESTARTS:-5}"
D_CYCLES="${D_CYCLES:-1}"
LOAD_KEEPALIVE="${LOAD_KEEPALIVE:-2}"   # loadgen clients in c and d: keep-alive ones ...
LOAD_FRESH="${LOAD_FRESH:-2}"           # ... and new-connection-per-request ones
MAX_SECONDS="${MAX_SECONDS:-900}"
RESULTS="${RESULTS:-$HERE/out/faults.md}"
mkdir -p "$(dirname "$RESULTS")"

setup_common
find_bins 0 1
for t in curl nghttp python3; do command -v "$t" >/dev/null || die "'$t' not found (apt-get install curl nghttp2-client)"; done
PKI="$TMPD/pki"
make_pki "$PKI" client server
alloc_ports 40
JSONL="$TMPD/faults.jsonl"; : >"$JSONL"
BUGS="$TMPD/bugs.txt"; : >"$BUGS"
want() { case " $SCENARIOS " in *" $1 "*) return 0;; esac; return 1; }

server_yaml() { # NAME INBOUND ADMIN APP [EXTRA]
    cat <<EOF
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {name: $1, namespace: default}
spec:
  workload: {service: server, serviceAccount: server}
  concurrency: 1
  drainTimeout: 5s
  admin: {address: 127.0.0.1, port: $3}
  tls:
    certChain: $PKI/server/cert-chain.pem
    privateKey: $PKI/server/key.pem
    trustBundle: $PKI/root-cert.pem
  inbound:
    address: 127.0.0.1
    port: $2
    appAddress: 127.0.0.1:$4
    headerTimeout: 10s
${5:-}
EOF
}
client_tls() {
    cat <<EOF
  tls:
    certChain: $PKI/client/cert-chain.pem
    privateKey: $PKI/client/key.pem
    trustBundle: $PKI/root-cert.pem
EOF
}

# ================================================================== a + b: one outbound sidecar
if want a || want b; then
    next_port; FAPP=$PORT; next_port; IN_A=$PORT; next_port; ADM_IN_A=$PORT; next_port; OUT_A=$PORT; next_port; ADM_OUT_A=$PORT
    start_proc fault_app "$TMPD/fault-app.log" python3 "$HERE/tools/fault_upstream.py" --port "$FAPP"
    wait_port "$FAPP" 10
    server_yaml server-a "$IN_A" "$ADM_IN_A" "$FAPP" >"$TMPD/server-a.yaml"
    cat >"$TMPD/front-a.yaml" <<EOF
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {name: front-a, namespace: default}
spec:
  workload: {service: client, serviceAccount: client}
  concurrency: 1
  admin: {address: 127.0.0.1, port: $ADM_OUT_A}
$(client_tls)
  outbound:
    address: 127.0.0.1
    port: $OUT_A
    headerTimeout: 10s
  clusters:
    - name: direct
      tls: DISABLE
      protocol: HTTP1
      endpoints: [127.0.0.1:$FAPP]
    - name: meshed
      tls: ISTIO_MUTUAL
      subjectAltNames: [spiffe://cluster.local/ns/default/sa/server]
      endpoints: [127.0.0.1:$IN_A]
    - name: hang
      tls: DISABLE
      protocol: HTTP1
      endpoints: [127.0.0.1:$FAPP]
    - name: hangm
      tls: ISTIO_MUTUAL
      subjectAltNames: [spiffe://cluster.local/ns/default/sa/server]
      endpoints: [127.0.0.1:$IN_A]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: direct}
spec:
  hosts: [direct]
  http:
  - route:
    - destination: {host: direct}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: meshed}
spec:
  hosts: [meshed]
  http:
  - route:
    - destination: {host: meshed}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hang}
spec:
  hosts: [hang]
  http:
  - name: main
    route:
    - destination: {host: hang}
    timeout: 1s
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hangm}
spec:
  hosts: [hangm]
  http:
  - name: main
    route:
    - destination: {host: hangm}
    timeout: 1s
EOF
    start_proc server_a "$TMPD/server-a.log" "$SIDECAR_BIN" --config "$TMPD/server-a.yaml"
    start_proc front_a "$TMPD/front-a.log" "$SIDECAR_BIN" --config "$TMPD/front-a.yaml"
    wait_http "http://127.0.0.1:$ADM_IN_A/ready" 20 server_a
    wait_http "http://127.0.0.1:$ADM_OUT_A/ready" 20 front_a
    for h in direct meshed; do
        n="$(curl -s --max-time 5 -H "Host: $h" "http://127.0.0.1:$OUT_A/ok?len=100000" | wc -c)"
        [ "$n" = 100000 ] || die "host $h: /ok through the sidecar returned $n bytes"
    done
fi

if want a; then
    note "a: upstream killed mid-response, $REPEAT times per host x body x client"
    A_TSV="$TMPD/a.tsv"; : >"$A_TSV"   # host case client outcome detail
    one_curl() { # HOST PATH PROTO -> "rc code size"
        local proto=()
        [ "$3" = h2 ] && proto=(--http2-prior-knowledge)
        local out rc=0
        out="$(curl -s "${proto[@]}" -o /dev/null --max-time 10 -w '%{http_code} %{size_download}' \
               -H "Host: $1" "http://127.0.0.1:$OUT_A$2" 2>/dev/null)" || rc=$?
        echo "$rc $out"
    }
    one_nghttp() { # HOST PATH -> outcome
        local out
        out="$(timeout 15 nghttp -v -t 10 -H ":authority: $1" "http://127.0.0.1:$OUT_A$2" 2>&1 || true)"
        # the response stream is the one our HEADERS frame opened (13 with nghttp's priority tree)
        local st; st="$(grep -o 'recv (stream_id=13) :status: [0-9]*' <<<"$out" | head -n 1 | awk '{print $NF}')"
        if grep -q "recv RST_STREAM" <<<"$out"; then echo "rst_stream${st:+ after status $st}"
        elif grep -Eq "recv (DATA|HEADERS) frame <[^>]*flags=0x0[15], stream_id=13>" <<<"$out"; then
            if grep -q "send RST_STREAM" <<<"$out"; then echo "client_detected_length_mismatch"; else echo "end_stream status ${st:-none}"; fi
        elif grep -q "recv GOAWAY" <<<"$out"; then echo "goaway${st:+ after status $st}"
        else echo "closed${st:+ after status $st}"; fi
    }
    # h2c from the client to an HTTP/1.1 cluster (`direct`) is refused by the sidecar with 502 UPE
    # ("the upstream of this route does not speak HTTP/2"), even for a healthy response: checked
    # once here and reported; the h2 clients of this scenario therefore use the `meshed` host.
    read -r rc code size <<<"$(one_curl direct "/ok?len=100000" h2)"
    if [ "$code" != 200 ]; then
        echo "a: h2c client -> outbound sidecar -> HTTP/1.1 cluster (tls DISABLE, protocol HTTP1): a healthy GET /ok answers HTTP $code ($size bytes, x-mesh-response-flags UPE, 'the upstream of this route does not speak HTTP/2') instead of being bridged to HTTP/1.1. Reproduce: curl --http2-prior-knowledge -H 'Host: direct' 'http://127.0.0.1:PORT/ok?len=100000'" >>"$BUGS"
        DIRECT_PROTOS="h1"
    else
        DIRECT_PROTOS="h1 h2"
    fi
    for h in direct meshed; do
        if [ $h = direct ]; then protos="$DIRECT_PROTOS"; else protos="h1 h2"; fi
        for case in cl chunked; do
            if [ $case = cl ]; then path="/cl?len=100000&send=30000"; else path="/chunked?send=5"; fi
            for i in $(seq 1 "$REPEAT"); do
                for proto in $protos; do
                    read -r rc code size <<<"$(one_curl "$h" "$path" "$proto")"
                    if [ "$rc" = 0 ]; then o="exit 0 http $code"; else o="exit $rc"; fi
                    printf '%s\t%s\tcurl-%s\t%s\t%s\n' "$h" "$case" "$proto" "$o" "http=$code bytes=$size" >>"$A_TSV"
                    if [ "$rc" = 0 ] && [ "${code:0:1}" = 2 ]; then
                        echo "a: host $h $case curl-$proto: exit 0 (HTTP $code, $size bytes) for a response whose upstream died mid-body: truncated body passed as complete. Reproduce: curl $([ $proto = h2 ] && echo --http2-prior-knowledge) -H 'Host: $h' 'http://127.0.0.1:PORT$path'" >>"$BUGS"
                    fi
                done
                if [ $(( i % 5 )) = 1 ] && [[ " $protos " == *" h2 "* ]]; then   # nghttp on every 5th round
                    o="$(one_nghttp "$h" "$path")"
                    printf '%s\t%s\tnghttp\t%s\t-\n' "$h" "$case" "$o" >>"$A_TSV"
                    case "$o" in "end_stream status 2"*)
                        echo "a: host $h $case nghttp: stream ended cleanly (END_STREAM, no reset) although the upstream died mid-body. Reproduce: nghttp -v -H ':authority: $h' 'http://127.0.0.1:PORT$path'" >>"$BUGS";;
                    esac
                fi
            done
        done
        # controls: a full body must arrive complete
        for proto in $protos; do
            for i in 1 2 3; do
                read -r rc code size <<<"$(one_curl "$h" "/ok?len=100000" "$proto")"
                if [ "$rc" = 0 ] && [ "$code" = 200 ] && [ "$size" = 100000 ]; then o="complete 200"; else o="exit $rc http $code bytes $size"; fi
                printf '%s\tcontrol\tcurl-%s\t%s\t%s\n' "$h" "$proto" "$o" "http=$code bytes=$size" >>"$A_TSV"
                [ "$o" = "complete 200" ] || echo "a: control host $h curl-$proto: GET /ok (a complete 100000-byte response) got $o. Reproduce: curl $([ $proto = h2 ] && echo --http2-prior-knowledge) -H 'Host: $h' 'http://127.0.0.1:PORT/ok?len=100000'" >>"$BUGS"
            done
        done
    done
    alive_or_die front_a server_a
    python3 - "$A_TSV" "$REPEAT" >>"$JSONL" <<'EOF'
import json, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
groups = {}
for h, case, client, outcome, detail in rows:
    g = groups.setdefault((h, case, client), {"sent": 0, "kinds": {}})
    g["sent"] += 1
    g["kinds"][outcome] = g["kinds"].get(outcome, 0) + 1
out = []
for (h, case, client), g in groups.items():
    if case == "control":
        ok = g["kinds"].get("complete 200", 0)
        verdict = "ok" if ok == g["sent"] else "CONTROL FAILED"
        failed = g["sent"] - ok
    else:
        bad = sum(v for k, v in g["kinds"].items() if k.startswith("exit 0 http 2") or k.startswith("end_stream status 2"))
        local5 = sum(v for k, v in g["kinds"].items() if k.startswith("exit 0 http 5") or k.startswith("end_stream status 5"))
        # "failed" = requests that ended in an error at the client (the expected outcome here)
        failed = g["sent"] - bad
        verdict = ("clean error every time" + (f" ({local5} as a local 5xx before any body)" if local5 else "")) if bad == 0 \
            else f"BUG: {bad} truncated bodies passed as complete"
    out.append({"scenario": "a", "host": h, "case": case, "client": client, "sent": g["sent"], "failed": failed,
                "kinds": g["kinds"], "verdict": verdict})
for o in out:
    print(json.dumps(o))
EOF
    grep '"scenario": "a"' "$JSONL" | python3 -c '
import json, sys
for l in sys.stdin:
    d = json.loads(l)
    print("faults.sh: a %-6s %-8s %-8s sent %3d client-side errors %3d %s -> %s" % (d["host"], d["case"], d["client"], d["sent"], d["failed"], d["kinds"], d["verdict"]))' >&2
fi

if want b; then
    note "b: upstream that never answers, route timeout 1s"
    B_TSV="$TMPD/b.tsv"; : >"$B_TSV"
    for round in 1 2; do
        bpids=()
        for i in $(seq 1 10); do
            for hp in hang:h1 hangm:h1 hangm:h2; do
                (
                    host="${hp%:*}"; proto="${hp#*:}"
                    p=(); [ $proto = h2 ] && p=(--http2-prior-knowledge)
                    rc=0
                    o="$(curl -s "${p[@]}" -o /dev/null --max-time 15 -H "Host: $host" \
                        -w '%{http_code} %header{x-mesh-response-flags} %{time_total}' "http://127.0.0.1:$OUT_A/hang")" || rc=$?
                    printf '%s\t%s\t%s\n' "$hp" "$rc" "$o" >>"$B_TSV"
                ) &
                bpids+=("$!")
            done
        done
        for pid in "${bpids[@]}"; do wait "$pid" 2>/dev/null || true; done
    done
    alive_or_die front_a
    python3 - "$B_TSV" >>"$JSONL" <<'EOF'
import json, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
for hp in ("hang:h1", "hangm:h1", "hangm:h2"):
    rs = [r for r in rows if r[0] == hp]
    kinds, lat = {}, []
    for _, rc, o in rs:
        f = o.split()
        code, flag, t = (f + ["-", "-", "0"])[:3] if len(f) >= 3 else (f[0] if f else "000", "-", f[-1] if f else "0")
        k = f"{code} {flag}" if rc == "0" else f"curl exit {rc}"
        kinds[k] = kinds.get(k, 0) + 1
        lat.append(float(t))
    lat.sort()
    ok = kinds.get("504 UT", 0)
    host, proto = hp.split(":")
    print(json.dumps({"scenario": "b", "host": host, "client": "curl-" + proto, "sent": len(rs), "failed": len(rs) - ok,
                      "kinds": kinds, "latency_s": {"min": lat[0], "p50": lat[len(lat) // 2], "max": lat[-1]} if lat else {},
                      "verdict": "504 UT within the timeout every time" if ok == len(rs) and lat and lat[-1] < 2.0 else "UNEXPECTED"}))
EOF
    grep '"scenario": "b"' "$JSONL" | python3 -c '
import json, sys
for l in sys.stdin:
    d = json.loads(l)
    print("faults.sh: b %s %s sent %d answers %s latency %s -> %s" % (d["host"], d["client"], d["sent"], d["kinds"], d["latency_s"], d["verdict"]))' >&2
fi
if want a || want b; then
    stop_proc front_a TERM; stop_proc server_a TERM; stop_proc fault_app TERM
fi

# loadgen helpers ---------------------------------------------------------------------------
start_load() { # NAME PORT HOST
    rm -f "$TMPD/$1.stop"
    start_proc "load_$1" "$TMPD/$1.loadgen.log" python3 "$HERE/tools/loadgen.py" --port "$2" --host "$3" \
        --keepalive "$LOAD_KEEPALIVE" --fresh "$LOAD_FRESH" --pause-ms 5 --duration 300 --stop-file "$TMPD/$1.stop" \
        --out "$TMPD/$1.requests.tsv" --summary "$TMPD/$1.summary.json"
}
stop_load() { # NAME
    touch "$TMPD/$1.stop"
    wait "${PID_OF[load_$1]}" 2>/dev/null || true
    [ -s "$TMPD/$1.summary.json" ] || die "loadgen $1 wrote no summary (see $TMPD/$1.loadgen.log)"
}
now() { date +%s.%N; }

# ================================================================== c: meshd killed and restarted
if want c; then
    note "c: meshd SIGKILLed and restarted $MESHD_RESTARTS times under traffic"
    next_port; API=$PORT; next_port; MADM=$PORT; next_port; RAPP=$PORT
    next_port; R_ADM=$PORT; next_port; R_IN=$PORT; next_port; R_OUT=$PORT
    next_port; P_ADM=$PORT; next_port; P_IN=$PORT; next_port; P_OUT=$PORT
    STATE="$TMPD/meshd-state"; mkdir -p "$STATE"
    start_meshd() {
        start_proc meshd "$TMPD/meshd.log" "$MESHD_BIN" --state-dir "$STATE" --api-port "$API" --admin-port "$MADM" --cert-ttl 1h
        wait_http "http://127.0.0.1:$MADM/ready" 30 meshd
    }
    ctl() { timeout 60 "$MESHCTL_BIN" --meshd "http://127.0.0.1:$MADM" --admin-token-file "$STATE/admin-token" "$@"; }
    start_meshd
    start_proc app_reviews "$TMPD/app-reviews.log" python3 "$ROOT/tools/upstream.py" --port "$RAPP" --name reviews
    wait_port "$RAPP" 10
    mesh_sidecar() { # NAME SA ADMIN IN OUT [--app-port P]
        local name="$1" sa="$2" adm="$3" in="$4" out="$5"; shift 5
        start_proc "$name" "$TMPD/$name.log" "$SIDECAR_BIN" --meshd "127.0.0.1:$API" --root-cert "$STATE/root-cert.pem" \
            --token "$(ctl token create --namespace default --service-account "$sa")" --service "$sa" \
            --admin-port "$adm" --inbound-port "$in" --outbound-port "$out" --concurrency 1 "$@"
        wait_http "http://127.0.0.1:$adm/ready" 30 "$name"
    }
    mesh_sidecar reviews reviews "$R_ADM" "$R_IN" "$R_OUT" --app-port "$RAPP"
    mesh_sidecar productpage productpage "$P_ADM" "$P_IN" "$P_OUT"
    end=$(( $(date +%s) + 30 ))
    until curl -s --max-time 2 -H "Host: reviews" "http://127.0.0.1:$P_OUT/" | grep -q "hello from reviews"; do
        [ "$(date +%s)" -ge "$end" ] && die "c: productpage -> reviews never routed"
        sleep 0.2
    done
    vs() { # TIMEOUT -> a VirtualService file
        cat >"$TMPD/vs-$1.yaml" <<EOF
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: main
    route:
    - destination: {host: reviews}
    timeout: $1
EOF
        echo "$TMPD/vs-$1.yaml"
    }
    ctl apply -f "$(vs 10s)" --wait >/dev/null
    C_EVENTS="$TMPD/c.events"; : >"$C_EVENTS"
    start_load meshd "$P_OUT" reviews
    sleep 3
    for i in $(seq 1 "$MESHD_RESTARTS"); do
        tk="$(now)"
        kill -KILL "${PID_OF[meshd]}"; wait "${PID_OF[meshd]}" 2>/dev/null || true
        sleep 2
        t1="$(now)"
        start_meshd
        t2="$(now)"
        end=$(( $(date +%s) + 60 ))
        until [ "$(ctl status 2>/dev/null | grep -c $'\tconnected\t' || true)" -ge 2 ]; do
            [ "$(date +%s)" -ge "$end" ] && { echo "c: restart $i: the sidecars did not reconnect to meshd within 60 s" >>"$BUGS"; break; }
            sleep 0.1
        done
        t3="$(now)"
        rc=0; ctl apply -f "$(vs "$((10 + i))s")" --wait >"$TMPD/apply-$i.log" 2>&1 || rc=$?
        t4="$(now)"
        [ $rc = 0 ] || echo "c: restart $i: meshctl apply --wait failed after the restart: $(tail -n 2 "$TMPD/apply-$i.log")" >>"$BUGS"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$i" "$tk" "$t1" "$t2" "$t3" "$t4" "$rc" >>"$C_EVENTS"
        awk -v i="$i" -v a="$t1" -v b="$t2" -v c="$t3" -v d="$t4" -v rc="$rc" 'BEGIN {printf "faults.sh: c restart %d: meshd ready %.2f s after start, sidecars reconnected after %.2f s more, apply --wait %.2f s (rc %s)\n", i, b-a, c-b, d-c, rc}' >&2
        alive_or_die reviews productpage
        sleep 3
    done
    sleep 2
    stop_load meshd
    alive_or_die reviews productpage
    python3 - "$TMPD/meshd.summary.json" "$TMPD/meshd.requests.tsv" "$C_EVENTS" "$MESHD_RESTARTS" >>"$JSONL" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
ev = [l.split("\t") for l in open(sys.argv[3]) if l.strip()]
fails = [l.split("\t") for l in open(sys.argv[2]) if l.strip() and l.split("\t")[2] != "200"]
t0 = s["t0_wall"]
first_fail = [round(float(f[0]), 2) for f in fails[:5]]
rec = [round(float(e[4]) - float(e[3]), 2) for e in ev]
ready = [round(float(e[3]) - float(e[2]), 2) for e in ev]
apply_s = [round(float(e[5]) - float(e[4]), 2) for e in ev]
print(json.dumps({"scenario": "c", "restarts": int(sys.argv[4]), "sent": s["sent"], "failed": s["failed"], "kinds": s["kinds"],
                  "failures": [{"at_s": float(f[0]), "ms": float(f[1]), "outcome": f[2], "detail": f[3].strip() if len(f) > 3 else "-"} for f in fails[:20]],
                  "seconds": s["seconds"], "meshd_ready_s": ready, "reconnect_s": rec, "apply_wait_s": apply_s,
                  "apply_failures": sum(1 for e in ev if e[6].strip() != "0"), "first_failures_at_s": first_fail,
                  "verdict": "0 failed" if s["failed"] == 0 else f"BUG: {s['failed']} failed"}))
EOF
    tail -n 1 "$JSONL" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("faults.sh: c sent %d failed %d kinds %s; reconnect s %s; apply --wait s %s -> %s" % (d["sent"], d["failed"], d["kinds"], d["reconnect_s"], d["apply_wait_s"], d["verdict"]))' >&2
    if [ "$(tail -n 1 "$JSONL" | python3 -c 'import json,sys; print(json.load(sys.stdin)["failed"])')" != 0 ]; then
        echo "c: requests failed while meshd was killed/restarted: $(tail -n 1 "$JSONL")" >>"$BUGS"
    fi
    for n in productpage reviews app_reviews meshd; do stop_proc "$n" TERM; done
fi

# ================================================================== d: endpoint sidecar restarted
if want d; then
    note "d: one of two endpoint sidecars stopped (SIGTERM, then SIGKILL) and restarted under traffic"
    next_port; E1=$PORT; next_port; E2=$PORT; next_port; I1=$PORT; next_port; I2=$PORT
    next_port; A1=$PORT; next_port; A2=$PORT; next_port; D_OUT=$PORT; next_port; D_ADM=$PORT
    start_proc app_e1 "$TMPD/app-e1.log" python3 "$ROOT/tools/upstream.py" --port "$E1" --name e1
    start_proc app_e2 "$TMPD/app-e2.log" python3 "$ROOT/tools/upstream.py" --port "$E2" --name e2
    wait_port "$E1" 10; wait_port "$E2" 10
    server_yaml server-e1 "$I1" "$A1" "$E1" >"$TMPD/server-e1.yaml"
    server_yaml server-e2 "$I2" "$A2" "$E2" >"$TMPD/server-e2.yaml"
    cat >"$TMPD/front-d.yaml" <<EOF
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {name: front-d, namespace: default}
spec:
  workload: {service: client, serviceAccount: client}
  concurrency: 1
  admin: {address: 127.0.0.1, port: $D_ADM}
$(client_tls)
  outbound:
    address: 127.0.0.1
    port: $D_OUT
    headerTimeout: 10s
  clusters:
    - name: reviews
      tls: ISTIO_MUTUAL
      subjectAltNames: [spiffe://cluster.local/ns/default/sa/server]
      connectTimeout: 1s
      endpoints:
        - 127.0.0.1:$I1
        - 127.0.0.1:$I2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: main
    route:
    - destination: {host: reviews}
    timeout: 5s
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "connect-failure,refused-stream,reset,503"}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3, consecutiveGatewayErrors: 3, interval: 1s, baseEjectionTime: 3s, maxEjectionPercent: 50}
EOF
    start_proc server_e1 "$TMPD/server-e1.log" "$SIDECAR_BIN" --config "$TMPD/server-e1.yaml"
    start_proc server_e2 "$TMPD/server-e2.log" "$SIDECAR_BIN" --config "$TMPD/server-e2.yaml"
    start_proc front_d "$TMPD/front-d.log" "$SIDECAR_BIN" --config "$TMPD/front-d.yaml"
    wait_http "http://127.0.0.1:$A1/ready" 20 server_e1
    wait_http "http://127.0.0.1:$A2/ready" 20 server_e2
    wait_http "http://127.0.0.1:$D_ADM/ready" 20 front_d
    hits() { curl -s --max-time 2 "http://127.0.0.1:$1/_hits" | python3 -c 'import json,sys; print(json.load(sys.stdin)["hits"])' 2>/dev/null || echo -1; }
    D_EVENTS="$TMPD/d.events"; : >"$D_EVENTS"
    before_stats="$(curl -s "http://127.0.0.1:$D_ADM/stats")"
    start_load failover "$D_OUT" reviews
    sleep 4
    for sig in $(for _ in $(seq 1 "$D_CYCLES"); do echo TERM KILL; done); do
        tk="$(now)"
        stop_proc server_e1 "$sig"
        tgone="$(now)"
        sleep 4
        h1="$(hits "$E1")"
        tr="$(now)"
        start_proc server_e1 "$TMPD/server-e1.log" "$SIDECAR_BIN" --config "$TMPD/server-e1.yaml"
        wait_http "http://127.0.0.1:$A1/ready" 20 server_e1
        tready="$(now)"
        end=$(( $(date +%s) + 30 ))
        while [ "$(hits "$E1")" -le "$h1" ]; do
            [ "$(date +%s)" -ge "$end" ] && break
            sleep 0.05
        done
        tback="$(now)"
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$sig" "$tk" "$tgone" "$tr" "$tready" "$tback" >>"$D_EVENTS"
        awk -v s="$sig" -v a="$tk" -v b="$tgone" -v c="$tr" -v d="$tready" -v e="$tback" 'BEGIN {printf "faults.sh: d SIG%s: sidecar gone after %.2f s; restarted, ready after %.2f s, endpoint got traffic again %.2f s after ready\n", s, b-a, d-c, e-d}' >&2
        alive_or_die front_d server_e2
        sleep 4
    done
    stop_load failover
    after_stats="$(curl -s "http://127.0.0.1:$D_ADM/stats")"
    python3 - "$TMPD/failover.summary.json" "$TMPD/failover.requests.tsv" "$D_EVENTS" "$before_stats" "$after_stats" >>"$JSONL" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
reqs = [l.rstrip("\n").split("\t") for l in open(sys.argv[2]) if l.strip()]
ev = [l.rstrip("\n").split("\t") for l in open(sys.argv[3]) if l.strip()]
def st(text):
    d = {}
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if v.strip().isdigit(): d[k] = int(v)
    return d
b, a = st(sys.argv[4]), st(sys.argv[5])
delta = {k: a.get(k, 0) - b.get(k, 0) for k in ("retries", "retries_on_reset", "retries_on_status", "upstream_connect_failures",
                                                 "outlier_ejections", "upstream_resets_before_response", "responses_5xx",
                                                 "retries_refused_by_budget", "local_replies", "upstream_overflow")}
t0 = s["t0_wall"]
base = sorted(float(r[1]) for r in reqs if float(r[0]) < float(ev[0][1]) - t0) if ev else []
def pct(v, q):
    if not v: return None
    k = max(0, min(len(v) - 1, int(round(q / 100.0 * len(v) + 0.5)) - 1))
    return round(v[k], 1)
def end_s(r): return float(r[0]) + float(r[1]) / 1000.0
def stop_before(t):
    prior = [e for e in ev if float(e[1]) - t0 <= t]
    return prior[-1] if prior else None
windows = []
for sig, tk, tgone, tr, tready, tback in ev:
    k = float(tk) - t0
    w = [r for r in reqs if k <= end_s(r) < k + 5]
    lat = sorted(float(r[1]) for r in w)
    bad = [r for r in w if r[2] != "200"]
    slow = [float(r[0]) + float(r[1]) / 1000 - k for r in w if float(r[1]) > 100 or r[2] != "200"]
    windows.append({"signal": sig, "sent_5s": len(w), "failed_5s": len(bad), "fail_kinds": sorted({r[2] for r in bad}),
                    "p99_ms_5s": pct(lat, 99), "max_ms_5s": round(lat[-1], 1) if lat else None,
                    "last_slow_or_failed_s_after_stop": round(max(slow), 2) if slow else 0.0,
                    "stop_took_s": round(float(tgone) - float(tk), 2), "restart_ready_s": round(float(tready) - float(tr), 2),
                    "traffic_back_s_after_ready": round(float(tback) - float(tready), 2)})
failures = []
for r in reqs:
    if r[2] == "200": continue
    e = stop_before(end_s(r))
    failures.append({"ended_s_after_stop": round(end_s(r) - (float(e[1]) - t0), 3) if e else None,
                     "stop": e[0] if e else "none", "ms": float(r[1]), "outcome": r[2], "detail": r[3] if len(r) > 3 else "-"})
failures = failures[:20]
print(json.dumps({"scenario": "d", "sent": s["sent"], "failed": s["failed"], "kinds": s["kinds"], "seconds": s["seconds"], "failures": failures,
                  "baseline_p99_ms": pct(base, 99), "windows": windows, "caller_stats": delta,
                  "verdict": "0 failed" if s["failed"] == 0 else f"{s['failed']} failed"}))
EOF
    tail -n 1 "$JSONL" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print("faults.sh: d sent %d failed %d kinds %s; baseline p99 %s ms; caller stats %s" % (d["sent"], d["failed"], d["kinds"], d["baseline_p99_ms"], d["caller_stats"]))
for w in d["windows"]:
    print("faults.sh: d   SIG%s: 5 s after the stop: sent %d failed %d %s p99 %s ms max %s ms; last slow(>100ms)/failed request ended %.2f s after the stop" % (w["signal"], w["sent_5s"], w["failed_5s"], w["fail_kinds"], w["p99_ms_5s"], w["max_ms_5s"], w["last_slow_or_failed_s_after_stop"]))' >&2
    if [ "$(tail -n 1 "$JSONL" | python3 -c 'import json,sys; print(json.load(sys.stdin)["failed"])')" != 0 ]; then
        tail -n 1 "$JSONL" | python3 -c '
import json, sys
d = json.load(sys.stdin)
flags = {}
for f in d["failures"]:
    k = "%s %s (SIG%s)" % (f["outcome"], f["detail"], f["stop"])
    flags[k] = flags.get(k, 0) + 1
print("d: %d of %d requests failed while one of two endpoint sidecars was stopped and restarted "
      "(route retries: attempts 3 on connect-failure,refused-stream,reset,503): %s; caller counters %s. "
      "Reproduce: SCENARIOS=d D_CYCLES=3 LOAD_KEEPALIVE=8 LOAD_FRESH=8 bench/faults.sh"
      % (d["failed"], d["sent"], flags, d["caller_stats"]))' >>"$BUGS"
    fi
    for n in front_d server_e1 server_e2 app_e1 app_e2; do stop_proc "$n" TERM; done
fi

# ================================================================== report
prov_tools curl nghttp python3
BODY="$TMPD/body.md"
python3 - "$JSONL" "$BUGS" "$BODY" "$REPEAT" <<'EOF'
import json, sys
jsonl, bugs, results, repeat = sys.argv[1:]
rs = [json.loads(l) for l in open(jsonl) if l.strip()]
bl = [l.strip() for l in open(bugs) if l.strip()]
out = []
a = [r for r in rs if r["scenario"] == "a"]
if a:
    out += ["### a. upstream SIGKILLed mid-response", "",
            "`direct`: outbound sidecar -> HTTP/1.1 app; `meshed`: outbound sidecar -> mTLS HTTP/2 -> inbound sidecar -> app. "
            "`cl`: Content-Length 100000, 30000 sent; `chunked`: 5 chunks, no last chunk; `control`: full 100000-byte body. "
            "curl exit 18 = partial file, 56 = recv failure, 92 = HTTP/2 stream not closed cleanly.", "",
            "| host | case | client | sent | ended in an error | outcomes | verdict |", "|---|---|---|---:|---:|---|---|"]
    for r in a:
        out.append(f"| {r['host']} | {r['case']} | {r['client']} | {r['sent']} | {r['failed']} | "
                   f"{', '.join(f'{k}: {v}' for k, v in sorted(r['kinds'].items()))} | {r['verdict']} |")
    out.append("")
b = [r for r in rs if r["scenario"] == "b"]
if b:
    out += ["### b. upstream accepts and never answers (route timeout 1s)", "",
            "`hang`: outbound sidecar -> HTTP/1.1 app; `hangm`: outbound sidecar -> mTLS HTTP/2 -> inbound sidecar -> app. "
            "10 concurrent requests per row, 2 rounds.", "",
            "| host | client | sent | not 504 UT | answers | latency min / p50 / max s | verdict |", "|---|---|---:|---:|---|---|---|"]
    for r in b:
        l = r["latency_s"]
        out.append(f"| {r['host']} | {r['client']} | {r['sent']} | {r['failed']} | {', '.join(f'{k}: {v}' for k, v in r['kinds'].items())} | "
                   f"{l.get('min', 0):.3f} / {l.get('p50', 0):.3f} / {l.get('max', 0):.3f} | {r['verdict']} |")
    out.append("")
for r in rs:
    if r["scenario"] == "c":
        out += ["### c. meshd SIGKILLed and restarted under traffic (mesh mode: productpage -> reviews)", "",
                f"- {r['restarts']} kill/restart cycles in {r['seconds']} s of traffic: **{r['sent']} requests sent, {r['failed']} failed** "
                f"({', '.join(f'{k}: {v}' for k, v in r['kinds'].items())})",
                f"- meshd ready after start (s): {r['meshd_ready_s']}; both sidecars reconnected after meshd was ready (s): {r['reconnect_s']}",
                f"- `meshctl apply --wait` after each restart (s): {r['apply_wait_s']} (failures: {r['apply_failures']})"]
        for f in r.get("failures", []):
            out.append(f"- failed request: {f['outcome']} ({f['detail']}) after {f['ms']} ms at {f['at_s']} s")
        out.append("")
    if r["scenario"] == "d":
        out += ["### d. one of two endpoint sidecars stopped and restarted under traffic", "",
                f"- {r['seconds']} s of traffic: **{r['sent']} sent, {r['failed']} failed** ({', '.join(f'{k}: {v}' for k, v in r['kinds'].items())}); "
                f"baseline p99 {r['baseline_p99_ms']} ms", f"- caller sidecar counters over the run: {r['caller_stats']}"]
        for f in r.get("failures", []):
            out.append(f"- failed request: {f['outcome']} ({f['detail']}) after {f['ms']} ms, ended {f['ended_s_after_stop']} s after the SIG{f['stop']} stop")
        out += ["",
                "| stop | sidecar gone after s | requests ending in the 5 s after the stop: sent / failed | p99 / max ms | last slow (>100 ms) or failed request ended, s after stop | restart: ready after s | endpoint has traffic again, s after ready |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for w in r["windows"]:
            out.append(f"| SIG{w['signal']} | {w['stop_took_s']} | {w['sent_5s']} / {w['failed_5s']} {' '.join(w['fail_kinds'])} | "
                       f"{w['p99_ms_5s']} / {w['max_ms_5s']} | {w['last_slow_or_failed_s_after_stop']} | {w['restart_ready_s']} | {w['traffic_back_s_after_ready']} |")
        out.append("")
out += ["### Problems found", ""] + ([f"- {x}" for x in bl] if bl else ["- none"])
text = "\n".join(out) + "\n"
open(results, "w").write(text)
print(text)
EOF
prov_write "$RESULTS" "Faults: upstream deaths, hangs, meshd restarts, endpoint restarts" "$BODY" \
    "Scenarios $SCENARIOS against the release sidecar and meshd; each reports requests sent and failed with the kinds of failure. The script exits 1 when it found a problem (listed under Problems found)."
note "wrote $RESULTS"
[ -s "$BUGS" ] && { note "PROBLEMS FOUND (see $RESULTS)"; exit 1; }
exit 0
