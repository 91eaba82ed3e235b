"""`meshctl run`: a sidecar in mesh mode next to an unmodified process (python3 -m http.server)
and a client using http_proxy; the app starts only after its sidecar is ready; exit status and
signals; nothing left behind."""

import os
import re
import signal
import subprocess
import sys
import time

from conftest import MESHCTL, Meshd, free_port, http_get, wait_until

CLIENT = r"""
import os, sys, time, urllib.request
adm = os.environ["MESH_SIDECAR_ADMIN"]
# The sidecar must already be ready when the app starts.
print("ready-at-start", urllib.request.urlopen(f"http://{adm}/ready", timeout=2).status, flush=True)
for i in range(100):
    try:
        body = urllib.request.urlopen("http://web/", timeout=3).read().decode()
        print("got", body.replace("\n", " "), flush=True)
        sys.exit(3)
    except Exception as e:
        last = e
        time.sleep(0.1)
print("never reached web:", last, flush=True)
sys.exit(1)
"""


def test_meshctl_run_puts_a_sidecar_next_to_any_process(procs, tmp_path):
    m = Meshd(procs)
    env = {"MESHD": f"http://127.0.0.1:{m.admin}", "MESH_ADMIN_TOKEN_FILE": str(m.state / "admin-token")}
    port = free_port()
    web = procs.start([MESHCTL, "run", "--service", "web", "--app-port", port, "--",
                       sys.executable, "-m", "http.server", port, "--bind", "127.0.0.1", "--directory", str(tmp_path)],
                      "web-run", env=env)
    (tmp_path / "hello.txt").write_text("hi\n")
    wait_until(lambda: "web.default" in m.ctl("get", "services").stdout, timeout=30, what="web registered")
    note = web.log_path.read_text()
    admin = int(re.search(r"admin :(\d+)", note).group(1))

    (tmp_path / "client.py").write_text(CLIENT)
    r = subprocess.run([str(MESHCTL), "run", "--service", "client", "--", sys.executable, str(tmp_path / "client.py")],
                       capture_output=True, text=True, timeout=90, env={**__import__("os").environ, **env})
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)   # the app's exit status
    assert "ready-at-start 200" in r.stdout
    assert "Directory listing" in r.stdout and "hello.txt" in r.stdout
    assert "sidecar log" in r.stderr or "log /" in r.stderr
    # The web sidecar saw the call over mutual TLS, from the client's identity.
    _, metrics = http_get(f"http://127.0.0.1:{admin}/stats/prometheus")
    line = [l for l in metrics.decode().splitlines() if l.startswith("istio_requests_total{") and 'reporter="destination"' in l][0]
    assert 'source_principal="spiffe://cluster.local/ns/default/sa/client"' in line
    assert 'connection_security_policy="mutual_tls"' in line
    # SIGTERM: the app and its sidecar stop, nothing left behind.
    web.send_signal(signal.SIGTERM)
    web.wait(timeout=40)
    # meshctl exited after waiting for the sidecar; the processes are reaped by then (waited for,
    # not slept for: a survivor fails after the timeout).
    def pgrep(pat):
        # "--": the pattern starts with "--" and must not be read as an option of pgrep.
        r = subprocess.run(["pgrep", "-f", "--", pat], capture_output=True, text=True)
        assert r.returncode in (0, 1), r.stderr
        return r.stdout.strip()

    def left():
        return [pgrep(pat)
                for pat in (f"--service web .*--admin-port {admin}", f"http.server {port}")]
    wait_until(lambda: left() == ["", ""], timeout=5, what=f"no sidecar or app left ({left()})")


def test_meshctl_run_reports_a_sidecar_that_cannot_start(procs, tmp_path):
    m = Meshd(procs)
    bad = tmp_path / "token"
    bad.write_text("mesh1.forged.token\n")
    r = subprocess.run([str(MESHCTL), "--meshd", f"http://127.0.0.1:{m.admin}", "--admin-token-file", str(m.state / "admin-token"),
                        "run", "--service", "web", "--token-file", str(bad), "--", "true"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "exited before it was ready" in r.stderr and "401" in r.stderr
    r = subprocess.run([str(MESHCTL), "run", "--service", "web"], capture_output=True, text=True, timeout=10)
    assert r.returncode != 0 and "after --" in r.stderr


def test_meshctl_run_forwards_signals(procs, tmp_path):
    m = Meshd(procs)
    env = {"MESHD": f"http://127.0.0.1:{m.admin}", "MESH_ADMIN_TOKEN_FILE": str(m.state / "admin-token")}
    marker = tmp_path / "signals"
    app = tmp_path / "app.py"
    app.write_text(f"""
import signal, sys, time
def hup(*_): open({str(marker)!r}, "a").write("hup\\n")
def term(*_): open({str(marker)!r}, "a").write("term\\n"); sys.exit(7)
signal.signal(signal.SIGHUP, hup)
signal.signal(signal.SIGTERM, term)
open({str(marker)!r}, "a").write("started\\n")
while True: time.sleep(0.1)
""")
    p = procs.start([MESHCTL, "run", "--service", "worker", "--", sys.executable, str(app)], "worker-run", env=env)
    wait_until(lambda: marker.exists() and "started" in marker.read_text(), timeout=30, what="app started")
    p.send_signal(signal.SIGHUP)             # a reload: forwarded, nothing stops
    wait_until(lambda: "hup" in marker.read_text(), what="SIGHUP forwarded")
    # Had meshctl taken SIGHUP as a shutdown, it would have asked the sidecar to drain before
    # signalling the app: the sidecar still answers ready, and meshctl still runs.
    admin = int(re.search(r"admin :(\d+)", p.log_path.read_text()).group(1))
    assert http_get(f"http://127.0.0.1:{admin}/ready")[0] == 200
    assert p.poll() is None
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=40) == 7           # the app's status
    assert marker.read_text().splitlines() == ["started", "hup", "term"]
    # The join token does not outlive the start-up.
    tmp = re.search(r"log (/tmp/meshctl-run-\w+)/sidecar.log", p.log_path.read_text()).group(1)
    import os
    assert not os.path.exists(f"{tmp}/token")


CALLER = r"""
import os, sys, time, urllib.request
out = sys.argv[1]
open(out + ".pid", "w").write(str(os.getpid()))
while True:
    try:
        body = urllib.request.urlopen("http://web/hello.txt", timeout=2).read().decode().strip()
        line = f"ok {time.monotonic()} {body}"
    except Exception as e:
        line = f"err {time.monotonic()} {type(e).__name__}"
    with open(out, "a") as f:
        f.write(line + "\n")
    time.sleep(0.1)
"""


def test_meshctl_run_restarts_a_sidecar_killed_with_sigkill(procs, tmp_path):
    """The caller's sidecar is killed with SIGKILL: meshctl logs the exit reason, starts a new one
    with a fresh join token (back-off from 0.2 s), and calls through it work again within seconds;
    the app keeps running with the same pid."""
    m = Meshd(procs)
    env = {"MESHD": f"http://127.0.0.1:{m.admin}", "MESH_ADMIN_TOKEN_FILE": str(m.state / "admin-token")}
    port = free_port()
    (tmp_path / "hello.txt").write_text("hi\n")
    procs.start([MESHCTL, "run", "--service", "web", "--app-port", port, "--",
                 sys.executable, "-m", "http.server", port, "--bind", "127.0.0.1", "--directory", str(tmp_path)],
                "web-run", env=env)
    wait_until(lambda: "web.default" in m.ctl("get", "services").stdout, timeout=30, what="web registered")
    (tmp_path / "caller.py").write_text(CALLER)
    out = tmp_path / "calls"
    caller = procs.start([MESHCTL, "run", "--service", "caller", "--", sys.executable, str(tmp_path / "caller.py"), str(out)],
                         "caller-run", env=env)
    wait_until(lambda: out.exists() and "ok " in out.read_text(), timeout=30, what="calls through the first sidecar")
    app_pid = int((tmp_path / "calls.pid").read_text())
    first = int(re.search(r"sidecar \(pid (\d+)\)", caller.log_path.read_text()).group(1))
    os.kill(first, signal.SIGKILL)
    killed_at = time.monotonic()
    # Calls fail while it is down (nothing listens on the outbound port), then work again.
    wait_until(lambda: any(l.startswith("err ") and float(l.split()[1]) > killed_at for l in out.read_text().splitlines()),
               timeout=10, what="a call failing while the sidecar is down")
    back = wait_until(lambda: [float(l.split()[1]) for l in out.read_text().splitlines()
                               if l.startswith("ok ") and float(l.split()[1]) > killed_at], timeout=15,
                      what=f"calls working again ({caller.log_path.read_text()})")
    assert back[0] - killed_at < 10, back[0] - killed_at
    log = caller.log_path.read_text()
    assert "the sidecar exited unexpectedly (killed by signal 9 (SIGKILL)" in log, log
    assert "restarting it in 0.2 s" in log and "sidecar restarted (restart 1, pid" in log, log
    second = int(re.search(r"restart 1, pid (\d+)", log).group(1))
    assert second != first and os.path.exists(f"/proc/{second}")
    assert int((tmp_path / "calls.pid").read_text()) == app_pid and os.path.exists(f"/proc/{app_pid}")
    assert caller.poll() is None
    # Shutdown: no restart; the app's status is meshctl's.
    caller.send_signal(signal.SIGTERM)
    caller.wait(timeout=40)
    assert "restart 2" not in caller.log_path.read_text()


def test_nothing_outlives_a_meshctl_run_killed_with_sigkill(procs, tmp_path):
    """meshctl itself killed with SIGKILL (it cannot forward anything): its sidecar and its app,
    each in a process group of its own, still end (they asked the kernel for SIGTERM when their
    parent goes), so no sidecar is left calling a meshd forever."""
    m = Meshd(procs)
    env = {"MESHD": f"http://127.0.0.1:{m.admin}", "MESH_ADMIN_TOKEN_FILE": str(m.state / "admin-token")}
    port = free_port()
    web = procs.start([MESHCTL, "run", "--service", "web", "--app-port", port, "--",
                       sys.executable, "-m", "http.server", port, "--bind", "127.0.0.1", "--directory", str(tmp_path)],
                      "web-run", env=env)
    wait_until(lambda: "web.default" in m.ctl("get", "services").stdout, timeout=30, what="web registered")
    wait_until(lambda: len(children(web.pid)) == 2, timeout=10, what="the sidecar and the app started")
    kids = children(web.pid)
    assert all(os.getpgid(k) != os.getpgid(web.pid) for k in kids)   # out of reach of a killpg on meshctl
    web.kill()
    web.wait(timeout=5)

    def gone():
        return all(not os.path.exists(f"/proc/{k}") or open(f"/proc/{k}/stat").read().split()[2] == "Z" for k in kids)
    wait_until(gone, timeout=15, what="the sidecar and the app ended after meshctl was killed")


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []
