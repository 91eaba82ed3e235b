import XCTest
import MeshConfig
@testable import MeshControl

/// Review fix 6: meshd accepts a RequestAuthentication whose jwksUri is plain http:// (as Istio
/// does) and warns at apply, naming the file, line, policy and rule.
final class PlaintextJWKSWarningTests: XCTestCase {
    func testApplyWarnsAboutAPlainHTTPKeySet() throws {
        let text = """
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: other, namespace: shop}
            spec: {}
            ---
            apiVersion: security.istio.io/v1
            kind: RequestAuthentication
            metadata: {name: jwt, namespace: shop}
            spec:
              jwtRules:
              - {issuer: a, jwksUri: "https://idp/k"}
              - {issuer: b, jwksUri: "http://idp/k"}
            """
        let docs = try ConfigStore.split(text, file: "ra.yaml")
        let w = ConfigStore.plaintextKeySetWarnings(docs)
        XCTAssertEqual(w.count, 1, "\(w)")
        XCTAssertTrue(w.first?.hasPrefix("ra.yaml:6: RequestAuthentication shop/jwt: spec.jwtRules[1].jwksUri http://idp/k is plain http://") ?? false, "\(w)")
        XCTAssertEqual(ConfigStore.plaintextKeySetWarnings(try ConfigStore.split(text.replacingOccurrences(of: "http://idp", with: "https://idp"), file: "ra.yaml")), [])
    }
}
