import XCTest
@testable import MeshStats
#if canImport(Glibc)
import Glibc
#endif

/// Runs `body` on a new pthread and returns a function that joins it.
private func onThread(_ body: @escaping @Sendable () -> Void) -> () -> Void {
    final class Box { let body: () -> Void; init(_ b: @escaping () -> Void) { body = b } }
    var tid = pthread_t()
    let arg = Unmanaged.passRetained(Box(body)).toOpaque()
    let rc = pthread_create(&tid, nil, { p in
        let b = Unmanaged<Box>.fromOpaque(p!).takeRetainedValue()
        b.body()
        return nil
    }, arg)
    precondition(rc == 0)
    return { pthread_join(tid, nil) }
}

/// SharedCounters and SeriesTable with a writer and a concurrent reader, the way a worker and
/// the admin thread use them. Under `scripts/sanitizers.sh thread` these also check that the
/// reads are race-free; without a sanitizer they check that the reader never sees a value go back.
final class SharedCountersTests: XCTestCase {
    func testSingleWriterAddsAreSeenByAReaderAndNeverGoBack() {
        let c = SharedCounters.allocate(count: 3)
        defer { c.deallocate() }
        let n: UInt64 = 200_000
        let join = onThread {
            for _ in 0..<n { c.add(0, 1); c[1] &+= 2 }
            c.add(2, 1)   // done
        }
        var last: UInt64 = 0
        while c[2] == 0 {
            let v = c[0]
            XCTAssertGreaterThanOrEqual(v, last)
            last = v
        }
        join()
        XCTAssertEqual(c[0], n)
        XCTAssertEqual(c[1], 2 * n)
        c.subtract(0, n)
        XCTAssertEqual(c[0], 0)
        var copy = [UInt64](repeating: 9, count: 2)
        copy.withUnsafeMutableBufferPointer { c.copy(from: 1, count: 2, into: $0.baseAddress!) }
        XCTAssertEqual(copy, [2 * n, 1])
    }

    func testSeriesTableIsScrapedWhileAWorkerRecords() {
        let t = SeriesTable(slotsPerSeries: 2, capacity: 64)
        let done = SharedCounters.allocate(count: 1)
        defer { done.deallocate() }
        let join = onThread {
            for i in 0..<100_000 {
                let s = t.series(UInt64(i % 40))
                s[0] &+= 1
                s.add(1, 3)
            }
            done[0] = 1
        }
        var scrapes = 0
        repeat {
            var total: UInt64 = 0
            t.forEach { _, s in total &+= s[0] }
            XCTAssertLessThanOrEqual(total, 100_000)
            scrapes += 1
        } while done[0] == 0
        join()
        var total: UInt64 = 0, sum: UInt64 = 0
        t.forEach { _, s in total &+= s[0]; sum &+= s[1] }
        XCTAssertEqual(total, 100_000)
        XCTAssertEqual(sum, 300_000)
        XCTAssertEqual(t.seriesCount, 40)
        XCTAssertGreaterThan(scrapes, 0)
    }
}
