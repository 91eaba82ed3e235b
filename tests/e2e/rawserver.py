"""Raw-socket servers and frame helpers for behaviours the test app cannot show: a threaded
accept loop any test can give a per-connection function (ThreadedServer), an upstream that closes
a kept-alive connection as the next request arrives (the keep-alive race), one that switches
protocols (101) and echoes bytes upper-cased (a WebSocket-like tunnel), and hand-built HTTP/2
frames for abuse cases a well-behaved client library refuses to send."""

import fcntl
import select
import socket
import struct
import termios
import threading
import time


class ThreadedServer:
    """Listens on 127.0.0.1 (a free port) and runs `serve(server, conn)` per connection.

    Handlers read with `self.recv(conn)`, which takes bytes off the socket under one lock and
    marks the connection busy until its handler asks for more (or returns); `settle()` uses that
    to learn, without sleeping, when every byte the kernel received for this server has been
    read and handled."""

    def __init__(self, serve):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.cond = threading.Condition()
        self.open = []           # accepted connections not yet closed
        self.busy = set()        # connections whose handler is working on bytes it read
        self._serve = serve
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                select.select([self.sock], [], [])
                with self.cond:
                    c, _ = self.sock.accept()
                    self.connections += 1
                    self.open.append(c)
                    self.on_accept(c)
                    self.cond.notify_all()
            except (OSError, ValueError):
                return
            threading.Thread(target=self._run, args=(c,), daemon=True).start()

    def _run(self, c):
        try:
            self._serve(self, c)
        except Exception:
            pass
        finally:
            with self.cond:
                self.open.remove(c)
                self.busy.discard(c)
                c.close()
                self.cond.notify_all()

    def recv(self, c, n=65536):
        """`c.recv(n)`, the bytes taken off the socket and recorded by the caller's handler as
        one step with respect to `settle` (`on_bytes`, run under the lock, records them)."""
        with self.cond:
            self.busy.discard(c)
            self.cond.notify_all()
        select.select([c], [], [])
        with self.cond:
            b = c.recv(n)
            self.on_bytes(c, b)
            self.busy.add(c)
        return b

    def on_accept(self, c):
        """Called under the lock with each accepted connection."""

    def on_bytes(self, c, b):
        """Called under the lock with each piece `recv` read (b"" at the peer's close)."""

    def settle(self, timeout=5.0):
        """Waits until no connection is waiting to be accepted, no accepted one holds unread
        bytes and no handler is working on bytes it read. Called once the proxy has done everything it will do for a request (it answered
        and closed, or counted the rejection), it means the handlers have recorded all the proxy
        sent: "the upstream never saw it" is then a fact, not a guess after a sleep."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                waiting = bool(select.select([self.sock], [], [], 0)[0])
                unread = any(self._unread(c) for c in self.open)
                if not waiting and not unread and not self.busy:
                    return
                left = deadline - time.monotonic()
                assert left > 0, f"upstream on {self.port}: bytes still unread after {timeout}s"
                self.cond.wait(min(left, 0.05))

    @staticmethod
    def _unread(c):
        try:
            buf = bytearray(4)
            fcntl.ioctl(c.fileno(), termios.FIONREAD, buf)
            return int.from_bytes(buf, "little") > 0
        except OSError:
            return False

    def close(self):
        self.sock.close()
        with self.cond:
            conns = list(self.open)
        for c in conns:   # accepted connections too: their handler threads end
            try:
                c.close()
            except OSError:
                pass


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
