"""Tiny raw-socket HTTP/1.1 servers for behaviours the test app cannot show: an upstream that
closes a kept-alive connection as the next request arrives (the keep-alive race), and one that
switches protocols (101) and then echoes bytes upper-cased (a WebSocket-like tunnel)."""

import socket
import threading


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


class RawServer:
    def __init__(self, mode):
        self.mode = mode
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests = 0
        self.closed_on_race = 0
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self._stop = True
        self.sock.close()

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            if self.mode == "race":
                self._race(c)
            elif self.mode == "upgrade":
                self._upgrade(c)
        finally:
            c.close()

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
