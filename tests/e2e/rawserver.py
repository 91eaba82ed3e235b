"""Raw-socket servers and frame helpers for behaviours the test app cannot show: a threaded
accept loop any test can give a per-connection function (ThreadedServer), an upstream that closes
a kept-alive connection as the next request arrives (the keep-alive race), one that switches
protocols (101) and echoes bytes upper-cased (a WebSocket-like tunnel), and hand-built HTTP/2
frames for abuse cases a well-behaved client library refuses to send."""

import socket
import struct
import threading


class ThreadedServer:
    """Listens on 127.0.0.1 (a free port) and runs `serve(server, conn)` per connection."""

    def __init__(self, serve):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._serve = serve
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._run, args=(c,), daemon=True).start()

    def _run(self, c):
        try:
            self._serve(self, c)
        except Exception:
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()


def h2_frame(frame_type, flags, stream_id, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([frame_type, flags]) + struct.pack(">I", stream_id) + payload


def hpack_literal(name, value):
    """A header field as an HPACK literal without indexing (lengths < 128)."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2_frames(data):
    """[(type, stream id, payload)] of the complete frames in `data`."""
    out, i = [], 0
    while i + 9 <= len(data):
        n = int.from_bytes(data[i:i + 3], "big")
        if i + 9 + n > len(data):
            raise AssertionError("truncated frame")
        out.append((data[i + 3], int.from_bytes(data[i + 5:i + 9], "big") & 0x7FFFFFFF, data[i + 9:i + 9 + n]))
        i += 9 + n
    return out


def read_until_close(s):
    got = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            got += d
    except socket.timeout:
        pass
    return got


def read_head(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        b = conn.recv(65536)
        if not b:
            return None, b""
        data += b
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def content_length(head):
    for line in head.split("\r\n")[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            return int(v.strip())
    return 0


class RawServer(ThreadedServer):
    def __init__(self, mode):
        self.mode = mode
        self.requests = 0
        self.closed_on_race = 0
        super().__init__(lambda _, c: self._race(c) if mode == "race" else self._upgrade(c))

    def _race(self, c):
        served = 0
        while True:
            head, rest = read_head(c)
            if head is None:
                return
            if served >= 1:
                # A server closing an idle keep-alive connection just as a request arrives.
                self.closed_on_race += 1
                return
            n = content_length(head)
            while len(rest) < n:
                b = c.recv(65536)
                if not b:
                    return
                rest += b
            self.requests += 1
            served += 1
            body = b"got %d\n" % n
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def _upgrade(self, c):
        head, rest = read_head(c)
        if head is None:
            return
        if "upgrade: websocket" not in head.lower():
            c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        self.requests += 1
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        if rest:
            c.sendall(rest.upper())
        while True:
            b = c.recv(65536)
            if not b:
                return
            c.sendall(b.upper())
