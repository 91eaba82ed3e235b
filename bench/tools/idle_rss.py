#!/usr/bin/env python3
"""Idle RSS of mesh-mode sidecars (issue 22), used by bench/idle-rss.sh and tests/e2e.

`smaps_breakdown(pid)` splits /proc/PID/smaps into the process's own binary (file pages),
each shared library (file pages), anonymous memory (heap, stacks, .bss, copy-on-write pages)
and the rest. `mesh(...)` starts meshd, an app (tools/upstream.py), a measured mesh-mode
sidecar `reviews` in front of it and a second sidecar `productpage` routing to it, sends
requests through both (outbound plain -> mTLS HTTP/2 hop -> inbound -> app), waits SETTLE
seconds and returns the breakdown of both sidecars. As a script:

    python3 bench/tools/idle_rss.py mesh SIDECAR MESHD MESHCTL [--requests 20] [--settle 6]  # JSON lines
    python3 bench/tools/idle_rss.py pid PROXY PROCESS PID                                     # a JSON line
    python3 bench/tools/idle_rss.py table FILE                                                # markdown
"""

import argparse
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]


def vm_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


def smaps_breakdown(pid):
    """{'VmRSS': kB, 'binary': kB, 'anon': kB, 'libs': {name: kB}, 'other': kB, 'binary_touched_pages': n}
    from /proc/PID/smaps. `binary` counts the resident file pages of the executable itself,
    `anon` every Anonymous kB (all mappings, including the binary's written .data pages)."""
    exe = os.path.realpath(f"/proc/{pid}/exe")
    out = {"VmRSS": vm_rss_kb(pid), "binary": 0, "anon": 0, "libs": {}, "other": 0}
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if not parts[0].endswith(":") or "-" in parts[0]:
                # a mapping header: range perms offset dev inode [path]
                cur = parts[5] if len(parts) > 5 else ""
                continue
            key, val = parts[0][:-1], int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            if key == "Rss":
                rss = val
            elif key == "Anonymous":
                anon = val
                out["anon"] += anon
                filepart = rss - anon
                if filepart <= 0:
                    continue
                if cur == exe:
                    out["binary"] += filepart
                elif cur.startswith("/") and ".so" in cur:
                    name = os.path.basename(cur).split(".so")[0] + ".so"
                    out["libs"][name] = out["libs"].get(name, 0) + filepart
                else:
                    out["other"] += filepart
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if pred():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def get(url, headers=None, timeout=5):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


class Mesh:
    """meshd + app + two mesh-mode sidecars (one worker each) in `tmp`; `stop()` kills them all."""

    def __init__(self, sidecar, meshd, meshctl, tmp, extra_env=None):
        self.tmp = pathlib.Path(tmp)
        self.sidecar_bin, self.meshd_bin, self.meshctl_bin = str(sidecar), str(meshd), str(meshctl)
        self.env = {**os.environ, **(extra_env or {})}
        self.procs = []

    def start(self, args, name):
        log = open(self.tmp / f"{name}.log", "wb")
        p = subprocess.Popen([str(a) for a in args], stdout=log, stderr=subprocess.STDOUT, env=self.env,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=5)

    def ctl(self, *args):
        r = subprocess.run([self.meshctl_bin, "--meshd", f"http://127.0.0.1:{self.admin}", "--admin-token-file",
                            str(self.state / "admin-token"), *map(str, args)], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"meshctl {' '.join(map(str, args))}: {r.stderr}")
        return r.stdout

    def up(self):
        self.state, self.api, self.admin = self.tmp / "meshd-state", free_port(), free_port()
        self.start([self.meshd_bin, "--state-dir", self.state, "--api-port", self.api, "--admin-port", self.admin], "meshd")
        wait_until(lambda: get(f"http://127.0.0.1:{self.admin}/ready", timeout=1)[0] == 200, 20, "meshd ready")
        self.app = free_port()
        self.start([sys.executable, ROOT / "tools" / "upstream.py", "--port", self.app, "--name", "reviews"], "app")
        wait_until(lambda: socket.create_connection(("127.0.0.1", self.app), timeout=0.2).close() or True, 10, "app")
        self.reviews = self.sidecar("reviews", app_port=self.app)
        self.productpage = self.sidecar("productpage", routes=[f"reviews=127.0.0.1:{self.reviews['inbound']}"])

    def sidecar(self, sa, app_port=None, routes=()):
        token = self.ctl("token", "create", "--namespace", "default", "--service-account", sa, "--ttl", "1h").strip()
        admin, inbound, outbound = free_port(), free_port(), free_port()
        args = [self.sidecar_bin, "--meshd", f"127.0.0.1:{self.api}", "--root-cert", self.state / "root-cert.pem",
                "--token", token, "--service", sa, "--admin-port", admin, "--inbound-port", inbound,
                "--outbound-port", outbound, "--concurrency", "1"]
        if app_port:
            args += ["--app-port", app_port]
        for r in routes:
            args += ["--route", r]
        p = self.start(args, f"sidecar-{sa}")
        wait_until(lambda: get(f"http://127.0.0.1:{admin}/ready", timeout=1)[0] == 200, 30, f"sidecar {sa} ready")
        return {"proc": p, "admin": admin, "inbound": inbound, "outbound": outbound}

    def requests(self, n):
        """n requests productpage -> reviews -> app, each checked; then the admin endpoints a
        monitoring agent reads (stats) once."""
        for i in range(n):
            code, body = get(f"http://127.0.0.1:{self.productpage['outbound']}/bytes/{1000 + i}", {"Host": "reviews"})
            if code != 200 or len(body) != 1000 + i:
                raise RuntimeError(f"request {i}: {code} {len(body)} bytes")
        for s in (self.reviews, self.productpage):
            get(f"http://127.0.0.1:{s['admin']}/stats")


def minflt(pid):
    """Minor page faults of the process so far (all threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def measure(sidecar, meshd, meshctl, requests=20, settle=6.0, extra_env=None):
    """Start the mesh, serve `requests`, sleep `settle`, return both sidecars' breakdowns, and
    what the next `requests` cost once idle (`after`: the first request's time against the
    median of the rest, minor faults of both sidecars, VmRSS after them)."""
    tmp = tempfile.mkdtemp(prefix="idle-rss-")
    m = Mesh(sidecar, meshd, meshctl, tmp, extra_env)
    try:
        m.up()
        m.requests(requests)
        time.sleep(settle)
        sides = (("reviews", m.reviews), ("productpage", m.productpage))
        out = {name: smaps_breakdown(s["proc"].pid) for name, s in sides}
        faults0 = {name: minflt(s["proc"].pid) for name, s in sides}
        times = []
        for i in range(max(requests, 2)):
            t0 = time.perf_counter()
            code, body = get(f"http://127.0.0.1:{m.productpage['outbound']}/bytes/{1000 + i}", {"Host": "reviews"})
            times.append(time.perf_counter() - t0)
            if code != 200 or len(body) != 1000 + i:
                raise RuntimeError(f"request {i} after idle: {code} {len(body)} bytes")
        rest = sorted(times[1:])
        for name, s in sides:
            out[name]["after"] = {"requests": len(times), "first_ms": round(times[0] * 1000, 2),
                                  "median_rest_ms": round(rest[len(rest) // 2] * 1000, 2),
                                  "minor_faults": minflt(s["proc"].pid) - faults0[name],
                                  "VmRSS": vm_rss_kb(s["proc"].pid)}
        return out
    finally:
        m.stop()
        shutil.rmtree(tmp, ignore_errors=True)


LIB_GROUPS = (("libcrypto", ("libcrypto.so",)), ("libssl", ("libssl.so",)),
              ("libc, libstdc++, libm, ld.so, libgcc", ("libc.so", "libstdc++.so", "libm.so", "ld-linux-x86-64.so", "libgcc_s.so")))


def row(proxy, process, b):
    """One JSON-able record: a process's breakdown with its libraries grouped."""
    r = {"proxy": proxy, "process": process, "VmRSS": b["VmRSS"], "binary": b["binary"], "anon": b["anon"]}
    rest = b["other"]
    seen = set()
    for label, names in LIB_GROUPS:
        r[label] = sum(b["libs"].get(n, 0) for n in names)
        seen.update(names)
    rest += sum(v for k, v in b["libs"].items() if k not in seen)
    r["other files"] = rest
    if "after" in b:
        r["after"] = b["after"]
    return r


def table(rows):
    """The markdown table of bench/idle-rss.sh's report, in MiB."""
    cols = ["VmRSS", "binary", "anon"] + [g for g, _ in LIB_GROUPS] + ["other files"]
    out = ["| proxy | process | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
    for r in rows:
        out.append(f"| {r['proxy']} | {r['process']} | " + " | ".join(f"{r[c] / 1024:.1f}" for c in cols) + " |")
    after = [r for r in rows if "after" in r]
    if after:
        out += ["", "The same sidecars, then the next requests after the idle reading (pages fault back in):", "",
                "| proxy | process | requests | first request ms | median of the rest ms | minor faults | VmRSS after MiB |",
                "|---|---|---:|---:|---:|---:|---:|"]
        for r in after:
            a = r["after"]
            out.append(f"| {r['proxy']} | {r['process']} | {a['requests']} | {a['first_ms']} | {a['median_rest_ms']} | "
                       f"{a['minor_faults']} | {a['VmRSS'] / 1024:.1f} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mesh", help="ours: meshd + two mesh-mode sidecars; JSON lines")
    m.add_argument("sidecar")
    m.add_argument("meshd")
    m.add_argument("meshctl")
    m.add_argument("--requests", type=int, default=20)
    m.add_argument("--settle", type=float, default=6.0)
    m.add_argument("--label", default="sidecar")
    p = sub.add_parser("pid", help="one running process; a JSON line")
    p.add_argument("proxy")
    p.add_argument("process")
    p.add_argument("pid", type=int)
    t = sub.add_parser("table", help="JSON lines (a file) to a markdown table")
    t.add_argument("file")
    a = ap.parse_args()
    if a.cmd == "mesh":
        for name, b in measure(a.sidecar, a.meshd, a.meshctl, a.requests, a.settle).items():
            print(json.dumps(row(a.label, f"mesh-mode {name}", b)))
    elif a.cmd == "pid":
        print(json.dumps(row(a.proxy, a.process, smaps_breakdown(a.pid))))
    else:
        print(table([json.loads(l) for l in open(a.file) if l.strip()]))


if __name__ == "__main__":
    main()
