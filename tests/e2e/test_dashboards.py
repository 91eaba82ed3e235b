"""The Grafana dashboards in dashboards/: every panel query, run by a real Prometheus scraping a
small mesh with HTTP and TCP traffic, returns series, and names only metrics and labels the
sidecars export. Template variables are resolved the way Grafana does, from their own
label_values() queries against the same Prometheus."""

import itertools
import json
import re
import shutil
import socket
import threading
import time
import urllib.parse

import pytest

from conftest import ROOT, Meshd, free_port, http_get, wait_until

DASHBOARDS = ROOT / "dashboards"
FILES = ("mesh.json", "service.json", "workload.json")
LABEL_VALUES = re.compile(r'^label_values\((.+),\s*([a-z_]+)\)$')
# PromQL words that look like metric names in an expression but are not.
KEYWORDS = {"sum", "by", "rate", "histogram_quantile", "le", "without", "or", "and", "unless", "on", "ignoring"}


def load(name):
    return json.loads((DASHBOARDS / name).read_text())


def panels(dash):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def targets(dash):
    """(panel title, expr) of every panel target."""
    return [(p["title"], t["expr"]) for p in panels(dash) for t in p.get("targets", [])]


def variables(dash):
    return [v for v in dash["templating"]["list"] if v["type"] == "query"]


def selectors_and_labels(expr):
    """(metric names, label names) an expression uses: names before `{` or `[`, matcher labels
    inside `{}`, and labels in `by (...)`."""
    metrics = set(re.findall(r'([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]', expr)) - KEYWORDS
    labels = set()
    for sel in re.findall(r'\{([^}]*)\}', expr):
        labels |= set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"', sel))
    for grp in re.findall(r'\bby\s*\(([^)]*)\)', expr):
        labels |= {g.strip() for g in grp.split(",") if g.strip()}
    return metrics, labels - {"le"} | ({"le"} if "_bucket" in expr else set())


def test_dashboards_are_valid_json_with_unique_panel_ids():
    for name in FILES:
        dash = load(name)
        assert dash["schemaVersion"] == 39, name
        ids = [p["id"] for p in panels(dash)]
        assert len(ids) == len(set(ids)), (name, ids)
        names = [v["name"] for v in dash["templating"]["list"]]
        assert names[0] == "datasource" and dash["templating"]["list"][0]["type"] == "datasource", name
        for p in panels(dash):
            if p["type"] != "row":
                assert p["datasource"]["uid"] == "${datasource}", (name, p["title"])
                assert p["targets"], (name, p["title"])
        # Every $variable a query uses is defined in this dashboard.
        for _, expr in targets(dash) + [("var", v["definition"]) for v in variables(dash)]:
            for used in re.findall(r'\$([a-z_]+)', expr):
                assert used == "__rate_interval" or used in names, (name, used, expr)


class Echo:
    """A TCP app that echoes what it reads."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c):
        with c:
            try:
                while (b := c.recv(65536)):
                    c.sendall(b)
            except OSError:
                pass   # the sidecar reset the connection (teardown): nothing more to echo


def http(outbound, host):
    s = socket.create_connection(("127.0.0.1", outbound), timeout=5)
    s.sendall(f"GET /echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while (b := s.recv(65536)):
        data += b
    s.close()
    return int(data.split(b" ", 2)[1])


def tcp_roundtrip(outbound, host, port, payload):
    s = socket.create_connection(("127.0.0.1", outbound), timeout=5)
    s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(1)
        assert b, head
        head += b
    assert b" 200 " in head.split(b"\r\n", 1)[0] + b" ", head
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        b = s.recv(65536)
        assert b
        got += b
    s.close()
    return got == payload


@pytest.fixture
def echo():
    e = Echo()
    yield e
    e.sock.close()


def test_every_dashboard_query_returns_series(procs, tmp_path, echo):
    if not shutil.which("prometheus"):
        pytest.fail("prometheus missing (Debian package prometheus)")
    # client -> reviews (HTTP), client -> cache (TCP), reviews -> client (HTTP): every workload
    # is a source and a destination, so the workload dashboard's both halves have data.
    m = Meshd(procs)
    _, radmin, _, rout = m.sidecar("reviews-sidecar", "reviews", app_port=procs.app("reviews"))
    _, kadmin, _, _ = m.sidecar("cache-sidecar", "cache", app_port=echo.port,
                                extra=["--app-protocol", "tcp", "--service-port", "7002"])
    _, cadmin, _, cout = m.sidecar("client-sidecar", "client", app_port=procs.app("client"))
    reviews, client, cache = (f"{n}.default.svc.cluster.local" for n in ("reviews", "client", "cache"))
    wait_until(lambda: http(cout, reviews) == 200, 20, what="client reaches reviews")
    wait_until(lambda: http(rout, client) == 200, 20, what="reviews reaches client")
    wait_until(lambda: tcp_roundtrip(cout, cache, 7002, b"x"), 20, what="client reaches cache over TCP")

    prom_port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: sidecars
    metrics_path: /stats/prometheus
    static_configs:
      - targets: ["127.0.0.1:{radmin}", "127.0.0.1:{kadmin}", "127.0.0.1:{cadmin}"]
""")
    procs.start(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}"], "prometheus")
    base = f"http://127.0.0.1:{prom_port}/api/v1"
    wait_until(lambda: http_get(f"http://127.0.0.1:{prom_port}/-/ready", timeout=1)[0] == 200, 30, what="prometheus ready")

    def api(path, **params):
        body = json.loads(http_get(f"{base}/{path}?" + urllib.parse.urlencode(params, doseq=True))[1])
        assert body["status"] == "success", body
        return body["data"]

    def query(q):
        return api("query", query=q)["result"]

    wait_until(lambda: len(query('up{job="sidecars"} == 1')) == 3, 20, what="prometheus scrapes the three sidecars")
    # Traffic spread over several scrapes, so rate() over 1m has at least two samples that differ.
    for _ in range(6):
        for _ in range(5):
            assert http(cout, reviews) == 200
            assert http(rout, client) == 200
        assert tcp_roundtrip(cout, cache, 7002, b"y" * 4096)
        time.sleep(0.6)
    wait_until(lambda: query('sum(rate(istio_tcp_received_bytes_total{reporter="destination"}[1m])) > 0')
               and query('sum(rate(istio_requests_total{reporter="destination"}[1m])) > 0'), 20,
               what="prometheus sees rates of the traffic")

    exported = set(api("label/__name__/values"))
    label_names = set(api("labels"))

    def label_values(definition, env):
        m = LABEL_VALUES.match(definition)
        assert m, definition
        sel, label = substitute(m.group(1), env), m.group(2)
        return sorted({s[label] for s in api("series", **{"match[]": sel}) if label in s})

    def substitute(expr, env):
        expr = expr.replace("$__rate_interval", "1m")
        for k, v in env.items():
            expr = expr.replace("${" + k + "}", v).replace("$" + k, v)
        return expr

    failures = []
    for name in FILES:
        dash = load(name)
        # Each variable's values, from its own query given the earlier variables' first value;
        # the dashboard's queries then run for every combination, as a user picking in Grafana would.
        choices, env = {}, {}
        for v in variables(dash):
            values = label_values(v["definition"], env)
            assert values, (name, v["name"], v["definition"])
            choices[v["name"]] = values
            env[v["name"]] = values[0]
        if "service" in choices:
            assert set(choices["service"]) == {reviews, client, cache}, choices
        if "workload" in choices:
            # "unknown": the calling side of opaque TCP, which carries no peer metadata.
            assert set(choices["workload"]) - {"unknown"} == {"reviews", "client", "cache"}, choices
        combos = [dict(zip(choices, c)) for c in itertools.product(*choices.values())] or [{}]
        for title, expr in targets(dash):
            metrics, labels = selectors_and_labels(expr)
            unknown = (metrics - exported) | (labels - label_names)
            if unknown:
                failures.append(f"{name} / {title}: names {sorted(unknown)} the mesh does not export: {expr}")
                continue
            results = {tuple(sorted(c.items())): query(substitute(expr, c)) for c in combos}
            if not any(results.values()):
                failures.append(f"{name} / {title}: no series for any of {combos}: {expr}")
                continue
            # `by` labels must be present in the answer (an aggregation by a label no series has
            # still returns one series, without it).
            for grp in re.findall(r'\bby\s*\(([^)]*)\)', expr):
                want = {g.strip() for g in grp.split(",")} - {"le"}
                for rows in results.values():
                    for r in rows:
                        if want <= set(r["metric"]):
                            continue
                        failures.append(f"{name} / {title}: series without {sorted(want)}: {r['metric']}")
    assert not failures, "\n".join(failures)
