import XCTest
import CMeshShims
import MeshCore
@testable import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// A `Pollable` on an eventfd that logs, in order, its events, its timer and its flushes, and
/// asks for a flush from the first two (and from `onFlush` while `remarks` lasts). Like every user
/// of `markDirty` in the sources (`Connection.requestFlush`), it marks itself once until flushed.
final class OrderProbe: Pollable {
    let loop: EventLoop
    var log: [String] = []
    var remarks = 0
    private var queued = false

    func requestFlush() {
        if !queued { queued = true; loop.markDirty(self) }
    }

    init(loop: EventLoop) {
        self.loop = loop
        super.init(fd: eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC)))
    }

    deinit { Glibc.close(fd) }

    func kick() {
        var one: UInt64 = 1
        _ = Glibc.write(fd, &one, 8)
    }

    override func onEvents(_ events: UInt32) {
        var v: UInt64 = 0
        _ = Glibc.read(fd, &v, 8)
        log.append("event")
        requestFlush()
    }

    override func onTimer(now: UInt64) {
        log.append("timer")
        requestFlush()
    }

    override func onFlush() {
        queued = false
        log.append("flush")
        if remarks > 0 {
            remarks -= 1
            requestFlush()
        }
    }
}

/// A plain `Connection` that counts its flushes (the end-of-iteration writes).
final class FlushCountingConnection: Connection {
    var flushes = 0
    override func onFlush() {
        flushes += 1
        super.onFlush()
    }
}

/// End-of-iteration flushing, driven one iteration at a time with `runOnce` on the test thread:
/// an object marked dirty by its event and its timer is flushed once, after both, in the same
/// iteration; a mark made inside `onFlush` waits for the next iteration; a connection that queues
/// output many times in one iteration is flushed (and written) once. And `post` from other
/// threads, on a loop run by its own thread.
final class EventLoopFlushAndPostTests: XCTestCase {

    func testDirtyObjectsAreFlushedAfterEventsAndTimersOfTheSameIteration() {
        let loop = EventLoop(name: "flush")
        let p = OrderProbe(loop: loop)
        XCTAssertTrue(loop.register(p, events: EPOLLIN.rawValue))
        p.kick()
        loop.setDeadline(p, loop.now)          // due now: fires in the next iteration
        let t0 = Clock.monotonicNanos()
        loop.runOnce(maxWaitMillis: 1_000)
        XCTAssertEqual(p.log, ["event", "timer", "flush"])
        // Nothing left to do: the next iteration waits, flushes nothing.
        loop.runOnce(maxWaitMillis: 0)
        XCTAssertEqual(p.log, ["event", "timer", "flush"])
        XCTAssertLessThan(Clock.monotonicNanos() - t0, ms(500), "an iteration with ready work waited")
        loop.deregister(p)
        loop.runOnce(maxWaitMillis: 0)
    }

    func testAMarkMadeWhileFlushingWaitsForTheNextIteration() {
        let loop = EventLoop(name: "flush")
        let p = OrderProbe(loop: loop)
        p.remarks = 2
        p.requestFlush()
        // Dirty work makes the iteration poll instead of waiting the full second.
        let t0 = Clock.monotonicNanos()
        loop.runOnce(maxWaitMillis: 1_000)
        XCTAssertLessThan(Clock.monotonicNanos() - t0, ms(500), "a dirty object did not cut the wait short")
        XCTAssertEqual(p.log, ["flush"], "a mark made in onFlush was flushed in the same iteration")
        loop.runOnce(maxWaitMillis: 1_000)
        XCTAssertEqual(p.log, ["flush", "flush"])
        loop.runOnce(maxWaitMillis: 1_000)
        XCTAssertEqual(p.log, ["flush", "flush", "flush"])
        loop.runOnce(maxWaitMillis: 0)
        XCTAssertEqual(p.log.count, 3, "flushed without being marked")
    }

    func testAConnectionQueuingManyTimesInOneIterationIsFlushedOnce() throws {
        var fds: [Int32] = [-1, -1]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds), 0)
        defer { Glibc.close(fds[1]) }
        let loop = EventLoop(name: "flush")
        let c = FlushCountingConnection(loop: loop, fd: fds[0], security: nil, connecting: false)
        XCTAssertTrue(c.start())
        XCTAssertTrue(c.isEstablished)
        for part in ["one ", "two ", "three"] {
            let b = Array(part.utf8)
            b.withUnsafeBytes { c.send($0.baseAddress!, $0.count) }
        }
        c.requestFlush()
        XCTAssertEqual(c.pendingOutput, 13, "send wrote before the end of the iteration")
        loop.runOnce(maxWaitMillis: 0)
        XCTAssertEqual(c.flushes, 1)
        XCTAssertEqual(c.pendingOutput, 0)
        var buf = [UInt8](repeating: 0, count: 64)
        let n = buf.withUnsafeMutableBytes { Glibc.read(fds[1], $0.baseAddress, 64) }
        XCTAssertEqual(n, 13, "the three sends did not leave in one write")
        XCTAssertEqual(String(decoding: buf[0..<max(0, n)], as: UTF8.self), "one two three")
        loop.runOnce(maxWaitMillis: 0)
        XCTAssertEqual(c.flushes, 1, "flushed again with nothing queued")
        c.closeNow()
        loop.runOnce(maxWaitMillis: 0)
    }

    func testTasksPostedFromOtherThreadsRunOnTheLoopThreadInOrder() throws {
        let lt = LoopThread()
        defer { XCTAssertTrue(lt.stop()) }
        let ran = Locked<[(poster: Int, seq: Int, onLoop: Bool)]>([])
        let posters = 4, each = 250
        var threads: [pthread_t] = []
        for poster in 0..<posters {
            threads.append(Threads.spawn(name: "poster") {
                for seq in 0..<each {
                    lt.loop.post { ran.withLock { $0.append((poster, seq, lt.isLoopThread)) } }
                }
            })
        }
        for t in threads { Threads.join(t) }
        XCTAssertTrue(waitUntil(timeoutMillis: 3_000) { ran.withLock { $0.count } == posters * each })
        let all = ran.withLock { $0 }
        XCTAssertEqual(all.count, posters * each)
        XCTAssertTrue(all.allSatisfy(\.onLoop), "a posted task ran off the loop thread")
        for poster in 0..<posters {
            XCTAssertEqual(all.filter { $0.poster == poster }.map(\.seq), Array(0..<each), "poster \(poster)'s tasks ran out of order")
        }
    }

    func testAPostWakesAnIdleLoop() throws {
        let lt = LoopThread()
        defer { XCTAssertTrue(lt.stop()) }
        _ = try lt.sync { 0 }          // the loop is running and now idle in epoll_wait (up to 1 s)
        usleep(50_000)
        let t0 = Clock.monotonicNanos()
        let at = try lt.sync { Clock.monotonicNanos() }
        XCTAssertLessThan(at - t0, ms(300), "the posted task waited for the loop's idle timeout")
    }

    func testStopFromAnotherThreadEndsRun() {
        let lt = LoopThread()
        usleep(20_000)
        let t0 = Clock.monotonicNanos()
        XCTAssertTrue(lt.stop(timeoutMillis: 2_000), "run() did not return after stop()")
        XCTAssertLessThan(Clock.monotonicNanos() - t0, ms(500), "stop waited for the loop's idle timeout")
    }
}
