#!/usr/bin/env bash
# Scans the sidecar's inbound (mutual-TLS) listener with testssl.sh (issue: hardening).
#
#   scripts/testssl.sh            needs `testssl` (apt-get install -y testssl.sh; Debian 12 has 3.0.8)
#
# What it does: makes a PKI in a temp dir (certs/make-pki.sh: root + intermediate CA, a server
# leaf named "localhost" and a client leaf, EC P-256), starts one sidecar in static mode whose
# inbound listener requires a client certificate from that CA, runs testssl against it with a
# time bound, saves the log and the flat JSON, and judges the JSON. It fails when:
#   - SSLv2, SSLv3, TLS 1.0 or TLS 1.1 is offered;
#   - any NULL, aNULL, EXPORT, LOW, RC4, DES/3DES/IDEA or CBC cipher suite is offered (TLS 1.2 is
#     meant to offer only ECDHE + AEAD suites), or a cipher category other than "strong" is;
#   - a vulnerability check is flagged: severity MEDIUM, HIGH or CRITICAL, or a finding saying
#     "VULNERABLE" or "NOT ok";
#   - any other finding has severity HIGH or CRITICAL, except `cert_revocation` (no CRL/OCSP URI:
#     the mesh's certificates are short-lived by design, like Istio's), which is printed as accepted.
# It prints a summary: protocols, cipher suites offered, each vulnerability check with its verdict.
#
# testssl 3.0.8 has no option to present a client certificate (--mtls came in 3.2), so the scan
# runs without one. The handshake-level checks are still meaningful: the server picks protocol,
# cipher suite, group and extensions, and sends its certificate and CertificateRequest, before the
# client's certificate is due; testssl reads all of that and then abandons the handshake. What it
# cannot see is what needs a finished handshake: HTTP (headers, BREACH), session resumption, and
# client-initiated renegotiation (the server sets SSL_OP_NO_RENEGOTIATION); those checks report
# that they could not run (WARN, or "not supported" for resumption), and this script lists them.
#
# Environment: SIDECAR_BIN (default .build/release/sidecar, else .build/debug/sidecar, else builds
# debug), TESTSSL_TIMEOUT (seconds, default 900), OUT (where log/JSON go; default a temp dir, kept).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v testssl >/dev/null || { echo "testssl.sh: testssl not found (apt-get install -y testssl.sh)" >&2; exit 2; }
if [ -z "${SIDECAR_BIN:-}" ]; then
    if [ -x .build/release/sidecar ]; then SIDECAR_BIN=.build/release/sidecar
    elif [ -x .build/debug/sidecar ]; then SIDECAR_BIN=.build/debug/sidecar
    else swift build --product sidecar 2>&1 | tail -1; SIDECAR_BIN=.build/debug/sidecar; fi
fi
TESTSSL_TIMEOUT="${TESTSSL_TIMEOUT:-900}"
work=$(mktemp -d /tmp/testssl-mesh.XXXXXX)
OUT="${OUT:-$work/out}"
mkdir -p "$OUT"

pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$work/pki"    # private keys do not outlive the run; the reports in $OUT stay
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

bash certs/make-pki.sh "$work/pki" localhost client >/dev/null 2>&1
app=$(port); inbound=$(port); admin=$(port)
python3 tools/upstream.py --port "$app" --name server >"$OUT/app.log" 2>&1 &
pids+=($!)
for i in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$app") 2>/dev/null && break; sleep 0.1; done
cat >"$work/sidecar.yaml" <<EOF
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {name: testssl-target, namespace: default}
spec:
  workload: {service: localhost}
  concurrency: 1
  admin: {port: $admin}
  tls:
    certChain: $work/pki/localhost/cert-chain.pem
    privateKey: $work/pki/localhost/key.pem
    trustBundle: $work/pki/root-cert.pem
  inbound:
    port: $inbound
    appAddress: 127.0.0.1:$app
EOF
"$SIDECAR_BIN" --config "$work/sidecar.yaml" >"$OUT/sidecar.log" 2>&1 &
pids+=($!)
for i in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$admin/ready" || true)" = 200 ] && break
    sleep 0.1
done
# The listener really requires a client certificate: with one a request goes through, without
# one the handshake is refused.
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$work/pki/root-cert.pem" \
    --cert "$work/pki/client/cert-chain.pem" --key "$work/pki/client/key.pem" \
    --resolve "localhost:$inbound:127.0.0.1" "https://localhost:$inbound/" || true)
nocert=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$work/pki/root-cert.pem" \
    --resolve "localhost:$inbound:127.0.0.1" "https://localhost:$inbound/" || true)
echo "testssl.sh: sidecar inbound 127.0.0.1:$inbound: with a client certificate HTTP $code, without one HTTP ${nocert:-000} (000 = handshake refused)"
[ "$code" = 200 ] && [ "$nocert" = 000 ] || { echo "testssl.sh: the listener does not behave as an mTLS listener" >&2; exit 1; }

echo "testssl.sh: running testssl $(testssl --version 2>/dev/null | grep -oE 'testssl +[0-9.]+' | head -1 | awk '{print $2}') (up to ${TESTSSL_TIMEOUT}s; log and JSON in $OUT)"
start=$(date +%s)
rc=0
# --ip: connect to 127.0.0.1 while naming the host "localhost" (the server certificate's DNS SAN);
# --add-ca: our root, so the chain of trust is judged against it; -e lists every suite offered.
timeout "$TESTSSL_TIMEOUT" testssl --quiet --color 0 --warnings off --nodns none --ip 127.0.0.1 \
    --connect-timeout 5 --openssl-timeout 5 --add-ca "$work/pki/root-cert.pem" \
    --protocols --std --each-cipher --fs --server-defaults --server-preference --vulnerable \
    --logfile "$OUT/testssl.log" --jsonfile "$OUT/testssl.json" "localhost:$inbound" >/dev/null 2>&1 || rc=$?
echo "testssl.sh: testssl finished in $(( $(date +%s) - start )) s with status $rc"
[ $rc = 124 ] && { echo "testssl.sh: testssl timed out" >&2; exit 1; }
[ -s "$OUT/testssl.json" ] || { echo "testssl.sh: no JSON output (see $OUT/testssl.log)" >&2; exit 1; }

python3 - "$OUT/testssl.json" <<'PY'
import json, re, sys

findings = json.load(open(sys.argv[1]))
rank = {"OK": 0, "INFO": 0, "LOW": 1, "MEDIUM": 2, "HIGH": 3, "CRITICAL": 4, "WARN": 0, "DEBUG": 0}
problems = []

print("testssl.sh: protocols")
for f in findings:
    if f["id"] in ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3"):
        print(f"  {f['id']:<8} {f['finding']}")
        old = f["id"] in ("SSLv2", "SSLv3", "TLS1", "TLS1_1")
        if old and not f["finding"].startswith("not offered"):
            problems.append(f"{f['id']} offered: {f['finding']}")
    if f["id"] in ("ALPN", "ALPN_HTTP2", "NPN"):
        print(f"  {f['id']:<8} {f['finding']}")

print("testssl.sh: cipher categories")
for f in findings:
    if f["id"].startswith("cipherlist_"):
        print(f"  {f['id'][11:]:<16} {f['finding']}")
        if f["id"] != "cipherlist_STRONG" and "not offered" not in f["finding"]:
            problems.append(f"{f['id']}: {f['finding']}")

print("testssl.sh: cipher suites offered (testssl -e)")
weak = re.compile(r"NULL|EXP|RC4|_DES|DES-|3DES|IDEA|RC2|CBC|MD5|anon|SEED|CAMELLIA", re.I)
suites = [f for f in findings if re.match(r"cipher_x[0-9a-f]+$|cipher-tls", f["id"])]
for f in suites:
    print(f"  {f['finding']}")
    if weak.search(f["finding"]):
        problems.append(f"weak suite offered: {f['finding']}")
if not suites:
    problems.append("no cipher suite listed by testssl -e")

print("testssl.sh: server defaults and forward secrecy")
for f in findings:
    if f["id"] in ("cipher_order", "FS", "PFS", "FS_ECDHE_curves", "PFS_ECDHE_curves", "TLS_session_ticket",
                   "sessionresumption_ticket", "sessionresumption_ID", "cert_keySize",
                   "cert_signatureAlgorithm", "cert_chain_of_trust", "cert_trust", "protocol_negotiated",
                   "cipher_negotiated", "clientAuth"):
        print(f"  {f['id']:<26} {f['severity']:<8} {f['finding']}")

vuln_ids = ["heartbleed", "CCS", "ticketbleed", "ROBOT", "secure_renego", "secure_client_renego",
            "CRIME_TLS", "BREACH", "POODLE_SSL", "fallback_SCSV", "SWEET32", "FREAK", "DROWN",
            "LOGJAM", "LOGJAM-common_primes", "BEAST", "BEAST_CBC_TLS1", "LUCKY13", "RC4"]
print("testssl.sh: vulnerability checks")
seen = set()
for f in findings:
    if f["id"] in vuln_ids:
        seen.add(f["id"])
        print(f"  {f['id']:<22} {f['severity']:<8} {f['finding']}")
        if rank.get(f["severity"], 0) >= 2 or "VULNERABLE" in f["finding"] or "NOT ok" in f["finding"]:
            problems.append(f"{f['id']}: {f['severity']} {f['finding']}")
missing = [v for v in ("heartbleed", "CCS", "ROBOT", "secure_renego", "secure_client_renego", "CRIME_TLS",
                       "POODLE_SSL", "SWEET32", "FREAK", "DROWN", "LOGJAM", "BEAST", "LUCKY13", "RC4")
           if v not in seen]
if missing:
    print(f"  (no result for: {', '.join(missing)})")

# Certificate findings that follow from the mesh's design, not from the TLS configuration: its
# workload certificates are short-lived (meshd: 24h by default, renewed at half life) and carry no
# CRL or OCSP URI, like Istio's; a compromised workload is cut off by expiry and by trust-bundle
# rotation. (The scan's certificate comes from certs/make-pki.sh, with the same extensions.)
accepted = {"cert_revocation": "short-lived mesh certificates carry no CRL/OCSP URI by design (as in Istio)"}
others = [f for f in findings if f["id"] not in vuln_ids and rank.get(f["severity"], 0) >= 3]
for f in others:
    if f["id"] in accepted:
        print(f"testssl.sh: accepted: {f['id']} {f['severity']} \"{f['finding']}\": {accepted[f['id']]}")
    else:
        problems.append(f"{f['id']}: {f['severity']} {f['finding']}")
warns = [f for f in findings if f["severity"] == "WARN"]
if warns:
    print("testssl.sh: checks that could not run (WARN)")
    for f in warns:
        print(f"  {f['id']:<22} {f['finding']}")
lows = [f for f in findings if f["severity"] in ("LOW", "MEDIUM") and f["id"] not in vuln_ids]
if lows:
    print("testssl.sh: other findings rated LOW/MEDIUM (not failing unless listed below)")
    for f in lows:
        print(f"  {f['id']:<26} {f['severity']:<8} {f['finding']}")

if problems:
    print("testssl.sh: FAIL")
    for p in problems:
        print(f"  - {p}")
    sys.exit(1)
print("testssl.sh: PASS: TLS 1.2/1.3 only, strong AEAD suites only, no vulnerability flagged")
PY
