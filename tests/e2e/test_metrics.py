"""Per-route metrics in Istio's shape, checked with promtool and a real Prometheus server; the
admin endpoints; access logs."""

import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest

from conftest import client_config, free_port, http_get, server_config, wait_ready, wait_until

TWO_ROUTES = """
    - hosts: [server]
      cluster: server
      name: main
    - hosts: [other]
      cluster: server
      name: alt
"""


def two_route_mesh(procs, pki, client_extra=""):
    app = procs.app("server")
    inbound, sadmin = free_port(), free_port()
    srv = procs.sidecar(server_config(pki, "server-sidecar", inbound, sadmin, app), "server")
    outbound, cadmin = free_port(), free_port()
    cfg = client_config(pki, "client-sidecar", outbound, cadmin, [inbound], spec_extra=client_extra)
    cfg = cfg.replace("""    - hosts: [server]
      cluster: server
""", TWO_ROUTES)
    cli = procs.sidecar(cfg, "client")
    wait_ready(srv, sadmin)
    wait_ready(cli, cadmin)
    return outbound, cadmin, sadmin, cli, srv


def scrape(admin):
    return http_get(f"http://127.0.0.1:{admin}/stats/prometheus")[1].decode()


SAMPLE = re.compile(r'^([a-z_]+)\{(.*)\} (\S+)$')


def series(text, name):
    """[(labels dict, value)] of one metric name."""
    out = []
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1) == name:
            labels = dict(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', m.group(2)))
            out.append((labels, float(m.group(3))))
    return out


def send(outbound, host, path, n, new_connections=False):
    codes = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", outbound), timeout=5)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
        s.close()
        codes.append(int(data.split(b" ", 2)[1]))
    return codes


def test_counters_and_histograms_match_requests_across_workers(procs, pki):
    outbound, cadmin, sadmin, _, _ = two_route_mesh(procs, pki)
    # Separate connections spread over both workers (SO_REUSEPORT); three (route, code) pairs.
    plan = [("server", "/", 23, 200), ("other", "/", 17, 200), ("other", "/status/503", 5, 503)]
    threads = []
    for host, path, n, _ in plan:
        t = threading.Thread(target=send, args=(outbound, host, path, n))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    text = scrape(cadmin)
    reqs = series(text, "istio_requests_total")
    got = {(l["route"], l["response_code"]): v for l, v in reqs if l["reporter"] == "source"}
    assert got == {("client-sidecar.main", "200"): 23, ("client-sidecar.alt", "200"): 17, ("client-sidecar.alt", "503"): 5}, got
    for l, v in reqs:
        assert l["source_principal"] == "spiffe://cluster.local/ns/default/sa/client"
        assert l["destination_principal"] == "spiffe://cluster.local/ns/default/sa/server"
        assert l["destination_service"] == ("server.default.svc.cluster.local" if l["route"].endswith("main") else "other.default.svc.cluster.local")
        assert l["source_workload"] == "client" and l["request_protocol"] == "http" and l["response_flags"] == "-"
        # The destination's workload comes from the server sidecar's metadata exchange.
        assert (l["destination_workload"], l["destination_app"], l["destination_workload_namespace"]) == ("server", "server", "default"), l
    # Histogram counts equal the counters, series by series.
    for name in ["istio_request_duration_milliseconds_count", "istio_request_bytes_count", "istio_response_bytes_count"]:
        counts = {(l["route"], l["response_code"]): v for l, v in series(text, name)}
        assert counts == got, (name, counts)
    # +Inf bucket equals the count; buckets are cumulative.
    buckets = [(l, v) for l, v in series(text, "istio_request_duration_milliseconds_bucket") if l["route"].endswith("main")]
    assert buckets[-1][0]["le"] == "+Inf" and buckets[-1][1] == 23
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
    # The inbound sidecar reports the same requests as destination, over mutual TLS.
    inb = series(scrape(sadmin), "istio_requests_total")
    dest = {l["response_code"]: v for l, v in inb if l["reporter"] == "destination"}
    assert dest == {"200": 40, "503": 5}, dest
    assert all(l["connection_security_policy"] == "mutual_tls" and l["source_principal"].endswith("/sa/client") and l["route"] == "inbound"
               and l["source_workload"] == "client" and l["source_app"] == "client" for l, _ in inb), inb
    # Health metrics.
    assert series(text, "mesh_tls_handshakes_total")
    assert 'mesh_config_version_info{version="static-1"} 1' in text
    exp = series(text, "mesh_certificate_expiry_timestamp_seconds")
    assert exp and exp[0][1] > time.time()


def test_promtool_reports_only_the_millisecond_unit_lint(procs, pki):
    if not shutil.which("promtool"):
        pytest.fail("promtool missing (Debian package prometheus)")
    outbound, cadmin, sadmin, _, _ = two_route_mesh(procs, pki)
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            send(outbound, "server", "/", 5)
            send(outbound, "other", "/status/404", 2)
            send(outbound, "nosuch", "/", 1)

    t = threading.Thread(target=traffic)
    t.start()
    try:
        time.sleep(0.5)
        for admin in (cadmin, sadmin):
            text = scrape(admin)
            r = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
            out = (r.stdout + r.stderr).decode().strip().splitlines()
            assert out, "expected the unit lint on istio_request_duration_milliseconds"
            for line in out:
                assert line.startswith("istio_request_duration_milliseconds") and 'use base unit "seconds"' in line, out
    finally:
        stop.set()
        t.join()


def test_prometheus_server_sees_one_series_per_route(procs, pki, tmp_path):
    if not shutil.which("prometheus"):
        pytest.fail("prometheus missing (Debian package prometheus)")
    outbound, cadmin, _, _, _ = two_route_mesh(procs, pki)
    prom_port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: sidecar
    metrics_path: /stats/prometheus
    static_configs:
      - targets: ["127.0.0.1:{cadmin}"]
""")
    procs.start(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}"], "prometheus")
    base = f"http://127.0.0.1:{prom_port}"
    wait_until(lambda: http_get(f"{base}/-/ready", timeout=1)[0] == 200, timeout=30, what="prometheus ready")

    def query(q):
        url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        body = json.loads(http_get(url)[1])
        assert body["status"] == "success", body
        return {r["metric"].get("route"): float(r["value"][1]) for r in body["data"]["result"]}

    # Wait for Prometheus to scrape the sidecar, so the counters' growth falls inside its samples.
    wait_until(lambda: query('up{job="sidecar"}') == {None: 1.0}, timeout=20, what="first scrape")
    # Traffic over a few seconds: 60 requests on one route, 30 on the other.
    send(outbound, "server", "/", 1)
    send(outbound, "other", "/", 1)
    time.sleep(2.2)
    want = {"client-sidecar.main": 61.0, "client-sidecar.alt": 31.0}
    for _ in range(6):
        send(outbound, "server", "/", 10)
        send(outbound, "other", "/", 5)
        time.sleep(0.5)
    wait_until(lambda: query('sum by (route) (istio_requests_total{reporter="source"})') == want, timeout=20,
               what="prometheus to scrape every request")
    q = 'sum by (route) (rate(istio_requests_total{reporter="source"}[1m]))'
    rates = wait_until(lambda: (r := query(q)) and set(r) == set(want) and r, timeout=20, what="rates for both routes")
    assert all(v > 0 for v in rates.values())
    ratio = rates["client-sidecar.main"] / rates["client-sidecar.alt"]
    assert 1.5 < ratio < 2.5, rates      # 60 vs 30 requests over the same window


def test_admin_endpoints(procs, pki):
    outbound, cadmin, sadmin, cli, srv = two_route_mesh(procs, pki)
    send(outbound, "server", "/", 3)
    dump = json.loads(http_get(f"http://127.0.0.1:{cadmin}/config_dump")[1])
    assert dump["version"] == "static-1"
    assert [r["name"] for r in dump["bootstrap"]["routes"]] == ["client-sidecar.main", "client-sidecar.alt"]
    clusters = json.loads(http_get(f"http://127.0.0.1:{cadmin}/clusters")[1])
    ep = clusters["clusters"][0]["endpoints"][0]
    assert ep["rq_total"] == 3 and ep["cx_total"] >= 1 and ep["health_status"] == "HEALTHY"
    certs = json.loads(http_get(f"http://127.0.0.1:{sadmin}/certs")[1])
    assert certs["identity"] == "spiffe://cluster.local/ns/default/sa/server"
    serial = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", f"{pki}/server/cert.pem"],
                            capture_output=True, text=True).stdout.strip().split("=")[1].lower()
    assert certs["serial"] == serial
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", certs["not_after"])
    assert len(certs["roots"]) == 1 and certs["chain"][0]["subject"].startswith("CN=")
    assert http_get(f"http://127.0.0.1:{cadmin}/nope")[0] == 404
    # POST /drain: not ready any more, then the process exits cleanly.
    req = urllib.request.Request(f"http://127.0.0.1:{cadmin}/drain", method="POST")
    assert urllib.request.urlopen(req, timeout=5).status == 200
    assert cli.wait(10) == 0
    assert srv.poll() is None


def test_access_log_lines(procs, pki, tmp_path):
    log = tmp_path / "access.log"
    outbound, cadmin, _, cli, _ = two_route_mesh(procs, pki, client_extra=f"  accessLog: {{path: {log}}}\n")
    send(outbound, "server", "/echo?token=secret", 1)
    send(outbound, "nosuch", "/x", 1)
    wait_until(lambda: log.exists() and len(log.read_text().splitlines()) == 2, what="two access-log lines")
    # Each worker queues its own lines for the writer thread, so two requests served by two
    # workers may be written in either order: tell them apart by their status.
    lines = [json.loads(l) for l in log.read_text().splitlines()]
    ok, nr = sorted(lines, key=lambda l: l["response_code"])
    assert ok["path"] == "/echo" and "secret" not in json.dumps(ok)     # no query by default
    assert ok["response_code"] == 200 and ok["response_flags"] == "-" and ok["route"] == "client-sidecar.main"
    assert ok["upstream"].startswith("127.0.0.1:") and len(ok["request_id"]) == 36
    assert ok["destination_principal"].endswith("/sa/server") and ok["bytes_sent"] > 0
    assert nr["response_code"] == 404 and nr["response_flags"] == "NR" and nr["reason"] == "no route for this host"
    assert nr["authority"] == "nosuch" and nr["upstream"] is None
