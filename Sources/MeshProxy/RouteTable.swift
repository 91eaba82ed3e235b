#if canImport(Glibc)
import Glibc
#endif
import MeshConfig
import MeshCore
import MeshHTTP

/// One `exact`/`prefix`/`regex` string match compiled to bytes (Istio's StringMatch).
struct ByteMatch: Sendable {
    enum Kind: Sendable { case exact, prefix, regex }
    let kind: Kind
    let value: [UInt8]
    let regex: FullMatchRegex?

    init(_ m: IstioTraffic.StringMatch) {
        value = Array(m.value.utf8)
        switch m.kind {
        case .exact: kind = .exact; regex = nil
        case .prefix: kind = .prefix; regex = nil
        case .regex: kind = .regex; regex = try? FullMatchRegex(m.value)   // validated when parsed
        }
    }

    @inline(__always) func matches(_ p: UnsafePointer<UInt8>, _ n: Int) -> Bool {
        switch kind {
        case .exact:
            return n == value.count && value.withUnsafeBufferPointer { memcmp($0.baseAddress!, p, n) == 0 || n == 0 }
        case .prefix:
            return n >= value.count && (value.isEmpty || value.withUnsafeBufferPointer { memcmp($0.baseAddress!, p, $0.count) == 0 })
        case .regex:
            return regex?.matches(p, n) ?? false
        }
    }
}

/// What the router needs to see of a request, whatever its protocol.
protocol RoutableRequest {
    /// The method bytes.
    func withMethod<R>(_ body: (UnsafePointer<UInt8>, Int) -> R) -> R
    /// The path as sent (origin form: path and query).
    func withPath<R>(_ body: (UnsafePointer<UInt8>, Int) -> R) -> R
    /// The first value of the header named by `n` lowercase bytes at `name`, or nil when absent.
    func withHeader<R>(_ name: UnsafePointer<UInt8>, _ n: Int, _ body: (UnsafePointer<UInt8>, Int) -> R) -> R?
    /// The service port the caller used, the scheme, the authority (defaults: MatchExtras.swift).
    var servicePort: Int { get }
    func withScheme<T>(_ body: (UnsafePointer<UInt8>, Int) -> T) -> T
    func withAuthority<T>(_ body: (UnsafePointer<UInt8>, Int) -> T) -> T
}

/// One `match[]` entry: every condition it names must hold (Istio: AND within, OR across
/// entries). Matching runs on its flattened form, `MatchTable`.
struct RouteMatch: Sendable {
    var uri: ByteMatch?
    var method: ByteMatch?
    var headers: [(name: [UInt8], match: ByteMatch)] = []
    /// queryParams, authority, port, scheme, withoutHeaders, ignoreUriCase (MatchExtras.swift).
    var extras: MatchExtras? = nil
}

/// Header changes of a route (Istio's `headers.request` / `headers.response`), as bytes. `remove`
/// also holds the names of `set`, so a set value replaces whatever came.
struct HeaderOps: Sendable {
    var remove: [[UInt8]] = []
    var set: [(name: [UInt8], value: [UInt8])] = []
    var add: [(name: [UInt8], value: [UInt8])] = []
    var isEmpty: Bool { remove.isEmpty && add.isEmpty }

    init() {}
    init(_ o: IstioTraffic.HeaderOperations) {
        remove = o.remove.map { Array($0.lowercased().utf8) } + o.set.map { Array($0.0.lowercased().utf8) }
        set = o.set.map { (Array($0.0.lowercased().utf8), Array($0.1.utf8)) }
        add = o.add.map { (Array($0.0.lowercased().utf8), Array($0.1.utf8)) }
        add = set + add
    }

    /// Whether a header named `p[0..<n]` (any case) is removed (or replaced).
    @inline(__always) func removes(_ p: UnsafePointer<UInt8>, _ n: Int) -> Bool {
        for r in remove where r.count == n {
            if r.withUnsafeBufferPointer({ ASCII.equalsLowerBytes(p, n, $0.baseAddress!) }) { return true }
        }
        return false
    }
}

/// Which failures a route retries (Istio's `retryOn`, Envoy's meanings) and how often.
struct RetryPolicy: Sendable {
    struct On: OptionSet, Sendable {
        let rawValue: UInt32
        static let fiveXX = On(rawValue: 1), gatewayError = On(rawValue: 2), reset = On(rawValue: 4),
                   connectFailure = On(rawValue: 8), refusedStream = On(rawValue: 16), retriable4xx = On(rawValue: 32),
                   grpcCancelled = On(rawValue: 64), grpcDeadlineExceeded = On(rawValue: 128), grpcInternal = On(rawValue: 256),
                   grpcResourceExhausted = On(rawValue: 512), grpcUnavailable = On(rawValue: 1024),
                   retriableHeaders = On(rawValue: 2048)
    }
    /// Retries after the first attempt (Istio's `attempts`).
    var retries: Int
    /// 0: none (the route timeout bounds every attempt).
    var perTryTimeout: UInt64
    var on: On
    var statusCodes: [Int]

    /// DESIGN §2: 2 attempts on connect-failure and refused-stream when a route sets none.
    static let `default` = RetryPolicy(retries: 2, perTryTimeout: 0, on: [.connectFailure, .refusedStream], statusCodes: [])

    init(retries: Int, perTryTimeout: UInt64, on: On, statusCodes: [Int]) {
        self.retries = retries; self.perTryTimeout = perTryTimeout; self.on = on; self.statusCodes = statusCodes
    }

    init(_ r: IstioTraffic.Retry) {
        retries = r.attempts
        perTryTimeout = r.perTryTimeout ?? 0
        var on: On = []
        var codes: [Int] = []
        // Istio's default retryOn when a route gives attempts but no conditions.
        let words = r.retryOn.isEmpty ? ["connect-failure", "refused-stream", "unavailable", "cancelled", "503"] : r.retryOn
        for w in words {
            switch w {
            case "5xx": on.insert(.fiveXX)
            case "gateway-error": on.insert(.gatewayError)
            case "reset": on.insert(.reset)
            case "connect-failure": on.insert(.connectFailure)
            case "refused-stream": on.insert(.refusedStream)
            case "retriable-4xx": on.insert(.retriable4xx)
            case "cancelled": on.insert(.grpcCancelled)
            case "deadline-exceeded": on.insert(.grpcDeadlineExceeded)
            case "internal": on.insert(.grpcInternal)
            case "resource-exhausted": on.insert(.grpcResourceExhausted)
            case "unavailable": on.insert(.grpcUnavailable)
            case "retriable-headers": on.insert(.retriableHeaders)
            default: if let c = Int(w) { codes.append(c) }   // retriable-status-codes: the codes listed
            }
        }
        self.on = on
        statusCodes = codes
    }

    /// Whether a response with this status (and grpc-status, -1 when absent) is retried.
    @inline(__always) func retries(status s: Int, grpc g: Int) -> Bool {
        if s >= 500 && on.contains(.fiveXX) { return true }
        if s >= 502 && s <= 504 && on.contains(.gatewayError) { return true }
        if s == 409 && on.contains(.retriable4xx) { return true }
        if !statusCodes.isEmpty && statusCodes.contains(s) { return true }
        if g >= 0 {
            if g == 1 && on.contains(.grpcCancelled) { return true }
            if g == 4 && on.contains(.grpcDeadlineExceeded) { return true }
            if g == 13 && on.contains(.grpcInternal) { return true }
            if g == 8 && on.contains(.grpcResourceExhausted) { return true }
            if g == 14 && on.contains(.grpcUnavailable) { return true }
        }
        return false
    }
    var onConnectFailure: Bool { !on.isDisjoint(with: [.connectFailure, .fiveXX, .gatewayError]) }
    var onReset: Bool { !on.isDisjoint(with: [.reset, .fiveXX]) }
    var onRefusedStream: Bool { !on.isDisjoint(with: [.refusedStream, .fiveXX]) }
    /// A per-try timeout counts as a 504 from the upstream.
    var onTimeout: Bool { !on.isDisjoint(with: [.reset, .fiveXX, .gatewayError]) || statusCodes.contains(504) }
}

/// Envoy's `retriable-headers` condition (Istio's `retryOn: retriable-headers`): a response is
/// retried when it carries a header that the request names in `x-envoy-retriable-header-names`
/// (a comma-separated list, names in any case). Pure byte matching, no allocation.
enum RetriableHeaderNames {
    /// The request header that lists the names, lowercase.
    static let requestHeader: StaticString = "x-envoy-retriable-header-names"

    /// Whether the header named `p[0..<n]` is one of the names in `list[0..<ln]` (spaces and tabs
    /// around each name are ignored; the comparison ignores case).
    static func lists(_ list: UnsafePointer<UInt8>, _ ln: Int, _ p: UnsafePointer<UInt8>, _ n: Int) -> Bool {
        if n == 0 { return false }
        var i = 0
        while i < ln {
            var s = i
            while i < ln && list[i] != UInt8(ascii: ",") { i += 1 }
            var e = i
            while s < e && (list[s] == 0x20 || list[s] == 0x09) { s += 1 }
            while e > s && (list[e - 1] == 0x20 || list[e - 1] == 0x09) { e -= 1 }
            if e - s == n {
                var same = true
                for k in 0..<n where ASCII.lower(list[s + k]) != ASCII.lower(p[k]) { same = false; break }
                if same { return true }
            }
            i += 1
        }
        return false
    }
}

/// Istio's fault injection, in parts per million so a percentage like 0.1 stays exact.
struct FaultPolicy: Sendable {
    var delayPPM: UInt64 = 0
    var delay: UInt64 = 0
    var abortPPM: UInt64 = 0
    var abortStatus = 0

    init?(_ f: IstioTraffic.Fault?) {
        guard let f else { return nil }
        if let d = f.fixedDelay { delay = d; delayPPM = UInt64((f.delayPercent ?? 100) * 10_000) }
        if let s = f.abortStatus { abortStatus = s; abortPPM = UInt64((f.abortPercent ?? 100) * 10_000) }
    }
}

/// An outbound destination: the endpoints of one cluster that a subset's labels select.
struct RouteTarget: Sendable {
    let cluster: Int
    /// Indices into the cluster's endpoints.
    let endpoints: [Int]
    /// `cluster` or `cluster/subset`, for /config_dump.
    let name: String
    /// The subset's policy when it sets one, else the cluster's.
    let loadBalancer: IstioTraffic.TrafficPolicy.LoadBalancer
    /// Consistent hash, locality levels, warm-up (Balancing/TargetBalancing.swift); nil: `loadBalancer` alone.
    var balancing: TargetBalancing? = nil
}

/// The routes answering one host, tried in order (first match wins).
struct VirtualHost: Sendable {
    let routes: [Int]
}

extension ProxySnapshot {
    /// The first route of virtual host `v` whose match entries accept the request, with the index
    /// of the entry that matched (-1 for a route without entries); route -1 when none does.
    @inline(__always) func route<R: RoutableRequest>(vhost v: Int, _ req: R) -> (route: Int, match: Int) {
        matcher.route(vhost: v, req)
    }
}

extension ProxySnapshot.Route {
    /// A destination by weight (uniform draw over 100).
    @inline(__always) func pickTarget(_ rng: inout FastRandom) -> Int {
        if targets.count == 1 { return targets[0] }
        let x = Int(rng.next() % 100)
        for (i, c) in cumulativeWeights.enumerated() where x < c { return targets[i] }
        return targets[targets.count - 1]
    }

    /// Istio's `rewrite.uri` of `path[0..<n]` (path and query) into `out`: the prefix that matched
    /// (match entry `matchIndex`, a prefix match) is replaced, else the whole path; the query stays.
    func appendRewrittenPath(_ out: ByteBuffer, matchIndex: Int, _ path: UnsafePointer<UInt8>, _ n: Int) {
        guard let rw = rewriteURI else { out.append(path, n); return }
        var q = 0
        while q < n && path[q] != UInt8(ascii: "?") { q += 1 }
        out.append(rw)
        if matchIndex >= 0, let u = matches[matchIndex].uri, u.kind == .prefix, u.value.count <= q {
            out.append(path + u.value.count, n - u.value.count)
        } else {
            out.append(path + q, n - q)
        }
    }

    /// Whether a fault (delay or abort) of `ppm` parts per million applies to this request.
    @inline(__always) static func draw(_ ppm: UInt64, _ rng: inout FastRandom) -> Bool {
        ppm >= 1_000_000 || (ppm > 0 && rng.next() % 1_000_000 < ppm)
    }
}
