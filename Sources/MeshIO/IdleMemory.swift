import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// Decides when a process has gone quiet enough to give its memory back (`Memory.trim()` and
/// `MappedPages.release()`). Every `intervalMillis` the caller samples the process's CPU time and
/// minor page faults; a sample is quiet when the process used less than `quietNanos` of CPU and
/// faulted fewer than `activeFaults` pages in since the last one. After `quietIntervals` quiet
/// samples in a row it says to release, once: a sample that is not quiet (traffic, or the pages
/// of a release coming back as it serves again) arms it for the next quiet period. So an idle
/// sidecar releases a few seconds after its start-up or its last request, and a busy one never.
/// The decision is pure (`tick`); the clock and the counters are the caller's.
public struct IdleMemory {
    public let intervalMillis: Int32
    public let quietNanos: UInt64
    public let activeFaults: Int
    public let quietIntervals: Int
    private var lastCPU: UInt64? = nil
    private var lastFaults = 0
    private var quiet = 0
    private var released = false
    /// The sample after a release: the idle threads touch their pages again and fault them back
    /// in (a few dozen); those faults are not activity.
    private var settling = false

    /// Defaults: 2 s samples; quiet under 5 ms of CPU (0.25%) and 32 faults (2 MiB mapped back
    /// with 64 KiB fault-around) per sample; two quiet samples. An idle mesh-mode sidecar uses
    /// about 0.5 ms per 2 s (its timers) and faults in nothing; its first request after a release
    /// faults about 100 pages back.
    public init(intervalMillis: Int32 = 2000, quietNanos: UInt64 = 5_000_000, activeFaults: Int = 32, quietIntervals: Int = 2) {
        self.intervalMillis = intervalMillis
        self.quietNanos = quietNanos
        self.activeFaults = activeFaults
        self.quietIntervals = quietIntervals
    }

    /// One sample of the process's CPU time and minor faults; true when memory should be
    /// released now (then call `didRelease` with the counters after it).
    public mutating func tick(cpuNanos: UInt64, minorFaults: Int) -> Bool {
        defer {
            lastCPU = cpuNanos
            lastFaults = minorFaults
        }
        guard let last = lastCPU else { return false }
        let faulted = settling ? 0 : minorFaults &- lastFaults
        settling = false
        if cpuNanos &- last >= quietNanos || faulted >= activeFaults {
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

    /// After a release: its own CPU time, and the faults of the next sample (the idle threads
    /// touching their pages again), are not counted as activity.
    public mutating func didRelease(cpuNanos: UInt64, minorFaults: Int) {
        settling = true
        lastCPU = cpuNanos
        lastFaults = minorFaults
    }

    /// This process's minor page faults so far (all threads).
    public static func processMinorFaults() -> Int {
        var u = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &u)
        return u.ru_minflt
    }

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
            if idle.tick(cpuNanos: IdleMemory.processCPUNanos(), minorFaults: IdleMemory.processMinorFaults()) {
                let kb = IdleMemory.releaseNow()
                Log.debug("memory", "quiet: unmapped \(kb) kB of clean file pages, trimmed the heap")
                idle.didRelease(cpuNanos: IdleMemory.processCPUNanos(), minorFaults: IdleMemory.processMinorFaults())
            }
        }
    }
}
