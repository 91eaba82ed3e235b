import XCTest
@testable import MeshConfig

/// Istio's Sidecar resource: refusals first (host forms, fields not honoured, two namespace
/// defaults, a static file), then what is honoured and which Sidecar applies to a workload.
final class IstioSidecarTests: XCTestCase {
    func sidecar(_ spec: String, name: String = "default", namespace: String = "a", api: String = "networking.istio.io/v1") -> String {
        "apiVersion: \(api)\nkind: Sidecar\nmetadata: {name: \(name), namespace: \(namespace)}\nspec:\n" + spec
    }

    func refused(_ text: String, path: String, line: Int, _ fragments: [String], file: String = "sc.yaml",
                 line at: UInt = #line) {
        XCTAssertThrowsError(try IstioTraffic.parse(text, file: file), line: at) { e in
            let e = e as! ConfigError
            XCTAssertEqual(e.file, file, line: at)
            XCTAssertEqual(e.path, path, "\(e)", line: at)
            XCTAssertEqual(e.line, line, "\(e)", line: at)
            for f in fragments { XCTAssertTrue(e.message.contains(f), "'\(e.message)' lacks '\(f)'", line: at) }
        }
    }

    func testBadEgressHostFormsAreRefusedNamingTheHost() {
        let bad = ["reviews", "/reviews", "a/", "*/", "A/reviews", "a/Reviews", "a/*foo.com", "a/foo.*.com", "a/b/c", "-a/*",
                   "a/*.", "a/.reviews", "a/re views", "../*", "a/**"]
        for h in bad {
            refused(sidecar("  egress:\n  - hosts: [\"\(h)\"]\n"), path: "spec.egress[0].hosts[0]", line: 6, ["expected namespace/dnsName", "got \"\(h)\""])
        }
        // The second entry is the bad one, and named so.
        refused(sidecar("  egress:\n  - hosts: [\"./*\", \"nope\"]\n"), path: "spec.egress[0].hosts[1]", line: 6, ["got \"nope\""])
        refused(sidecar("  egress:\n  - hosts: []\n"), path: "spec.egress[0].hosts", line: 6, ["at least one host"])
        refused(sidecar("  egress:\n  - {}\n"), path: "spec.egress[0].hosts", line: 6, ["at least one host"])
        refused(sidecar("  egress: []\n"), path: "spec.egress", line: 5, ["needs spec.egress"])
        refused(sidecar("  workloadSelector: {labels: {app: x}}\n"), path: "spec.egress", line: 5, ["needs spec.egress"])
    }

    func testFieldsNotHonouredAreRefusedByName() {
        let hosts = "  egress:\n  - hosts: [\"./*\"]\n"
        refused(sidecar("  egress:\n  - hosts: [\"./*\"]\n    port: {number: 9080, protocol: HTTP, name: http}\n"),
                path: "spec.egress[0].port", line: 7, [IstioTraffic.notSupported])
        refused(sidecar("  egress:\n  - hosts: [\"./*\"]\n    bind: 127.0.0.1\n"), path: "spec.egress[0].bind", line: 7, [IstioTraffic.notSupported])
        refused(sidecar("  egress:\n  - hosts: [\"./*\"]\n    captureMode: NONE\n"), path: "spec.egress[0].captureMode", line: 7, [IstioTraffic.notSupported])
        refused(sidecar(hosts + "  ingress:\n  - port: {number: 9080}\n"), path: "spec.ingress", line: 7, [IstioTraffic.notSupported])
        refused(sidecar(hosts + "  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n"), path: "spec.outboundTrafficPolicy", line: 7, [IstioTraffic.notSupported])
        refused(sidecar(hosts + "  inboundConnectionPool: {http: {http1MaxPendingRequests: 1}}\n"), path: "spec.inboundConnectionPool", line: 7,
                [IstioTraffic.notSupported])
        refused(sidecar(hosts + "  egres: []\n"), path: "spec.egres", line: 7, ["unknown field"])
        refused(sidecar(hosts + "  workloadSelector: {matchLabels: {app: x}}\n"), path: "spec.workloadSelector.matchLabels", line: 7, ["unknown field"])
        refused(sidecar(hosts + "  workloadSelector: {labels: {}}\n"), path: "spec.workloadSelector.labels", line: 7, ["at least one label"])
        // Without ports every egress entry is the catch-all one; Istio allows one.
        refused(sidecar("  egress:\n  - hosts: [\"./*\"]\n  - hosts: [\"b/*\"]\n"), path: "spec.egress[1]", line: 7, ["only one egress entry"])
        refused(sidecar(hosts, api: "networking.istio.io/v2"), path: "apiVersion", line: 1, ["expected networking.istio.io/v1"])
    }

    func testTwoSidecarsWithoutSelectorInOneNamespaceAreRefused() {
        let two = sidecar("  egress:\n  - hosts: [\"./*\"]\n") + "---\n" + sidecar("  egress:\n  - hosts: [\"b/*\"]\n", name: "other")
        XCTAssertThrowsError(try IstioTraffic.parse(two, file: "sc.yaml")) { e in
            let e = e as! ConfigError
            XCTAssertEqual(e.path, "Sidecar a/other: metadata.name")
            XCTAssertTrue(e.message.contains("namespace a already has the Sidecar without a workloadSelector a/default"), e.message)
        }
        let same = sidecar("  egress:\n  - hosts: [\"./*\"]\n") + "---\n" + sidecar("  egress:\n  - hosts: [\"b/*\"]\n")
        refused(same, path: "metadata.name", line: 8, ["a second Sidecar a/default"])
        // One default per namespace, and any number with selectors: accepted.
        let ok = sidecar("  egress:\n  - hosts: [\"./*\"]\n") + "---\n" + sidecar("  egress:\n  - hosts: [\"./*\"]\n", namespace: "b")
            + "---\n" + sidecar("  workloadSelector: {labels: {app: x}}\n  egress:\n  - hosts: [\"*/*\"]\n", name: "x")
        XCTAssertEqual(try IstioTraffic.parse(ok, file: "sc.yaml").sidecars.count, 3)
    }

    func testAStaticFileRefusesASidecarByName() {
        let boot = """
        apiVersion: sidecar.mesh/v1alpha1
        kind: Bootstrap
        metadata: {name: web}
        spec:
          workload: {service: web}
          outbound: {port: 15001}
          clusters:
          - {name: reviews, tls: DISABLE, endpoints: ["127.0.0.1:9080"]}
          routes:
          - {hosts: [reviews], cluster: reviews}
        ---
        """
        XCTAssertThrowsError(try Bootstrap.parse(boot + "\n" + sidecar("  egress:\n  - hosts: [\"./*\"]\n"), file: "static.yaml")) { e in
            let e = e as! ConfigError
            XCTAssertEqual(e.path, "Sidecar a/default")
            XCTAssertTrue(e.message.contains("applied through meshd"), e.message)
        }
        XCTAssertNoThrow(try Bootstrap.parse(boot, file: "static.yaml"))
    }

    func testHonouredFieldsAndHostMatching() throws {
        let c = try IstioTraffic.parse(sidecar("  workloadSelector: {labels: {app: web}}\n  egress:\n  - hosts: [\"./*\", \"b/reviews.b.svc.cluster.local\", \"*/*.example.com\", \"~/*\", \"c/*\"]\n",
                                               api: "networking.istio.io/v1beta1"), file: "sc.yaml")
        let s = c.sidecars[0]
        XCTAssertEqual(s.namespace, "a")
        XCTAssertEqual(s.selector?.map { "\($0.0)=\($0.1)" }, ["app=web"])
        XCTAssertEqual(s.egressHosts.map(\.namespace), [.own, .named("b"), .any, .none, .named("c")])
        func sees(_ names: [String], _ ns: String, own: String = "a") -> Bool { s.egressHosts.contains { $0.selects(names: names, namespace: ns, own: own) } }
        XCTAssertTrue(sees(["ratings.a.svc.cluster.local", "ratings.a", "ratings"], "a"))
        XCTAssertTrue(sees(["reviews.b.svc.cluster.local", "reviews.b", "reviews"], "b"))
        XCTAssertFalse(sees(["ratings.b.svc.cluster.local", "ratings.b", "ratings"], "b"))
        XCTAssertTrue(sees(["api.example.com"], "z"))
        XCTAssertFalse(sees(["example.com"], "z"), "*.example.com needs a label before the suffix")
        XCTAssertFalse(sees(["api.example.org"], "z"))
        XCTAssertTrue(sees(["x.c.svc.cluster.local"], "c"))
        // "." is the namespace of the workload the Sidecar applies to.
        XCTAssertTrue(sees(["x.q.svc.cluster.local"], "q", own: "q"))
        XCTAssertFalse(sees(["x.q.svc.cluster.local"], "q"))
        // "~/*" selects nothing.
        XCTAssertFalse(IstioSidecar.egressHost("~/*")!.selects(names: ["x"], namespace: "", own: ""))
    }

    func testWhichSidecarApplies() throws {
        let root = sidecar("  egress:\n  - hosts: [\"./*\"]\n", name: "mesh-default", namespace: IstioSidecar.rootNamespace)
        let aDefault = sidecar("  egress:\n  - hosts: [\"./*\", \"b/*\"]\n")
        let aWeb = sidecar("  workloadSelector: {labels: {app: web}}\n  egress:\n  - hosts: [\"*/*\"]\n", name: "web")
        let all = try IstioTraffic.parse([root, aDefault, aWeb].joined(separator: "---\n"), file: "sc.yaml").sidecars
        func applying(_ ns: String, _ labels: [(String, String)]) -> [String] {
            IstioSidecar.applying(namespace: ns, labels: labels, in: all).map { "\($0.namespace)/\($0.name)" }
        }
        XCTAssertEqual(applying("a", [("app", "web"), ("version", "v1")]), ["a/web"], "a selector wins over the namespace default")
        XCTAssertEqual(applying("a", [("app", "db")]), ["a/default"])
        XCTAssertEqual(applying("a", []), ["a/default"], "a caller-only sidecar has no labels: the namespace default")
        XCTAssertEqual(applying("b", [("app", "web")]), ["mesh-system/mesh-default"], "the root namespace's default for namespaces without one")
        let noRoot = try IstioTraffic.parse(aDefault, file: "sc.yaml").sidecars
        XCTAssertEqual(IstioSidecar.applying(namespace: "b", labels: [], in: noRoot).count, 0)
    }
}
