"""AuthorizationPolicy in a static config, over the HTTP/1.1 mTLS hop (the inbound HTTP/1.1
path), with SIGHUP to change it."""

import signal

from conftest import client_config, curl, free_port, server_config, wait_ready, wait_until

POLICY = """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-get}
spec:
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/client"]}}]
    to: [{operation: {methods: [GET]}}]
"""


def test_static_authorization_over_http1(procs, pki):
    app = procs.app("server")
    inbound, sadmin = free_port(), free_port()
    cfg = server_config(pki, "server-sidecar", inbound, sadmin, app) + POLICY
    srv = procs.sidecar(cfg, "server")
    outbound, cadmin = free_port(), free_port()
    cli = procs.sidecar(client_config(pki, "client-sidecar", outbound, cadmin, [inbound], cluster_extra="      protocol: HTTP1"), "client")
    wait_ready(srv, sadmin)
    wait_ready(cli, cadmin)

    def code(method):
        return curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, "-H", "Host: server", f"http://127.0.0.1:{outbound}/echo").stdout

    assert code("GET") == b"200"
    assert code("POST") == b"403"
    # Another principal only: the client is no longer allowed.
    (procs.tmp / "server.yaml").write_text(cfg.replace("sa/client", "sa/someone-else"))
    srv.send_signal(signal.SIGHUP)
    wait_until(lambda: "static-2" in srv.log_path.read_text(), what="reload")
    assert code("GET") == b"403"


def peer_auth(mode):
    return f"""---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default}}
spec:
  mtls: {{mode: {mode}}}
"""


def test_peer_authentication_modes(procs, pki):
    """STRICT (the default) refuses a plaintext caller; PERMISSIVE serves plaintext and mTLS on
    the same port; DISABLE serves plaintext only. An AuthorizationPolicy on principals still
    refuses the plaintext caller, who has none."""
    import json
    app = procs.app("server")
    inbound, sadmin = free_port(), free_port()
    base = server_config(pki, "server-sidecar", inbound, sadmin, app)
    srv = procs.sidecar(base, "server")
    outbound, cadmin = free_port(), free_port()
    cli = procs.sidecar(client_config(pki, "client-sidecar", outbound, cadmin, [inbound]), "client")
    wait_ready(srv, sadmin)
    wait_ready(cli, cadmin)
    plain = lambda: curl("-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{inbound}/echo").stdout  # noqa: E731
    mtls = lambda: curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: server", f"http://127.0.0.1:{outbound}/echo").stdout  # noqa: E731
    assert plain() == b"000", "STRICT refuses plaintext"
    assert mtls() == b"200"

    def reload(text, n):
        (procs.tmp / "server.yaml").write_text(text)
        srv.send_signal(signal.SIGHUP)
        wait_until(lambda: f"static-{n}" in srv.log_path.read_text(), what=f"reload {n}")

    reload(base + peer_auth("PERMISSIVE"), 2)
    assert plain() == b"200" and mtls() == b"200"
    echo = json.loads(curl("-s", f"http://127.0.0.1:{inbound}/echo").stdout)
    assert "x-forwarded-client-cert" not in echo["headers"], "no client certificate, no XFCC"
    reload(base + peer_auth("PERMISSIVE") + POLICY, 3)
    assert plain() == b"403", "a plaintext caller has no principal"
    assert mtls() == b"200"
    reload(base + peer_auth("DISABLE"), 4)
    assert plain() == b"200"
    # Established connections keep going (policies apply to new ones); a new caller is refused.
    outbound2, cadmin2 = free_port(), free_port()
    cli2 = procs.sidecar(client_config(pki, "client-sidecar-2", outbound2, cadmin2, [inbound]), "client2")
    wait_ready(cli2, cadmin2)
    r = curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: server", f"http://127.0.0.1:{outbound2}/echo").stdout
    assert r == b"503", "mTLS refused on a plaintext-only port"
    assert "PeerAuthentication DISABLE" in srv.log_path.read_text()


def test_policy_paths_cannot_be_dodged(procs, pki):
    """A DENY on /echo holds for //echo, /./echo, /%65cho, an absolute-form target and a
    fragment; an encoded slash is refused outright (found in review)."""
    import socket
    app = procs.app("server")
    inbound, sadmin = free_port(), free_port()
    deny = """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-echo}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/echo"]}}]
"""
    srv = procs.sidecar(server_config(pki, "server-sidecar", inbound, sadmin, app) + peer_auth("PERMISSIVE") + deny, "server")
    wait_ready(srv, sadmin)

    def raw(target):
        with socket.create_connection(("127.0.0.1", inbound)) as s:
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                d = s.recv(65536)
                if not d:
                    break
                data += d
        return int(data.split(b" ")[1])

    assert raw("/") == 200
    for target in ("/echo", "//echo", "/./echo", "/x/../echo", "/%65cho", "http://server/echo", "/echo?x=1"):
        assert raw(target) == 403, target
    assert raw("/echo#x") == 400
    assert raw("/%2Fecho") == 400
