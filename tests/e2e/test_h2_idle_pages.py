"""Idle mTLS HTTP/2 connections give nghttp2's frame buffer pages back (issue 22, "Memory per
connection"): a hibernated connection keeps working, with its HPACK dynamic tables, whenever
traffic returns; and N hibernated connections cost at most a bound per connection that only holds
while the release happens (HTTP2Memory.swift)."""

import json
import socket
import ssl
import time

import h2.config
import h2.connection
import h2.events

from conftest import free_port, server_config, stats, wait_ready, wait_until

HIBERNATE_S = 2.0  # DownstreamConnection.hibernateAfter


def sidecar(procs, pki, app):
    port, admin = free_port(), free_port()
    cfg = server_config(pki, "inbound", port, admin, app).replace("concurrency: 2", "concurrency: 1").replace(
        "    headerTimeout: 2s", "    headerTimeout: 10s\n    idleTimeout: 120s")
    proc = procs.sidecar(cfg, "inbound")
    wait_ready(proc, admin)
    return proc, port, admin


class H2Client:
    """python-h2 over mTLS (ALPN h2): a real client library with its own HPACK encoder, which
    indexes the request headers it sends and decodes the server's indexed response headers."""

    def __init__(self, pki, port):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(f"{pki}/root-cert.pem")
        ctx.load_cert_chain(f"{pki}/client/cert-chain.pem", f"{pki}/client/key.pem")
        ctx.set_alpn_protocols(["h2"])
        ctx.check_hostname = False
        self.s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
        assert self.s.selected_alpn_protocol() == "h2"
        self.c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.c.initiate_connection()
        self.s.sendall(self.c.data_to_send())

    def get(self, path, extra=()):
        sid = self.c.get_next_available_stream_id()
        self.c.send_headers(sid, [(":method", "GET"), (":scheme", "https"), (":authority", "server"),
                                  (":path", path), *extra], end_stream=True)
        self.s.sendall(self.c.data_to_send())
        head, body, done = None, b"", False
        while not done:
            data = self.s.recv(65536)
            assert data, "the sidecar closed the connection"
            for ev in self.c.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    head = dict(ev.headers)
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    body += ev.data
                    self.c.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    done = True
                elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    raise AssertionError(f"{type(ev).__name__}: {ev}")
            out = self.c.data_to_send()
            if out:
                self.s.sendall(out)
        return head, body

    def close(self):
        self.s.close()


def test_hibernated_h2_connection_serves_again_with_its_hpack_state(procs, pki):
    """Three rounds on one connection: idle past the hibernation (the frame buffer's pages are
    dropped), then 30 requests whose headers hit both HPACK dynamic tables; every echoed request
    header and every response header must come back exactly."""
    app = procs.app("pages")
    _, port, admin = sidecar(procs, pki, app)
    cl = H2Client(pki, port)
    try:
        head, _ = cl.get("/")   # idle from here: hibernation 2 s after the last stream
        assert head[":status"] == "200"
        n = 1
        for rnd in range(3):
            before = stats(admin)["downstream_idle_buffer_releases"]
            time.sleep(HIBERNATE_S + 0.8)
            wait_until(lambda: stats(admin)["downstream_idle_buffer_releases"] > before, 5,
                       what=f"round {rnd}: the connection hibernated")
            for i in range(30):
                n += 1
                tenant = f"tenant-{i % 4}-with-a-long-name-0123456789"
                head, body = cl.get(f"/echo?i={i % 5}", [("x-tenant", tenant), ("user-agent", "pages-test/1.0"),
                                                         ("x-request-n", str(n))])
                assert head[":status"] == "200", head
                assert head.get("content-type") == "application/json", head
                echo = json.loads(body)
                assert echo["path"] == f"/echo?i={i % 5}"
                assert echo["headers"]["x-tenant"] == [tenant], echo["headers"]
                assert echo["headers"]["user-agent"] == ["pages-test/1.0"]
                assert echo["headers"]["x-request-n"] == [str(n)]
        # the connection never broke: all 91 requests on stream ids 1, 3, ... 181
        assert cl.c.highest_outbound_stream_id == 2 * n - 1
    finally:
        cl.close()


def open_h2_connections(pki, port, n):
    """n connections, each with one 70 KB response: its 16 KiB DATA frames go through every page
    of the connection's frame buffer, so all of them are resident until given back."""
    conns = []
    for _ in range(n):
        c = H2Client(pki, port)
        head, body = c.get("/bytes/70000")
        assert head[":status"] == "200" and len(body) == 70000
        conns.append(c)
    return conns


def anon_kb(pid):
    """RssAnon: the process's own pages (heap, stacks). VmRSS also counts file pages, which the
    sidecar unmaps when it goes quiet and faults back in on use: megabytes of noise here."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("RssAnon:"))


# Measured with this test (debug build, 400 connections each after a 70 KB response, RssAnon,
# two runs each): 46.1-46.2 KiB per hibernated connection with the release, 63.3-63.8 KiB with
# HTTP2Session.releaseIdleMemory skipping the madvise (all five pages of nghttp2's frame buffer
# mapping stay resident). The bound sits between the two: the test fails if the release stops.
# (The target, at most HAProxy's figure and 0.6x Envoy's 39 KiB, is not met yet: see
# docs/benchmarks.md, "Memory per idle connection".)
MAX_KIB_PER_CONN = 55


def test_hibernated_h2_connections_hold_little_memory(procs, pki):
    """400 mTLS HTTP/2 connections, one 70 KB response each, then idle: once hibernated (and the heap
    trimmed) the sidecar's anonymous RSS grew by at most MAX_KIB_PER_CONN per connection; all still work."""
    n = 400
    app = procs.app("pages")
    proc, port, admin = sidecar(procs, pki, app)
    warm = open_h2_connections(pki, port, 8)   # TLS context, app pool, first-use tables
    for c in warm:
        c.close()
    time.sleep(HIBERNATE_S + 4)
    before = anon_kb(proc.pid)
    released = stats(admin)["downstream_idle_buffer_releases"]
    conns = open_h2_connections(pki, port, n)
    try:
        wait_until(lambda: stats(admin)["downstream_idle_buffer_releases"] >= released + n, 15,
                   what="all connections hibernated")
        time.sleep(4)   # MemoryTrimmer: malloc_trim 3 s after a burst of releases
        held = anon_kb(proc.pid)
        per = (held - before) / n
        print(f"RssAnon before {before} kB, with {n} hibernated h2 connections {held} kB: {per:.1f} KiB per connection")
        assert per <= MAX_KIB_PER_CONN, f"{per:.1f} KiB per idle h2 connection (bound {MAX_KIB_PER_CONN})"
        for c in conns[:: n // 20]:
            head, _ = c.get("/")
            assert head[":status"] == "200"
    finally:
        for c in conns:
            c.close()
