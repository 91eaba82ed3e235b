/// A small protocol-buffers encoder (proto3 wire format) writing into memory the caller owns: a
/// fixed region (a span slot of the tracing queue) or a `ByteBuffer`. No allocation, no
/// reflection; the caller names field numbers and computes nested lengths with the `size`
/// helpers first (length-delimited fields are written as tag, length, bytes). Writes that do
/// not fit set `overflow` and write nothing, so a caller can skip an optional field that does
/// not fit and keep the message well formed.
public struct ProtobufWriter {
    /// Wire types (the low three bits of a tag).
    public enum WireType: UInt8 { case varint = 0, fixed64 = 1, lengthDelimited = 2, fixed32 = 5 }

    public let base: UnsafeMutablePointer<UInt8>
    public let capacity: Int
    public private(set) var count = 0
    /// A write did not fit (and was not made).
    public private(set) var overflow = false

    public init(_ base: UnsafeMutablePointer<UInt8>, capacity: Int) {
        self.base = base
        self.capacity = capacity
    }

    /// Room left.
    @inline(__always) public var remaining: Int { capacity &- count }

    // MARK: sizes

    /// Bytes of `v` as a varint.
    @inline(__always) public static func varintSize(_ v: UInt64) -> Int {
        var n = 1
        var x = v >> 7
        while x != 0 { n &+= 1; x >>= 7 }
        return n
    }

    /// Bytes of a length-delimited field with number `field` and a payload of `n` bytes.
    @inline(__always) public static func delimitedSize(_ field: Int, _ n: Int) -> Int {
        varintSize(UInt64(field) << 3) &+ varintSize(UInt64(n)) &+ n
    }

    /// Bytes of an OpenTelemetry `KeyValue` with a string value (`AnyValue.string_value`).
    @inline(__always) public static func stringKeyValueSize(keyLength k: Int, valueLength v: Int) -> Int {
        let any = delimitedSize(1, v)
        return delimitedSize(1, k) &+ delimitedSize(2, any)
    }

    /// Bytes of an OpenTelemetry `KeyValue` with an integer value (`AnyValue.int_value`).
    @inline(__always) public static func intKeyValueSize(keyLength k: Int, value: Int64) -> Int {
        let any = 1 &+ varintSize(UInt64(bitPattern: value))
        return delimitedSize(1, k) &+ delimitedSize(2, any)
    }

    // MARK: primitives

    @inline(__always) private mutating func fits(_ n: Int) -> Bool {
        if n > capacity &- count { overflow = true; return false }
        return true
    }

    @inline(__always) private mutating func rawVarint(_ v: UInt64) {
        var x = v
        while x >= 0x80 {
            base[count] = UInt8(truncatingIfNeeded: x) | 0x80
            count &+= 1
            x >>= 7
        }
        base[count] = UInt8(truncatingIfNeeded: x)
        count &+= 1
    }

    /// A tag: field number and wire type.
    public mutating func tag(_ field: Int, _ type: WireType) {
        let t = UInt64(field) << 3 | UInt64(type.rawValue)
        guard fits(ProtobufWriter.varintSize(t)) else { return }
        rawVarint(t)
    }

    /// A varint field (uint64, int64 as two's complement, enum, bool).
    public mutating func varint(_ field: Int, _ v: UInt64) {
        let t = UInt64(field) << 3
        guard fits(ProtobufWriter.varintSize(t) &+ ProtobufWriter.varintSize(v)) else { return }
        rawVarint(t)
        rawVarint(v)
    }

    /// A fixed64 field (little-endian).
    public mutating func fixed64(_ field: Int, _ v: UInt64) {
        let t = UInt64(field) << 3 | 1
        guard fits(ProtobufWriter.varintSize(t) &+ 8) else { return }
        rawVarint(t)
        var x = v
        for _ in 0..<8 { base[count] = UInt8(truncatingIfNeeded: x); count &+= 1; x >>= 8 }
    }

    /// A length-delimited field (bytes, string) from `p[0..<n]`.
    public mutating func bytes(_ field: Int, _ p: UnsafePointer<UInt8>, _ n: Int) {
        guard fits(ProtobufWriter.delimitedSize(field, n)) else { return }
        rawVarint(UInt64(field) << 3 | 2)
        rawVarint(UInt64(n))
        (base + count).update(from: p, count: n)
        count &+= n
    }

    public mutating func string(_ field: Int, _ s: StaticString) {
        bytes(field, s.utf8Start, s.utf8CodeUnitCount)
    }

    /// The header of a length-delimited field whose `n` payload bytes the caller writes next
    /// (a nested message whose size it computed). False (nothing written) when the whole field
    /// would not fit.
    @discardableResult
    public mutating func beginDelimited(_ field: Int, length n: Int) -> Bool {
        guard fits(ProtobufWriter.delimitedSize(field, n)) else { return false }
        rawVarint(UInt64(field) << 3 | 2)
        rawVarint(UInt64(n))
        return true
    }

    /// Bytes already encoded elsewhere (a precompiled field).
    public mutating func raw(_ p: UnsafePointer<UInt8>, _ n: Int) {
        guard fits(n) else { return }
        (base + count).update(from: p, count: n)
        count &+= n
    }

    /// A big-endian 64-bit id as 8 bytes (OTLP's span ids), in a bytes field.
    public mutating func id64(_ field: Int, _ v: UInt64) {
        guard fits(ProtobufWriter.delimitedSize(field, 8)) else { return }
        rawVarint(UInt64(field) << 3 | 2)
        rawVarint(8)
        var x = v.bigEndian
        withUnsafeBytes(of: &x) { (base + count).update(from: $0.baseAddress!.assumingMemoryBound(to: UInt8.self), count: 8) }
        count &+= 8
    }

    /// Two big-endian 64-bit halves as 16 bytes (OTLP's trace ids), in a bytes field.
    public mutating func id128(_ field: Int, high: UInt64, low: UInt64) {
        guard fits(ProtobufWriter.delimitedSize(field, 16)) else { return }
        rawVarint(UInt64(field) << 3 | 2)
        rawVarint(16)
        var h = high.bigEndian, l = low.bigEndian
        withUnsafeBytes(of: &h) { (base + count).update(from: $0.baseAddress!.assumingMemoryBound(to: UInt8.self), count: 8) }
        withUnsafeBytes(of: &l) { (base + count + 8).update(from: $0.baseAddress!.assumingMemoryBound(to: UInt8.self), count: 8) }
        count &+= 16
    }

    // MARK: OpenTelemetry common.proto

    /// A `KeyValue{key, value: AnyValue{string_value}}` as field `field` of the enclosing
    /// message; skipped whole when it does not fit.
    public mutating func stringKeyValue(_ field: Int, key k: UnsafePointer<UInt8>, _ kl: Int, value v: UnsafePointer<UInt8>, _ vl: Int) {
        let any = ProtobufWriter.delimitedSize(1, vl)
        let kv = ProtobufWriter.delimitedSize(1, kl) &+ ProtobufWriter.delimitedSize(2, any)
        guard beginDelimited(field, length: kv) else { return }
        bytes(1, k, kl)
        beginDelimited(2, length: any)
        bytes(1, v, vl)
    }

    public mutating func stringKeyValue(_ field: Int, key: StaticString, value v: UnsafePointer<UInt8>, _ vl: Int) {
        stringKeyValue(field, key: key.utf8Start, key.utf8CodeUnitCount, value: v, vl)
    }

    public mutating func stringKeyValue(_ field: Int, key: StaticString, value: StaticString) {
        stringKeyValue(field, key: key.utf8Start, key.utf8CodeUnitCount, value: value.utf8Start, value.utf8CodeUnitCount)
    }

    /// A `KeyValue{key, value: AnyValue{int_value}}`; skipped whole when it does not fit.
    public mutating func intKeyValue(_ field: Int, key: StaticString, value: Int64) {
        let any = 1 &+ ProtobufWriter.varintSize(UInt64(bitPattern: value))
        let kv = ProtobufWriter.delimitedSize(1, key.utf8CodeUnitCount) &+ ProtobufWriter.delimitedSize(2, any)
        guard beginDelimited(field, length: kv) else { return }
        bytes(1, key.utf8Start, key.utf8CodeUnitCount)
        beginDelimited(2, length: any)
        varint(3, UInt64(bitPattern: value))
    }
}

extension ProtobufWriter {
    /// Encodes into a new array of at most `capacity` bytes (snapshot-time precompiled fields,
    /// tests); nil when it did not fit.
    public static func encode(capacity: Int, _ body: (inout ProtobufWriter) -> Void) -> [UInt8]? {
        var out: [UInt8]? = nil
        let p = UnsafeMutablePointer<UInt8>.allocate(capacity: max(capacity, 1))
        defer { p.deallocate() }
        var w = ProtobufWriter(p, capacity: capacity)
        body(&w)
        if !w.overflow { out = Array(UnsafeBufferPointer(start: p, count: w.count)) }
        return out
    }
}
