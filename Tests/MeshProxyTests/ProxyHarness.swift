import XCTest
import MeshCore
import MeshConfig
import MeshIO
@testable import MeshProxy
#if canImport(Glibc)
import Glibc
#endif

/// An endpoint of a harness cluster: a fake upstream the harness starts, or a port that refuses
/// every connection (bound, not listening, held until tear-down so nothing else takes it).
enum HarnessEndpoint {
    case fake
    case refusing
    /// A server the test runs itself on 127.0.0.1 (a raw TCP server, for TCP services).
    case port(Int)
}

/// A cluster of the harness's static config: its name, its endpoints, whether a simple route
/// (`spec.routes`) sends the host of its name to it (leave it out when a VirtualService routes that
/// host), and extra YAML fields under it (indented six spaces).
struct HarnessCluster {
    var name: String
    var endpoints: [HarnessEndpoint] = [.fake]
    var routed = true
    var extra: String = ""
}

/// The sidecar's data plane in the test process, as `sidecar --config FILE` runs it: a static
/// Bootstrap written to a temp directory, read back, parsed and compiled by the sidecar's own
/// code, served by `ProxyServer` with its worker and admin threads; each cluster's endpoints are
/// `FakeUpstream`s (or refusing ports) on 127.0.0.1. The file names placeholder listener ports
/// (the config refuses port 0); the parsed bootstrap gets port 0 for the outbound and admin
/// listeners, so the kernel picks free ports and nothing is probed or raced. `stop()` (also run
/// when `start` fails half-way) stops the upstreams and the proxy, closes every port and removes
/// the files.
final class ProxyHarness: @unchecked Sendable {
    private(set) var server: ProxyServer?
    private(set) var outboundPort = 0
    private(set) var adminPort = 0
    /// The config file as written (for messages).
    private(set) var configPath = ""
    private(set) var configText = ""
    /// Each cluster's fake upstreams, in endpoint order.
    private(set) var upstreams: [String: [FakeUpstream]] = [:]
    private var refusing: [Int32] = []
    private var dir = ""
    private var stopped = false

    private init() {}

    /// Starts the upstreams and the proxy: `documents` (VirtualService, DestinationRule...)
    /// follow the Bootstrap in the same file; `outboundExtra` adds fields to `spec.outbound`
    /// (indented four spaces).
    static func start(clusters: [HarnessCluster], documents: [String] = [], concurrency: Int = 1,
                      outboundExtra: String = "") throws -> ProxyHarness {
        let h = ProxyHarness()
        do {
            try h.launch(clusters: clusters, documents: documents, concurrency: concurrency, outboundExtra: outboundExtra)
        } catch {
            h.stop()
            throw error
        }
        return h
    }

    /// The first fake upstream of `cluster`.
    func upstream(_ cluster: String) -> FakeUpstream {
        guard let u = upstreams[cluster]?.first else { preconditionFailure("no fake upstream in cluster \(cluster)") }
        return u
    }

    /// A new raw client connection to the outbound listener.
    func connect() throws -> WireSocket { try WireSocket.connect(port: outboundPort) }

    /// A counter summed over the workers, as `/stats` shows it.
    func counter(_ c: WorkerStats.Counter) -> UInt64 { server?.total(c) ?? 0 }

    private func launch(clusters: [HarnessCluster], documents: [String], concurrency: Int, outboundExtra: String) throws {
        var yaml = """
        apiVersion: sidecar.mesh/v1alpha1
        kind: Bootstrap
        metadata: {name: harness, namespace: default}
        spec:
          workload: {service: harness}
          concurrency: \(concurrency)
          drainTimeout: 1s
          admin: {port: 15000}
          outbound:
            port: 15001
            headerTimeout: 2s

        """
        yaml += outboundExtra.isEmpty ? "" : outboundExtra + "\n"
        yaml += "  clusters:\n"
        for c in clusters {
            yaml += "    - name: \(c.name)\n      tls: DISABLE\n      endpoints:\n"
            for e in c.endpoints {
                let port: Int
                switch e {
                case .fake:
                    let u = try FakeUpstream()
                    upstreams[c.name, default: []].append(u)
                    port = u.port
                case .refusing:
                    let (fd, p) = try Self.refusingPort()
                    refusing.append(fd)
                    port = p
                case .port(let p):
                    port = p
                }
                yaml += "        - 127.0.0.1:\(port)\n"
            }
            if !c.extra.isEmpty { yaml += c.extra + "\n" }
        }
        let routed = clusters.filter(\.routed)
        if !routed.isEmpty {
            yaml += "  routes:\n"
            for c in routed { yaml += "    - {name: \(c.name), hosts: [\(c.name)], cluster: \(c.name)}\n" }
        }
        for d in documents { yaml += "---\n" + d + "\n" }
        configText = yaml

        var template = Array("/tmp/\(Self.dirPrefix)XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw WireError.system("mkdtemp", errno) }
        dir = String(cString: made)
        configPath = dir + "/sidecar.yaml"
        try Self.writeFile(configPath, yaml)

        // What the sidecar's main does with --config, with the listener ports made 0.
        var bootstrap = try Bootstrap.parse(try Self.readFile(configPath), file: configPath)
        bootstrap.admin = SocketAddress(host: "127.0.0.1", port: 0)!
        bootstrap.outbound?.address = SocketAddress(host: "127.0.0.1", port: 0)!
        let snapshot = try ProxySnapshot(bootstrap: bootstrap, version: "static-1")
        let sockets = try ListenerSockets.bind(outbound: bootstrap.outbound?.address, inbound: nil, workers: concurrency)
        let server = ProxyServer(snapshot: snapshot, concurrency: concurrency)
        do {
            try server.start(sockets: sockets)
        } catch {
            // Past its check of the sockets, a failed start leaves them open (its only check
            // before that cannot fail here: one socket per worker was bound above).
            sockets.close()
            throw error
        }
        self.server = server
        outboundPort = server.outboundPort
        adminPort = server.adminPort
        guard outboundPort > 0, adminPort > 0 else { throw WireError.malformed("the proxy reported no ports") }
        // Up and serving: the admin thread answers /ready.
        let admin = try WireSocket.connect(port: adminPort)
        try admin.write("GET /ready HTTP/1.1\r\nHost: admin\r\n\r\n")
        let ready = try admin.readResponse()
        guard ready.status == 200 else { throw WireError.malformed("/ready answered \(ready.startLine)") }
    }

    /// Stops the fake upstreams (so nothing in flight waits on them), drains and stops the proxy
    /// (at most 1 s), closes the admin listener `ProxyServer` leaves open, the refusing ports and
    /// the temp files. Idempotent; safe after a failed start.
    func stop() {
        if stopped { return }
        stopped = true
        for u in upstreams.values.joined() { u.stop() }
        if let s = server {
            s.drainAndStop(timeout: 1_000_000_000)
            // `drainAndStop` stops the admin thread but never closes its listening socket (the
            // sidecar exits right after); in a test process it would hold the port until exit.
            // That listener stays registered in the admin loop and holds the loop, so the loop's
            // epoll and eventfd descriptors stay open too (two per harness; not sockets, no port).
            if adminPort > 0 { Self.closeListeningSocket(port: adminPort) }
        }
        server = nil
        for fd in refusing { Glibc.close(fd) }
        refusing.removeAll()
        if !configPath.isEmpty { unlink(configPath) }
        if !dir.isEmpty { rmdir(dir) }
    }

    // MARK: helpers

    /// A TCP socket bound to 127.0.0.1 (kernel-chosen port), not listening: connects are refused.
    static func refusingPort() throws -> (Int32, Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw WireError.system("socket", errno) }
        var a = SocketAddress(host: "127.0.0.1", port: 0)!
        let rc = withUnsafePointer(to: &a.storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, a.length) }
        }
        guard rc == 0 else { let e = errno; Glibc.close(fd); throw WireError.system("bind", e) }
        return (fd, Socket.localPort(fd))
    }

    /// Closes this process's listening TCP socket on `port`, if any.
    static func closeListeningSocket(port: Int) {
        for fd in openDescriptors() {
            var listening: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0, listening == 1 else { continue }
            if Socket.localPort(fd) == port { Glibc.close(fd) }
        }
    }

    /// The descriptors open in this process.
    static func openDescriptors() -> [Int32] {
        guard let d = opendir("/proc/self/fd") else { return [] }
        let own = dirfd(d)
        var fds: [Int32] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if let fd = Int32(name), fd != own { fds.append(fd) }
        }
        closedir(d)
        return fds
    }

    /// This process's open sockets, as "fd socket:[inode]".
    static func openSockets() -> Set<String> {
        Set(openDescriptors().compactMap { fd -> String? in
            var b = [CChar](repeating: 0, count: 256)
            let n = readlink("/proc/self/fd/\(fd)", &b, 255)
            guard n > 0 else { return nil }
            let target = String(decoding: b[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            return target.hasPrefix("socket:") ? "\(fd) \(target)" : nil
        })
    }

    /// The harness config directories present in /tmp.
    static func harnessDirectories() -> Set<String> {
        guard let d = opendir("/tmp") else { return [] }
        defer { closedir(d) }
        var out: Set<String> = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasPrefix(dirPrefix) { out.insert(name) }
        }
        return out
    }

    private static let dirPrefix = "mesh-proxy-harness-"

    static func writeFile(_ path: String, _ text: String) throws {
        guard let f = fopen(path, "wb") else { throw WireError.system("fopen \(path)", errno) }
        defer { fclose(f) }
        let bytes = Array(text.utf8)
        guard fwrite(bytes, 1, bytes.count, f) == bytes.count else { throw WireError.system("fwrite \(path)", errno) }
    }

    static func readFile(_ path: String) throws -> String {
        guard let f = fopen(path, "rb") else { throw WireError.system("fopen \(path)", errno) }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = fread(&chunk, 1, chunk.count, f)
            bytes += chunk[0..<n]
            if n < chunk.count { break }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Harness start-up tied to the lifetime of the test that asks for it.
extension XCTestCase {
    /// Starts a harness that is stopped when the test ends, whatever way it ends.
    func startHarness(clusters: [HarnessCluster], documents: [String] = [], concurrency: Int = 1,
                      outboundExtra: String = "") throws -> ProxyHarness {
        let h = try ProxyHarness.start(clusters: clusters, documents: documents, concurrency: concurrency, outboundExtra: outboundExtra)
        addTeardownBlock { h.stop() }
        return h
    }
}
