"""HTTP/2 on the inbound mTLS listener (ALPN h2), carried to an HTTP/1.1 app."""

import hashlib
import json
import os
import subprocess

from conftest import curl, stats


def h2curl(mesh, pki, path, *args):
    return curl("--http2", "--cacert", f"{pki}/root-cert.pem", "--cert", f"{pki}/client/cert-chain.pem",
                "--key", f"{pki}/client/key.pem", "--resolve", f"server:{mesh.inbound}:127.0.0.1",
                "-w", "\n%{http_version} %{http_code}", *args, f"https://server:{mesh.inbound}{path}", timeout=120)


def test_inbound_speaks_h2_by_alpn_with_identity_headers(mesh, pki):
    r = h2curl(mesh, pki, "/echo", "-H", "x-forwarded-client-cert: spoofed")
    body, _, tail = r.stdout.rpartition(b"\n")
    assert tail == b"2 200", r.stdout[-200:]
    h = json.loads(body)["headers"]
    assert h["x-forwarded-client-cert"][0].endswith(";URI=spiffe://cluster.local/ns/default/sa/client")
    assert len(h["x-forwarded-client-cert"]) == 1
    assert h["host"] == [f"server:{mesh.inbound}"]
    assert len(h["x-request-id"][0]) == 36
    # HTTP/1.1 callers still get HTTP/1.1 on the same port.
    r = curl("--http1.1", "--cacert", f"{pki}/root-cert.pem", "--cert", f"{pki}/client/cert-chain.pem",
             "--key", f"{pki}/client/key.pem", "--resolve", f"server:{mesh.inbound}:127.0.0.1",
             "-w", "\n%{http_version}", f"https://server:{mesh.inbound}/")
    assert r.stdout.endswith(b"\n1.1")


def test_h2_bodies_both_ways(mesh, pki, tmp_path):
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(10 * 1000 * 1000))
    want = hashlib.sha256(blob.read_bytes()).hexdigest()
    r = h2curl(mesh, pki, "/sha256", "-X", "POST", "--data-binary", f"@{blob}")
    body, _, tail = r.stdout.rpartition(b"\n")
    assert tail == b"2 200" and json.loads(body) == {"sha256": want, "bytes": 10 * 1000 * 1000}
    out = tmp_path / "down.bin"
    r = h2curl(mesh, pki, "/bytes/10000000?seed=5", "-o", str(out), "-D", str(tmp_path / "h.txt"))
    assert r.stdout.endswith(b"2 200")
    sha = [l for l in (tmp_path / "h.txt").read_text().splitlines() if l.lower().startswith("x-sha256")][0].split(":")[1].strip()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == sha
    # A chunked response from the app arrives whole, without chunk framing.
    r = h2curl(mesh, pki, "/chunked?n=5")
    assert r.stdout.startswith(b"chunk 0\nchunk 1\n") and r.stdout.endswith(b"2 200")


def test_many_concurrent_streams_on_one_connection(mesh, pki):
    r = subprocess.run(["nghttp", "-n", "-s", "-m", "200", "--cert", f"{pki}/client/cert-chain.pem",
                        "--key", f"{pki}/client/key.pem", f"https://127.0.0.1:{mesh.inbound}/"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    codes = [l.split()[4] for l in r.stdout.decode().splitlines() if l.strip() and l.split()[0].isdigit()]
    assert codes.count("200") == 200, r.stdout[-500:]
    s = stats(mesh.server_admin)
    # nghttp opened exactly one connection, and all 200 streams were served on it as HTTP/2.
    assert s["downstream_connections_total"] == 1, s
    assert s["http2_downstream_connections_total"] == 1, s
    assert s["tls_handshakes_ok"] == 1, s
    assert s["requests_total"] == 200 and s["responses_2xx"] == 200, s


def test_h2_stream_without_app_gets_503(procs, pki):
    from conftest import free_port, server_config, wait_ready
    inbound, admin = free_port(), free_port()
    p = procs.sidecar(server_config(pki, "s", inbound, admin, free_port()), "server")
    wait_ready(p, admin)
    r = curl("--http2", "--cacert", f"{pki}/root-cert.pem", "--cert", f"{pki}/client/cert-chain.pem",
             "--key", f"{pki}/client/key.pem", "--resolve", f"server:{inbound}:127.0.0.1", "-i",
             f"https://server:{inbound}/")
    assert r.stdout.startswith(b"HTTP/2 503"), r.stdout[:200]
    assert b"x-mesh-response-flags: UF" in r.stdout


def test_rapid_reset_flood_is_cut_off(mesh, pki):
    """A client that opens and resets streams in a loop loses its connection; others keep working."""
    import socket
    import ssl
    import h2.config
    import h2.connection
    import h2.errors
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(f"{pki}/root-cert.pem")
    ctx.load_cert_chain(f"{pki}/client/cert-chain.pem", f"{pki}/client/key.pem")
    ctx.set_alpn_protocols(["h2"])
    ctx.check_hostname = False
    raw = socket.create_connection(("127.0.0.1", mesh.inbound), timeout=5)
    s = ctx.wrap_socket(raw)
    assert s.selected_alpn_protocol() == "h2"
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    s.sendall(c.data_to_send())
    closed = False
    try:
        for i in range(1000):
            sid = c.get_next_available_stream_id()
            c.send_headers(sid, [(":method", "GET"), (":scheme", "https"), (":authority", "server"), (":path", "/slow?ms=200")])
            c.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            s.sendall(c.data_to_send())
    except (OSError, ssl.SSLError):
        closed = True
    if not closed:
        s.settimeout(3)
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    closed = True
                    break
                events = c.receive_data(data)
                if any(type(e).__name__ == "ConnectionTerminated" for e in events):
                    closed = True
                    break
        except socket.timeout:
            closed = False            # still open: the flood was tolerated
        except (OSError, ssl.SSLError):
            closed = True
    assert closed, "the server kept a rapid-reset connection open"
    # Everyone else is served.
    r = h2curl(mesh, pki, "/")
    assert r.stdout.endswith(b"2 200")


def test_sidecar_hop_is_h2_multiplexed_by_default_and_h1_on_request(procs, pki):
    import threading
    from conftest import client_config, free_port, server_config, wait_ready
    app = procs.app("server")
    inbound, sadmin = free_port(), free_port()
    srv = procs.sidecar(server_config(pki, "s", inbound, sadmin, app), "server")
    wait_ready(srv, sadmin)
    for proto, want_h2 in (("", True), ("      protocol: HTTP1", False)):
        outbound, cadmin = free_port(), free_port()
        cfg = client_config(pki, "c", outbound, cadmin, [inbound], cluster_extra=proto).replace("concurrency: 2", "concurrency: 1")
        cli = procs.sidecar(cfg, f"client{'-h1' if proto else ''}")
        wait_ready(cli, cadmin)
        before = stats(sadmin)["http2_downstream_connections_total"]
        # 20 concurrent client connections.
        results = []
        def one():
            results.append(curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{outbound}/slow?ms=300", "-H", "Host: server").stdout)
        ts = [threading.Thread(target=one) for _ in range(20)]
        for t in ts: t.start()
        for t in ts: t.join()
        assert results == [b"200"] * 20
        s = stats(cadmin)
        if want_h2:
            assert s["http2_upstream_connections_total"] == 1          # all 20 multiplexed on one connection
            assert stats(sadmin)["http2_downstream_connections_total"] - before == 1
        else:
            assert s["http2_upstream_connections_total"] == 0
            assert s["upstream_connections_total"] >= 10             # one per concurrent request
            assert stats(sadmin)["http2_downstream_connections_total"] == before


def test_thousand_concurrent_streams_from_h2load(mesh):
    """h2c from the app (prior knowledge) on the outbound listener: 10 connections x 100 streams."""
    r = subprocess.run(["h2load", "-c", "10", "-m", "100", "-n", "3000", "-H", ":authority: server",
                        f"http://127.0.0.1:{mesh.outbound}/"], capture_output=True, timeout=120)
    out = r.stdout.decode()
    assert "3000 succeeded, 0 failed, 0 errored, 0 timeout" in out, out[-800:]
    assert "status codes: 3000 2xx" in out
    assert stats(mesh.client_admin)["http2_downstream_connections_total"] == 10


def test_h2c_prior_knowledge_from_the_app_and_plain_h2c_clusters(procs, pki, mesh):
    # curl speaking h2c (prior knowledge) to the outbound listener, through the h2 hop to an H1 app.
    r = curl("--http2-prior-knowledge", "-w", "\n%{http_version} %{http_code}", mesh.url("/echo"), "-H", "Host: server")
    body, _, tail = r.stdout.rpartition(b"\n")
    assert tail == b"2 200", r.stdout[-300:]
    assert json.loads(body)["headers"]["x-forwarded-client-cert"][0].endswith("/sa/client")
    # The same listener still serves HTTP/1.1.
    assert curl("-o", "/dev/null", "-w", "%{http_version}", mesh.url("/"), "-H", "Host: server").stdout == b"1.1"


def test_oversized_header_list_resets_only_that_stream(mesh, pki):
    import socket
    import ssl
    import h2.config
    import h2.connection
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(f"{pki}/root-cert.pem")
    ctx.load_cert_chain(f"{pki}/client/cert-chain.pem", f"{pki}/client/key.pem")
    ctx.set_alpn_protocols(["h2"])
    ctx.check_hostname = False
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", mesh.inbound), timeout=5))
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    c.initiate_connection()
    c.local_settings  # noqa: B018
    base = [(":method", "GET"), (":scheme", "https"), (":authority", "server"), (":path", "/")]
    c.send_headers(1, base + [(f"x-big-{i}", "a" * 1000) for i in range(80)], end_stream=True)   # ~80 KiB > 64 KiB
    c.send_headers(3, base, end_stream=True)
    s.sendall(c.data_to_send())
    reset1 = ok3 = False
    s.settimeout(5)
    while not (reset1 and ok3):
        data = s.recv(65536)
        if not data:
            break
        for e in c.receive_data(data):
            n = type(e).__name__
            if n == "StreamReset" and e.stream_id == 1:
                reset1 = True
            if n == "ResponseReceived" and e.stream_id == 3:
                ok3 = dict(e.headers)[":status"] == "200"
        s.sendall(c.data_to_send())
    s.close()
    assert reset1 and ok3


def test_upgrade_h2c_request_is_served_as_http1(mesh):
    """curl --http2 on http:// asks for `Upgrade: h2c`; the request is answered over HTTP/1.1 and
    neither the upgrade nor HTTP2-Settings reach the app."""
    r = curl("--http2", "-w", "\n%{http_version} %{http_code}", mesh.url("/echo"), "-H", "Host: server")
    body, _, tail = r.stdout.rpartition(b"\n")
    assert tail == b"1.1 200", r.stdout[-200:]
    h = json.loads(body)["headers"]
    assert "upgrade" not in h and "http2-settings" not in h


def test_trailers_cross_between_http1_and_http2(mesh, pki):
    """Trailers both ways through both sidecars (h2 hop) to an HTTP/1.1 app: the client's chunked
    request trailers reach the app; the app's chunked response trailers reach an h2 client."""
    import hashlib
    import socket
    import ssl
    import h2.config
    import h2.connection
    # HTTP/1.1 client with a chunked body and a trailer -> outbound -> h2 -> inbound -> app (chunked).
    raw = (b"POST /trailers HTTP/1.1\r\nHost: server\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\nConnection: close\r\n\r\n"
           b"5\r\nhello\r\n0\r\nx-client-sum: 42\r\n\r\n")
    s = socket.create_connection(("127.0.0.1", mesh.outbound), timeout=5)
    s.sendall(raw)
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b'"x-client-sum": "42"' in body and b'"bytes": 5' in body, body
    assert b"x-checksum: " in body                          # the app's trailer, back in the last chunk
    # h2 client on the inbound listener: the app's chunked trailer arrives as an HTTP/2 trailer.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(f"{pki}/root-cert.pem")
    ctx.load_cert_chain(f"{pki}/client/cert-chain.pem", f"{pki}/client/key.pem")
    ctx.set_alpn_protocols(["h2"])
    ctx.check_hostname = False
    t = ctx.wrap_socket(socket.create_connection(("127.0.0.1", mesh.inbound), timeout=5))
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    c.initiate_connection()
    c.send_headers(1, [(":method", "POST"), (":scheme", "https"), (":authority", "server"), (":path", "/trailers")])
    c.send_data(1, b"abc")
    c.send_headers(1, [("x-req-trailer", "7")], end_stream=True)
    t.sendall(c.data_to_send())
    got_body, trailers, done = b"", {}, False
    while not done:
        d = t.recv(65536)
        if not d:
            break
        for e in c.receive_data(d):
            n = type(e).__name__
            if n == "DataReceived":
                got_body += e.data
                c.acknowledge_received_data(len(e.data), 1)
            elif n == "TrailersReceived":
                trailers = dict(e.headers)
            elif n in ("StreamEnded", "StreamReset"):
                done = True
        t.sendall(c.data_to_send())
    t.close()
    assert b'"x-req-trailer": "7"' in got_body, got_body     # the h2 client's trailer reached the app
    assert trailers.get("x-checksum") == hashlib.sha256(got_body).hexdigest()
