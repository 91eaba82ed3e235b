import XCTest
@testable import MeshConfig
@testable import MeshProxy
import MeshCore
import MeshHTTP

/// AuthorizationPolicy conditions, address blocks and AUDIT, parsed from YAML as users write
/// them (refusals first) and decided by the compiled table.
final class AuthzConditionTests: XCTestCase {
    func parse(_ spec: String) throws(ConfigError) -> IstioTraffic.Config {
        try IstioTraffic.parse("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n" + spec, file: "t.yaml")
    }

    func refused(_ spec: String, _ path: String, _ words: String, file: StaticString = #filePath, line: UInt = #line) {
        do throws(ConfigError) {
            _ = try parse(spec)
            XCTFail("accepted", file: file, line: line)
        } catch {
            XCTAssertEqual(error.path, path, file: file, line: line)
            XCTAssertTrue(error.message.contains(words), error.message, file: file, line: line)
        }
    }

    func testRefusals() {
        refused("  action: CUSTOM\n", "spec.action", "CUSTOM is not supported")
        refused("  rules:\n  - when: [{key: destination.ip, values: [1.2.3.4]}]\n", "spec.rules[0].when[0].key", "not supported yet")
        refused("  rules:\n  - when: [{key: connection.sni, values: [a]}]\n", "spec.rules[0].when[0].key", "not supported yet")
        refused("  rules:\n  - when: [{key: \"request.auth.claim[a]\", values: [a]}]\n", "spec.rules[0].when[0].key", "unknown condition key")
        refused("  rules:\n  - when: [{key: request.auth.principal}]\n", "spec.rules[0].when[0]", "values or notValues")
        refused("  rules:\n  - when: [{key: destination.port, values: [http]}]\n", "spec.rules[0].when[0].values", "port number")
        refused("  rules:\n  - when: [{key: source.ip, values: [10.0.0.0/33]}]\n", "spec.rules[0].when[0].values", "CIDR")
        refused("  rules:\n  - from: [{source: {ipBlocks: [\"10.0.0.1/x\"]}}]\n", "spec.rules[0].from[0].source.ipBlocks", "CIDR")
        refused("  rules:\n  - from: [{source: {serviceAccounts: [a]}}]\n", "spec.rules[0].from[0].source.serviceAccounts", "not supported yet")
        refused("  rules:\n  - when: [{key: \"request.headers[x]\", values: [a], extra: 1}]\n", "spec.rules[0].when[0].extra", "unknown field")
    }

    func testCIDR() {
        XCTAssertNil(AuthzCIDR("10.0.0.0/33"))
        XCTAssertNil(AuthzCIDR("10.0.0/8"))
        XCTAssertNil(AuthzCIDR("::1/129"))
        XCTAssertNil(AuthzCIDR("10.0.0.0/+8"))
        XCTAssertNil(AuthzCIDR(""))
        let ten = AuthzCIDR("10.1.2.3/8")!
        XCTAssertTrue(ten.contains(IPEndpoint(ipv4: 0x0A_FF_00_01, port: 1)))
        XCTAssertFalse(ten.contains(IPEndpoint(ipv4: 0x0B_00_00_01, port: 1)))
        XCTAssertTrue(AuthzCIDR("0.0.0.0/0")!.contains(IPEndpoint(ipv4: 0x7F_00_00_01, port: 1)))
        XCTAssertFalse(AuthzCIDR("0.0.0.0/0")!.contains(IPEndpoint(high: 0, low: 1, port: 1)), "IPv4 blocks hold no IPv6 address")
        XCTAssertTrue(AuthzCIDR("::1")!.contains(IPEndpoint(high: 0, low: 1, port: 1)))
        XCTAssertTrue(AuthzCIDR("fd00::/8")!.contains(IPEndpoint(high: 0xFD12_0000_0000_0000, low: 5, port: 1)))
        XCTAssertFalse(AuthzCIDR("fd00::/8")!.contains(IPEndpoint(high: 0xFE12_0000_0000_0000, low: 5, port: 1)))
    }

    func decide(_ t: AuthzTable, principal: String = "spiffe://cluster.local/ns/shop/sa/web", path: String = "/",
                source: IPEndpoint? = nil, port: Int = 8080, headers: [(String, String)] = []) -> Bool {
        let head = MessageHead()
        for (n, v) in headers { head.addField(Array(n.utf8), Array(v.utf8)) }
        let a = Array(principal.utf8) + [0], m = Array("GET".utf8) + [0], p = Array(path.utf8) + [0]
        return a.withUnsafeBufferPointer { ap in m.withUnsafeBufferPointer { mp in p.withUnsafeBufferPointer { pp in
            t.allows(principal: ap.baseAddress!, a.count - 1, method: mp.baseAddress!, m.count - 1, path: pp.baseAddress!, p.count - 1,
                     port: port, attrs: AuthzTable.RequestAttributes(jwt: nil, head: head, source: source))
        } } }
    }

    func testSourceConditionsAndBlocks() throws {
        let cfg = try parse("""
          rules:
          - from: [{source: {ipBlocks: ["10.0.0.0/8"], notIpBlocks: ["10.9.0.0/16"]}}]
          - when:
            - {key: source.namespace, values: [shop]}
            - {key: source.principal, values: ["cluster.local/ns/shop/*"]}
            - {key: destination.port, values: ["8080"]}
            - {key: remote.ip, notValues: ["192.168.0.0/16"]}
            - {key: "request.headers[x-team]", values: ["blue", "green*"]}
        """)
        let t = try XCTUnwrap(AuthzTable(cfg.authorizationPolicies, namespace: "default", labels: []))
        XCTAssertTrue(t.needsAddress)
        let ten = IPEndpoint(ipv4: 0x0A_01_00_01, port: 1), tenNine = IPEndpoint(ipv4: 0x0A_09_00_01, port: 1)
        let lan = IPEndpoint(ipv4: 0xC0_A8_00_01, port: 1), lo = IPEndpoint(ipv4: 0x7F_00_00_01, port: 1)
        XCTAssertTrue(decide(t, source: ten))
        XCTAssertFalse(decide(t, source: tenNine), "notIpBlocks")
        XCTAssertFalse(decide(t, source: nil), "an unknown address is in no block")
        XCTAssertTrue(decide(t, source: lo, headers: [("x-team", "green-2")]))
        XCTAssertFalse(decide(t, source: lo, headers: [("x-team", "red")]))
        XCTAssertFalse(decide(t, source: lo), "no header: values fail")
        XCTAssertFalse(decide(t, source: lan, headers: [("x-team", "blue")]), "remote.ip notValues")
        XCTAssertFalse(decide(t, principal: "spiffe://cluster.local/ns/web/sa/web", source: lo, headers: [("x-team", "blue")]), "namespace")
        XCTAssertFalse(decide(t, source: lo, port: 9090, headers: [("x-team", "blue")]), "destination.port")
        XCTAssertFalse(decide(t, principal: "", source: lo, headers: [("x-team", "blue")]), "plaintext: no principal, no namespace")
    }

    func testAuditIsSeparateFromTheVerdict() throws {
        let cfg = try parse("""
          action: AUDIT
          rules:
          - to: [{operation: {paths: ["/admin*"]}}]
        """)
        let t = try XCTUnwrap(AuthzTable(cfg.authorizationPolicies, namespace: "default", labels: []))
        func check(_ path: String) -> (AuthzTable.Verdict, Bool) {
            var audited = false
            let m = Array("GET".utf8), p = Array(path.utf8)
            let v = m.withUnsafeBufferPointer { mp in p.withUnsafeBufferPointer { pp in
                t.check(principal: [], method: mp.baseAddress!, mp.count, rawPath: pp.baseAddress!, pp.count,
                        scratch: ByteBuffer(capacity: 64), audited: &audited)
            } }
            return (v, audited)
        }
        XCTAssertTrue(check("/admin/x") == (.allowed, true))
        XCTAssertTrue(check("/public") == (.allowed, false))
        XCTAssertTrue(t.auditsTCP(principal: [], port: 1) == false, "a path rule never matches TCP")
    }
}

extension AuthzConditionTests {
    /// On TCP, requestPrincipals and request.* conditions are HTTP-only: an ALLOW rule naming
    /// them never matches, a DENY rule ignores them (so it denies more), as Istio does.
    func testHTTPOnlySourceFieldsOnTCP() throws {
        let allow = try parse("  rules:\n  - from: [{source: {requestPrincipals: [\"*\"]}}]\n")
        let ta = try XCTUnwrap(AuthzTable(allow.authorizationPolicies, namespace: "default", labels: []))
        XCTAssertFalse(ta.allowsTCP(principal: Array("spiffe://cluster.local/ns/a/sa/b".utf8), port: 1))
        let deny = try parse("  action: DENY\n  rules:\n  - from: [{source: {requestPrincipals: [\"x/y\"]}}]\n    when: [{key: \"request.auth.claims[g]\", values: [a]}]\n")
        let td = try XCTUnwrap(AuthzTable(deny.authorizationPolicies, namespace: "default", labels: []))
        XCTAssertFalse(td.allowsTCP(principal: Array("spiffe://cluster.local/ns/a/sa/b".utf8), port: 1))
        XCTAssertTrue(decide(td), "on HTTP, no token: the DENY rule does not match")
    }
}

extension AuthzConditionTests {
    /// A `request.headers[...]` condition reads only fields the app is sent: a caller's copy of
    /// a RequestAuthentication output header (marked not forwarded) is never matched, the
    /// mesh-set value after it is (review fix 2).
    func testHeaderConditionsSkipFieldsNotForwarded() throws {
        let cfg = try parse("  rules:\n  - when: [{key: \"request.headers[x-jwt-group]\", values: [admin]}]\n")
        let t = try XCTUnwrap(AuthzTable(cfg.authorizationPolicies, namespace: "default", labels: []))
        func allows(_ fields: [(String, String, Bool)]) -> Bool {
            let head = MessageHead()
            for (n, v, fwd) in fields {
                head.addField(Array(n.utf8), Array(v.utf8))
                if !fwd { head.drop(head.fields.count - 1) }
            }
            let a = Array("spiffe://cluster.local/ns/shop/sa/web".utf8), m = Array("GET".utf8), p = Array("/".utf8)
            return a.withUnsafeBufferPointer { ap in m.withUnsafeBufferPointer { mp in p.withUnsafeBufferPointer { pp in
                t.allows(principal: ap.baseAddress!, ap.count, method: mp.baseAddress!, mp.count, path: pp.baseAddress!, pp.count,
                         port: 8080, attrs: AuthzTable.RequestAttributes(jwt: nil, head: head, source: nil))
            } } }
        }
        XCTAssertFalse(allows([("x-jwt-group", "admin", false)]), "a forged output header (not forwarded) is not read")
        XCTAssertFalse(allows([("x-jwt-group", "admin", false), ("x-jwt-group", "user", true)]), "the mesh-set value counts")
        XCTAssertTrue(allows([("x-jwt-group", "user", false), ("x-jwt-group", "admin", true)]))
        XCTAssertTrue(allows([("X-JWT-Group", "admin", true)]))
    }

    /// `ipBlocks` and `remoteIpBlocks` are separate fields of a source: both present must match
    /// (Istio ANDs them), likewise `notIpBlocks` and `notRemoteIpBlocks` each exclude (review fix 4).
    func testIpBlocksAndRemoteIpBlocksAreBothRequired() throws {
        let cfg = try parse("  rules:\n  - from: [{source: {ipBlocks: [\"10.0.0.0/8\"], remoteIpBlocks: [\"192.168.0.0/16\"]}}]\n")
        let t = try XCTUnwrap(AuthzTable(cfg.authorizationPolicies, namespace: "default", labels: []))
        XCTAssertTrue(t.needsAddress)
        let ten = IPEndpoint(ipv4: 0x0A_01_00_01, port: 1), lan = IPEndpoint(ipv4: 0xC0_A8_00_01, port: 1)
        XCTAssertFalse(decide(t, source: ten), "in ipBlocks, not in remoteIpBlocks")
        XCTAssertFalse(decide(t, source: lan), "in remoteIpBlocks, not in ipBlocks")
        let both = try parse("  rules:\n  - from: [{source: {ipBlocks: [\"10.0.0.0/8\"], remoteIpBlocks: [\"10.1.0.0/16\"]}}]\n")
        let tb = try XCTUnwrap(AuthzTable(both.authorizationPolicies, namespace: "default", labels: []))
        XCTAssertTrue(decide(tb, source: ten), "in both")
        XCTAssertFalse(decide(tb, source: IPEndpoint(ipv4: 0x0A_02_00_01, port: 1)), "in ipBlocks only")
        let remoteOnly = try parse("  rules:\n  - from: [{source: {remoteIpBlocks: [\"10.0.0.0/8\"], notRemoteIpBlocks: [\"10.9.0.0/16\"]}}]\n")
        let tr = try XCTUnwrap(AuthzTable(remoteOnly.authorizationPolicies, namespace: "default", labels: []))
        XCTAssertTrue(tr.needsAddress)
        XCTAssertTrue(decide(tr, source: ten))
        XCTAssertFalse(decide(tr, source: IPEndpoint(ipv4: 0x0A_09_00_01, port: 1)), "notRemoteIpBlocks")
        XCTAssertFalse(decide(tr, source: nil), "an unknown address is in no block")
    }
}
