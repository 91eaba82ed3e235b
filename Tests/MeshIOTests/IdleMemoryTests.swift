import XCTest
@testable import MeshIO

/// When `IdleMemory` says to release: after enough quiet samples, once per quiet period, never
/// while busy; pages faulting back in (serving again) arm it like CPU use does.
final class IdleMemoryTests: XCTestCase {
    private let ms: UInt64 = 1_000_000

    /// A sampler over a fake clock: `step(cpu ms, faults)` advances both and ticks.
    private struct Sampler {
        var idle: IdleMemory
        var cpu: UInt64 = 500_000_000
        var faults = 1000
        mutating func step(_ cpuMs: UInt64, _ f: Int = 0) -> Bool {
            cpu += cpuMs * 1_000_000
            faults += f
            return idle.tick(cpuNanos: cpu, minorFaults: faults)
        }
        mutating func released(costMs: UInt64 = 40, faults f: Int = 0) {
            cpu += costMs * 1_000_000
            faults += f
            idle.didRelease(cpuNanos: cpu, minorFaults: faults)
        }
    }

    private func sampler(quietIntervals: Int = 2) -> Sampler {
        Sampler(idle: IdleMemory(intervalMillis: 2000, quietNanos: 5 * ms, activeFaults: 32, quietIntervals: quietIntervals))
    }

    func testReleasesOnceAfterTheQuietSamplesThenNotAgainUntilActive() {
        var s = sampler()
        XCTAssertFalse(s.step(300), "the first sample only sets the clock")
        XCTAssertFalse(s.step(1), "one quiet sample is not enough")
        XCTAssertTrue(s.step(1), "two quiet samples: release")
        s.released()
        for _ in 0..<10 { XCTAssertFalse(s.step(1, 3), "still the same quiet period") }
        XCTAssertFalse(s.step(300), "busy")
        XCTAssertFalse(s.step(1))
        XCTAssertTrue(s.step(1), "quiet again after being busy: release again")
    }

    func testNeverReleasesWhileBusy() {
        var s = sampler()
        for _ in 0..<20 { XCTAssertFalse(s.step(5)) }   // exactly the threshold counts as busy
        for _ in 0..<20 { XCTAssertFalse(s.step(0, 32)) }   // so do 32 faults
    }

    func testAnActiveSampleRestartsTheQuietCount() {
        var s = sampler(quietIntervals: 3)
        XCTAssertFalse(s.step(0))
        XCTAssertFalse(s.step(1))
        XCTAssertFalse(s.step(1))
        XCTAssertFalse(s.step(50))
        XCTAssertFalse(s.step(1))
        XCTAssertFalse(s.step(1))
        XCTAssertTrue(s.step(1))
    }

    /// Light traffic after a release: little CPU, but its pages come back; the next quiet
    /// period releases them again (after quiet samples, not at once).
    func testPagesFaultingBackArmTheNextRelease() {
        var s = sampler()
        XCTAssertFalse(s.step(0))
        XCTAssertFalse(s.step(1))
        XCTAssertTrue(s.step(1))
        s.released()
        XCTAssertFalse(s.step(1, 20), "the idle threads touching their pages again")
        XCTAssertFalse(s.step(1))
        XCTAssertFalse(s.step(2, 100), "a request: 2 ms, 100 pages back")
        XCTAssertFalse(s.step(1), "one quiet sample after it")
        XCTAssertTrue(s.step(1), "two: release again")
        s.released()
        for _ in 0..<5 { XCTAssertFalse(s.step(1, 31)) }
    }

    /// The sample right after a release does not count its faults (the idle threads bring back
    /// what they touch), or a release would arm the next one and repeat forever; its CPU counts.
    func testTheReleaseItselfIsNotActivity() {
        var s = sampler()
        XCTAssertFalse(s.step(0))
        XCTAssertFalse(s.step(1))
        XCTAssertTrue(s.step(1))
        s.released(costMs: 40, faults: 500)
        XCTAssertFalse(s.step(1, 200), "settling: faults ignored")
        for _ in 0..<5 { XCTAssertFalse(s.step(1)) }
        s = sampler()
        XCTAssertFalse(s.step(0))
        XCTAssertFalse(s.step(1))
        XCTAssertTrue(s.step(1))
        s.released()
        XCTAssertFalse(s.step(30), "busy in the settling sample")
        XCTAssertFalse(s.step(1))
        XCTAssertTrue(s.step(1))
    }
}
