import XCTest
import MeshCore
@testable import MeshConfig
@testable import MeshProxy

/// The collector and exporter settings: the flags (each error names its flag), meshd's pushed
/// endpoint (`spec.otlpEndpoint`, checked by the same parser), and which one a sidecar uses
/// (its own flag wins), with tracing off when there is none.
final class TraceExportConfigTests: XCTestCase {
    private func options(_ args: [String]) throws -> TraceExportOptions {
        let flags = try Flags(args, specs: TraceExportOptions.flagNames.map { Flags.Spec($0) })
        return try TraceExportOptions.parse(flags)
    }

    private func refused(_ args: [String], _ contains: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try options(args), file: file, line: line) { e in
            XCTAssertTrue("\(e)".contains(contains), "\(e)", file: file, line: line)
        }
    }

    func testBadFlagsAreRefusedByName() {
        refused(["--otlp-endpoint", "https://collector:4318"], "--otlp-endpoint: https is not supported yet")
        refused(["--otlp-endpoint", "collector:4318"], "--otlp-endpoint: expected http://")
        refused(["--otlp-endpoint", "grpc://collector:4317"], "--otlp-endpoint: expected http://")
        refused(["--otlp-endpoint", "http://"], "--otlp-endpoint: no host")
        refused(["--otlp-endpoint", "http://:4318"], "--otlp-endpoint: no host")
        refused(["--otlp-endpoint", "http://c:0"], "--otlp-endpoint: bad port")
        refused(["--otlp-endpoint", "http://c:65536"], "--otlp-endpoint: bad port")
        refused(["--otlp-endpoint", "http://c:x"], "--otlp-endpoint: bad port")
        refused(["--otlp-endpoint", "http://c/v1/traces?x=1"], "--otlp-endpoint: expected http://HOST[:PORT][/PATH] without")
        refused(["--otlp-endpoint", "http://user@c/"], "--otlp-endpoint: expected http://HOST[:PORT][/PATH] without")
        refused(["--otlp-endpoint", "http://c /"], "--otlp-endpoint: expected http://HOST[:PORT][/PATH] without")
        refused(["--otlp-endpoint", "http://[::1/"], "--otlp-endpoint: unclosed [")
        refused(["--trace-batch-size", "0"], "trace-batch-size")
        refused(["--trace-batch-size", "many"], "trace-batch-size")
        refused(["--trace-queue-size", "8"], "trace-queue-size")
        refused(["--trace-flush-interval", "5ms"], "--trace-flush-interval: expected a duration from 10ms to 60s")
        refused(["--trace-flush-interval", "2m"], "--trace-flush-interval: expected a duration from 10ms to 60s")
        refused(["--trace-flush-interval", "soon"], "--trace-flush-interval")
    }

    func testFlagsAndDefaults() throws {
        let d = try options([])
        XCTAssertNil(d.endpoint)
        XCTAssertEqual(d.batchSize, 512)
        XCTAssertEqual(d.queueSize, 512)
        XCTAssertEqual(d.flushInterval, 1_000_000_000)
        let o = try options(["--otlp-endpoint", "http://collector", "--trace-batch-size", "64", "--trace-queue-size", "100",
                             "--trace-flush-interval", "250ms"])
        XCTAssertEqual(o.endpoint, OTLPEndpoint(host: "collector", port: 4318, path: "/v1/traces"))
        XCTAssertEqual(o.batchSize, 64)
        XCTAssertEqual(o.queueSize, 100)
        XCTAssertEqual(o.flushInterval, 250_000_000)
        XCTAssertEqual(try OTLPEndpoint.parse("http://[::1]:9999/otlp/v1/traces"), OTLPEndpoint(host: "::1", port: 9999, path: "/otlp/v1/traces"))
        XCTAssertEqual(try OTLPEndpoint.parse("http://10.0.0.5:4318/").path, "/v1/traces")
        XCTAssertEqual(try OTLPEndpoint.parse("http://[::1]:9999/x").description, "http://[::1]:9999/x")
    }

    private func pushed(_ endpointLine: String, flag: OTLPEndpoint? = nil) throws -> Bootstrap {
        var o = MeshModeOptions(service: "a")
        o.appPort = 8080
        let tls = Bootstrap.TLSFiles(certChain: "c", privateKey: "k", trustBundle: "b", trustDomain: "cluster.local", minTLS13: true)
        var b = try Bootstrap.meshMode(o, tls: tls)
        b.traceExport.endpoint = flag
        return try b.withPushedConfig("""
            apiVersion: sidecar.mesh/v1alpha1
            kind: ProxyConfig
            metadata: {name: proxy-config}
            spec:
              clusters: []
              routes: []
            \(endpointLine)
            """, source: "meshd")
    }

    func testPushedEndpointIsCheckedByTheSameParser() {
        XCTAssertThrowsError(try pushed("  otlpEndpoint: \"https://c:4318\"")) { e in
            XCTAssertTrue("\(e)".contains("spec.otlpEndpoint"), "\(e)")
            XCTAssertTrue("\(e)".contains("https is not supported yet"), "\(e)")
        }
        XCTAssertThrowsError(try pushed("  otlpEndpoint: [1]")) { e in XCTAssertTrue("\(e)".contains("otlpEndpoint"), "\(e)") }
        XCTAssertThrowsError(try pushed("  otlpEndpoints: \"http://c\"")) { e in XCTAssertTrue("\(e)".contains("otlpEndpoints"), "\(e)") }
    }

    func testOwnFlagWinsOverThePushedEndpointAndNoneMeansOff() throws {
        let flag = OTLPEndpoint(host: "own", port: 4318, path: "/v1/traces")
        let viaPush = try pushed("  otlpEndpoint: \"http://meshd-collector:4318\"")
        XCTAssertEqual(viaPush.pushedOTLPEndpoint?.host, "meshd-collector")
        var t = TracingTable(viaPush, settings: TracingSettings(), routes: [], clusters: [])
        XCTAssertTrue(t.enabled)
        XCTAssertEqual(t.endpoint?.host, "meshd-collector")
        t = TracingTable(try pushed("  otlpEndpoint: \"http://meshd-collector:4318\"", flag: flag), settings: TracingSettings(), routes: [], clusters: [])
        XCTAssertEqual(t.endpoint, flag)
        t = TracingTable(try pushed(""), settings: TracingSettings(), routes: [], clusters: [])
        XCTAssertFalse(t.enabled)
        XCTAssertNil(t.endpoint)
        // The sampling rate of the Telemetry default (1%) in parts per million.
        XCTAssertEqual(t.samplePPM, 10_000)
    }

    /// No exporter thread (the system refuses one): a warning, tracing stays off (no worker
    /// gets a queue), the sidecar runs on; the next snapshot tries again.
    func testNoExporterThreadLeavesTracingOff() throws {
        var b = try Bootstrap.parse(DataPathReviewTests.limitConfig(), file: "t.yaml")
        b.traceExport.endpoint = OTLPEndpoint(host: "127.0.0.1", port: 9, path: "/v1/traces")
        let snap = try ProxySnapshot(bootstrap: b, version: "t")
        XCTAssertTrue(snap.tracing.enabled)
        let worker = Worker(id: 0, snapshot: snap)
        let saved = TraceExporter.spawnThread
        defer { TraceExporter.spawnThread = saved }
        TraceExporter.spawnThread = { _ in nil }
        var exporter: TraceExporter? = nil
        TraceExporter.attach(&exporter, snap, workers: [worker], running: false)
        XCTAssertNil(exporter)
        XCTAssertNil(worker.spans)
        TraceExporter.spawnThread = saved
        TraceExporter.attach(&exporter, snap, workers: [worker], running: false)
        XCTAssertNotNil(exporter)
        XCTAssertNotNil(worker.spans)
        exporter?.stop()
    }

    func testPushedSpecLine() {
        OTLPEndpoint.Pushed.set(nil)
        XCTAssertEqual(OTLPEndpoint.Pushed.specLine, "")
        OTLPEndpoint.Pushed.set(OTLPEndpoint(host: "c", port: 4318, path: "/v1/traces"))
        defer { OTLPEndpoint.Pushed.set(nil) }
        XCTAssertEqual(OTLPEndpoint.Pushed.specLine, "  otlpEndpoint: \"http://c:4318/v1/traces\"\n")
    }
}

/// Telemetry's tracing settings compiled into the snapshot's table.
final class TracingTableTests: XCTestCase {
    private func bootstrap() throws -> Bootstrap {
        var o = MeshModeOptions(service: "reviews")
        o.appPort = 8080
        o.labels = [("app", "reviews"), ("version", "v2")]
        let tls = Bootstrap.TLSFiles(certChain: "c", privateKey: "k", trustBundle: "b", trustDomain: "example.org", minTLS13: true)
        var b = try Bootstrap.meshMode(o, tls: tls)
        b.traceExport.endpoint = OTLPEndpoint(host: "c", port: 4318, path: "/v1/traces")
        return b
    }

    private func contains(_ bytes: [UInt8], _ key: String, _ value: String) -> Bool {
        let kv = TracingTable.keyValue(9, key, value)
        return bytes.count >= kv.count && (0...(bytes.count - kv.count)).contains { Array(bytes[$0..<($0 + kv.count)]) == kv }
    }

    func testDisableSpanReporting() throws {
        var s = TracingSettings()
        s.disableSpanReporting = true
        s.randomSamplingPercentage = 100
        let t = TracingTable(try bootstrap(), settings: s, routes: [], clusters: [])
        XCTAssertTrue(t.enabled)                 // headers still rewritten
        XCTAssertFalse(t.reportSpans)
        XCTAssertEqual(t.samplePPM, 1_000_000)
        XCTAssertTrue(TracingTable(try bootstrap(), settings: TracingSettings(), routes: [], clusters: []).reportSpans)
    }

    func testCustomTagsCompiled() throws {
        setenv("MESH_TRACE_TEST_ZONE", "eu-1", 1)
        unsetenv("MESH_TRACE_TEST_UNSET")
        var s = TracingSettings()
        s.randomSamplingPercentage = 0.5
        s.customTags = [TracingTag(name: "team", source: .literal("checkout")),
                        TracingTag(name: "zone", source: .environment(name: "MESH_TRACE_TEST_ZONE", defaultValue: "none")),
                        TracingTag(name: "rack", source: .environment(name: "MESH_TRACE_TEST_UNSET", defaultValue: "r0")),
                        TracingTag(name: "gone", source: .environment(name: "MESH_TRACE_TEST_UNSET", defaultValue: nil)),
                        TracingTag(name: "caller", source: .header(name: "X-Caller", defaultValue: "unknown"))]
        let t = TracingTable(try bootstrap(), settings: s, routes: ["r1"], clusters: ["outbound|80||reviews"])
        XCTAssertEqual(t.samplePPM, 5_000)
        let w = t.workloadAttributes
        XCTAssertTrue(contains(w, "team", "checkout"))
        XCTAssertTrue(contains(w, "zone", "eu-1"))
        XCTAssertTrue(contains(w, "rack", "r0"))
        XCTAssertFalse(contains(w, "gone", ""))
        XCTAssertTrue(contains(w, "istio.canonical_service", "reviews"))
        XCTAssertTrue(contains(w, "istio.canonical_revision", "v2"))
        XCTAssertTrue(contains(w, "istio.mesh_id", "example.org"))
        XCTAssertEqual(t.headerTags.count, 1)
        XCTAssertEqual(t.headerTags.first?.header, Array("x-caller".utf8))
        XCTAssertEqual(t.headerTags.first?.defaultValue, Array("unknown".utf8))
        XCTAssertEqual(t.routeAttributes, [TracingTable.keyValue(9, "route_name", "r1")])
        XCTAssertEqual(t.clusterAttributes, [TracingTable.keyValue(9, "upstream_cluster", "outbound|80||reviews")])
        // The resource: service.name is Istio's <canonical service>.<namespace>.
        let name = TracingTable.keyValue(1, "service.name", "reviews.default")
        XCTAssertTrue((0...(t.resource.count - name.count)).contains { Array(t.resource[$0..<($0 + name.count)]) == name })
    }
}
