#!/usr/bin/env bash
# Opaque TCP through two sidecars over mutual TLS, against HAProxy in TCP mode with TLS on the hop,
# and the cost of transparent capture on the HTTP path (issue 16, DESIGN §10). See bench/README.md.
#
#   client --CONNECT bench:9000--> outbound sidecar --mTLS (TLS 1.3)--> inbound sidecar (appProtocol TCP) --> app
#   client ------------------------> HAProxy mode tcp --ssl verify required--> HAProxy bind ssl verify required --> app
#   client ----------------------------------------------------------------------------------------------------> app (direct)
#
# One worker each (sidecar concurrency 1, HAProxy nbthread 1), CPU of every proxy process from
# /proc/PID/stat (utime+stime) around each counted run, interleaved rounds, medians:
#   1. throughput: one connection carrying BYTES client->app (up) and app->client (down);
#   2. connection rate: N short connections, C at a time, each a PAYLOAD-byte echo;
#   3. capture: in a network namespace made here, capture rules from `meshctl capture apply`,
#      static sidecars as uid/gid 1337: h2load --h1 with one request per connection to a service
#      VIP (captured) and to the outbound listener (http_proxy style, on a sidecar with capture on
#      and on one with capture off); the outbound sidecar's CPU per connection, the difference
#      being what capture costs; plus the bare getsockopt(SO_ORIGINAL_DST) cost; and step 2's
#      opaque TCP echo connections in that namespace, our pair entered by capture (a TCP VIP) and
#      by CONNECT, beside HAProxy's pair.
#
# Environment (all optional):
#   STEPS="throughput rate capture"  ROUNDS=3  BYTES=1000000000  N=20000  C=16  PAYLOAD=16
#   WARMUP=500 (connections before each rate run)  CAPTURE_N=60000  CAPTURE_C=16  CAPTURE_WARMUP=2000
#   GETSOCKOPT_K=200000  LOAD_TIMEOUT=600  MAX_SECONDS=3600
#   SIDECAR_BIN=.build/release/sidecar (built first unless given or NO_BUILD=1)  MESHCTL_BIN (next to it)
#   OUT=bench/out/tcp  RESULTS=bench/RESULTS-tcp.md
# RESULTS is overwritten in one piece: a header naming the commit, machine, binaries, tool
# versions and these settings (bench/tools/provenance.sh), then the tables.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
SCRIPT=tcp.sh
cd "$ROOT"
SIDECAR_BIN_GIVEN=0; [ -n "${SIDECAR_BIN:-}" ] && SIDECAR_BIN_GIVEN=1
# shellcheck source=bench/tools/common.sh
. "$HERE/tools/common.sh"
prov_init tcp.sh "STEPS ROUNDS BYTES N C PAYLOAD WARMUP CAPTURE_N CAPTURE_C CAPTURE_WARMUP GETSOCKOPT_K LOAD_TIMEOUT MAX_SECONDS NO_BUILD SIDECAR_BIN MESHCTL_BIN OUT RESULTS"

STEPS="${STEPS:-throughput rate capture}"
ROUNDS="${ROUNDS:-3}"
BYTES="${BYTES:-1000000000}"
N="${N:-20000}"
C="${C:-16}"
PAYLOAD="${PAYLOAD:-16}"
WARMUP="${WARMUP:-500}"
CAPTURE_N="${CAPTURE_N:-60000}"
CAPTURE_C="${CAPTURE_C:-16}"
CAPTURE_WARMUP="${CAPTURE_WARMUP:-2000}"
GETSOCKOPT_K="${GETSOCKOPT_K:-200000}"
LOAD_TIMEOUT="${LOAD_TIMEOUT:-600}"
MAX_SECONDS="${MAX_SECONDS:-3600}"
OUT="${OUT:-$HERE/out/tcp}"
RESULTS="${RESULTS:-$HERE/RESULTS-tcp.md}"
TOOL="$HERE/tools/tcp_bench.py"
CONNECT_TARGET="bench:9000"          # the TCP service's name and port, as the CONNECT names them
SAN_CLIENT="spiffe://cluster.local/ns/default/sa/client"
SAN_SERVER="spiffe://cluster.local/ns/default/sa/server"

for s in $STEPS; do
    case "$s" in throughput|rate|capture) ;; *) die "STEPS: unknown step '$s' (throughput, rate, capture)" ;; esac
done
want_step() { [[ " $STEPS " == *" $1 "* ]]; }
posint() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1: expected a positive integer, got '$2'"; }
for v in ROUNDS BYTES N C PAYLOAD CAPTURE_N CAPTURE_C GETSOCKOPT_K LOAD_TIMEOUT MAX_SECONDS; do posint "$v" "${!v}"; done
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP: expected an integer >= 0, got '$WARMUP'"
[[ "$CAPTURE_WARMUP" =~ ^[0-9]+$ ]] || die "CAPTURE_WARMUP: expected an integer >= 0, got '$CAPTURE_WARMUP'"
[ "$PAYLOAD" -ge 2 ] || die "PAYLOAD: at least 2 bytes (a mode byte and one more)"

for t in haproxy python3 curl openssl timeout getconf; do
    command -v "$t" >/dev/null || die "'$t' not found (apt-get install haproxy python3 curl openssl)"
done
CAPTURE_SKIP=""
if want_step capture; then
    if [ "$(id -u)" != 0 ]; then
        CAPTURE_SKIP="Not run: the capture step needs root (a network namespace and iptables rules)"
    else
        for t in ip iptables-nft-restore setpriv h2load nginx; do
            command -v "$t" >/dev/null || die "'$t' not found (apt-get install iproute2 iptables util-linux nghttp2-client nginx)"
        done
    fi
fi
CLK_TCK="$(getconf CLK_TCK)"

setup_common
# common.sh's cleanup stops the processes; the capture namespace and its rules go after them.
NS=""
NS_RULES=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "$WATCHDOG_PID" ] && kill "$WATCHDOG_PID" 2>/dev/null || true
    local pid live=() i any
    for pid in "${ALL_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null && live+=("$pid") || true; done
    for i in $(seq 1 30); do
        any=0
        for pid in "${live[@]}"; do kill -0 "$pid" 2>/dev/null && any=1; done
        [ $any = 0 ] && break
        sleep 0.1
    done
    for pid in "${live[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$NS" ]; then
        if [ "$NS_RULES" = 1 ]; then
            ip netns exec "$NS" "$MESHCTL_BIN" capture remove >>"$OUT/capture-remove.log" 2>&1 \
                || echo "$SCRIPT: warning: meshctl capture remove failed in $NS (see $OUT/capture-remove.log); the namespace goes anyway" >&2
        fi
        ip netns del "$NS" 2>/dev/null || true
    fi
    if [ -n "$TMPD" ] && [ -d "$TMPD" ]; then rm -rf "$TMPD"; fi
    exit $rc
}

# ------------------------------------------------------------------ binaries
NEED_MESHCTL=0
want_step capture && [ -z "$CAPTURE_SKIP" ] && NEED_MESHCTL=1
if [ "$SIDECAR_BIN_GIVEN" = 0 ] && [ "${NO_BUILD:-0}" != 1 ]; then
    mkdir -p "$OUT"
    note "building the release sidecar (swift build -c release --static-swift-stdlib --product sidecar)"
    swift build -c release --static-swift-stdlib --product sidecar >"$OUT/build.log" 2>&1 \
        || { tail -n 30 "$OUT/build.log" >&2; die "release build of the sidecar failed"; }
    if [ "$NEED_MESHCTL" = 1 ] && [ -z "${MESHCTL_BIN:-}" ]; then
        note "building the release meshctl (it writes the capture rules; it is not measured)"
        swift build -c release --static-swift-stdlib --product meshctl >>"$OUT/build.log" 2>&1 \
            || { tail -n 30 "$OUT/build.log" >&2; die "release build of meshctl failed: give MESHCTL_BIN (a debug build does the same job: it only writes the rules), or leave capture out of STEPS"; }
    fi
fi
SIDECAR_BIN="${SIDECAR_BIN:-$ROOT/.build/release/sidecar}"
case "$SIDECAR_BIN" in /*) ;; *) SIDECAR_BIN="$ROOT/$SIDECAR_BIN" ;; esac
[ -x "$SIDECAR_BIN" ] || die "SIDECAR_BIN=$SIDECAR_BIN not found (swift build -c release --static-swift-stdlib)"
prov_bins "$(readlink -f "$SIDECAR_BIN")"
if [ "$NEED_MESHCTL" = 1 ]; then
    MESHCTL_BIN="${MESHCTL_BIN:-$(dirname "$SIDECAR_BIN")/meshctl}"
    case "$MESHCTL_BIN" in /*) ;; *) MESHCTL_BIN="$ROOT/$MESHCTL_BIN" ;; esac
    [ -x "$MESHCTL_BIN" ] || die "MESHCTL_BIN=$MESHCTL_BIN not found (swift build -c release --static-swift-stdlib --product meshctl)"
    prov_bins "$(readlink -f "$MESHCTL_BIN")"
fi
prov_tools haproxy python3 openssl
want_step capture && prov_tools h2load nginx

rm -rf "$OUT"; mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
SAMPLES="$OUT/samples.tsv"; : >"$SAMPLES"
FACTS="$OUT/facts.tsv"; : >"$FACTS"          # key<TAB>value lines for the report
fact() { printf '%s\t%s\n' "$1" "$2" >>"$FACTS"; }
PKI="$TMPD/pki"
note "certificates: certs/make-pki.sh (in $TMPD) client server"
make_pki "$PKI" client server

cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }

# ------------------------------------------------------------------ the app and the pairs
alloc_ports 16
next_port; APP_PORT=$PORT
start_proc app "$OUT/app.log" python3 "$TOOL" server "$APP_PORT"
wait_port "$APP_PORT" 10

declare -A PORT_OUT=() PORT_IN=() ADMIN_IN=() HA_SOCK=()

sidecar_out_yaml() { # OUT_PORT ADMIN_PORT UPSTREAM_PORT
    cat <<EOF
# generated by bench/tcp.sh: outbound (client side); apps enter with CONNECT $CONNECT_TARGET
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {name: client-sidecar, namespace: default}
spec:
  workload: {service: client, serviceAccount: client}
  concurrency: 1
  admin: {address: 127.0.0.1, port: $2}
  tls:
    certChain: $PKI/client/cert-chain.pem
    privateKey: $PKI/client/key.pem
    trustBundle: $PKI/root-cert.pem
  outbound: {address: 127.0.0.1, port: $1}
  clusters:
    - name: bench
      serviceProtocol: TCP
      port: ${CONNECT_TARGET#*:}
      tls: ISTIO_MUTUAL
      subjectAltNames: [$SAN_SERVER]
      endpoints: [127.0.0.1:$3]
---
# a static sidecar's outbound listener needs a route: the TCP service's, by its port
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bench, namespace: default}
spec:
  hosts: [bench]
  tcp:
  - match: [{port: ${CONNECT_TARGET#*:}}]
    route:
    - destination: {host: bench}
EOF
}

setup_sidecar() {
    local d="$OUT/sidecar" a b adm1 adm2; mkdir -p "$d"
    next_port; a=$PORT; next_port; b=$PORT; next_port; adm1=$PORT; next_port; adm2=$PORT
    sidecar_out_yaml "$a" "$adm1" "$b" >"$d/outbound.yaml"
    cat >"$d/inbound.yaml" <<EOF
# generated by bench/tcp.sh: inbound (server side), the app carried as opaque TCP
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {name: server-sidecar, namespace: default}
spec:
  workload: {service: bench, serviceAccount: server}
  concurrency: 1
  admin: {address: 127.0.0.1, port: $adm2}
  tls:
    certChain: $PKI/server/cert-chain.pem
    privateKey: $PKI/server/key.pem
    trustBundle: $PKI/root-cert.pem
    minProtocolVersion: TLSV1_3
  inbound:
    address: 127.0.0.1
    port: $b
    appAddress: 127.0.0.1:$APP_PORT
    appProtocol: TCP
    servicePort: ${CONNECT_TARGET#*:}
EOF
    local f
    for f in inbound outbound; do
        "$SIDECAR_BIN" --config "$d/$f.yaml" --check >"$d/check-$f.log" 2>&1 || { cat "$d/check-$f.log" >&2; die "the sidecar refused $d/$f.yaml"; }
    done
    start_proc sidecar_in "$d/inbound.log" "$SIDECAR_BIN" --config "$d/inbound.yaml"
    start_proc sidecar_out "$d/outbound.log" "$SIDECAR_BIN" --config "$d/outbound.yaml"
    PORT_OUT[sidecar]=$a; PORT_IN[sidecar]=$b; ADMIN_IN[sidecar]=$adm2
}

haproxy_global() { # [EXTRA GLOBAL LINE]
    cat <<EOF
global
    nbthread 1
    maxconn 8192${1:+
    $1}
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
EOF
}
haproxy_out_cfg() { # OUT_PORT UPSTREAM_PORT
    cat <<EOF
# generated by bench/tcp.sh: outbound (client side), TLS to the inbound
$(haproxy_global)
frontend outbound
    bind 127.0.0.1:$1
    default_backend inbound
backend inbound
    server in 127.0.0.1:$2 ssl crt $PKI/client/key-and-chain.pem ca-file $PKI/root-cert.pem verify required verifyhost server sni str(server) ssl-min-ver TLSv1.3
EOF
}

haproxy_in_cfg() { # IN_PORT APP_PORT STATS_SOCKET
    cat <<EOF
# generated by bench/tcp.sh: inbound (server side), mutual TLS required
$(haproxy_global "stats socket $3")
frontend inbound
    bind 127.0.0.1:$1 ssl crt $PKI/server/key-and-chain.pem ca-file $PKI/root-cert.pem verify required ssl-min-ver TLSv1.3
    default_backend app
backend app
    server app 127.0.0.1:$2
EOF
}

setup_haproxy() {
    local d="$OUT/haproxy" a b; mkdir -p "$d"
    next_port; a=$PORT; next_port; b=$PORT
    haproxy_out_cfg "$a" "$b" >"$d/outbound.cfg"
    haproxy_in_cfg "$b" "$APP_PORT" "$d/inbound.sock" >"$d/inbound.cfg"
    HA_SOCK[haproxy]="$d/inbound.sock"
    local f
    for f in inbound outbound; do
        haproxy -c -q -f "$d/$f.cfg" >"$d/check-$f.log" 2>&1 || { cat "$d/check-$f.log" >&2; die "haproxy rejected $d/$f.cfg"; }
    done
    start_proc haproxy_in "$d/inbound.log" haproxy -db -f "$d/inbound.cfg"
    start_proc haproxy_out "$d/outbound.log" haproxy -db -f "$d/outbound.cfg"
    PORT_OUT[haproxy]=$a; PORT_IN[haproxy]=$b
}

PAIRS="sidecar haproxy"
connect_args() { [ "$1" = sidecar ] && echo "--connect $CONNECT_TARGET" || true; }
port_of() { [ "$1" = direct ] && echo "$APP_PORT" || echo "${PORT_OUT[$1]}"; }

# wait_pair NAME: an echo through the whole chain answers (deadline 30 s, processes alive)
wait_pair() {
    local p="$1" end=$(( $(date +%s) + 30 ))
    # shellcheck disable=SC2046
    until python3 "$TOOL" rate --port "${PORT_OUT[$p]}" -n 1 -c 1 --timeout 3 $(connect_args "$p") >"$OUT/$p/ready.json" 2>&1; do
        alive_or_die "${p}_in" "${p}_out"
        if [ "$(date +%s)" -ge "$end" ]; then
            cat "$OUT/$p/ready.json" >&2
            for n in "${p}_in" "${p}_out"; do echo "---- last lines of ${LOG_OF[$n]}:" >&2; tail -n 20 "${LOG_OF[$n]}" >&2 || true; done
            die "$p: no echo through the pair after 30 s"
        fi
        sleep 0.2
    done
}

# check_inbound NAME: our client certificate gets an echo; no certificate and TLS 1.2 get none.
check_inbound() {
    local p="$1" port="${PORT_IN[$1]}" j
    local base=(python3 "$TOOL" tlscheck --port "$port" --ca "$PKI/root-cert.pem")
    j="$("${base[@]}" --cert "$PKI/client/cert-chain.pem" --key "$PKI/client/key.pem")"
    [[ "$j" == *'"echoed": true'* ]] || die "$p inbound: the mesh client certificate got no echo: $j"
    j="$("${base[@]}")"
    [[ "$j" == *'"echoed": false'* ]] || die "$p inbound carries a caller without a client certificate: $j"
    j="$("${base[@]}" --cert "$PKI/client/cert-chain.pem" --key "$PKI/client/key.pem" --tls12)"
    [[ "$j" == *'"echoed": false'* ]] || die "$p inbound carries a TLS 1.2 caller: $j"
}

# wait_listen PORT SECONDS NAME: until something listens on 127.0.0.1:PORT, without connecting
# (a connection to HAProxy's TCP frontend would open, and count, a TLS connection on the hop).
wait_listen() {
    local end=$(( $(date +%s) + $2 )) hex
    hex="$(printf '%04X' "$1")"
    until awk -v p=":$hex" '$2 ~ p"$" && $4 == "0A" {f=1} END {exit !f}' /proc/net/tcp; do
        alive_or_die "$3"
        [ "$(date +%s)" -ge "$end" ] && die "nothing listening on 127.0.0.1:$1 after $2 s"
        sleep 0.1
    done
}

# probe_hop NAME: a second outbound of the same kind whose upstream is a tap in front of the real
# inbound; three sequential connections; the tap reads each ServerHello (plaintext in TLS 1.3).
probe_hop() {
    local p="$1" d="$OUT/$1" tapport outport adm taplog="$OUT/$1/tap.jsonl"
    next_port; tapport=$PORT; next_port; outport=$PORT; next_port; adm=$PORT
    : >"$taplog"
    start_proc "${p}_tap" "$d/tap.log" python3 "$TOOL" tap "$tapport" "${PORT_IN[$p]}" "$taplog"
    wait_port "$tapport" 10
    if [ "$p" = sidecar ]; then
        sidecar_out_yaml "$outport" "$adm" "$tapport" >"$d/probe.yaml"
        start_proc "${p}_probe" "$d/probe.log" "$SIDECAR_BIN" --config "$d/probe.yaml"
    else
        haproxy_out_cfg "$outport" "$tapport" >"$d/probe.cfg"
        start_proc "${p}_probe" "$d/probe.log" haproxy -db -f "$d/probe.cfg"
    fi
    wait_listen "$outport" 20 "${p}_probe"
    local i
    for i in 1 2 3; do
        # shellcheck disable=SC2046
        python3 "$TOOL" rate --port "$outport" -n 1 -c 1 --timeout 10 $(connect_args "$p") >>"$d/probe-rate.log" 2>&1 \
            || { cat "$d/probe-rate.log" >&2; die "$p: probe connection $i through the tap failed"; }
        sleep 0.2    # the session ticket arrives after the handshake; give the client time to keep it
    done
    stop_proc "${p}_probe" TERM
    stop_proc "${p}_tap" TERM
    local n; n="$(wc -l <"$taplog")"
    [ "$n" = 3 ] || die "$p: the tap saw $n ServerHellos for 3 connections ($taplog)"
    fact "tls.$p" "$(tr '\n' ' ' <"$taplog")"
}

if want_step throughput || want_step rate; then
    setup_sidecar
    setup_haproxy
    for p in $PAIRS; do wait_pair "$p"; done
    for p in $PAIRS; do check_inbound "$p"; done
    note "inbound checks passed: client certificate required, TLS 1.3 only, on both pairs"
    for p in $PAIRS; do probe_hop "$p"; done
    # Same cipher on both hops, or the throughput figures compare different ciphers.
    c_ours="$(head -n1 "$OUT/sidecar/tap.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cipher"])')"
    c_theirs="$(head -n1 "$OUT/haproxy/tap.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cipher"])')"
    [ "$c_ours" = "$c_theirs" ] || die "the hops negotiated different ciphers (ours $c_ours, HAProxy $c_theirs): not like for like"
    note "both hops negotiated $c_ours"
fi

# ------------------------------------------------------------------ counted runs
# sample TEST ROUND TARGET WALL UNITS OUT_TICKS IN_TICKS CLIENT_CPU APP_TICKS FAILED
# ... FULL RESUMED : the hop's handshakes on the inbound side during the run, full and resumed
# (empty for runs without a hop)
sample() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "$7" "$8" "$9" "${10}" "${11:-}" "${12:-}" >>"$SAMPLES"; }

# hop_sessions KIND WHERE -> "full resumed": handshakes the inbound side of the hop completed so
# far. sidecar: its /stats (tls_handshakes_ok, tls_sessions_resumed) at admin port WHERE (in the
# capture namespace when CAPTURE_NS=1); haproxy: its stats socket WHERE (frontend counters
# ssl_sess: new sessions, ssl_reused_sess: resumed).
hop_sessions() {
    if [ "$1" = haproxy ]; then
        python3 - "$2" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"show stat -1 -1 -1 typed\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
full = reused = 0
for line in data.decode().splitlines():
    if not line.startswith("F."):
        continue
    name, value = line.split(":", 1)[0], line.rsplit(":", 1)[1]
    if ".ssl_sess." in name:
        full += int(value)
    elif ".ssl_reused_sess." in name:
        reused += int(value)
print(full, reused)
PY
    else
        local h r
        if [ "${CAPTURE_NS:-0}" = 1 ]; then
            h="$(ns_stat "$2" tls_handshakes_ok)"; r="$(ns_stat "$2" tls_sessions_resumed)"
        else
            h="$(stat_of "$2" tls_handshakes_ok)"; r="$(stat_of "$2" tls_sessions_resumed)"
        fi
        echo "$((h - r)) $r"
    fi
}
hop_of() { # TARGET -> "KIND WHERE" for hop_sessions, or nothing for direct
    case "$1" in
        sidecar) echo "sidecar ${ADMIN_IN[sidecar]}" ;;
        haproxy) echo "haproxy ${HA_SOCK[haproxy]}" ;;
    esac
}
jfield() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

ticks_pair() { # TARGET -> "out in" (0 0 for direct)
    if [ "$1" = direct ]; then echo "0 0"; else echo "$(cpu_ticks "${PID_OF[${1}_out]}") $(cpu_ticks "${PID_OF[${1}_in]}")"; fi
}

measure() { # TEST ROUND TARGET CLIENT-ARGS...
    local test="$1" r="$2" t="$3"; shift 3
    local o0 i0 o1 i1 a0 a1 j rc=0
    [ "$t" = direct ] || alive_or_die "${t}_in" "${t}_out"
    local hop f0=0 s0=0 f1=0 s1=0; hop="$(hop_of "$t")"
    # shellcheck disable=SC2086
    [ -n "$hop" ] && read -r f0 s0 <<<"$(hop_sessions $hop)"
    read -r o0 i0 <<<"$(ticks_pair "$t")"; a0="$(cpu_ticks "${PID_OF[app]}")"
    j="$(timeout "$LOAD_TIMEOUT" python3 "$TOOL" "$@" 2>>"$OUT/client.log")" || rc=$?
    sleep 0.3   # the last connections' closes, still on their way through the proxies
    read -r o1 i1 <<<"$(ticks_pair "$t")"; a1="$(cpu_ticks "${PID_OF[app]}")"
    # shellcheck disable=SC2086
    [ -n "$hop" ] && read -r f1 s1 <<<"$(hop_sessions $hop)"
    [ "$rc" = 0 ] || die "$test round $r $t: the client failed (exit $rc): $j $(tail -n 3 "$OUT/client.log")"
    local wall units failed=0
    wall="$(jfield "$j" seconds)"
    if [ "$test" = rate ]; then units="$(jfield "$j" done)"; failed="$(jfield "$j" failed)"; else units="$(jfield "$j" bytes)"; fi
    if [ -n "$hop" ]; then
        sample "$test" "$r" "$t" "$wall" "$units" "$((o1 - o0))" "$((i1 - i0))" "$(jfield "$j" cpu)" "$((a1 - a0))" "$failed" "$((f1 - f0))" "$((s1 - s0))"
    else
        sample "$test" "$r" "$t" "$wall" "$units" "$((o1 - o0))" "$((i1 - i0))" "$(jfield "$j" cpu)" "$((a1 - a0))" "$failed"
    fi
    note "round $r $test $t: $wall s, $units, out $((o1 - o0)) in $((i1 - i0)) ticks"
}

rotate() { # ROUND WORDS... -> the words starting at index ROUND-1 (mod count)
    local r="$1"; shift
    local a=("$@") n=$# k out=()
    for ((k = 0; k < n; k++)); do out+=("${a[$(( (k + r - 1) % n ))]}"); done
    echo "${out[@]}"
}

if want_step throughput || want_step rate; then
    for r in $(seq 1 "$ROUNDS"); do
        for t in $(rotate "$r" sidecar haproxy direct); do
            # shellcheck disable=SC2046
            if want_step throughput; then
                measure up "$r" "$t" bulk --port "$(port_of "$t")" --dir up --bytes "$BYTES" $(connect_args "$t")
                measure down "$r" "$t" bulk --port "$(port_of "$t")" --dir down --bytes "$BYTES" $(connect_args "$t")
            fi
            if want_step rate; then
                if [ "$WARMUP" -gt 0 ]; then
                    # shellcheck disable=SC2046
                    timeout "$LOAD_TIMEOUT" python3 "$TOOL" rate --port "$(port_of "$t")" -n "$WARMUP" -c "$C" --payload "$PAYLOAD" $(connect_args "$t") >/dev/null 2>>"$OUT/client.log" \
                        || die "rate warm-up through $t failed: $(tail -n 3 "$OUT/client.log")"
                fi
                # shellcheck disable=SC2046
                measure rate "$r" "$t" rate --port "$(port_of "$t")" -n "$N" -c "$C" --payload "$PAYLOAD" --timeout "$LOAD_TIMEOUT" $(connect_args "$t")
            fi
        done
    done
fi

# ------------------------------------------------------------------ capture (network namespace)
if want_step capture && [ -n "$CAPTURE_SKIP" ]; then
    fact capture.skip "$CAPTURE_SKIP"
    note "capture step: $CAPTURE_SKIP"
elif want_step capture; then
    NS="meshbench-tcp-$$"
    VIP=240.240.0.10
    CAP_OUT=15001; PLAIN_OUT=15101; IN_PORT=15006; APP_HTTP=8080
    ADM_CAP=15000; ADM_PLAIN=15100; ADM_IN=15200
    # Opaque TCP in the same namespace: the TCP service's VIP, our inbound for it, HAProxy's pair.
    TVIP=240.240.0.11; TPORT=9000; IN_TCP=15007; ADM_IN_TCP=15201; APP_TCP=9100; HA_OUT=16001; HA_IN=16006
    note "capture: network namespace $NS"
    ip netns add "$NS"
    nsx() { ip netns exec "$NS" "$@"; }
    nsx ip link set lo up
    # A route for the VIP through a non-loopback device: the capture rules leave traffic over lo
    # alone, and the connect needs a route before the nat OUTPUT chain sees it (no dummy module
    # on this kernel: a veth pair with both ends in the namespace).
    nsx ip link add mb0 type veth peer name mb1
    nsx ip addr add 10.251.0.1/24 dev mb0
    nsx ip link set mb0 up; nsx ip link set mb1 up
    nsx ip route add default via 10.251.0.2 dev mb0
    NS_RULES=1
    nsx "$MESHCTL_BIN" capture apply --outbound-port "$CAP_OUT" --inbound-port "$IN_PORT" --admin-port "$ADM_CAP" --no-dns \
        >"$OUT/capture-apply.log" 2>&1 || { cat "$OUT/capture-apply.log" >&2; die "meshctl capture apply failed"; }
    fact capture.backend "$(grep -o 'backend [a-z]*' "$OUT/capture-apply.log" | head -n1 || true)"

    # The bare getsockopt, before the sidecar takes the outbound port.
    j="$(nsx python3 "$TOOL" origdst --listen-port "$CAP_OUT" --target "$VIP:80" -k "$GETSOCKOPT_K")" \
        || die "the getsockopt probe failed: $j"
    [[ "$j" == *"\"original\": \"$VIP:80\""* ]] || die "the redirected connection did not report $VIP:80 as its original destination: $j"
    fact capture.getsockopt "$j"

    # The sidecars run as uid/gid 1337 (the capture rules' proxy ids): their files must be theirs.
    chmod 0711 "$TMPD"
    CPKI="$TMPD/pki1337"; cp -a "$PKI" "$CPKI"; chown -R 1337:1337 "$CPKI"
    CD="$OUT/capture"; mkdir -p "$CD"
    cap_out_yaml() { # NAME OUT_PORT ADMIN CAPTURE(true|false)
        cat <<EOF
# generated by bench/tcp.sh: outbound sidecar, capture: $4
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {name: $1, namespace: default}
spec:
  workload: {service: client, serviceAccount: client}
  concurrency: 1
  admin: {address: 127.0.0.1, port: $3}
  tls:
    certChain: $CPKI/client/cert-chain.pem
    privateKey: $CPKI/client/key.pem
    trustBundle: $CPKI/root-cert.pem
  outbound: {address: 127.0.0.1, port: $2, capture: $4}
  clusters:
    - name: server
      addresses: [$VIP]
      port: 80
      tls: ISTIO_MUTUAL
      subjectAltNames: [$SAN_SERVER]
      endpoints: [127.0.0.1:$IN_PORT]
    - name: bench
      serviceProtocol: TCP
      addresses: [$TVIP]
      port: $TPORT
      tls: ISTIO_MUTUAL
      subjectAltNames: [$SAN_SERVER]
      endpoints: [127.0.0.1:$IN_TCP]
  routes:
    - hosts: [server]
      cluster: server
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bench, namespace: default}
spec:
  hosts: [bench]
  tcp:
  - match: [{port: $TPORT}]
    route:
    - destination: {host: bench}
EOF
    }
    cap_out_yaml cap-out "$CAP_OUT" "$ADM_CAP" true >"$CD/cap-out.yaml"
    cap_out_yaml plain-out "$PLAIN_OUT" "$ADM_PLAIN" false >"$CD/plain-out.yaml"
    cat >"$CD/inbound.yaml" <<EOF
# generated by bench/tcp.sh: inbound sidecar in front of the HTTP app
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {name: server-sidecar, namespace: default}
spec:
  workload: {service: server, serviceAccount: server}
  concurrency: 1
  admin: {address: 127.0.0.1, port: $ADM_IN}
  tls:
    certChain: $CPKI/server/cert-chain.pem
    privateKey: $CPKI/server/key.pem
    trustBundle: $CPKI/root-cert.pem
    minProtocolVersion: TLSV1_3
  inbound: {address: 127.0.0.1, port: $IN_PORT, appAddress: 127.0.0.1:$APP_HTTP}
EOF
    cat >"$CD/inbound-tcp.yaml" <<EOF
# generated by bench/tcp.sh: inbound sidecar in front of the TCP app (opaque bytes)
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {name: bench-sidecar, namespace: default}
spec:
  workload: {service: bench, serviceAccount: server}
  concurrency: 1
  admin: {address: 127.0.0.1, port: $ADM_IN_TCP}
  tls:
    certChain: $CPKI/server/cert-chain.pem
    privateKey: $CPKI/server/key.pem
    trustBundle: $CPKI/root-cert.pem
    minProtocolVersion: TLSV1_3
  inbound: {address: 127.0.0.1, port: $IN_TCP, appAddress: 127.0.0.1:$APP_TCP, appProtocol: TCP, servicePort: $TPORT}
EOF
    haproxy_out_cfg "$HA_OUT" "$HA_IN" >"$CD/haproxy-outbound.cfg"
    haproxy_in_cfg "$HA_IN" "$APP_TCP" "$CD/haproxy-inbound.sock" >"$CD/haproxy-inbound.cfg"
    HA_SOCK[cap_ha_in]="$CD/haproxy-inbound.sock"
    for f in haproxy-inbound haproxy-outbound; do
        haproxy -c -q -f "$CD/$f.cfg" >"$CD/check-$f.log" 2>&1 || { cat "$CD/check-$f.log" >&2; die "haproxy rejected $CD/$f.cfg"; }
    done
    mkdir -p "$CD/nginx/tmp"
    cat >"$CD/nginx/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1;
pid $CD/nginx/nginx.pid; error_log $CD/nginx/error.log;
events { worker_connections 8192; }
http { access_log off; client_body_temp_path $CD/nginx/tmp; keepalive_requests 10000000;
  server { listen 127.0.0.1:$APP_HTTP; location / { return 200 "hello\n"; } } }
EOF
    chmod a+rx "$OUT"; chmod -R a+rX "$CD"     # the configs (no keys) readable by uid 1337 whatever the umask
    start_proc cap_app "$CD/nginx.log" ip netns exec "$NS" nginx -c "$CD/nginx/nginx.conf" -p "$CD/nginx"
    as_proxy=(setpriv --reuid=1337 --regid=1337 --clear-groups)
    for f in inbound inbound-tcp cap-out plain-out; do
        nsx "${as_proxy[@]}" "$SIDECAR_BIN" --config "$CD/$f.yaml" --check >"$CD/check-$f.log" 2>&1 \
            || { cat "$CD/check-$f.log" >&2; die "the sidecar refused $CD/$f.yaml"; }
    done
    start_proc cap_in "$CD/inbound.log" ip netns exec "$NS" "${as_proxy[@]}" "$SIDECAR_BIN" --config "$CD/inbound.yaml"
    start_proc cap_out "$CD/cap-out.log" ip netns exec "$NS" "${as_proxy[@]}" "$SIDECAR_BIN" --config "$CD/cap-out.yaml"
    start_proc plain_out "$CD/plain-out.log" ip netns exec "$NS" "${as_proxy[@]}" "$SIDECAR_BIN" --config "$CD/plain-out.yaml"
    start_proc cap_tcpapp "$CD/tcp-app.log" ip netns exec "$NS" python3 "$TOOL" server "$APP_TCP"
    start_proc cap_in_tcp "$CD/inbound-tcp.log" ip netns exec "$NS" "${as_proxy[@]}" "$SIDECAR_BIN" --config "$CD/inbound-tcp.yaml"
    start_proc cap_ha_in "$CD/haproxy-inbound.log" ip netns exec "$NS" haproxy -db -f "$CD/haproxy-inbound.cfg"
    start_proc cap_ha_out "$CD/haproxy-outbound.log" ip netns exec "$NS" haproxy -db -f "$CD/haproxy-outbound.cfg"

    ns_stat() { # ADMIN KEY
        nsx curl -s --max-time 3 "http://127.0.0.1:$1/stats" | awk -F': ' -v k="$2" '$1 == k {print $2; f=1} END {if (!f) print 0}'
    }
    ns_wait_200() { # URL NAME...
        local url="$1" end=$(( $(date +%s) + 30 )) code; shift
        while :; do
            alive_or_die "$@"
            code="$(nsx curl -s -o /dev/null -w '%{http_code}' --max-time 2 -H 'Host: server' "$url" || true)"
            [ "$code" = 200 ] && return 0
            if [ "$(date +%s)" -ge "$end" ]; then
                for n in "$@"; do echo "---- last lines of ${LOG_OF[$n]}:" >&2; tail -n 20 "${LOG_OF[$n]}" >&2 || true; done
                die "capture: $url did not answer 200 through the sidecars after 30 s (last: ${code:-none})"
            fi
            sleep 0.2
        done
    }
    ns_wait_200 "http://127.0.0.1:$PLAIN_OUT/" cap_app cap_in plain_out
    ns_wait_200 "http://127.0.0.1:$CAP_OUT/" cap_app cap_in cap_out
    c0="$(ns_stat "$ADM_CAP" captured_connections_total)"
    ns_wait_200 "http://$VIP/" cap_app cap_in cap_out
    c1="$(ns_stat "$ADM_CAP" captured_connections_total)"
    [ "$c1" -gt "$c0" ] || die "capture: a call to $VIP:80 answered 200 but the sidecar did not count it as captured ($c0 -> $c1)"

    # Each mode: h2load --h1, one request per connection (Connection: close: h2load opens a new
    # connection for the next request), the same Host header everywhere.
    cap_run() { # MODE ROUND
        local mode="$1" r="$2" url outname adm
        case "$mode" in
            vip)        url="http://$VIP/";              outname=cap_out;   adm=$ADM_CAP ;;
            proxy-cap)  url="http://127.0.0.1:$CAP_OUT/";   outname=cap_out;   adm=$ADM_CAP ;;
            proxy-off)  url="http://127.0.0.1:$PLAIN_OUT/"; outname=plain_out; adm=$ADM_PLAIN ;;
        esac
        alive_or_die cap_app cap_in "$outname"
        local h=(h2load --h1 -t 1 -H ':authority: server' -H 'connection: close')
        if [ "$CAPTURE_WARMUP" -gt 0 ]; then
            nsx timeout "$LOAD_TIMEOUT" "${h[@]}" -c "$CAPTURE_C" -n "$CAPTURE_WARMUP" "$url" >"$CD/warmup.log" 2>&1 \
                || die "capture warm-up $mode failed: $(tail -n 5 "$CD/warmup.log")"
        fi
        local k0 o0 i0 k1 o1 i1 log="$CD/$mode-$r.h2load"
        k0="$(ns_stat "$adm" captured_connections_total)"
        o0="$(cpu_ticks "${PID_OF[$outname]}")"; i0="$(cpu_ticks "${PID_OF[cap_in]}")"
        nsx timeout "$LOAD_TIMEOUT" "${h[@]}" -c "$CAPTURE_C" -n "$CAPTURE_N" "$url" >"$log" 2>&1 \
            || die "capture $mode round $r: h2load failed: $(tail -n 5 "$log")"
        sleep 0.3
        o1="$(cpu_ticks "${PID_OF[$outname]}")"; i1="$(cpu_ticks "${PID_OF[cap_in]}")"
        k1="$(ns_stat "$adm" captured_connections_total)"
        grep -q "status codes: $CAPTURE_N 2xx" "$log" || die "capture $mode round $r: not every request got 2xx: $(grep 'status codes' "$log")"
        local secs
        secs="$(awk '/^finished in/ {v=$3; sub(/,$/, "", v); if (v ~ /ms$/) {sub(/ms$/, "", v); v /= 1000} else if (v ~ /us$/) {sub(/us$/, "", v); v /= 1000000} else sub(/s$/, "", v); print v}' "$log")"
        sample "capture-$mode" "$r" "$mode" "$secs" "$CAPTURE_N" "$((o1 - o0))" "$((i1 - i0))" 0 "$((k1 - k0))" 0
        note "round $r capture $mode: $secs s, out $((o1 - o0)) in $((i1 - i0)) ticks, captured +$((k1 - k0))"
    }
    # Opaque TCP, N short echo connections as in step 2, entered three ways in this namespace
    # (conntrack and the nat rules are on for all three): our pair by capture (to the TCP
    # service's VIP, no CONNECT), our pair by CONNECT (the capture-off sidecar), HAProxy's pair.
    tcp_args() { # MODE -> client arguments; OUTNAME INNAME
        case "$1" in
            tcp-vip)     echo "--host $TVIP --port $TPORT cap_out cap_in_tcp" ;;
            tcp-connect) echo "--port $PLAIN_OUT --connect bench:$TPORT plain_out cap_in_tcp" ;;
            tcp-haproxy) echo "--port $HA_OUT cap_ha_out cap_ha_in" ;;
        esac
    }
    tcp_hop() { # MODE -> "KIND WHERE" for hop_sessions
        case "$1" in
            tcp-vip|tcp-connect) echo "sidecar $ADM_IN_TCP" ;;
            tcp-haproxy)         echo "haproxy ${HA_SOCK[cap_ha_in]}" ;;
        esac
    }
    tcp_ready() { # MODE
        local a end=$(( $(date +%s) + 30 )); read -r -a a <<<"$(tcp_args "$1")"
        until nsx python3 "$TOOL" rate "${a[@]:0:${#a[@]}-2}" -n 1 -c 1 --timeout 3 >"$CD/ready-$1.json" 2>&1; do
            alive_or_die "${a[@]: -2}" cap_tcpapp
            [ "$(date +%s)" -ge "$end" ] && { cat "$CD/ready-$1.json" >&2; die "capture: no echo through $1 after 30 s"; }
            sleep 0.2
        done
    }
    tcp_run() { # MODE ROUND
        local mode="$1" r="$2" a; read -r -a a <<<"$(tcp_args "$mode")"
        local outname="${a[-2]}" inname="${a[-1]}" cargs=("${a[@]:0:${#a[@]}-2}")
        alive_or_die "$outname" "$inname" cap_tcpapp
        if [ "$WARMUP" -gt 0 ]; then
            nsx timeout "$LOAD_TIMEOUT" python3 "$TOOL" rate "${cargs[@]}" -n "$WARMUP" -c "$C" --payload "$PAYLOAD" >/dev/null 2>>"$OUT/client.log" \
                || die "capture TCP warm-up $mode failed: $(tail -n 3 "$OUT/client.log")"
        fi
        local k0 k1 o0 i0 o1 i1 a0 a1 j rc=0 f0 s0 f1 s1
        # shellcheck disable=SC2046
        read -r f0 s0 <<<"$(CAPTURE_NS=1 hop_sessions $(tcp_hop "$mode"))"
        k0="$(ns_stat "$ADM_CAP" captured_connections_total)"
        o0="$(cpu_ticks "${PID_OF[$outname]}")"; i0="$(cpu_ticks "${PID_OF[$inname]}")"; a0="$(cpu_ticks "${PID_OF[cap_tcpapp]}")"
        j="$(nsx timeout "$LOAD_TIMEOUT" python3 "$TOOL" rate "${cargs[@]}" -n "$N" -c "$C" --payload "$PAYLOAD" --timeout "$LOAD_TIMEOUT" 2>>"$OUT/client.log")" || rc=$?
        sleep 0.3
        o1="$(cpu_ticks "${PID_OF[$outname]}")"; i1="$(cpu_ticks "${PID_OF[$inname]}")"; a1="$(cpu_ticks "${PID_OF[cap_tcpapp]}")"
        k1="$(ns_stat "$ADM_CAP" captured_connections_total)"
        # shellcheck disable=SC2046
        read -r f1 s1 <<<"$(CAPTURE_NS=1 hop_sessions $(tcp_hop "$mode"))"
        [ "$rc" = 0 ] || die "capture $mode round $r: the client failed (exit $rc): $j"
        if [ "$mode" = tcp-vip ] && [ "$((k1 - k0))" != "$N" ]; then
            die "capture $mode round $r: $N connections to $TVIP:$TPORT, but the sidecar counted $((k1 - k0)) as captured"
        fi
        sample "tcpcap" "$r" "$mode" "$(jfield "$j" seconds)" "$(jfield "$j" done)" "$((o1 - o0))" "$((i1 - i0))" "$(jfield "$j" cpu)" "$((a1 - a0))" "$(jfield "$j" failed)" "$((f1 - f0))" "$((s1 - s0))"
        note "round $r capture $mode: $(jfield "$j" seconds) s, out $((o1 - o0)) in $((i1 - i0)) ticks"
    }
    for m in tcp-vip tcp-connect tcp-haproxy; do tcp_ready "$m"; done

    for r in $(seq 1 "$ROUNDS"); do
        for m in $(rotate "$r" vip proxy-off proxy-cap); do cap_run "$m" "$r"; done
        for m in $(rotate "$r" tcp-vip tcp-connect tcp-haproxy); do tcp_run "$m" "$r"; done
    done
fi

# ------------------------------------------------------------------ the report
python3 - "$SAMPLES" "$FACTS" "$OUT/body.md" "$CLK_TCK" "$ROUNDS" "$BYTES" "$N" "$C" "$PAYLOAD" "$CAPTURE_N" "$CAPTURE_C" "$STEPS" <<'EOF'
import json, statistics, sys
samples, facts_path, body, hz, rounds, nbytes, n, c, payload, cap_n, cap_c, steps = sys.argv[1:]
hz, rounds, nbytes, n, c, payload, cap_n, cap_c = (float(hz), int(rounds), int(nbytes), int(n), int(c), int(payload), int(cap_n), int(cap_c))
steps = steps.split()
rows = []
for line in open(samples):
    test, r, t, wall, units, ot, it, ccpu, app, failed, full, resumed = line.rstrip("\n").split("\t")
    rows.append(dict(test=test, r=int(r), t=t, wall=float(wall), units=int(units), out=int(ot) / hz,
                     inn=int(it) / hz, client=float(ccpu), app=int(app), failed=int(failed),
                     full=int(full) if full else None, resumed=int(resumed) if resumed else None))
facts = {}
for line in open(facts_path):
    k, v = line.rstrip("\n").split("\t", 1)
    facts[k] = v
med = statistics.median
def pick(test, t): return [x for x in rows if x["test"] == test and x["t"] == t]
def resumed_cell(xs):
    xs = [x for x in xs if x["full"] is not None]
    if not xs: return "-"
    res = sum(x["resumed"] for x in xs); tot = res + sum(x["full"] for x in xs)
    return f"{res:,} of {tot:,}" + (f" ({100.0 * res / tot:.1f}%)" if tot else "")
def verdict(ours, theirs):
    if theirs <= 0: return "n/a"
    d = 100.0 * (ours / theirs - 1)
    return f"meets ({d:+.0f}%)" if ours <= theirs else f"**misses** ({d:+.0f}%)"
out = []
W = out.append
names = {"sidecar": "sidecar pair (ours)", "haproxy": "HAProxy pair", "direct": "direct (no proxy)"}

if facts.get("tls.sidecar") or facts.get("tls.haproxy"):
    W("## The mTLS hop")
    W("")
    W("What each outbound/inbound pair negotiated, read from the ServerHello of three sequential")
    W("connections by a tap (a TCP relay in front of the inbound, used by a second outbound of the")
    W("same kind and config; never during counted runs). TLS 1.3 resumption shows as a")
    W("`pre_shared_key` extension in the ServerHello.")
    W("")
    W("| pair | version | cipher | key exchange | 1st connection | 2nd and 3rd |")
    W("|---|---|---|---|---|---|")
    ciphers = set()
    for p in ("sidecar", "haproxy"):
        if f"tls.{p}" not in facts: continue
        hs = [json.loads(x) for x in facts[f"tls.{p}"].replace("} {", "}\n{").split("\n") if x.strip()]
        ciphers.add(hs[0].get("cipher"))
        later = sum(1 for h in hs[1:] if h.get("resumed"))
        W(f"| {names[p]} | {hs[0].get('version')} | {hs[0].get('cipher')} | {hs[0].get('group')} | "
          f"{'resumed' if hs[0].get('resumed') else 'full handshake'} | {later} of {len(hs) - 1} resumed |")
    W("")
    W("Same cipher on both hops: " + ("yes" if len(ciphers) == 1 else f"**no** ({', '.join(sorted(map(str, ciphers)))}): the throughput figures are not like for like") + ".")
    W("")

if "throughput" in steps and any(x["test"] in ("up", "down") for x in rows):
    W("## 1. Throughput: one connection, " + f"{nbytes:,} bytes")
    W("")
    W("up: client -> app (the app reads and discards, then reports the count it got: every run")
    W("checked whole); down: app -> client. CPU seconds per GB (10^9 bytes) of each proxy process,")
    W(f"medians over {rounds} round(s). Bar: our outbound and our inbound each use no more CPU than HAProxy's.")
    W("")
    W("| direction | pair | wall s | MB/s | out CPU s/GB | in CPU s/GB | pair CPU s/GB | bar, outbound | bar, inbound |")
    W("|---|---|---:|---:|---:|---:|---:|---|---|")
    for d in ("up", "down"):
        m = {}
        for t in ("sidecar", "haproxy", "direct"):
            xs = pick(d, t)
            if not xs: continue
            gb = nbytes / 1e9
            m[t] = dict(wall=med(x["wall"] for x in xs), mbs=med(nbytes / 1e6 / x["wall"] for x in xs),
                        out=med(x["out"] / gb for x in xs), inn=med(x["inn"] / gb for x in xs),
                        pair=med((x["out"] + x["inn"]) / gb for x in xs))
        for t, v in m.items():
            bo = bi = ""
            if t == "sidecar" and "haproxy" in m:
                bo, bi = verdict(v["out"], m["haproxy"]["out"]), verdict(v["inn"], m["haproxy"]["inn"])
            cpu = ("-", "-", "-") if t == "direct" else (f"{v['out']:.3f}", f"{v['inn']:.3f}", f"{v['pair']:.3f}")
            W(f"| {d} | {names[t]} | {v['wall']:.2f} | {v['mbs']:,.0f} | {cpu[0]} | {cpu[1]} | {cpu[2]} | {bo} | {bi} |")
    W("")

if "rate" in steps and any(x["test"] == "rate" for x in rows):
    W(f"## 2. Connection rate: {n:,} short connections, {c} at a time")
    W("")
    W(f"Each connection: connect, {payload} bytes sent and echoed back by the app (checked), close. Ours")
    W("enters with `CONNECT bench:9000` (one HTTP/1.1 request head and its `200` per connection);")
    W("HAProxy's frontend takes the bytes at once. CPU microseconds per connection of each proxy")
    W(f"process, medians over {rounds} round(s). Bar: our outbound and our inbound each use no more CPU than HAProxy's.")
    W("")
    W("| pair | conn/s | out CPU us/conn | in CPU us/conn | pair CPU us/conn | bar, outbound | bar, inbound | hop handshakes resumed | failed |")
    W("|---|---:|---:|---:|---:|---|---|---:|---:|")
    m = {}
    for t in ("sidecar", "haproxy", "direct"):
        xs = pick("rate", t)
        if not xs: continue
        m[t] = dict(cps=med(x["units"] / x["wall"] for x in xs), out=med(x["out"] * 1e6 / x["units"] for x in xs),
                    inn=med(x["inn"] * 1e6 / x["units"] for x in xs), pair=med((x["out"] + x["inn"]) * 1e6 / x["units"] for x in xs),
                    client=med(x["client"] * 1e6 / x["units"] for x in xs), cutil=med(x["client"] / x["wall"] for x in xs),
                    app=med(x["app"] / hz * 1e6 / x["units"] for x in xs), failed=sum(x["failed"] for x in xs),
                    resumed=resumed_cell(xs))
    for t, v in m.items():
        bo = bi = ""
        if t == "sidecar" and "haproxy" in m:
            bo, bi = verdict(v["out"], m["haproxy"]["out"]), verdict(v["inn"], m["haproxy"]["inn"])
        cpu = ("-", "-", "-") if t == "direct" else (f"{v['out']:.1f}", f"{v['inn']:.1f}", f"{v['pair']:.1f}")
        W(f"| {names[t]} | {v['cps']:,.0f} | {cpu[0]} | {cpu[1]} | {cpu[2]} | {bo} | {bi} | {v['resumed']} | {v['failed']} |")
    W("")
    W("The load generator (one Python process, selectors) and the app (one Python process) beside them:")
    W("")
    W("| pair | client CPU us/conn | client busy | app CPU us/conn |")
    W("|---|---:|---:|---:|")
    for t, v in m.items():
        W(f"| {names[t]} | {v['client']:.1f} | {100 * v['cutil']:.0f}% | {v['app']:.1f} |")
    W("")
    if "direct" in m:
        for t in ("sidecar", "haproxy"):
            if t not in m: continue
            ratio = m["direct"]["cps"] / m[t]["cps"]
            W(f"- {names[t]}: the client and app alone reach {ratio:.1f}x its connection rate; "
              + ("the pair, not the load generator, sets the pace." if ratio >= 1.5 else
                 "**the load generator is close to its own limit: the conn/s figure is not the pair's limit** (CPU per connection still is)."))
        W("")
    W("Hop handshakes resumed: counted by each inbound during the counted runs, all rounds (ours: `tls_sessions_resumed`")
    W("of `tls_handshakes_ok` in /stats; HAProxy: the frontend's `ssl_reused_sess` of `ssl_sess` + `ssl_reused_sess`).")
    W("")
    W(f"Resolution: one clock tick (1/{hz:.0f} s) is {1e6 / hz / n:.2f} us per connection at N={n:,}.")
    W("")

caprows = [x for x in rows if x["test"].startswith("capture-")]
if "capture" in steps:
    W("## 3. Capture: the HTTP path through capture vs through `http_proxy`")
    W("")
    if "capture.skip" in facts:
        W(facts["capture.skip"] + ".")
        W("")
    elif caprows:
        W(f"In a network namespace made by the script, capture rules from `meshctl capture apply` ({facts.get('capture.backend', '?')}),")
        W("static sidecars as uid/gid 1337 (one worker each), the app nginx (one worker). h2load --h1,")
        W(f"{cap_n:,} requests of one connection each (`Connection: close`), {cap_c} at a time, `Host: server` on every path:")
        W("")
        W("- `vip`: to the service VIP 240.240.0.10:80, redirected to the outbound listener of the sidecar with `capture: true`")
        W("  (getsockopt(SO_ORIGINAL_DST), the VIP's table lookup, the HTTP path);")
        W("- `proxy-cap`: straight to that same listener, http_proxy style (it still pays the getsockopt, which says \"not captured\");")
        W("- `proxy-off`: straight to the listener of a second outbound sidecar with `capture: false` (no getsockopt at all).")
        W("")
        W("| mode | conn/s | outbound CPU us/conn | inbound CPU us/conn | counted as captured |")
        W("|---|---:|---:|---:|---:|")
        per = {}
        for mode in ("vip", "proxy-cap", "proxy-off"):
            xs = [x for x in caprows if x["t"] == mode]
            if not xs: continue
            per[mode] = {x["r"]: x["out"] * 1e6 / x["units"] for x in xs}
            W(f"| {mode} | {med(x['units'] / x['wall'] for x in xs):,.0f} | {med(per[mode].values()):.2f} | "
              f"{med(x['inn'] * 1e6 / x['units'] for x in xs):.2f} | {sum(x['app'] for x in xs):,} of {sum(x['units'] for x in xs):,} |")
        W("")
        W("The cost of capture, per connection of the outbound sidecar: the difference within each round, median over rounds.")
        W("Bar: under 1 us per connection.")
        W("")
        W("| difference | median us/conn | per round | bar (median) | every round under 1 us |")
        W("|---|---:|---|---|---|")
        for a, b, what in (("vip", "proxy-off", "captured vs a sidecar without capture (the whole cost)"),
                           ("vip", "proxy-cap", "captured vs http_proxy on the same sidecar (lookup and routing by VIP)")):
            if a not in per or b not in per: continue
            ds = [per[a][r] - per[b][r] for r in sorted(per[a]) if r in per[b]]
            mdv = med(ds)
            W(f"| {a} - {b}: {what} | {mdv:+.2f} | {', '.join(f'{d:+.2f}' for d in ds)} | "
              f"{'meets' if mdv < 1.0 else '**misses**'} | {'yes' if max(ds) < 1.0 else 'no'} |")
        W("")
        W(f"Resolution: one clock tick is {1e6 / hz / cap_n:.2f} us per connection at {cap_n:,} connections. A median")
        W("under the bar with some rounds over it is within this machine's noise: more rounds or a larger CAPTURE_N settle it.")
        W("")
    tcps = [x for x in rows if x["test"] == "tcpcap"]
    if tcps:
        W(f"### Opaque TCP in the same namespace: {n:,} short echo connections, {c} at a time")
        W("")
        W("As step 2, with the nat rules and conntrack on for every row: our pair entered by capture (to the TCP")
        W(f"service's VIP 240.240.0.11:9000, no CONNECT: every connection counted as captured, checked), our pair")
        W("entered by `CONNECT` (the capture-off sidecar), HAProxy's pair (`mode tcp`, the same TLS). Bar as in step 2.")
        W("")
        W("| entry | conn/s | out CPU us/conn | in CPU us/conn | pair CPU us/conn | bar, outbound | bar, inbound | hop handshakes resumed | failed |")
        W("|---|---:|---:|---:|---:|---|---|---:|---:|")
        tm = {}
        for mode in ("tcp-vip", "tcp-connect", "tcp-haproxy"):
            xs = [x for x in tcps if x["t"] == mode]
            if not xs: continue
            tm[mode] = dict(cps=med(x["units"] / x["wall"] for x in xs), out=med(x["out"] * 1e6 / x["units"] for x in xs),
                            inn=med(x["inn"] * 1e6 / x["units"] for x in xs), pair=med((x["out"] + x["inn"]) * 1e6 / x["units"] for x in xs),
                            failed=sum(x["failed"] for x in xs), resumed=resumed_cell(xs))
        label = {"tcp-vip": "ours, by capture", "tcp-connect": "ours, by CONNECT", "tcp-haproxy": "HAProxy"}
        for mode, v in tm.items():
            bo = bi = ""
            if mode != "tcp-haproxy" and "tcp-haproxy" in tm:
                bo, bi = verdict(v["out"], tm["tcp-haproxy"]["out"]), verdict(v["inn"], tm["tcp-haproxy"]["inn"])
            W(f"| {label[mode]} | {v['cps']:,.0f} | {v['out']:.1f} | {v['inn']:.1f} | {v['pair']:.1f} | {bo} | {bi} | {v['resumed']} | {v['failed']} |")
        W("")
        if "tcp-vip" in tm and "tcp-connect" in tm:
            d = tm["tcp-connect"]["out"] - tm["tcp-vip"]["out"]
            W(f"Our outbound's cheaper entry here: {'capture' if d > 0 else 'CONNECT'} "
              f"({abs(d):.1f} us per connection less than {'CONNECT' if d > 0 else 'capture'}; one clock tick is {1e6 / hz / n:.2f} us per connection).")
            W("")
    if "capture.getsockopt" in facts:
        g = json.loads(facts["capture.getsockopt"])
        W(f"The bare call, as a sanity figure: on a connection redirected from {g['original']}, getsockopt(SOL_IP,")
        W(f"SO_ORIGINAL_DST) from Python takes {g['ns_origdst']:.0f} ns per call, getsockopt(SOL_SOCKET, SO_TYPE)")
        W(f"{g['ns_sotype']:.0f} ns (the same interpreter and syscall overhead, no conntrack lookup): the lookup adds")
        W(f"{g['ns_extra']:.0f} ns (fastest of 5 batches each).")
        W("")

W("## Per round")
W("")
W("test, round, target: wall s, units (bytes or connections), outbound ticks, inbound ticks, client CPU s, app ticks (for the capture HTTP rows: connections counted as captured), failed.")
W("")
W("```")
for x in rows:
    W(f"{x['test']:<18} {x['r']} {x['t']:<12} {x['wall']:9.3f} {x['units']:>12} {round(x['out'] * hz):>6} {round(x['inn'] * hz):>6} {x['client']:8.2f} {x['app']:>6} {x['failed']}")
W("```")
open(body, "w").write("\n".join(out) + "\n")
print("\n".join(out))
EOF

prov_write "$RESULTS" "Opaque TCP and capture: the sidecar against HAProxy" "$OUT/body.md" \
    "Opaque TCP through two proxies with mutual TLS on the hop (our sidecars against HAProxy in TCP mode), one worker each, and the cost of transparent capture on the HTTP path (see \`bench/README.md\`)."
note "wrote $RESULTS"
