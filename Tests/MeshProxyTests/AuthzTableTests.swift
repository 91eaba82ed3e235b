import XCTest
@testable import MeshConfig
@testable import MeshProxy
import MeshCore

/// AuthorizationPolicy semantics (Istio's): DENY first, then ALLOW if any exists; rules are OR'd,
/// from/to inside a rule AND'ed; principal, path and method patterns (exact, prefix*, *suffix, *).
final class AuthzTableTests: XCTestCase {
    typealias P = AuthorizationPolicy

    func policy(_ action: P.Action, selector: [(String, String)]? = nil, ns: String = "default", _ rules: [P.Rule]) -> P {
        P(name: "p", namespace: ns, selector: selector, action: action, rules: rules)
    }

    func allows(_ t: AuthzTable, _ principal: String, _ method: String, _ path: String) -> Bool {
        let a = Array(principal.utf8) + [0], m = Array(method.utf8) + [0], p = Array(path.utf8) + [0]
        return a.withUnsafeBufferPointer { ap in m.withUnsafeBufferPointer { mp in p.withUnsafeBufferPointer { pp in
            t.allows(principal: ap.baseAddress!, a.count - 1, method: mp.baseAddress!, m.count - 1, path: pp.baseAddress!, p.count - 1)
        } } }
    }

    let productpage = "spiffe://cluster.local/ns/default/sa/productpage"
    let ratings = "spiffe://cluster.local/ns/shop/sa/ratings"

    func testNoPolicyAllowsEverything() {
        XCTAssertNil(AuthzTable([], namespace: "default", labels: [("app", "reviews")]))
        let other = policy(.deny, selector: [("app", "details")], [P.Rule()])
        XCTAssertNil(AuthzTable([other], namespace: "default", labels: [("app", "reviews")]), "selector does not match")
        XCTAssertNil(AuthzTable([policy(.deny, ns: "prod", [P.Rule()])], namespace: "default", labels: []), "another namespace")
    }

    func testAllowListsPrincipalsPathsMethods() throws {
        var r = P.Rule()
        r.from = [P.Source(principals: ["cluster.local/ns/default/sa/productpage"], notPrincipals: [], namespaces: [])]
        r.to = [P.Operation(paths: ["/api/*", "/health"], notPaths: [], methods: ["GET"], notMethods: [])]
        let t = try XCTUnwrap(AuthzTable([policy(.allow, selector: [("app", "reviews")], [r])], namespace: "default", labels: [("app", "reviews"), ("version", "v1")]))
        XCTAssertTrue(allows(t, productpage, "GET", "/api/v1?x=1"))
        XCTAssertTrue(allows(t, productpage, "GET", "/health"))
        XCTAssertFalse(allows(t, productpage, "GET", "/healthz"), "exact path")
        XCTAssertFalse(allows(t, productpage, "POST", "/api/v1"))
        XCTAssertFalse(allows(t, ratings, "GET", "/api/v1"))
        XCTAssertFalse(allows(t, "", "GET", "/api/v1"), "a plaintext caller has no principal")
    }

    func testDenyWinsAndNegations() throws {
        var deny = P.Rule()
        deny.to = [P.Operation(paths: ["/admin*"], notPaths: [], methods: [], notMethods: [])]
        var allowShop = P.Rule()
        allowShop.from = [P.Source(principals: [], notPrincipals: ["*/sa/ratings"], namespaces: ["shop", "default"])]
        let t = try XCTUnwrap(AuthzTable([policy(.deny, [deny]), policy(.allow, [allowShop])], namespace: "default", labels: []))
        XCTAssertFalse(allows(t, productpage, "GET", "/admin/users"))
        XCTAssertTrue(allows(t, productpage, "GET", "/"))
        XCTAssertFalse(allows(t, ratings, "GET", "/"), "notPrincipals")
        XCTAssertTrue(allows(t, "spiffe://cluster.local/ns/shop/sa/cart", "DELETE", "/x"), "namespace shop")
        XCTAssertFalse(allows(t, "spiffe://cluster.local/ns/prod/sa/cart", "GET", "/x"), "namespace prod")
    }

    func testEmptyRulesMeanWhatIstioSays() throws {
        // ALLOW with no rules allows nothing; ALLOW with one empty rule allows everything.
        let none = try XCTUnwrap(AuthzTable([policy(.allow, [])], namespace: "default", labels: []))
        XCTAssertFalse(allows(none, productpage, "GET", "/"))
        let all = try XCTUnwrap(AuthzTable([policy(.allow, [P.Rule()])], namespace: "default", labels: []))
        XCTAssertTrue(allows(all, productpage, "GET", "/"))
        // DENY with no rules denies nothing.
        let denyNone = try XCTUnwrap(AuthzTable([policy(.deny, [])], namespace: "default", labels: []))
        XCTAssertTrue(allows(denyNone, productpage, "GET", "/"))
    }

    func testParsingRefusesWhatIsNotSupported() {
        func refused(_ spec: String, _ want: String, file: StaticString = #filePath, line: UInt = #line) {
            let text = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n" + spec
            XCTAssertThrowsError(try IstioTraffic.parse(text, file: "a.yaml"), file: file, line: line) {
                XCTAssertTrue("\($0)".contains(want), "\($0)", file: file, line: line)
            }
        }
        refused("  action: CUSTOM\n", "CUSTOM is not supported")
        refused("  rules:\n  - when:\n    - key: destination.ip\n      values: [a]\n", "not supported")
        refused("  rules:\n  - to: [{operation: {paths: [admin]}}]\n", "starts with / or *")
        refused("  rules:\n  - from: [{source: {principal: [x]}}]\n", "unknown field")
        refused("  selector: {labels: {app: x}}\n", "unknown field")
        XCTAssertNoThrow(try IstioTraffic.parse("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  action: DENY\n  rules:\n  - to: [{operation: {methods: [DELETE]}}]\n", file: "a.yaml"))
    }

    func testPathNormalisation() {
        func norm(_ s: String) -> String? {
            let b = Array(s.utf8) + [0]
            let out = ByteBuffer(capacity: 64)
            let ok = b.withUnsafeBufferPointer { AuthzTable.normalize($0.baseAddress!, b.count - 1, into: out) }
            return ok ? String(decoding: UnsafeBufferPointer(start: out.readPointer, count: out.readableBytes), as: UTF8.self) : nil
        }
        XCTAssertEqual(norm("/admin"), "/admin")
        XCTAssertEqual(norm("//admin"), "/admin")
        XCTAssertEqual(norm("/./admin"), "/admin")
        XCTAssertEqual(norm("/x/../admin"), "/admin")
        XCTAssertEqual(norm("/../../admin"), "/admin")
        XCTAssertEqual(norm("/%61dmin?x=1"), "/admin")
        XCTAssertEqual(norm("/a%20b"), "/a%20b", "reserved escapes stay")
        XCTAssertEqual(norm("/.well-known/x"), "/.well-known/x")
        XCTAssertEqual(norm("/a/b/."), "/a/b/")
        XCTAssertEqual(norm(""), "/")
        XCTAssertNil(norm("/%2Fadmin"))
        XCTAssertNil(norm("/%5cadmin"))
        XCTAssertNil(norm("/a\\b"))
        XCTAssertNil(norm("/admin#frag"))
        XCTAssertNil(norm("/%zz"))
        XCTAssertNil(norm("/%6"))
    }
}
