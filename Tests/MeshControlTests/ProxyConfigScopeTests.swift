import XCTest
import MeshCore
@testable import MeshConfig
@testable import MeshControl
#if canImport(Glibc)
import Glibc
#endif

/// Each sidecar gets only what it needs: its scope (namespace, labels, the Sidecar resource that
/// applies) chooses the clusters, routes and documents it is sent; a change outside its scope
/// leaves its config, and digest, as they were; meshd refuses what a scope would refuse; and
/// registrations that only add an endpoint stay cheap.
final class ProxyConfigScopeTests: XCTestCase {
    var dir = ""

    override func setUp() {
        var t = Array("/tmp/scope-XXXXXX".utf8CString)
        dir = String(cString: mkdtemp(&t)!)
    }

    override func tearDown() { _ = system("rm -rf '\(dir)'") }

    func input(_ text: String, _ file: String = "in.yaml") -> [ConfigStore.Input] { [ConfigStore.Input(file: file, text: text)] }
    func id(_ ns: String, _ sa: String) -> String { "spiffe://cluster.local/ns/\(ns)/sa/\(sa)" }

    /// The pushed text applied as a mesh-mode sidecar of `ns` applies it (throws what it would NACK).
    func pushed(_ text: String, ns: String) throws -> Bootstrap {
        var o = MeshModeOptions(service: "probe")
        o.namespace = ns
        o.appPort = 1
        let tls = Bootstrap.TLSFiles(certChain: "x", privateKey: "x", trustBundle: "x", trustDomain: "cluster.local", minTLS13: true)
        return try Bootstrap.meshMode(o, tls: tls).withPushedConfig(text, source: "push")
    }

    static let aLocal = """
        apiVersion: networking.istio.io/v1
        kind: Sidecar
        metadata: {name: default, namespace: a}
        spec:
          egress:
          - hosts: ["./*"]
        """

    /// reviews in a, ratings in b (two endpoints), a caller-only sidecar in each.
    func mesh() throws -> ConfigStore {
        let store = try ConfigStore(stateDir: dir)
        try store.register(identity: id("a", "reviews"), service: "reviews", namespace: "a", labels: [("app", "reviews")], address: "127.0.0.1:15006")
        try store.register(identity: id("b", "ratings"), service: "ratings", namespace: "b", labels: [("app", "ratings")], address: "127.0.0.1:15016")
        return store
    }

    func testACallerLimitedToItsNamespaceGetsNoClusterOfAnother() throws {
        let store = try mesh()
        let before = try pushed(store.proxyConfig(identity: id("a", "web"), node: "n1").text, ns: "a")
        XCTAssertEqual(before.clusters.map(\.name), ["ratings.b", "reviews.a"], "no Sidecar: every host")
        _ = try store.apply(input(Self.aLocal))
        let a = try pushed(store.proxyConfig(identity: id("a", "web"), node: "n1").text, ns: "a")
        XCTAssertEqual(a.clusters.map(\.name), ["reviews.a"])
        XCTAssertEqual(a.routes.flatMap(\.hosts), ["reviews.a"])
        // A workload of a (registered) gets the same scope; b, with no Sidecar, still sees all.
        let reviews = store.proxyConfig(identity: id("a", "reviews"), node: "127.0.0.1:15006")
        XCTAssertEqual(reviews.digest, store.proxyConfig(identity: id("a", "web"), node: "n1").digest)
        let b = try pushed(store.proxyConfig(identity: id("b", "x"), node: "n2").text, ns: "b")
        XCTAssertEqual(b.clusters.map(\.name), ["ratings.b", "reviews.a"])
    }

    func testAVirtualServiceItSeesPullsInTheClusterItRoutesTo() throws {
        let store = try mesh()
        let vs = """
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: reviews, namespace: a}
            spec:
              hosts: [reviews]
              http:
              - route:
                - destination: {host: ratings.b.svc.cluster.local, subset: v1}
            ---
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {name: ratings, namespace: b}
            spec:
              host: ratings
              subsets: [{name: v1, labels: {app: ratings}}]
            """
        _ = try store.apply(input(Self.aLocal + "\n---\n" + vs))
        let text = store.proxyConfig(identity: id("a", "web"), node: "n1").text
        let a = try pushed(text, ns: "a")
        XCTAssertEqual(a.clusters.map(\.name), ["ratings.b", "reviews.a"], "the route's destination comes along")
        XCTAssertEqual(a.routes.flatMap(\.hosts), [], "reviews.a is routed by the VirtualService; ratings.b has no route of its own")
        XCTAssertEqual(a.traffic.virtualServices.map(\.name), ["reviews"])
        XCTAssertEqual(a.traffic.destinationRules.map { "\($0.namespace)/\($0.name)" }, ["b/ratings"], "its subsets come too")
    }

    func testAnApplyInOneNamespaceLeavesTheOthersDigestAlone() throws {
        let store = try mesh()
        _ = try store.apply(input(Self.aLocal))
        let a0 = store.proxyConfig(identity: id("a", "web"), node: "n1")
        let b0 = store.proxyConfig(identity: id("b", "ratings"), node: "127.0.0.1:15016")
        let vsB = """
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: ratings, namespace: b}
            spec:
              hosts: [ratings]
              http:
              - timeout: 3s
                route:
                - destination: {host: ratings}
            """
        let v = try store.apply(input(vsB)).version
        let a1 = store.proxyConfig(identity: id("a", "web"), node: "n1")
        let b1 = store.proxyConfig(identity: id("b", "ratings"), node: "127.0.0.1:15016")
        XCTAssertEqual(a1.version, v)
        // meshctl status / apply --wait: a's sidecar ACKed the old version and is current; one that
        // meshd sent nothing (a restarted meshd) but that reports the digest in force is too.
        let nonce = store.sent(identity: id("a", "web"), node: "n1", version: v - 1, digest: a0.digest)
        XCTAssertTrue(store.answered(identity: id("a", "web"), node: "n1", version: v - 1, nonce: nonce, error: nil))
        store.seen(identity: id("a", "other"), node: "n3", digest: a0.digest)
        store.seen(identity: id("a", "stale"), node: "n4", digest: "00ff")
        let status = Dictionary(uniqueKeysWithValues: store.proxies().map { ($0.node, store.isCurrent($0)) })
        XCTAssertEqual(status, ["n1": true, "n3": true, "n4": false])
        XCTAssertEqual(a1.digest, a0.digest, "ns a's scope does not see ns b")
        XCTAssertEqual(a1.text, a0.text)
        XCTAssertNotEqual(b1.digest, b0.digest)
        // An endpoint added to b's service: the same.
        try store.register(identity: id("b", "ratings"), service: "ratings", namespace: "b", labels: [("app", "ratings")], address: "127.0.0.2:15016")
        XCTAssertEqual(store.proxyConfig(identity: id("a", "web"), node: "n1").digest, a0.digest)
        XCTAssertNotEqual(store.proxyConfig(identity: id("b", "ratings"), node: "127.0.0.1:15016").digest, b1.digest)
        // A policy of namespace b is not sent to a (and one of a is).
        let policy = { (ns: String) in "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: \(ns)}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]\n" }
        _ = try store.apply(input(policy("b")))
        XCTAssertEqual(store.proxyConfig(identity: id("a", "web"), node: "n1").digest, a0.digest)
        _ = try store.apply(input(policy("a")))
        let a2 = try pushed(store.proxyConfig(identity: id("a", "web"), node: "n1").text, ns: "a")
        XCTAssertEqual(a2.traffic.authorizationPolicies.map(\.namespace), ["a"])
    }

    func testEveryScopeRendersOnceAVersionAndPassesTheSidecarsCheck() throws {
        let store = try mesh()
        let webOnly = """
            apiVersion: networking.istio.io/v1
            kind: Sidecar
            metadata: {name: web, namespace: a}
            spec:
              workloadSelector: {labels: {app: web}}
              egress:
              - hosts: ["b/*"]
            """
        _ = try store.apply(input(Self.aLocal + "\n---\n" + webOnly))
        try store.register(identity: id("a", "web"), service: "web", namespace: "a", labels: [("app", "web")], address: "127.0.0.1:15026")
        let n0 = store.scopedRenderCount
        // 300 sidecars of three scopes: a's default (callers), a/web (the web workload), b (no Sidecar).
        var digests = Set<String>()
        for i in 0..<100 {
            for (ident, node) in [(id("a", "caller"), "c\(i)"), (id("a", "web"), "127.0.0.1:15026"), (id("b", "caller"), "d\(i)")] {
                digests.insert(store.proxyConfig(identity: ident, node: node).digest)
            }
        }
        XCTAssertEqual(digests.count, 3)
        XCTAssertEqual(store.scopedRenderCount - n0, 3, "one render per scope and version")
        let web = try pushed(store.proxyConfig(identity: id("a", "web"), node: "127.0.0.1:15026").text, ns: "a")
        XCTAssertEqual(web.clusters.map(\.name), ["ratings.b"], "the Sidecar with a selector wins over a's default")
        for (ident, node, ns) in [(id("a", "caller"), "c0", "a"), (id("b", "caller"), "d0", "b")] {
            XCTAssertNoThrow(try Bootstrap.checkPushed(store.proxyConfig(identity: ident, node: node).text, namespace: ns, source: "push"))
        }
        // A new version renders again, once per scope asked for.
        try store.register(identity: id("b", "ratings"), service: "ratings", namespace: "b", labels: [("app", "ratings")], address: "127.0.0.3:15016")
        let n1 = store.scopedRenderCount
        for i in 0..<50 { _ = store.proxyConfig(identity: id("a", "caller"), node: "c\(i)") }
        XCTAssertEqual(store.scopedRenderCount - n1, 1)
    }

    func testASidecarThatMakesAScopeInvalidIsRefusedNamingItsFileAndLine() throws {
        let store = try mesh()
        try store.register(identity: id("a", "reviews"), service: "reviews", namespace: "a",
                           labels: [("app", "reviews"), ("version", "v2")], address: "127.0.0.2:15006")
        let byApp = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: by-app, namespace: a}\nspec:\n  workloadSelector: {labels: {app: reviews}}\n  egress: [{hosts: [\"./*\"]}]\n"
        let v = try store.apply(input(byApp, "app.yaml")).version
        // A second Sidecar selecting the v2 workload leaves its scope undefined (Istio's words).
        let byVersion = "# the v2 canary may call anything\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: by-version, namespace: a}\nspec:\n  workloadSelector:\n    labels: {version: v2}\n  egress: [{hosts: [\"*/*\"]}]\n"
        XCTAssertThrowsError(try store.apply(input(byVersion, "canary.yaml"))) { e in
            let e = e as! ConfigError
            XCTAssertEqual(e.file, "canary.yaml")
            XCTAssertEqual(e.line, 6, "\(e)")
            XCTAssertEqual(e.path, "Sidecar a/by-version: spec.workloadSelector")
            XCTAssertTrue(e.message.contains("selects the workload reviews.a at 127.0.0.2:15006, as Sidecar a/by-app does"), e.message)
        }
        XCTAssertEqual(store.version, v)
        XCTAssertEqual(store.documents().map(\.name), ["by-app"])
    }

    func testTwoSidecarsSelectingOneWorkloadAreRefused() throws {
        let store = try mesh()
        let two = """
            apiVersion: networking.istio.io/v1
            kind: Sidecar
            metadata: {name: by-app, namespace: a}
            spec:
              workloadSelector: {labels: {app: reviews}}
              egress: [{hosts: ["./*"]}]
            ---
            apiVersion: networking.istio.io/v1
            kind: Sidecar
            metadata: {name: by-version, namespace: a}
            spec:
              workloadSelector: {labels: {version: v2}}
              egress: [{hosts: ["*/*"]}]
            """
        let v = try store.apply(input(two, "two.yaml")).version
        // A workload both select cannot register; one only one selects can.
        XCTAssertThrowsError(try store.register(identity: id("a", "reviews"), service: "reviews", namespace: "a",
                                                labels: [("app", "reviews"), ("version", "v2")], address: "127.0.0.2:15006")) { e in
            XCTAssertTrue("\(e)".contains("Sidecar a/by-version: spec.workloadSelector: selects the workload reviews.a at 127.0.0.2:15006, as Sidecar a/by-app does"), "\(e)")
        }
        XCTAssertEqual(store.version, v)
        XCTAssertNoThrow(try store.register(identity: id("a", "reviews"), service: "reviews", namespace: "a",
                                            labels: [("app", "reviews"), ("version", "v1")], address: "127.0.0.2:15006"))
    }

    func testStoredKindAndDelete() throws {
        let store = try mesh()
        let r = try store.apply(input(Self.aLocal))
        XCTAssertEqual(r.documents.map { "\($0.kind) \($0.namespace)/\($0.name) \($0.outcome.rawValue)" }, ["Sidecar a/default created"])
        XCTAssertFalse(store.proxyConfig(identity: id("a", "web"), node: "n").text.contains("kind: Sidecar"), "meshd's alone")
        _ = try store.apply(input(Self.aLocal), delete: true)
        XCTAssertEqual(try pushed(store.proxyConfig(identity: id("a", "web"), node: "n").text, ns: "a").clusters.count, 2)
        // Kept across a restart.
        _ = try store.apply(input(Self.aLocal))
        let again = try ConfigStore(stateDir: dir)
        XCTAssertEqual(try pushed(again.proxyConfig(identity: id("a", "web"), node: "n").text, ns: "a").clusters.map(\.name), ["reviews.a"])
    }

    func testARegistrationThatOnlyAddsAnEndpointSkipsTheWholeCheckAndStaysCorrect() throws {
        let store = try ConfigStore(stateDir: dir)
        // 2,000 workloads of 200 services in 10 namespaces, and a VirtualService per namespace.
        var docs: [String] = []
        for n in 0..<10 {
            docs.append("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: s\(n * 20), namespace: ns\(n)}\nspec:\n  hosts: [s\(n * 20)]\n  http:\n  - timeout: 2s\n    route:\n    - destination: {host: s\(n * 20)}\n")
        }
        _ = try store.apply(input(docs.joined(separator: "---\n")))
        let t0 = Clock.monotonicNanos()
        var tNew: UInt64 = 0
        for i in 0..<2000 {
            if i == 200 { tNew = Clock.monotonicNanos() - t0 }
            let svc = i % 200, ns = svc / 20
            try store.register(identity: id("ns\(ns)", "s\(svc)"), service: "s\(svc)", namespace: "ns\(ns)", labels: [("app", "s\(svc)")],
                               address: "10.0.\(i / 250).\(i % 250 + 1):15006")
        }
        let seconds = Double(Clock.monotonicNanos() - t0) / 1e9
        print("registered 2,000 workloads of 200 services in \(seconds) s (the first 200, each a new service: \(Double(tNew) / 1e9) s)")
        XCTAssertLessThan(seconds, 120, "a generous bound: with the whole check on each registration this is minutes")
        XCTAssertEqual(store.workloads().count, 2000)
        // The fast path kept the config one every sidecar accepts, with every endpoint in it.
        for ns in ["ns0", "ns9"] {
            let b = try pushed(store.proxyConfig(identity: id(ns, "x"), node: "n").text, ns: ns)
            XCTAssertEqual(b.clusters.count, 200)
            XCTAssertEqual(b.clusters.first { $0.name == "s199.ns9" }?.endpoints.count, 10)
        }
        // A workload that would change the service (another protocol) still takes the whole path and is refused.
        XCTAssertThrowsError(try store.register(identity: id("ns0", "s0"), service: "s0", namespace: "ns0", labels: [], address: "10.9.0.1:15006",
                                                serviceProtocol: "TCP"))
    }
}
