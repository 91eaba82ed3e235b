import XCTest
@testable import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// Locked: the pthread-mutex-guarded value that replaced Synchronization.Mutex in meshd and the
/// event loop's task queue (ThreadSanitizer sees its happens-before edges; it cannot see Mutex's
/// contended path). Contended increments from several threads must all land.
final class LockedTests: XCTestCase {
    func testContendedUpdatesAllLand() {
        let counts = Locked([Int: Int]())
        let threads = (0..<4).map { t in
            Threads.spawn(name: "locked-\(t)") {
                for i in 0..<20_000 { counts.withLock { $0[i % 64, default: 0] += 1 } }
            }
        }
        for t in threads { Threads.join(t) }
        XCTAssertEqual(counts.withLock { $0.values.reduce(0, +) }, 80_000)
        XCTAssertEqual(counts.withLock { $0.count }, 64)
    }

    func testTypedErrorsPassThrough() {
        struct Refused: Error, Equatable {}
        let v = Locked(1)
        XCTAssertThrowsError(try v.withLock { (x: inout Int) throws(Refused) -> Int in
            x = 2
            throw Refused()
        }) { XCTAssertEqual($0 as? Refused, Refused()) }
        XCTAssertEqual(v.withLock { $0 }, 2, "changes made before the throw stay")
    }
}
