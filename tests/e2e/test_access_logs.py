"""Access logs in mesh mode, switched by Istio's Telemetry `accessLogging` through `meshctl apply`:
meshd and two sidecars (a caller, productpage, whose lines go to stdout, and reviews with its app,
whose lines go to --access-log-path). Lines appear on both sides for the same x-request-id once a
Telemetry enables them, in Envoy's default text format (provider envoy) or JSON (envoy-json);
match.mode and filter.expression choose which; a bad Telemetry is refused naming file, line and
field while the one in force keeps logging; disabled: true and deleting the Telemetry stop them,
all without restarting a proxy."""

import json
import re
import uuid

from conftest import Meshd, curl, wait_until

ROOT_NS = "mesh-system"

# Envoy's default format: [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"
# %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
# %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
# "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"
TEXT = re.compile(r'^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\] "(\S+) (\S+) (\S+)" (\d+) (\S+) (\d+) (\d+) (\d+) (\S+) '
                  r'"([^"]*)" "([^"]*)" "([^"]*)" "([^"]*)" "([^"]*)"$')


def telemetry(name, ns, body):
    return f"apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}"


class Setup:
    def __init__(self, procs):
        self.m = Meshd(procs)
        self.tmp = procs.tmp
        self.server_log = procs.tmp / "reviews-access.log"
        app = procs.app("reviews")
        self.reviews, _, _, _ = self.m.sidecar("reviews", "reviews", app_port=app,
                                               extra=["--access-log-path", self.server_log])
        self.caller, _, _, self.outbound = self.m.sidecar("productpage", "productpage")
        wait_until(lambda: curl("-s", "-H", "Host: reviews", f"http://127.0.0.1:{self.outbound}/").stdout.startswith(b"hello"),
                   what="routing pushed")

    def apply(self, name, text, delete=False):
        f = self.tmp / f"{name}.yaml"
        f.write_text(text)
        return self.m.ctl("delete" if delete else "apply", "-f", f, "--wait", check=False)

    def request(self, path="/", host="reviews"):
        rid = str(uuid.uuid4())
        r = curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Host: {host}", "-H", f"x-request-id: {rid}",
                 "-A", "access-log-test", f"http://127.0.0.1:{self.outbound}{path}")
        return rid, int(r.stdout)

    def lines(self, rid):
        """(client lines, server lines) naming `rid`: the caller's stdout, the server's file."""
        client = [l for l in self.caller.log_path.read_text(errors="replace").splitlines() if rid in l]
        server = [l for l in self.server_log.read_text(errors="replace").splitlines() if rid in l] if self.server_log.exists() else []
        return client, server

    def logged(self, rid, client=1, server=1):
        """Waits for the lines of `rid` (the writer thread flushes off the worker loop)."""
        wait_until(lambda: tuple(map(len, self.lines(rid))) == (client, server), timeout=5,
                   what=f"{client} client and {server} server lines for {rid}: {self.lines(rid)}")
        return self.lines(rid)

    def silent(self, rid):
        """No line for `rid`: a later request that is logged proves the writer flushed past it
        (or, when nothing is logged, a short wait)."""
        import time
        time.sleep(0.5)
        assert self.lines(rid) == ([], []), self.lines(rid)


def test_access_logs_switched_by_telemetry(procs):
    s = Setup(procs)
    # No Telemetry: mesh mode writes no access log.
    rid, code = s.request()
    assert code == 200
    s.silent(rid)

    # Mesh-wide, Istio's built-in provider: Envoy's default text format on both sides.
    r = s.apply("mesh", telemetry("mesh-default", ROOT_NS, "  accessLogging:\n  - providers: [{name: envoy}]\n"))
    assert r.returncode == 0, r.stderr
    rid, code = s.request("/echo?secret=1")
    assert code == 200
    client, server = s.logged(rid)
    for line in (client[0], server[0]):
        m = TEXT.match(line)
        assert m, line
        start, method, path, proto, status, flags, _rx, _tx, _dur, _ust, _xff, ua, req_id, authority, upstream = m.groups()
        assert (method, path, status, flags, ua, req_id) == ("GET", "/echo", "200", "-", "access-log-test", rid), line
        assert proto in ("HTTP/1.1", "HTTP/2"), line
        assert authority.startswith("reviews"), line
        assert upstream.startswith("127.0.0.1:"), line
    assert TEXT.match(client[0]).group(4) == "HTTP/1.1", "curl spoke HTTP/1.1 to the caller"
    assert TEXT.match(server[0]).group(4) == "HTTP/2", "the sidecars spoke HTTP/2"
    # A local reply (no route: 404 NR) is logged by the caller's sidecar only.
    rid, code = s.request(host="nowhere")
    assert code == 404
    client, _ = s.logged(rid, client=1, server=0)
    m = TEXT.match(client[0])
    assert m and (m.group(5), m.group(6), m.group(15)) == ("404", "NR", "-"), client[0]

    # A namespace Telemetry overrides the mesh's, per side as Istio merges them: the client side
    # JSON, errors only; the server side turns the mesh's `envoy` off by name.
    ns = telemetry("logs", "default", "  accessLogging:\n  - providers: [{name: envoy-json}]\n    match: {mode: CLIENT}\n"
                                      "    filter: {expression: \"response.code >= 400 && response.flags == '-'\"}\n"
                                      "  - providers: [{name: envoy}]\n    match: {mode: SERVER}\n    disabled: true\n")
    r = s.apply("ns", ns)
    assert r.returncode == 0, r.stderr
    ok_rid, _ = s.request()
    bad_rid, code = s.request("/status/503")
    assert code == 503
    client, server = s.logged(bad_rid, client=1, server=0)
    j = json.loads(client[0])
    assert (j["request_id"], j["response_code"], j["direction"], j["method"], j["path"]) == (bad_rid, 503, "outbound", "GET", "/status/503"), j
    assert s.lines(ok_rid) == ([], []), "the filter keeps only matching requests"

    # A bad Telemetry is refused at apply with file, line and field; the one in force stays.
    bad = telemetry("logs", "default", "  accessLogging:\n  - filter:\n      expression: \"request.path == '/'\"\n")
    r = s.apply("bad", bad)
    assert r.returncode != 0
    assert "bad.yaml:7" in r.stderr and "spec.accessLogging[0].filter.expression" in r.stderr and "not supported yet" in r.stderr, r.stderr
    bad_rid, code = s.request("/status/500")
    assert code == 500
    assert json.loads(s.logged(bad_rid, client=1, server=0)[0][0])["response_code"] == 500

    # disabled: true at the namespace switches both sides off (the mesh's Telemetry is overridden).
    r = s.apply("ns", telemetry("logs", "default", "  accessLogging:\n  - disabled: true\n"))
    assert r.returncode == 0, r.stderr
    rid, _ = s.request("/status/503")
    s.silent(rid)

    # Deleting it: the mesh-wide text logs are back; deleting that one too: none.
    r = s.apply("ns", ns, delete=True)
    assert r.returncode == 0, r.stderr
    rid, _ = s.request()
    client, server = s.logged(rid)
    assert TEXT.match(client[0]) and TEXT.match(server[0])
    r = s.apply("mesh", telemetry("mesh-default", ROOT_NS, "  {}\n"), delete=True)
    assert r.returncode == 0, r.stderr
    rid, _ = s.request("/status/503")
    s.silent(rid)
    # The proxies never restarted.
    assert s.reviews.poll() is None and s.caller.poll() is None
