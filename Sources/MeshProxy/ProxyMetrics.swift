import MeshStats
import Synchronization

/// One worker's request metrics in Istio's shape (DESIGN §6): a series per (reporter, route,
/// response code, response flag, peer identity), each holding the request count and the duration,
/// request-size and response-size histograms. Label keys are packed into 64 bits at the end of an
/// exchange, so recording is a table lookup and a few increments: no strings, no allocation.
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
    /// Slot layout of a TCP (tunnel) series.
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

    @inline(__always) static func make(inbound: Bool, route: Int, code: Int, flag: ResponseFlag, peer: Int) -> UInt64 {
        UInt64(truncatingIfNeeded: route & 0xFFFF)
            | (UInt64(truncatingIfNeeded: code & 0x3FF) << 16)
            | (UInt64(flag.rawValue & 0x3F) << 26)
            | (UInt64(truncatingIfNeeded: peer & 0xFFFF) << 32)
            | (inbound ? (1 << 48) : 0)
    }

    static func route(_ k: UInt64) -> Int { Int(k & 0xFFFF) }
    static func code(_ k: UInt64) -> Int { Int((k >> 16) & 0x3FF) }
    static func flag(_ k: UInt64) -> ResponseFlag { ResponseFlag(rawValue: UInt8((k >> 26) & 0x3F)) ?? .none }
    static func peer(_ k: UInt64) -> Int { Int((k >> 32) & 0xFFFF) }
    static func inbound(_ k: UInt64) -> Bool { (k >> 48) & 1 == 1 }
}

/// Peer identities (SPIFFE IDs) seen by one worker, interned once per connection so that request
/// keys carry a small index. Index 0 is "unknown" (no TLS or no SPIFFE ID). Bounded: past the
/// capacity new identities are reported as "unknown". Published to the admin thread like series.
final class PeerTable: @unchecked Sendable {
    private let names: UnsafeMutablePointer<String>
    let capacity: Int
    private var count = 1
    private let published = Atomic<Int>(1)

    init(capacity: Int) {
        self.capacity = capacity
        names = .allocate(capacity: capacity)
        names.initialize(repeating: "", count: capacity)
        names[0] = "unknown"
    }

    deinit {
        names.deinitialize(count: capacity)
        names.deallocate()
    }

    /// The index for `id` (worker thread only; once per connection).
    func intern(_ id: String) -> Int {
        if id.isEmpty { return 0 }
        for i in 1..<count where names[i] == id { return i }
        if count >= capacity { return 0 }
        names[count] = id
        count += 1
        published.store(count, ordering: .releasing)
        return count - 1
    }

    /// The identity at `i` (any thread, for published indices).
    func name(_ i: Int) -> String {
        let n = published.load(ordering: .acquiring)
        return i < n ? names[i] : "unknown"
    }
}
