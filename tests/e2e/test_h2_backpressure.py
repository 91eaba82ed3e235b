"""HTTP/2 back-pressure and self-inflicted resets: a stalled h2c upstream must bound what the
proxy accepts from the caller and must not spin a worker; resets the proxy sends itself never
count as a client's rapid reset."""

import socket
import subprocess
import time

import h2.config
import h2.connection
import h2.events

from conftest import free_port, stats, wait_ready
from rawserver import H2_PREFACE, ThreadedServer, h2_frame, h2_frames, hpack_literal, read_until_close


class StalledH2Server(ThreadedServer):
    """h2c server that accepts streams but never reads their bodies nor answers."""

    def __init__(self):
        super().__init__(lambda _, s: self._serve_h2(s))

    @staticmethod
    def _serve_h2(s):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        s.sendall(conn.data_to_send())
        while True:
            d = s.recv(65536)
            if not d:
                return
            conn.receive_data(d)          # never acknowledges DATA: the window stays closed
            out = conn.data_to_send()
            if out:
                s.sendall(out)


def h2c_sidecar(procs, upstream_port):
    outbound, admin = free_port(), free_port()
    cfg = f"""
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {{name: c, namespace: default}}
spec:
  workload: {{service: client}}
  concurrency: 1
  admin: {{port: {admin}}}
  outbound: {{port: {outbound}, headerTimeout: 2s}}
  clusters:
    - name: server
      tls: DISABLE
      protocol: HTTP2
      endpoints: [127.0.0.1:{upstream_port}]
  routes:
    - hosts: [server]
      cluster: server
"""
    p = procs.sidecar(cfg, "h2c-client")
    wait_ready(p, admin)
    return p, outbound, admin


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().split(")")[1].split()
    return int(parts[11]) + int(parts[12])


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int([l for l in f if l.startswith("VmRSS")][0].split()[1])


def test_stalled_h2_upstream_bounds_what_a_caller_can_push(procs):
    srv = StalledH2Server()
    try:
        p, outbound, _ = h2c_sidecar(procs, srv.port)
        s = socket.create_connection(("127.0.0.1", outbound), timeout=3)
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        c.initiate_connection()
        c.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", "server"), (":path", "/up")])
        s.sendall(c.data_to_send())
        sent, chunk = 0, b"x" * 16384
        while sent < 64 * 1024 * 1024:
            w = min(c.local_flow_control_window(1), c.max_outbound_frame_size)
            if w > 0:
                c.send_data(1, chunk[:w])
                sent += w
                s.sendall(c.data_to_send())
                continue
            try:
                d = s.recv(65536)
            except socket.timeout:
                break
            if not d:
                break
            c.receive_data(d)
            s.sendall(c.data_to_send())
        s.close()
        assert sent < 8 * 1024 * 1024, f"the proxy accepted {sent} bytes for an upstream that reads nothing"
        assert rss_kb(p.pid) < 64 * 1024
    finally:
        srv.close()


def test_stalled_h2_upstream_does_not_spin_the_worker(procs, tmp_path):
    srv = StalledH2Server()
    try:
        p, outbound, _ = h2c_sidecar(procs, srv.port)
        body = tmp_path / "b.bin"
        body.write_bytes(b"\0" * 3_000_000)
        curl = subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-X", "POST", "--data-binary", f"@{body}",
                                 "-H", "Host: server", "--max-time", "6", f"http://127.0.0.1:{outbound}/"])
        time.sleep(1.5)
        t0 = cpu_ticks(p.pid)
        time.sleep(2)
        used = cpu_ticks(p.pid) - t0
        curl.kill()
        curl.wait()
        assert used < 40, f"worker busy while waiting for a closed window: {used} ticks in 2 s"
    finally:
        srv.close()


def test_proxy_own_resets_are_not_a_rapid_reset(procs):
    """300 requests the proxy must refuse (an upper-case header name) in one write: each gets
    RST_STREAM, the connection stays open and its frames stay well formed."""
    srv = StalledH2Server()
    try:
        _, outbound, admin = h2c_sidecar(procs, srv.port)

        block = b"".join(hpack_literal(n, v) for n, v in [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                                                           (b":authority", b"server"), (b"X-Bad", b"1")])
        data = H2_PREFACE + h2_frame(4, 0, 0) + b"".join(h2_frame(1, 0x5, 1 + 2 * i, block) for i in range(300))
        s = socket.create_connection(("127.0.0.1", outbound), timeout=3)
        s.sendall(data)
        fs = h2_frames(read_until_close(s))
        s.close()
        assert all(t <= 9 for t, _, _ in fs), fs
        kinds = {}
        for t, _, _ in fs:
            kinds[t] = kinds.get(t, 0) + 1
        assert kinds.get(3) == 300, kinds         # one RST_STREAM per refused stream
        assert 7 not in kinds, kinds               # no GOAWAY
        assert stats(admin)["http2_rapid_reset_closures"] == 0
    finally:
        srv.close()


def test_streams_beyond_the_limit_close_that_connection_only(procs):
    """The outbound listener allows 1,000 concurrent streams (SETTINGS_MAX_CONCURRENT_STREAMS).
    A client that opens a 1,001st after acknowledging the setting gets GOAWAY(PROTOCOL_ERROR)
    naming the last stream processed; other connections keep working."""
    srv = StalledH2Server()
    try:
        _, outbound, _ = h2c_sidecar(procs, srv.port)

        block = b"".join(hpack_literal(n, v) for n, v in [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/"),
                                                           (b":authority", b"server")])
        s = socket.create_connection(("127.0.0.1", outbound), timeout=3)
        s.sendall(H2_PREFACE + h2_frame(4, 0, 0))
        time.sleep(0.3)
        s.sendall(h2_frame(4, 0x1, 0))          # acknowledge the server's SETTINGS
        s.sendall(b"".join(h2_frame(1, 0x4, 1 + 2 * i, block) for i in range(1001)))   # left open
        fs = h2_frames(read_until_close(s))
        s.close()
        goaways = [p for t, _, p in fs if t == 7]
        assert len(goaways) == 1, fs[-3:]
        last, err = int.from_bytes(goaways[0][:4], "big"), int.from_bytes(goaways[0][4:8], "big")
        assert err == 1 and last == 1 + 2 * 999, (last, err, goaways[0][8:])
        # Another connection is served (a PING is answered).
        t = socket.create_connection(("127.0.0.1", outbound), timeout=3)
        t.sendall(H2_PREFACE + h2_frame(4, 0, 0) + h2_frame(6, 0, 0, b"12345678"))
        time.sleep(0.3)
        t.settimeout(1)
        fs = h2_frames(read_until_close(t))
        t.close()
        assert any(tp == 6 and p == b"12345678" for tp, _, p in fs), fs
    finally:
        srv.close()
