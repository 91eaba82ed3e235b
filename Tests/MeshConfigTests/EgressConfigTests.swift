import XCTest
@testable import MeshConfig

/// DestinationRule `trafficPolicy.tls` and ServiceEntry `resolution: DNS` as the one parser reads
/// them in meshd and every sidecar (docs/egress.md): refusals first, each naming file, line and
/// field; then what is accepted and the values kept.
final class EgressConfigTests: XCTestCase {
    func dr(_ tls: String, policyExtra: String = "") -> String {
        """
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: api}
        spec:
          host: api.example.com
          trafficPolicy:
            tls:
        \(tls.split(separator: "\n").map { "      " + $0 }.joined(separator: "\n"))
        \(policyExtra)
        """
    }

    func refusal(_ text: String) -> String? {
        do { _ = try IstioTraffic.parse(text, file: "bad.yaml"); return nil } catch { return error.description }
    }

    override func tearDown() { IstioTraffic.Allowance.allowInsecureSkipVerify(false) }

    func testClientTLSRefusalsNameFileLineAndField() {
        let cases: [(String, String)] = [
            ("mode: STRICT", "bad.yaml:8: document 1: spec.trafficPolicy.tls.mode: expected DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL, got \"STRICT\""),
            ("mode: SIMPLE\ncredentialName: api-cert",
             "bad.yaml:9: document 1: spec.trafficPolicy.tls.credentialName: not supported yet (only on gateways, not yet): give caCertificates, clientCertificate and privateKey as files on the sidecar's host"),
            ("mode: SIMPLE\ncaCrl: /etc/crl.pem", "bad.yaml:9: document 1: spec.trafficPolicy.tls.caCrl: not supported yet"),
            ("mode: SIMPLE\ncaCertificates: certs/ca.pem",
             "bad.yaml:9: document 1: spec.trafficPolicy.tls.caCertificates: expected an absolute path to a PEM file on the sidecar's host, got \"certs/ca.pem\""),
            ("mode: SIMPLE\nclientCertificate: /c.pem", "bad.yaml:9: document 1: spec.trafficPolicy.tls.clientCertificate: a client certificate needs mode MUTUAL, not SIMPLE"),
            ("mode: MUTUAL\nclientCertificate: /c.pem", "bad.yaml:8: document 1: spec.trafficPolicy.tls.privateKey: required with mode MUTUAL (a PEM file on the sidecar's host)"),
            ("mode: DISABLE\ncaCertificates: /ca.pem", "bad.yaml:9: document 1: spec.trafficPolicy.tls.caCertificates: does not apply with mode DISABLE (no TLS)"),
            ("mode: DISABLE\nsni: api.example.com", "bad.yaml:9: document 1: spec.trafficPolicy.tls.sni: does not apply with mode DISABLE (no TLS)"),
            ("mode: ISTIO_MUTUAL\nprivateKey: /k.pem", "bad.yaml:9: document 1: spec.trafficPolicy.tls.privateKey: does not apply with mode ISTIO_MUTUAL (the mesh's own certificates are used)"),
            ("mode: SIMPLE\nsni: API.example.com", "bad.yaml:9: document 1: spec.trafficPolicy.tls.sni: expected a lowercase DNS name such as api.example.com, got \"API.example.com\""),
            ("mode: SIMPLE\nsubjectAltNames: [\"a b\"]", "bad.yaml:9: document 1: spec.trafficPolicy.tls.subjectAltNames[0]: expected a DNS name or a URI, got \"a b\""),
            ("mode: SIMPLE\ninsecureSkipVerify: true",
             "bad.yaml:9: document 1: spec.trafficPolicy.tls.insecureSkipVerify: refused: it turns off server verification (allow it with meshd's, or a static sidecar's, --allow-insecure-skip-verify)"),
            ("mode: SIMPLE\nverifyCertificate: true", "bad.yaml:9: document 1: spec.trafficPolicy.tls.verifyCertificate: unknown field (known fields here: mode, sni, caCertificates, clientCertificate, privateKey, subjectAltNames, insecureSkipVerify)"),
        ]
        for (tls, want) in cases { XCTAssertEqual(refusal(dr(tls)), want, tls) }
    }

    func testInsecureSkipVerifyOnlyWhereTheProcessAllowsIt() throws {
        let text = dr("mode: SIMPLE\ninsecureSkipVerify: true")
        XCTAssertNotNil(refusal(text))
        IstioTraffic.Allowance.allowInsecureSkipVerify(true)
        let cfg = try IstioTraffic.parse(text, file: "ok.yaml")
        XCTAssertEqual(cfg.destinationRules[0].trafficPolicy?.tls?.insecureSkipVerify, true)
        // Even when allowed, it cannot be combined with what it would switch off.
        XCTAssertEqual(refusal(dr("mode: SIMPLE\ninsecureSkipVerify: true\ncaCertificates: /ca.pem")),
                       "bad.yaml:10: document 1: spec.trafficPolicy.tls.caCertificates: contradicts insecureSkipVerify: true (nothing would be verified)")
    }

    func testPortLevelAndSubsetSettings() throws {
        let subset = """
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: api}
        spec:
          host: api.example.com
          subsets:
          - name: v1
            labels: {version: v1}
            trafficPolicy:
              tls: {mode: SIMPLE}
        """
        XCTAssertEqual(refusal(subset), "bad.yaml:10: document 1: spec.subsets[0].trafficPolicy.tls: not supported yet")
        let ports = """
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: api}
        spec:
          host: api.example.com
          trafficPolicy:
            tls: {mode: DISABLE}
            portLevelSettings:
            - port: {number: 80}
              tls: {mode: SIMPLE, sni: edition.example.com}
            - port: {number: 8080}
              tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem, subjectAltNames: [spiffe://x/y, api.example.com]}
        """
        let cfg = try IstioTraffic.parse(ports, file: "ok.yaml")
        let d = cfg.destinationRules[0]
        XCTAssertEqual(IstioTraffic.clientTLS(d, port: 80)?.mode, .simple)
        XCTAssertEqual(IstioTraffic.clientTLS(d, port: 80)?.sni, "edition.example.com")
        XCTAssertEqual(IstioTraffic.clientTLS(d, port: 8080)?.mode, .mutual)
        XCTAssertEqual(IstioTraffic.clientTLS(d, port: 8080)?.subjectAltNames, ["spiffe://x/y", "api.example.com"])
        XCTAssertEqual(IstioTraffic.clientTLS(d, port: 8080)?.privateKey, "/k.pem")
        XCTAssertEqual(IstioTraffic.clientTLS(d, port: 443)?.mode, .disable)   // no port level: the top level
        // Where a file field was written, for the sidecar's errors when it reads the file.
        let origin = IstioTraffic.clientTLS(d, port: 8080)!.error("caCertificates", "x")
        XCTAssertEqual(origin.description, "ok.yaml:12: document 1: spec.trafficPolicy.portLevelSettings[1].tls.caCertificates: x")
        XCTAssertEqual(refusal(ports.replacingOccurrences(of: "number: 8080", with: "number: 80")),
                       "bad.yaml:11: document 1: spec.trafficPolicy.portLevelSettings[1].port.number: port 80 is given twice")
        XCTAssertEqual(refusal(ports.replacingOccurrences(of: "- port: {number: 80}", with: "- port: {number: 80}\n      loadBalancer: {simple: RANDOM}")),
                       "bad.yaml:10: document 1: spec.trafficPolicy.portLevelSettings[0].loadBalancer: not supported yet")
    }

    // MARK: ServiceEntry resolution

    let se = """
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: ext}
    spec:
      hosts: [api.example.com]
      ports: [{number: 80, name: http, protocol: HTTP, targetPort: 443}]
      resolution: DNS
    """

    func testServiceEntryResolutionRefusals() {
        XCTAssertEqual(refusal(se.replacingOccurrences(of: "resolution: DNS", with: "resolution: NONE")),
                       "bad.yaml:7: document 1: spec.resolution: expected STATIC, DNS or DNS_ROUND_ROBIN (NONE is not supported yet), got \"NONE\"")
        XCTAssertEqual(refusal(se.replacingOccurrences(of: "resolution: DNS", with: "resolution: STATIC\n  endpoints: [{address: lb.example.com}]")),
                       "bad.yaml:8: document 1: spec.endpoints[0].address: expected an IP address (DNS names need resolution: DNS), got \"lb.example.com\"")
        XCTAssertEqual(refusal(se + "\n  endpoints: [{address: \"LB example\"}]"),
                       "bad.yaml:8: document 1: spec.endpoints[0].address: expected an IP address or a lowercase DNS name, got \"LB example\"")
        XCTAssertEqual(refusal(se + "\n  workloadSelector: {labels: {app: x}}"),
                       "bad.yaml:8: document 1: spec.workloadSelector: with resolution DNS: not supported yet (WorkloadEntries have addresses: use STATIC)")
    }

    func testServiceEntryResolutionAndTargetPortAreKept() throws {
        let cfg = try IstioTraffic.parse(se + "\n  endpoints: [{address: lb.example.com}, {address: 10.0.0.1}]", file: "ok.yaml")
        let e = cfg.serviceEntries[0]
        XCTAssertEqual(e.resolution, "DNS")
        XCTAssertEqual(e.ports[0].targetPort, 443)
        XCTAssertEqual(e.endpoints.map(\.address), ["lb.example.com", "10.0.0.1"])
        XCTAssertEqual(try IstioTraffic.parse(se.replacingOccurrences(of: "DNS", with: "DNS_ROUND_ROBIN"), file: "ok.yaml").serviceEntries[0].resolution,
                       "DNS_ROUND_ROBIN")
    }

    // MARK: clusters with names (what meshd renders for a DNS ServiceEntry)

    func cluster(_ extra: String) -> String {
        """
        apiVersion: sidecar.mesh/v1alpha1
        kind: Bootstrap
        metadata: {name: c, namespace: default}
        spec:
          workload: {service: c}
          outbound: {port: 15001}
          clusters:
            - name: api.example.com
              tls: DISABLE
        \(extra.split(separator: "\n").map { "      " + $0 }.joined(separator: "\n"))
          routes: [{hosts: [api.example.com], cluster: api.example.com}]
        """
    }

    func bootstrapRefusal(_ text: String) -> String? {
        do { _ = try Bootstrap.parse(text, file: "b.yaml"); return nil } catch { return error.description }
    }

    func testDNSClusterRefusalsAndValues() throws {
        XCTAssertEqual(bootstrapRefusal(cluster("resolution: DNS")),
                       "b.yaml:8: document 1: spec.clusters[0].dnsEndpoints: resolution DNS needs at least one name to resolve (dnsEndpoints)")
        XCTAssertEqual(bootstrapRefusal(cluster("resolution: LOGICAL\ndnsEndpoints: [{host: a.example.com, port: 80}]")),
                       "b.yaml:8: document 1: spec.clusters[0].resolution: expected STATIC, DNS or DNS_ROUND_ROBIN, got \"LOGICAL\"")
        XCTAssertEqual(bootstrapRefusal(cluster("dnsEndpoints: [{host: a.example.com, port: 80}]")),
                       "b.yaml:8: document 1: spec.clusters[0].dnsEndpoints: names need resolution: DNS or DNS_ROUND_ROBIN")
        XCTAssertEqual(bootstrapRefusal(cluster("resolution: DNS\ndnsEndpoints: [{host: 10.0.0.1, port: 80}]")),
                       "b.yaml:11: document 1: spec.clusters[0].dnsEndpoints[0].host: expected a lowercase DNS name such as api.example.com, got \"10.0.0.1\"")
        XCTAssertEqual(bootstrapRefusal(cluster("resolution: DNS\ndnsEndpoints: [{host: a.example.com}]")),
                       "b.yaml:11: document 1: spec.clusters[0].dnsEndpoints[0].port: required field is missing")
        let b = try Bootstrap.parse(cluster("resolution: DNS_ROUND_ROBIN\ndnsEndpoints: [{host: a.example.com, port: 8443, labels: {zone: a}}]"), file: "b.yaml")
        XCTAssertEqual(b.clusters[0].resolution, .dnsRoundRobin)
        XCTAssertEqual(b.clusters[0].dnsEndpoints, [Bootstrap.DNSEndpoint(host: "a.example.com", port: 8443, labels: ["zone=a"])])
        XCTAssertTrue(b.clusters[0].endpoints.isEmpty)
    }
}
