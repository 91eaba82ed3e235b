import CMeshShims
import MeshCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One epoll loop, run by one thread for its whole life. It owns the handler table (slot ->
/// `Pollable`, with a generation per slot so an event for a closed-and-reused descriptor is
/// dropped), the timer heap, the list of objects with output to flush at the end of the iteration,
/// and the objects closed during this iteration (released only after it, never inside a callback).
/// Other threads talk to it only through `post`, which wakes it with an eventfd.
public final class EventLoop: @unchecked Sendable {
    public let epfd: Int32
    private let wakeFd: Int32
    private var handlers: [Pollable?] = []
    private var generations: [UInt32] = []
    private var freeSlots: [Int32] = []
    private var timers = TimerHeap()
    private var dirty: [Pollable] = []
    private var retired: [Pollable] = []
    private var events: UnsafeMutablePointer<epoll_event>
    private let maxEvents: Int32 = 256
    private let tasks = Locked<[@Sendable () -> Void]>([])
    private let stopFlag = Atomic<Bool>(false)
    /// Monotonic time at the start of the current iteration, in nanoseconds.
    public private(set) var now: UInt64 = Clock.monotonicNanos()
    /// A name for logs ("worker 0").
    public let name: String

    public init(name: String) {
        self.name = name
        epfd = epoll_create1(Int32(EPOLL_CLOEXEC))
        precondition(epfd >= 0, "epoll_create1 failed")
        wakeFd = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        precondition(wakeFd >= 0, "eventfd failed")
        events = .allocate(capacity: 256)
        var ev = epoll_event()
        ev.events = EPOLLIN.rawValue
        ev.data.u64 = UInt64.max
        let rc = epoll_ctl(epfd, EPOLL_CTL_ADD, wakeFd, &ev)
        precondition(rc == 0, "epoll_ctl(wakeFd) failed")
        handlers.reserveCapacity(1024)
        generations.reserveCapacity(1024)
        dirty.reserveCapacity(256)
    }

    deinit {
        events.deallocate()
        Glibc.close(epfd)
        Glibc.close(wakeFd)
    }

    // MARK: registration

    /// Adds `p` to the loop, watching `events` (edge-triggered is the caller's choice via EPOLLET).
    public func register(_ p: Pollable, events ev: UInt32) -> Bool {
        let slot: Int32
        if let s = freeSlots.popLast() {
            slot = s
            handlers[Int(s)] = p
        } else {
            slot = Int32(handlers.count)
            handlers.append(p)
            generations.append(0)
        }
        p.slot = slot
        var e = epoll_event()
        e.events = ev
        e.data.u64 = UInt64(UInt32(bitPattern: slot)) | (UInt64(generations[Int(slot)]) << 32)
        if epoll_ctl(epfd, EPOLL_CTL_ADD, p.fd, &e) != 0 {
            release(slot)
            p.slot = -1
            return false
        }
        return true
    }

    /// Gives `p` a slot for deadlines only (no descriptor is watched): drain timers and the like.
    public func registerTimerOnly(_ p: Pollable) {
        if let s = freeSlots.popLast() {
            p.slot = s
            handlers[Int(s)] = p
        } else {
            p.slot = Int32(handlers.count)
            handlers.append(p)
            generations.append(0)
        }
        timerOnly += 1
    }

    /// Releases a slot taken by `registerTimerOnly`.
    public func deregisterTimerOnly(_ p: Pollable) {
        guard p.slot >= 0 else { return }
        release(p.slot)
        p.slot = -1
        p.deadline = 0
        p.scheduled = .max   // its heap entries die with the slot's generation
        timerOnly -= 1
    }

    private var timerOnly = 0

    /// Changes the events watched for `p`.
    public func modify(_ p: Pollable, events ev: UInt32) {
        guard p.slot >= 0 else { return }
        var e = epoll_event()
        e.events = ev
        e.data.u64 = UInt64(UInt32(bitPattern: p.slot)) | (UInt64(generations[Int(p.slot)]) << 32)
        _ = epoll_ctl(epfd, EPOLL_CTL_MOD, p.fd, &e)
    }

    /// Removes `p` from the loop (its descriptor is the caller's to close) and keeps it alive until
    /// the end of the iteration.
    public func deregister(_ p: Pollable) {
        guard p.slot >= 0 else { return }
        _ = epoll_ctl(epfd, EPOLL_CTL_DEL, p.fd, nil)
        release(p.slot)
        p.slot = -1
        p.deadline = 0
        p.scheduled = .max
        retired.append(p)
    }

    private func release(_ slot: Int32) {
        handlers[Int(slot)] = nil
        generations[Int(slot)] &+= 1
        freeSlots.append(slot)
    }

    /// The number of registered objects (listeners and connections).
    public var registeredCount: Int { handlers.count - freeSlots.count - timerOnly }

    // MARK: timers and flushing

    /// Sets `p`'s deadline (absolute monotonic nanoseconds; 0 clears it).
    @inline(__always) public func setDeadline(_ p: Pollable, _ deadline: UInt64) {
        p.deadline = deadline
        if deadline != 0 && deadline < p.scheduled && p.slot >= 0 {
            p.scheduled = deadline
            timers.push(.init(deadline: deadline, slot: p.slot, generation: generations[Int(p.slot)]))
        }
    }

    /// Asks for `p.onFlush()` at the end of this iteration (once, however often it is asked).
    @inline(__always) public func markDirty(_ p: Pollable) { dirty.append(p) }

    // MARK: cross-thread

    /// Runs `task` on this loop's thread soon. The only way another thread may touch this loop.
    public func post(_ task: @escaping @Sendable () -> Void) {
        tasks.withLock { $0.append(task) }
        var one: UInt64 = 1
        _ = Glibc.write(wakeFd, &one, 8)
    }

    /// Makes `run()` return after the current iteration (any thread).
    public func stop() {
        stopFlag.store(true, ordering: .releasing)
        var one: UInt64 = 1
        _ = Glibc.write(wakeFd, &one, 8)
    }

    // MARK: running

    /// Runs until `stop()`.
    public func run() {
        while !stopFlag.load(ordering: .acquiring) {
            runOnce(maxWaitMillis: 1000)
        }
    }

    /// One iteration: wait for events (at most until the next deadline), dispatch, fire timers,
    /// flush dirty objects, release retired ones.
    public func runOnce(maxWaitMillis: Int32) {
        var timeout = maxWaitMillis
        if let t = timers.top {
            let cur = Clock.monotonicNanos()
            if t.deadline <= cur { timeout = 0 } else {
                let ms = (t.deadline - cur + 999_999) / 1_000_000
                if ms < UInt64(timeout) { timeout = Int32(ms) }
            }
        }
        if !dirty.isEmpty { timeout = 0 }
        let n = epoll_wait(epfd, events, maxEvents, timeout)
        now = Clock.monotonicNanos()
        if n > 0 {
            for i in 0..<Int(n) {
                let ev = events[i]
                let data = ev.data.u64
                if data == UInt64.max { drainWakeups(); continue }
                let slot = Int(UInt32(truncatingIfNeeded: data))
                let gen = UInt32(truncatingIfNeeded: data >> 32)
                guard slot < handlers.count, generations[slot] == gen, let h = handlers[slot] else { continue }
                h.onEvents(ev.events)
            }
        }
        fireTimers()
        flushDirty()
        if !retired.isEmpty { retired.removeAll(keepingCapacity: true) }
    }

    private func drainWakeups() {
        var v: UInt64 = 0
        _ = Glibc.read(wakeFd, &v, 8)
        let pending = tasks.withLock { t -> [@Sendable () -> Void] in
            let x = t
            t.removeAll()
            return x
        }
        for t in pending { t() }
    }

    private func fireTimers() {
        while let t = timers.top, t.deadline <= now {
            _ = timers.pop()
            let slot = Int(t.slot)
            guard slot < handlers.count, generations[slot] == t.generation, let h = handlers[slot] else { continue }
            if t.deadline == h.scheduled { h.scheduled = .max }
            if h.deadline != 0 && h.deadline <= now {
                h.deadline = 0
                h.onTimer(now: now)
            } else if h.deadline != 0 && h.deadline < h.scheduled {
                h.scheduled = h.deadline
                timers.push(.init(deadline: h.deadline, slot: t.slot, generation: t.generation))
            }
        }
    }

    private var dirtySpare: [Pollable] = []

    /// Flushes this iteration's dirty objects; any they mark again wait for the next iteration.
    private func flushDirty() {
        if dirty.isEmpty { return }
        swap(&dirty, &dirtySpare)
        for p in dirtySpare { p.onFlush() }
        dirtySpare.removeAll(keepingCapacity: true)
    }
}
