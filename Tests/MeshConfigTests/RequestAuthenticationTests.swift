import XCTest
@testable import MeshConfig

/// RequestAuthentication and PeerAuthentication portLevelMtls parsing: refusals first, each
/// naming its field; then the defaults Istio gives.
final class RequestAuthenticationTests: XCTestCase {
    func parse(_ kind: String, _ spec: String) throws(ConfigError) -> IstioTraffic.Config {
        try IstioTraffic.parse("apiVersion: security.istio.io/v1\nkind: \(kind)\nmetadata: {name: p}\nspec:\n" + spec, file: "t.yaml")
    }

    func refused(_ spec: String, _ path: String, _ words: String, file: StaticString = #filePath, line: UInt = #line) {
        refused(kind: "RequestAuthentication", spec, path, words, file: file, line: line)
    }

    func refused(kind: String, _ spec: String, _ path: String, _ words: String,
                 file: StaticString = #filePath, line: UInt = #line) {
        do throws(ConfigError) {
            _ = try parse(kind, spec)
            XCTFail("accepted", file: file, line: line)
        } catch {
            XCTAssertEqual(error.path, path, "\(error)", file: file, line: line)
            XCTAssertTrue(error.message.contains(words), error.message, file: file, line: line)
        }
    }

    let jwks = #"'{"keys":[{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}'"#

    func testRefusals() {
        refused("  jwtRules:\n  - {jwks: \(jwks)}\n", "spec.jwtRules[0].issuer", "required")
        refused("  jwtRules:\n  - {issuer: a}\n", "spec.jwtRules[0].jwksUri", "OpenID discovery from the issuer is not supported yet")
        refused("  jwtRules:\n  - {issuer: a, jwks: \(jwks), jwksUri: \"https://x/k\"}\n", "spec.jwtRules[0].jwks", "not both")
        refused("  jwtRules:\n  - {issuer: a, jwksUri: \"ftp://x/k\"}\n", "spec.jwtRules[0].jwksUri", "http:// or https://")
        refused("  jwtRules:\n  - {issuer: a, jwksUri: \"https://:443/k\"}\n", "spec.jwtRules[0].jwksUri", "with a host")
        refused("  jwtRules:\n  - {issuer: a, jwksUri: \"http://h:99999/k\"}\n", "spec.jwtRules[0].jwksUri", "with a host")
        refused("  jwtRules:\n  - {issuer: a, jwks: '{\"keys\":[]}'}\n", "spec.jwtRules[0].jwks", "no keys")
        refused("  jwtRules:\n  - {issuer: a, jwks: \(jwks), fromHeaders: [{name: \"bad header\"}]}\n", "spec.jwtRules[0].fromHeaders[0].name", "header name")
        refused("  jwtRules:\n  - {issuer: a, jwks: \(jwks), fromCookies: [c]}\n", "spec.jwtRules[0].fromCookies", "not supported yet")
        refused("  jwtRules:\n  - {issuer: a, jwks: \(jwks), timeout: 5s}\n", "spec.jwtRules[0].timeout", "not supported yet")
        refused("  jwtRules:\n  - {issuer: a, jwks: \(jwks), outputClaimToHeaders: [{header: x}]}\n", "spec.jwtRules[0].outputClaimToHeaders[0].claim", "required")
        refused("  targetRef: {kind: Gateway, name: g}\n", "spec.targetRef", "not supported yet")
        refused("  jwtRules:\n  - {issuer: a, jwks: \(jwks), forwardOriginalToken: yes}\n", "spec.jwtRules[0].forwardOriginalToken", "true or false")
    }

    func testDefaultsAndFields() throws {
        let cfg = try parse("RequestAuthentication", """
          selector: {matchLabels: {app: reviews}}
          jwtRules:
          - issuer: https://a
            jwks: \(jwks)
          - issuer: https://b
            jwksUri: "https://[::1]:8443/keys?x=1"
            fromHeaders: [{name: X-Token}]
            outputPayloadToHeader: X-Payload
            forwardOriginalToken: true
        """)
        let r = try XCTUnwrap(cfg.requestAuthentications.first)
        XCTAssertEqual(r.jwtRules[0].fromHeaders, [.init(name: "authorization", prefix: "Bearer ")])
        XCTAssertEqual(r.jwtRules[0].fromParams, ["access_token"])
        XCTAssertFalse(r.jwtRules[0].forwardOriginalToken)
        XCTAssertEqual(r.jwtRules[1].fromHeaders, [.init(name: "x-token", prefix: "")])
        XCTAssertEqual(r.jwtRules[1].fromParams, [], "a location given: no default parameter")
        XCTAssertEqual(r.jwtRules[1].outputPayloadToHeader, "x-payload")
        XCTAssertTrue(r.jwtRules[1].forwardOriginalToken)
        let loc = try XCTUnwrap(JWKSLocation("https://[::1]:8443/keys?x=1"))
        XCTAssertTrue(loc.tls && loc.host == "::1" && loc.port == 8443 && loc.path == "/keys?x=1")
        XCTAssertEqual(JWKSLocation("http://idp.example")?.port, 80)
        XCTAssertNil(JWKSLocation("http://user@idp.example/k"), "credentials in the URL")
        XCTAssertTrue(r.selects(namespace: "default", labels: [("app", "reviews")]))
        XCTAssertFalse(r.selects(namespace: "default", labels: [("app", "ratings")]))
    }

    func testPortLevelMtls() throws {
        refused(kind: "PeerAuthentication", "  portLevelMtls: {8080: {mode: STRICT}}\n", "spec.portLevelMtls", "needs a selector")
        refused(kind: "PeerAuthentication", "  selector: {matchLabels: {app: a}}\n  portLevelMtls: {http: {mode: STRICT}}\n", "spec.portLevelMtls.http", "port number")
        refused(kind: "PeerAuthentication", "  selector: {matchLabels: {app: a}}\n  portLevelMtls: {0: {mode: STRICT}}\n", "spec.portLevelMtls.0", "port number")
        refused(kind: "PeerAuthentication", "  selector: {matchLabels: {app: a}}\n  portLevelMtls: {80: {mode: OPTIONAL}}\n", "spec.portLevelMtls.80.mode", "STRICT, PERMISSIVE")
        refused(kind: "PeerAuthentication", "  selector: {matchLabels: {app: a}}\n  portLevelMtls: {80: {mode: STRICT, x: 1}}\n", "spec.portLevelMtls.80.x", "unknown field")
        refused(kind: "PeerAuthentication", "  selector: {matchLabels: {app: a}}\n  portLevelMtls: [80]\n", "spec.portLevelMtls", "mapping")
        let cfg = try parse("PeerAuthentication", "  selector: {matchLabels: {app: a}}\n  mtls: {mode: PERMISSIVE}\n  portLevelMtls:\n    8080: {mode: STRICT}\n    9090: {mode: UNSET}\n")
        let pa = cfg.peerAuthentications
        XCTAssertEqual(PeerAuthentication.mode(for: "default", labels: [("app", "a")], port: 8080, in: pa), .strict)
        XCTAssertEqual(PeerAuthentication.mode(for: "default", labels: [("app", "a")], port: 9090, in: pa), .permissive, "UNSET: the workload's")
        XCTAssertEqual(PeerAuthentication.mode(for: "default", labels: [("app", "a")], port: 7070, in: pa), .permissive)
        XCTAssertEqual(PeerAuthentication.mode(for: "default", labels: [("app", "b")], port: 8080, in: pa), .strict, "not selected: the mesh default")
        XCTAssertEqual(PeerAuthentication.portModes(for: "default", labels: [("app", "a")], in: pa).map { $0.port }, [8080])
    }
}

extension RequestAuthenticationTests {
    /// Review fix 6: a plain http:// jwksUri is accepted (Istio allows it) but warned about,
    /// naming the policy and the rule; https:// and inline keys are not.
    func testPlainHTTPKeySetIsWarnedAbout() throws {
        let cfg = try parse("RequestAuthentication", "  jwtRules:\n  - {issuer: a, jwksUri: \"https://idp/k\"}\n  - {issuer: b, jwksUri: \"http://idp:8080/k\"}\n  - {issuer: c, jwks: \(jwks)}\n")
        let p = try XCTUnwrap(cfg.requestAuthentications.first)
        XCTAssertEqual(p.jwtRules[1].jwksUri, "http://idp:8080/k", "accepted")
        XCTAssertEqual(p.plaintextKeySetWarnings.count, 1)
        let w = try XCTUnwrap(p.plaintextKeySetWarnings.first)
        XCTAssertTrue(w.hasPrefix("RequestAuthentication default/p: spec.jwtRules[1].jwksUri http://idp:8080/k is plain http://"), w)
        XCTAssertTrue(w.contains("substitute keys"), w)
        let safe = try parse("RequestAuthentication", "  jwtRules:\n  - {issuer: a, jwksUri: \"https://idp/k\"}\n")
        XCTAssertEqual(safe.requestAuthentications.first?.plaintextKeySetWarnings, [])
    }
}
