#!/usr/bin/env python3
"""Writes the hand-made seed corpus of the fuzz targets into fuzz/corpus/<Target>/ (committed):
HTTP/1.1 requests and responses (valid, chunked, smuggling attempts), HTTP/2 frame sequences
(SETTINGS, HEADERS with HPACK, DATA, RST_STREAM, GOAWAY ...), Istio and Bootstrap YAML, and CSRs
made with `openssl req` (keys generated in a temporary directory and deleted: no private key is
ever written to the corpus). The seeds that only the Swift code can make (signed join tokens, a
pushed config rendered by meshd's ConfigStore) come from the GenSeeds executable
(`scripts/fuzz.sh --seeds` runs both). The CSRs are remade only when missing or with `--csr`
(fresh keys make different files every time).

Each HTTP seed starts with the target's two control bytes (mode, split seed): see the header
comment of fuzz/Sources/FuzzHTTP1/FuzzHTTP1.swift and FuzzHTTP2.swift.
"""

import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
ROOT = os.path.dirname(HERE)


def write(target, name, data):
    """One seed file."""
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- HTTP/1.1 --------------------------------------------------------------------------------

REQ, RESP, TIGHT = 0x00, 0x01, 0x02


def method_bits(m):
    """The request method a response answers, in FuzzHTTP1's mode byte."""
    return ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "CONNECT", "OTHER"].index(m) << 2


def http1_seeds():
    reqs = {
        "get": "GET /productpage?u=1 HTTP/1.1\r\nHost: reviews:9080\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n",
        "post-length": "POST /api/v1/items HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"id\": 12345}",
        "post-chunked": "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                        "5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Checksum: abc\r\n\r\n",
        "pipelined": "GET /a HTTP/1.1\r\nHost: a\r\n\r\nPOST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nokGET /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "absolute-form": "GET http://reviews.default.svc.cluster.local:9080/x?y HTTP/1.1\r\nProxy-Connection: keep-alive\r\n\r\n",
        "http10": "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "connect": "CONNECT reviews:443 HTTP/1.1\r\nHost: reviews:443\r\n\r\n",
        "options-star": "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        "upgrade": "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, X-Hop\r\nUpgrade: websocket\r\nX-Hop: 1\r\nTE: trailers\r\nExpect: 100-continue\r\nx-request-id: 42\r\n\r\n",
        "xfcc": "GET / HTTP/1.1\r\nHost: a\r\nx-forwarded-client-cert: By=spiffe://x;URI=spiffe://y\r\nx-mesh-peer-metadata: a=b\r\n\r\n",
        # Smuggling attempts: each must be refused.
        "smuggle-cl-te": "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        "smuggle-te-cl": "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
        "smuggle-cl-cl": "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "smuggle-te-list": "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "smuggle-te-space": "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        "smuggle-obs-fold": "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        "smuggle-bare-lf": "POST / HTTP/1.1\nHost: a\r\nContent-Length: 0\r\n\r\n",
        "smuggle-bare-cr": "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
        "chunk-size-overflow": "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nx\r\n0\r\n\r\n",
        "chunk-bad": "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0x0\r\n\r\n",
        "nul-in-value": "GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    }
    for name, text in reqs.items():
        write("FuzzHTTP1", "req-" + name, bytes([REQ, 7]) + text.encode("latin-1"))
    write("FuzzHTTP1", "req-tight-long", bytes([REQ | TIGHT, 3]) + ("GET /" + "a" * 60 + " HTTP/1.1\r\nHost: a\r\n" + "X: y\r\n" * 6 + "\r\n").encode())
    resps = {
        ("GET", "ok-length"): "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
        ("GET", "chunked-trailers"): "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status\r\n\r\n3\r\nabc\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n",
        ("GET", "until-close"): "HTTP/1.0 200 OK\r\n\r\nall of this until the connection closes",
        ("HEAD", "head"): "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        ("GET", "no-content"): "HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n",
        ("GET", "continue"): "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        ("GET", "switching"): "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        ("GET", "no-reason"): "HTTP/1.1 503\r\nContent-Length: 0\r\n\r\n",
        ("GET", "smuggle-cl-te"): "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    }
    for (m, name), text in resps.items():
        write("FuzzHTTP1", "resp-" + name, bytes([RESP | method_bits(m), 11]) + text.encode())


# ---- HTTP/2 ----------------------------------------------------------------------------------

def frame(ftype, flags, stream, payload=b""):
    """One HTTP/2 frame (RFC 9113 §4.1)."""
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


DATA, HEADERS, PRIORITY, RST, SETTINGS, PUSH, PING, GOAWAY, WINDOW, CONT = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIO = 0x1, 0x1, 0x4, 0x8, 0x20


def lit(name, value):
    """HPACK literal header field without indexing, new name, no Huffman (RFC 7541 §6.2.2)."""
    n, v = name.encode(), value.encode()
    assert len(n) < 127 and len(v) < 127
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


def lit_indexed(name, value):
    """HPACK literal with incremental indexing (enters the dynamic table)."""
    n, v = name.encode(), value.encode()
    return b"\x40" + bytes([len(n)]) + n + bytes([len(v)]) + v


GET_REQ = b"\x82\x86\x84" + lit(":authority", "reviews") + lit("user-agent", "fuzz")  # :method GET, :scheme http, :path /
POST_REQ = b"\x83\x86" + lit(":path", "/api") + lit(":authority", "reviews.default") + lit_indexed("content-type", "application/grpc") + lit("te", "trailers")
SETTINGS_FRAME = frame(SETTINGS, 0, 0, struct.pack(">HI", 3, 100) + struct.pack(">HI", 4, 65535))


def http2_seeds():
    server = 0x00
    seqs = {
        "get": SETTINGS_FRAME + frame(SETTINGS, ACK, 0) + frame(HEADERS, END_STREAM | END_HEADERS, 1, GET_REQ),
        "post-body-trailers": SETTINGS_FRAME + frame(HEADERS, END_HEADERS, 1, POST_REQ) + frame(DATA, 0, 1, b"\x00\x00\x00\x00\x05hello")
                              + frame(WINDOW, 0, 0, struct.pack(">I", 1 << 20)) + frame(HEADERS, END_STREAM | END_HEADERS, 1, lit("grpc-timeout", "1S")),
        "many-streams": SETTINGS_FRAME + b"".join(frame(HEADERS, END_STREAM | END_HEADERS, i, GET_REQ) for i in range(1, 12, 2)),
        "continuation": SETTINGS_FRAME + frame(HEADERS, END_STREAM, 1, GET_REQ[:5]) + frame(CONT, END_HEADERS, 1, GET_REQ[5:]),
        "padded-priority": SETTINGS_FRAME + frame(HEADERS, END_HEADERS | PADDED | PRIO, 1, b"\x03" + struct.pack(">IB", 0, 15) + GET_REQ + b"\0\0\0")
                           + frame(PRIORITY, 0, 3, struct.pack(">IB", 1, 7)),
        "reset-and-ping": SETTINGS_FRAME + frame(HEADERS, END_HEADERS, 1, POST_REQ) + frame(RST, 0, 1, struct.pack(">I", 8))
                          + frame(PING, 0, 0, b"12345678") + frame(GOAWAY, 0, 0, struct.pack(">II", 1, 0) + b"bye"),
        "rapid-reset": SETTINGS_FRAME + b"".join(frame(HEADERS, END_HEADERS, i, GET_REQ) + frame(RST, 0, i, struct.pack(">I", 8)) for i in range(1, 40, 2)),
        "bad-pseudo": SETTINGS_FRAME + frame(HEADERS, END_STREAM | END_HEADERS, 1, GET_REQ + lit(":path", "/again") + lit("connection", "close")),
        "data-on-idle": SETTINGS_FRAME + frame(DATA, END_STREAM, 5, b"x" * 10),
        "window-overflow": SETTINGS_FRAME + frame(WINDOW, 0, 0, struct.pack(">I", 0x7fffffff)) + frame(WINDOW, 0, 0, struct.pack(">I", 0x7fffffff)),
        "big-header": SETTINGS_FRAME + frame(HEADERS, END_STREAM | END_HEADERS, 1, GET_REQ + lit("x-big", "v" * 120) * 8),
    }
    for name, payload in seqs.items():
        write("FuzzHTTP2", "server-" + name, bytes([server, 5]) + payload)
    write("FuzzHTTP2", "server-small-settings", bytes([0x08 | 0x10, 9]) + seqs["post-body-trailers"])
    write("FuzzHTTP2", "server-goaway-halfway", bytes([0x20 | 0x02, 1]) + seqs["many-streams"])
    # Client role: the server's answers to streams 1, 3 and 5.
    resp = b"\x88" + lit("content-type", "text/plain")  # :status 200
    client = SETTINGS_FRAME + frame(SETTINGS, ACK, 0) + frame(HEADERS, END_HEADERS, 1, resp) + frame(DATA, END_STREAM, 1, b"hello") \
        + frame(HEADERS, END_HEADERS, 3, b"\x08\x03100") + frame(HEADERS, END_HEADERS, 3, b"\x8d") + frame(DATA, 0, 3, b"abc") \
        + frame(HEADERS, END_STREAM | END_HEADERS, 3, lit("grpc-status", "0")) + frame(RST, 0, 5, struct.pack(">I", 7)) \
        + frame(PUSH, END_HEADERS, 1, struct.pack(">I", 2) + GET_REQ) + frame(GOAWAY, 0, 0, struct.pack(">II", 3, 0))
    write("FuzzHTTP2", "client-responses", bytes([0x01, 4]) + client)


# ---- Config YAML -----------------------------------------------------------------------------

ISTIO = {
    "virtualservice.yaml": """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews, reviews.default.svc.cluster.local]
  http:
  - name: jason
    match:
    - headers:
        end-user: {exact: jason}
      uri: {prefix: /api}
    - uri: {regex: "/v[0-9]+/.*"}
      method: {exact: GET}
    route:
    - destination: {host: reviews, subset: v2, port: {number: 9080}}
    fault:
      delay: {percentage: {value: 10.0}, fixedDelay: 5s}
      abort: {percentage: {value: 0.5}, httpStatus: 503}
  - name: default
    rewrite: {uri: /v1/}
    headers:
      request: {set: {x-route: default}, add: {x-a: b}, remove: [x-internal]}
      response: {remove: [server]}
    mirror: {host: reviews, subset: v3}
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "gateway-error,connect-failure,refused-stream"}
    timeout: 10s
    route:
    - destination: {host: reviews, subset: v1}
      weight: 75
    - destination: {host: reviews, subset: v3}
      weight: 25
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 1s}
      http: {http2MaxRequests: 1000, maxRequestsPerConnection: 10, idleTimeout: 30s}
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}
    tls: {mode: ISTIO_MUTUAL}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {simple: RANDOM}}
  - name: v3
    labels: {version: v3}
""",
    "authz.yaml": """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  selector:
    matchLabels: {app: reviews}
  action: DENY
  rules:
  - to:
    - operation:
        paths: [/admin, "/admin/*"]
        methods: [POST, DELETE]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-pp}
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/productpage"]
        namespaces: [default]
    to:
    - operation: {methods: [GET], paths: ["/reviews/*"], notPaths: [/reviews/secret]}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default}
spec:
  mtls: {mode: PERMISSIVE}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict-reviews, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls:
    mode: STRICT
""",
    "entries.yaml": """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy}
spec:
  hosts: [legacy.example.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  endpoints:
  - address: 127.0.0.1
    ports: {http: 18080}
    labels: {version: one}
    serviceAccount: legacy
  workloadSelector:
    labels: {app: legacy}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: legacy-2}
spec:
  address: 127.0.0.1
  ports: {http: 18081}
  labels: {app: legacy, version: two}
  serviceAccount: legacy
""",
    "regex-nested.yaml": """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [r]
  http:
  - match:
    - uri: {regex: "/v[0-9]{1,3}/((ab|c){1,10}){1,10}[[:alpha:]]+\\\\d{2}"}
    route:
    - destination: {host: r}
""",
    "yaml-features.yaml": """# YAML forms the reader accepts: block and flow collections, quoting, escapes, anchors refused
--- # a document on the marker line follows
apiVersion: "networking.istio.io/v1"
kind: 'VirtualService'
metadata:
  name: >-
    folded
  namespace: |
    literal
spec:
  hosts:
    - "esc\\u00e9\\x41\\n\\t"
    - 'it''s'
    - plain with spaces   # comment
  http: []
...
""",
}


def config_seeds():
    for name, text in ISTIO.items():
        write("FuzzConfig", name, text)
    cfg = os.path.join(ROOT, "config")
    for f in sorted(os.listdir(cfg)):
        if f.endswith(".yaml"):
            with open(os.path.join(cfg, f)) as src:
                text = src.read()
            # Static mode with the Istio documents beside the Bootstrap.
            write("FuzzConfig", "static-" + f, text)
            if f == "client-sidecar.yaml":
                write("FuzzConfig", "static-with-istio-" + f, text + "\n---\n" + ISTIO["virtualservice.yaml"].split("---\n")[1])


# ---- CSRs ------------------------------------------------------------------------------------

def csr_seeds():
    """CSRs from `openssl req` (keys in a temporary directory, deleted): PEM (mode 0) and DER (mode 1)."""
    tmp = tempfile.mkdtemp(prefix="fuzz-csr-seeds.")
    try:
        cases = {
            "granted-p256": ("ec", "prime256v1", "URI:spiffe://cluster.local/ns/fuzz/sa/app"),
            "other-identity": ("ec", "prime256v1", "URI:spiffe://cluster.local/ns/kube-system/sa/admin"),
            "two-sans": ("ec", "prime256v1", "URI:spiffe://cluster.local/ns/fuzz/sa/app,DNS:evil.example.com"),
            "p384": ("ec", "secp384r1", "URI:spiffe://cluster.local/ns/fuzz/sa/app"),
            "rsa": ("rsa", "2048", "URI:spiffe://cluster.local/ns/fuzz/sa/app"),
        }
        for name, (kind, param, san) in cases.items():
            key = os.path.join(tmp, name + ".key")
            if kind == "ec":
                subprocess.run(["openssl", "ecparam", "-name", param, "-genkey", "-noout", "-out", key], check=True)
            else:
                subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:" + param, "-out", key],
                               check=True, stderr=subprocess.DEVNULL)
            base = ["openssl", "req", "-new", "-key", key, "-subj", "/O=swift-mesh", "-addext", "subjectAltName=" + san]
            pem = subprocess.run(base, check=True, capture_output=True).stdout
            der = subprocess.run(base + ["-outform", "DER"], check=True, capture_output=True).stdout
            assert b"PRIVATE KEY" not in pem
            write("FuzzCSR", name + "-pem", b"\x00" + pem)
            write("FuzzCSR", name + "-der", b"\x01" + der)
    finally:
        shutil.rmtree(tmp)


def dns_seeds():
    """DNS queries (mode byte 0) and messages with names to read (mode byte 1, offset byte):
    the shapes dig and glibc send, EDNS with options, and the hostile cases of the codec's
    tests (test_dns.py sends the same over UDP)."""
    hdr = lambda qd=1, an=0, ar=0, flags=0x0100, id=0x4242: struct.pack(">HHHHHH", id, flags, qd, an, 0, ar)
    name = lambda n: b"".join(bytes([len(l)]) + l.encode() for l in n.split(".") if l) + b"\0"
    q = lambda n, t=1: name(n) + struct.pack(">HH", t, 1)
    opt = lambda size=1232, opts=b"": b"\0" + struct.pack(">HHIH", 41, size, 0x8000, len(opts)) + opts
    cookie = struct.pack(">HH", 10, 8) + b"\x01\x02\x03\x04\x05\x06\x07\x08"
    seeds = {
        "a-short": hdr() + q("reviews"),
        "a-fqdn": hdr() + q("reviews.default.svc.cluster.local"),
        "aaaa-edns-cookie": hdr(ar=1) + q("Reviews.Default", 28) + opt(4096, cookie),
        "mx": hdr() + q("db.example.com", 15),
        "root-any": hdr(ar=1) + q("", 255) + opt(512),
        "badvers": hdr(ar=1) + q("a.b") + b"\0" + struct.pack(">HHIH", 41, 1232, 0x00010000, 0),
        "two-questions": hdr(qd=2) + q("a.b") + q("c.d"),
        "label-64": hdr() + bytes([64]) + b"a" * 64 + b"\0\0\1\0\1",
        "name-257": hdr() + q(".".join(["a" * 63] * 4)),
        "pointer-in-question": hdr() + b"\xc0\x0c\0\1\0\1",
        "pointer-loop-opt": hdr(ar=1) + q("a.b") + b"\xc0\x15" + opt()[1:],
        "trailing": hdr() + q("reviews") + b"\xde\xad",
        "response": hdr(flags=0x8180) + q("reviews"),
        "update-opcode": hdr(flags=0x2800) + q("a.b"),
        "dot-in-label": hdr() + b"\x03a.b\x01c\0\0\1\0\1",
    }
    for k, v in seeds.items():
        write("FuzzDNS", k, b"\0" + v)
    answer = struct.pack(">HHHHHH", 0xABCD, 0x8180, 1, 1, 0, 0) + name("example.test") + struct.pack(">HH", 1, 1) \
        + b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 30, 4) + bytes([192, 0, 2, 7])
    write("FuzzDNS", "names-answer", b"\1" + bytes([29]) + answer)
    write("FuzzDNS", "names-chain", b"\1" + bytes([17]) + bytes(12) + b"\x01a\0\xc0\x0c\xc0\x0f")
    write("FuzzDNS", "names-loop", b"\1" + bytes([12]) + bytes(12) + b"\xc0\x0e\xc0\x0c")


if __name__ == "__main__":
    http1_seeds()
    http2_seeds()
    config_seeds()
    dns_seeds()
    # CSRs differ on every run (fresh keys): remade only when missing or asked for.
    if "--csr" in sys.argv or not os.path.isdir(os.path.join(CORPUS, "FuzzCSR")) or not os.listdir(os.path.join(CORPUS, "FuzzCSR")):
        csr_seeds()
    print("seeds written to", CORPUS, file=sys.stderr)
