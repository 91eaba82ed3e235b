import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// Decides when a process has gone quiet enough to give its memory back (`Memory.trim()` and
/// `MappedPages.release()`): the process's CPU time, sampled every `intervalMillis`, grew by
/// less than `quietNanos` in each of the last `quietIntervals` samples, and nothing was released
/// since the process was last busy. So an idle sidecar releases once per quiet period (a few
/// seconds after its start-up or its last burst of traffic), and a busy one never does. The
/// decision is pure (`tick`), the clock is the caller's.
public struct IdleMemory {
    public let intervalMillis: Int32
    public let quietNanos: UInt64
    public let quietIntervals: Int
    private var lastCPU: UInt64? = nil
    private var quiet = 0
    private var released = false

    /// Defaults: 2 s samples, quiet under 10 ms of CPU per sample (0.5%), two quiet samples.
    public init(intervalMillis: Int32 = 2000, quietNanos: UInt64 = 10_000_000, quietIntervals: Int = 2) {
        self.intervalMillis = intervalMillis
        self.quietNanos = quietNanos
        self.quietIntervals = quietIntervals
    }

    /// One sample of the process's CPU time; true when memory should be released now.
    public mutating func tick(cpuNanos: UInt64) -> Bool {
        defer { lastCPU = cpuNanos }
        guard let last = lastCPU else { return false }
        if cpuNanos &- last >= quietNanos {
            quiet = 0
            released = false
            return false
        }
        quiet += 1
        if quiet >= quietIntervals && !released {
            released = true
            return true
        }
        return false
    }

    /// After a release: its own CPU time is not counted as activity.
    public mutating func resetClock(cpuNanos: UInt64) { lastCPU = cpuNanos }

    /// This process's CPU time (all threads), in nanoseconds.
    public static func processCPUNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    /// Releases now: free heap pages, then the clean file pages of code and read-only data.
    /// Returns the kB of file pages unmapped.
    @discardableResult
    public static func releaseNow() -> Int {
        Memory.trim()
        return MappedPages.release()
    }
}

extension SignalWaiter {
    /// Like `wait()`, and while waiting gives memory back each time the process goes quiet
    /// (`IdleMemory`). For the main thread of a long-running process that only waits for signals.
    public func waitReleasingIdleMemory(_ policy: IdleMemory = IdleMemory()) -> Int32 {
        var idle = policy
        while true {
            let s = wait(millis: idle.intervalMillis)
            if s != 0 { return s }
            if idle.tick(cpuNanos: IdleMemory.processCPUNanos()) {
                IdleMemory.releaseNow()
                idle.resetClock(cpuNanos: IdleMemory.processCPUNanos())
            }
        }
    }
}
