"""meshd's config streams on its event loops (DESIGN §12), with real processes and real TLS:
300 concurrent kept-alive streams from one Python process parked on a few threads and all
reached by one apply; a sidecar with `--meshd A,B` failing over from a SIGKILLed replica to
the other under steady traffic without a failed request; streams closed at their maximum age
reconnecting without a config being pushed again; and the API port's refusals (no or expired
certificate on a kept-alive connection, foreign CA, bad framing, oversized bodies, silence)."""

import asyncio
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request

import pytest

from conftest import MESHCTL, MESHD, SIDECAR, Meshd, curl, free_port, http_get, wait_ready, wait_until

CHANGE = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
"""


def metric(admin, name):
    """One unlabelled series of meshd's /metrics."""
    body = http_get(f"http://127.0.0.1:{admin}/metrics", timeout=2)[1].decode()
    m = re.search(rf"^{name} (\d+)$", body, re.M)
    assert m, f"{name} not in /metrics:\n{body}"
    return int(m.group(1))


def proc_status(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def workload_cert(m, tmp, sa, ttl=None):
    """A workload certificate from meshd for spiffe://cluster.local/ns/default/sa/SA: an EC key
    and CSR made by openssl, signed through the API port with a join token. Returns the chain
    and key files."""
    key, csr = tmp / f"{sa}.key", tmp / f"{sa}.csr"
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key], check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-new", "-key", key, "-subj", "/O=mesh", "-addext",
                    f"subjectAltName=URI:spiffe://cluster.local/ns/default/sa/{sa}", "-out", csr], check=True, capture_output=True)
    ctx = ssl.create_default_context(cafile=str(m.root))
    ctx.check_hostname = False
    c = http.client.HTTPSConnection("127.0.0.1", m.api, context=ctx, timeout=10)
    c.request("POST", "/v1/certificate", body=csr.read_bytes(),
              headers={"authorization": f"Bearer {m.token(sa)}", "content-type": "application/pkcs10"})
    r = c.getresponse()
    body = r.read().decode()
    c.close()
    assert r.status == 200, body
    chain = tmp / f"{sa}.pem"
    chain.write_text(body.split("# trust bundle\n")[0])
    return chain, key


def client_context(m, chain, key):
    ctx = ssl.create_default_context(cafile=str(m.root))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(chain), str(key))
    return ctx


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
    n = int(headers.get("content-length", "0"))
    body = await reader.readexactly(n) if n else b""
    return status, headers, body


class Stream:
    """One sidecar's config stream as a test drives it: one kept-alive TLS connection."""

    def __init__(self, reader, writer, node):
        self.reader, self.writer, self.node = reader, writer, node

    async def send(self, method, path, body=b""):
        self.writer.write(f"{method} {path} HTTP/1.1\r\nhost: meshd\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
        await self.writer.drain()

    async def call(self, method, path, body=b""):
        await self.send(method, path, body)
        return await read_response(self.reader)

    def get_path(self, version=0, digest=""):
        return f"/v1/config?version={version}&node={self.node}&admin=" + (f"&digest={digest}" if digest else "")


def push_line(body):
    """(version, nonce, digest) of a push's first line."""
    first = body.decode().split("\n", 1)[0].split()
    assert first[0] == "version:" and len(first) == 4, body[:200]
    return int(first[1]), first[2], first[3]


def test_300_streams_park_on_few_threads_and_one_apply_reaches_all(procs, tmp_path):
    """300 concurrent config streams from one process, each on one kept-alive connection (first
    push, ACK, then a parked request carrying its digest): meshd holds them all on a few threads,
    counts them in meshd_config_streams, and one apply answers every parked request with the
    new version, which each ACKs on the same connection."""
    n = 300
    m = Meshd(procs)
    chain, key = workload_cert(m, tmp_path, "load")
    ctx = client_context(m, chain, key)

    async def run():
        sem = asyncio.Semaphore(50)

        async def open_stream(i):
            async with sem:
                r, w = await asyncio.open_connection("127.0.0.1", m.api, ssl=ctx)
                s = Stream(r, w, f"127.0.0.1:{20000 + i}")
                status, _, body = await s.call("GET", s.get_path())
                assert status == 200, body
                v, nonce, digest = push_line(body)
                status, _, body = await s.call("POST", f"/v1/ack?version={v}&node={s.node}&nonce={nonce}")
                assert (status, body) == (200, b"ok\n")
                s.version, s.digest = v, digest
                await s.send("GET", s.get_path(v, digest))   # parked: no answer until a change
                s.waiting = asyncio.ensure_future(read_response(r))
                return s
        streams = await asyncio.gather(*(open_stream(i) for i in range(n)))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: wait_until(lambda: metric(m.admin, "meshd_config_streams") == n,
                                                            what=f"{n} config streams"))
        # One connection per stream (nothing else open), all parked: none was answered.
        assert metric(m.admin, "meshd_api_connections") == n
        await asyncio.sleep(1.0)
        assert not any(s.waiting.done() for s in streams)
        threads = proc_status(m.proc.pid, "Threads")
        rss = proc_status(m.proc.pid, "VmRSS")
        print(f"meshd with {n} parked streams: {threads} threads, RSS {rss} kB")
        assert threads < 30, threads
        # One apply: every parked request answered with the new version, on its connection.
        f = tmp_path / "change.yaml"
        f.write_text(CHANGE)
        t0 = time.monotonic()
        out = await loop.run_in_executor(None, lambda: subprocess.run(
            [str(MESHCTL), "--meshd", f"http://127.0.0.1:{m.admin}", "--admin-token-file", str(m.state / "admin-token"),
             "apply", "-f", str(f)], capture_output=True, text=True, timeout=30))
        assert out.returncode == 0, out.stderr
        applied = int(re.search(r"version (\d+)", out.stdout).group(1))
        answers = await asyncio.wait_for(asyncio.gather(*(s.waiting for s in streams)), timeout=10)
        elapsed = time.monotonic() - t0
        for s, (status, headers, body) in zip(streams, answers):
            assert status == 200 and "connection" not in headers, (status, headers)
            v, nonce, digest = push_line(body)
            assert v == applied and digest != s.digest and "name: \"ratings.default\"" in body.decode(), body[:300]
            status, _, ack = await s.call("POST", f"/v1/ack?version={v}&node={s.node}&nonce={nonce}")
            assert (status, ack) == (200, b"ok\n")
        print(f"the apply reached {n} parked streams in {elapsed:.2f} s")
        proxies = http_get(f"http://127.0.0.1:{m.admin}/v1/proxies")
        assert proxies[0] == 401   # the admin token guards it; read it through meshctl
        status_out = subprocess.run([str(MESHCTL), "--meshd", f"http://127.0.0.1:{m.admin}", "--admin-token-file",
                                     str(m.state / "admin-token"), "status"], capture_output=True, text=True, timeout=30).stdout
        assert status_out.count(f"\tacked {applied}\tACK") == n, status_out[:2000]
        for s in streams:
            s.writer.close()
        await loop.run_in_executor(None, lambda: wait_until(lambda: metric(m.admin, "meshd_config_streams") == 0,
                                                            what="streams gone after the clients closed"))
    asyncio.run(run())


def start_meshd(procs, name, state, api, admin, extra=()):
    p = procs.start([MESHD, "--state-dir", state, "--api-port", api, "--admin-port", admin, "--cert-ttl", "1h", *extra], name)
    wait_until(lambda: http_get(f"http://127.0.0.1:{admin}/ready", timeout=1)[0] == 200, what=f"{name} ready")
    return p


class Traffic:
    """Requests through a sidecar's outbound port on fresh connections, back to back."""

    def __init__(self, outbound):
        self.outbound, self.ok, self.failures = outbound, 0, []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run)
        self.t.start()

    def run(self):
        while not self.stop.is_set():
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{self.outbound}/", headers={"Host": "reviews"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    body = r.read()
                    if r.status == 200 and body.startswith(b"hello"):
                        self.ok += 1
                    else:
                        self.failures.append((time.monotonic(), r.status, body[:100]))
            except Exception as e:  # noqa: BLE001 - every failure is recorded
                self.failures.append((time.monotonic(), repr(e)))

    def end(self):
        self.stop.set()
        self.t.join(timeout=10)


def test_sidecars_fail_over_to_the_other_replica_without_a_failed_request(procs, pki, tmp_path):
    """Two meshd replicas with one plug-in CA (--ca-dir) and the same state (the second starts
    from a copy of the first's: documents, registry, admin token, token key, standing in for a
    shared store). Two sidecars with --meshd A,B stream from A; under steady traffic through the
    caller, A is SIGKILLed: no request fails, and both streams are on B within a second."""
    a_api, a_admin, b_api, b_admin = free_port(), free_port(), free_port(), free_port()
    a_state, b_state = tmp_path / "a-state", tmp_path / "b-state"
    ca = ["--ca-dir", str(pki)]
    a = start_meshd(procs, "meshd-a", a_state, a_api, a_admin, ca)
    meshds = f"127.0.0.1:{a_api},127.0.0.1:{b_api}"

    def token(sa):
        return subprocess.run([str(MESHCTL), "--meshd", f"http://127.0.0.1:{a_admin}", "--admin-token-file", str(a_state / "admin-token"),
                               "token", "create", "--namespace", "default", "--service-account", sa],
                              capture_output=True, text=True, check=True).stdout.strip()

    def sidecar(name, sa, app_port=None):
        admin, inbound, outbound = free_port(), free_port(), free_port()
        args = [SIDECAR, "--meshd", meshds, "--root-cert", a_state / "root-cert.pem", "--token", token(sa), "--service", sa,
                "--admin-port", admin, "--inbound-port", inbound, "--outbound-port", outbound, "--concurrency", "1"]
        if app_port:
            args += ["--app-port", app_port]
        p = procs.start(args, name)
        wait_ready(p, admin, timeout=20)
        return p, outbound

    app = procs.app("reviews")
    server, _ = sidecar("reviews", "reviews", app)
    caller, outbound = sidecar("productpage", "productpage")
    wait_until(lambda: curl("-s", "-H", "Host: reviews", f"http://127.0.0.1:{outbound}/").stdout.startswith(b"hello"),
               what="routing through the sidecars")
    wait_until(lambda: metric(a_admin, "meshd_config_streams") == 2, what="both streams on A")
    # B: A's state (not its lock), the same CA.
    shutil.copytree(a_state, b_state, ignore=shutil.ignore_patterns("meshd.lock"))
    start_meshd(procs, "meshd-b", b_state, b_api, b_admin, ca)
    assert metric(b_admin, "meshd_config_streams") == 0
    traffic = Traffic(outbound)
    try:
        time.sleep(1.0)
        before = traffic.ok
        assert before > 0 and not traffic.failures, traffic.failures
        os.killpg(a.pid, signal.SIGKILL)
        killed = time.monotonic()
        while metric(b_admin, "meshd_config_streams") < 2:
            assert time.monotonic() - killed < 3, "the streams did not move to B"
            time.sleep(0.02)
        moved = time.monotonic() - killed
        print(f"both config streams on B {moved:.3f} s after A was killed")
        assert moved < 1.0, moved
        time.sleep(2.0)
    finally:
        traffic.end()
    assert not traffic.failures, traffic.failures[:5]
    assert traffic.ok > before, (before, traffic.ok)
    # Each sidecar names the failed address and the next one.
    for p in (server, caller):
        log = p.log_path.read_text()
        assert f"config stream with meshd 127.0.0.1:{a_api}: " in log and f"trying 127.0.0.1:{b_api} in " in log, log[-2000:]
    # B knows both proxies as connected, and routing keeps working from B's config.
    out = subprocess.run([str(MESHCTL), "--meshd", f"http://127.0.0.1:{a_admin},http://127.0.0.1:{b_admin}", "--admin-token-file",
                          str(b_state / "admin-token"), "status"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\tconnected\t") == 2, out.stdout
    assert curl("-s", "-H", "Host: reviews", f"http://127.0.0.1:{outbound}/").stdout.startswith(b"hello")


def test_streams_reconnect_at_their_maximum_age_and_get_no_push_again(procs):
    """--max-stream-age 2s: meshd ends each stream at about 2 s (a parked request answered 304
    with connection: close); the sidecar reconnects with its digest and is sent nothing: one
    config applied in all, while meshd counts the reconnections."""
    m = Meshd(procs, extra=["--max-stream-age", "2s"])
    app = procs.app("reviews")
    p, admin, _, _ = m.sidecar("reviews", "reviews", app_port=app)
    wait_until(lambda: metric(m.admin, "meshd_config_streams_max_age_closed_total") >= 3, timeout=15,
               what="three streams ended at their age")
    # Each ended stream is followed by a new one (the sidecar reconnects at once).
    wait_until(lambda: metric(m.admin, "meshd_config_streams_opened_total") >= 4 and metric(m.admin, "meshd_config_streams") == 1,
               timeout=3, what="the fourth stream open")
    log = p.log_path.read_text()
    assert len(re.findall(r"config version \d+ from meshd applied", log)) == 1, log
    assert log.count(f"meshd 127.0.0.1:{m.api} ended the config stream; reconnecting to 127.0.0.1:{m.api}") >= 3, log
    assert "config stream with meshd" not in log, log   # no failure: every reconnection was meshd's choice
    assert http_get(f"http://127.0.0.1:{admin}/ready")[0] == 200
    out = m.ctl("status").stdout
    assert "\tconnected\t" in out and "\tACK\t" in out, out


def test_max_stream_age_flag_is_checked(procs, tmp_path):
    for bad in ("soon", "500ms", "200h"):
        r = subprocess.run([str(MESHD), "--state-dir", tmp_path / "s", "--api-port", str(free_port()), "--admin-port", str(free_port()),
                            "--max-stream-age", bad], capture_output=True, text=True, timeout=10)
        assert r.returncode == 2 and r.stderr.startswith("meshd: error: --max-stream-age: expected 0 (no maximum) or a duration"), r.stderr
    r = subprocess.run([str(MESHD), "--state-dir", tmp_path / "s", "--api-loops", "0"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "--api-loops" in r.stderr, r.stderr


def raw_tls(m, ctx):
    s = socket.create_connection(("127.0.0.1", m.api), timeout=15)
    return ctx.wrap_socket(s)


def read_all(s):
    out = b""
    while True:
        try:
            b = s.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            break
        if not b:
            break
        out += b
    return out


def test_the_api_port_refuses_what_it_must(procs, pki, tmp_path):
    """The event-loop API port's refusals, each on a real TLS connection: a config request
    without a certificate (401), a client certificate from a foreign CA (handshake refused), a
    chunked body (411), a body over the limit (413), a malformed head (400), each closing the
    connection; a connection that sends nothing is closed after the request deadline; and a
    certificate that expires while its connection is kept alive is refused on that connection."""
    m = Meshd(procs, cert_ttl="3s")
    anon = ssl.create_default_context(cafile=str(m.root))
    anon.check_hostname = False
    silent = raw_tls(m, anon)   # says nothing: closed at the request deadline (10 s)
    opened = time.monotonic()

    s = raw_tls(m, anon)
    s.sendall(b"GET /v1/config?version=0&node=127.0.0.1:1 HTTP/1.1\r\nhost: x\r\n\r\n")
    out = s.recv(65536)
    assert out.startswith(b"HTTP/1.1 401 ") and b"a workload certificate from this mesh is required" in out, out

    foreign = ssl.create_default_context(cafile=str(m.root))
    foreign.check_hostname = False
    foreign.load_cert_chain(str(pki / "foreign" / "client" / "cert-chain.pem"), str(pki / "foreign" / "client" / "key.pem"))
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        f = raw_tls(m, foreign)
        f.sendall(b"GET /v1/trust-bundle HTTP/1.1\r\nhost: x\r\n\r\n")
        if not f.recv(65536):
            raise ConnectionResetError("closed")

    for request, status in [
        (b"POST /v1/register HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", b"411"),
        (b"POST /v1/certificate HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n\r\n", b"413"),
        (b"GET /v1/trust-bundle HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n", b"400"),
        (b"GET /v1/trust-bundle HTTP/1.1\nhost: x\n\n", b"400"),
    ]:
        s = raw_tls(m, anon)
        s.sendall(request)
        out = read_all(s)   # the answer, then the end of the connection
        assert out.startswith(b"HTTP/1.1 " + status + b" ") and b"connection: close" in out, (request, out)

    # The trust bundle on a kept-alive connection: two answers, one connection.
    s = raw_tls(m, anon)
    s.sendall(b"GET /v1/trust-bundle HTTP/1.1\r\nhost: x\r\n\r\nGET /v1/trust-bundle HTTP/1.1\r\nhost: x\r\n\r\n")
    got = b""
    while got.count(b"-----END CERTIFICATE-----") < 2:
        got += s.recv(65536)
    assert got.count(b"HTTP/1.1 200 ") == 2 and b"connection: close" not in got, got
    s.close()

    # A certificate valid for 3 s: its kept-alive stream is refused once it has expired.
    chain, key = workload_cert(m, tmp_path, "short")
    s = raw_tls(m, client_context(m, chain, key))
    s.sendall(b"GET /v1/config?version=0&node=127.0.0.1:7 HTTP/1.1\r\nhost: x\r\n\r\n")
    first = s.recv(65536)
    assert first.startswith(b"HTTP/1.1 200 "), first
    time.sleep(4.0)
    s.sendall(b"GET /v1/config?version=0&node=127.0.0.1:7 HTTP/1.1\r\nhost: x\r\n\r\n")
    out = s.recv(65536)
    assert out.startswith(b"HTTP/1.1 401 "), out

    silent.settimeout(15)
    assert read_all(silent) == b""
    waited = time.monotonic() - opened
    assert 9.0 <= waited <= 13.0, waited
    # meshd is still serving.
    assert http_get(f"http://127.0.0.1:{m.admin}/ready")[0] == 200
    assert metric(m.admin, "meshd_api_connections") <= 1
