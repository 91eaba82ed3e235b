#!/usr/bin/env python3
"""Small HTTP/1.1 test application for the sidecar's end-to-end tests (stdlib only).

    upstream.py --port P --name NAME [--bind ADDR]   (binds 127.0.0.1 unless --bind; --port 0 picks a free port)

Prints ``READY <port>`` on stdout (flushed) once listening. Keep-alive HTTP/1.1, one thread per
connection, no per-request logging; errors go to stderr.

Endpoints
  GET  /                 200 "hello from NAME\\n"
  GET|POST /echo         JSON {name, method, path, headers: {lowercased: [values]}, body_length, peer}
  POST|PUT /sha256       streams the body (Content-Length or chunked) in 64 KiB reads;
                         JSON {sha256: hex, bytes: n}; never holds the body in memory
  GET  /bytes/N?seed=S   N deterministic bytes: the 1 MiB block random.Random(S).randbytes(1 MiB)
                         repeated and cut to N; Content-Length and x-sha256 (hex of the whole body)
  GET  /slow?ms=M        sleeps M ms, then 200 "slow done\\n"
  GET  /status/C         responds with status C
  GET  /chunked?n=K[&size=B]  chunked response of K chunks ("chunk i\\n", or B bytes each)
  *    /trailers         JSON of the request trailers received, sent chunked with a trailer
                         x-checksum (sha256 of the body)
  GET  /flaky?every=K     every K-th request to /flaky answers 503 (a per-process counter), the
                         others 200 "ok from NAME"
  GET  /_hits            JSON {hits: n, last_host}: requests served so far (/_hits and /_control
                         excluded) and the Host of the last one
  GET  /_control?fail=C&delay=MS
                         from now on every other request waits MS ms, then answers status C
                         (fail=0: normally; each parameter left out is reset to 0)
Any request body not consumed by the endpoint is drained so the connection stays usable.
HEAD works wherever GET does.
"""

import argparse
import hashlib
import json
import random
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

READ_CHUNK = 64 * 1024
BLOCK_SIZE = 1 << 20
MAX_BYTES = 1 << 40

_blocks: dict = {}
_digests: dict = {}
_cache_lock = threading.Lock()


class BadRequest(Exception):
    pass


def _seed_value(s: str):
    try:
        return int(s)
    except ValueError:
        return s


def block_for(seed: str) -> bytes:
    """The 1 MiB pseudo-random block for this seed (cached; generated once)."""
    with _cache_lock:
        b = _blocks.get(seed)
    if b is None:
        b = random.Random(_seed_value(seed)).randbytes(BLOCK_SIZE)
        with _cache_lock:
            if len(_blocks) > 64:
                _blocks.clear()
            _blocks[seed] = b
    return b


def digest_for(n: int, seed: str) -> str:
    """sha256 of /bytes/n?seed=seed, computed by streaming the same blocks (cached)."""
    key = (n, seed)
    with _cache_lock:
        d = _digests.get(key)
    if d is None:
        block = block_for(seed)
        h = hashlib.sha256()
        full, rest = divmod(n, BLOCK_SIZE)
        for _ in range(full):
            h.update(block)
        h.update(memoryview(block)[:rest])
        d = h.hexdigest()
        with _cache_lock:
            if len(_digests) > 1024:
                _digests.clear()
            _digests[key] = d
    return d


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "upstream.py"
    sys_version = ""

    def version_string(self):
        return self.server_version
    timeout = 600  # idle keep-alive connections eventually go away

    # ------------------------------------------------------------------ plumbing
    def setup(self):
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, fmt, *args):  # quiet: no per-request log
        pass

    def log_error(self, fmt, *args):
        sys.stderr.write("upstream[%s]: %s\n" % (self.server.app_name, fmt % args))

    def _body_framing(self):
        """('chunked', None) | ('length', n) | ('none', 0)."""
        te = self.headers.get_all("Transfer-Encoding") or []
        if te:
            codings = [c.strip().lower() for v in te for c in v.split(",") if c.strip()]
            if not codings or codings[-1] != "chunked":
                raise BadRequest("unsupported transfer-encoding %r" % te)
            return "chunked", None
        cl = self.headers.get_all("Content-Length") or []
        if cl:
            vals = {v.strip() for v in cl}
            if len(vals) != 1 or not next(iter(vals)).isdigit():
                raise BadRequest("bad content-length %r" % cl)
            return "length", int(next(iter(vals)))
        return "none", 0

    def iter_body(self):
        """Yields memoryviews of the request body, at most 64 KiB each (reused buffer)."""
        if self._body_done:
            return
        self._body_done = True
        kind, n = self._body_framing()
        buf = bytearray(READ_CHUNK)
        mv = memoryview(buf)
        rfile = self.rfile
        if kind == "length":
            remaining = n
            while remaining:
                k = rfile.readinto(mv[: min(READ_CHUNK, remaining)])
                if not k:
                    raise BadRequest("body truncated (%d bytes missing)" % remaining)
                remaining -= k
                yield mv[:k]
        elif kind == "chunked":
            while True:
                line = rfile.readline(1026)
                if not line.endswith(b"\n"):
                    raise BadRequest("bad chunk size line")
                size_s = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_s, 16)
                except ValueError:
                    raise BadRequest("bad chunk size %r" % size_s)
                if size < 0:
                    raise BadRequest("negative chunk size")
                if size == 0:
                    break
                remaining = size
                while remaining:
                    k = rfile.readinto(mv[: min(READ_CHUNK, remaining)])
                    if not k:
                        raise BadRequest("chunk truncated")
                    remaining -= k
                    yield mv[:k]
                if rfile.readline(3) not in (b"\r\n", b"\n"):
                    raise BadRequest("missing CRLF after chunk data")
            for _ in range(1000):  # trailers
                line = rfile.readline(65537)
                if line in (b"\r\n", b"\n"):
                    break
                if not line:
                    raise BadRequest("connection closed in trailers")
                name, _, value = line.decode("latin-1").partition(":")
                self.request_trailers[name.strip().lower()] = value.strip()
            else:
                raise BadRequest("too many trailer lines")

    request_trailers: dict = {}

    def drain_body(self) -> int:
        total = 0
        for piece in self.iter_body():
            total += len(piece)
        return total

    def respond(self, code, body=b"", ctype="text/plain", headers=()):
        """Small response written in one send (status line + headers + body)."""
        self.drain_body()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        no_body = code in (204, 304) or 100 <= code < 200
        if not no_body:
            self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self._headers_buffer.append(b"\r\n")
        if body and not no_body and self.command != "HEAD":
            self._headers_buffer.append(body)
        self.flush_headers()

    def respond_json(self, obj, code=200):
        self.respond(code, (json.dumps(obj) + "\n").encode(), "application/json")

    def handle_one_request(self):
        self._body_done = False
        try:
            super().handle_one_request()
        except BadRequest as e:
            self.log_error("bad request: %s", e)
            self.close_connection = True
            try:
                self._body_done = True
                self.respond(400, ("bad request: %s\n" % e).encode())
            except OSError:
                pass
        except (ConnectionResetError, BrokenPipeError):
            self.close_connection = True

    # ------------------------------------------------------------------ routing
    def dispatch(self):
        u = urlsplit(self.path)
        path = u.path
        q = parse_qs(u.query)
        m = self.command
        srv = self.server
        if path == "/_hits":
            return self.respond_json({"hits": srv.hits, "last_host": srv.last_host})
        if path == "/_control":
            srv.fail_status = _int_param(q, "fail", 0)
            srv.delay_ms = _int_param(q, "delay", 0)
            return self.respond_json({"fail": srv.fail_status, "delay": srv.delay_ms})
        with _cache_lock:
            srv.hits += 1
            srv.last_host = self.headers.get("Host", "")
            flaky_n = srv.flaky = srv.flaky + (1 if path == "/flaky" else 0)
        if srv.delay_ms:
            time.sleep(srv.delay_ms / 1000.0)
        if srv.fail_status:
            self.drain_body()
            return self.respond(srv.fail_status, ("failing on purpose: %s\n" % srv.app_name).encode())
        if path == "/flaky":
            every = max(1, _int_param(q, "every", 2))
            self.drain_body()
            if flaky_n % every == 0:
                return self.respond(503, ("flaky 503 from %s\n" % srv.app_name).encode())
            return self.respond(200, ("ok from %s\n" % srv.app_name).encode())
        if path == "/" and m in ("GET", "HEAD"):
            return self.respond(200, ("hello from %s\n" % self.server.app_name).encode())
        if path == "/echo":
            return self.do_echo()
        if path == "/sha256" and m in ("POST", "PUT"):
            h = hashlib.sha256()
            n = 0
            for piece in self.iter_body():
                h.update(piece)
                n += len(piece)
            return self.respond_json({"sha256": h.hexdigest(), "bytes": n})
        if path.startswith("/bytes/") and m in ("GET", "HEAD"):
            return self.do_bytes(path[len("/bytes/"):], q.get("seed", ["0"])[0])
        if path == "/slow" and m in ("GET", "HEAD"):
            ms = _int_param(q, "ms", 0)
            time.sleep(max(0, ms) / 1000.0)
            return self.respond(200, b"slow done\n")
        if path.startswith("/status/") and m in ("GET", "HEAD", "POST", "PUT", "DELETE"):
            try:
                code = int(path[len("/status/"):])
                if not 100 <= code <= 999 or code == 101:
                    raise ValueError
            except ValueError:
                return self.respond(400, b"bad status code\n")
            return self.respond(code, b"" if code < 200 else ("status %d\n" % code).encode())
        if path == "/chunked" and m in ("GET", "HEAD"):
            return self.do_chunked(_int_param(q, "n", 3), _int_param(q, "size", -1))
        if path == "/trailers":
            # Echoes the request trailers it got, and answers chunked with a trailer of its own.
            self.request_trailers = {}
            n = self.drain_body()
            body = json.dumps({"bytes": n, "trailers": self.request_trailers}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "x-checksum")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n0\r\nx-checksum: %s\r\n\r\n" % (len(body), body, hashlib.sha256(body).hexdigest().encode()))
            return
        return self.respond(404, b"not found\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = (
        lambda self: self.dispatch())

    def do_echo(self):
        n = self.drain_body()
        headers: dict = {}
        for k, v in self.headers.items():
            headers.setdefault(k.lower(), []).append(v)
        self.respond_json({
            "name": self.server.app_name,
            "method": self.command,
            "path": self.path,
            "headers": headers,
            "body_length": n,
            "peer": self.client_address[0],
        })

    def do_bytes(self, n_s, seed):
        if not n_s.isdigit() or int(n_s) > MAX_BYTES:
            return self.respond(400, b"bad byte count\n")
        n = int(n_s)
        self.drain_body()
        block = block_for(seed)
        digest = digest_for(n, seed)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.send_header("x-sha256", digest)
        self.end_headers()
        if self.command == "HEAD":
            return
        mv = memoryview(block)
        w = self.wfile
        full, rest = divmod(n, BLOCK_SIZE)
        for _ in range(full):
            w.write(mv)
        if rest:
            w.write(mv[:rest])

    def do_chunked(self, k, size):
        self.drain_body()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.command == "HEAD":
            return
        for i in range(max(0, k)):
            data = (b"x" * size) if size >= 0 else ("chunk %d\n" % i).encode()
            if data:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.write(b"0\r\n\r\n")


def _int_param(q, name, default):
    try:
        return int(q.get(name, [default])[0])
    except (TypeError, ValueError):
        return default


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024
    app_name = "upstream"
    hits = 0
    flaky = 0
    fail_status = 0
    delay_ms = 0
    last_host = ""

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionResetError, BrokenPipeError, TimeoutError)):
            return
        sys.stderr.write("upstream[%s]: error from %s: %r\n" % (self.app_name, client_address, exc))


def main(argv=None):
    ap = argparse.ArgumentParser(description="HTTP/1.1 test upstream (binds 127.0.0.1 unless --bind)")
    ap.add_argument("--port", type=int, default=0, help="TCP port (0: pick a free one)")
    ap.add_argument("--bind", default="127.0.0.1", help="address to listen on (a test host's 0.0.0.0 under capture)")
    ap.add_argument("--name", default="upstream", help="name used in responses")
    args = ap.parse_args(argv)
    srv = Server((args.bind, args.port), Handler)
    srv.app_name = args.name
    sys.stdout.write("READY %d\n" % srv.server_address[1])
    sys.stdout.flush()
    try:
        srv.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()


if __name__ == "__main__":
    main()
