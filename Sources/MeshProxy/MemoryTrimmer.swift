import MeshCore
import MeshIO

/// Gives memory back to the system after bursts of connections closed or went idle. glibc keeps
/// freed chunks resident (they sit between live ones, so the heap top cannot shrink), and a proxy
/// that once held ten thousand connections would keep their memory for good. After `threshold`
/// releases, a timer runs `malloc_trim(0)` a few seconds later (one trim for a whole burst), which
/// hands every free page back with madvise. It never runs per request: only after hundreds of
/// connection-sized releases, at most once per `delay`.
final class MemoryTrimmer: Pollable {
    private unowned let loop: EventLoop
    private var released = 0
    private var armed = false
    private let threshold: Int
    private let delay: UInt64
    /// Trims done (for tests and /stats).
    private(set) var trims = 0
    /// A burst was trimmed: the releases that follow (its tail, fewer than `threshold`) get one
    /// more trim, so the end of a burst is not left resident until the next burst.
    private var tail = false

    init(loop: EventLoop, threshold: Int = 256, delay: UInt64 = 3_000_000_000) {
        self.loop = loop
        self.threshold = threshold
        self.delay = delay
        super.init(fd: -1)
        loop.registerTimerOnly(self)
    }

    /// A connection closed or gave its buffers back.
    @inline(__always) func noteRelease() {
        released &+= 1
        if (released >= threshold || tail) && !armed {
            armed = true
            tail = released >= threshold
            loop.setDeadline(self, loop.now &+ delay)
        }
    }

    override func onTimer(now: UInt64) {
        armed = false
        // A trim for a whole burst lets its tail have one more; a tail's trim does not.
        tail = released >= threshold
        released = 0
        trims += 1
        Memory.trim()
    }

    func stop() { loop.deregisterTimerOnly(self) }
}
