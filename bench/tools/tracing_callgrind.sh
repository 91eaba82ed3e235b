#!/usr/bin/env bash
# The user-space instructions tracing adds per request on the outbound sidecar (needs valgrind,
# nginx, h2load, python3): an outbound sidecar (static mode, one worker) under callgrind sends
# requests over mTLS HTTP/2 to an inbound sidecar and nginx, in runs of N and 2N so that start-up
# cancels out: per request = (total(2N) - total(N)) / N, for each MODE: `off` (no collector),
# `1pct` and `100pct` (a local OTLP sink; Telemetry randomSamplingPercentage 1 or 100). The
# client sends no trace headers. Not a RESULTS file: a check to run by hand (bench/README.md).
#   N=2000 C=8 bench/tools/tracing_callgrind.sh      (KEEP=1 keeps the callgrind files for callgrind_annotate)
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$ROOT/.build/release/sidecar}
N=${N:-2000}
C=${C:-8}
MODES=${MODES:-off 1pct 100pct}
W=$(mktemp -d /tmp/tracing-callgrind.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; if [ -n "${KEEP:-}" ]; then echo "kept $W"; else rm -rf "$W"; fi; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
waitport() { for _ in $(seq 1 300); do (echo >/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
bash "$ROOT/certs/make-pki.sh" "$W/pki" client server >/dev/null 2>&1 || { echo "make-pki failed" >&2; exit 1; }
APP=$(port); SINK=$(port); IN=$(port); OUT=$(port); AIN=$(port); AOUT=$(port)
mkdir -p "$W/nginx"
cat > "$W/nginx/nginx.conf" <<NG
worker_processes 1; daemon off; pid $W/nginx/nginx.pid; error_log $W/nginx/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000; server { listen 127.0.0.1:$APP; location / { return 200 "hello\n"; } } }
NG
nginx -c "$W/nginx/nginx.conf" -p "$W/nginx" & PIDS+=($!)
python3 -c '
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()' "$SINK" & PIDS+=($!)
waitport "$APP"; waitport "$SINK"
telemetry() { # MODE
    case "$1" in
    1pct) printf -- '---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: default}\nspec:\n  tracing:\n    - randomSamplingPercentage: 1\n' ;;
    100pct) printf -- '---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: default}\nspec:\n  tracing:\n    - randomSamplingPercentage: 100\n' ;;
    esac
}
for m in $MODES; do
    cat > "$W/$m-out.yaml" <<Y
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
$(telemetry "$m")
Y
    cat > "$W/$m-in.yaml" <<Y
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {name: server, namespace: default}
spec:
  workload: {service: server, serviceAccount: server}
  concurrency: 1
  admin: {address: 127.0.0.1, port: $AIN}
  tls: {certChain: $W/pki/server/cert-chain.pem, privateKey: $W/pki/server/key.pem, trustBundle: $W/pki/root-cert.pem}
  inbound: {address: 127.0.0.1, port: $IN, appAddress: 127.0.0.1:$APP}
$(telemetry "$m")
Y
done
total() { # MODE REQUESTS -> instructions of the outbound sidecar's whole life
    local m=$1 n=$2 flags=()
    [ "$m" != off ] && flags=(--otlp-endpoint "http://127.0.0.1:$SINK/v1/traces" --trace-flush-interval 200ms)
    "$BIN" --config "$W/$m-in.yaml" "${flags[@]}" >"$W/in.log" 2>&1 & local pin=$!
    valgrind --tool=callgrind --callgrind-out-file="$W/cg.$m.$n" "$BIN" --config "$W/$m-out.yaml" "${flags[@]}" >"$W/out.log" 2>&1 & local pout=$!
    waitport "$IN"; waitport "$OUT"
    h2load --h1 -n "$n" -c "$C" -H ":authority: server" "http://127.0.0.1:$OUT/" > "$W/h2load.$m.$n" 2>&1
    grep -q "status codes: $n 2xx" "$W/h2load.$m.$n" || { echo "$m $n: not every request succeeded" >&2; cat "$W/h2load.$m.$n" >&2; exit 1; }
    sleep 0.5
    kill -TERM "$pout" "$pin"; wait "$pout" "$pin" 2>/dev/null
    for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/$OUT) 2>/dev/null || break; sleep 0.1; done
    awk '/^summary:/ {print $2}' "$W/cg.$m.$n"
}
echo "outbound sidecar, user-space instructions per request (callgrind), N=$N and 2N requests, c=$C, commit $(git -C "$ROOT" rev-parse --short HEAD)"
for m in $MODES; do
    a=$(total "$m" "$N"); b=$(total "$m" $((2 * N)))
    echo "$m: $(( (b - a) / N )) instructions/request (totals $a at N, $b at 2N)"
done
