#!/usr/bin/env python3
"""Continuous HTTP/1.1 traffic that records every request (used by bench/faults.sh).

    loadgen.py --port P --host reviews [--path /] [--keepalive 2] [--fresh 2] [--pause-ms 5]
               --duration 60 --stop-file F --out requests.tsv --summary summary.json

--keepalive threads each reuse one connection (reconnecting after an error), --fresh threads
open a new connection per request. Every request is one line of --out:
    start_s (monotonic, relative to the start) <TAB> duration_ms <TAB> outcome <TAB> body tag
outcome is the status code, or the error kind (e.g. ConnectionResetError, RemoteDisconnected,
timeout). A request counts as failed unless it got 200. Stops after --duration seconds or once
--stop-file exists; --summary gets {"sent", "ok", "failed", "kinds": {outcome: n}}.
The wall clock of start_s = 0 is written as "t0_wall" in the summary, so events timed by the
caller (time.time()) can be placed on the same axis.
"""
import argparse
import http.client
import json
import os
import socket
import threading
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="reviews")
    p.add_argument("--path", default="/")
    p.add_argument("--keepalive", type=int, default=2)
    p.add_argument("--fresh", type=int, default=2)
    p.add_argument("--pause-ms", type=float, default=5)
    p.add_argument("--timeout", type=float, default=10)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--stop-file", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--summary", required=True)
    a = p.parse_args()

    t0 = time.monotonic()
    t0_wall = time.time()
    lines, lock = [], threading.Lock()
    stop = threading.Event()

    def record(ts, dur, outcome, tag):
        with lock:
            lines.append(f"{ts:.4f}\t{dur * 1000:.2f}\t{outcome}\t{tag}")

    def worker(keep):
        conn = None
        while not stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=a.timeout)
            ts = time.monotonic()
            try:
                conn.request("GET", a.path, headers={"Host": a.host})
                r = conn.getresponse()
                body = r.read()
                outcome = str(r.status)
                tag = body.decode(errors="replace").strip().split()[-1] if body.strip() else "-"
                if r.getheader("x-mesh-response-flags"):
                    tag = "flag=" + r.getheader("x-mesh-response-flags")
                if not keep or r.will_close:
                    conn.close()
                    conn = None
            except (socket.timeout, TimeoutError):
                outcome, tag = "timeout", "-"
                conn.close()
                conn = None
            except Exception as e:  # noqa: BLE001 - every failure is recorded by kind
                outcome, tag = type(e).__name__, "-"
                conn.close()
                conn = None
            record(ts - t0, time.monotonic() - ts, outcome, tag[:40])
            if a.pause_ms:
                time.sleep(a.pause_ms / 1000.0)

    ts = [threading.Thread(target=worker, args=(True,)) for _ in range(a.keepalive)]
    ts += [threading.Thread(target=worker, args=(False,)) for _ in range(a.fresh)]
    for t in ts:
        t.start()
    end = t0 + a.duration
    while time.monotonic() < end and not os.path.exists(a.stop_file):
        time.sleep(0.1)
    stop.set()
    for t in ts:
        t.join(timeout=a.timeout + 5)
    kinds = {}
    for ln in lines:
        o = ln.split("\t")[2]
        kinds[o] = kinds.get(o, 0) + 1
    ok = kinds.get("200", 0)
    with open(a.out, "w") as f:
        f.write("\n".join(sorted(lines, key=lambda x: float(x.split("\t")[0]))) + "\n")
    with open(a.summary, "w") as f:
        json.dump({"sent": len(lines), "ok": ok, "failed": len(lines) - ok, "kinds": kinds, "t0_wall": t0_wall,
                   "seconds": round(time.monotonic() - t0, 1)}, f)


if __name__ == "__main__":
    main()
