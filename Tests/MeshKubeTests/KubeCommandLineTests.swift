import XCTest
import MeshYAML
import MeshAgent
import MeshCapture
@testable import MeshKube

/// The command lines in every golden file, parsed back by the parsers of the programs that run
/// them: the sidecar's (SidecarMeshFlags, after the kubelet's `$(VAR)` expansion from the
/// container's env) and `meshctl capture apply`'s (CaptureOptions).
final class KubeCommandLineTests: XCTestCase {
    static let golden = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../tests/kube/golden").standardized.path

    /// What the kubelet puts in the env the args refer to (downward API and ConfigMap).
    let kubelet = ["MESHD_ADDRESS": "meshd.mesh-system.svc:15012", "POD_NAMESPACE": "shop",
                   "SERVICE_ACCOUNT": "reviews", "INSTANCE_IP": "10.1.2.3"]

    func goldenFiles() throws -> [String] {
        let names = try FileManager.default.contentsOfDirectory(atPath: KubeCommandLineTests.golden)
        return names.filter { $0.hasSuffix(".classic.yaml") || $0.hasSuffix(".native.yaml") }.sorted()
    }

    /// Every container and init container named `name` in a file (List items included).
    func containers(_ file: String, _ name: String) throws -> [YAMLNode] {
        let text = try String(contentsOfFile: "\(KubeCommandLineTests.golden)/\(file)", encoding: .utf8)
        var out: [YAMLNode] = []
        func walk(_ n: YAMLNode) {
            if let items = n.items { items.forEach(walk) }
            for p in n.pairs ?? [] {
                if (p.key.scalar == "containers" || p.key.scalar == "initContainers"), let items = p.value.items {
                    out += items.filter { $0["name"]?.scalar == name }
                }
                walk(p.value)
            }
        }
        for d in try YAML.parse(text).documents { if let r = d.root { walk(r) } }
        return out
    }

    /// `$(VAR)` expanded as the kubelet does, only from the container's own env.
    func expand(_ arg: String, env: Set<String>) throws -> String {
        var s = arg
        while let start = s.range(of: "$("), let end = s[start.upperBound...].firstIndex(of: ")") {
            let name = String(s[start.upperBound..<end])
            XCTAssertTrue(env.contains(name), "$(\(name)) is not in the container's env: the kubelet would pass it literally")
            s.replaceSubrange(start.lowerBound...end, with: try XCTUnwrap(kubelet[name], name))
        }
        return s
    }

    func testSidecarCommandLineParsesAsTheSidecarParsesIt() throws {
        var seen = 0
        for file in try goldenFiles() {
            for c in try containers(file, KubeInjectOptions.proxyName) {
                XCTAssertEqual(c["command"]?.items?.compactMap(\.scalar), [KubeInjectOptions.sidecarBinary])
                let env = Set(c["env"]?.items?.compactMap { $0["name"]?.scalar } ?? [])
                let args = try (c["args"]?.items ?? []).map { try expand(XCTUnwrap($0.scalar), env: env) }
                let f: SidecarMeshFlags
                do { f = try SidecarMeshFlags.parse(args) } catch { XCTFail("\(file): \(error)"); continue }
                XCTAssertEqual(f.meshdText, "meshd.mesh-system.svc:15012", file)
                XCTAssertEqual(f.rootCert, KubeInjectOptions.rootCertPath, file)
                XCTAssertEqual(f.token, .file(KubeInjectOptions.tokenPath), file)
                XCTAssertEqual(f.labelsFile, KubeInjectOptions.labelsPath, file)
                XCTAssertEqual(f.statusPort, KubeInjectOptions.statusPort, file)
                XCTAssertEqual(f.advertise, "10.1.2.3", file)
                XCTAssertEqual(f.options.namespace, "shop", file)
                XCTAssertEqual(f.options.serviceAccount, "reviews", file)
                XCTAssertTrue(f.options.capture, file)
                XCTAssertEqual(f.options.listenAddress, "0.0.0.0", file)
                XCTAssertEqual(f.dnsPort, 15053, file)
                // The admin port the postStart hook polls is the sidecar's.
                XCTAssertEqual(f.options.adminPort, KubeInjectOptions.adminPort, file)
                // Each rewritten probe points at a path the sidecar serves.
                let paths = Set(f.appProbes.map(\.path))
                for other in try containers(file, "reviews") + containers(file, "ratings") + containers(file, "cleanup") {
                    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                        guard let h = other[probe]?["httpGet"], h["port"]?.scalar == "\(KubeInjectOptions.statusPort)" else { continue }
                        XCTAssertTrue(paths.contains(h["path"]?.scalar ?? ""), "\(file): \(probe) \(h["path"]?.scalar ?? "")")
                    }
                }
                seen += 1
            }
        }
        XCTAssertGreaterThanOrEqual(seen, 18)
    }

    func testInitCommandLineParsesAsMeshctlCaptureAndMatchesTheSidecar() throws {
        var seen = 0
        for file in try goldenFiles() {
            for c in try containers(file, KubeInjectOptions.initName) {
                let args = try XCTUnwrap(c["args"]?.items?.compactMap(\.scalar))
                let (action, o) = try CaptureOptions.parse(args)
                XCTAssertEqual(action, .apply, file)
                XCTAssertEqual(o.proxyUID, KubeInjectOptions.proxyUID, file)
                XCTAssertEqual(o.proxyGID, KubeInjectOptions.proxyUID, file)
                XCTAssertTrue(o.excludeInboundPorts.contains(KubeInjectOptions.statusPort), file)
                // Capture's ports are the sidecar's (both take their defaults).
                XCTAssertEqual(o.adminPort, KubeInjectOptions.adminPort, file)
                XCTAssertEqual(o.inboundPort, 15006, file)
                XCTAssertEqual(o.outboundPort, 15001, file)
                XCTAssertEqual(o.dnsPort, 15053, file)
                seen += 1
            }
        }
        XCTAssertGreaterThanOrEqual(seen, 18)
    }
}
