import XCTest
import Foundation
@testable import MeshControl
@testable import MeshEtcd
@testable import MeshConfig
import MeshIO
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// Review item 5 (issue 21): a leader-only write whose election compare fails (this replica lost
/// the lead) says so at once, as the controller's "not leading" error, instead of retrying the
/// stale fence for 8 s under the apply lock and ending with a message the controller took for a
/// failed write. Runs a real etcd (/usr/bin/etcd), skipped without it.
final class CanaryFenceTests: XCTestCase {
    func testAWriteWithALostFenceSaysNotLeadingAtOnce() throws {
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: "/usr/bin/etcd"), "/usr/bin/etcd is missing")
        var t = Array("/tmp/canary-fence-XXXXXX".utf8CString)
        let dir = String(cString: mkdtemp(&t)!)
        var fds: [Int32] = [], ports: [Int] = []
        for _ in 0..<2 {
            let fd = Socket.listen(SocketAddress("127.0.0.1:0")!, reusePort: false)
            fds.append(fd)
            ports.append(Socket.localPort(fd))
        }
        for fd in fds { close(fd) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        p.arguments = ["--pdeathsig", "SIGKILL", "--", "/usr/bin/etcd", "--name", "m0", "--data-dir", "\(dir)/etcd",
                       "--listen-client-urls", "http://127.0.0.1:\(ports[0])", "--advertise-client-urls", "http://127.0.0.1:\(ports[0])",
                       "--listen-peer-urls", "http://127.0.0.1:\(ports[1])", "--initial-advertise-peer-urls", "http://127.0.0.1:\(ports[1])",
                       "--initial-cluster", "m0=http://127.0.0.1:\(ports[1])", "--log-level", "error"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        addTeardownBlock { p.terminate(); p.waitUntilExit(); _ = system("rm -rf '\(dir)'") }
        let client = try EtcdClient(endpoints: ["127.0.0.1:\(ports[0])"])
        let deadline = Date().addingTimeInterval(15)
        while (try? client.put("/probe", [1])) == nil {
            XCTAssertLessThan(Date(), deadline, "etcd did not start")
            if Date() >= deadline { return }
            usleep(100_000)
        }
        let rev = try client.put("/mesh/election/r", Array("r".utf8))
        let store = try ConfigStore(stateDir: dir, trustDomain: "cluster.local", grace: 30, outboundTrafficPolicy: .allowAny,
                                    etcd: EtcdStateStore(client: client, replica: "r", endpoints: "127.0.0.1:\(ports[0])"))
        let vs = CanaryControllerTests.rules + "\n---\n" + CanaryControllerTests.vs
        // The fence holds: the write commits.
        _ = try store.apply([ConfigStore.Input(file: "a.yaml", text: vs)], fence: .createRevision("/mesh/election/r", rev))
        // Another replica won the election since: the compare fails.
        _ = try client.put("/mesh/election/r", Array("r".utf8))
        _ = try client.txn(compare: [], success: [.delete("/mesh/election/r")])
        _ = try client.put("/mesh/election/r", Array("other".utf8))
        let started = Date()
        XCTAssertThrowsError(try store.apply([ConfigStore.Input(file: "b.yaml", text: vs.replacingOccurrences(of: "timeout: 2s", with: "timeout: 3s"))],
                                             fence: .createRevision("/mesh/election/r", rev))) { e in
            XCTAssertEqual((e as? ConfigError)?.path, CanaryController.notLeading, "\(e)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(started), 2, "the lost fence was retried")
    }
}
