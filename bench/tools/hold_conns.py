#!/usr/bin/env python3
"""Open N mutual-TLS connections to one server and hold them idle (used by bench/idle-conns.sh).

    hold_conns.py --port P --n 10000 --cert C --key K --ca ROOT [--sni server] [--procs 2]
                  [--mode h2|tls] [--ramp 200] [--ramp-timeout 300] [--hold-max 300]
                  --ready-file F --release-file R

Each connection: TCP connect, full TLS handshake with a client certificate (no session reuse:
every connection has its own SSLContext-less session, tickets are not offered back), then
  --mode h2  (default): ALPN h2, the HTTP/2 preface + SETTINGS, one `GET /` that must complete
              with :status 200; then the connection stays open and idle (its reader keeps
              answering SETTINGS/PING so the server sees a live peer);
  --mode tls: ALPN http/1.1, nothing after the handshake (TLS-level idle).
At most --ramp handshakes are in flight per process. Work is split over --procs processes
(asyncio each). When every process has finished its ramp, the summary is written as one JSON
line to --ready-file:
  {"target": N, "established": ok, "failed": n, "failures": {kind: count}, "ramp_seconds": s}
Then the connections are held until --release-file exists (or --hold-max seconds pass), and the
final line {"closed_by_server_while_held": k, ...} is appended to --ready-file before exit.
stdlib + the `h2` package (pip install h2) for --mode h2.
"""

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import ssl
import sys
import time


def make_ctx(a):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(a.ca)
    ctx.load_cert_chain(a.cert, a.key)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"] if a.mode == "h2" else ["http/1.1"])
    ctx.check_hostname = True
    # No session resumption: each connection pays the full handshake the test is about.
    ctx.options |= ssl.OP_NO_TICKET
    return ctx


def kind_of(e):
    if isinstance(e, ssl.SSLError):
        return "ssl:" + (e.reason or type(e).__name__)
    if isinstance(e, OSError) and e.errno:
        import errno
        return "os:" + errno.errorcode.get(e.errno, str(e.errno))
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    return type(e).__name__ + (":" + str(e)[:60] if str(e) else "")


class Conn:
    __slots__ = ("reader", "writer", "h2", "closed")


async def one(a, ctx, sem, conns, stats):
    async with sem:
        try:
            c = Conn()
            c.closed = False
            c.reader, c.writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", a.port, ssl=ctx, server_hostname=a.sni), a.op_timeout)
            if a.mode == "h2":
                import h2.config
                import h2.connection
                import h2.events
                alpn = c.writer.get_extra_info("ssl_object").selected_alpn_protocol()
                if alpn != "h2":
                    raise RuntimeError(f"alpn {alpn}")
                c.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
                c.h2.initiate_connection()
                c.h2.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "https"),
                                      (":authority", a.sni), ("user-agent", "hold_conns")], end_stream=True)
                c.writer.write(c.h2.data_to_send())
                status, done = None, False

                async def read_response():
                    nonlocal status, done
                    while not done:
                        data = await c.reader.read(65536)
                        if not data:
                            raise ConnectionError("closed before the response")
                        for ev in c.h2.receive_data(data):
                            if isinstance(ev, h2.events.ResponseReceived):
                                status = dict(ev.headers).get(":status")
                            elif isinstance(ev, h2.events.DataReceived):
                                c.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                            elif isinstance(ev, (h2.events.StreamEnded,)):
                                done = True
                            elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                                raise ConnectionError(type(ev).__name__)
                        out = c.h2.data_to_send()
                        if out:
                            c.writer.write(out)
                await asyncio.wait_for(read_response(), a.op_timeout)
                if status != "200":
                    raise RuntimeError(f"status {status}")
            else:
                await c.writer.drain()
            conns.append(c)
            stats["ok"] += 1
        except Exception as e:  # noqa: BLE001 - every failure is counted by kind
            k = kind_of(e)
            stats["failures"][k] = stats["failures"].get(k, 0) + 1
            try:
                c.writer.close()
            except Exception:  # noqa: BLE001
                pass


async def idle_reader(c, stats):
    """Keep the connection alive from our side: answer what the server sends, note its close."""
    try:
        while True:
            data = await c.reader.read(65536)
            if not data:
                break
            if getattr(c, "h2", None) is not None:
                try:
                    c.h2.receive_data(data)
                    out = c.h2.data_to_send()
                    if out:
                        c.writer.write(out)
                except Exception:  # noqa: BLE001
                    break
    except Exception:  # noqa: BLE001
        pass
    c.closed = True
    stats["closed"] += 1


async def worker_main(a, n, q, release_evt):
    ctx = make_ctx(a)
    sem = asyncio.Semaphore(a.ramp)
    conns, stats = [], {"ok": 0, "failures": {}, "closed": 0}
    t0 = time.monotonic()
    tasks = [asyncio.create_task(one(a, ctx, sem, conns, stats)) for _ in range(n)]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), a.ramp_timeout)
    except asyncio.TimeoutError:
        for t in tasks:
            t.cancel()
        stats["failures"]["ramp-timeout"] = n - stats["ok"] - sum(stats["failures"].values())
    ramp = time.monotonic() - t0
    readers = [asyncio.create_task(idle_reader(c, stats)) for c in conns]
    q.put(("ready", {"ok": stats["ok"], "failures": stats["failures"], "ramp": ramp}))
    loop = asyncio.get_running_loop()
    while not release_evt.is_set():
        await asyncio.sleep(0.2)
    q.put(("closed", stats["closed"]))
    for c in conns:
        try:
            c.writer.close()
        except Exception:  # noqa: BLE001
            pass
    for r in readers:
        r.cancel()
    await asyncio.sleep(0.5)
    del loop


def worker(a, n, q, release_evt):
    asyncio.run(worker_main(a, n, q, release_evt))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--sni", default="server")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--mode", choices=["h2", "tls"], default="h2")
    p.add_argument("--ramp", type=int, default=200, help="handshakes in flight per process")
    p.add_argument("--op-timeout", type=float, default=20.0)
    p.add_argument("--ramp-timeout", type=float, default=300.0)
    p.add_argument("--hold-max", type=float, default=300.0)
    p.add_argument("--ready-file", required=True)
    p.add_argument("--release-file", required=True)
    a = p.parse_args()

    q = mp.Queue()
    release_evt = mp.Event()
    per = [a.n // a.procs + (1 if i < a.n % a.procs else 0) for i in range(a.procs)]
    ps = [mp.Process(target=worker, args=(a, k, q, release_evt), daemon=True) for k in per]
    t0 = time.monotonic()
    for x in ps:
        x.start()
    ok, failures, ramps = 0, {}, []
    for _ in ps:
        kind, v = q.get(timeout=a.ramp_timeout + 60)
        ok += v["ok"]
        ramps.append(v["ramp"])
        for k, c in v["failures"].items():
            failures[k] = failures.get(k, 0) + c
    summary = {"target": a.n, "established": ok, "failed": sum(failures.values()), "failures": failures,
               "ramp_seconds": round(time.monotonic() - t0, 1), "procs": a.procs, "mode": a.mode}
    with open(a.ready_file, "w") as f:
        f.write(json.dumps(summary) + "\n")
    print("hold_conns: " + json.dumps(summary), flush=True)
    end = time.monotonic() + a.hold_max
    while time.monotonic() < end and not os.path.exists(a.release_file):
        time.sleep(0.2)
    release_evt.set()
    closed = 0
    for _ in ps:
        try:
            kind, v = q.get(timeout=30)
            closed += v
        except Exception:  # noqa: BLE001
            pass
    with open(a.ready_file, "a") as f:
        f.write(json.dumps({"closed_by_server_while_held": closed}) + "\n")
    for x in ps:
        x.join(timeout=10)
        if x.is_alive():
            x.kill()


if __name__ == "__main__":
    sys.exit(main())
