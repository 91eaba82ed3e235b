"""gRPC through both sidecars: a Python grpcio client (h2c to the outbound listener) -> h2 over
mTLS -> the inbound sidecar -> h2c to a grpcio server. Unary and bidirectional streaming, status
codes and trailing metadata kept, a 10 MB message."""

from concurrent import futures

import pytest

import grpc  # Python grpcio (installed by .ci/run and scripts/setup-deps.sh)

from conftest import client_config, free_port, server_config, stats, wait_ready

MAX = 32 * 1024 * 1024
OPTS = [("grpc.max_send_message_length", MAX), ("grpc.max_receive_message_length", MAX)]


class Handler(grpc.GenericRpcHandler):
    def service(self, details):
        m = details.method
        if m == "/test.Echo/Unary":
            def unary(req, ctx):
                ctx.set_trailing_metadata((("x-trailer", "kept"),))
                return req[::-1]
            return grpc.unary_unary_rpc_method_handler(unary)
        if m == "/test.Echo/Fail":
            def fail(req, ctx):
                ctx.set_trailing_metadata((("x-why", "policy"),))
                ctx.abort(grpc.StatusCode.PERMISSION_DENIED, "not for you")
            return grpc.unary_unary_rpc_method_handler(fail)
        if m == "/test.Echo/Bidi":
            def bidi(it, ctx):
                for msg in it:
                    yield b"echo:" + msg
            return grpc.stream_stream_rpc_method_handler(bidi)
        return None


@pytest.fixture
def grpc_mesh(procs, pki):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=OPTS)
    server.add_generic_rpc_handlers((Handler(),))
    app_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    inbound, sadmin = free_port(), free_port()
    cfg = server_config(pki, "grpc-server-sidecar", inbound, sadmin, app_port).replace(
        "    headerTimeout: 2s\n", "    headerTimeout: 2s\n    appProtocol: GRPC\n", 1)
    srv = procs.sidecar(cfg, "server")
    outbound, cadmin = free_port(), free_port()
    cli = procs.sidecar(client_config(pki, "grpc-client-sidecar", outbound, cadmin, [inbound]), "client")
    wait_ready(srv, sadmin)
    wait_ready(cli, cadmin)
    channel = grpc.insecure_channel(f"127.0.0.1:{outbound}", options=OPTS + [("grpc.default_authority", "server")])
    yield channel, cadmin, sadmin
    channel.close()
    server.stop(0)


def test_unary_with_trailing_metadata(grpc_mesh):
    channel, cadmin, sadmin = grpc_mesh
    call = channel.unary_unary("/test.Echo/Unary")
    resp, c = call.with_call(b"hello", timeout=10)
    assert resp == b"olleh"
    assert dict(c.trailing_metadata())["x-trailer"] == "kept"
    assert c.code() == grpc.StatusCode.OK
    assert stats(cadmin)["http2_downstream_connections_total"] >= 1     # h2c from the app
    assert stats(sadmin)["http2_downstream_connections_total"] >= 1     # h2 between sidecars


def test_status_codes_and_details_are_preserved(grpc_mesh):
    channel, _, _ = grpc_mesh
    with pytest.raises(grpc.RpcError) as e:
        channel.unary_unary("/test.Echo/Fail")(b"x", timeout=10)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert e.value.details() == "not for you"
    assert dict(e.value.trailing_metadata())["x-why"] == "policy"
    with pytest.raises(grpc.RpcError) as e:
        channel.unary_unary("/test.Echo/Nope")(b"x", timeout=10)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_bidirectional_streaming(grpc_mesh):
    channel, _, _ = grpc_mesh
    msgs = [f"m{i}".encode() for i in range(50)]
    out = list(channel.stream_stream("/test.Echo/Bidi")(iter(msgs), timeout=20))
    assert out == [b"echo:" + m for m in msgs]


def test_ten_megabyte_message(grpc_mesh):
    channel, _, _ = grpc_mesh
    big = bytes(range(256)) * (10 * 1024 * 1024 // 256)
    resp = channel.unary_unary("/test.Echo/Unary")(big, timeout=60)
    assert resp == big[::-1]


def test_http1_caller_reaches_an_h2_app(grpc_mesh, procs):
    """An HTTP/1.1 request (gRPC framing sent by curl) crosses to the h2c gRPC app; the response
    comes back chunked with the gRPC trailers."""
    import struct
    import subprocess
    msg = b"ping"
    frame = b"\x00" + struct.pack(">I", len(msg)) + msg
    cfg = [p for p in procs.procs if "client" in str(p.log_path)][0]
    # The outbound port is in the client sidecar's config file.
    text = (cfg.log_path.parent / "client.yaml").read_text()
    port = int(text.split("outbound:")[1].split("port:")[1].split()[0])
    r = subprocess.run(["curl", "-sS", "--http1.1", "--raw", "-D", "-", "-H", "Host: server", "-H", "content-type: application/grpc",
                        "-H", "te: trailers", "--data-binary", "@-", f"http://127.0.0.1:{port}/test.Echo/Unary"],
                       input=frame, capture_output=True, timeout=20)
    out = r.stdout
    assert out.startswith(b"HTTP/1.1 200"), out[:300]
    assert b"transfer-encoding: chunked" in out.lower()
    assert b"grpc-status: 0" in out                      # trailers after the last chunk
    assert (b"\x00\x00\x00\x00\x04" + msg[::-1]) in out


def test_grpc_status_in_metrics(grpc_mesh):
    from conftest import http_get
    channel, cadmin, sadmin = grpc_mesh
    channel.unary_unary("/test.Echo/Unary")(b"x", timeout=10)
    with pytest.raises(grpc.RpcError):
        channel.unary_unary("/test.Echo/Fail")(b"x", timeout=10)
    for admin, reporter in ((cadmin, "source"), (sadmin, "destination")):
        text = http_get(f"http://127.0.0.1:{admin}/stats/prometheus")[1].decode()
        lines = [l for l in text.splitlines() if l.startswith("istio_requests_total{") and f'reporter="{reporter}"' in l]
        statuses = {l.split('grpc_response_status="')[1].split('"')[0] for l in lines}
        assert {"0", "7"} <= statuses, lines
        assert all('request_protocol="grpc"' in l for l in lines), lines
