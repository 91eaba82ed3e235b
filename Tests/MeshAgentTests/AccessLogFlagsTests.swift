import XCTest
import MeshAgent
import MeshConfig
import MeshCore

/// `--access-log-path` and `--access-log-sampling` (mesh mode): refusals naming the flag, then
/// the mesh-mode bootstrap they build (lines only where a Telemetry enables them).
final class AccessLogFlagsTests: XCTestCase {
    let base = ["--meshd", "127.0.0.1:15012", "--root-cert", "/tmp/root.pem", "--token", "t", "--service", "reviews", "--app-port", "9080"]

    func refused(_ extra: [String], _ prefix: String, file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try SidecarMeshFlags.parse(base + extra)
            XCTFail("accepted \(extra)", file: file, line: line)
        } catch {
            XCTAssertTrue(error.description.hasPrefix(prefix), error.description, file: file, line: line)
        }
    }

    func testRefusals() {
        refused(["--access-log-sampling", "0"], "--access-log-sampling: expected a fraction in (0, 1]")
        refused(["--access-log-sampling", "1.5"], "--access-log-sampling: expected a fraction in (0, 1]")
        refused(["--access-log-sampling", "nan"], "--access-log-sampling: expected a fraction in (0, 1]")
        refused(["--access-log-sampling", "x"], "--access-log-sampling: expected a fraction in (0, 1]")
        refused(["--access-log-path", ""], "--access-log-path: expected a file name")
    }

    func testDefaultsAndValues() throws {
        let d = try SidecarMeshFlags.parse(base).bootstrap(nil)
        let al = try XCTUnwrap(d.accessLog)
        XCTAssertEqual(al.path, "/dev/stdout")
        XCTAssertEqual(al.sampling, 1)
        XCTAssertTrue(al.telemetryOnly)
        XCTAssertFalse(al.includeQuery)
        let f = try SidecarMeshFlags.parse(base + ["--access-log-path", "/tmp/a.log", "--access-log-sampling", "0.25"]).bootstrap(nil)
        XCTAssertEqual(f.accessLog?.path, "/tmp/a.log")
        XCTAssertEqual(f.accessLog?.sampling, 0.25)
    }
}
