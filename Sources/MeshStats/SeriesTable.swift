import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One worker's metric series: each series is a 64-bit label key plus a fixed number of 64-bit
/// slots (counters, histogram buckets, sums). Storage is allocated once and never moves, so the
/// admin thread can read it while the worker writes: a series' key is written before the published
/// count covers it (release/acquire), and the slots are `SharedCounters` (relaxed atomic loads and
/// stores, plain moves in the machine code), so the concurrent reads are race-free, not just tear-free.
/// The capacity is the cardinality bound: when it is reached, new keys land in the overflow series
/// (key `overflowKey`), which is counted and visible in the scrape.
public final class SeriesTable: @unchecked Sendable {
    public let slotsPerSeries: Int
    public let capacity: Int
    public static let overflowKey: UInt64 = .max
    private let keys: UnsafeMutablePointer<UInt64>
    private let slots: SharedCounters
    /// Open-addressing index: series number + 1, 0 = empty.
    private let index: UnsafeMutablePointer<Int32>
    private let indexMask: Int
    private let published = Atomic<Int>(0)
    private var count = 0
    private var lastKey: UInt64 = .max - 1
    private var lastIndex = 0

    public init(slotsPerSeries: Int, capacity: Int = 4096) {
        self.slotsPerSeries = slotsPerSeries
        self.capacity = capacity
        // calloc: large zeroed blocks come from mmap and cost memory only once touched, so an
        // idle proxy does not pay for the cardinality bound.
        keys = calloc(capacity, 8)!.assumingMemoryBound(to: UInt64.self)
        // All-zero bytes are a valid Atomic<UInt64>(0): binding calloc's memory initialises it.
        slots = SharedCounters(base: calloc(capacity * slotsPerSeries, 8)!
            .bindMemory(to: Atomic<UInt64>.self, capacity: capacity * slotsPerSeries))
        var cap = 16
        while cap < capacity * 2 { cap *= 2 }
        index = calloc(cap, 4)!.assumingMemoryBound(to: Int32.self)
        indexMask = cap - 1
    }

    deinit {
        free(keys)
        free(slots.base)
        free(index)
    }

    /// The slots of the series for `key`, created on first use (worker thread only; `s[i] &+= n`
    /// on the result is the single-writer relaxed increment).
    @inline(__always) public func series(_ key: UInt64) -> SharedCounters {
        if key == lastKey { return slots.advanced(by: lastIndex * slotsPerSeries) }
        let i = lookupOrInsert(key)
        lastKey = key
        lastIndex = i
        return slots.advanced(by: i * slotsPerSeries)
    }

    private func lookupOrInsert(_ key: UInt64) -> Int {
        var h = Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> 20) & indexMask
        while true {
            let s = Int(index[h]) - 1
            if s < 0 { break }
            if keys[s] == key { return s }
            h = (h + 1) & indexMask
        }
        if count >= capacity - 1 && key != SeriesTable.overflowKey {
            return lookupOrInsert(SeriesTable.overflowKey)
        }
        let i = count
        keys[i] = key
        index[h] = Int32(i + 1)
        count += 1
        published.store(count, ordering: .releasing)
        return i
    }

    /// Calls `body` for each published series (any thread), with a copy of its slots read by
    /// relaxed loads (valid only during the call).
    public func forEach(_ body: (UInt64, UnsafePointer<UInt64>) -> Void) {
        let n = published.load(ordering: .acquiring)
        let copy = UnsafeMutablePointer<UInt64>.allocate(capacity: max(slotsPerSeries, 1))
        defer { copy.deallocate() }
        for i in 0..<n {
            slots.copy(from: i * slotsPerSeries, count: slotsPerSeries, into: copy)
            body(keys[i], UnsafePointer(copy))
        }
    }

    public var seriesCount: Int { published.load(ordering: .acquiring) }
}

/// Histogram bucket upper bounds, with the index lookup used on the hot path.
public struct Buckets: Sendable {
    /// Upper bounds in the unit the value is recorded in (integers: microseconds, bytes).
    public let bounds: [UInt64]
    /// The same bounds as written in the exposition (e.g. milliseconds for durations).
    public let labels: [String]

    public init(bounds: [UInt64], labels: [String]) {
        precondition(bounds.count == labels.count)
        self.bounds = bounds
        self.labels = labels
    }

    /// Index of the first bucket whose bound is >= v (bounds.count for +Inf).
    @inline(__always) public func index(_ v: UInt64) -> Int {
        var i = 0
        let n = bounds.count
        while i < n && v > bounds[i] { i += 1 }
        return i
    }

    /// Istio's default request-duration buckets in milliseconds, recorded in microseconds.
    public static let istioDurationMillis: Buckets = {
        let ms: [Double] = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000]
        return Buckets(bounds: ms.map { UInt64($0 * 1000) }, labels: ms.map { formatNumber($0) })
    }()

    /// Istio's default size buckets in bytes (1, 10, ... 1e9).
    public static let istioBytes: Buckets = {
        var b: [UInt64] = []
        var v: UInt64 = 1
        for _ in 0..<10 { b.append(v); v *= 10 }
        return Buckets(bounds: b, labels: b.map { String($0) })
    }()
}

/// Formats a number the way Prometheus clients do: integers without a fraction.
public func formatNumber(_ v: Double) -> String {
    if v == v.rounded() && abs(v) < 1e15 { return String(Int64(v)) }
    return String(v)
}
