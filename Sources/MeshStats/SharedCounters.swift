import Synchronization

/// 64-bit counter slots written by one thread (a worker) and read by others (the admin thread
/// summing a scrape). Every access is a relaxed atomic load or store, so the reads are free of data
/// races in the memory model's sense (and under ThreadSanitizer), not just "tear-free in practice";
/// on x86-64 and arm64 a relaxed load or store is an ordinary move, so the writer pays nothing for it.
///
/// Increments are single-writer: a relaxed load, an add and a relaxed store (`s[i] &+= n` through
/// the subscript does exactly that), with no read-modify-write instruction and no lock prefix. Only
/// the owning thread may write; readers may see a value a few increments old, never a torn one.
/// The view does not own its memory: see `allocate(count:)` / `deallocate()`.
public struct SharedCounters: @unchecked Sendable {
    public let base: UnsafeMutablePointer<Atomic<UInt64>>

    public init(base: UnsafeMutablePointer<Atomic<UInt64>>) { self.base = base }

    /// `count` zeroed slots; free them with `deallocate()`.
    public static func allocate(count: Int) -> SharedCounters {
        let p = UnsafeMutablePointer<Atomic<UInt64>>.allocate(capacity: max(count, 1))
        for i in 0..<max(count, 1) { (p + i).initialize(to: Atomic(0)) }
        return SharedCounters(base: p)
    }

    /// Frees memory from `allocate(count:)` (Atomic<UInt64> is trivial: nothing to deinitialise).
    public func deallocate() { base.deallocate() }

    /// Relaxed load (any thread); relaxed store (owning thread only).
    @inline(__always) public subscript(i: Int) -> UInt64 {
        get { base[i].load(ordering: .relaxed) }
        nonmutating set { base[i].store(newValue, ordering: .relaxed) }
    }

    /// The slots from `offset` on, as another view (a series inside a table).
    @inline(__always) public func advanced(by offset: Int) -> SharedCounters {
        SharedCounters(base: base + offset)
    }

    /// Single-writer add (owning thread only): relaxed load + relaxed store.
    @inline(__always) public func add(_ i: Int, _ n: UInt64) {
        base[i].store(base[i].load(ordering: .relaxed) &+ n, ordering: .relaxed)
    }

    /// Single-writer subtract (owning thread only), wrapping like `add`.
    @inline(__always) public func subtract(_ i: Int, _ n: UInt64) {
        base[i].store(base[i].load(ordering: .relaxed) &- n, ordering: .relaxed)
    }

    /// Copies `count` slots from `offset` into `out` with relaxed loads (any thread).
    @inline(__always) public func copy(from offset: Int, count: Int, into out: UnsafeMutablePointer<UInt64>) {
        for i in 0..<count { out[i] = base[offset + i].load(ordering: .relaxed) }
    }
}
