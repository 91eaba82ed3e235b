import Foundation
import XCTest
import MeshCore
import MeshIO
@testable import MeshEtcd
#if canImport(Glibc)
import Glibc
#endif

/// Real etcd processes for the tests: Debian's /usr/bin/etcd on free 127.0.0.1 ports with a
/// temporary data directory each, started under `setpriv --pdeathsig SIGKILL` (a test process
/// that dies takes them along) and SIGKILLed by `stop()`, which every test registers as a
/// teardown block so it runs on every exit path.
final class EtcdCluster: @unchecked Sendable {
    static let binary = "/usr/bin/etcd"

    struct Member {
        let name: String
        let clientPort: Int
        let peerPort: Int
        var process: Process?
        var endpoint: String { "127.0.0.1:\(clientPort)" }
    }

    let dir: String
    private(set) var members: [Member] = []
    private let lock = NSLock()

    /// Skips the test (with the reason) when etcd is not installed.
    static func skipUnlessInstalled() throws {
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: binary),
                          "\(binary) is missing (apt-get install etcd-server etcd-client)")
    }

    /// Ports the kernel hands out now (held open together so they differ, then released).
    static func freePorts(_ n: Int) -> [Int] {
        var fds: [Int32] = []
        var ports: [Int] = []
        for _ in 0..<n {
            let fd = Socket.listen(SocketAddress("127.0.0.1:0")!, reusePort: false)
            precondition(fd >= 0, "cannot bind a free port")
            fds.append(fd)
            ports.append(Socket.localPort(fd))
        }
        for fd in fds { close(fd) }
        return ports
    }

    /// Starts `size` members forming one cluster and waits until every member sees a leader.
    /// `ipv6`: clients may also connect on [::1] (same port).
    let ipv6: Bool

    init(size: Int, test: XCTestCase, ipv6: Bool = false) throws {
        self.ipv6 = ipv6
        try EtcdCluster.skipUnlessInstalled()
        dir = NSTemporaryDirectory() + "mesh-etcd-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let ports = EtcdCluster.freePorts(size * 2)
        for i in 0..<size {
            members.append(Member(name: "m\(i)", clientPort: ports[2 * i], peerPort: ports[2 * i + 1], process: nil))
        }
        test.addTeardownBlock { [self] in stop() }
        let initial = members.map { "\($0.name)=http://127.0.0.1:\($0.peerPort)" }.joined(separator: ",")
        let token = "mesh-test-\(UInt32.random(in: 0...UInt32.max))"
        for i in 0..<size { try launch(i, initialCluster: initial, token: token) }
        try waitForLeader(seconds: 20)
    }

    var endpoints: [String] { members.map { $0.endpoint } }

    private func launch(_ i: Int, initialCluster: String, token: String) throws {
        let m = members[i]
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        p.arguments = ["--pdeathsig", "SIGKILL", "--", EtcdCluster.binary,
                       "--name", m.name, "--data-dir", "\(dir)/\(m.name)",
                       "--listen-client-urls", "http://127.0.0.1:\(m.clientPort)" + (ipv6 ? ",http://[::1]:\(m.clientPort)" : ""),
                       "--advertise-client-urls", "http://127.0.0.1:\(m.clientPort)",
                       "--listen-peer-urls", "http://127.0.0.1:\(m.peerPort)",
                       "--initial-advertise-peer-urls", "http://127.0.0.1:\(m.peerPort)",
                       "--initial-cluster", initialCluster, "--initial-cluster-state", "new",
                       "--initial-cluster-token", token, "--logger", "zap", "--log-level", "error"]
        let log = FileHandle(forWritingAtPath: "\(dir)/\(m.name).log") ?? {
            _ = FileManager.default.createFile(atPath: "\(dir)/\(m.name).log", contents: nil)
            return FileHandle(forWritingAtPath: "\(dir)/\(m.name).log")!
        }()
        p.standardOutput = log
        p.standardError = log
        try p.run()
        lock.lock(); members[i].process = p; lock.unlock()
    }

    /// Waits until every running member reports the same leader.
    func waitForLeader(seconds: Double) throws {
        let deadline = Date().addingTimeInterval(seconds)
        let client = try EtcdClient(endpoints: endpoints, timeout: 1)
        while Date() < deadline {
            var leaders = Set<UInt64>()
            var ok = true
            for m in members where m.process?.isRunning == true {
                if let s = try? client.status(endpoint: m.endpoint, timeout: 0.5), s.leaderID != 0 { leaders.insert(s.leaderID) }
                else { ok = false }
            }
            if ok && leaders.count == 1 {
                // A linearizable read goes through raft: the cluster serves.
                if (try? client.get("/health-probe")) != nil { return }
            }
            usleep(100_000)
        }
        throw EtcdError("etcd cluster in \(dir) has no leader after \(seconds) s; logs: \(dir)/*.log")
    }

    /// The index of the member that leads raft now (nil: none known).
    func raftLeaderIndex() throws -> Int? {
        let client = try EtcdClient(endpoints: endpoints, timeout: 1)
        for (i, m) in members.enumerated() where m.process?.isRunning == true {
            if let s = try? client.status(endpoint: m.endpoint, timeout: 0.5), s.isLeader { return i }
        }
        return nil
    }

    /// SIGKILLs member `i` and waits for it to be gone.
    func kill(_ i: Int) {
        lock.lock(); let p = members[i].process; lock.unlock()
        guard let p, p.isRunning else { return }
        Glibc.kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
    }

    /// Sends `sig` to member `i` (SIGSTOP: it hangs with its sockets open; SIGCONT: it goes on).
    func signal(_ i: Int, _ sig: Int32) {
        lock.lock(); let p = members[i].process; lock.unlock()
        guard let p, p.isRunning else { return }
        Glibc.kill(p.processIdentifier, sig)
    }

    /// Kills every member and removes the data directory (idempotent).
    func stop() {
        for i in members.indices { kill(i) }
        try? FileManager.default.removeItem(atPath: dir)
    }
}

/// Runs `body` on a thread of its own; `join` waits for it.
final class TestThread: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    init(_ body: @escaping @Sendable () -> Void) {
        Threads.spawnDetached { [done] in body(); done.signal() }
    }
    /// False when the thread did not finish within `seconds`.
    func join(seconds: Double) -> Bool { done.wait(timeout: .now() + seconds) == .success }
}

/// A value shared between a test and its threads.
final class Shared<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var v: T
    init(_ v: T) { self.v = v }
    var value: T { lock.lock(); defer { lock.unlock() }; return v }
    func update(_ f: (inout T) -> Void) { lock.lock(); f(&v); lock.unlock() }
}

/// Waits until `cond` holds or `seconds` pass; whether it held.
func eventually(_ seconds: Double, step: Double = 0.02, _ cond: () -> Bool) -> Bool {
    let deadline = Clock.monotonicNanos() + UInt64(seconds * 1e9)
    while Clock.monotonicNanos() < deadline {
        if cond() { return true }
        usleep(UInt32(step * 1e6))
    }
    return cond()
}

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }
