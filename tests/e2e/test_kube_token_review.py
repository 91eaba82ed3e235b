"""meshd accepting Kubernetes service-account tokens through the TokenReview API, with real
processes: a fake kube-apiserver in the test (Python http.server over TLS, its CA and a certificate
with a 127.0.0.1 IP SAN generated here with openssl) that checks meshd's bearer token and the
request body and answers per token; a real meshd (`--kube-api https://127.0.0.1:PORT --kube-ca
--kube-token-file`) and real sidecars with `--token-file`. Refusals first: each names its reason."""

import base64
import http.client
import json
import secrets
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import MESHD, SIDECAR, Meshd, curl, free_port, http_get, wait_until

REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


def openssl(*args):
    subprocess.run(["openssl", *[str(a) for a in args]], check=True, capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-keyout", d / f"{name}.key", "-out", d / f"{name}.crt", "-subj", f"/CN={name}")
    return d / f"{name}.crt", d / f"{name}.key"


def make_server_cert(d, name, ca, san):
    """A serving certificate signed by `ca` (cert, key) with subjectAltName `san`."""
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", d / f"{name}.key", "-out", d / f"{name}.csr", "-subj", "/CN=kube-apiserver")
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", d / f"{name}.csr", "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial", "-days", "2",
            "-out", d / f"{name}.crt", "-extfile", d / f"{name}.ext")
    return d / f"{name}.crt", d / f"{name}.key"


@pytest.fixture(scope="module")
def kube_pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("kube-pki")
    ca = make_ca(d, "kube-ca")
    other = make_ca(d, "other-ca")
    return {
        "ca": ca[0],
        "good": make_server_cert(d, "apiserver", ca, "IP:127.0.0.1,DNS:localhost"),
        "foreign": make_server_cert(d, "foreign", other, "IP:127.0.0.1"),
        "wrong-name": make_server_cert(d, "wrong-name", ca, "DNS:kubernetes.default.svc"),
    }


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(sub="system:serviceaccount:default:reviews", aud=("mesh",), exp_in=3600):
    """A token shaped like a projected service-account token (a JWT: the fake apiserver, like the
    real one, is what decides; meshd reads nothing from it but `exp`, for its cache)."""
    header = b64url(json.dumps({"alg": "RS256", "kid": "test"}).encode())
    payload = b64url(json.dumps({"aud": list(aud), "exp": int(time.time()) + exp_in, "sub": sub,
                                 "iss": "https://kubernetes.default.svc"}).encode())
    return f"{header}.{payload}.{b64url(secrets.token_bytes(64))}"


def allowed(username="system:serviceaccount:default:reviews", audiences=("mesh",)):
    status = {"authenticated": True, "user": {"username": username, "uid": "u-1",
                                              "groups": ["system:serviceaccounts", "system:authenticated"]}}
    if audiences is not None:
        status["audiences"] = list(audiences)
    return status


class FakeAPIServer:
    """A kube-apiserver that answers only TokenReviews: it requires `Bearer <self.bearer>` and a
    body exactly as meshd must send it, and answers each token from `self.answers` (token ->
    TokenReview status, or (HTTP status, raw body)); unknown tokens are unauthenticated."""

    def __init__(self, cert, key):
        self.bearer = None
        self.answers = {}
        self.seen = []          # (authorization header, parsed body) of every review
        self.chunked = False    # answer with Transfer-Encoding: chunked, as Go's net/http may
        self.delay = 0.0        # seconds each review takes (a slow or throttling apiserver)
        self.in_flight = 0      # reviews being answered now, and the most at once
        self.most_in_flight = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def reply(self, code, body: bytes):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Connection", "close")
                if outer.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(body), 100):
                        part = body[i:i + 100]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                auth = self.headers.get("Authorization", "")
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                outer.seen.append((auth, body))
                if outer.delay:
                    with outer.lock:
                        outer.in_flight += 1
                        outer.most_in_flight = max(outer.most_in_flight, outer.in_flight)
                    time.sleep(outer.delay)
                    with outer.lock:
                        outer.in_flight -= 1
                if self.path != REVIEW_PATH:
                    return self.reply(404, b'{"kind":"Status","message":"not found"}')
                if auth != f"Bearer {outer.bearer}":
                    return self.reply(401, b'{"kind":"Status","apiVersion":"v1","status":"Failure","message":"Unauthorized","code":401}')
                token = (body or {}).get("spec", {}).get("token")
                want = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                        "spec": {"token": token, "audiences": ["mesh"]}}
                if body != want:
                    return self.reply(400, b'{"kind":"Status","message":"unexpected TokenReview body"}')
                answer = outer.answers.get(token, {"error": "invalid bearer token"})
                if isinstance(answer, tuple):
                    return self.reply(answer[0], answer[1])
                review = {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                          "metadata": {"creationTimestamp": None}, "spec": body["spec"], "status": answer}
                self.reply(201, json.dumps(review).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.server_names = []
        ctx.sni_callback = lambda sock, name, c: self.server_names.append(name)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def reviews_of(self, token):
        return [s for s in self.seen if s[1] and s[1].get("spec", {}).get("token") == token]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def apiserver(kube_pki):
    servers = []

    def make(kind="good"):
        s = FakeAPIServer(*kube_pki[kind])
        servers.append(s)
        return s
    yield make
    for s in servers:
        s.close()


def kube_meshd(procs, kube_pki, api, bearer="meshd-sa-token-1", name="meshd", host="127.0.0.1"):
    """A meshd reviewing Kubernetes tokens with the fake apiserver `api` (a server or a port),
    dialed as `host`."""
    token_file = procs.tmp / f"{name}-own-token"
    token_file.write_text(bearer + "\n")
    port = api if isinstance(api, int) else api.port
    if not isinstance(api, int):
        api.bearer = bearer
    m = Meshd(procs, name=name, extra=["--kube-api", f"https://{host}:{port}", "--kube-ca", kube_pki["ca"],
                                       "--kube-token-file", token_file])
    m.own_token = token_file
    return m


def token_sidecar(procs, m, name, token, service="reviews", app_port=None):
    """A mesh-mode sidecar whose join credential is `token`, read from a --token-file."""
    f = procs.tmp / f"{name}-token"
    f.write_text(token)
    admin, inbound, outbound = free_port(), free_port(), free_port()
    args = [SIDECAR, "--meshd", f"127.0.0.1:{m.api}", "--root-cert", m.root, "--token-file", f, "--service", service,
            "--admin-port", admin, "--inbound-port", inbound, "--outbound-port", outbound, "--concurrency", "1"]
    if app_port:
        args += ["--app-port", app_port]
    p = procs.start(args, name)
    p.admin, p.inbound, p.outbound = admin, inbound, outbound
    return p


def metric(m, series):
    _, body = http_get(f"http://127.0.0.1:{m.admin}/metrics")
    for line in body.decode().splitlines():
        if line.startswith(series + " "):
            return int(line.split()[1])
    return None


def refused(p, *reasons, timeout=20):
    """The sidecar exits non-zero with meshd's refusal naming each of `reasons`."""
    assert p.wait(timeout=timeout) != 0
    log = p.log_path.read_text()
    assert "meshd refused the certificate request" in log, log
    for r in reasons:
        assert r in log, (r, log)
    return log


def make_csr(d, name, san):
    """An EC P-256 key and CSR made by openssl asking for subjectAltName `san`; returns the CSR's PEM."""
    key, csr = d / f"{name}.key", d / f"{name}.csr"
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
            "-subj", "/O=test", "-addext", f"subjectAltName={san}", "-out", csr)
    return csr.read_bytes()


def tampered(pem: bytes) -> bytes:
    """The CSR with one bit of its signature's last integer flipped (still DER, no longer signed)."""
    lines = pem.decode().strip().splitlines()
    der = bytearray(base64.b64decode("".join(lines[1:-1])))
    der[-3] ^= 1
    b = base64.b64encode(bytes(der)).decode()
    return ("\n".join([lines[0], *[b[i:i + 64] for i in range(0, len(b), 64)], lines[-1]]) + "\n").encode()


def ask(m, token, csr, timeout=20):
    """POST the CSR to meshd's API with `token`; returns (HTTP status, body, seconds taken)."""
    ctx = ssl.create_default_context(cafile=str(m.root))
    t0 = time.monotonic()
    c = http.client.HTTPSConnection("127.0.0.1", m.api, context=ctx, timeout=timeout)
    try:
        c.request("POST", "/v1/certificate", body=csr, headers={"authorization": f"Bearer {token}", "content-type": "application/pkcs10"})
        r = c.getresponse()
        return r.status, r.read().decode(), time.monotonic() - t0
    finally:
        c.close()


REVIEWS = "URI:spiffe://cluster.local/ns/default/sa/reviews"


def test_junk_tokens_and_bad_csrs_never_reach_the_apiserver(procs, kube_pki, apiserver):
    api = apiserver()
    m = kube_meshd(procs, kube_pki, api)
    good_csr = make_csr(procs.tmp, "reviews", REVIEWS)
    # Tokens not shaped like a JWT: 401 at once with the reason; the apiserver never asked.
    for token, why in [("opaque-service-account-token", "1 part separated by '.', not 3"), ("a.b", "2 parts"),
                       ("a..c", "part 2 is empty"), ("a.b.c.d", "4 parts"), ("a.b=.c", "not base64url (0x3d)"),
                       ("a.b+c.d", "not base64url (0x2b)"), ("a." + "b" * 9000 + ".c", "9004 bytes, over 8192")]:
        api.answers[token] = allowed()   # it would be allowed, were it asked
        status, body, _ = ask(m, token, good_csr)
        assert status == 401 and body.startswith("Kubernetes token refused without a review: not shaped like a JWT: ") and why in body, (token[:20], body)
    # A sidecar with such a token stops at once, naming why (401 is final).
    p = token_sidecar(procs, m, "opaque-sidecar", "opaque-service-account-token")
    refused(p, "(401)", "not shaped like a JWT")
    # A token the apiserver would allow, with a CSR that is not one, whose signature does not
    # verify, or that asks for no well-formed identity: 400 naming the CSR's fault, nothing sent.
    token = jwt()
    api.answers[token] = allowed()
    for csr, why in [(b"not a csr", "not a PEM certificate signing request"),
                     (tampered(good_csr), "the CSR's signature does not verify"),
                     (make_csr(procs.tmp, "other-td", "URI:spiffe://other.local/ns/default/sa/reviews"), "not an identity spiffe://cluster.local/ns/NS/sa/SA"),
                     (make_csr(procs.tmp, "bad-sa", "URI:spiffe://cluster.local/ns/default/sa/Re.views"), "not an identity"),
                     (make_csr(procs.tmp, "two", REVIEWS + ",URI:spiffe://cluster.local/ns/default/sa/ratings"), "asks for 2 names"),
                     (make_csr(procs.tmp, "dns", "DNS:reviews.default.svc"), "not an identity")]:
        status, body, _ = ask(m, token, csr)
        assert status == 400 and why in body and "(the token was not reviewed)" in body, body
    assert api.seen == [], "a junk token or a bad CSR reached the apiserver"
    assert metric(m, 'meshd_token_reviews_not_sent_total{reason="not_a_jwt"}') == 8
    assert metric(m, 'meshd_token_reviews_total{result="denied"}') == 0
    assert metric(m, "meshd_certificate_requests_refused_total") == 14
    # The same token with its good CSR: reviewed once, issued.
    status, body, _ = ask(m, token, good_csr)
    assert status == 200 and "BEGIN CERTIFICATE" in body, body
    assert len(api.seen) == 1
    log = m.proc.log_path.read_text()
    assert token not in log and "opaque-service-account-token" not in log


def test_slow_apiserver_two_reviews_in_flight_the_rest_busy_at_once(procs, kube_pki, apiserver):
    api = apiserver()
    api.delay = 2.0
    m = kube_meshd(procs, kube_pki, api)
    csr = make_csr(procs.tmp, "reviews", REVIEWS)
    tokens = [jwt() for _ in range(10)]
    for t in tokens:
        api.answers[t] = allowed()
    join = m.token("reviews")
    results, start = [], threading.Barrier(10)

    def one(t):
        start.wait()
        results.append(ask(m, t, csr))
    threads = [threading.Thread(target=one, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    # While two reviews wait on the apiserver, a join-token CSR on the same meshd is signed at once.
    wait_until(lambda: api.in_flight == 2, timeout=5, what="two reviews at the apiserver")
    status, body, took = ask(m, join, csr)
    assert status == 200 and "BEGIN CERTIFICATE" in body, body
    assert took < 1.5, took   # less than one review (2 s): no worker starved
    for t in threads:
        t.join(timeout=30)
    assert api.most_in_flight == 2
    assert len(api.seen) == 2
    busy = [r for r in results if r[0] == 503]
    ok = [r for r in results if r[0] == 200]
    assert len(busy) == 8 and len(ok) == 2, [(s, b[:80]) for s, b, _ in results]
    for status, body, took in busy:
        assert body.startswith("token reviews busy: 2 Kubernetes TokenReviews already in flight"), body
        assert took < 1.5, took   # at once, not after a review (2 s)
    for status, body, took in ok:
        assert took >= 2.0 and "BEGIN CERTIFICATE" in body
    assert metric(m, 'meshd_token_reviews_not_sent_total{reason="busy"}') == 8
    assert metric(m, 'meshd_token_reviews_total{result="allowed"}') == 2
    # A flood is logged once a second, not once a request; /metrics counts every one.
    lines = [l for l in m.proc.log_path.read_text().splitlines() if "token reviews busy" in l]
    assert 1 <= len(lines) <= 2 and "logged once a second" in lines[0], lines


def test_without_kube_api_a_kubernetes_token_is_refused_naming_the_flag(procs):
    m = Meshd(procs)
    p = token_sidecar(procs, m, "plain-meshd-sidecar", jwt())
    refused(p, "(401)", "does not review Kubernetes service-account tokens", "--kube-api")
    # A join token still works on this meshd.
    q = token_sidecar(procs, m, "join-sidecar", m.token("reviews"))
    wait_until(lambda: http_get(f"http://127.0.0.1:{q.admin}/ready", timeout=1)[0] == 200, timeout=20, what="join token sidecar ready")


def test_kube_tokens_refused_with_the_reason(procs, kube_pki, apiserver):
    api = apiserver()
    m = kube_meshd(procs, kube_pki, api)
    cases = [
        # (token's review status, words the refusal must carry, HTTP status)
        (allowed(audiences=["other"]), ["(401)", "audience is not mesh", "[other]"]),
        (allowed(audiences=None), ["(401)", "status.audiences missing"]),
        ({"authenticated": False, "error": "[invalid bearer token, token has expired]"}, ["(401)", "unauthenticated", "token has expired"]),
        ({"error": "square/go-jose: error in cryptographic primitive"}, ["(401)", "unauthenticated", "cryptographic primitive"]),
        (allowed(username="system:node:worker-1"), ["(401)", "not a service account", "system:node:worker-1"]),
        (allowed(username="system:serviceaccount:default:a.b"), ["(401)", "not a DNS label"]),
        # Another service account than the sidecar's identity: 403, as a join token for another identity.
        (allowed(username="system:serviceaccount:default:ratings"), ["(403)", "grants only spiffe://cluster.local/ns/default/sa/ratings"]),
        (allowed(username="system:serviceaccount:shop:reviews"), ["(403)", "grants only spiffe://cluster.local/ns/shop/sa/reviews"]),
    ]
    tokens = []
    for i, (status, words) in enumerate(cases):
        t = jwt()
        tokens.append(t)
        api.answers[t] = status
        p = token_sidecar(procs, m, f"refused-{i}", t)
        refused(p, *words)
    # Every review was asked once, with meshd's bearer token and audience mesh (the fake checks both).
    for t in tokens:
        assert len(api.reviews_of(t)) == 1
    assert all(auth == "Bearer meshd-sa-token-1" for auth, _ in api.seen)
    # Refusals are never cached: the same refused token is reviewed again.
    p = token_sidecar(procs, m, "refused-again", tokens[0])
    refused(p, "audience is not mesh")
    assert len(api.reviews_of(tokens[0])) == 2
    assert metric(m, 'meshd_token_reviews_total{result="denied"}') == 7
    assert metric(m, 'meshd_token_reviews_total{result="allowed"}') == 2   # the two 403s
    assert metric(m, "meshd_certificate_requests_refused_total") == 9
    log = m.proc.log_path.read_text()
    assert "refused a certificate request (401): Kubernetes token refused: the token's audience is not mesh" in log
    # The tokens themselves never reach meshd's log.
    for t in tokens:
        assert t not in log and t.split(".")[2] not in log

    # Answers meshd cannot use: refused too (fail closed), 503 so the sidecar tries again.
    bad = {jwt(): (200, b'{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","status":{"authenticated":tru'),
           jwt(): (403, b'{"kind":"Status","message":"tokenreviews.authentication.k8s.io is forbidden: User \\"system:serviceaccount:mesh-system:meshd\\" cannot create resource"}'),
           jwt(): (201, b'[' * 100 + b']' * 100),
           jwt(): (201, b'{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","x":"' + b"a" * 70000 + b'"}')}
    words = ["malformed JSON from the Kubernetes API", "answered the TokenReview with HTTP 403: tokenreviews.authentication.k8s.io is forbidden",
             "nesting deeper than 64", "is over 65536 bytes"]
    for i, (t, answer) in enumerate(bad.items()):
        api.answers[t] = answer
        p = token_sidecar(procs, m, f"unusable-{i}", t)
        wait_until(lambda: words[i] in m.proc.log_path.read_text(), timeout=15, what=words[i])
        assert p.poll() is None and http_get(f"http://127.0.0.1:{p.admin}/ready", timeout=1)[0] == 503
        assert "refused a certificate request (503): Kubernetes token not reviewed (refused; try again)" in m.proc.log_path.read_text()
        p.kill()
    assert metric(m, 'meshd_token_reviews_total{result="error"}') >= 4


def test_kube_token_gets_a_certificate_and_serves_through_the_mesh(procs, kube_pki, apiserver):
    api = apiserver()
    api.chunked = True   # the answer in chunks, as Go's net/http sends a body over its buffer
    m = kube_meshd(procs, kube_pki, api)
    token = jwt()
    api.answers[token] = allowed()
    app = procs.app("reviews")
    p = token_sidecar(procs, m, "reviews-sidecar", token, app_port=app)
    wait_until(lambda: http_get(f"http://127.0.0.1:{p.admin}/ready", timeout=1)[0] == 200, timeout=20, what="reviews ready")
    assert json.loads(http_get(f"http://127.0.0.1:{p.admin}/certs")[1])["identity"] == "spiffe://cluster.local/ns/default/sa/reviews"
    # A caller that joined with a join token reaches it over mTLS: both credentials side by side.
    _, _, _, outbound = m.sidecar("productpage-sidecar", "productpage", routes=[f"reviews=127.0.0.1:{p.inbound}"])
    r = curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: reviews", f"http://127.0.0.1:{outbound}/")
    assert r.stdout == b"200", r
    # The apiserver saw meshd's bearer token and the audience (the fake refuses anything else).
    assert api.seen == [("Bearer meshd-sa-token-1", {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                                     "spec": {"token": token, "audiences": ["mesh"]}})]
    assert "issued spiffe://cluster.local/ns/default/sa/reviews" in m.proc.log_path.read_text()

    # A positive review is cached: a second workload with the same token is not reviewed again.
    q = token_sidecar(procs, m, "reviews-sidecar-2", token)
    wait_until(lambda: http_get(f"http://127.0.0.1:{q.admin}/ready", timeout=1)[0] == 200, timeout=20, what="second reviews ready")
    assert len(api.seen) == 1
    assert metric(m, "meshd_token_review_cache_hits_total") == 1

    # meshd's own token rotates: the next review carries the new one, read from the file.
    api.bearer = "meshd-sa-token-2"
    m.own_token.write_text("meshd-sa-token-2\n")
    ratings = jwt(sub="system:serviceaccount:default:ratings")
    api.answers[ratings] = allowed(username="system:serviceaccount:default:ratings")
    s = token_sidecar(procs, m, "ratings-sidecar", ratings, service="ratings")
    wait_until(lambda: http_get(f"http://127.0.0.1:{s.admin}/ready", timeout=1)[0] == 200, timeout=20, what="ratings ready")
    assert api.seen[-1][0] == "Bearer meshd-sa-token-2"
    assert metric(m, 'meshd_token_reviews_total{result="allowed"}') == 2
    assert metric(m, 'meshd_token_reviews_total{result="denied"}') == 0
    log = m.proc.log_path.read_text()
    assert token not in log and ratings not in log and "meshd-sa-token" not in log


def test_apiserver_dialed_by_name(procs, kube_pki, apiserver):
    """`--kube-api https://localhost:PORT`: the name is resolved (::1, where nothing listens, may
    come first), checked against the certificate's DNS SAN and sent as SNI."""
    api = apiserver()
    m = kube_meshd(procs, kube_pki, api, host="localhost")
    token = jwt()
    api.answers[token] = allowed()
    p = token_sidecar(procs, m, "by-name-sidecar", token)
    wait_until(lambda: http_get(f"http://127.0.0.1:{p.admin}/ready", timeout=1)[0] == 200, timeout=20, what="ready")
    assert api.server_names == ["localhost"]


def test_an_apiserver_meshd_cannot_trust_or_reach_is_refused(procs, kube_pki, apiserver):
    token = jwt()
    # A certificate from another CA than --kube-ca; one from the right CA that names neither
    # 127.0.0.1 nor localhost (dialed by IP, then by name); nothing listening at all.
    foreign, wrong_name = apiserver("foreign"), apiserver("wrong-name")
    down = free_port()
    for name, api, host, why in [("meshd-foreign", foreign, "127.0.0.1", "the apiserver's certificate was refused"),
                                 ("meshd-wrong-ip", wrong_name, "127.0.0.1", "does not name 127.0.0.1"),
                                 ("meshd-wrong-dns", wrong_name, "localhost", "does not name localhost"),
                                 ("meshd-down", down, "127.0.0.1", "cannot connect to 127.0.0.1")]:
        if not isinstance(api, int):
            api.answers[token] = allowed()
        m = kube_meshd(procs, kube_pki, api, name=name, host=host)
        p = token_sidecar(procs, m, f"{name}-sidecar", token)
        wait_until(lambda: why in m.proc.log_path.read_text(), timeout=15, what=why)
        log = m.proc.log_path.read_text()
        assert "refused a certificate request (503): Kubernetes token not reviewed" in log and "issued spiffe://cluster.local/ns/default/sa/reviews" not in log
        # The sidecar has no certificate and keeps asking (503: meshd may reach the apiserver later).
        assert p.poll() is None and http_get(f"http://127.0.0.1:{p.admin}/ready", timeout=1)[0] == 503
        assert metric(m, 'meshd_token_reviews_total{result="error"}') >= 1
        assert metric(m, 'meshd_token_reviews_total{result="allowed"}') == 0
        if not isinstance(api, int):
            assert api.seen == [], "a token was sent to a server meshd does not trust"
        p.kill()


def test_kube_flags_refused_by_name(procs, kube_pki, tmp_path):
    own = tmp_path / "own-token"
    own.write_text("t\n")
    empty = tmp_path / "empty"
    empty.write_text("")
    cases = [
        (["--kube-api", "http://127.0.0.1:6443"], {}, "--kube-api: expected in-cluster or https://HOST:PORT, got \"http://127.0.0.1:6443\": plain http is refused"),
        (["--kube-api", "https://127.0.0.1:6443/prefix"], {}, "a path is not supported"),
        (["--kube-api", "https://127.0.0.1:0"], {}, "the port must be 1-65535"),
        (["--kube-api", "https://fd00::1:6443"], {}, "an IPv6 address must be in brackets"),
        (["--kube-ca", kube_pki["ca"]], {}, "--kube-ca: only with --kube-api"),
        (["--kube-audience", "x"], {}, "--kube-audience: only with --kube-api"),
        (["--kube-api", "in-cluster"], {}, "KUBERNETES_SERVICE_HOST is not set"),
        (["--kube-api", "in-cluster", "--kube-ca", kube_pki["ca"], "--kube-token-file", own],
         {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "http"}, "KUBERNETES_SERVICE_PORT is \"http\""),
        (["--kube-api", "https://127.0.0.1:6443", "--kube-ca", tmp_path / "missing.crt", "--kube-token-file", own], {}, "--kube-ca: cannot read"),
        (["--kube-api", "https://127.0.0.1:6443", "--kube-ca", own, "--kube-token-file", own], {}, "holds no PEM certificate"),
        (["--kube-api", "https://127.0.0.1:6443", "--kube-ca", kube_pki["ca"], "--kube-token-file", tmp_path / "missing"], {}, "--kube-token-file: meshd's own token: cannot read"),
        (["--kube-api", "https://127.0.0.1:6443", "--kube-ca", kube_pki["ca"], "--kube-token-file", empty], {}, "--kube-token-file: meshd's own token file"),
        (["--kube-api", "https://127.0.0.1:6443", "--kube-ca", kube_pki["ca"], "--kube-token-file", own, "--kube-audience", "a b"], {}, "--kube-audience: expected"),
    ]
    import os
    base = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    for args, env, want in cases:
        r = subprocess.run([str(MESHD), "--state-dir", tmp_path / "state", "--api-port", "0", "--admin-port", "0",
                            *[str(a) for a in args]], capture_output=True, text=True, timeout=20, env={**base, **env})
        assert r.returncode == 2 and want in r.stderr, (args, r.stderr)
    r = subprocess.run([str(MESHD), "--help"], capture_output=True, text=True, timeout=20)
    assert "--kube-api in-cluster|https://HOST:PORT" in r.stdout and "create` on tokenreviews" in r.stdout
