import MeshCore

/// A byte range inside a `MessageHead`'s buffer.
public struct ByteRange: Sendable {
    public var start: Int32 = 0
    public var length: Int32 = 0
    public init() {}
    public init(start: Int, length: Int) { self.start = Int32(start); self.length = Int32(length) }
    @inline(__always) public var isEmpty: Bool { length == 0 }
}

/// Which protocol a message came in on (the access log's `protocol`, HTTP/1.0 framing rules).
public enum HTTPVersion: UInt8, Sendable { case http10, http11, http2 }

/// A request or response head independent of the protocol it arrived on: the pseudo-header
/// values and the header fields as byte ranges in one buffer the head owns, names lowercase,
/// with `HeaderPolicy` already applied (hop-by-hop fields gone, mesh headers marked). Both the
/// HTTP/1.1 and the HTTP/2 side fill it and both writers read it, so every protocol path sees
/// the same head. Reused from request to request: nothing here allocates once warm.
public final class MessageHead {
    /// One header field; `forwarded` false for fields kept only to be read (mesh headers,
    /// `upgrade` outside a tunnel, fields a route removes).
    public struct Field: Sendable {
        public var name: ByteRange
        public var value: ByteRange
        public var kind: KnownHeader
        public var forwarded: Bool
    }

    public let bytes: ByteBuffer
    /// The fields, in a buffer this head owns and grows (no array bookkeeping per field on the
    /// hot path: unique-reference checks, bounds-checked appends).
    private var storage: UnsafeMutablePointer<Field>
    private var count = 0
    private var capacity: Int
    /// The fields as a view (valid until the next field is added).
    @inline(__always) public var fields: UnsafeMutableBufferPointer<Field> { UnsafeMutableBufferPointer(start: storage, count: count) }
    // Request.
    public var method = ByteRange()
    public var methodKind: HTTPMethod = .other
    /// The origin-form path (with the query), or `*`.
    public var path = ByteRange()
    /// The path as the client sent it (before a route's rewrite).
    public var originalPath = ByteRange()
    /// `:authority`, else Host, else the authority of an absolute-form target.
    public var authority = ByteRange()
    // Response.
    public var status = 0
    /// The reason phrase of an HTTP/1.1 status line (empty: use the standard one).
    public var reason = ByteRange()
    // What the proxy acts on, found while the head was read.
    public var version: HTTPVersion = .http11
    public var contentLength: Int64 = -1
    /// `te: trailers` was asked for (the only `te` value forwarded).
    public var teTrailers = false
    /// `content-type: application/grpc...`.
    public var isGRPC = false
    public var expectContinue = false
    /// Field indices, -1 when absent.
    public var requestIDIndex = -1
    public var peerMetadataIndex = -1
    public var upgradeIndex = -1
    /// Why the head cannot be forwarded (a field value that would split an HTTP/1.1 head, an
    /// invalid content-length), nil when it can.
    public var malformed: StaticString? = nil

    public init(capacity: Int = 1024) {
        bytes = ByteBuffer(lazyCapacity: capacity)
        self.capacity = 16
        storage = .allocate(capacity: 16)
    }

    deinit { storage.deallocate() }

    @inline(__always) private func append(_ f: Field) {
        if count == capacity {
            let bigger = UnsafeMutablePointer<Field>.allocate(capacity: capacity * 2)
            bigger.moveInitialize(from: storage, count: count)
            storage.deallocate()
            storage = bigger
            capacity *= 2
        }
        // In bounds: count < capacity was just ensured; Field is a trivial type.
        (storage + count).initialize(to: f)
        count += 1
    }

    public func reset() {
        bytes.clear()
        count = 0
        method = ByteRange(); methodKind = .other; path = ByteRange(); originalPath = ByteRange(); authority = ByteRange()
        status = 0; reason = ByteRange(); version = .http11
        contentLength = -1; teTrailers = false; isGRPC = false; expectContinue = false
        requestIDIndex = -1; peerMetadataIndex = -1; upgradeIndex = -1
        malformed = nil
    }

    /// Gives the buffer's memory back (an idle connection or a pooled exchange).
    public func releaseStorage() { reset(); bytes.releaseStorage() }

    @inline(__always) public var isEmpty: Bool { count == 0 && method.isEmpty && status == 0 }

    @inline(__always) public func pointer(_ r: ByteRange) -> UnsafePointer<UInt8> { UnsafePointer(bytes.base + Int(r.start)) }

    /// Copies `p[0..<n]` into the buffer and returns its range.
    @inline(never) public func keep(_ p: UnsafePointer<UInt8>, _ n: Int) -> ByteRange {
        let s = bytes.writeIndex
        bytes.append(p, n)
        return ByteRange(start: s, length: n)
    }

    /// Appends a field (the name is lowercased); returns its index.
    /// (Never inlined: its copy loops are large once vectorised, and one copy serves every
    /// caller; the head path's code must stay small enough for the instruction cache.)
    @discardableResult @inline(never)
    public func addField(_ n: UnsafePointer<UInt8>, _ nl: Int, _ v: UnsafePointer<UInt8>, _ vl: Int,
                         kind: KnownHeader = .other, forwarded: Bool = true) -> Int {
        let s = bytes.writeIndex
        bytes.reserve(nl &+ vl)
        // Raw writes: `reserve(nl + vl)` made room; the name is lowercased as it is copied.
        let w = bytes.writePointer
        for i in 0..<nl { w[i] = ASCII.lower(n[i]) }
        (w + nl).update(from: v, count: vl)
        bytes.commit(nl &+ vl)
        append(Field(name: ByteRange(start: s, length: nl), value: ByteRange(start: s &+ nl, length: vl), kind: kind, forwarded: forwarded))
        return count - 1
    }

    @discardableResult
    public func addField(_ name: StaticString, _ v: UnsafePointer<UInt8>, _ vl: Int, kind: KnownHeader = .other) -> Int {
        addField(name.utf8Start, name.utf8CodeUnitCount, v, vl, kind: kind)
    }

    public func addField(_ name: [UInt8], _ value: [UInt8]) {
        name.withUnsafeBufferPointer { nb in
            value.withUnsafeBufferPointer { vb in
                _ = addField(nb.baseAddress!, nb.count, vb.baseAddress ?? nb.baseAddress!, vb.count)
            }
        }
    }

    /// Starts a field whose value the caller appends to `bytes` next; `endField()` closes it.
    public func beginField(_ name: StaticString, kind: KnownHeader = .other) {
        let n = keep(name.utf8Start, name.utf8CodeUnitCount)
        append(Field(name: n, value: ByteRange(start: bytes.writeIndex, length: 0), kind: kind, forwarded: true))
    }

    /// Closes the field `beginField` opened; returns its index.
    @discardableResult
    public func endField() -> Int {
        let i = count - 1
        storage[i].value.length = Int32(bytes.writeIndex) - storage[i].value.start
        return i
    }

    /// Stops forwarding field `i` (it stays readable).
    @inline(__always) public func drop(_ i: Int) {
        precondition(i >= 0 && i < count)
        storage[i].forwarded = false
    }

    /// Calls `body` with each forwarded field's name and value.
    @inline(__always) public func forEachForwarded(_ body: (UnsafePointer<UInt8>, Int, UnsafePointer<UInt8>, Int) -> Void) {
        let b = UnsafePointer(bytes.base)
        for i in 0..<count where storage[i].forwarded {
            let f = storage[i]
            body(b + Int(f.name.start), Int(f.name.length), b + Int(f.value.start), Int(f.value.length))
        }
    }

    /// Like `forEachForwarded`, with each field's HPACK flags (`KnownHeader.hpackFlags`).
    @inline(__always) public func forEachForwardedWithFlags(_ body: (UnsafePointer<UInt8>, Int, UnsafePointer<UInt8>, Int, UInt8) -> Void) {
        let b = UnsafePointer(bytes.base)
        for i in 0..<count where storage[i].forwarded {
            let f = storage[i]
            body(b + Int(f.name.start), Int(f.name.length), b + Int(f.value.start), Int(f.value.length), f.kind.hpackFlags)
        }
    }

    /// The value of the first field named `name` (lowercase bytes), forwarded or not.
    public func withValue<R>(_ name: UnsafePointer<UInt8>, _ n: Int, _ body: (UnsafePointer<UInt8>, Int) -> R) -> R? {
        let b = UnsafePointer(bytes.base)
        for f in fields where Int(f.name.length) == n && ASCII.equalsLowerBytes(b + Int(f.name.start), n, name) {
            return body(b + Int(f.value.start), Int(f.value.length))
        }
        return nil
    }

    /// Copies another head (a response kept while the exchange decides whether to retry).
    public func copy(from o: MessageHead) {
        reset()
        bytes.append(from: o.bytes, o.bytes.readIndex, o.bytes.writeIndex)
        for f in o.fields { append(f) }
        method = o.method; methodKind = o.methodKind; path = o.path; originalPath = o.originalPath
        authority = o.authority; status = o.status; reason = o.reason; version = o.version
        contentLength = o.contentLength; teTrailers = o.teTrailers; isGRPC = o.isGRPC
        expectContinue = o.expectContinue; requestIDIndex = o.requestIDIndex
        peerMetadataIndex = o.peerMetadataIndex; upgradeIndex = o.upgradeIndex; malformed = o.malformed
    }
}
