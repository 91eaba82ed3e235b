import XCTest
import MeshConfig
@testable import MeshProxy

/// PeerAuthentication on inbound connections: the app port takes its own `portLevelMtls` entry;
/// a captured connection passed through to another port takes that port's entry, else the
/// workload's mode, never the app port's override (review fix 1: a STRICT workload with
/// `{<appPort>: DISABLE}` must stay STRICT on its other ports). And the port authorization
/// matches (review fix 5).
final class InboundPortModeTests: XCTestCase {
    func bootstrap(_ policy: String, inbound: String = "{port: 15006, appAddress: \"127.0.0.1:8080\"}") throws -> Bootstrap {
        let yaml = """
        apiVersion: sidecar.mesh/v1alpha1
        kind: Bootstrap
        metadata: {name: t, namespace: default}
        spec:
          workload: {service: server, labels: {app: server}}
          admin: {port: 15000}
          tls: {certChain: /nonexistent/c.pem, privateKey: /nonexistent/k.pem, trustBundle: /nonexistent/r.pem}
          inbound: \(inbound)
        ---
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {name: server, namespace: default}
        spec:
          selector: {matchLabels: {app: server}}
        \(policy)
        """
        return try Bootstrap.parse(yaml, file: "t.yaml")
    }

    /// The snapshot's choice (`inboundMode(passthrough:)`) from the bootstrap's modes.
    func mode(_ b: Bootstrap, passthrough: Int?) -> PeerAuthentication.Mode {
        let (app, workload, ports) = ProxySnapshot.peerModes(b)
        return ProxySnapshot.inboundMode(passthrough: passthrough, app: app, workload: workload, ports: ports)
    }

    func testAppPortOverrideDoesNotOpenOtherPorts() throws {
        let b = try bootstrap("  mtls: {mode: STRICT}\n  portLevelMtls:\n    8080: {mode: DISABLE}\n    9091: {mode: PERMISSIVE}\n    9092: {mode: UNSET}\n")
        let (app, workload, _) = ProxySnapshot.peerModes(b)
        XCTAssertEqual(app, .disable, "the app port's own entry")
        XCTAssertEqual(workload, .strict, "the workload's mode carries no port's override")
        XCTAssertEqual(mode(b, passthrough: nil), .disable)
        XCTAssertEqual(mode(b, passthrough: 9090), .strict, "a port with no entry: the workload's STRICT, not the app port's DISABLE")
        XCTAssertEqual(mode(b, passthrough: 9092), .strict, "UNSET: the workload's mode")
        XCTAssertEqual(mode(b, passthrough: 9091), .permissive, "its own entry")
        XCTAssertEqual(mode(b, passthrough: 8080), .disable, "the app port passed through keeps its entry")
    }

    func testWorkloadModeWithoutOverrides() throws {
        let b = try bootstrap("  mtls: {mode: PERMISSIVE}\n  portLevelMtls:\n    9090: {mode: STRICT}\n")
        XCTAssertEqual(mode(b, passthrough: nil), .permissive)
        XCTAssertEqual(mode(b, passthrough: 9090), .strict)
        XCTAssertEqual(mode(b, passthrough: 9093), .permissive)
    }

    /// Review fix 5: AuthorizationPolicy ports and `destination.port` match the workload's
    /// (target) port, the app's, as `portLevelMtls` does, not the service port callers dial.
    func testAuthorizationPortIsTheAppPort() throws {
        let b = try bootstrap("  mtls: {mode: STRICT}\n", inbound: "{port: 15006, appAddress: \"127.0.0.1:8080\", servicePort: 9080}")
        XCTAssertEqual(ProxySnapshot.authorizationPort(b), 8080)
        let cfg = try IstioTraffic.parse("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  action: DENY\n  rules:\n  - to: [{operation: {ports: [\"8080\"]}}]\n", file: "t.yaml")
        let t = try XCTUnwrap(AuthzTable(cfg.authorizationPolicies, namespace: "default", labels: []))
        XCTAssertFalse(t.allowsTCP(principal: [], port: ProxySnapshot.authorizationPort(b)), "a DENY on the app port denies")
    }
}
