#!/usr/bin/env bash
# What the route table costs (issue: traffic management): one outbound sidecar in front of an
# nginx app, driven by h2load --h1 at c=64, with three configs, interleaved over ROUNDS rounds:
#
#   single   one VirtualService, one route, one destination
#   table    1,000 routes: 100 VirtualServices (hosts) x 10 routes with uri prefix matches; the
#            request matches the 10th route of its host, which splits 4 ways (25/25/25/25)
#            across 4 subsets (4 endpoints by label)
#   onehost  worst case: 1,000 routes in ONE VirtualService; the request matches the last one
#            (999 failed prefix matches first), 4-way split
#
# It reports req/s and sidecar CPU microseconds per request (from /proc), medians per config,
# and each config's cost relative to `single`. Bounded: ROUNDS x 3 runs of N requests.
#
# Environment: ROUNDS=5 N=60000 WARMUP=3000 SIDECAR_BIN=.build/release/sidecar NO_BUILD=1
#              OUT=bench/out/routes RESULTS=bench/RESULTS-routes.md
# RESULTS is overwritten in one piece: a header naming the commit, machine, binary and these
# settings (bench/tools/provenance.sh), then the table.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
# shellcheck source=bench/tools/provenance.sh
. "$HERE/tools/provenance.sh"
prov_init routes.sh "ROUNDS N WARMUP NO_BUILD SIDECAR_BIN OUT RESULTS"
ROUNDS="${ROUNDS:-5}"
N="${N:-60000}"
WARMUP="${WARMUP:-3000}"
OUT="${OUT:-$HERE/out/routes}"
RESULTS="${RESULTS:-$HERE/RESULTS-routes.md}"
SIDECAR_BIN="${SIDECAR_BIN:-.build/release/sidecar}"
CONFIGS="single table onehost"

die() { echo "routes.sh: error: $*" >&2; exit 1; }
note() { echo "routes.sh: $*" >&2; }
for t in h2load nginx python3; do command -v $t >/dev/null || die "$t is not installed (apt-get install nghttp2-client nginx-light)"; done

declare -a PIDS=()
cleanup() {
    local rc=$?
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.3
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    exit $rc
}
trap cleanup EXIT INT TERM

if [ -z "${NO_BUILD:-}" ]; then
    note "building the release sidecar"
    swift build -c release --static-swift-stdlib --product sidecar >/dev/null
fi
[ -x "$SIDECAR_BIN" ] || die "no sidecar binary at $SIDECAR_BIN"

rm -rf "$OUT"; mkdir -p "$OUT"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# nginx: one worker, four ports (the four subsets' endpoints).
APP_PORTS=(); for i in 1 2 3 4; do APP_PORTS+=("$(free_port)"); done
mkdir -p "$OUT/nginx"
{
    echo "worker_processes 1; daemon off; pid $OUT/nginx/nginx.pid; error_log $OUT/nginx/error.log;"
    echo "events { worker_connections 4096; }"
    echo "http { access_log off; keepalive_requests 10000000;"
    for p in "${APP_PORTS[@]}"; do echo "  server { listen 127.0.0.1:$p; location / { return 200 \"hello\\n\"; } }"; done
    echo "}"
} > "$OUT/nginx/nginx.conf"
nginx -c "$OUT/nginx/nginx.conf" -p "$OUT/nginx" &
PIDS+=($!)

OUTBOUND=$(free_port); ADMIN=$(free_port)
python3 - "$OUT" "$OUTBOUND" "$ADMIN" "${APP_PORTS[@]}" <<'EOF'
import sys
out, outbound, admin, *apps = sys.argv[1:]
eps = "\n".join(f"        - {{address: 127.0.0.1:{p}, labels: {{version: v{i+1}}}}}" for i, p in enumerate(apps))
boot = f"""apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {{name: bench}}
spec:
  workload: {{service: client}}
  concurrency: 1
  admin: {{port: {admin}}}
  outbound: {{port: {outbound}}}
  clusters:
    - name: reviews
      tls: DISABLE
      endpoints:
{eps}
"""
dr = """---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
""" + "".join(f"  - {{name: v{i}, labels: {{version: v{i}}}}}\n" for i in range(1, 5))
split = "".join(f"    - destination: {{host: reviews, subset: v{i}}}\n      weight: 25\n" for i in range(1, 5))

def vs(name, host, routes):
    text = f"---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{host}]\n  http:\n"
    for i in range(routes - 1):
        text += f"  - name: r{i}\n    match:\n    - uri: {{prefix: /path-{i}/}}\n    route:\n    - destination: {{host: reviews, subset: v{i % 4 + 1}}}\n"
    text += f"  - name: last\n    match:\n    - uri: {{prefix: /}}\n    route:\n{split}"
    return text

open(f"{out}/single.yaml", "w").write(boot + "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - name: only\n    route:\n    - destination: {host: reviews}\n")
table = boot + dr + vs("reviews", "reviews", 10) + "".join(vs(f"svc{k}", f"svc{k}", 10) for k in range(99))
open(f"{out}/table.yaml", "w").write(table)
open(f"{out}/onehost.yaml", "w").write(boot + dr + vs("reviews", "reviews", 1000))
EOF

cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
TICK=$(getconf CLK_TCK)

run_one() { # CONFIG ROUND
    local cfg=$1 r=$2
    "$SIDECAR_BIN" --config "$OUT/$cfg.yaml" > "$OUT/$cfg-$r.log" 2>&1 &
    local pid=$!
    PIDS+=($pid)
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$ADMIN/ready" >/dev/null 2>&1 && break; sleep 0.05; done
    curl -sf "http://127.0.0.1:$ADMIN/ready" >/dev/null || die "sidecar ($cfg) not ready: $(cat "$OUT/$cfg-$r.log")"
    timeout 120 h2load --h1 -n "$WARMUP" -c 64 -H ":authority: reviews" "http://127.0.0.1:$OUTBOUND/" >/dev/null
    local t0; t0=$(cpu_ticks $pid)
    timeout 300 h2load --h1 -n "$N" -c 64 -H ":authority: reviews" "http://127.0.0.1:$OUTBOUND/" > "$OUT/$cfg-$r.h2load"
    local t1; t1=$(cpu_ticks $pid)
    kill -TERM $pid; wait $pid 2>/dev/null || true
    grep -q "status codes: $N 2xx" "$OUT/$cfg-$r.h2load" || die "$cfg: not every request succeeded: $(grep 'status codes' "$OUT/$cfg-$r.h2load")"
    local rps; rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' "$OUT/$cfg-$r.h2load")
    local us; us=$(awk -v t=$((t1 - t0)) -v hz="$TICK" -v n="$N" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
    echo "$cfg $r $rps $us" >> "$OUT/samples"
    note "round $r $cfg: $rps req/s, $us us CPU/req"
}

for r in $(seq 1 "$ROUNDS"); do
    for cfg in $CONFIGS; do run_one "$cfg" "$r"; done
done

python3 - "$OUT/samples" "$OUT/body.md" "$ROUNDS" "$N" <<'EOF'
import statistics, sys
samples, results, rounds, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
rows = {}
for line in open(samples):
    cfg, r, rps, us = line.split()
    rows.setdefault(cfg, []).append((float(rps), float(us)))
med = {c: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for c, v in rows.items()}
base = med["single"]
desc = {"single": "1 route, 1 destination", "table": "1,000 routes (100 hosts x 10), match the 10th, 4-way split",
        "onehost": "1,000 routes in one host, match the last, 4-way split"}
out = [f"One outbound sidecar (1 worker) -> nginx, h2load --h1 c=64, {n} requests per run,",
       f"{rounds} interleaved rounds, medians. Cost = change against `single` (negative: cheaper).", "",
       "| config | what | req/s | CPU us/req | throughput cost | CPU cost |", "|---|---|---:|---:|---:|---:|"]
for c in ("single", "table", "onehost"):
    rps, us = med[c]
    out.append(f"| {c} | {desc[c]} | {rps:,.0f} | {us:.2f} | {100 * (1 - rps / base[0]):+.1f}% | {100 * (us / base[1] - 1):+.1f}% |")
out += ["", "Per round (req/s, CPU us/req):", ""]
for c in ("single", "table", "onehost"):
    out.append(f"- {c}: " + "; ".join(f"{rps:,.0f} / {us:.2f}" for rps, us in rows[c]))
open(results, "w").write("\n".join(out) + "\n")
print("\n".join(out))
EOF
prov_bins "$(readlink -f "$SIDECAR_BIN")"
prov_tools h2load nginx
prov_write "$RESULTS" "Route table cost" "$OUT/body.md" \
    "What routing on a large VirtualService table costs on the request path (see \`bench/README.md\`)."
note "wrote $RESULTS"
