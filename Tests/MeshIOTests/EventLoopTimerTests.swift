import XCTest
import MeshCore
@testable import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// One firing of a timer probe: which probe, the loop's time when it fired, the deadline it had,
/// and whether it ran on the loop's thread.
struct Firing: Equatable {
    let name: String
    let now: UInt64
    let deadline: UInt64
    let onLoopThread: Bool
}

/// A timer-only `Pollable` (no descriptor) that logs each `onTimer` into a shared list.
final class TimerProbe: Pollable, @unchecked Sendable {
    let name: String
    private let log: Locked<[Firing]>
    private unowned let thread: LoopThread
    /// The deadline last set through `arm` (the loop clears `deadline` before firing).
    private(set) var armed: UInt64 = 0

    init(_ name: String, log: Locked<[Firing]>, thread: LoopThread) {
        self.name = name
        self.log = log
        self.thread = thread
        super.init(fd: -1)
    }

    /// Sets the deadline `after` nanoseconds from `base` (on the loop's thread).
    func arm(_ loop: EventLoop, base: UInt64, after: UInt64) {
        armed = base + after
        loop.setDeadline(self, armed)
    }

    override func onTimer(now: UInt64) {
        let f = Firing(name: name, now: now, deadline: armed, onLoopThread: thread.isLoopThread)
        log.withLock { $0.append(f) }
    }
}

/// The event loop's timers on a loop run by its own thread: deadlines fire in deadline order,
/// never before they are due, once each; a deadline moved earlier fires at the new time, one moved
/// later does not fire at the old one (the heap entry is re-armed lazily); a cleared deadline and a
/// released timer-only slot never fire, even when the slot is reused at once.
final class EventLoopTimerTests: XCTestCase {
    private var thread: LoopThread!
    private let log = Locked<[Firing]>([])

    override func setUp() {
        thread = LoopThread()
    }

    override func tearDown() {
        XCTAssertTrue(thread.stop(), "the loop did not stop")
        thread = nil
    }

    private func probe(_ name: String) -> TimerProbe {
        TimerProbe(name, log: log, thread: thread)
    }

    private func firings() -> [Firing] { log.withLock { $0 } }

    /// Waits until `name` fired (or `timeoutMillis` passed), then `settleMillis` more so that a
    /// firing that should not happen has had its chance.
    private func waitFor(_ name: String, timeoutMillis: Int = 3_000, settleMillis: UInt32 = 60) {
        XCTAssertTrue(waitUntil(timeoutMillis: timeoutMillis) { self.firings().contains { $0.name == name } }, "\(name) never fired")
        usleep(settleMillis * 1_000)
    }

    func testTimersFireInDeadlineOrderOnTheLoopThread() throws {
        let (a, b, c, d, cleared) = (probe("a"), probe("b"), probe("c"), probe("d"), probe("cleared"))
        let loop = thread.loop
        try thread.sync {
            for p in [a, b, c, d, cleared] { loop.registerTimerOnly(p) }
            let base = Clock.monotonicNanos()
            // Set out of order; c and d share a deadline.
            a.arm(loop, base: base, after: ms(80))
            b.arm(loop, base: base, after: ms(20))
            c.arm(loop, base: base, after: ms(50))
            d.arm(loop, base: base, after: ms(50))
            cleared.arm(loop, base: base, after: ms(10))
            loop.setDeadline(cleared, 0)
        }
        waitFor("a", settleMillis: 100)
        let f = firings()
        XCTAssertEqual(f.map(\.name).first, "b")
        XCTAssertEqual(Set(f.map(\.name).dropFirst().prefix(2)), ["c", "d"])
        XCTAssertEqual(f.map(\.name).last, "a")
        XCTAssertEqual(f.count, 4, "each deadline fires once and a cleared one never: \(f.map(\.name))")
        for x in f {
            XCTAssertGreaterThanOrEqual(x.now, x.deadline, "\(x.name) fired before its deadline")
            XCTAssertTrue(x.onLoopThread, "\(x.name) fired on another thread")
        }
        XCTAssertEqual(try thread.sync { [a, b, c, d] in [a, b, c, d].map(\.deadline) }, [0, 0, 0, 0], "a fired deadline is cleared")
    }

    func testMovingADeadlineEarlierOrLater() throws {
        let (earlier, later, back, sentinel) = (probe("earlier"), probe("later"), probe("back"), probe("sentinel"))
        let loop = thread.loop
        let base = try thread.sync { () -> UInt64 in
            for p in [earlier, later, back, sentinel] { loop.registerTimerOnly(p) }
            let base = Clock.monotonicNanos()
            earlier.arm(loop, base: base, after: ms(5_000))
            earlier.arm(loop, base: base, after: ms(30))      // moved earlier: fires at 30 ms
            later.arm(loop, base: base, after: ms(30))
            later.arm(loop, base: base, after: ms(250))       // moved later: not at 30 ms
            back.arm(loop, base: base, after: ms(30))
            back.arm(loop, base: base, after: ms(400))
            back.arm(loop, base: base, after: ms(120))        // later, then earlier again
            sentinel.arm(loop, base: base, after: ms(300))
            return base
        }
        waitFor("sentinel", settleMillis: 150)
        let f = firings()
        guard f.map(\.name) == ["earlier", "back", "later", "sentinel"] else {
            return XCTFail("fired in the wrong order or more than once: \(f.map(\.name))")
        }
        let at = Dictionary(uniqueKeysWithValues: f.map { ($0.name, $0.now) })
        XCTAssertLessThan(at["earlier"]! - base, ms(5_000), "the earlier deadline did not take over")
        XCTAssertGreaterThanOrEqual(at["earlier"]! - base, ms(30))
        XCTAssertGreaterThanOrEqual(at["later"]! - base, ms(250), "fired at the deadline it was moved away from")
        XCTAssertGreaterThanOrEqual(at["back"]! - base, ms(120))
    }

    func testDeregisteredTimerOnlySlotNeverFiresAndItsSlotIsReused() throws {
        let (gone, reuser, sentinel) = (probe("gone"), probe("reuser"), probe("sentinel"))
        let loop = thread.loop
        let (goneSlot, reuserSlot, counts, base) = try thread.sync { () -> (Int32, Int32, [Int], UInt64) in
            let before = loop.registeredCount
            loop.registerTimerOnly(gone)
            loop.registerTimerOnly(sentinel)
            let base = Clock.monotonicNanos()
            gone.arm(loop, base: base, after: ms(30))
            sentinel.arm(loop, base: base, after: ms(90))
            let goneSlot = gone.slot
            loop.deregisterTimerOnly(gone)
            let afterDeregister = gone.slot
            // The freed slot goes to the next registration; the old heap entry must not fire it.
            loop.registerTimerOnly(reuser)
            reuser.arm(loop, base: base, after: ms(150))
            // Timer-only slots are not counted as registered descriptors.
            return (goneSlot, reuser.slot, [before, loop.registeredCount, Int(afterDeregister)], base)
        }
        XCTAssertEqual(reuserSlot, goneSlot, "the released slot was not reused")
        XCTAssertEqual(counts[0], counts[1], "timer-only slots changed registeredCount")
        XCTAssertEqual(counts[2], -1)
        waitFor("reuser", settleMillis: 60)
        let f = firings()
        XCTAssertEqual(f.map(\.name), ["sentinel", "reuser"])
        XCTAssertGreaterThanOrEqual(f.last!.now - base, ms(150), "the reused slot fired at the released timer's deadline")
        // Re-arming after firing works and a deregistered probe stays silent.
        try thread.sync { reuser.arm(loop, base: Clock.monotonicNanos(), after: ms(10)); loop.deregisterTimerOnly(sentinel) }
        XCTAssertTrue(waitUntil(timeoutMillis: 2_000) { self.firings().count == 3 })
        XCTAssertEqual(firings().map(\.name), ["sentinel", "reuser", "reuser"])
    }
}
