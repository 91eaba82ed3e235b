import MeshConfig
import MeshCore

/// A route target's load balancing beyond `simple`, compiled once per config (DESIGN §7): the
/// consistent-hash key and table, the locality priority levels of its endpoints, and warm-up.
/// Immutable and shared by every worker; the per-worker positions live in `RoutingState`.
final class TargetBalancing: Sendable {
    /// What a consistent-hash target hashes (Istio's `consistentHash` hash key).
    enum HashKey: Sendable {
        case header([UInt8])
        /// `setCookie`: the `Set-Cookie` value's suffix after the generated value
        /// (`; Max-Age=N; Path=P; HttpOnly`), nil when Envoy would not generate one.
        case cookie(name: [UInt8], suffix: [UInt8])
        case sourceIP
        case queryParameter([UInt8])
    }

    /// Envoy's slow start for one target.
    struct Warmup: Sendable {
        let duration: UInt64
        /// The share a just-added endpoint starts at, per million.
        let minimumPPM: UInt64
        let aggression: Double
    }

    let hashKey: HashKey?
    let table: ConsistentHashTable?
    /// Priority levels (0 first) as positions into the target's endpoints; one level when the
    /// target has no locality preference.
    let levels: [[Int]]
    /// The level of each position (-1: a locality `distribute` gives no traffic).
    let levelOf: [Int]
    /// `distribute`: the levels are localities chosen by these weights (each scaled by its
    /// healthy share x 1.4, capped at 1, as Envoy's locality-weighted balancing), not priorities.
    let levelWeights: [UInt64]?
    let warmup: Warmup?

    init(hashKey: HashKey?, table: ConsistentHashTable?, levels: [[Int]], levelOf: [Int], levelWeights: [UInt64]? = nil, warmup: Warmup?) {
        self.hashKey = hashKey; self.table = table; self.levels = levels; self.levelOf = levelOf
        self.levelWeights = levelWeights; self.warmup = warmup
    }

    /// Envoy's overprovisioning factor (1.4): a level keeps all its traffic while at least
    /// 1/1.4 (about 71 %) of its endpoints are healthy, then spills the rest to the next.
    static let overprovisioning: UInt64 = 140

    /// The balancing of a target of cluster `ci` over `endpoints` (cluster endpoint indices), or
    /// nil when plain `simple` balancing over all of them is all it needs.
    static func compile(_ b: Bootstrap, cluster ci: Int, endpoints eps: [Int], policy tp: IstioTraffic.TrafficPolicy?,
                        outlier: Bool) -> TargetBalancing? {
        guard let tp, !eps.isEmpty else { return nil }
        let c = b.clusters[ci]
        var key: HashKey? = nil
        var table: ConsistentHashTable? = nil
        if let ch = tp.consistentHash {
            switch ch.key {
            case .header(let h): key = .header(Array(h.utf8))
            case .cookie(let name, let path, let ttl):
                var suffix = ""
                if ttl > 0 { suffix += "; Max-Age=\(ttl / 1_000_000_000)" }
                if let p = path { suffix += "; Path=\(p)" }
                suffix += "; HttpOnly"
                key = .cookie(name: Array(name.utf8), suffix: Array(suffix.utf8))
            case .sourceIP: key = .sourceIP
            case .queryParameter(let q): key = .queryParameter(Array(q.utf8))
            }
            let keys = eps.map { ConsistentHashTable.endpointKey("\(c.endpoints[$0])") }
            switch ch.algorithm {
            case .ringHash(let size): table = HashRing.build(keys: keys, minimumSize: size)
            case .maglev(let size): table = Maglev.build(keys: keys, tableSize: size)
            }
        }
        var levelOf = [Int](repeating: 0, count: eps.count)
        // Istio applies locality failover only with outlier detection (mesh default: enabled);
        // `distribute` applies without it, when the caller's locality matches a `from`.
        let l = tp.localityLbSetting ?? IstioTraffic.LocalityLbSetting()
        var weights: [UInt64]? = nil
        if l.enabled != false, let d = LocalityPriority.distribution(endpoints: eps.map { c.endpointLabels[$0] }, own: b.workload.labels, setting: l) {
            levelOf = d.levelOf
            weights = d.weights
        } else if outlier && l.enabled != false {
            let own = b.workload.labels
            levelOf = eps.map { e in
                LocalityPriority.of(endpoint: c.endpointLabels[e], own: own, setting: l)
            }
            // Priorities in use, compacted to 0, 1, 2... as Istio does.
            let used = Array(Set(levelOf)).sorted()
            levelOf = levelOf.map { used.firstIndex(of: $0)! }
        }
        let nLevels = max(weights?.count ?? 0, (levelOf.max() ?? 0) + 1)
        var levels = [[Int]](repeating: [], count: nLevels)
        for (pos, l) in levelOf.enumerated() where l >= 0 { levels[l].append(pos) }
        var warm: Warmup? = nil
        if let w = tp.warmup {
            warm = Warmup(duration: w.duration, minimumPPM: UInt64(w.minimumPercent * 10_000), aggression: w.aggression)
        }
        if key == nil && nLevels == 1 && weights == nil && warm == nil { return nil }
        return TargetBalancing(hashKey: key, table: table, levels: levels, levelOf: levelOf, levelWeights: weights, warmup: warm)
    }
}

/// Istio's locality priorities (its `applyLocalityFailover` and `applyPriorityFailover`): 0 for
/// endpoints in the caller's own region, zone and subzone, 1 same zone, 2 same region, then the
/// `failover` target region, then the rest; or, with `failoverPriority`, by how many of the
/// listed labels (in order) the endpoint shares with the caller.
enum LocalityPriority {
    static func value(_ labels: [(String, String)], _ key: String) -> String {
        labels.first { $0.0 == key }?.1 ?? ""
    }

    static func locality(_ labels: [(String, String)]) -> (String, String, String) {
        let k = IstioTraffic.localityLabelKeys
        return (value(labels, k[0]), value(labels, k[1]), value(labels, k[2]))
    }

    /// Istio's `LocalityMatch`: a rule `region/zone/subzone` where `*` or a missing part matches any.
    static func matches(_ l: (String, String, String), _ rule: String) -> Bool {
        let p = rule.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        let r = p[0], z = p.count > 1 ? p[1] : "", s = p.count > 2 ? p[2] : ""
        return (r == "*" || r == l.0) && (z == "*" || z.isEmpty || z == l.1) && (s == "*" || s.isEmpty || s == l.2)
    }

    /// Istio's `applyLocalityWeights`: the first `distribute` entry whose `from` matches the
    /// caller; each `to` (in order) claims the endpoints' localities it matches that no earlier
    /// one claimed, and shares its weight between them by their endpoint counts; localities no
    /// `to` claims get nothing. Levels are the claimed localities; nil when no `from` matches.
    static func distribution(endpoints: [[(String, String)]], own: [(String, String)],
                             setting: IstioTraffic.LocalityLbSetting) -> (levelOf: [Int], weights: [UInt64])? {
        let me = locality(own)
        guard let d = setting.distribute.first(where: { matches(me, $0.from) }) else { return nil }
        let locs = endpoints.map { locality($0) }
        var levelOf = [Int](repeating: -1, count: endpoints.count)
        var weights: [UInt64] = []
        var claimed = [Bool](repeating: false, count: endpoints.count)
        for (rule, weight) in d.to {
            let members = locs.indices.filter { !claimed[$0] && matches(locs[$0], rule) }
            for i in members { claimed[i] = true }
            // The distinct localities among them, in endpoint order.
            var groups: [(loc: (String, String, String), count: Int)] = []
            for i in members {
                if let g = groups.firstIndex(where: { $0.loc == locs[i] }) { groups[g].count += 1 } else { groups.append((locs[i], 1)) }
            }
            for g in groups {
                // Per million of the traffic: the rule's share split by endpoint count.
                let w = UInt64(weight) * 10_000 * UInt64(g.count) / UInt64(members.count)
                if w == 0 { continue }
                let level = weights.count
                weights.append(w)
                for i in members where locs[i] == g.loc { levelOf[i] = level }
            }
        }
        return (levelOf, weights)
    }

    static func of(endpoint: [(String, String)], own: [(String, String)], setting: IstioTraffic.LocalityLbSetting) -> Int {
        if !setting.failoverPriority.isEmpty {
            var matched = 0
            for k in setting.failoverPriority {
                let mine = value(own, k)
                guard !mine.isEmpty, value(endpoint, k) == mine else { break }
                matched += 1
            }
            return setting.failoverPriority.count - matched
        }
        let keys = IstioTraffic.localityLabelKeys
        let (r, z, s) = (value(endpoint, keys[0]), value(endpoint, keys[1]), value(endpoint, keys[2]))
        let (mr, mz, ms) = (value(own, keys[0]), value(own, keys[1]), value(own, keys[2]))
        if r == mr {
            if z == mz { return s == ms ? 0 : 1 }
            return 2
        }
        if setting.failover.contains(where: { $0.from == mr && $0.to == r }) { return 3 }
        return 4
    }
}

extension TargetBalancing {
    /// The target's balancing from its DestinationRule: a subset's `loadBalancer` replaces the
    /// whole top-level one (Istio merges trafficPolicy per field group); locality levels need the
    /// cluster's outlier detection.
    static func compile(_ b: Bootstrap, cluster ci: Int, endpoints eps: [Int], subset: String?) -> TargetBalancing? {
        guard let dr = b.traffic.destinationRules.first(where: { b.clusterIndex(forHost: $0.host, namespace: $0.namespace) == ci }) else { return nil }
        var tp = dr.trafficPolicy
        if let s = subset, let sp = dr.subsets.first(where: { $0.name == s })?.trafficPolicy,
           sp.loadBalancer != nil || sp.consistentHash != nil || sp.localityLbSetting != nil || sp.warmup != nil {
            var merged = tp ?? sp
            merged.loadBalancer = sp.loadBalancer
            merged.consistentHash = sp.consistentHash
            merged.localityLbSetting = sp.localityLbSetting
            merged.warmup = sp.warmup
            tp = merged
        }
        let outlier = tp.map { $0.consecutive5xxErrors != nil || $0.consecutiveGatewayErrors != nil || $0.interval != nil
            || $0.baseEjectionTime != nil || $0.maxEjectionPercent != nil } ?? false
        return compile(b, cluster: ci, endpoints: eps, policy: tp, outlier: outlier)
    }
}
