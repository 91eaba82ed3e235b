import MeshCore

/// A DestinationRule's `trafficPolicy.loadBalancer` (Istio's LoadBalancerSettings): `simple`, or
/// `consistentHash` (a hash key and ring hash or Maglev), with `localityLbSetting` and warm-up.
/// Parsed with Istio's validation rules; what this mesh does not implement is refused by name.
extension IstioTraffic {
    /// Istio's ConsistentHashLB: which request property is hashed, and the table it picks from.
    public struct ConsistentHash: Sendable, Equatable {
        /// The hashed property (Istio's `hash_key` oneof).
        public enum Key: Sendable, Equatable {
            /// `httpHeaderName`, lowercased (header names are matched lowercase).
            case header(String)
            /// `httpCookie`: `ttl` nanoseconds (0: a session cookie); a request without the cookie
            /// gets a generated value, set on the response (Envoy).
            case cookie(name: String, path: String?, ttl: UInt64)
            /// `useSourceIp`: the caller's address without its port.
            case sourceIP
            /// `httpQueryParameterName`.
            case queryParameter(String)
        }

        /// Istio's `hash_algorithm` oneof (ring hash when neither is given, as Istio renders it).
        public enum Algorithm: Sendable, Equatable {
            case ringHash(minimumRingSize: Int)
            case maglev(tableSize: Int)
        }

        public var key: Key
        public var algorithm: Algorithm

        /// Envoy's defaults: a ring of at least 1024 entries, a Maglev table of 65537.
        public static let defaultRingSize = 1024
        public static let defaultMaglevTableSize = 65537
        /// Envoy's bound on a ring (`maximum_ring_size`); a Maglev table is bounded the same way.
        public static let maxTableSize = 8_388_608
    }

    /// Istio's LocalityLoadBalancerSetting. Localities are `region/zone/subzone` as endpoints'
    /// `topology.kubernetes.io/region`, `topology.kubernetes.io/zone` and
    /// `topology.istio.io/subzone` labels give them.
    public struct LocalityLbSetting: Sendable {
        /// `enabled`; nil: Istio's mesh default (on).
        public var enabled: Bool?
        /// `failover[]`: from one region to another.
        public var failover: [(from: String, to: String)] = []
        /// `failoverPriority`: label keys, most important first.
        public var failoverPriority: [String] = []
        /// `distribute[]`: for callers in `from`, the share (percent) of traffic each `to`
        /// locality gets; localities (`region/zone/subzone`) may end in `*`.
        public var distribute: [(from: String, to: [(locality: String, weight: Int)])] = []
        /// The line of `localityLbSetting` in its file (for errors about the whole rule).
        public internal(set) var line = 0
        public init() {}
    }

    /// Envoy's slow start (Istio's `warmupDurationSecs`, or `warmup`): a new endpoint's share
    /// ramps up over `duration`, from `minimumPercent`, shaped by `aggression` (1: linear).
    public struct Warmup: Sendable, Equatable {
        public var duration: UInt64
        public var minimumPercent: Double
        public var aggression: Double
    }

    /// The locality labels of Kubernetes and Istio, in order: region, zone, subzone.
    public static let localityLabelKeys = ["topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone"]

    /// `loadBalancer` of a trafficPolicy into `p`; whether locality failover can act (it needs the
    /// DestinationRule's `outlierDetection`) is checked for the whole rule by `checkLocalityFailover`.
    static func loadBalancer(_ lb: inout ConfigReader, into p: inout TrafficPolicy, ctx: ConfigError) throws(ConfigError) {
        if let s = try lb.string("simple") {
            guard let v = TrafficPolicy.LoadBalancer(rawValue: s) else {
                throw ConfigReader.error(ctx, lb.sub("simple"), lb.map.line, "expected ROUND_ROBIN, LEAST_REQUEST or RANDOM, got \"\(s)\"")
            }
            p.loadBalancer = v
        }
        if var ch = try lb.object("consistentHash") {
            if p.loadBalancer != nil {
                throw ConfigReader.error(ctx, lb.sub("consistentHash"), ch.map.line, "only one of simple or consistentHash (Istio's lb_policy is one of them)")
            }
            p.consistentHash = try consistentHash(&ch, ctx: ctx)
        }
        if var ls = try lb.object("localityLbSetting") {
            p.localityLbSetting = try localityLbSetting(&ls, ctx: ctx)
        }
        let legacy = try lb.duration("warmupDurationSecs", allowZero: false)
        if let d = legacy { p.warmup = Warmup(duration: d, minimumPercent: 10, aggression: 1) }
        if var w = try lb.object("warmup") {
            if legacy != nil {
                throw ConfigReader.error(ctx, lb.sub("warmup"), w.map.line, "only one of warmupDurationSecs or warmup")
            }
            guard let d = try w.duration("duration", allowZero: false) else {
                throw ConfigReader.error(ctx, w.sub("duration"), w.map.line, "required field is missing")
            }
            let minimum = try double(&w, "minimumPercent", min: 0, max: 100, ctx: ctx) ?? 10
            let aggression = try double(&w, "aggression", min: 1, max: 100, ctx: ctx) ?? 1
            try w.finish()
            p.warmup = Warmup(duration: d, minimumPercent: minimum, aggression: aggression)
        }
        if p.warmup != nil, p.consistentHash != nil || p.loadBalancer == .random {
            // Envoy's slow start exists for ROUND_ROBIN and LEAST_REQUEST only.
            throw ConfigReader.error(ctx, lb.sub(legacy != nil ? "warmupDurationSecs" : "warmup"), lb.map.line,
                                     "warm-up applies to ROUND_ROBIN and LEAST_REQUEST only, not to \(p.consistentHash != nil ? "consistentHash" : "RANDOM")")
        }
        try lb.finish()
    }

    private static func double(_ r: inout ConfigReader, _ key: String, min: Double, max: Double, ctx: ConfigError) throws(ConfigError) -> Double? {
        guard let n = r.node(key) else { return nil }
        guard case .scalar(let s) = n, !s.quoted, let v = Double(s.value), v.isFinite else {
            throw ConfigReader.error(ctx, r.sub(key), n.line, "expected a number, got \(ConfigReader.describe(n))")
        }
        guard v >= min && v <= max else { throw ConfigReader.error(ctx, r.sub(key), n.line, "must be between \(min) and \(max), got \(s.value)") }
        return v
    }

    private static func consistentHash(_ ch: inout ConfigReader, ctx: ConfigError) throws(ConfigError) -> ConsistentHash {
        var keys: [(String, ConsistentHash.Key)] = []
        if let h = try ch.string("httpHeaderName") {
            guard !h.isEmpty, h.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: ":") }) else {
                throw ConfigReader.error(ctx, ch.sub("httpHeaderName"), ch.map.line, "expected a header name, got \"\(h)\"")
            }
            keys.append(("httpHeaderName", .header(h.lowercased())))
        }
        if var c = try ch.object("httpCookie") {
            let name = try c.string("name", required: true)!
            guard name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "=") && $0 != UInt8(ascii: ";") && $0 != UInt8(ascii: ",") }) else {
                throw ConfigReader.error(ctx, c.sub("name"), c.map.line, "expected a cookie name (no spaces, '=', ';' or ','), got \"\(name)\"")
            }
            let path = try c.string("path")
            if let p = path, !p.hasPrefix("/") || !p.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: ";") }) {
                throw ConfigReader.error(ctx, c.sub("path"), c.map.line, "expected a path starting with / (no spaces or ';'), got \"\(p)\"")
            }
            // Istio: "ttl required for HttpCookie"; 0s makes a session cookie.
            guard let ttl = try c.duration("ttl", allowZero: true) else {
                throw ConfigReader.error(ctx, c.sub("ttl"), c.map.line, "required field is missing (Istio requires a ttl; 0s makes a session cookie)")
            }
            try c.refuse("attributes")
            try c.finish()
            keys.append(("httpCookie", .cookie(name: name, path: path, ttl: ttl)))
        }
        if let s = try ch.bool("useSourceIp") {
            guard s else { throw ConfigReader.error(ctx, ch.sub("useSourceIp"), ch.map.line, "only true is meaningful (it chooses the hash key)") }
            keys.append(("useSourceIp", .sourceIP))
        }
        if let q = try ch.string("httpQueryParameterName") {
            guard !q.isEmpty, q.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "&") && $0 != UInt8(ascii: "=") && $0 != UInt8(ascii: "#") }) else {
                throw ConfigReader.error(ctx, ch.sub("httpQueryParameterName"), ch.map.line, "expected a query parameter name, got \"\(q)\"")
            }
            keys.append(("httpQueryParameterName", .queryParameter(q)))
        }
        guard keys.count == 1 else {
            let msg = keys.isEmpty ? "needs one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName"
                                   : "only one of \(keys.map(\.0).joined(separator: ", ")) (Istio's hash_key is one of them)"
            throw ConfigReader.error(ctx, ch.path, ch.map.line, msg)
        }
        let legacy = try ch.int("minimumRingSize", min: 1, max: ConsistentHash.maxTableSize)
        var algorithm: ConsistentHash.Algorithm? = nil
        if var r = try ch.object("ringHash") {
            let size = try r.int("minimumRingSize", min: 1, max: ConsistentHash.maxTableSize)
            try r.finish()
            algorithm = .ringHash(minimumRingSize: size ?? ConsistentHash.defaultRingSize)
        }
        if var m = try ch.object("maglev") {
            if algorithm != nil { throw ConfigReader.error(ctx, ch.sub("maglev"), m.map.line, "only one of ringHash or maglev") }
            guard let size = try m.int("tableSize", min: 2, max: ConsistentHash.maxTableSize) else {
                throw ConfigReader.error(ctx, m.sub("tableSize"), m.map.line, "required field is missing (a prime such as 65537)")
            }
            guard isPrime(size) else { throw ConfigReader.error(ctx, m.sub("tableSize"), m.map.line, "must be a prime number for maglev (e.g. 65537), got \(size)") }
            try m.finish()
            algorithm = .maglev(tableSize: size)
        }
        if legacy != nil && algorithm != nil {
            throw ConfigReader.error(ctx, ch.sub("minimumRingSize"), ch.map.line, "only one of minimumRingSize or ringHash/maglev (minimumRingSize is the deprecated spelling of ringHash.minimumRingSize)")
        }
        try ch.finish()
        return ConsistentHash(key: keys[0].1, algorithm: algorithm ?? .ringHash(minimumRingSize: legacy ?? ConsistentHash.defaultRingSize))
    }

    static func isPrime(_ n: Int) -> Bool {
        if n < 2 { return false }
        if n < 4 { return true }
        if n % 2 == 0 { return false }
        var d = 3
        while d * d <= n { if n % d == 0 { return false }; d += 2 }
        return true
    }

    private static func localityLbSetting(_ ls: inout ConfigReader, ctx: ConfigError) throws(ConfigError) -> LocalityLbSetting {
        var s = LocalityLbSetting()
        s.line = ls.map.line
        s.enabled = try ls.bool("enabled")
        for var d in try ls.objectList("distribute") ?? [] {
            let from = try d.string("from", required: true)!
            if let why = localityProblem(from) { throw ConfigReader.error(ctx, d.sub("from"), d.map.line, why) }
            if s.distribute.contains(where: { $0.from == from }) {
                throw ConfigReader.error(ctx, d.sub("from"), d.map.line, "locality \"\(from)\" is listed twice")
            }
            guard let n = d.node("to"), case .mapping(let m) = n, !m.entries.isEmpty else {
                throw ConfigReader.error(ctx, d.sub("to"), d.map.line, "expected a mapping of localities to percentages (summing to 100)")
            }
            var to: [(locality: String, weight: Int)] = []
            var total = 0
            for e in m.entries {
                if let why = localityProblem(e.key) { throw ConfigReader.error(ctx, "\(d.sub("to")).\(e.key)", e.keyLine, why) }
                guard case .scalar(let sc) = e.value, !sc.quoted, let w = Int(sc.value), w >= 0, w <= 100 else {
                    throw ConfigReader.error(ctx, "\(d.sub("to")).\(e.key)", e.value.line, "expected a percentage from 0 to 100, got \(ConfigReader.describe(e.value))")
                }
                to.append((e.key, w))
                total += w
            }
            if total != 100 { throw ConfigReader.error(ctx, d.sub("to"), d.map.line, "weights must sum to 100, they sum to \(total)") }
            try d.finish()
            s.distribute.append((from, to))
        }
        for var f in try ls.objectList("failover") ?? [] {
            let from = try f.string("from", required: true)!
            let to = try f.string("to", required: true)!
            for (k, v) in [("from", from), ("to", to)] where !isRegion(v) {
                throw ConfigReader.error(ctx, f.sub(k), f.map.line, "expected a region (a locality's first part, no '/' or '*'), got \"\(v)\"")
            }
            if from == to {
                throw ConfigReader.error(ctx, f.sub("to"), f.map.line, "locality lb failover settings must specify different regions (both are \"\(from)\")")
            }
            try f.finish()
            s.failover.append((from, to))
        }
        if let fp = try ls.stringList("failoverPriority") {
            for (i, k) in fp.enumerated() {
                if k.contains("=") {
                    throw ConfigReader.error(ctx, "\(ls.sub("failoverPriority"))[\(i)]", ls.map.line, "key=value overrides: \(notSupported)")
                }
                guard Names.isLabelKey(k) else {
                    throw ConfigReader.error(ctx, "\(ls.sub("failoverPriority"))[\(i)]", ls.map.line, "expected a label key such as topology.kubernetes.io/zone, got \"\(k)\"")
                }
                if s.failoverPriority.contains(k) {
                    throw ConfigReader.error(ctx, "\(ls.sub("failoverPriority"))[\(i)]", ls.map.line, "label \"\(k)\" is listed twice")
                }
            }
            s.failoverPriority = fp
        }
        if !s.distribute.isEmpty && !s.failover.isEmpty {
            throw ConfigReader.error(ctx, ls.sub("distribute"), ls.map.line, "can not simultaneously set 'distribute' and 'failover' (Istio)")
        }
        if !s.distribute.isEmpty && !s.failoverPriority.isEmpty {
            throw ConfigReader.error(ctx, ls.sub("failoverPriority"), ls.map.line, "failoverPriority together with distribute: \(notSupported)")
        }
        if !s.failover.isEmpty && !s.failoverPriority.isEmpty {
            throw ConfigReader.error(ctx, ls.sub("failoverPriority"), ls.map.line, "failoverPriority together with failover: \(notSupported)")
        }
        try ls.finish()
        return s
    }

    /// Why `s` is not a locality (`region`, `region/zone` or `region/zone/subzone`, a `*` only as
    /// its last part), nil when it is one.
    static func localityProblem(_ s: String) -> String? {
        let parts = s.split(separator: "/", omittingEmptySubsequences: false)
        let ok = parts.count <= 3 && parts.allSatisfy { p in !p.isEmpty && p.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7f } }
            && parts.dropLast().allSatisfy { !$0.contains("*") } && (parts.last == "*" || !parts.last!.contains("*"))
        return ok ? nil : "expected a locality region/zone/subzone (a '*' only as the whole last part), got \"\(s)\""
    }

    private static func isRegion(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "/") && $0 != UInt8(ascii: "*") }
    }
}

extension IstioTraffic {
    /// Locality failover acts only through outlier detection (Istio applies it only then, and
    /// warns): without the DestinationRule's `outlierDetection` no endpoint is ever ejected, so a
    /// `failover` or `failoverPriority` could never act and is refused rather than dropped.
    static func checkLocalityFailover(_ tp: TrafficPolicy?, _ subsets: [Subset], line: Int, ctx: ConfigError) throws(ConfigError) {
        let hasOutlier = tp.map { $0.consecutive5xxErrors != nil || $0.consecutiveGatewayErrors != nil || $0.interval != nil
            || $0.baseEjectionTime != nil || $0.maxEjectionPercent != nil } ?? false
        if hasOutlier { return }
        var policies: [(String, TrafficPolicy)] = tp.map { [("spec.trafficPolicy", $0)] } ?? []
        for (i, s) in subsets.enumerated() { if let p = s.trafficPolicy { policies.append(("spec.subsets[\(i)].trafficPolicy", p)) } }
        for (path, p) in policies {
            guard let l = p.localityLbSetting, l.enabled != false else { continue }
            let field = !l.failover.isEmpty ? "failover" : !l.failoverPriority.isEmpty ? "failoverPriority" : nil
            if let f = field {
                throw ConfigReader.error(ctx, "\(path).loadBalancer.localityLbSetting.\(f)", l.line > 0 ? l.line : line,
                                         "needs spec.trafficPolicy.outlierDetection (Istio fails over only from ejected endpoints; without it traffic never moves)")
            }
        }
    }
}
