"""The apps behind the protocol matrix (test_matrix.py): one app per protocol an app speaks to its
sidecar (HTTP/1.1, h2c, gRPC), each run in this process on 127.0.0.1 as version v1 or v2 of a
service, all recording every request they get into a shared `Recorder`.

Every request names a key (the last path segment for HTTP, the `x-matrix-key` metadata for
gRPC), so a test asks the recorder what reached the app for one of its requests: which version,
how many attempts, with which headers. One behaviour is the same in the three apps: the first
request for a key under `/retry/` (gRPC: `/matrix.Test/Retry`) fails, HTTP 503 (gRPC:
UNAVAILABLE, grpc-status 14), and every later one with that key succeeds; across both versions
of the service, since a retry may go to the other endpoint. Anything else answers 200 (gRPC: OK)
with JSON {version, path}."""

import json
import socket
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import h2.config
import h2.connection
import h2.events

GRPC_SERVICE = "/matrix.Test/"


class Seen:
    """One request as an app received it: the app's version and protocol, the path (gRPC: the
    method) and the headers (lowercased names, each with the list of its values)."""

    def __init__(self, version, protocol, path, headers):
        self.version = version
        self.protocol = protocol
        self.path = path
        self.headers = headers

    def __repr__(self):
        return f"Seen({self.version}, {self.protocol}, {self.path})"


class Recorder:
    """Requests received by the two versions of one service, in arrival order (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._seen = []

    def add(self, seen, key):
        """Records a request; True when it is the first one with this key."""
        with self._lock:
            first = not any(k == key for k, _ in self._seen)
            self._seen.append((key, seen))
            return first

    def for_key(self, key):
        with self._lock:
            return [s for k, s in self._seen if k == key]


def headers_dict(pairs):
    out = {}
    for k, v in pairs:
        out.setdefault(k.lower(), []).append(v)
    return out


def http_key(path):
    """The key of an HTTP request: its last path segment (no query)."""
    return path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def http_answer(recorder, version, protocol, path, headers):
    """(status, body) for one HTTP request, after recording it."""
    first = recorder.add(Seen(version, protocol, path, headers), http_key(path))
    if path.startswith("/retry/") and first:
        return 503, b"first attempt fails on purpose\n"
    return 200, (json.dumps({"version": version, "path": path}) + "\n").encode()


class H1App:
    """HTTP/1.1 keep-alive app (the sidecar's default `appProtocol: HTTP1`)."""

    protocol = "HTTP/1.1"

    def __init__(self, recorder, version):
        app = self
        self.recorder, self.version = recorder, version

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                status, body = http_answer(app.recorder, app.version, app.protocol, self.path,
                                           headers_dict(self.headers.items()))
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if status == 200 else "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class H2cApp:
    """h2c app (prior knowledge, `appProtocol: HTTP2`) on the `h2` library: a thread per
    connection, any number of concurrent streams, each answered when its request has ended."""

    protocol = "h2c"

    def __init__(self, recorder, version):
        self.recorder, self.version = recorder, version
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                if self.closed:
                    c.close()
                    return
                self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, s):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        heads = {}
        try:
            s.sendall(conn.data_to_send())
            while True:
                data = s.recv(65536)
                if not data:
                    return
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        heads[ev.stream_id] = ev.headers
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        self._answer(conn, ev.stream_id, heads.pop(ev.stream_id, []))
                    elif isinstance(ev, h2.events.StreamReset):
                        heads.pop(ev.stream_id, None)
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        s.sendall(conn.data_to_send())
                        return
                s.sendall(conn.data_to_send())
        except OSError:
            return
        finally:
            s.close()

    def _answer(self, conn, sid, pairs):
        pseudo = {k: v for k, v in pairs if k.startswith(":")}
        headers = headers_dict([(k, v) for k, v in pairs if not k.startswith(":")])
        if ":authority" in pseudo:
            headers.setdefault("host", []).append(pseudo[":authority"])
        status, body = http_answer(self.recorder, self.version, self.protocol, pseudo.get(":path", ""), headers)
        conn.send_headers(sid, [(":status", str(status)),
                                ("content-type", "application/json" if status == 200 else "text/plain"),
                                ("content-length", str(len(body)))])
        conn.send_data(sid, body, end_stream=True)

    def close(self):
        with self.lock:
            self.closed = True
            conns, self.conns = self.conns, []
        self.sock.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class GrpcApp:
    """gRPC app on `grpcio` (`appProtocol: GRPC`), unary methods on raw bytes under
    /matrix.Test/: Retry fails its key's first call with UNAVAILABLE; every other method
    (Echo, Fault, Denied, ...) answers JSON {version, path}."""

    protocol = "grpc"

    def __init__(self, recorder, version):
        self.recorder, self.version = recorder, version
        app = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details):
                method = details.method
                if not method.startswith(GRPC_SERVICE):
                    return None

                def unary(request, ctx):
                    pairs = list(ctx.invocation_metadata())
                    key = dict(pairs).get("x-matrix-key", "")
                    first = app.recorder.add(Seen(app.version, app.protocol, method, headers_dict(pairs)), key)
                    if method == GRPC_SERVICE + "Retry" and first:
                        ctx.abort(grpc.StatusCode.UNAVAILABLE, "first attempt fails on purpose")
                    return json.dumps({"version": app.version, "path": method}).encode()
                return grpc.unary_unary_rpc_method_handler(unary)

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((Handler(),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self):
        self.server.stop(0)


APPS = {"http1": H1App, "h2c": H2cApp, "grpc": GrpcApp}
