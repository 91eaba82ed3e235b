#!/usr/bin/env bash
# The example mesh on this machine, in one command: a caller's sidecar sending 90% of requests
# to reviews v1 and 10% to a v2 canary (config/client-sidecar.yaml), over mTLS:
#
#   curl --> [client sidecar :15001] --mTLS--> [reviews v1 sidecar :16006] --> app :9080
#                                     \-mTLS--> [reviews v2 sidecar :16106] --> app :9081
#
# Installs what is missing, builds release binaries, makes a test PKI (certs/out, keys never
# committed), starts the sample app and both sidecars, sends a first request, and keeps running
# until Ctrl-C (then drains both sidecars and stops everything).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup-deps.sh
echo "run-demo: building (release)..."
swift build -c release --static-swift-stdlib 2>&1 | tail -1
bash certs/make-pki.sh certs/out productpage reviews >/dev/null 2>&1 \
    || bash certs/make-pki.sh certs/out productpage reviews
BIN=.build/release/sidecar
mkdir -p run
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM
python3 tools/upstream.py --port 9080 --name reviews-v1 > run/app.log 2>&1 & pids+=($!)
python3 tools/upstream.py --port 9081 --name reviews-v2 > run/app-v2.log 2>&1 & pids+=($!)
"$BIN" --config config/server-sidecar.yaml > run/server-sidecar.log 2>&1 & pids+=($!)
"$BIN" --config config/server-sidecar-v2.yaml > run/server-sidecar-v2.log 2>&1 & pids+=($!)
"$BIN" --config config/client-sidecar.yaml > run/client-sidecar.log 2>&1 & pids+=($!)
for _ in $(seq 1 100); do
    grep -q READY run/app.log 2>/dev/null && break
    sleep 0.1
done
for port in 15000 16000 16100; do
    for _ in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break
        sleep 0.1
    done
    curl -sf "http://127.0.0.1:$port/ready" >/dev/null || { echo "run-demo: sidecar on admin :$port not ready; see run/*.log" >&2; exit 1; }
done
echo "run-demo: curl -H 'Host: reviews' http://127.0.0.1:15001/echo"
curl -s -H 'Host: reviews' http://127.0.0.1:15001/echo
echo
echo "run-demo: 200 requests through the 90/10 canary split:"
for _ in $(seq 1 200); do curl -s -H 'Host: reviews' http://127.0.0.1:15001/; done | sort | uniq -c
echo "run-demo: a tester always reaches v2:"
curl -s -H 'Host: reviews' -H 'end-user: tester' http://127.0.0.1:15001/
cat <<MSG
run-demo: the mesh is up. Try:
  curl -H 'Host: reviews' http://127.0.0.1:15001/
  http_proxy=http://127.0.0.1:15001 curl http://reviews:9080/echo
  curl -H 'Host: reviews' -H 'end-user: tester' http://127.0.0.1:15001/
  curl http://127.0.0.1:15000/stats          # client sidecar counters (servers: :16000, :16100)
  curl -s http://127.0.0.1:15000/stats/prometheus | grep 'istio_requests_total{'   # per route
Logs in run/. Ctrl-C stops everything.
MSG
wait
