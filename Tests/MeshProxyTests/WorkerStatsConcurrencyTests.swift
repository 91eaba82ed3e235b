import XCTest
@testable import MeshProxy
#if canImport(Glibc)
import Glibc
#endif

/// WorkerStats as a worker and the admin thread use it: one thread counts, another sums while it
/// does. The reads are relaxed atomic loads (race-free under ThreadSanitizer), never torn, never
/// going back; after the writer is joined the sum is exact.
final class WorkerStatsConcurrencyTests: XCTestCase {
    func testAdminReadsWhileTheWorkerCounts() {
        let stats = WorkerStats()
        var tid = pthread_t()
        final class Box { let s: WorkerStats; init(_ s: WorkerStats) { self.s = s } }
        let arg = Unmanaged.passRetained(Box(stats)).toOpaque()
        XCTAssertEqual(pthread_create(&tid, nil, { p in
            let s = Unmanaged<Box>.fromOpaque(p!).takeRetainedValue().s
            for i in 0..<100_000 {
                s.inc(.requestsTotal)
                s.countResponse(i % 10 == 0 ? 503 : 200)
                s.inc(.downstreamConnectionsActive)
                s.dec(.downstreamConnectionsActive)
                s.add(.retries, 2)
            }
            s.inc(.upgrades)   // done
            return nil
        }, arg), 0)
        var last: UInt64 = 0
        while stats.get(.upgrades) == 0 {
            let v = stats.get(.requestsTotal)
            XCTAssertGreaterThanOrEqual(v, last)
            XCTAssertLessThanOrEqual(stats.get(.downstreamConnectionsActive), 1)
            last = v
        }
        pthread_join(tid, nil)
        XCTAssertEqual(stats.get(.requestsTotal), 100_000)
        XCTAssertEqual(stats.get(.responses2xx), 90_000)
        XCTAssertEqual(stats.get(.responses5xx), 10_000)
        XCTAssertEqual(stats.get(.retries), 200_000)
        XCTAssertEqual(stats.get(.downstreamConnectionsActive), 0)
    }
}
