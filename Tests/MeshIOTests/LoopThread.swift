import XCTest
import MeshCore
@testable import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// The loop did not answer within the time a test allows (a stuck or dead loop thread).
struct LoopTimeout: Error, CustomStringConvertible {
    let what: String
    var description: String { "timed out: \(what)" }
}

/// An `EventLoop` run by a thread of its own for one test, as a worker runs it. Tests reach the
/// loop only the way other threads may: `post` (through `sync`) and `stop`.
final class LoopThread: @unchecked Sendable {
    let loop: EventLoop
    private var thread: pthread_t?
    private let finished = Locked<Bool>(false)
    private let loopThreadID = Locked<pthread_t?>(nil)

    init(name: String = "test loop") {
        let loop = EventLoop(name: name)
        self.loop = loop
        let finished = self.finished
        let id = loopThreadID
        thread = Threads.spawn(name: name) {
            id.withLock { $0 = pthread_self() }
            loop.run()
            finished.withLock { $0 = true }
        }
    }

    /// True when called on the loop's thread.
    var isLoopThread: Bool {
        guard let t = loopThreadID.withLock({ $0 }) else { return false }
        return pthread_equal(t, pthread_self()) != 0
    }

    /// Runs `body` on the loop's thread and returns its result; throws if the loop does not run
    /// it within `timeoutMillis`.
    func sync<T>(timeoutMillis: Int = 5_000, _ body: @escaping @Sendable () -> T) throws -> T {
        let box = Locked<T?>(nil)
        loop.post { let v = body(); box.withLock { $0 = v } }
        let deadline = Clock.monotonicNanos() + UInt64(timeoutMillis) * 1_000_000
        while Clock.monotonicNanos() < deadline {
            if let v = box.withLock({ $0 }) { return v }
            usleep(500)
        }
        throw LoopTimeout(what: "a task posted to \(loop.name)")
    }

    /// Stops the loop and joins its thread; false when `run()` did not return within `timeoutMillis`
    /// (the thread is then left behind rather than hanging the test run).
    @discardableResult
    func stop(timeoutMillis: Int = 3_000) -> Bool {
        guard let t = thread else { return true }
        loop.stop()
        let ok = waitUntil(timeoutMillis: timeoutMillis) { self.finished.withLock { $0 } }
        if ok { Threads.join(t) }
        thread = nil
        return ok
    }
}

/// An object of the loop's (a listener, say) carried through `sync` closures; touched only on
/// the loop's thread.
final class LoopOwned<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// Polls `condition` every half millisecond until it holds or `timeoutMillis` pass; returns
/// whether it held.
func waitUntil(timeoutMillis: Int, _ condition: () -> Bool) -> Bool {
    let deadline = Clock.monotonicNanos() + UInt64(timeoutMillis) * 1_000_000
    while true {
        if condition() { return true }
        if Clock.monotonicNanos() >= deadline { return false }
        usleep(500)
    }
}

/// Signed nanoseconds from `from` to `to` (negative when `to` came first).
func elapsed(_ from: UInt64, _ to: UInt64) -> Int64 { Int64(bitPattern: to &- from) }

/// Milliseconds as the loop's nanoseconds.
func ms(_ n: UInt64) -> UInt64 { n * 1_000_000 }
