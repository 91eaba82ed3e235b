"""Distributed tracing end to end (issue 20, docs/observability.md "Tracing"): two Python apps
instrumented with the real OpenTelemetry SDK (exporting with its own OTLP/HTTP exporter) call
each other through two mesh-mode sidecars; an OTLP/HTTP receiver here decodes every
`ExportTraceServiceRequest` with opentelemetry-proto and checks one trace id and the parent
chain app client -> sidecar client -> sidecar server -> app server, B3 in and out, Telemetry
sampling at 0% and 100% (`meshctl apply`), the span tags, retries as separate client spans, and
that a stopped collector costs no failed request and bounded memory."""

import http.client
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import SIDECAR, Meshd, client_config, free_port, http_get, server_config, wait_ready, wait_until

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse

B_HOST = "b.default.svc.cluster.local"

# The instrumented app: a SERVER span per request in the caller's context (W3C, the SDK's
# default propagator); `/call/...` makes a CLIENT span and calls the next app through its sidecar.
APP = r'''
import json, sys, threading, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from opentelemetry import trace, propagate
from opentelemetry.trace import SpanKind
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

name, port, collector, outbound, next_host = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
provider = TracerProvider(resource=Resource.create({"service.name": "app-" + name}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=collector, timeout=2)))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("test-app")
failed_once = set()
lock = threading.Lock()

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path.startswith("/plain"):
            # No span: the load of the stopped-collector test measures the sidecars only.
            self.send_response(200)
            self.send_header("content-length", "3")
            self.end_headers()
            self.wfile.write(b"ok\n")
            return
        ctx = propagate.extract({k.lower(): v for k, v in self.headers.items()})
        with tracer.start_as_current_span(name + " server", context=ctx, kind=SpanKind.SERVER) as span:
            out = {"received": {k.lower(): v for k, v in self.headers.items()},
                   "span": format(span.get_span_context().span_id, "016x")}
            status = 200
            grpc_status = None
            if self.path.startswith("/grpc-status/"):
                grpc_status = self.path.rsplit("/", 1)[1]
            elif self.path.startswith("/fail-once/"):
                with lock:
                    first = self.path not in failed_once
                    failed_once.add(self.path)
                status = 503 if first else 200
            elif self.path.startswith("/call/"):
                with tracer.start_as_current_span(name + " client", kind=SpanKind.CLIENT) as c:
                    h = {"Host": next_host}
                    propagate.inject(h)
                    out["client_span"] = format(c.get_span_context().span_id, "016x")
                    req = urllib.request.Request("http://127.0.0.1:%s/%s" % (outbound, self.path[6:]), headers=h)
                    with urllib.request.urlopen(req, timeout=10) as r:
                        out["next"] = json.loads(r.read())
            body = json.dumps(out).encode()
            self.send_response(status)
            if grpc_status is not None:
                # A trailers-only gRPC answer: HTTP 200 with its grpc-status in the head.
                self.send_header("grpc-status", grpc_status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

srv = ThreadingHTTPServer(("127.0.0.1", port), H)
print("READY", flush=True)
srv.serve_forever()
'''


class Collector:
    """An OTLP/HTTP receiver: every span of every POST /v1/traces, with its resource's attributes."""

    def __init__(self):
        self.spans = []
        self.requests = []
        self.paths = set()
        self.lock = threading.Lock()
        col = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                with col.lock:
                    col.requests.append((self.path, self.headers.get("content-type")))
                    for rs in req.resource_spans:
                        res = {a.key: a.value.string_value for a in rs.resource.attributes}
                        col.paths.add((res.get("service.name"), self.path))
                        for ss in rs.scope_spans:
                            for s in ss.spans:
                                col.spans.append((res, s))
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def of_trace(self, trace_hex):
        with self.lock:
            return [(r, s) for r, s in self.spans if s.trace_id.hex() == trace_hex]

    def sidecar_spans(self, service=None):
        with self.lock:
            return [(r, s) for r, s in self.spans if r.get("telemetry.sdk.name") == "swift-mesh"
                    and (service is None or r.get("service.name") == service)]


def attrs(span):
    return {a.key: a.value.string_value for a in span.attributes}


def get(port, path, host=B_HOST, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path, headers={"Host": host, **(headers or {})})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """meshd (--otlp-endpoint: the receiver's /pushed/v1/traces); sidecar a with its own
    --otlp-endpoint (the receiver's /v1/traces), sidecar b with none (meshd's is pushed); both
    with a queue of 64 spans and 50 ms flushes; the instrumented apps behind them. Module
    scope: every test shares one mesh."""
    from conftest import Procs
    tmp = tmp_path_factory.mktemp("tracing")
    procs = Procs(tmp)
    col = Collector()
    try:
        app_src = tmp / "traced_app.py"
        app_src.write_text(APP)
        m = Meshd(procs, extra=["--otlp-endpoint", f"http://127.0.0.1:{col.port}/pushed/v1/traces"])
        flags = ["--trace-flush-interval", "50ms", "--trace-queue-size", "64", "--trace-batch-size", "32"]
        b_port, a_port = free_port(), free_port()
        bp, badmin, _, bout = m.sidecar("b-sidecar", "b", app_port=b_port, extra=flags)
        ap, aadmin, _, aout = m.sidecar("a-sidecar", "a", app_port=a_port, extra=flags + ["--otlp-endpoint", col.url])
        for name, port, out in (("b", b_port, bout), ("a", a_port, aout)):
            p = procs.start([sys.executable, app_src, name, port, col.url, out, B_HOST], f"app-{name}")
            wait_until(lambda: p.poll() is None and b"READY" in p.log_path.read_bytes(), 15, what=f"app {name}")
        wait_until(lambda: get(aout, "/")[0] == 200, 20, what="a's sidecar reaches b")
        yield {"m": m, "col": col, "aout": aout, "aadmin": aadmin, "badmin": badmin, "a_app": a_port,
               "a_proc": ap, "b_proc": bp, "tmp": tmp}
    finally:
        procs.stop_all()
        col.stop()


def trace_of(received):
    """(trace id, parent span id) of a traceparent the app received."""
    _, t, s, _ = received["traceparent"].split("-")
    return t, s


def test_parent_chain_app_to_app_through_two_sidecars(traced):
    col = traced["col"]
    # The test calls app a directly (no trace context): a's SDK starts the trace and samples it.
    status, body = get(traced["a_app"], "/call/chain", host="a")
    assert status == 200, body
    out = json.loads(body)
    tid, b_parent = trace_of(out["next"]["received"])
    wait_until(lambda: len(col.of_trace(tid)) >= 5, 10,
               what=f"spans of the two apps and the two sidecars (got {[(r.get('service.name'), s.name) for r, s in col.of_trace(tid)]}, "
                    f"all {[(r.get('service.name'), s.name, s.trace_id.hex()) for r, s in col.spans]})")
    spans = col.of_trace(tid)
    assert len(spans) == 5, [(r.get("service.name"), s.name) for r, s in spans]
    by = {}
    for r, s in spans:
        by[(r["service.name"], s.kind)] = s
    server, client = 2, 3   # Span.SpanKind
    a_server, a_client = by[("app-a", server)], by[("app-a", client)]
    sa_client, sb_server = by[("a.default", client)], by[("b.default", server)]
    b_server = by[("app-b", server)]
    assert len(by) == 5 and ("app-b", client) not in by
    # app a server -> app a client -> sidecar a CLIENT -> sidecar b SERVER -> app b server.
    assert a_client.parent_span_id == a_server.span_id
    assert sa_client.parent_span_id == a_client.span_id
    assert sb_server.parent_span_id == sa_client.span_id
    assert b_server.parent_span_id == sb_server.span_id
    assert sb_server.span_id.hex() == b_parent
    assert {s.trace_id.hex() for _, s in spans} == {tid}
    assert sa_client.start_time_unix_nano <= sb_server.start_time_unix_nano <= sb_server.end_time_unix_nano <= sa_client.end_time_unix_nano
    assert sa_client.status.code == 0 and sb_server.status.code == 0
    with col.lock:
        assert all(ct == "application/x-protobuf" for _, ct in col.requests)
        # a's own --otlp-endpoint wins; b, without one, uses the endpoint meshd pushes.
        sidecar_paths = {(svc, p) for svc, p in col.paths if svc in ("a.default", "b.default")}
        assert sidecar_paths == {("a.default", "/v1/traces"), ("b.default", "/pushed/v1/traces")}, sidecar_paths


def test_span_tags(traced):
    col = traced["col"]
    status, body = get(traced["aout"], "/echo-tags?secret=1", headers={
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "user-agent": "tag-test/1.0",
        "x-request-id": "req-tags-1"})
    assert status == 200
    tid = "0af7651916cd43dd8448eb211c80319c"
    wait_until(lambda: len(col.sidecar_spans()) and len([1 for r, s in col.of_trace(tid) if r.get("telemetry.sdk.name") == "swift-mesh"]) == 2,
               10, what="the two sidecar spans")
    spans = {r["service.name"]: (r, s) for r, s in col.of_trace(tid) if r.get("telemetry.sdk.name") == "swift-mesh"}
    ra, ca = spans["a.default"]
    rb, sb = spans["b.default"]
    assert ca.parent_span_id.hex() == "b7ad6b7169203331"
    assert ca.kind == 3 and sb.kind == 2 and ca.name == f"{B_HOST}/*"
    a, b = attrs(ca), attrs(sb)
    for t in (a, b):
        assert t["http.method"] == "GET"
        assert t["http.url"] == f"http://{B_HOST}/echo-tags", t["http.url"]   # no query
        assert t["http.status_code"] == "200"
        assert t["http.protocol"] in ("HTTP/1.1", "HTTP/2")
        assert t["response_flags"] == "-"
        assert t["guid:x-request-id"] == "req-tags-1"
        assert t["user_agent"] == "tag-test/1.0"
        assert t["istio.namespace"] == "default" and t["istio.mesh_id"] == "cluster.local"
        assert t["peer.address"] == "127.0.0.1"
        assert t["downstream_cluster"] == "-"
        assert int(t["request_size"]) > 0 and int(t["response_size"]) > 0
        assert t["route_name"]
    assert a["http.protocol"] == "HTTP/1.1"
    assert a["istio.canonical_service"] == "a" and b["istio.canonical_service"] == "b"
    assert a["istio.canonical_revision"] == "latest"
    assert a["node_id"].startswith("sidecar~") and ".default~default.svc.cluster.local" in a["node_id"]
    assert "b" in a["upstream_cluster"] and a["upstream_cluster"] != "-"
    assert b["route_name"] == "inbound"
    assert ra["service.name"] == "a.default" and rb["service.name"] == "b.default"


def test_local_reply_is_an_error_span(traced):
    col = traced["col"]
    tid = "1af7651916cd43dd8448eb211c80319c"
    status, _ = get(traced["aout"], "/", host="nowhere.example", headers={
        "traceparent": f"00-{tid}-b7ad6b7169203331-01"})
    assert status == 404
    wait_until(lambda: col.of_trace(tid), 10, what="the NR span")
    (_, s), = col.of_trace(tid)
    assert s.status.code == 2 and s.status.message == "NR"
    assert attrs(s)["response_flags"] == "NR" and attrs(s)["http.status_code"] == "404"


def test_successful_local_reply_and_grpc_status_spans(traced):
    """A direct response 200 (a local reply without a response flag) is not an ERROR span; a
    gRPC answer (HTTP 200) with grpc-status 14 is (Envoy's upstream-error codes), 5 is not
    (a client error), and both carry `grpc.status_code`."""
    col = traced["col"]
    vs = traced["tmp"] / "direct.yaml"
    vs.write_text(f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: b-retry, namespace: default}}
spec:
  hosts: [{B_HOST}]
  http:
    - match: [{{uri: {{prefix: /direct}}}}]
      directResponse: {{status: 200, body: {{string: "open"}}}}
    - route: [{{destination: {{host: {B_HOST}}}}}]
""")
    traced["m"].ctl("apply", "-f", vs, "--wait")
    wait_until(lambda: get(traced["aout"], "/direct")[1] == b"open", 10, what="the direct response in force")
    tid = "5af7651916cd43dd8448eb211c80319c"
    status, body = get(traced["aout"], "/direct", headers={"traceparent": f"00-{tid}-b7ad6b7169203331-01"})
    assert (status, body) == (200, b"open")
    wait_until(lambda: col.of_trace(tid), 10, what="the direct response's span")
    (_, s), = col.of_trace(tid)
    assert s.status.code == 0, s.status
    assert attrs(s)["http.status_code"] == "200" and attrs(s)["response_flags"] == "-"
    grpc = {"content-type": "application/grpc"}
    for code, error in (("14", True), ("5", False), ("0", False)):
        tid = f"6af7651916cd43dd8448eb211c8031{int(code):02d}"
        status, _ = get(traced["aout"], f"/grpc-status/{code}", headers={**grpc, "traceparent": f"00-{tid}-b7ad6b7169203331-01"})
        assert status == 200
        wait_until(lambda: len([1 for r, s in col.of_trace(tid) if r.get("telemetry.sdk.name") == "swift-mesh"]) == 2, 10,
                   what=f"grpc-status {code} spans")
        for r, s in col.of_trace(tid):
            if r.get("telemetry.sdk.name") != "swift-mesh":
                continue
            assert attrs(s)["grpc.status_code"] == code and attrs(s)["http.status_code"] == "200"
            assert s.status.code == (2 if error else 0), (code, r.get("service.name"), s.status)


def test_b3_in_b3_out(traced):
    col = traced["col"]
    tid64 = "463ac35c9f6413ad"
    status, body = get(traced["aout"], "/b3", headers={
        "x-b3-traceid": tid64, "x-b3-spanid": "a2fb4a1d1a96d312", "x-b3-sampled": "1"})
    assert status == 200
    got = json.loads(body)["received"]
    wait_until(lambda: len(col.of_trace("0" * 16 + tid64)) == 3, 10, what="spans of the B3 trace")
    spans = {r["service.name"]: s for r, s in col.of_trace("0" * 16 + tid64)}
    ca, sb = spans["a.default"], spans["b.default"]
    assert ca.parent_span_id.hex() == "a2fb4a1d1a96d312"
    # B3 out, in the caller's form (64-bit trace id kept), parent = b's server span.
    assert got["x-b3-traceid"] == tid64
    assert got["x-b3-spanid"] == sb.span_id.hex()
    assert got["x-b3-parentspanid"] == ca.span_id.hex()
    assert got["x-b3-sampled"] == "1"
    # W3C always.
    assert got["traceparent"] == f"00-{'0' * 16}{tid64}-{sb.span_id.hex()}-01"
    # Single-header b3 with a 128-bit id and debug: sampled, written back in the same form.
    tid = "80f198ee56343ba864fe8b2a57d3eff7"
    status, body = get(traced["aout"], "/b3s", headers={"b3": f"{tid}-e457b5a2e4d86bd1-d-05e3ac9a4f6e3b90"})
    assert status == 200
    got = json.loads(body)["received"]
    wait_until(lambda: len(col.of_trace(tid)) == 3, 10, what="spans of the b3 trace")
    spans = {r["service.name"]: s for r, s in col.of_trace(tid)}
    assert got["b3"] == f"{tid}-{spans['b.default'].span_id.hex()}-d-{spans['a.default'].span_id.hex()}"
    assert "x-b3-traceid" not in got


def test_bad_headers_are_treated_as_absent(traced):
    col = traced["col"]
    bad = "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"   # all-zero parent id
    status, body = get(traced["aout"], "/bad", headers={"traceparent": bad, "tracestate": "k=v",
                                                        "x-b3-traceid": "XYZ", "x-b3-spanid": "a2fb4a1d1a96d312"})
    assert status == 200
    got = json.loads(body)["received"]
    tid, _ = trace_of(got)
    assert tid != "0af7651916cd43dd8448eb211c80319c"      # a new trace
    assert "tracestate" not in got and "x-b3-traceid" not in got and "x-b3-spanid" not in got
    # A valid traceparent keeps its tracestate as received.
    status, body = get(traced["aout"], "/good", headers={
        "traceparent": "00-2af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"})
    got = json.loads(body)["received"]
    assert got["tracestate"] == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    assert got["traceparent"].startswith("00-2af7651916cd43dd8448eb211c80319c-") and got["traceparent"].endswith("-00")
    # A repeated tracestate: not forwarded, while its valid traceparent still continues the trace.
    c = http.client.HTTPConnection("127.0.0.1", traced["aout"], timeout=10)
    c.putrequest("GET", "/dup", skip_host=True)
    c.putheader("Host", B_HOST)
    c.putheader("traceparent", "00-5af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
    c.putheader("tracestate", "a=1")
    c.putheader("tracestate", "b=2")
    c.endheaders()
    got = json.loads(c.getresponse().read())["received"]
    c.close()
    assert "tracestate" not in got
    assert got["traceparent"].startswith("00-5af7651916cd43dd8448eb211c80319c-")
    # sampled=0 honoured: nothing recorded for that trace.
    time.sleep(0.3)
    assert col.of_trace("2af7651916cd43dd8448eb211c80319c") == []


def apply_sampling(traced, pct, name, disable=False):
    path = traced["tmp"] / f"{name}.yaml"
    path.write_text(f"""
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: mesh-system}}
spec:
  tracing:
    - randomSamplingPercentage: {pct}
      disableSpanReporting: {"true" if disable else "false"}
      providers: [{{name: otel}}]
      customTags:
        team: {{literal: {{value: checkout}}}}
        caller: {{header: {{name: x-caller, defaultValue: unknown}}}}
""")
    traced["m"].ctl("apply", "-f", path, "--wait")


def test_sampling_zero_and_hundred_percent(traced):
    col = traced["col"]
    aout = traced["aout"]
    apply_sampling(traced, 0, "zero")
    before = len(col.sidecar_spans())
    for i in range(50):
        status, body = get(aout, f"/zero/{i}")
        assert status == 200
        # Headers still propagate: b's app sees a not-sampled traceparent.
        assert json.loads(body)["received"]["traceparent"].endswith("-00")
    time.sleep(0.4)
    assert len(col.sidecar_spans()) == before
    apply_sampling(traced, 100, "hundred")
    tids = set()
    for i in range(20):
        status, body = get(aout, f"/hundred/{i}", headers={"x-caller": "tester"} if i == 0 else None)
        assert status == 200
        tid, _ = trace_of(json.loads(body)["received"])
        tids.add(tid)
    wait_until(lambda: all(len(col.of_trace(t)) == 3 for t in tids), 10, what="100% sampled")
    spans = [s for t in tids for r, s in col.of_trace(t) if r.get("service.name") == "a.default"]
    assert len(spans) == 20
    assert all(attrs(s)["team"] == "checkout" for s in spans)
    assert sorted(attrs(s)["caller"] for s in spans).count("tester") == 1
    assert sorted(attrs(s)["caller"] for s in spans).count("unknown") == 19
    # disableSpanReporting: nothing recorded, the headers still rewritten for the next hop.
    apply_sampling(traced, 100, "disabled", disable=True)
    tid = "4af7651916cd43dd8448eb211c80319c"
    status, body = get(aout, "/disabled", headers={"traceparent": f"00-{tid}-b7ad6b7169203331-01"})
    assert status == 200
    got_tid, parent = trace_of(json.loads(body)["received"])
    assert got_tid == tid and parent != "b7ad6b7169203331"
    time.sleep(0.4)
    assert [r for r, s in col.of_trace(tid) if r.get("telemetry.sdk.name") == "swift-mesh"] == []
    assert len(col.of_trace(tid)) == 1        # app b's own span only
    apply_sampling(traced, 100, "hundred-again")


def test_retries_are_separate_client_spans(traced):
    col = traced["col"]
    vs = traced["tmp"] / "retry.yaml"
    vs.write_text(f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: b-retry, namespace: default}}
spec:
  hosts: [{B_HOST}]
  http:
    - route: [{{destination: {{host: {B_HOST}}}}}]
      retries: {{attempts: 2, retryOn: "5xx"}}
""")
    traced["m"].ctl("apply", "-f", vs, "--wait")
    tid = "3af7651916cd43dd8448eb211c80319c"
    wait_until(lambda: get(traced["aout"], f"/fail-once/{time.monotonic()}")[0] == 200, 10, what="the retry policy in force")
    status, _ = get(traced["aout"], "/fail-once/x", headers={"traceparent": f"00-{tid}-b7ad6b7169203331-01"})
    assert status == 200
    wait_until(lambda: len([1 for r, s in col.of_trace(tid) if r.get("service.name") == "b.default"]) == 2, 10,
               what="two server spans at b")
    spans = col.of_trace(tid)
    clients = sorted((s for r, s in spans if r.get("service.name") == "a.default"), key=lambda s: s.start_time_unix_nano)
    servers = [s for r, s in spans if r.get("service.name") == "b.default"]
    assert len(clients) == 2
    assert [attrs(s)["http.status_code"] for s in clients] == ["503", "200"]
    assert clients[0].status.code == 2 and clients[0].status.message == "" and clients[1].status.code == 0
    assert {s.parent_span_id.hex() for s in clients} == {"b7ad6b7169203331"}
    assert clients[0].span_id != clients[1].span_id
    # Each attempt forwarded its own span id: each server span's parent is one attempt.
    assert {s.parent_span_id for s in servers} == {s.span_id for s in clients}


def test_static_mode_sidecars_trace_too(traced, procs, pki):
    """Static mode: the same flags and code; a static file's Telemetry samples."""
    col = traced["col"]
    app = procs.app("static-app")
    inbound, sadmin, outbound, cadmin = free_port(), free_port(), free_port(), free_port()
    telemetry = """---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: t, namespace: default}
spec:
  tracing:
    - randomSamplingPercentage: 100
      customTags: {mode: {literal: {value: static}}}
"""
    files = {"static-server": server_config(pki, "static-server", inbound, sadmin, app) + telemetry,
             "static-client": client_config(pki, "static-client", outbound, cadmin, [inbound],
                                            sans=["spiffe://cluster.local/ns/default/sa/server"]) + telemetry}
    started = {}
    for name, text in files.items():
        path = procs.tmp / f"{name}.yaml"
        path.write_text(text)
        started[name] = procs.start([SIDECAR, "--config", path, "--otlp-endpoint", col.url, "--trace-flush-interval", "50ms"], name)
    wait_ready(started["static-server"], sadmin)
    wait_ready(started["static-client"], cadmin)
    status, body = get(outbound, "/echo", host="server")
    assert status == 200, body
    got = json.loads(body)["headers"]
    tid, parent = got["traceparent"][0].split("-")[1:3]
    wait_until(lambda: len(col.of_trace(tid)) == 2, 10, what="the two static sidecars' spans")
    spans = {r["service.name"]: s for r, s in col.of_trace(tid)}
    assert set(spans) == {"client.default", "server.default"}
    c, s = spans["client.default"], spans["server.default"]
    assert c.kind == 3 and s.kind == 2 and c.parent_span_id == b""
    assert s.parent_span_id == c.span_id and s.span_id.hex() == parent
    assert attrs(c)["mode"] == "static" and attrs(s)["mode"] == "static"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def prom(admin, name):
    _, body = http_get(f"http://127.0.0.1:{admin}/stats/prometheus")
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return int(float(line.split()[-1]))
    raise AssertionError(f"{name} missing")


def test_stopped_collector_costs_no_request_and_bounded_memory(traced):
    col = traced["col"]
    aout, aadmin = traced["aout"], traced["aadmin"]
    assert prom(aadmin, "mesh_tracing_spans_exported_total") > 0
    col.stop()
    pid = traced["a_proc"].pid
    # Warm up, then measure: thousands of sampled requests while nothing receives spans.
    conns = [http.client.HTTPConnection("127.0.0.1", aout, timeout=10) for _ in range(4)]
    failures = []

    def run(c, n, base):
        for i in range(n):
            c.request("GET", "/plain", headers={"Host": B_HOST, "traceparent": f"00-{base:016x}{i:016x}-b7ad6b7169203331-01"})
            r = c.getresponse()
            r.read()
            if r.status != 200:
                failures.append(r.status)

    def burst(n):
        ts = [threading.Thread(target=run, args=(c, n, 1000 + k)) for k, c in enumerate(conns)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    burst(100)
    rss0 = rss_kib(pid)
    dropped0 = prom(aadmin, "mesh_tracing_spans_dropped_total")
    burst(600)
    rss1 = rss_kib(pid)
    for c in conns:
        c.close()
    assert failures == []
    assert prom(aadmin, "mesh_tracing_spans_dropped_total") >= dropped0 + 2000
    assert prom(aadmin, "mesh_tracing_export_failures_total") > 0
    assert rss1 - rss0 < 8 * 1024, (rss0, rss1)
