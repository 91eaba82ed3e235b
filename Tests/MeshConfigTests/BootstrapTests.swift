import XCTest
import MeshCore
@testable import MeshConfig
#if canImport(Glibc)
import Glibc
#endif

/// The package root, derived from this file's path (Tests/MeshConfigTests/BootstrapTests.swift).
private func packageRoot(_ file: String = #filePath) -> String {
    var parts = file.split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3)
    return parts.joined(separator: "/")
}

/// Reads a whole file with fopen/fread (no Foundation).
private func readFile(_ path: String) -> String? {
    guard let f = fopen(path, "rb") else { return nil }
    defer { fclose(f) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, 4096, f) }
        if n <= 0 { break }
        bytes += chunk[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}

private let sec: UInt64 = 1_000_000_000

/// A small valid bootstrap that the refusal tests change one thing in.
private let minimal = """
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata:
  name: test
spec:
  workload:
    service: productpage
  outbound:
    port: 15001
  clusters:
    - name: reviews
      tls: DISABLE
      endpoints:
        - 127.0.0.1:16006
  routes:
    - hosts: [reviews]
      cluster: reviews
"""

final class BootstrapTests: XCTestCase {

    private func parse(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> Bootstrap? {
        do {
            return try Bootstrap.parse(text, file: "test.yaml")
        } catch {
            XCTFail("unexpected refusal: \(error)", file: file, line: line)
            return nil
        }
    }

    /// Asserts a refusal whose path is `path`, whose description names the path and whose message
    /// contains every string in `contains`; optionally checks the line.
    private func assertRefused(_ text: String, path: String, _ contains: [String], line expectedLine: Int? = nil,
                               file: StaticString = #filePath, line: UInt = #line) {
        do {
            let b = try Bootstrap.parse(text, file: "test.yaml")
            XCTFail("expected a refusal at \(path), parsed \(b.name)", file: file, line: line)
        } catch {
            XCTAssertEqual(error.path, path, "\(error)", file: file, line: line)
            XCTAssertEqual(error.file, "test.yaml", file: file, line: line)
            XCTAssertTrue(error.description.hasPrefix("test.yaml"), "\(error)", file: file, line: line)
            XCTAssertTrue(error.description.contains(": \(path): "), "description names the path: \(error)", file: file, line: line)
            for c in contains {
                XCTAssertTrue(error.message.contains(c), "message '\(error.message)' lacks '\(c)'", file: file, line: line)
            }
            if let expectedLine { XCTAssertEqual(error.line, expectedLine, "\(error)", file: file, line: line) }
        }
    }

    private func replacing(_ old: String, _ new: String, in text: String = minimal,
                           file: StaticString = #filePath, line: UInt = #line) -> String {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard let i = lines.firstIndex(of: old) else {
            XCTFail("test setup: line '\(old)' not found", file: file, line: line)
            return text
        }
        var out = lines
        out[i] = new
        return out.joined(separator: "\n")
    }

    // MARK: - The shipped configs

    func testClientSidecarConfig() throws {
        let path = packageRoot() + "/config/client-sidecar.yaml"
        let text = try XCTUnwrap(readFile(path), "cannot read \(path)")
        let b = try XCTUnwrap(parse(text))
        XCTAssertEqual(b.name, "productpage-sidecar")
        XCTAssertEqual(b.workload.service, "productpage")
        XCTAssertEqual(b.workload.namespace, "default")
        XCTAssertEqual(b.workload.serviceAccount, "productpage")
        XCTAssertEqual(b.workload.labels.map { "\($0.0)=\($0.1)" }, ["app=productpage", "version=v1"])
        XCTAssertEqual(b.concurrency, 1)
        XCTAssertEqual(b.admin.text, "127.0.0.1:15000")
        let tls = try XCTUnwrap(b.tls)
        XCTAssertEqual(tls.certChain, "certs/out/productpage/cert-chain.pem")
        XCTAssertEqual(tls.privateKey, "certs/out/productpage/key.pem")
        XCTAssertEqual(tls.trustBundle, "certs/out/root-cert.pem")
        XCTAssertEqual(tls.trustDomain, "cluster.local")
        let out = try XCTUnwrap(b.outbound)
        XCTAssertEqual(out.address.text, "127.0.0.1:15001")
        XCTAssertEqual(out.headerTimeout, 10 * sec)
        XCTAssertEqual(out.idleTimeout, 300 * sec)
        XCTAssertEqual(out.streamIdleTimeout, 300 * sec, "Envoy's stream_idle_timeout default")
        XCTAssertEqual(out.maxConnections, 0, "no limit unless set")
        XCTAssertNil(out.appAddress)
        XCTAssertNil(b.inbound)
        XCTAssertEqual(b.clusters.count, 1)
        let c = b.clusters[0]
        XCTAssertEqual(c.name, "reviews")
        XCTAssertEqual(c.tls, .istioMutual)
        XCTAssertEqual(c.subjectAltNames, ["spiffe://cluster.local/ns/default/sa/reviews"])
        XCTAssertEqual(c.endpoints.map(\.text), ["127.0.0.1:16006", "127.0.0.1:16106"])
        XCTAssertEqual(c.endpointLabels.map { $0.map { "\($0.0)=\($0.1)" } }, [["version=v1"], ["version=v2"]])
        XCTAssertEqual(c.connectTimeout, 5 * sec)
        XCTAssertEqual(c.idleTimeout, 4 * sec)
        XCTAssertEqual(c.maxConnections, Bootstrap.Defaults.maxConnections)
        XCTAssertTrue(b.routes.isEmpty, "the VirtualService routes reviews")
        let vs = try XCTUnwrap(b.traffic.virtualServices.first)
        XCTAssertEqual(vs.hosts, ["reviews"])
        XCTAssertEqual(vs.http.map { $0.name ?? "" }, ["testers", "canary"])
        XCTAssertEqual(vs.http[1].route.map(\.weight), [90, 10])
        XCTAssertEqual(b.traffic.destinationRules.first?.subsets.map(\.name), ["v1", "v2"])
        XCTAssertEqual(b.drainTimeout, Bootstrap.Defaults.drainTimeout)
    }

    func testServerSidecarConfig() throws {
        let path = packageRoot() + "/config/server-sidecar.yaml"
        let text = try XCTUnwrap(readFile(path), "cannot read \(path)")
        let b = try XCTUnwrap(parse(text))
        XCTAssertEqual(b.name, "reviews-sidecar")
        XCTAssertEqual(b.workload.service, "reviews")
        XCTAssertEqual(b.workload.serviceAccount, "reviews", "serviceAccount defaults to the service name")
        XCTAssertEqual(b.workload.labels.map { "\($0.0)=\($0.1)" }, ["app=reviews", "version=v1"], "app label added first")
        XCTAssertEqual(b.admin.text, "127.0.0.1:16000")
        XCTAssertEqual(b.tls?.trustDomain, "cluster.local", "trustDomain default")
        XCTAssertNil(b.outbound)
        let inb = try XCTUnwrap(b.inbound)
        XCTAssertEqual(inb.address.text, "127.0.0.1:16006")
        XCTAssertEqual(inb.appAddress?.text, "127.0.0.1:9080")
        XCTAssertEqual(inb.headerTimeout, 10 * sec)
        XCTAssertEqual(inb.idleTimeout, 300 * sec)
        XCTAssertTrue(b.clusters.isEmpty)
        XCTAssertTrue(b.routes.isEmpty)
    }

    // MARK: - Defaults

    func testServerSidecarV2Config() throws {
        let path = packageRoot() + "/config/server-sidecar-v2.yaml"
        let text = try XCTUnwrap(readFile(path), "cannot read \(path)")
        let b = try XCTUnwrap(parse(text))
        XCTAssertEqual(b.workload.labels.map { "\($0.0)=\($0.1)" }, ["app=reviews", "version=v2"])
        XCTAssertEqual(b.inbound?.address.text, "127.0.0.1:16106")
        XCTAssertEqual(b.inbound?.appAddress?.text, "127.0.0.1:9081")
        XCTAssertEqual(b.admin.text, "127.0.0.1:16100")
    }

    func testDefaultsApplied() throws {
        let text = """
        apiVersion: sidecar.mesh/v1alpha1
        kind: Bootstrap
        spec:
          workload:
            service: ratings
          outbound: {}
          clusters:
            - name: reviews
              tls: DISABLE
              endpoints:
                - 127.0.0.1:9080
          routes:
            - hosts: [reviews, Reviews.Default]
              cluster: reviews
        """
        let b = try XCTUnwrap(parse(text))
        XCTAssertEqual(b.name, "sidecar")
        XCTAssertEqual(b.workload.namespace, "default")
        XCTAssertEqual(b.workload.serviceAccount, "ratings")
        XCTAssertEqual(b.workload.labels.map { "\($0.0)=\($0.1)" }, ["app=ratings"])
        XCTAssertNil(b.concurrency)
        XCTAssertEqual(b.admin.text, "127.0.0.1:15000")
        XCTAssertNil(b.tls)
        XCTAssertEqual(b.outbound?.address.text, "127.0.0.1:15001")
        XCTAssertEqual(b.outbound?.headerTimeout, Bootstrap.Defaults.headerTimeout)
        XCTAssertEqual(b.outbound?.idleTimeout, Bootstrap.Defaults.idleTimeout)
        XCTAssertEqual(b.clusters[0].tls, .disable)
        XCTAssertEqual(b.clusters[0].subjectAltNames, [])
        XCTAssertEqual(b.clusters[0].connectTimeout, Bootstrap.Defaults.connectTimeout)
        XCTAssertEqual(b.clusters[0].idleTimeout, Bootstrap.Defaults.poolIdleTimeout)
        XCTAssertEqual(b.clusters[0].maxConnections, 1024)
        XCTAssertEqual(b.routes[0].hosts, ["reviews", "Reviews.Default"])
        XCTAssertEqual(b.drainTimeout, 20 * sec)
        XCTAssertEqual(Bootstrap.Defaults.headerTimeout, 10 * sec)
        XCTAssertEqual(Bootstrap.Defaults.idleTimeout, 300 * sec)
        XCTAssertEqual(Bootstrap.Defaults.connectTimeout, 5 * sec)
        XCTAssertEqual(Bootstrap.Defaults.poolIdleTimeout, 4 * sec)
    }

    func testExplicitValuesOverrideDefaults() throws {
        let text = """
        apiVersion: sidecar.mesh/v1alpha1
        kind: Bootstrap
        metadata:
          name: n1
          namespace: shop
        spec:
          workload:
            service: cart
            serviceAccount: cart-sa
            labels:
              app: cart-app
              version: v2
          concurrency: 4
          admin:
            address: 0.0.0.0
            port: 19000
          outbound:
            address: 127.0.0.2
            port: 25001
            headerTimeout: 1500ms
            idleTimeout: 1m30s
            streamIdleTimeout: 45s
            maxConnections: 5000
          clusters:
            - name: reviews
              tls: DISABLE
              endpoints:
                - 127.0.0.1:9080
                - "[::1]:9081"
              connectTimeout: 250ms
              idleTimeout: 2s
              maxConnections: 7
          routes:
            - hosts:
                - reviews
              cluster: reviews
              timeout: 0
          drainTimeout: 1s
        """
        let b = try XCTUnwrap(parse(text))
        XCTAssertEqual(b.name, "n1")
        XCTAssertEqual(b.workload.namespace, "shop")
        XCTAssertEqual(b.workload.serviceAccount, "cart-sa")
        XCTAssertEqual(b.workload.labels.map { "\($0.0)=\($0.1)" }, ["app=cart-app", "version=v2"], "an explicit app label is kept")
        XCTAssertEqual(b.concurrency, 4)
        XCTAssertEqual(b.admin.text, "0.0.0.0:19000")
        XCTAssertEqual(b.outbound?.address.text, "127.0.0.2:25001")
        XCTAssertEqual(b.outbound?.headerTimeout, 1_500_000_000)
        XCTAssertEqual(b.outbound?.idleTimeout, 90 * sec)
        XCTAssertEqual(b.outbound?.streamIdleTimeout, 45 * sec)
        XCTAssertEqual(b.outbound?.maxConnections, 5000)
        XCTAssertEqual(b.clusters[0].endpoints.map(\.text), ["127.0.0.1:9080", "[::1]:9081"])
        XCTAssertEqual(b.clusters[0].connectTimeout, 250_000_000)
        XCTAssertEqual(b.clusters[0].idleTimeout, 2 * sec)
        XCTAssertEqual(b.clusters[0].maxConnections, 7)
        XCTAssertEqual(b.routes[0].timeout, 0)
        XCTAssertEqual(b.drainTimeout, sec)
    }

    func testMinimalParses() {
        XCTAssertNotNil(parse(minimal))
    }

    // MARK: - Refusals

    func testUnknownTopLevelField() {
        assertRefused(minimal + "\nextra: 1", path: "extra", ["unknown field", "apiVersion, kind, metadata, spec"], line: 18)
        assertRefused(replacing("metadata:", "metdata:"), path: "metdata", ["unknown field", "metadata"], line: 3)
    }

    func testUnknownFieldUnderCluster() {
        let text = replacing("      tls: DISABLE", "      tls: DISABLE\n      endpoint: 1.2.3.4:5")
        assertRefused(text, path: "spec.clusters[0].endpoint", ["unknown field", "endpoints"], line: 13)
        assertRefused(replacing("  name: test", "  name: test\n  labels: {}"), path: "metadata.labels", ["unknown field", "name, namespace"])
        assertRefused(replacing("    service: productpage", "    service: productpage\n    sa: x"), path: "spec.workload.sa", ["unknown field", "serviceAccount"])
        assertRefused(replacing("    port: 15001", "    port: 15001\n    timeout: 1s"), path: "spec.outbound.timeout", ["unknown field", "headerTimeout"])
        assertRefused(replacing("      cluster: reviews", "      cluster: reviews\n      retries: 2"), path: "spec.routes[0].retries", ["unknown field", "timeout"])
        assertRefused(minimal + "\n  listeners: []", path: "spec.listeners", ["unknown field"])
    }

    func testWrongAPIVersion() {
        assertRefused(replacing("apiVersion: sidecar.mesh/v1alpha1", "apiVersion: sidecar.mesh/v1"), path: "apiVersion",
                      ["expected sidecar.mesh/v1alpha1", "\"sidecar.mesh/v1\""])
        assertRefused(replacing("apiVersion: sidecar.mesh/v1alpha1", "apiVersion: networking.istio.io/v1"), path: "apiVersion",
                      ["sidecar.mesh/v1alpha1"])
        assertRefused(replacing("apiVersion: sidecar.mesh/v1alpha1", ""), path: "apiVersion", ["required field is missing"])
    }

    func testUnknownKind() {
        assertRefused(replacing("kind: Bootstrap", "kind: EnvoyFilter"), path: "kind", ["unknown kind \"EnvoyFilter\"", "Bootstrap"])
        // A VirtualService document is read as traffic config; the Bootstrap is then missing.
        XCTAssertThrowsError(try Bootstrap.parse(replacing("kind: Bootstrap", "kind: VirtualService"), file: "test.yaml")) {
            XCTAssertTrue("\($0)".contains("no Bootstrap document found"), "\($0)")
        }
        assertRefused(replacing("kind: Bootstrap", ""), path: "kind", ["required field is missing"])
    }

    func testMissingWorkloadService() {
        assertRefused(replacing("    service: productpage", "    serviceAccount: x"), path: "spec.workload.service", ["required field is missing"])
        assertRefused(replacing("    service: productpage", "    service: \"\""), path: "spec.workload.service", ["must not be empty"])
        assertRefused(replacing("    service: productpage", "    service: Product_Page"), path: "spec.workload.service",
                      ["DNS label", "\"Product_Page\""])
        assertRefused(replacing("  workload:", "  workloads:"), path: "spec.workload", ["required field is missing"])
    }

    func testBadDuration() {
        let text = replacing("    port: 15001", "    port: 15001\n    headerTimeout: 10")
        assertRefused(text, path: "spec.outbound.headerTimeout", ["expected a duration such as 500ms, 10s, 5m or 24h", "\"10\""], line: 10)
        assertRefused(replacing("    port: 15001", "    port: 15001\n    idleTimeout: 0s"), path: "spec.outbound.idleTimeout", ["greater than zero"])
        assertRefused(replacing("    port: 15001", "    port: 15001\n    streamIdleTimeout: 0s"), path: "spec.outbound.streamIdleTimeout", ["greater than zero"])
        assertRefused(replacing("    port: 15001", "    port: 15001\n    maxConnections: 0"), path: "spec.outbound.maxConnections", ["between 1 and 10000000", "got 0"])
        assertRefused(replacing("    port: 15001", "    port: 15001\n    maxConnections: lots"), path: "spec.outbound.maxConnections", ["expected an integer"])
        assertRefused(replacing("      tls: DISABLE", "      tls: DISABLE\n      connectTimeout: 5 s"), path: "spec.clusters[0].connectTimeout", ["duration"])
        assertRefused(replacing("      cluster: reviews", "      cluster: reviews\n      timeout: soon"), path: "spec.routes[0].timeout", ["duration", "\"soon\""])
        assertRefused(minimal + "\n  drainTimeout: -1s", path: "spec.drainTimeout", ["duration"])
    }

    func testBadEndpoint() {
        assertRefused(replacing("        - 127.0.0.1:16006", "        - foo"), path: "spec.clusters[0].endpoints[0]",
                      ["expected IP:PORT", "\"foo\""])
        assertRefused(replacing("        - 127.0.0.1:16006", "        - 127.0.0.1:16006\n        - reviews:9080"), path: "spec.clusters[0].endpoints[1]",
                      ["expected IP:PORT", "\"reviews:9080\""])
        assertRefused(replacing("        - 127.0.0.1:16006", "        - 127.0.0.1:70000"), path: "spec.clusters[0].endpoints[0]", ["IP:PORT"])
        assertRefused(replacing("      endpoints:", "      endpoints: []").replacingLine("        - 127.0.0.1:16006", with: ""),
                      path: "spec.clusters[0].endpoints", ["at least one endpoint"])
    }

    func testRouteToMissingCluster() {
        assertRefused(replacing("      cluster: reviews", "      cluster: ratings"), path: "spec.routes[0].cluster",
                      ["no cluster named \"ratings\"", "defined: reviews"])
    }

    func testDuplicateCluster() {
        let text = replacing("  routes:", """
            - name: reviews
              tls: DISABLE
              endpoints:
                - 127.0.0.1:16007
          routes:
        """)
        assertRefused(text, path: "spec.clusters[1].name", ["duplicate cluster name \"reviews\""])
    }

    func testDuplicateHostAcrossRoutes() {
        let text = minimal + "\n    - hosts: [ratings, Reviews]\n      cluster: reviews"
        assertRefused(text, path: "spec.routes[1].hosts", ["host \"Reviews\"", "already routed by spec.routes[0]"])
    }

    func testIstioMutualWithoutTLS() {
        assertRefused(replacing("      tls: DISABLE", "      tls: ISTIO_MUTUAL"), path: "spec.clusters[0].tls",
                      ["ISTIO_MUTUAL needs spec.tls"])
        // The default mode is ISTIO_MUTUAL too.
        assertRefused(replacing("      tls: DISABLE", ""), path: "spec.clusters[0].tls", ["ISTIO_MUTUAL needs spec.tls"])
        assertRefused(replacing("      tls: DISABLE", "      tls: STRICT"), path: "spec.clusters[0].tls",
                      ["expected ISTIO_MUTUAL or DISABLE", "\"STRICT\""])
    }

    func testInboundWithoutTLS() {
        let text = replacing("  outbound:", "  inbound:\n    appAddress: 127.0.0.1:9080\n  outbound:")
        assertRefused(text, path: "spec.tls", ["inbound listener requires mutual TLS", "certChain, privateKey and trustBundle"])
    }

    func testInboundBadAppAddress() {
        let text = """
        apiVersion: sidecar.mesh/v1alpha1
        kind: Bootstrap
        spec:
          workload:
            service: reviews
          tls:
            certChain: a.pem
            privateKey: k.pem
            trustBundle: r.pem
          inbound:
            appAddress: localhost
        """
        assertRefused(text, path: "spec.inbound.appAddress", ["expected IP:PORT", "\"localhost\""])
        assertRefused(text.replacingLine("    appAddress: localhost", with: "    port: 15006"), path: "spec.inbound.appAddress", ["required field is missing"])
    }

    func testTLSFilesRequired() {
        let text = replacing("  outbound:", "  tls:\n    certChain: a.pem\n    privateKey: k.pem\n  outbound:")
        assertRefused(text, path: "spec.tls.trustBundle", ["required field is missing"])
    }

    func testNoListener() {
        let text = """
        apiVersion: sidecar.mesh/v1alpha1
        kind: Bootstrap
        spec:
          workload:
            service: productpage
        """
        assertRefused(text, path: "spec", ["no listener", "spec.outbound", "spec.inbound"])
    }

    func testOutboundWithoutRoutes() {
        let text = """
        apiVersion: sidecar.mesh/v1alpha1
        kind: Bootstrap
        spec:
          workload:
            service: productpage
          outbound:
            port: 15001
        """
        assertRefused(text, path: "spec.routes", ["outbound listener needs at least one route"])
        assertRefused(text + "\n  routes: []", path: "spec.routes", ["at least one route"])
    }

    func testConcurrencyRange() {
        assertRefused(minimal + "\n  concurrency: 0", path: "spec.concurrency", ["between 1 and 256", "got 0"])
        assertRefused(minimal + "\n  concurrency: 257", path: "spec.concurrency", ["between 1 and 256"])
        assertRefused(minimal + "\n  concurrency: two", path: "spec.concurrency", ["expected an integer"])
        assertRefused(minimal + "\n  concurrency: \"2\"", path: "spec.concurrency", ["expected an integer"])
    }

    func testBadAdminAddress() {
        assertRefused(minimal + "\n  admin:\n    address: localhost6", path: "spec.admin.address", ["expected an IP address", "\"localhost6\""])
        assertRefused(minimal + "\n  admin:\n    port: 65536", path: "spec.admin.port", ["between 1 and 65535"])
    }

    func testWrongShapes() {
        assertRefused(replacing("  workload:", "  workload: productpage").replacingLine("    service: productpage", with: ""),
                      path: "spec.workload", ["expected a mapping"])
        assertRefused(replacing("  clusters:", "  clusters: reviews")
                        .replacingLine("    - name: reviews", with: "").replacingLine("      tls: DISABLE", with: "")
                        .replacingLine("      endpoints:", with: "").replacingLine("        - 127.0.0.1:16006", with: ""),
                      path: "spec.clusters", ["expected a list"])
    }

    func testNoBootstrapDocument() {
        do {
            _ = try Bootstrap.parse("# nothing here\n", file: "empty.yaml")
            XCTFail("expected a refusal")
        } catch {
            XCTAssertTrue(error.description.hasPrefix("empty.yaml: "), "\(error)")
            XCTAssertTrue(error.message.contains("no Bootstrap document found"), "\(error)")
            XCTAssertTrue(error.message.contains("apiVersion: sidecar.mesh/v1alpha1"), "\(error)")
        }
    }

    func testSecondBootstrapDocument() {
        assertRefused(minimal + "\n---\n" + minimal, path: "kind", ["only one is allowed"])
        do {
            _ = try Bootstrap.parse(minimal + "\n---\n" + minimal, file: "test.yaml")
        } catch {
            XCTAssertEqual(error.document, 2)
            XCTAssertTrue(error.description.contains("document 2"), "\(error)")
        }
    }

    func testYAMLSyntaxErrorReportsTheLine() {
        // Line 9 is indented with a tab.
        let text = replacing("    port: 15001", "\tport: 15001")
        do {
            _ = try Bootstrap.parse(text, file: "test.yaml")
            XCTFail("expected a YAML error")
        } catch {
            XCTAssertEqual(error.line, 9, "\(error)")
            XCTAssertTrue(error.message.hasPrefix("YAML: "), "\(error)")
            XCTAssertTrue(error.message.contains("tab"), "\(error)")
            XCTAssertTrue(error.description.hasPrefix("test.yaml:9: "), "\(error)")
        }
        // An unclosed flow sequence opened on line 16.
        let text2 = replacing("    - hosts: [reviews]", "    - hosts: [reviews")
        do {
            _ = try Bootstrap.parse(text2, file: "test.yaml")
            XCTFail("expected a YAML error")
        } catch {
            // Reported where the parser noticed (the next line), naming the line of the '['.
            XCTAssertEqual(error.line, 17, "\(error)")
            XCTAssertTrue(error.message.hasPrefix("YAML: "), "\(error)")
            XCTAssertTrue(error.message.contains("'[' on line 16"), "\(error)")
        }
        // A duplicate key on line 10 (first defined on line 9).
        let text3 = replacing("  outbound:", "  outbound:\n    port: 1")
        do {
            _ = try Bootstrap.parse(text3, file: "test.yaml")
            XCTFail("expected a YAML error")
        } catch {
            XCTAssertEqual(error.line, 10, "\(error)")
            XCTAssertTrue(error.message.contains("duplicate key 'port'"), "\(error)")
            XCTAssertTrue(error.message.contains("line 9"), "\(error)")
        }
    }

    func testErrorDescriptionFormat() {
        let e = ConfigError(file: "a.yaml", document: 2, path: "spec.x", line: 7, message: "bad")
        XCTAssertEqual(e.description, "a.yaml:7: document 2: spec.x: bad")
        XCTAssertEqual(ConfigError(message: "m").description, "config: m")
    }
}

private extension String {
    /// Replaces the first line equal to `old` (test setup helper).
    func replacingLine(_ old: String, with new: String) -> String {
        var lines = split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if let i = lines.firstIndex(of: old) { lines[i] = new }
        return lines.joined(separator: "\n")
    }
}
