import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One worker's finished spans on their way to the exporter thread: a bounded single-producer
/// (the worker) / single-consumer (the exporter) ring of preallocated fixed-size slots, each an
/// encoded OTLP `Span` message behind its 4-byte length. The worker encodes straight into a slot
/// and publishes it with one release store; nothing locks or allocates on its side. A full ring
/// drops the span and counts it.
final class SpanQueue: @unchecked Sendable {
    /// Bytes of one slot (the span's encoding and its length); attributes that do not fit are
    /// left out of the span.
    static let slotSize = 1536
    let capacity: Int
    private let mask: Int
    private let storage: UnsafeMutablePointer<UInt8>
    /// Slots published (written by the producer) and consumed (written by the consumer).
    private let head = Atomic<Int>(0)
    private let tail = Atomic<Int>(0)
    /// Spans dropped because the ring was full (producer writes, anyone reads).
    private let droppedCount = Atomic<UInt64>(0)

    /// `capacity` is rounded up to a power of two.
    init(capacity: Int) {
        var c = 1
        while c < max(capacity, 2) { c <<= 1 }
        self.capacity = c
        mask = c - 1
        storage = .allocate(capacity: c * SpanQueue.slotSize)
    }

    deinit { storage.deallocate() }

    var dropped: UInt64 { droppedCount.load(ordering: .relaxed) }

    // MARK: producer (the worker)

    /// The next free slot's payload (`slotSize - 4` bytes), or nil (counted as dropped) when
    /// the ring is full. Call `publish` after writing.
    @inline(__always) func reserve() -> UnsafeMutablePointer<UInt8>? {
        let h = head.load(ordering: .relaxed)
        if h &- tail.load(ordering: .acquiring) >= capacity {
            droppedCount.store(droppedCount.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
            return nil
        }
        return storage + (h & mask) * SpanQueue.slotSize + 4
    }

    /// Publishes the slot `reserve` returned with `length` bytes written.
    @inline(__always) func publish(length: Int) {
        let h = head.load(ordering: .relaxed)
        let slot = storage + (h & mask) * SpanQueue.slotSize
        UnsafeMutableRawPointer(slot).storeBytes(of: UInt32(length), as: UInt32.self)
        head.store(h &+ 1, ordering: .releasing)
    }

    // MARK: consumer (the exporter thread)

    /// Spans waiting.
    var pending: Int { head.load(ordering: .acquiring) &- tail.load(ordering: .relaxed) }

    /// Calls `body` with up to `max` waiting spans' bytes, oldest first, then frees their slots.
    /// Returns how many were taken. `release`: the whole pages inside the drained slots go back
    /// to the system first (while the slots are still ours: the producer cannot be writing
    /// there), so a ring used at a low rate does not become resident slot by slot.
    @discardableResult
    func drain(max: Int, release: Bool = false, _ body: (UnsafePointer<UInt8>, Int) -> Void) -> Int {
        let t = tail.load(ordering: .relaxed)
        let n = min(max, head.load(ordering: .acquiring) &- t)
        for i in 0..<n {
            let slot = storage + ((t &+ i) & mask) * SpanQueue.slotSize
            let len = Int(UnsafeRawPointer(slot).load(as: UInt32.self))
            body(UnsafePointer(slot + 4), len)
        }
        if release && n > 0 {
            let first = t & mask
            let upTo = Swift.min(first + n, capacity)
            releasePages(first, upTo)
            if first + n > capacity { releasePages(0, first + n - capacity) }
        }
        tail.store(t &+ n, ordering: .releasing)
        return n
    }

    /// Resident pages of the ring (tests): pages `mincore` reports in memory.
    var residentBytes: Int {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = Int(bitPattern: UnsafeRawPointer(storage)) & ~(page - 1)
        let end = Int(bitPattern: UnsafeRawPointer(storage + capacity * SpanQueue.slotSize))
        let pages = (end - start + page - 1) / page
        var vec = [UInt8](repeating: 0, count: pages)
        guard mincore(UnsafeMutableRawPointer(bitPattern: start), end - start, &vec) == 0 else { return -1 }
        return vec.reduce(0) { $0 + Int($1 & 1) } * page
    }

    /// `MADV_DONTNEED` on the whole pages within slots `[from, to)`.
    private func releasePages(_ from: Int, _ to: Int) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let a = Int(bitPattern: UnsafeRawPointer(storage + from * SpanQueue.slotSize))
        let b = Int(bitPattern: UnsafeRawPointer(storage + to * SpanQueue.slotSize))
        let lo = (a + page - 1) & ~(page - 1)
        let hi = b & ~(page - 1)
        if hi > lo { _ = madvise(UnsafeMutableRawPointer(bitPattern: lo), hi - lo, Int32(MADV_DONTNEED)) }
    }
}
