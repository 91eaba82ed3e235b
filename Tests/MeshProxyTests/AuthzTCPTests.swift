import XCTest
@testable import MeshConfig
@testable import MeshProxy
import MeshCore

/// AuthorizationPolicy verdicts on TCP connections (`AuthzTable.allowsTCP`, Istio's rules for
/// TCP workloads): by the caller's principal (plaintext has none) and namespace, by the service
/// port (`ports`, `notPorts`); an ALLOW operation naming HTTP-only fields (paths, methods) never
/// matches a TCP connection, a DENY rule ignores them and denies on its other conditions.
final class AuthzTCPTests: XCTestCase {
    typealias P = AuthorizationPolicy

    let client = Array("spiffe://cluster.local/ns/default/sa/client".utf8)
    let other = Array("spiffe://cluster.local/ns/default/sa/other".utf8)
    let shop = Array("spiffe://cluster.local/ns/shop/sa/ratings".utf8)
    let plaintext: [UInt8] = []

    func table(_ policies: (P.Action, [P.Rule])...) throws -> AuthzTable {
        try XCTUnwrap(AuthzTable(policies.enumerated().map { P(name: "p\($0.offset)", namespace: "default", selector: [("app", "cache")],
                                                               action: $0.element.0, rules: $0.element.1) },
                                 namespace: "default", labels: [("app", "cache")]))
    }

    func from(principals: [String] = [], notPrincipals: [String] = [], namespaces: [String] = []) -> P.Source {
        P.Source(principals: principals, notPrincipals: notPrincipals, namespaces: namespaces)
    }

    func op(paths: [String] = [], notPaths: [String] = [], methods: [String] = [], notMethods: [String] = [],
            ports: [Int] = [], notPorts: [Int] = []) -> P.Operation {
        P.Operation(paths: paths, notPaths: notPaths, methods: methods, notMethods: notMethods, ports: ports, notPorts: notPorts)
    }

    func rule(_ from: [P.Source] = [], _ to: [P.Operation] = []) -> P.Rule { P.Rule(from: from, to: to) }

    /// An HTTP request's verdict on the same table, for contrast.
    func allowsHTTP(_ t: AuthzTable, _ principal: [UInt8], _ method: String, _ path: String, port: Int) -> Bool {
        let a = principal + [0], m = Array(method.utf8) + [0], p = Array(path.utf8) + [0]
        return a.withUnsafeBufferPointer { ap in m.withUnsafeBufferPointer { mp in p.withUnsafeBufferPointer { pp in
            t.allows(principal: ap.baseAddress!, a.count - 1, method: mp.baseAddress!, m.count - 1, path: pp.baseAddress!, p.count - 1, port: port)
        } } }
    }

    // MARK: refusals first

    func testDenyByPrincipalRefusesThatCallerOnly() throws {
        let t = try table((.deny, [rule([from(principals: ["cluster.local/ns/default/sa/client"])])]))
        XCTAssertFalse(t.allowsTCP(principal: client, port: 6379))
        XCTAssertTrue(t.allowsTCP(principal: other, port: 6379))
        XCTAssertTrue(t.allowsTCP(principal: plaintext, port: 6379), "a principal rule needs an identity; plaintext has none")
        let prefix = try table((.deny, [rule([from(principals: ["cluster.local/ns/default/*"])])]))
        XCTAssertFalse(prefix.allowsTCP(principal: client, port: 6379))
        XCTAssertFalse(prefix.allowsTCP(principal: other, port: 6379))
        XCTAssertTrue(prefix.allowsTCP(principal: shop, port: 6379))
    }

    func testDenyNotPrincipalsStarRefusesPlaintextCallers() throws {
        // Istio's "require mTLS" policy: every caller without a mesh identity is denied.
        let t = try table((.deny, [rule([from(notPrincipals: ["*"])])]))
        XCTAssertFalse(t.allowsTCP(principal: plaintext, port: 6379))
        XCTAssertTrue(t.allowsTCP(principal: client, port: 6379))
        XCTAssertTrue(t.allowsTCP(principal: shop, port: 6379))
        XCTAssertFalse(allowsHTTP(t, plaintext, "GET", "/", port: 6379), "the same for HTTP requests")
        XCTAssertTrue(allowsHTTP(t, client, "GET", "/", port: 6379))
        // notPrincipals naming one caller: plaintext is not that caller either.
        let notClient = try table((.deny, [rule([from(notPrincipals: ["cluster.local/ns/default/sa/client"])])]))
        XCTAssertTrue(notClient.allowsTCP(principal: client, port: 6379))
        XCTAssertFalse(notClient.allowsTCP(principal: other, port: 6379))
        XCTAssertFalse(notClient.allowsTCP(principal: plaintext, port: 6379))
    }

    func testDenyByPortAndNotPorts() throws {
        let t = try table((.deny, [rule([], [op(ports: [6379])])]))
        XCTAssertFalse(t.allowsTCP(principal: client, port: 6379))
        XCTAssertFalse(t.allowsTCP(principal: plaintext, port: 6379))
        XCTAssertTrue(t.allowsTCP(principal: client, port: 6380))
        XCTAssertTrue(t.allowsTCP(principal: client, port: 0), "an unknown port matches no ports rule")
        let not = try table((.deny, [rule([], [op(notPorts: [6379])])]))
        XCTAssertTrue(not.allowsTCP(principal: client, port: 6379))
        XCTAssertFalse(not.allowsTCP(principal: client, port: 6380))
        // Principal and port in one rule: both must match.
        let both = try table((.deny, [rule([from(principals: ["cluster.local/ns/default/sa/client"])], [op(ports: [6379])])]))
        XCTAssertFalse(both.allowsTCP(principal: client, port: 6379))
        XCTAssertTrue(both.allowsTCP(principal: client, port: 6380))
        XCTAssertTrue(both.allowsTCP(principal: other, port: 6379))
    }

    func testAnAllowNamingOnlyHTTPFieldsNeverMatchesATCPConnection() throws {
        for o in [op(methods: ["GET"]), op(paths: ["/*"]), op(notPaths: ["/admin"]), op(notMethods: ["DELETE"]),
                  op(methods: ["*"], ports: [6379])] {
            let t = try table((.allow, [rule([from(principals: ["*"])], [o])]))
            XCTAssertFalse(t.allowsTCP(principal: client, port: 6379), "\(o)")
            XCTAssertFalse(t.allowsTCP(principal: plaintext, port: 6379), "\(o)")
            XCTAssertTrue(allowsHTTP(t, client, "GET", "/", port: 6379), "an HTTP request it names is allowed: \(o)")
        }
        // Another operation of the same rule without HTTP fields still matches.
        let t = try table((.allow, [rule([], [op(methods: ["GET"]), op(ports: [6379])])]))
        XCTAssertTrue(t.allowsTCP(principal: client, port: 6379))
        XCTAssertFalse(t.allowsTCP(principal: client, port: 6380))
    }

    func testADenyRuleIgnoresItsHTTPFieldsOnTCP() throws {
        // Istio: the deny is more restrictive on TCP, not less.
        let t = try table((.deny, [rule([], [op(methods: ["POST"])])]))
        XCTAssertFalse(t.allowsTCP(principal: client, port: 6379))
        XCTAssertTrue(allowsHTTP(t, client, "GET", "/", port: 6379), "HTTP: only POST is denied")
        let scoped = try table((.deny, [rule([from(principals: ["cluster.local/ns/default/sa/client"])], [op(paths: ["/admin*"], ports: [6379])])]))
        XCTAssertFalse(scoped.allowsTCP(principal: client, port: 6379))
        XCTAssertTrue(scoped.allowsTCP(principal: client, port: 6380), "its port condition still applies")
        XCTAssertTrue(scoped.allowsTCP(principal: other, port: 6379), "its principal condition still applies")
    }

    // MARK: allowed

    func testAllowByPrincipalNamespaceAndPort() throws {
        let t = try table((.allow, [rule([from(principals: ["cluster.local/ns/default/sa/other"])], [op(ports: [6379])]),
                                    rule([from(namespaces: ["shop"])])]))
        XCTAssertTrue(t.allowsTCP(principal: other, port: 6379))
        XCTAssertFalse(t.allowsTCP(principal: other, port: 6380))
        XCTAssertFalse(t.allowsTCP(principal: client, port: 6379))
        XCTAssertTrue(t.allowsTCP(principal: shop, port: 6380), "the namespace rule has no port condition")
        XCTAssertFalse(t.allowsTCP(principal: plaintext, port: 6379), "no identity, no namespace")
        // DENY wins over ALLOW.
        let d = try table((.allow, [rule()]), (.deny, [rule([from(namespaces: ["shop"])])]))
        XCTAssertTrue(d.allowsTCP(principal: client, port: 6379))
        XCTAssertFalse(d.allowsTCP(principal: shop, port: 6379))
        // An ALLOW policy with no rule allows nothing.
        XCTAssertFalse(try table((.allow, [])).allowsTCP(principal: client, port: 6379))
    }
}
