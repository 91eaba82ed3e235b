import XCTest
import MeshCore
@testable import MeshConfig
@testable import MeshControl
#if canImport(Glibc)
import Glibc
#endif

/// meshd stores Telemetry documents, sends each sidecar those of its own and the root namespace
/// (the sidecar resolves selectors itself, as for the security policies), and refuses at apply
/// what a sidecar would refuse, naming file, line and field.
final class TelemetryScopeTests: XCTestCase {
    var dir = ""

    override func setUp() {
        var t = Array("/tmp/telem-scope-XXXXXX".utf8CString)
        dir = String(cString: mkdtemp(&t)!)
    }

    override func tearDown() { _ = system("rm -rf '\(dir)'") }

    func id(_ ns: String, _ sa: String) -> String { "spiffe://cluster.local/ns/\(ns)/sa/\(sa)" }

    func pushed(_ text: String, ns: String, labels: [(String, String)]) throws -> Bootstrap {
        var o = MeshModeOptions(service: "probe")
        o.namespace = ns
        o.appPort = 1
        let tls = Bootstrap.TLSFiles(certChain: "x", privateKey: "x", trustBundle: "x", trustDomain: "cluster.local", minTLS13: true)
        var b = try Bootstrap.meshMode(o, tls: tls).withPushedConfig(text, source: "push")
        b.workload.labels = labels
        return b
    }

    func telemetry(_ ns: String, _ name: String, _ spec: String) -> String {
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: \(name), namespace: \(ns)}\nspec:\n\(spec)"
    }

    func testStoredScopedAndResolvedBySidecars() throws {
        let store = try ConfigStore(stateDir: dir)
        try store.register(identity: id("a", "reviews"), service: "reviews", namespace: "a", labels: [("app", "reviews")], address: "127.0.0.1:15006")
        let docs = [
            telemetry(IstioSidecar.rootNamespace, "mesh-default", "  tracing: [{randomSamplingPercentage: 5}]\n"),
            telemetry("a", "logs", "  accessLogging: [{providers: [{name: envoy-json}]}]\n"),
            telemetry("b", "logs", "  accessLogging: [{disabled: true}]\n"),
        ].joined(separator: "---\n")
        _ = try store.apply([ConfigStore.Input(file: "t.yaml", text: docs)])
        let a = try pushed(store.proxyConfig(identity: id("a", "web"), node: "n1").text, ns: "a", labels: [("app", "web")])
        XCTAssertEqual(a.traffic.telemetries.map { "\($0.namespace)/\($0.name)" }.sorted(), ["a/logs", "\(IstioSidecar.rootNamespace)/mesh-default"])
        let s = TelemetrySettings.resolve(a.traffic.telemetries, namespace: "a", labels: a.workload.labels)
        XCTAssertEqual(s.tracing.randomSamplingPercentage, 5)
        XCTAssertEqual(s.accessLogging?.server.map(\.format), [.json])
        let c = try pushed(store.proxyConfig(identity: id("c", "web"), node: "n2").text, ns: "c", labels: [])
        XCTAssertEqual(c.traffic.telemetries.map(\.name), ["mesh-default"], "b's Telemetry is not sent to c")
        // Deleting a's leaves the mesh's.
        _ = try store.apply([ConfigStore.Input(file: "d.yaml", text: telemetry("a", "logs", "  {}\n"))], delete: true)
        let a2 = try pushed(store.proxyConfig(identity: id("a", "web"), node: "n1").text, ns: "a", labels: [])
        XCTAssertEqual(a2.traffic.telemetries.map(\.name), ["mesh-default"])
    }

    func testABadTelemetryIsRefusedAtApplyAndTheOneInForceStays() throws {
        let store = try ConfigStore(stateDir: dir)
        _ = try store.apply([ConfigStore.Input(file: "good.yaml", text: telemetry("a", "logs", "  accessLogging: [{}]\n"))])
        let before = store.proxyConfig(identity: id("a", "web"), node: "n1").digest
        let bad = telemetry("a", "logs", "  accessLogging:\n  - filter:\n      expression: \"request.path == '/'\"\n")
        XCTAssertThrowsError(try store.apply([ConfigStore.Input(file: "bad.yaml", text: bad)])) { e in
            let text = "\(e)"
            XCTAssertTrue(text.contains("bad.yaml:7"), text)
            XCTAssertTrue(text.contains("spec.accessLogging[0].filter.expression"), text)
        }
        let second = telemetry("a", "other", "  tracing: [{}]\n")
        XCTAssertThrowsError(try store.apply([ConfigStore.Input(file: "two.yaml", text: second)])) { e in
            XCTAssertTrue("\(e)".contains("at most one Telemetry without a selector per namespace"), "\(e)")
        }
        XCTAssertEqual(store.proxyConfig(identity: id("a", "web"), node: "n1").digest, before)
    }
}
