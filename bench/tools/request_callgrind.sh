#!/usr/bin/env bash
# User-space instructions per proxied request on one side of the two-hop mTLS HTTP/2 path, counted
# by callgrind (needs valgrind, nginx, h2load, python3; haproxy for PROXY=haproxy). Same setup as
# tracing_callgrind.sh (tracing off): h2load --h1 -> outbound proxy -> mTLS HTTP/2 -> inbound proxy
# -> nginx; one side runs under callgrind (--dump-instr=no), in runs of N and 2N requests so that
# start-up and shutdown cancel out: per request = (total(2N) - total(N)) / N.
#   SIDE=out|in        which proxy runs under callgrind (default out)
#   PROXY=sidecar|haproxy  our sidecar (BIN) or the HAProxy-h2 pair as bench/run.sh configures it
#   N=2000 C=8 SIDE=in bench/tools/request_callgrind.sh
#   KEEP=1 keeps the callgrind files; read them with
#     callgrind_annotate --inclusive=yes FILE | head -60     (and without --inclusive for self cost)
# Not a RESULTS file: a check to run by hand (bench/README.md, "User-space instructions per request").
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$ROOT/.build/release/sidecar}
N=${N:-2000}
C=${C:-8}
SIDE=${SIDE:-out}
PROXY=${PROXY:-sidecar}
case "$SIDE" in out|in) ;; *) echo "SIDE must be out or in" >&2; exit 2;; esac
case "$PROXY" in sidecar|haproxy) ;; *) echo "PROXY must be sidecar or haproxy" >&2; exit 2;; esac
W=$(mktemp -d /tmp/request-callgrind.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; if [ -n "${KEEP:-}" ]; then echo "kept $W"; else rm -rf "$W"; fi; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
waitport() { for _ in $(seq 1 300); do (echo >/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
bash "$ROOT/certs/make-pki.sh" "$W/pki" client server >/dev/null 2>&1 || { echo "make-pki failed" >&2; exit 1; }
APP=$(port); IN=$(port); OUT=$(port); AIN=$(port); AOUT=$(port)
mkdir -p "$W/nginx"
cat > "$W/nginx/nginx.conf" <<NG
worker_processes 1; daemon off; pid $W/nginx/nginx.pid; error_log $W/nginx/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000; server { listen 127.0.0.1:$APP; location / { return 200 "hello\n"; } } }
NG
nginx -c "$W/nginx/nginx.conf" -p "$W/nginx" & PIDS+=($!)
waitport "$APP"
if [ "$PROXY" = sidecar ]; then
    cat > "$W/out.conf" <<Y
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {name: client, namespace: default}
spec:
  workload: {service: client, serviceAccount: client}
  concurrency: 1
  admin: {address: 127.0.0.1, port: $AOUT}
  tls: {certChain: $W/pki/client/cert-chain.pem, privateKey: $W/pki/client/key.pem, trustBundle: $W/pki/root-cert.pem}
  outbound: {address: 127.0.0.1, port: $OUT}
  clusters:
    - {name: server, tls: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/default/sa/server], endpoints: [127.0.0.1:$IN]}
  routes:
    - {hosts: [server], cluster: server}
Y
    cat > "$W/in.conf" <<Y
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {name: server, namespace: default}
spec:
  workload: {service: server, serviceAccount: server}
  concurrency: 1
  admin: {address: 127.0.0.1, port: $AIN}
  tls: {certChain: $W/pki/server/cert-chain.pem, privateKey: $W/pki/server/key.pem, trustBundle: $W/pki/root-cert.pem}
  inbound: {address: 127.0.0.1, port: $IN, appAddress: 127.0.0.1:$APP}
Y
    cmd() { echo "$BIN" --config "$W/$1.conf"; }
else
    # The HAProxy-h2 pair of bench/run.sh (setup_haproxy_as NAME 1).
    G="global
    nbthread 1
    maxconn 8192
defaults
    mode http
    http-reuse always
    option http-keep-alive
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    timeout http-request 10s"
    cat > "$W/out.conf" <<EOF
$G
frontend outbound
    bind 127.0.0.1:$OUT
    http-response set-status 200 reason OK
    default_backend inbound
backend inbound
    server in 127.0.0.1:$IN ssl crt $W/pki/client/key-and-chain.pem ca-file $W/pki/root-cert.pem verify required verifyhost server sni str(server) ssl-min-ver TLSv1.3 alpn h2
EOF
    cat > "$W/in.conf" <<EOF
$G
frontend inbound
    bind 127.0.0.1:$IN ssl crt $W/pki/server/key-and-chain.pem ca-file $W/pki/root-cert.pem verify required ssl-min-ver TLSv1.3 alpn h2,http/1.1
    default_backend app
backend app
    server app 127.0.0.1:$APP
EOF
    cmd() { echo haproxy -db -f "$W/$1.conf"; }
fi
total() { # REQUESTS -> instructions of the profiled proxy's whole life
    local n=$1 pin pout other
    if [ "$SIDE" = out ]; then
        $(cmd in) >"$W/in.log" 2>&1 & pin=$!
        valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$W/cg.$SIDE.$n" $(cmd out) >"$W/out.log" 2>&1 & pout=$!
    else
        valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$W/cg.$SIDE.$n" $(cmd in) >"$W/in.log" 2>&1 & pin=$!
        $(cmd out) >"$W/out.log" 2>&1 & pout=$!
    fi
    waitport "$IN"; waitport "$OUT"
    h2load --h1 -n "$n" -c "$C" -H ":authority: server" "http://127.0.0.1:$OUT/" > "$W/h2load.$n" 2>&1
    grep -q "status codes: $n 2xx" "$W/h2load.$n" || { echo "$n: not every request succeeded" >&2; cat "$W/h2load.$n" >&2; exit 1; }
    sleep 0.5
    kill -TERM "$pout" "$pin"; wait "$pout" "$pin" 2>/dev/null
    for p in $OUT $IN; do for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/$p) 2>/dev/null || break; sleep 0.1; done; done
    awk '/^summary:/ {print $2}' "$W/cg.$SIDE.$n"
}
echo "$PROXY $SIDE side, user-space instructions per request (callgrind), N=$N and 2N requests, c=$C, commit $(git -C "$ROOT" rev-parse --short HEAD)"
a=$(total "$N"); b=$(total $((2 * N)))
echo "$PROXY $SIDE: $(( (b - a) / N )) instructions/request (totals $a at N, $b at 2N)"
