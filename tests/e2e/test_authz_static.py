"""AuthorizationPolicy in a static config, over the HTTP/1.1 mTLS hop (the inbound HTTP/1.1
path), with SIGHUP to change it."""

import signal

from conftest import client_config, curl, free_port, server_config, wait_ready, wait_until

POLICY = """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-GET}
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
