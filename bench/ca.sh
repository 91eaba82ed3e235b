#!/usr/bin/env bash
# Certificates issued per second by meshd: h2load --h1 over TLS posts the same CSR with a join
# token N times at concurrency C to POST /v1/certificate; every request is a full signing (a
# fresh serial, an ECDSA P-256 signature). Reports req/s (= certificates/s), latency and meshd's
# CPU per certificate, and overwrites bench/RESULTS-ca.md (one header naming the commit, machine,
# binaries and settings, then the table). Bounded: 120 s per concurrency (about 30 s in all).
#
# Environment: N=4000 C="1 4 16" MESHD_BIN=.build/release/meshd (by default the script builds
#              meshd and meshctl first; NO_BUILD=1 skips that) RESULTS=bench/RESULTS-ca.md
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
# shellcheck source=bench/tools/provenance.sh
. "$HERE/tools/provenance.sh"
prov_init ca.sh "N C NO_BUILD MESHD_BIN MESHCTL_BIN RESULTS"
N="${N:-4000}"
C="${C:-1 4 16}"; CS="$C"
MESHD_BIN="${MESHD_BIN:-.build/release/meshd}"
MESHCTL_BIN="${MESHCTL_BIN:-$(dirname "$MESHD_BIN")/meshctl}"
RESULTS="${RESULTS:-$HERE/RESULTS-ca.md}"
command -v h2load >/dev/null || { echo "ca.sh: h2load missing (apt-get install nghttp2-client)" >&2; exit 1; }
if [ -z "${NO_BUILD:-}" ]; then swift build -c release --static-swift-stdlib --product meshd >/dev/null; swift build -c release --static-swift-stdlib --product meshctl >/dev/null; fi
OUT=$(mktemp -d)
PID=""
trap '[ -n "$PID" ] && kill $PID 2>/dev/null; rm -rf "$OUT"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
API=$(port); ADMIN=$(port)
"$MESHD_BIN" --state-dir "$OUT/state" --api-port "$API" --admin-port "$ADMIN" --log-level warn > "$OUT/meshd.log" 2>&1 &
PID=$!
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$ADMIN/ready" >/dev/null && break; sleep 0.1; done
TOKEN=$("$MESHCTL_BIN" --meshd "http://127.0.0.1:$ADMIN" --admin-token-file "$OUT/state/admin-token" token create --namespace bench --service-account load --ttl 1h)
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$OUT/k.pem" -subj /O=bench \
    -addext "subjectAltName=URI:spiffe://cluster.local/ns/bench/sa/load" -out "$OUT/csr.pem" 2>/dev/null
TICK=$(getconf CLK_TCK)
{
    echo "| concurrency | requests | certificates/s | mean latency | meshd CPU per certificate |"
    echo "|---:|---:|---:|---:|---:|"
} > "$OUT/table"
for c in $CS; do
    t0=$(sed 's/.*) //' /proc/$PID/stat | awk '{print $12 + $13}')
    timeout 120 h2load --h1 -n "$N" -c "$c" -d "$OUT/csr.pem" -H "authorization: Bearer $TOKEN" \
        "https://127.0.0.1:$API/v1/certificate" > "$OUT/h2load-$c.txt"
    t1=$(sed 's/.*) //' /proc/$PID/stat | awk '{print $12 + $13}')
    grep -q "status codes: $N 2xx" "$OUT/h2load-$c.txt" || { echo "ca.sh: not every request succeeded:" >&2; grep "status codes" "$OUT/h2load-$c.txt" >&2; exit 1; }
    rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' "$OUT/h2load-$c.txt")
    mean=$(awk '/^time for request:/ {print $6}' "$OUT/h2load-$c.txt")
    cpu=$(awk -v t=$((t1 - t0)) -v hz="$TICK" -v n="$N" 'BEGIN {printf "%.0f µs", t / hz * 1e6 / n}')
    echo "| $c | $N | ${rps%.*} | $mean | $cpu |" >> "$OUT/table"
    echo "ca.sh: c=$c: $rps certificates/s, mean $mean, meshd CPU $cpu per certificate" >&2
done
{
    echo
    echo "Every request is a full signing (fresh serial, ECDSA P-256 signature) of the same CSR with a join token; "\
"h2load --h1 over TLS, $N requests per concurrency. meshd CPU = (utime+stime) of the meshd process over the run / requests "\
"(/proc/PID/stat). Mean latency is h2load's \"time for request\" mean."
} >> "$OUT/table"
prov_bins "$(readlink -f "$MESHD_BIN")" "$(readlink -f "$MESHCTL_BIN")"
prov_tools h2load openssl
prov_write "$RESULTS" "meshd certificate issuance" "$OUT/table" \
    "\`POST /v1/certificate\` on one meshd ($(nproc) cores shared with the load generator): certificates per second, latency and meshd's CPU per certificate."
cat "$RESULTS"
