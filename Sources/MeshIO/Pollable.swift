import MeshCore

/// Something an `EventLoop` watches: a listener, a connection, or the loop's own wakeup descriptor.
/// Subclasses override `onEvents` (epoll readiness, edge-triggered) and `onTimer` (their deadline
/// passed). Each has at most one deadline; it recomputes which of its waits expired when it fires.
open class Pollable {
    public let fd: Int32
    /// Index in the loop's handler table; -1 when not registered.
    public internal(set) var slot: Int32 = -1
    /// Deadline in monotonic nanoseconds (0 = none). Set it through `EventLoop.setDeadline`.
    public internal(set) var deadline: UInt64 = 0
    /// The earliest deadline that has an entry in the loop's timer heap (lazy rescheduling).
    var scheduled: UInt64 = .max

    public init(fd: Int32) { self.fd = fd }

    /// Readiness from epoll (EPOLLIN, EPOLLOUT, EPOLLRDHUP, EPOLLHUP, EPOLLERR bits).
    open func onEvents(_ events: UInt32) {}
    /// The deadline passed.
    open func onTimer(now: UInt64) {}
    /// Called once per loop iteration for objects that asked with `EventLoop.markDirty` (output flush).
    open func onFlush() {}
}
