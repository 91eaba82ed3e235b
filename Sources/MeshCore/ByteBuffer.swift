/// A growable byte buffer with a read index and a write index, used for every socket read and write
/// on the data path. It is a final class so that a connection can hand it to a codec without copies;
/// it never shrinks on its own, and `compact()` moves unread bytes to the front so the same memory is
/// reused for the life of a connection. An idle connection may give its memory back with
/// `releaseStorage()`; the next write allocates again (every write goes through `reserve`). All
/// raw-pointer access is confined to this file and the `withUnsafe...` closures it offers.
public final class ByteBuffer {
    public private(set) var base: UnsafeMutablePointer<UInt8>
    public private(set) var capacity: Int
    /// Index of the first unread byte.
    public var readIndex: Int = 0
    /// Index one past the last written byte.
    public var writeIndex: Int = 0

    /// The capacity a released buffer is given back at its next write (at least).
    private var initialCapacity: Int
    /// Where a released buffer points: never written (its capacity is 0), never freed.
    private nonisolated(unsafe) static let noStorage = UnsafeMutablePointer<UInt8>.allocate(capacity: 1)

    public init(capacity: Int = 16 * 1024) {
        self.capacity = max(capacity, 64)
        self.initialCapacity = self.capacity
        self.base = .allocate(capacity: self.capacity)
    }

    /// A buffer that allocates `capacity` bytes only at its first write (a connection's buffers:
    /// many connections never write to some of them, or sit idle).
    public init(lazyCapacity capacity: Int) {
        self.capacity = 0
        self.initialCapacity = max(capacity, 64)
        self.base = ByteBuffer.noStorage
    }

    deinit { if capacity > 0 { base.deallocate() } }

    /// Frees the memory of an empty buffer (an idle connection's); true if it did. The buffer stays
    /// usable: the next `reserve` or append allocates its initial capacity again.
    @discardableResult
    public func releaseStorage() -> Bool {
        guard capacity > 0 && isEmpty else { return false }
        base.deallocate()
        base = ByteBuffer.noStorage
        capacity = 0
        readIndex = 0
        writeIndex = 0
        return true
    }

    /// True while the buffer holds memory (false after `releaseStorage()` until the next write).
    public var hasStorage: Bool { capacity > 0 }

    @inline(__always) public var readableBytes: Int { writeIndex - readIndex }
    @inline(__always) public var writableBytes: Int { capacity - writeIndex }
    @inline(__always) public var isEmpty: Bool { writeIndex == readIndex }

    /// Pointer to the first unread byte.
    @inline(__always) public var readPointer: UnsafeMutablePointer<UInt8> { base + readIndex }
    /// Pointer to the first free byte.
    @inline(__always) public var writePointer: UnsafeMutablePointer<UInt8> { base + writeIndex }

    @inline(__always) public subscript(_ i: Int) -> UInt8 { base[i] }

    /// Marks `n` bytes as read; resets both indices when the buffer becomes empty.
    @inline(__always) public func consume(_ n: Int) {
        readIndex += n
        if readIndex >= writeIndex { readIndex = 0; writeIndex = 0 }
    }

    public func clear() { readIndex = 0; writeIndex = 0 }

    /// Makes room for at least `n` more bytes at the end, compacting first and growing only if needed.
    @inline(__always) public func reserve(_ n: Int) {
        if writableBytes >= n { return }
        reserveSlow(n)
    }

    @inline(never) func reserveSlow(_ n: Int) {
        if capacity == 0 {
            // Released while idle: allocate again, as at creation.
            var newCap = initialCapacity
            while newCap < n { newCap *= 2 }
            base = .allocate(capacity: newCap)
            capacity = newCap
            return
        }
        if readIndex > 0 { compact() }
        if writableBytes >= n { return }
        var newCap = capacity * 2
        while newCap - writeIndex < n { newCap *= 2 }
        let nb = UnsafeMutablePointer<UInt8>.allocate(capacity: newCap)
        nb.update(from: base, count: writeIndex)
        base.deallocate()
        base = nb
        capacity = newCap
    }

    /// Moves the unread bytes to the front.
    public func compact() {
        if readIndex == 0 { return }
        let n = readableBytes
        if n > 0 { (base).update(from: base + readIndex, count: n) }
        readIndex = 0
        writeIndex = n
    }

    @inline(__always) public func commit(_ n: Int) { writeIndex += n }

    /// Puts `n` bytes back in front of the unread bytes (a request body replayed for a retry).
    public func prepend(_ p: UnsafeRawPointer, _ n: Int) {
        if n == 0 { return }
        if readIndex >= n {
            readIndex -= n
            (base + readIndex).update(from: p.assumingMemoryBound(to: UInt8.self), count: n)
            return
        }
        reserve(n)
        compact()
        let m = readableBytes
        if m > 0 { (base + n).update(from: base, count: m) }
        base.update(from: p.assumingMemoryBound(to: UInt8.self), count: n)
        writeIndex = n + m
    }

    @inline(__always) public func append(_ p: UnsafeRawPointer, _ n: Int) {
        if n == 0 { return }
        reserve(n)
        (base + writeIndex).update(from: p.assumingMemoryBound(to: UInt8.self), count: n)
        writeIndex &+= n   // `&+`: reserve(n) made writeIndex + n <= capacity

    }

    @inline(__always) public func append(_ b: UInt8) {
        reserve(1)
        base[writeIndex] = b
        writeIndex &+= 1   // `&+`: reserve(1) made writeIndex < capacity
    }

    @inline(__always) public func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBufferPointer { bp in
            if let p = bp.baseAddress { append(p, bp.count) }
        }
    }

    /// Appends the bytes `[from, to)` of another buffer.
    @inline(__always) public func append(from other: ByteBuffer, _ from: Int, _ to: Int) {
        append(other.base + from, to - from)
    }

    /// Appends a static ASCII string without allocating.
    @inline(__always) public func append(_ s: StaticString) {
        append(s.utf8Start, s.utf8CodeUnitCount)
    }

    /// Appends a String's UTF-8 (control path only: it may allocate).
    public func append(string s: String) {
        var s = s
        s.withUTF8 { u in if let p = u.baseAddress { append(p, u.count) } }
    }

    /// Appends a non-negative decimal integer.
    public func appendDecimal(_ v: Int) {
        var v = v
        if v < 0 { append(UInt8(ascii: "-")); v = -v }
        var tmp: (UInt64, UInt64, UInt64) = (0, 0, 0)
        withUnsafeMutableBytes(of: &tmp) { raw in
            let p = raw.baseAddress!.assumingMemoryBound(to: UInt8.self)
            var i = 24
            repeat { i -= 1; p[i] = UInt8(truncatingIfNeeded: 48 + v % 10); v /= 10 } while v > 0
            append(p + i, 24 - i)
        }
    }

    /// Appends an integer as lowercase hexadecimal (chunk sizes).
    public func appendHex(_ v: Int) {
        var v = UInt(v)
        var tmp: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &tmp) { raw in
            let p = raw.baseAddress!.assumingMemoryBound(to: UInt8.self)
            var i = 16
            repeat {
                i -= 1
                let d = UInt8(truncatingIfNeeded: v & 15)
                p[i] = d < 10 ? 48 + d : 87 + d
                v >>= 4
            } while v > 0
            append(p + i, 16 - i)
        }
    }

    /// The readable bytes as an array (tests and control path).
    public var readableArray: [UInt8] { Array(UnsafeBufferPointer(start: readPointer, count: readableBytes)) }

    /// The bytes `[from, to)` as a String (control path only).
    public func string(_ from: Int, _ to: Int) -> String {
        String(decoding: UnsafeBufferPointer(start: base + from, count: to - from), as: UTF8.self)
    }
}
