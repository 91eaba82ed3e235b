import MeshStats
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One worker's request metrics in Istio's shape (DESIGN §6): a series per (reporter, route,
/// response code, response flag, peer identity), each holding the request count and the duration,
/// request-size and response-size histograms. Label keys are packed into 64 bits at the end of an
/// exchange, so recording is a table lookup and a few increments: no strings, no allocation. The
/// increments are `SharedCounters` single-writer updates (relaxed load + relaxed store, plain moves),
/// so the admin thread's scrape reads them without a data race.
final class ProxyMetrics: @unchecked Sendable {
    /// Slot layout of a request series.
    enum Slot {
        static let requests = 0
        static let durationSum = 1          // microseconds
        static let durationBuckets = 2      // 19 bounds + Inf
        static let requestBytesSum = 22
        static let requestBuckets = 23      // 10 bounds + Inf
        static let responseBytesSum = 34
        static let responseBuckets = 35     // 10 bounds + Inf
        static let count = 46
    }
    /// Slot layout of a TCP series (the TCP proxy's connections, and HTTP upgrade tunnels).
    enum TCPSlot {
        static let opened = 0, closed = 1, sent = 2, received = 3, count = 4
    }

    let requests = SeriesTable(slotsPerSeries: Slot.count)
    let tcp = SeriesTable(slotsPerSeries: TCPSlot.count, capacity: 1024)
    let peers = PeerTable(capacity: 1024)
    let duration = Buckets.istioDurationMillis
    let size = Buckets.istioBytes
    /// False when `spec.stats.enabled: false` (for measuring the cost of metrics).
    let enabled: Bool

    init(enabled: Bool) { self.enabled = enabled }

    @inline(__always) func record(key: UInt64, durationMicros: UInt64, requestBytes: UInt64, responseBytes: UInt64) {
        if !enabled { return }
        let s = requests.series(key)
        s[Slot.requests] &+= 1
        s[Slot.durationSum] &+= durationMicros
        s[Slot.durationBuckets + duration.index(durationMicros)] &+= 1
        s[Slot.requestBytesSum] &+= requestBytes
        s[Slot.requestBuckets + size.index(requestBytes)] &+= 1
        s[Slot.responseBytesSum] &+= responseBytes
        s[Slot.responseBuckets + size.index(responseBytes)] &+= 1
    }

    @inline(__always) func recordTCP(key: UInt64, opened: UInt64, closed: UInt64, sent: UInt64, received: UInt64) {
        if !enabled { return }
        let s = tcp.series(key)
        s[TCPSlot.opened] &+= opened
        s[TCPSlot.closed] &+= closed
        s[TCPSlot.sent] &+= sent
        s[TCPSlot.received] &+= received
    }
}

/// The label key of a request or TCP series, packed into 64 bits.
enum MetricKey {
    static let noRoute = 0xFFFF
    static let inboundRoute = 0xFFFE

    /// `grpc`: -1 for a non-gRPC request, else the grpc-status (0...16; 17 = gRPC without a status).
    /// `tcp`: a connection of the TCP proxy (`request_protocol="tcp"`), not an HTTP tunnel.
    @inline(__always) static func make(inbound: Bool, route: Int, code: Int, flag: ResponseFlag, peer: Int, grpc: Int = -1,
                                       tcp: Bool = false) -> UInt64 {
        UInt64(truncatingIfNeeded: route & 0xFFFF)
            | (UInt64(truncatingIfNeeded: code & 0x3FF) << 16)
            | (UInt64(flag.rawValue & 0x3F) << 26)
            | (UInt64(truncatingIfNeeded: peer & 0xFFFF) << 32)
            | (inbound ? (1 << 48) : 0)
            | (UInt64(truncatingIfNeeded: (grpc + 1) & 0x1F) << 49)
            | (tcp ? (1 << 54) : 0)
    }

    /// The same key with another response flag (a TCP connection's close).
    @inline(__always) static func with(_ k: UInt64, flag: ResponseFlag) -> UInt64 {
        (k & ~(UInt64(0x3F) << 26)) | (UInt64(flag.rawValue & 0x3F) << 26)
    }

    static func tcp(_ k: UInt64) -> Bool { (k >> 54) & 1 == 1 }

    /// -1: not gRPC; 0...16: grpc-status; 17: gRPC without a status.
    static func grpc(_ k: UInt64) -> Int { Int((k >> 49) & 0x1F) - 1 }

    /// The grpc-status value of a header (0...16), or 17 when it is not a number in that range.
    @inline(__always) static func grpcStatus(_ v: UnsafePointer<UInt8>, _ n: Int) -> Int {
        if n < 1 || n > 2 { return 17 }
        var x = 0
        for i in 0..<n { let c = v[i]; if c < 48 || c > 57 { return 17 }; x = x * 10 + Int(c - 48) }
        return x <= 16 ? x : 17
    }

    static func route(_ k: UInt64) -> Int { Int(k & 0xFFFF) }
    static func code(_ k: UInt64) -> Int { Int((k >> 16) & 0x3FF) }
    static func flag(_ k: UInt64) -> ResponseFlag { ResponseFlag(rawValue: UInt8((k >> 26) & 0x3F)) ?? .none }
    static func peer(_ k: UInt64) -> Int { Int((k >> 32) & 0xFFFF) }
    static func inbound(_ k: UInt64) -> Bool { (k >> 48) & 1 == 1 }
}

/// Peers seen by one worker: SPIFFE ID plus the workload metadata the peer sidecar sent in
/// `x-mesh-peer-metadata` (`workload;namespace;app;version`), interned so that request keys carry
/// a small index; a connection caches its last peer so the request path only compares bytes.
/// Index 0 is "unknown". Bounded: past the capacity new peers are reported as "unknown".
/// Published to the admin thread like series.
final class PeerTable: @unchecked Sendable {
    struct Peer: Sendable, Hashable {
        var principal = "unknown"
        var workload = "unknown"
        var namespace = "unknown"
        var app = "unknown"
        var version = "unknown"
    }
    private let peers: UnsafeMutablePointer<Peer>
    let capacity: Int
    private var count = 1
    private let published = Atomic<Int>(1)

    init(capacity: Int) {
        self.capacity = capacity
        peers = .allocate(capacity: capacity)
        peers.initialize(repeating: Peer(), count: capacity)
    }

    deinit {
        peers.deinitialize(count: capacity)
        peers.deallocate()
    }

    /// The index for a peer identity alone (once per connection).
    func intern(_ id: String) -> Int {
        if id.isEmpty { return 0 }
        return intern(principal: Array(id.utf8), metadata: nil, 0)
    }

    /// Worker-side lookup from peer to index.
    private var index: [Peer: Int] = [:]

    /// The index for (principal, metadata bytes); metadata that is malformed or too long is
    /// ignored (the peer is then known by its principal alone), so a peer cannot fill the table
    /// with garbage variants.
    func intern(principal: [UInt8], metadata: UnsafePointer<UInt8>?, _ n: Int) -> Int {
        var p = Peer()
        if !principal.isEmpty { p.principal = String(decoding: principal, as: UTF8.self) }
        if let m = metadata, n > 0, n <= 256 {
            let parts = UnsafeBufferPointer(start: m, count: n).split(separator: UInt8(ascii: ";"), omittingEmptySubsequences: false)
            let ok = parts.count == 4 && parts.allSatisfy { part in
                !part.isEmpty && part.count <= 63 && part.allSatisfy { c in (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 45 || c == 46 || c == 95 }
            }
            if ok {
                p.workload = String(decoding: parts[0], as: UTF8.self)
                p.namespace = String(decoding: parts[1], as: UTF8.self)
                p.app = String(decoding: parts[2], as: UTF8.self)
                p.version = String(decoding: parts[3], as: UTF8.self)
            }
        }
        if p.namespace == "unknown" {
            // From the SPIFFE ID: spiffe://td/ns/NS/sa/SA.
            let segs = p.principal.split(separator: "/")
            if let i = segs.firstIndex(of: "ns"), i + 1 < segs.count { p.namespace = String(segs[i + 1]) }
        }
        if let i = index[p] { return i }
        if count >= capacity { return 0 }
        peers[count] = p
        index[p] = count
        count += 1
        published.store(count, ordering: .releasing)
        return count - 1
    }

    /// The identity at `i` (any thread, for published indices).
    func name(_ i: Int) -> String { peer(i).principal }

    func peer(_ i: Int) -> Peer {
        let n = published.load(ordering: .acquiring)
        return i < n ? peers[i] : Peer()
    }
}

/// A connection's memory of the last peer metadata it saw, so the request path compares bytes
/// instead of interning strings on every request.
struct PeerMetadataCache {
    private var last: [UInt8] = []
    private var lastIndex = -1

    /// The peer index for `principal` + the metadata bytes `p[0..<n]` (nil: none sent).
    mutating func index(_ table: PeerTable, principal: [UInt8], _ p: UnsafePointer<UInt8>?, _ n: Int, fallback: Int) -> Int {
        guard let p = p, n > 0 else { return fallback }
        if n > 256 { return table.intern(principal: principal, metadata: nil, 0) }   // never valid: not cached
        if lastIndex >= 0 && last.count == n && last.withUnsafeBufferPointer({ memcmp($0.baseAddress!, p, n) == 0 }) {
            return lastIndex
        }
        last = Array(UnsafeBufferPointer(start: p, count: n))
        lastIndex = table.intern(principal: principal, metadata: p, n)
        return lastIndex
    }
}
