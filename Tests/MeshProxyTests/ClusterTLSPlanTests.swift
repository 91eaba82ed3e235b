import XCTest
import MeshCore
@testable import MeshConfig
@testable import MeshProxy

/// What a DestinationRule's `trafficPolicy.tls` makes of a cluster in the compiled snapshot:
/// refusals at snapshot time first (a file the sidecar cannot read named with the rule's file,
/// line and field; TLS origination to a TCP service and ISTIO_MUTUAL without a certificate, which
/// the config check refuses in meshd too), then the mode each cluster ends up with.
final class ClusterTLSPlanTests: XCTestCase {
    static func config(cluster: String = "", tls: String) -> String {
        """
        apiVersion: sidecar.mesh/v1alpha1
        kind: Bootstrap
        metadata: {name: front}
        spec:
          workload: {service: front}
          outbound: {port: 15001}
          clusters:
            - name: api.example.com
              tls: DISABLE
              endpoints: [127.0.0.1:9443]
        \(cluster)
          routes: [{hosts: [api.example.com], cluster: api.example.com}]
        ---
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: api}
        spec:
          host: api.example.com
          trafficPolicy:
        \(tls)
        """
    }

    func snapshot(cluster: String = "", _ tls: String) throws -> ProxySnapshot {
        try ProxySnapshot(bootstrap: Bootstrap.parse(Self.config(cluster: cluster, tls: tls), file: "t.yaml"), version: "t")
    }

    func refusal(cluster: String = "", _ tls: String) -> String {
        do { _ = try snapshot(cluster: cluster, tls); return "accepted" } catch { return "\(error)" }
    }

    func testRefusedWhenTheSnapshotIsBuilt() throws {
        XCTAssertEqual(refusal("    tls: {mode: SIMPLE, caCertificates: /nonexistent/ca.pem}"),
                       "t.yaml:20: document 2: spec.trafficPolicy.tls.caCertificates: cannot read /nonexistent/ca.pem: No such file or directory")
        let notPEM = FileManager.default.temporaryDirectory.appendingPathComponent("egress-not-pem-\(getpid()).pem").path
        FileManager.default.createFile(atPath: notPEM, contents: Data("hello\n".utf8))
        defer { try? FileManager.default.removeItem(atPath: notPEM) }
        XCTAssertEqual(refusal("    tls: {mode: SIMPLE, caCertificates: \(notPEM)}"),
                       "t.yaml:20: document 2: spec.trafficPolicy.tls.caCertificates: \(notPEM) holds no PEM certificate")
        XCTAssertEqual(refusal("    tls: {mode: MUTUAL, clientCertificate: /nonexistent/c.pem, privateKey: /nonexistent/k.pem}"),
                       "t.yaml:20: document 2: spec.trafficPolicy.tls.clientCertificate: cannot read /nonexistent/c.pem: No such file or directory")
        XCTAssertEqual(refusal(cluster: "      serviceProtocol: TCP", "    tls: {mode: SIMPLE}"),
                       "t.yaml:20: document 2: spec.trafficPolicy.tls.mode: TLS origination to api.example.com (a TCP service) is not supported yet: it needs an HTTP port (protocol: HTTP)")
        XCTAssertEqual(refusal("    tls: {mode: ISTIO_MUTUAL}"),
                       "t.yaml:20: document 2: spec.trafficPolicy.tls.mode: ISTIO_MUTUAL needs this workload's certificate (spec.tls)")
    }

    func testModesCompiledPerCluster() throws {
        // SIMPLE against the system trust store, SNI from the DestinationRule's host.
        let simple = try snapshot("    tls: {mode: SIMPLE}").clusters[0]
        XCTAssertEqual(simple.origination?.mode, "SIMPLE")
        XCTAssertEqual(simple.origination?.check.sni, "api.example.com")
        XCTAssertEqual(simple.origination?.check.verify, true)
        XCTAssertFalse(simple.mutualTLS)
        let named = try snapshot("    tls: {mode: SIMPLE, sni: edge.example.com, subjectAltNames: [spiffe://example.com/api]}").clusters[0]
        XCTAssertEqual(named.origination?.check.sni, "edge.example.com")
        XCTAssertEqual(named.origination?.check.subjectAltNames, ["spiffe://example.com/api"])
        // DISABLE: plaintext; the port-level setting for the cluster's port wins over the top level.
        XCTAssertNil(try snapshot("    tls: {mode: DISABLE}").clusters[0].origination)
        let port = try snapshot(cluster: "      port: 80", "    tls: {mode: SIMPLE}\n    portLevelSettings: [{port: {number: 80}, tls: {mode: DISABLE}}]").clusters[0]
        XCTAssertNil(port.origination)
        let other = try snapshot(cluster: "      port: 8080", "    tls: {mode: DISABLE}\n    portLevelSettings: [{port: {number: 80}, tls: {mode: SIMPLE}}]").clusters[0]
        XCTAssertNil(other.origination)
        let at80 = try snapshot(cluster: "      port: 80", "    tls: {mode: DISABLE}\n    portLevelSettings: [{port: {number: 80}, tls: {mode: SIMPLE}}]").clusters[0]
        XCTAssertEqual(at80.origination?.mode, "SIMPLE")
        // A cluster without a port: port-level settings apply to nothing (Istio), the top level does.
        XCTAssertNil(try snapshot("    portLevelSettings: [{port: {number: 80}, tls: {mode: SIMPLE}}]").clusters[0].origination)
    }
}
