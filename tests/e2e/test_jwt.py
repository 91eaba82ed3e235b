"""RequestAuthentication (JWT), AuthorizationPolicy conditions on its claims, AUDIT, and
PeerAuthentication portLevelMtls, end to end. Every key and token is made here at run time
(python `cryptography`); none is committed."""

import base64
import json
import signal
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from conftest import client_config, curl, free_port, server_config, stats, wait_ready, wait_until

ISSUER = "https://issuer.test"


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def uint(n: int) -> str:
    return b64u(n.to_bytes((n.bit_length() + 7) // 8, "big"))


class Keys:
    """An RSA and an EC P-256 key, their JWKS, and a token maker."""

    def __init__(self):
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> str:
        rn = self.rsa.public_key().public_numbers()
        en = self.ec.public_key().public_numbers()
        return json.dumps({"keys": [
            {"kty": "RSA", "kid": "r1", "alg": "RS256", "use": "sig", "n": uint(rn.n), "e": uint(rn.e)},
            {"kty": "EC", "kid": "e1", "crv": "P-256", "x": b64u(en.x.to_bytes(32, "big")), "y": b64u(en.y.to_bytes(32, "big"))},
        ]})

    def token(self, alg="RS256", kid=None, **claims) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "sub": "alice", "aud": "bookinfo", "exp": now + 600, "iat": now}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        head = {"alg": alg, "typ": "JWT", "kid": kid or ("e1" if alg == "ES256" else "r1")}
        signing = (b64u(json.dumps(head).encode()) + "." + b64u(json.dumps(body).encode())).encode()
        if alg == "RS256":
            sig = self.rsa.sign(signing, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "ES256":
            r, s = decode_dss_signature(self.ec.sign(signing, ec.ECDSA(hashes.SHA256())))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        elif alg == "none":
            sig = b""
        else:
            import hmac
            # HS256 keyed with the RSA public key's bytes: the algorithm-confusion attack.
            rn = self.rsa.public_key().public_numbers()
            sig = hmac.new(rn.n.to_bytes(256, "big"), signing, "sha256").digest()
        return signing.decode() + "." + b64u(sig)


def request_authentication(jwks: str, extra: str = "") -> str:
    quoted = json.dumps(jwks)
    return f"""---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt}}
spec:
  jwtRules:
  - issuer: {ISSUER}
    audiences: [bookinfo]
    jwks: {quoted}
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders:
    - {{header: x-jwt-sub, claim: sub}}
{extra}"""


PERMISSIVE = """---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec:
  mtls: {mode: PERMISSIVE}
"""


def start(procs, pki, docs):
    """A server sidecar (PERMISSIVE: plaintext curl straight to its inbound port works too) with
    `docs`, and a client sidecar calling it over the mTLS HTTP/2 hop."""
    app = procs.app("server")
    inbound, sadmin = free_port(), free_port()
    srv = procs.sidecar(server_config(pki, "server-sidecar", inbound, sadmin, app) + PERMISSIVE + docs, "server")
    outbound, cadmin = free_port(), free_port()
    cli = procs.sidecar(client_config(pki, "client-sidecar", outbound, cadmin, [inbound]), "client")
    wait_ready(srv, sadmin)
    wait_ready(cli, cadmin)
    return inbound, outbound, sadmin, srv


def call(port, *headers, path="/echo", host="server", full=False):
    args = ["-s", "-D", "-", "-H", f"Host: {host}"]
    for h in headers:
        args += ["-H", h]
    out = curl(*args, f"http://127.0.0.1:{port}{path}").stdout.decode()
    head, _, body = out.partition("\r\n\r\n")
    status = int(head.split()[1])
    return (status, head, body) if full else status


def test_jwt_verified_refused_and_missing(procs, pki):
    k = Keys()
    inbound, outbound, sadmin, _ = start(procs, pki, request_authentication(k.jwks()))
    good = k.token()
    for port in (inbound, outbound):   # plaintext HTTP/1.1 straight in, and the mTLS HTTP/2 hop
        st, head, body = call(port, f"Authorization: Bearer {good}", full=True)
        assert st == 200, (port, head, body)
        seen = json.loads(body)["headers"]
        payload = json.loads(base64.urlsafe_b64decode(seen["x-jwt-payload"][0] + "=="))
        assert payload["sub"] == "alice" and payload["iss"] == ISSUER
        assert seen["x-jwt-sub"] == ["alice"]
        assert "authorization" not in seen, "forwardOriginalToken defaults to false: the token is removed"
        # ES256 and the access_token query parameter.
        st, _, body = call(port, path=f"/echo?access_token={k.token('ES256')}", full=True)
        assert st == 200, body
        # No token at all: allowed by RequestAuthentication alone.
        assert call(port) == 200
        # A caller's own x-jwt-payload is never passed on.
        st, _, body = call(port, "x-jwt-payload: forged", full=True)
        assert st == 200 and "x-jwt-payload" not in json.loads(body)["headers"]

    now = int(time.time())
    bad = {
        "expired": k.token(exp=now - 120),
        "not yet valid": k.token(nbf=now + 600),
        "wrong issuer": k.token(iss="https://other.test"),
        "wrong audience": k.token(aud="elsewhere"),
        "bad signature": good[:-6] + ("AAAAAA" if not good.endswith("AAAAAA") else "BBBBBB"),
        "alg none": k.token("none"),
        "HS256 with the RSA key": k.token("HS256"),
        "two segments": ".".join(good.split(".")[:2]),
        "bad base64url": good.replace(".", ".*", 1),
        "huge": "a" * 20000 + "." + "b" * 10 + "." + "c" * 10,
        "ES256 signature on an RS256 kid": k.token("ES256", kid="r1"),
    }
    before = stats(sadmin).get("jwt_rejected", 0)
    for why, tok in bad.items():
        for port in (inbound, outbound):
            st, head, body = call(port, f"Authorization: Bearer {tok}", full=True)
            # Envoy jwt_authn: 401, except 403 for an audience not allowed.
            assert st == (403 if why == "wrong audience" else 401), (why, port, head, body)
            if why == "wrong audience":
                assert body.strip() == "Audiences in Jwt are not allowed", body
            assert 'www-authenticate: Bearer realm="http://server/echo", error="invalid_token"' in head.lower().replace("bearer", "Bearer"), head
    assert stats(sadmin)["jwt_rejected"] == before + 2 * len(bad)
    # Expired within the 60 s clock skew is still accepted.
    assert call(inbound, f"Authorization: Bearer {k.token(exp=now - 20)}") == 200


def test_missing_token_refused_by_claims_condition(procs, pki):
    k = Keys()
    policy = """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-group}
spec:
  rules:
  - when:
    - key: request.auth.claims[group]
      values: [admins]
"""
    inbound, outbound, _, _ = start(procs, pki, request_authentication(k.jwks()) + policy)
    for port in (inbound, outbound):
        assert call(port) == 403, "no token: no claims"
        assert call(port, f"Authorization: Bearer {k.token(group='users')}") == 403
        assert call(port, f"Authorization: Bearer {k.token(group='admins')}") == 200
        assert call(port, f"Authorization: Bearer {k.token(group=['users', 'admins'])}") == 200
        assert call(port, f"Authorization: Bearer {k.token(group='admins', exp=1)}") == 401


def test_request_principals_conditions_and_audit(procs, pki):
    """requestPrincipals / notRequestPrincipals, nested claims, request.auth.* and
    request.headers[...] conditions, notValues; an AUDIT policy counts what it matches and
    denies nothing."""
    k = Keys()
    app = procs.app("server")
    # destination.port is the workload's (target) port: the app's port.
    policies = f"""---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-alice}}
spec:
  rules:
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/alice"]}}}}]
    when:
    - {{key: "request.auth.claims[org][team]", values: ["blue*"]}}
    - {{key: request.auth.audiences, values: [bookinfo]}}
    - {{key: request.auth.presenter, notValues: [evil-app]}}
    - {{key: "request.headers[x-env]", notValues: [prod]}}
    - {{key: destination.port, values: ["{app}"], notValues: ["2"]}}
  - from: [{{source: {{requestPrincipals: ["*"], notRequestPrincipals: ["{ISSUER}/mallory"]}}}}]
    to: [{{operation: {{paths: ["/open*"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: audit-admin}}
spec:
  action: AUDIT
  rules:
  - to: [{{operation: {{paths: ["/echo"]}}}}]
    when:
    - {{key: "request.auth.claims[org][team]", values: ["blue-admins"]}}
"""
    inbound, sadmin = free_port(), free_port()
    log = procs.tmp / "access.log"
    # Access log sampling next to nothing: only errors and audited requests are written.
    srv = procs.sidecar(server_config(pki, "server-sidecar", inbound, sadmin, app, f"  accessLog: {{path: {log}, sampling: 0.000001}}\n")
                        + PERMISSIVE + request_authentication(k.jwks()) + policies, "server")
    wait_ready(srv, sadmin)

    def tok(**c):
        return f"Authorization: Bearer {k.token(**c)}"

    blue = {"team": "blue-admins"}
    assert call(inbound, tok(org=blue)) == 200
    assert call(inbound, tok(org={"team": "red"})) == 403, "nested claim value"
    assert call(inbound, tok(org="blue-admins")) == 403, "a claim that is not an object has no [team]"
    assert call(inbound, tok(org=blue, sub="bob")) == 403, "requestPrincipals"
    assert call(inbound, tok(org=blue, azp="evil-app")) == 403, "presenter notValues"
    assert call(inbound, tok(org=blue, azp="good-app")) == 200
    assert call(inbound, tok(org=blue), "x-env: prod") == 403, "header notValues"
    assert call(inbound, tok(org=blue), "x-env: dev") == 200
    assert call(inbound, tok(org=blue, aud=["other", "bookinfo"])) == 200, "audiences list"
    assert call(inbound) == 403, "no token: no request principal"
    # The second rule: any request principal but mallory, on /open*.
    assert call(inbound, tok(sub="bob"), path="/echo?x=/open") == 403
    assert call(inbound, tok(sub="bob"), path="/open") != 403
    assert call(inbound, tok(sub="mallory"), path="/open") == 403
    assert call(inbound, path="/open") == 403
    # AUDIT: counted when it matches, whatever the verdict (the blue-admins token on /echo: 7 times
    # above, 200 or 403), and it denies nothing.
    before = stats(sadmin)["authz_audited"]
    assert call(inbound, tok(org=blue)) == 200
    assert call(inbound, tok(org={"team": "red"})) == 403
    assert stats(sadmin)["authz_audited"] == before + 1
    assert before == 7
    # Each audited request is in the access log, marked, whatever the sampling.
    def lines():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    wait_until(lambda: sum(1 for e in lines() if e.get("audit")) == 8, what="8 audited lines")
    assert all(e.get("audit") for e in lines() if e["response_code"] == 200 and e["path"] == "/echo"), lines()
    assert not any(e.get("audit") for e in lines() if e["path"] != "/echo")


def test_refused_by_name(procs, pki, tmp_path):
    """What is not supported yet is refused by name at --check, never accepted and dropped."""
    import subprocess
    from conftest import SIDECAR
    k = Keys()
    cases = {
        "jwtRules[0].fromCookies": request_authentication(k.jwks(), "    fromCookies: [session]\n"),
        "when[0].key": """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ip}
spec:
  rules:
  - when: [{key: connection.sni, values: [a.example]}]
""",
        "spec.action": """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext}
spec:
  action: CUSTOM
""",
        "jwks": request_authentication('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'),
    }
    for i, (field, doc) in enumerate(cases.items()):
        path = tmp_path / f"c{i}.yaml"
        path.write_text(server_config(pki, "s", free_port(), free_port(), free_port()) + doc)
        r = subprocess.run([SIDECAR, "--check", "--config", path], capture_output=True, text=True)
        assert r.returncode != 0 and field in r.stderr, (field, r.stderr)


def test_port_level_mtls(procs, pki):
    """PeerAuthentication portLevelMtls, keyed by the workload (app) port: STRICT on one port and
    PERMISSIVE (the workload's mode) on another, for HTTP and TCP inbound alike."""
    apps = {name: procs.app(name) for name in ("a", "b", "c", "d")}
    policy = f"""---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: server}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  mtls: {{mode: PERMISSIVE}}
  portLevelMtls:
    {apps['a']}: {{mode: STRICT}}
    {apps['c']}: {{mode: STRICT}}
"""
    inbound = {}
    for name, app in apps.items():
        port, admin = free_port(), free_port()
        extra = "    appProtocol: TCP\n" if name in ("c", "d") else ""
        srv = procs.sidecar(server_config(pki, f"server-{name}", port, admin, app).replace("    headerTimeout: 2s\n", "    headerTimeout: 2s\n" + extra)
                            + policy, f"server-{name}")
        wait_ready(srv, admin)
        inbound[name] = port
    outbound, cadmin = free_port(), free_port()
    cli = procs.sidecar(client_config(pki, "client-sidecar", outbound, cadmin, [inbound["a"]]), "client")
    wait_ready(cli, cadmin)

    def plain(name):
        return curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", f"http://127.0.0.1:{inbound[name]}/").stdout

    assert plain("a") == b"000", "HTTP port A: STRICT by portLevelMtls refuses plaintext"
    assert plain("b") == b"200", "HTTP port B: the workload's PERMISSIVE"
    assert plain("c") == b"000", "TCP port C: STRICT by portLevelMtls"
    assert plain("d") == b"200", "TCP port D: PERMISSIVE"
    assert curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: server", f"http://127.0.0.1:{outbound}/").stdout == b"200", \
        "mTLS still works on the STRICT port"


class JWKSServer:
    """A local HTTP or HTTPS server whose /jwks.json answers what `body` holds."""

    def __init__(self, tls_dir=None):
        import http.server
        import ssl
        import threading
        outer = self
        self.body = b"{}"
        self.hits = 0

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits += 1
                b = outer.body if self.path == "/jwks.json" else b"not here"
                self.send_response(200 if self.path == "/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(b)))
                self.end_headers()
                self.wfile.write(b)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        if tls_dir:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls_dir / "server.pem", tls_dir / "server.key")
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def make_tls(d):
    """A CA of the test's own and a server certificate for localhost from it (PEM files in `d`)."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jwks test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))


def uri_rule(uri):
    return f"""---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt}}
spec:
  jwtRules:
  - issuer: {ISSUER}
    jwksUri: {uri}
"""


def start_with_env(procs, pki, name, docs, env):
    from conftest import SIDECAR
    app = procs.app(name)
    inbound, admin = free_port(), free_port()
    path = procs.tmp / f"{name}.yaml"
    path.write_text(server_config(pki, name, inbound, admin, app) + PERMISSIVE + docs)
    p = procs.start([SIDECAR, "--config", path], name, env=env)
    wait_ready(p, admin)
    return inbound, p


def test_jwks_uri_fetched_refreshed_http_and_https(procs, pki, tmp_path):
    a, b = Keys(), Keys()
    plain = JWKSServer()
    make_tls(tmp_path)
    tls = JWKSServer(tls_dir=tmp_path)
    try:
        plain.body = a.jwks().encode()
        tls.body = a.jwks().encode()
        env = {"MESH_JWKS_REFRESH_SECONDS": "1"}
        port, hp = start_with_env(procs, pki, "http-jwks", uri_rule(f"http://127.0.0.1:{plain.port}/jwks.json"), env)
        bearer = lambda k: f"Authorization: Bearer {k.token()}"  # noqa: E731
        wait_until(lambda: call(port, bearer(a)) == 200, what="the first fetch")
        assert call(port, bearer(b)) == 401
        # Rotation: the server now has B only; within a refresh B is accepted and A refused.
        plain.body = b.jwks().encode()
        wait_until(lambda: call(port, bearer(b)) == 200, what="the refresh")
        assert call(port, bearer(a)) == 401
        # A set that stops parsing leaves the last good one in force.
        plain.body = b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'
        hits = plain.hits
        wait_until(lambda: plain.hits >= hits + 2, what="two more fetches")
        assert call(port, bearer(b)) == 200
        # Plain http:// is allowed (as in Istio) but warned about once, naming the policy, not
        # on every recompile (the rotation above compiled it again) nor per request.
        warned = [l for l in hp.log_path.read_text().splitlines() if "is plain http://" in l]
        assert len(warned) == 1 and "RequestAuthentication default/jwt: spec.jwtRules[0].jwksUri http://127.0.0.1:" in warned[0], warned

        # https with the test's own CA, trusted through SSL_CERT_FILE.
        uri = f"https://localhost:{tls.port}/jwks.json"
        tport, _ = start_with_env(procs, pki, "https-jwks", uri_rule(uri), {**env, "SSL_CERT_FILE": str(tmp_path / "ca.pem")})
        wait_until(lambda: call(tport, bearer(a)) == 200, what="the https fetch")
        # Without that CA the server is not trusted: no keys, tokens refused, the reason logged.
        uport, untrusted = start_with_env(procs, pki, "https-untrusted", uri_rule(uri), env)
        wait_until(lambda: "TLS with localhost" in untrusted.log_path.read_text(), what="the refused handshake")
        assert call(uport, bearer(a)) == 401
    finally:
        plain.close()
        tls.close()


def test_ip_blocks_and_source_ip(procs, pki):
    """ipBlocks / notIpBlocks and the source.ip / remote.ip conditions, on the caller's address
    (127.0.0.1 here), for plaintext HTTP/1.1 and the mTLS HTTP/2 hop; changed by SIGHUP."""
    allow = """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-address}
spec:
  rules:
  - from: [{source: {ipBlocks: ["127.0.0.0/8"], notIpBlocks: ["127.0.0.2/32"]}}]
    to: [{operation: {paths: ["/echo"]}}]
  - when: [{key: remote.ip, values: ["10.0.0.0/8"]}]
"""
    deny = """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-loopback}
spec:
  action: DENY
  rules:
  - when: [{key: source.ip, values: ["127.0.0.1"]}]
    to: [{operation: {paths: ["/echo"]}}]
"""
    inbound, outbound, sadmin, srv = start(procs, pki, allow)
    for port in (inbound, outbound):
        assert call(port) == 200, "127.0.0.1 is in 127.0.0.0/8"
        assert call(port, path="/other") == 403, "the second rule needs 10.0.0.0/8"
    cfg = procs.tmp / "server.yaml"
    cfg.write_text(cfg.read_text() + deny)
    srv.send_signal(signal.SIGHUP)
    wait_until(lambda: "static-2" in srv.log_path.read_text(), what="reload")
    for port in (inbound, outbound):
        assert call(port) == 403, "DENY on source.ip"


def test_request_authentication_pushed_by_meshd(procs, tmp_path):
    """meshd validates RequestAuthentication with the sidecar's parser (a bad key set is refused
    naming file, line and field, the version in force kept) and pushes it; the sidecar enforces it."""
    from conftest import Meshd
    k = Keys()
    m = Meshd(procs)
    app = procs.app("reviews")
    m.sidecar("reviews", "reviews", app_port=app)
    _, _, _, pp = m.sidecar("productpage", "productpage")
    wait_until(lambda: call(pp, host="reviews", path="/") == 200, what="routing pushed")
    bad = tmp_path / "bad.yaml"
    bad.write_text(request_authentication('{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}').replace("name: jwt", "name: jwt-bad"))
    r = m.ctl("apply", "-f", bad, check=False)
    assert r.returncode != 0 and "bad.yaml:" in r.stderr and "jwtRules[0].jwks" in r.stderr and "2048" in r.stderr, r.stderr
    policy = """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: need-jwt}
spec:
  selector: {matchLabels: {app: reviews}}
  rules:
  - from: [{source: {requestPrincipals: ["*"]}}]
"""
    good = tmp_path / "jwt.yaml"
    good.write_text(request_authentication(k.jwks()).replace("spec:\n", "spec:\n  selector: {matchLabels: {app: reviews}}\n", 1) + policy)
    m.ctl("apply", "-f", good, "--wait")
    assert ("RequestAuthentication", "default/jwt") in m.routes()
    assert call(pp, host="reviews") == 403, "no token"
    assert call(pp, f"Authorization: Bearer {k.token(exp=1)}", host="reviews") == 401
    st, _, body = call(pp, f"Authorization: Bearer {k.token()}", host="reviews", full=True)
    assert st == 200 and json.loads(body)["headers"]["x-jwt-sub"] == ["alice"]
    # A plain http:// jwksUri is accepted (as Istio does) and warned about at apply, naming the
    # file, line, policy and rule.
    plain = tmp_path / "plain.yaml"
    plain.write_text(uri_rule("http://127.0.0.1:9/jwks.json").replace("name: jwt", "name: jwt-plain").replace(
        "spec:\n", "spec:\n  selector: {matchLabels: {app: nobody}}\n", 1))
    m.ctl("apply", "-f", plain)
    log = m.proc.log_path.read_text()
    assert "plain.yaml:" in log and "RequestAuthentication default/jwt-plain: spec.jwtRules[0].jwksUri http://127.0.0.1:9/jwks.json is plain http://" in log, log[-2000:]


def test_every_token_must_verify(procs, pki):
    """Review fix 3: a second token (another Authorization header, an access_token parameter, a
    second access_token) must verify too, else 401; two good tokens pass and neither header
    reaches the app (forwardOriginalToken false)."""
    k = Keys()
    inbound, outbound, _, _ = start(procs, pki, request_authentication(k.jwks()))
    good, other = k.token(), k.token("ES256", sub="bob")
    bad = good[:-6] + ("AAAAAA" if not good.endswith("AAAAAA") else "BBBBBB")
    forged = k.token("none")
    for port in (inbound, outbound):
        assert call(port, f"Authorization: Bearer {good}", f"Authorization: Bearer {bad}") == 401, "a bad second header"
        assert call(port, f"Authorization: Bearer {good}", f"Authorization: Bearer {forged}") == 401, "alg none second"
        assert call(port, f"Authorization: Bearer {good}", path=f"/echo?access_token={bad}") == 401, "a bad access_token"
        assert call(port, path=f"/echo?access_token={good}&access_token={bad}") == 401, "a bad second access_token"
        assert call(port, path=f"/echo?x=1&access_token={bad}&access_token={good}") == 401
        st, head, body = call(port, f"Authorization: Bearer {good}", f"Authorization: Bearer {other}", full=True)
        assert st == 200, (port, head, body)
        seen = json.loads(body)["headers"]
        assert "authorization" not in seen, seen
        assert seen["x-jwt-sub"] == ["alice"], "the first token's claims"
        assert call(port, f"Authorization: Bearer {good}", path=f"/echo?access_token={other}") == 200
        assert call(port, f"Authorization: Basic dXNlcjpwdw==", f"Authorization: Bearer {good}") == 200, \
            "a header without the Bearer prefix holds no token"


def test_header_conditions_never_read_forged_output_headers(procs, pki):
    """Review fix 2: a caller's copy of an output header (x-jwt-sub) is not forwarded, and a
    `request.headers[x-jwt-sub]` condition does not read it either: it sees the mesh-set value
    (the verified token's `sub`) or nothing."""
    k = Keys()
    policy = """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-admin-header}
spec:
  rules:
  - when:
    - {key: "request.headers[x-jwt-sub]", values: [admin]}
"""
    inbound, outbound, _, _ = start(procs, pki, request_authentication(k.jwks()) + policy)
    for port in (inbound, outbound):
        assert call(port, "x-jwt-sub: admin") == 403, "no token: the forged header is not read"
        assert call(port, "x-jwt-sub: admin", f"Authorization: Bearer {k.token(sub='alice')}") == 403, \
            "the mesh-set alice, not the forged admin"
        assert call(port, f"Authorization: Bearer {k.token(sub='admin')}") == 200
        assert call(port, "x-jwt-sub: nobody", f"Authorization: Bearer {k.token(sub='admin')}") == 200
