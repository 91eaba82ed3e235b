#!/usr/bin/env python3
"""Clients, app server and probes for bench/tcp.sh (python3 stdlib only).

Subcommands (each prints one JSON line on stdout when it has a result):

  server PORT [--addr A]
      The app behind the inbound proxy. The first byte of a connection picks the mode:
        'S'  sink: read and discard to the caller's FIN, then answer "<bytes read>\\n" and close
             (the count proves every byte crossed both proxies, half-close included);
        'R'  source: 8 more bytes give a big-endian count N; send N bytes, then close;
        'E'  echo: write back everything read (the first byte too) until the caller's FIN.
      One thread, one epoll loop (selectors), non-blocking: it serves the rate test's many
      short connections and the bulk test's one long one alike.

  bulk --port P --dir up|down --bytes N [--connect HOST:PORT]
      One connection through the outbound proxy at 127.0.0.1:P (with --connect: an HTTP/1.1
      CONNECT to HOST:PORT first, which must answer 200). up: sends N bytes ('S' mode) and checks
      the server's count; down: asks for N bytes ('R' mode) and counts them to the end.
      Prints {"bytes", "seconds", "cpu"} (cpu: this client's own user+system seconds).

  rate --port P [--host 127.0.0.1] -n N -c C [--payload 16] [--connect HOST:PORT] [--timeout 30]
      N short connections to HOST:P, C at a time (one thread, selectors): connect, (CONNECT and its 200),
      send PAYLOAD bytes ('E' + filler), read them back, check them, close. Prints
      {"done", "failed", "seconds", "cpu", "errors"}; exit 1 if any failed.

  tap LISTEN_PORT UPSTREAM_PORT OUTFILE
      A TCP relay on 127.0.0.1:LISTEN_PORT to 127.0.0.1:UPSTREAM_PORT that reads the TLS
      ServerHello of each connection (plaintext in TLS 1.3) and appends one JSON line per
      connection to OUTFILE: the negotiated version, cipher suite, key-exchange group and
      whether the server accepted a pre-shared key (a resumed session). Used once per pair,
      outside the measured runs, to say what the hop negotiated.

  origdst --listen-port P --target IP:PORT [-k K]
      The bare cost of getsockopt(SO_ORIGINAL_DST): listens on 127.0.0.1:P (where the capture
      rules redirect), connects to TARGET (redirected there), then times K calls of
      getsockopt(SOL_IP, SO_ORIGINAL_DST) on the accepted socket against K calls of
      getsockopt(SOL_SOCKET, SO_TYPE) (the same Python and syscall overhead, no conntrack
      lookup). Prints {"original", "ns_origdst", "ns_sotype", "ns_extra"}.

  tlscheck --port P --ca ROOT [--cert C --key K] [--tls12] [--server-name N]
      One TLS connection straight to an inbound proxy, then an 'E' echo through it to the app.
      Prints {"echoed": true|false, "error"}: a proxy that echoes without a client certificate,
      or over TLS 1.2, does not check what the comparison assumes (tcp.sh stops then).
"""
import argparse
import errno
import json
import os
import resource
import selectors
import socket
import ssl
import struct
import sys
import threading
import time

SO_ORIGINAL_DST = 80
CHUNK = 256 * 1024


def own_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ----------------------------------------------------------------------------- the app server

class Conn:
    __slots__ = ("sock", "mode", "count", "want", "hdr", "out", "outpos", "eof")

    def __init__(self, sock):
        self.sock = sock
        self.mode = None
        self.count = 0
        self.want = 0
        self.hdr = b""
        self.out = b""
        self.outpos = 0
        self.eof = False


def server(args):
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((args.addr, args.port))
    lsock.listen(4096)
    lsock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    block = memoryview(bytes(CHUNK))

    def close(c):
        sel.unregister(c.sock)
        c.sock.close()

    def flush(c):
        """Writes what is pending; True when nothing is left."""
        while c.outpos < len(c.out):
            try:
                n = c.sock.send(c.out[c.outpos:])
            except BlockingIOError:
                return False
            c.outpos += n
        c.out = b""
        c.outpos = 0
        return True

    def source(c):
        while c.want > 0:
            try:
                n = c.sock.send(block[:min(c.want, CHUNK)])
            except BlockingIOError:
                return
            except OSError:
                close(c)
                return
            c.want -= n
        close(c)

    while True:
        for key, _ in sel.select():
            if key.data is None:
                while True:
                    try:
                        s, _ = lsock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as e:
                        if e.errno in (errno.EMFILE, errno.ENFILE):
                            break
                        raise
                    s.setblocking(False)
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sel.register(s, selectors.EVENT_READ, Conn(s))
                continue
            c = key.data
            if c.mode == "R":
                source(c)
                continue
            if c.mode == "E" and c.out:
                try:
                    if flush(c):
                        sel.modify(c.sock, selectors.EVENT_READ, c)
                        if c.eof:
                            close(c)
                except OSError:
                    close(c)
                continue
            try:
                n = c.sock.recv_into(buf)
            except BlockingIOError:
                continue
            except OSError:
                close(c)
                continue
            if n == 0:
                if c.mode == "S":
                    try:
                        c.sock.setblocking(True)
                        c.sock.sendall(b"%d\n" % c.count)
                    except OSError:
                        pass
                close(c)
                continue
            data = view[:n]
            if c.mode is None:
                first = bytes(data[:1])
                if first == b"S":
                    c.mode = "S"
                    c.count = n - 1
                    continue
                if first == b"E":
                    c.mode = "E"
                elif first == b"R":
                    c.hdr += bytes(data)
                    if len(c.hdr) < 9:
                        continue
                    c.mode = "R"
                    c.want = struct.unpack(">Q", c.hdr[1:9])[0]
                    sel.modify(c.sock, selectors.EVENT_WRITE, c)
                    continue
                else:
                    close(c)
                    continue
            if c.mode == "S":
                c.count += n
            elif c.mode == "E":
                c.out = bytes(data)
                c.outpos = 0
                try:
                    if not flush(c):
                        sel.modify(c.sock, selectors.EVENT_WRITE, c)
                except OSError:
                    close(c)


# ----------------------------------------------------------------------------- clients

def read_head(sock):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("the proxy closed before answering CONNECT: %r" % head)
        head += chunk
    end = head.index(b"\r\n\r\n") + 4
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError("CONNECT refused: %r" % head[:end])
    if len(head) > end:
        raise RuntimeError("bytes after the CONNECT answer before we sent any")


def open_bulk(args):
    s = socket.create_connection(("127.0.0.1", args.port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if args.connect:
        s.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (args.connect.encode(), args.connect.encode()))
        read_head(s)
    return s


def bulk(args):
    total = args.bytes
    c0 = own_cpu()
    t0 = time.monotonic()
    s = open_bulk(args)
    if args.dir == "up":
        block = memoryview(bytes([0x61]) * CHUNK)
        s.sendall(b"S")
        left = total
        while left > 0:
            n = s.send(block[:min(left, CHUNK)])
            left -= n
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while True:
            chunk = s.recv(64)
            if not chunk:
                break
            answer += chunk
        got = int(answer.strip() or b"-1")
    else:
        s.sendall(b"R" + struct.pack(">Q", total))
        buf = bytearray(CHUNK)
        got = 0
        while True:
            n = s.recv_into(buf)
            if n == 0:
                break
            got += n
    t1 = time.monotonic()
    s.close()
    out = {"bytes": got, "seconds": t1 - t0, "cpu": own_cpu() - c0}
    print(json.dumps(out), flush=True)
    if got != total:
        print("bulk: %d bytes arrived, %d sent" % (got, total), file=sys.stderr)
        sys.exit(1)


class RateConn:
    __slots__ = ("sock", "state", "buf")


def rate(args):
    payload = b"E" + bytes((48 + i % 10) for i in range(args.payload - 1))
    connect_req = None
    if args.connect:
        connect_req = b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (args.connect.encode(), args.connect.encode())
    sel = selectors.DefaultSelector()
    started = done = failed = 0
    errors = {}
    addr = (args.host, args.port)

    def fail(rc, why):
        nonlocal failed
        failed += 1
        errors[why] = errors.get(why, 0) + 1
        finish(rc)

    def finish(rc):
        try:
            sel.unregister(rc.sock)
        except (KeyError, ValueError):
            pass
        rc.sock.close()
        start_one()

    def start_one():
        nonlocal started
        if started >= args.n:
            return
        started += 1
        rc = RateConn()
        rc.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        rc.sock.setblocking(False)
        rc.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rc.buf = b""
        rc.state = "connecting"
        err = rc.sock.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            fail(rc, "connect: " + os.strerror(err))
            return
        sel.register(rc.sock, selectors.EVENT_WRITE, rc)

    c0 = own_cpu()
    t0 = time.monotonic()
    deadline = t0 + args.timeout
    for _ in range(min(args.c, args.n)):
        start_one()
    while done + failed < args.n:
        if time.monotonic() > deadline:
            errors["timeout"] = args.n - done - failed
            failed = args.n - done
            break
        for key, _ in sel.select(1.0):
            rc = key.data
            try:
                if rc.state == "connecting":
                    err = rc.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        fail(rc, "connect: " + os.strerror(err))
                        continue
                    if connect_req:
                        rc.sock.send(connect_req)
                        rc.state = "head"
                    else:
                        rc.sock.send(payload)
                        rc.state = "echo"
                    sel.modify(rc.sock, selectors.EVENT_READ, rc)
                    continue
                chunk = rc.sock.recv(4096)
                if not chunk:
                    fail(rc, "closed early in " + rc.state)
                    continue
                rc.buf += chunk
                if rc.state == "head":
                    if b"\r\n\r\n" not in rc.buf:
                        continue
                    if not rc.buf.startswith(b"HTTP/1.1 200"):
                        fail(rc, "CONNECT answered " + rc.buf.split(b"\r\n", 1)[0].decode("latin-1"))
                        continue
                    rc.buf = rc.buf[rc.buf.index(b"\r\n\r\n") + 4:]
                    rc.state = "echo"
                    rc.sock.send(payload)
                    if not rc.buf:
                        continue
                if len(rc.buf) >= len(payload):
                    if rc.buf == payload:
                        done += 1
                        finish(rc)
                    else:
                        fail(rc, "echo differs")
            except OSError as e:
                fail(rc, "%s: %s" % (rc.state, e.strerror or e))
    t1 = time.monotonic()
    out = {"done": done, "failed": failed, "seconds": t1 - t0, "cpu": own_cpu() - c0, "errors": errors}
    print(json.dumps(out), flush=True)
    sys.exit(1 if failed else 0)


# ----------------------------------------------------------------------------- TLS tap

GROUPS = {0x001d: "X25519", 0x0017: "P-256", 0x0018: "P-384", 0x0019: "P-521", 0x001e: "X448"}
SUITES = {0x1301: "TLS_AES_128_GCM_SHA256", 0x1302: "TLS_AES_256_GCM_SHA384",
          0x1303: "TLS_CHACHA20_POLY1305_SHA256", 0x1304: "TLS_AES_128_CCM_SHA256"}
HRR_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")


def parse_server_hello(data):
    """The ServerHello at the start of a server's byte stream, or None if incomplete."""
    if len(data) < 5:
        return None
    if data[0] != 0x16:
        return {"error": "first record is not a handshake (type %d)" % data[0]}
    rlen = struct.unpack(">H", data[3:5])[0]
    if len(data) < 5 + rlen:
        return None
    h = data[5:5 + rlen]
    if h[0] != 2:
        return {"error": "first handshake message is not a ServerHello (type %d)" % h[0]}
    p = 4 + 2
    rnd = h[p:p + 32]
    p += 32
    sid_len = h[p]
    p += 1 + sid_len
    suite = struct.unpack(">H", h[p:p + 2])[0]
    p += 3
    info = {"cipher": SUITES.get(suite, "0x%04x" % suite), "version": "TLSv1.2 or lower",
            "group": None, "resumed": False, "hello_retry": rnd == HRR_RANDOM}
    if p + 2 <= len(h):
        ext_end = p + 2 + struct.unpack(">H", h[p:p + 2])[0]
        p += 2
        while p + 4 <= ext_end:
            et, el = struct.unpack(">HH", h[p:p + 4])
            body = h[p + 4:p + 4 + el]
            if et == 0x002b and el == 2:
                info["version"] = "TLSv1.3" if body == b"\x03\x04" else "0x" + body.hex()
            elif et == 0x0033 and el >= 2:
                g = struct.unpack(">H", body[:2])[0]
                info["group"] = GROUPS.get(g, "0x%04x" % g)
            elif et == 0x0029:
                info["resumed"] = True
            p += 4 + el
    return info


def tap(args):
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", args.listen_port))
    lsock.listen(64)
    lock = threading.Lock()

    def pump(src, dst, inspect):
        seen = b""
        reported = not inspect
        try:
            while True:
                chunk = src.recv(CHUNK)
                if not chunk:
                    break
                if not reported:
                    seen += chunk
                    info = parse_server_hello(seen)
                    if info is not None:
                        reported = True
                        with lock, open(args.outfile, "a") as f:
                            f.write(json.dumps(info) + "\n")
                dst.sendall(chunk)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    while True:
        c, _ = lsock.accept()
        u = socket.create_connection(("127.0.0.1", args.upstream_port))
        threading.Thread(target=pump, args=(c, u, False), daemon=True).start()
        threading.Thread(target=pump, args=(u, c, True), daemon=True).start()


# ----------------------------------------------------------------------------- getsockopt cost

def origdst(args):
    host, port = args.target.rsplit(":", 1)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", args.listen_port))
    ls.listen(4)
    c = socket.create_connection((host, int(port)), timeout=5)
    a, _ = ls.accept()
    raw = a.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    oport = struct.unpack(">H", raw[2:4])[0]
    oip = socket.inet_ntoa(raw[4:8])
    k = args.k
    best = {}
    # Five batches each, the fastest batch kept (the figure is a floor: a quiet core's cost).
    for name, level, opt, ln in (("origdst", socket.SOL_IP, SO_ORIGINAL_DST, 16),
                                 ("sotype", socket.SOL_SOCKET, socket.SO_TYPE, 4)):
        g = a.getsockopt
        times = []
        for _ in range(5):
            t0 = time.perf_counter_ns()
            for _ in range(k):
                g(level, opt, ln)
            times.append((time.perf_counter_ns() - t0) / k)
        best[name] = min(times)
    c.close()
    a.close()
    ls.close()
    print(json.dumps({"original": "%s:%d" % (oip, oport), "ns_origdst": best["origdst"],
                      "ns_sotype": best["sotype"], "ns_extra": best["origdst"] - best["sotype"]}), flush=True)


def tlscheck(args):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(args.ca)
    ctx.check_hostname = False          # the peers' certificates name SPIFFE URIs; the chain is checked
    if args.cert:
        ctx.load_cert_chain(args.cert, args.key)
    if args.tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    out = {"echoed": False, "error": None}
    try:
        with socket.create_connection(("127.0.0.1", args.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=args.server_name) as s:
                s.sendall(b"Echo-check")
                got = b""
                while len(got) < 10:
                    chunk = s.recv(64)
                    if not chunk:
                        break
                    got += chunk
                out["echoed"] = got == b"Echo-check"
                out["version"] = s.version()
                out["cipher"] = s.cipher()[0]
    except (OSError, ssl.SSLError) as e:
        out["error"] = str(e)
    print(json.dumps(out), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("server")
    p.add_argument("port", type=int)
    p.add_argument("--addr", default="127.0.0.1")
    p = sub.add_parser("bulk")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dir", choices=("up", "down"), required=True)
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--connect")
    p = sub.add_parser("rate")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("-n", type=int, required=True)
    p.add_argument("-c", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--payload", type=int, default=16)
    p.add_argument("--connect")
    p.add_argument("--timeout", type=float, default=120)
    p = sub.add_parser("tap")
    p.add_argument("listen_port", type=int)
    p.add_argument("upstream_port", type=int)
    p.add_argument("outfile")
    p = sub.add_parser("origdst")
    p.add_argument("--listen-port", type=int, required=True)
    p.add_argument("--target", required=True)
    p.add_argument("-k", type=int, default=200000)
    p = sub.add_parser("tlscheck")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--tls12", action="store_true")
    p.add_argument("--server-name", default="server")
    args = ap.parse_args()
    if args.cmd == "rate" and args.payload < 2:
        ap.error("--payload: at least 2 bytes")
    {"server": server, "bulk": bulk, "rate": rate, "tap": tap, "origdst": origdst, "tlscheck": tlscheck}[args.cmd](args)


if __name__ == "__main__":
    main()
