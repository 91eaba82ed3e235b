#!/usr/bin/env bash
# Runs the product under the sanitizers (issue: hardening). Three modes:
#
#   scripts/sanitizers.sh [address] [pytest args...]   (default) AddressSanitizer: the unit tests with
#       `swift test --sanitize=address` (.build-asan-tests) and the end-to-end tests against
#       sidecar/meshd/meshctl built with -sanitize=address (.build-asan). Any AddressSanitizer
#       report fails the run. Leak detection is off here (the e2e processes are killed at teardown;
#       the test harness itself holds memory at exit); set ASAN_OPTIONS yourself to change that.
#   scripts/sanitizers.sh thread [pytest args...]      ThreadSanitizer: the same two suites with
#       -sanitize=thread (.build-tsan-tests, .build-tsan). Every process writes its reports to
#       .build-tsan/reports/tsan.PID (TSAN_OPTIONS log_path); any "ThreadSanitizer" report, in the
#       unit-test output or there, fails the run. About 10 minutes in all on 2 cores (builds cached).
#   scripts/sanitizers.sh leaks                        LeakSanitizer after load: an ASan build
#       (.build-asan) with detect_leaks=1; an outbound and an inbound sidecar (mTLS hop between
#       them) in front of tools/upstream.py, driven by h2load (HTTP/1.1 and h2c, requests that fail
#       with 404/503, connection churn), then stopped with SIGTERM so each drains and exits through
#       exit(0), where LSan checks; then meshd: join tokens, certificates signed for a mesh-mode
#       sidecar, config pushes with `meshctl apply`, SIGTERM. Any leak report fails the run.
#       Logs in .build-asan/leaks/.
#
# Bounded by the suites' own timeouts (and, in leaks mode, by timeouts on every step).
#   e.g. scripts/sanitizers.sh -k "not renewals";  scripts/sanitizers.sh thread tests/e2e/test_h2.py
set -euo pipefail
cd "$(dirname "$0")/.."

mode=address
case "${1:-}" in
    address|thread|leaks) mode="$1"; shift ;;
esac

run_address() {
    echo "sanitizers: unit tests under AddressSanitizer"
    ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}" swift test --sanitize=address --build-path .build-asan-tests 2>&1 | grep -E "Executed [0-9]+ tests|error:|AddressSanitizer" | tail -3
    echo "sanitizers: building sidecar, meshd and meshctl with AddressSanitizer"
    swift build --sanitize=address --build-path .build-asan 2>&1 | tail -1
    export SIDECAR_BIN="$PWD/.build-asan/debug/sidecar"
    export MESHD_BIN="$PWD/.build-asan/debug/meshd"
    export MESHCTL_BIN="$PWD/.build-asan/debug/meshctl"
    export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}"
    local start status=0
    start=$(date +%s)
    python3 -m pytest -q tests/e2e "$@" --basetemp=.build-asan/pytest || status=$?
    if grep -rl "AddressSanitizer" .build-asan/pytest 2>/dev/null | head -5 | grep -q .; then
        echo "sanitizers: AddressSanitizer reports in:"; grep -rl "AddressSanitizer" .build-asan/pytest | head -20
        status=1
    fi
    echo "sanitizers: e2e under AddressSanitizer finished in $(( $(date +%s) - start )) s with status $status"
    return $status
}

run_thread() {
    local status=0 start reports="$PWD/.build-tsan/reports" unitlog="$PWD/.build-tsan/unit-tests.log"
    mkdir -p .build-tsan
    echo "sanitizers: unit tests under ThreadSanitizer (full output: $unitlog)"
    start=$(date +%s)
    TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=0:second_deadlock_stack=1}" \
        swift test --sanitize=thread --build-path .build-tsan-tests >"$unitlog" 2>&1 || status=$?
    grep -E "Executed [0-9]+ tests|error:" "$unitlog" | tail -3 || true
    if grep -q "ThreadSanitizer" "$unitlog"; then
        echo "sanitizers: ThreadSanitizer reports in the unit tests:"
        grep -E "^(WARNING: ThreadSanitizer|SUMMARY: ThreadSanitizer)" "$unitlog" | sort | uniq -c | head -20
        status=1
    fi
    echo "sanitizers: unit tests under ThreadSanitizer finished in $(( $(date +%s) - start )) s with status $status"
    echo "sanitizers: building sidecar, meshd and meshctl with ThreadSanitizer"
    swift build --sanitize=thread --build-path .build-tsan 2>&1 | tail -1
    export SIDECAR_BIN="$PWD/.build-tsan/debug/sidecar"
    export MESHD_BIN="$PWD/.build-tsan/debug/meshd"
    export MESHCTL_BIN="$PWD/.build-tsan/debug/meshctl"
    rm -rf "$reports"; mkdir -p "$reports"
    # log_path: every instrumented process (also meshctl, whose output the tests capture) writes
    # its reports to a file of its own; exitcode stays TSan's 66 for processes that exit.
    export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=0:second_deadlock_stack=1}:log_path=$reports/tsan"
    start=$(date +%s)
    local e2e=0
    python3 -m pytest -q tests/e2e "$@" --basetemp=.build-tsan/pytest || e2e=$?
    [ $e2e = 0 ] || status=1
    if grep -rl "ThreadSanitizer" "$reports" .build-tsan/pytest 2>/dev/null | grep -q .; then
        echo "sanitizers: ThreadSanitizer reports (first frame of each, counted):"
        grep -rh -A3 "^WARNING: ThreadSanitizer" "$reports" .build-tsan/pytest 2>/dev/null \
            | grep -E "^ +#0 " | sed -E 's/^ +#0 (0x[0-9a-f]+ )?//; s/ \(.*//' | sort | uniq -c | sort -rn | head -20
        grep -rl "ThreadSanitizer" "$reports" .build-tsan/pytest 2>/dev/null | head -20
        status=1
    fi
    echo "sanitizers: e2e under ThreadSanitizer finished in $(( $(date +%s) - start )) s with pytest status $e2e, overall $status"
    return $status
}

# ---------------------------------------------------------------- leaks mode
LEAK_PIDS=()
leaks_cleanup() {
    local pid
    for pid in "${LEAK_PIDS[@]}"; do { kill -KILL "$pid" && wait "$pid"; } 2>/dev/null || true; done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() {   # URL [seconds]: until it answers 200
    local i
    for i in $(seq 1 $(( ${2:-20} * 10 ))); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" || true)" = 200 ] && return 0
        sleep 0.1
    done
    echo "sanitizers: timed out waiting for $1" >&2; return 1
}

# Sends SIGTERM to PID and waits up to 60 s for it to exit (a drain is up to 20 s, and LSan's
# scan at exit takes a few seconds in an ASan build); prints its exit status.
stop_and_wait() {
    local pid="$1" name="$2" i
    kill -TERM "$pid"
    for i in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "sanitizers: $name did not exit within 60 s of SIGTERM" >&2
        kill -KILL "$pid" 2>/dev/null || true
        return 1
    fi
    local rc=0
    wait "$pid" || rc=$?
    echo "sanitizers: $name exited with status $rc"
    return 0
}

run_leaks() {
    local out="$PWD/.build-asan/leaks" status=0
    command -v h2load >/dev/null || { echo "sanitizers: h2load not found (apt-get install nghttp2-client)" >&2; return 2; }
    echo "sanitizers: building sidecar, meshd and meshctl with AddressSanitizer (leak checking at exit)"
    swift build --sanitize=address --build-path .build-asan 2>&1 | tail -1
    local bin="$PWD/.build-asan/debug"
    rm -rf "$out"; mkdir -p "$out"
    trap leaks_cleanup EXIT
    # exitcode=0: a leak report must not change the exit status we print; we grep the logs instead.
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=0:log_path=$out/asan"
    export LSAN_OPTIONS="report_objects=0:max_leaks=30"

    # --- sidecars: h2load -> outbound :OUT -> mTLS -> inbound :IN -> app
    bash certs/make-pki.sh "$out/pki" client server >/dev/null 2>&1
    local app in out_port admin_in admin_out
    app=$(free_port); in=$(free_port); out_port=$(free_port); admin_in=$(free_port); admin_out=$(free_port)
    python3 tools/upstream.py --port "$app" --name server >"$out/app.log" 2>&1 &
    LEAK_PIDS+=($!)
    cat >"$out/server.yaml" <<EOF
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {name: server-sidecar, namespace: default}
spec:
  workload: {service: server}
  concurrency: 2
  admin: {port: $admin_in}
  tls:
    certChain: $out/pki/server/cert-chain.pem
    privateKey: $out/pki/server/key.pem
    trustBundle: $out/pki/root-cert.pem
  inbound:
    port: $in
    appAddress: 127.0.0.1:$app
    headerTimeout: 2s
EOF
    cat >"$out/client.yaml" <<EOF
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {name: client-sidecar, namespace: default}
spec:
  workload: {service: client}
  concurrency: 2
  admin: {port: $admin_out}
  tls:
    certChain: $out/pki/client/cert-chain.pem
    privateKey: $out/pki/client/key.pem
    trustBundle: $out/pki/root-cert.pem
  outbound:
    port: $out_port
    headerTimeout: 2s
  clusters:
    - name: server
      tls: ISTIO_MUTUAL
      subjectAltNames: [spiffe://cluster.local/ns/default/sa/server]
      endpoints:
        - 127.0.0.1:$in
    - name: down
      endpoints:
        - 127.0.0.1:1
  routes:
    - hosts: [server]
      cluster: server
    - hosts: [down]
      cluster: down
EOF
    # Canary: the leak check must be live on the path a sidecar takes on SIGTERM (drain, then
    # exit(0), which runs LSan's atexit check). A preloaded constructor leaks 4242 bytes on purpose;
    # its report must appear, or this mode proves nothing.
    if command -v cc >/dev/null; then
        mkdir -p "$out/canary"
        printf '%s\n' '#include <stdlib.h>' '#include <string.h>' 'void *volatile mesh_leak_canary_sink;' \
            '__attribute__((constructor)) static void mesh_leak_canary(void) {' \
            '    char *p = malloc(4242); memset(p, 1, 4242); mesh_leak_canary_sink = p; mesh_leak_canary_sink = 0; }' \
            >"$out/canary/canary.c"
        cc -shared -fPIC -O0 -o "$out/canary/canary.so" "$out/canary/canary.c"
        ASAN_OPTIONS="detect_leaks=1:exitcode=0:log_path=$out/canary/asan" LD_PRELOAD="$out/canary/canary.so" \
            "$bin/sidecar" --config "$out/server.yaml" >"$out/canary/sidecar.log" 2>&1 &
        local canary=$!; LEAK_PIDS+=($canary)
        wait_http "http://127.0.0.1:$admin_in/ready"
        stop_and_wait "$canary" canary-sidecar || status=1
        if grep -q "Direct leak of 4242 byte" "$out"/canary/asan.* 2>/dev/null; then
            echo "sanitizers: canary: the deliberate 4242-byte leak was reported at the sidecar's SIGTERM exit: leak checking is live"
        else
            echo "sanitizers: canary: the deliberate leak was NOT reported: LSan does not run on this exit path" >&2
            status=1
        fi
    else
        echo "sanitizers: no C compiler: skipping the canary that proves leak checking is live"
    fi
    "$bin/sidecar" --config "$out/server.yaml" >"$out/server-sidecar.log" 2>&1 &
    local server_pid=$!; LEAK_PIDS+=($server_pid)
    "$bin/sidecar" --config "$out/client.yaml" >"$out/client-sidecar.log" 2>&1 &
    local client_pid=$!; LEAK_PIDS+=($client_pid)
    wait_http "http://127.0.0.1:$admin_in/ready"
    wait_http "http://127.0.0.1:$admin_out/ready"
    local url="http://127.0.0.1:$out_port"
    echo "sanitizers: load through both sidecars (h2load, logs in $out)"
    local t=120
    # HTTP/1.1 keep-alive, then HTTP/2 (h2c) multiplexed, both to the app over the mTLS hop.
    timeout $t h2load --h1 -n 20000 -c 16 -H ":authority: server" "$url/" >"$out/h2load-h1.txt" 2>&1 || status=1
    timeout $t h2load -n 20000 -c 8 -m 16 -H ":authority: server" "$url/" >"$out/h2load-h2.txt" 2>&1 || status=1
    # Failing requests: no route (404) and an unreachable cluster (503), H1 and H2.
    timeout $t h2load --h1 -n 2000 -c 4 -H ":authority: nowhere" "$url/x" >"$out/h2load-404.txt" 2>&1 || true
    timeout $t h2load -n 2000 -c 4 -m 8 -H ":authority: down" "$url/x" >"$out/h2load-503.txt" 2>&1 || true
    # Connection churn: one request per connection (Connection: close), and h2 connections of 2 streams.
    timeout $t h2load --h1 -n 3000 -c 8 -H ":authority: server" -H "connection: close" "$url/" >"$out/h2load-churn-h1.txt" 2>&1 || true
    timeout $t h2load -n 3000 -c 1500 -m 1 -H ":authority: server" "$url/" >"$out/h2load-churn-h2.txt" 2>&1 || true
    # Abrupt client disconnects mid-request, and a malformed request.
    for i in $(seq 1 50); do
        printf 'POST /up HTTP/1.1\r\nhost: server\r\ncontent-length: 100000\r\n\r\npartial' | timeout 2 curl -s telnet://127.0.0.1:$out_port >/dev/null 2>&1 || true
    done
    printf 'GET / HTTP/1.1\r\nhost: server\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n' | timeout 2 curl -s telnet://127.0.0.1:$out_port >/dev/null 2>&1 || true
    local f
    for f in h1 h2 404 503 churn-h1 churn-h2; do
        echo "sanitizers:   $f: $(grep -E '^requests:' "$out/h2load-$f.txt" | sed 's/^requests: //'); $(grep -E '^status codes:' "$out/h2load-$f.txt")"
    done
    # The load must have gone through: the point is to exercise the full path, not refusals.
    for f in h1 h2; do
        if ! grep -qE "^requests: 20000 total.* (19[0-9]{3}|20000) succeeded" "$out/h2load-$f.txt"; then
            echo "sanitizers: the $f load did not mostly succeed (see $out/h2load-$f.txt)" >&2; status=1
        fi
    done
    curl -s "http://127.0.0.1:$admin_out/stats" | grep -E "^(requests_total|responses_[2-5]xx|downstream_connections_total|tls_handshakes_ok|upstream_overflow|upstream_connect_failures|upstream_resets_before_response):" | sed 's/^/sanitizers:   client-sidecar /'
    echo "sanitizers: SIGTERM to both sidecars; LeakSanitizer runs at exit"
    stop_and_wait "$client_pid" client-sidecar || status=1
    stop_and_wait "$server_pid" server-sidecar || status=1

    # --- meshd: tokens, certificates for a mesh-mode sidecar, config pushes, SIGTERM.
    local api madmin state="$out/meshd-state"
    api=$(free_port); madmin=$(free_port)
    "$bin/meshd" --state-dir "$state" --api-port "$api" --admin-port "$madmin" --cert-ttl 1h >"$out/meshd.log" 2>&1 &
    local meshd_pid=$!; LEAK_PIDS+=($meshd_pid)
    wait_http "http://127.0.0.1:$madmin/ready"
    local ctl=("$bin/meshctl" --meshd "http://127.0.0.1:$madmin" --admin-token-file "$state/admin-token")
    local i sidecar_pids=()
    for i in 1 2 3; do
        local tok sadmin
        tok=$(timeout 30 "${ctl[@]}" token create --namespace default --service-account "svc$i")
        sadmin=$(free_port)
        "$bin/sidecar" --meshd "127.0.0.1:$api" --root-cert "$state/root-cert.pem" --token "$tok" --service "svc$i" \
            --admin-port "$sadmin" --inbound-port "$(free_port)" --outbound-port "$(free_port)" --app-port "$app" \
            --concurrency 1 >"$out/mesh-sidecar-$i.log" 2>&1 &
        sidecar_pids+=($!); LEAK_PIDS+=($!)
        wait_http "http://127.0.0.1:$sadmin/ready" 60 || status=1
    done
    for i in $(seq 1 10); do
        cat >"$out/vs.yaml" <<EOF
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: svc1, namespace: default}
spec:
  hosts: [svc1]
  http:
    - route:
        - destination: {host: svc1}
          weight: 100
      timeout: ${i}s
EOF
        timeout 60 "${ctl[@]}" apply -f "$out/vs.yaml" --wait >>"$out/meshctl.log" 2>&1 || { echo "sanitizers: meshctl apply $i failed (see $out/meshctl.log)"; status=1; }
    done
    timeout 30 "${ctl[@]}" status >>"$out/meshctl.log" 2>&1 || status=1
    for i in $(seq 1 20); do timeout 30 "${ctl[@]}" token create --namespace default --service-account "t$i" >/dev/null || status=1; done
    local p
    for p in "${sidecar_pids[@]}"; do stop_and_wait "$p" mesh-sidecar || status=1; done
    echo "sanitizers: SIGTERM to meshd; LeakSanitizer runs at exit"
    stop_and_wait "$meshd_pid" meshd || status=1
    trap - EXIT
    leaks_cleanup

    if grep -l "LeakSanitizer\|AddressSanitizer" "$out"/asan.* 2>/dev/null | grep -q .; then
        echo "sanitizers: sanitizer reports:"
        local f
        for f in $(grep -l "LeakSanitizer\|AddressSanitizer" "$out"/asan.*); do
            echo "  $f: $(grep -E '^SUMMARY' "$f" | head -1)"
        done
        status=1
    else
        echo "sanitizers: no leak (or other AddressSanitizer) report from any sidecar, meshd or meshctl"
    fi
    echo "sanitizers: leaks mode finished with status $status"
    return $status
}

case "$mode" in
    address) run_address "$@" ;;
    thread) run_thread "$@" ;;
    leaks) run_leaks "$@" ;;
esac
