#!/usr/bin/env bash
# Config push at scale: N simulated sidecars (threads in one Python process, each with its own
# config stream over mTLS, node ids sim-0..N-1) hold long-polls on one meshd; `meshctl apply`
# changes a VirtualService ROUNDS times and the script measures, for each apply, the time until
# every simulated sidecar received and ACKed the new version, plus meshd's memory (RSS) and
# threads at that size. Overwrites bench/RESULTS-push.md (one header naming the commit, machine,
# binaries and settings, then the table). Bounded: N streams, ROUNDS applies, 120 s per wait.
#
# Environment: N=1000 ROUNDS=5 MESHD_BIN=.build/release/meshd (by default the script builds meshd
#              and meshctl first; NO_BUILD=1 skips that) RESULTS=bench/RESULTS-push.md
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
# shellcheck source=bench/tools/provenance.sh
. "$HERE/tools/provenance.sh"
prov_init push.sh "N ROUNDS NO_BUILD MESHD_BIN MESHCTL_BIN RESULTS"
N="${N:-1000}"
ROUNDS="${ROUNDS:-5}"
MESHD_BIN="${MESHD_BIN:-.build/release/meshd}"
MESHCTL_BIN="${MESHCTL_BIN:-$(dirname "$MESHD_BIN")/meshctl}"
RESULTS="${RESULTS:-$HERE/RESULTS-push.md}"
if [ -z "${NO_BUILD:-}" ]; then
    swift build -c release --static-swift-stdlib --product meshd >/dev/null
    swift build -c release --static-swift-stdlib --product meshctl >/dev/null
fi
ulimit -n 65536 2>/dev/null || true
OUT=$(mktemp -d)
PID=""
trap '[ -n "$PID" ] && kill $PID 2>/dev/null; rm -rf "$OUT"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
API=$(port); ADMIN=$(port)
"$MESHD_BIN" --state-dir "$OUT/state" --api-port "$API" --admin-port "$ADMIN" --log-level warn > "$OUT/meshd.log" 2>&1 &
PID=$!
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$ADMIN/ready" >/dev/null && break; sleep 0.1; done
MC="$MESHCTL_BIN --meshd http://127.0.0.1:$ADMIN --admin-token-file $OUT/state/admin-token"
TOKEN=$($MC token create --namespace bench --service-account sim)
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$OUT/key.pem" -subj /O=bench \
    -addext "subjectAltName=URI:spiffe://cluster.local/ns/bench/sa/sim" -out "$OUT/csr.pem" 2>/dev/null
curl -s --cacert "$OUT/state/root-cert.pem" -H "authorization: Bearer $TOKEN" --data-binary @"$OUT/csr.pem" \
    "https://127.0.0.1:$API/v1/certificate" | awk '/# trust bundle/{exit} {print}' > "$OUT/cert.pem"
python3 - "$N" "$ROUNDS" "$API" "$ADMIN" "$PID" "$OUT" "$MC" "$OUT/body.md" <<'PY'
import http.client, re, ssl, subprocess, sys, threading, time, statistics
n, rounds, api, admin, pid, out, mc, results = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7], sys.argv[8]
ctx = ssl.create_default_context(cafile=f"{out}/state/root-cert.pem")
ctx.check_hostname = False
ctx.load_cert_chain(f"{out}/cert.pem", f"{out}/key.pem")
acked = {}           # version -> list of ack times
lock = threading.Lock()
stop = threading.Event()
def sim(i):
    have = 0
    conn = None
    while not stop.is_set():
        try:
            if conn is None:
                conn = http.client.HTTPSConnection("127.0.0.1", api, context=ctx, timeout=60)
            conn.request("GET", f"/v1/config?version={have}&node=sim-{i}")
            r = conn.getresponse(); body = r.read()
            if r.status != 200:
                continue
            first = body.split(b"\n", 1)[0].split()
            v, nonce = int(first[1]), first[2].decode()
            conn.request("POST", f"/v1/ack?version={v}&node=sim-{i}&nonce={nonce}", body=b"")
            conn.getresponse().read()
            with lock:
                acked.setdefault(v, []).append(time.monotonic())
            have = v
        except Exception:
            conn = None
            time.sleep(0.2)
threads = [threading.Thread(target=sim, args=(i,), daemon=True) for i in range(n)]
t0 = time.monotonic()
for t in threads: t.start()
def wait_all(v, deadline):
    while time.monotonic() < deadline:
        with lock:
            if len(acked.get(v, [])) >= n: return True
        time.sleep(0.01)
    return False
assert wait_all(1, time.monotonic() + 120), f"not all {n} streams connected: {len(acked.get(1, []))}"
connect_s = time.monotonic() - t0
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1]) / 1024
def nthreads():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("Threads"): return int(l.split()[1])
samples = []
for k in range(rounds):
    w = 100 - 10 * (k + 1)
    f = f"{out}/vs-{k}.yaml"
    open(f, "w").write(f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: v1}}
      weight: {w}
    - destination: {{host: reviews, subset: v2}}
      weight: {100 - w}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
""")
    start = time.monotonic()
    r = subprocess.run(mc.split() + ["apply", "-f", f], capture_output=True, text=True)
    m = re.search(r"^applied: version (\d+)", r.stdout, re.M)   # "applied: version N", then one line per document
    assert m, f"round {k}: meshctl apply did not apply a new version: {r.stdout}{r.stderr}"
    v = int(m.group(1))
    assert wait_all(v, time.monotonic() + 120), f"round {k}: only {len(acked.get(v, []))} of {n} acked"
    with lock: times = sorted(t - start for t in acked[v])
    samples.append((times[len(times) // 2] * 1000, times[-1] * 1000))
    time.sleep(1)
stop.set()
mem, th = rss(), nthreads()
lines = [f"All {n} streams connected in {connect_s:.1f} s. Per apply: time until half and until all of them ACKed the new version.", "",
         "| apply | p50 ACK | all ACKed |", "|---:|---:|---:|"]
for i, (p50, mx) in enumerate(samples):
    lines.append(f"| {i + 1} | {p50:.0f} ms | {mx:.0f} ms |")
lines += ["", f"Median over applies: p50 {statistics.median(s[0] for s in samples):.0f} ms, all {statistics.median(s[1] for s in samples):.0f} ms. "
          f"meshd RSS with {n} streams: {mem:.1f} MB, {th} threads.", "",
          "The simulated sidecars are threads of one Python process (each its own mTLS config stream and node id) sharing the "
          "cores and the GIL with meshd, so the times are an upper bound of meshd's own push time. An apply is timed from the "
          "start of `meshctl apply` until the ACK of the new version arrived from half / all of the streams."]
open(results, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
prov_bins "$(readlink -f "$MESHD_BIN")" "$(readlink -f "$MESHCTL_BIN")"
prov_tools python3 openssl
prov_write "$RESULTS" "Config push to $N simulated sidecars" "$OUT/body.md" \
    "One meshd ($(nproc) cores shared with the simulated sidecars); \`meshctl apply\` changes a VirtualService $ROUNDS times."
echo "push.sh: wrote $RESULTS" >&2
