import MeshConfig
import MeshCore
import Synchronization

/// One route's token bucket (Envoy's local_ratelimit TokenBucket), shared by every worker of
/// the sidecar through two atomics, so the rate holds whatever the number of workers and no
/// worker ever waits on a lock. The bucket starts full; every `fillInterval` since it was built
/// adds `tokensPerFill`, up to `maxTokens`; a request takes one token or is refused (429 RL).
///
/// Fills are counted, not timed: the first request to see that the clock has passed fill `k`
/// moves `fills` to `k` with a compare-and-swap and adds the tokens of the fills it claimed, so
/// each fill is credited exactly once whichever worker sees it first. Kept across snapshot
/// rebuilds by `RateLimiterRegistry` (DNS re-resolution, JWKS and certificate changes must not
/// refill it); a changed bucket config starts a full bucket, as Envoy's filter does.
final class LocalRateLimiter: Sendable {
    let maxTokens: Int64
    let tokensPerFill: Int64
    let fillInterval: UInt64
    /// The monotonic time fills are counted from.
    let start: UInt64
    private let tokens: Atomic<Int64>
    private let fills = Atomic<UInt64>(0)

    init(_ b: LocalRateLimit.TokenBucket, now: UInt64) {
        maxTokens = Int64(b.maxTokens)
        tokensPerFill = Int64(b.tokensPerFill)
        fillInterval = b.fillInterval
        start = now
        tokens = Atomic(Int64(b.maxTokens))
    }

    /// Takes a token at monotonic time `now`; false when the bucket is empty.
    @inline(__always) func tryTake(now: UInt64) -> Bool {
        refill(now)
        var t = tokens.load(ordering: .relaxed)
        while t > 0 {
            let (done, seen) = tokens.compareExchange(expected: t, desired: t - 1, ordering: .relaxed)
            if done { return true }
            t = seen
        }
        return false
    }

    /// Credits the fills due by `now` that no worker credited yet.
    @inline(__always) private func refill(_ now: UInt64) {
        let due = now > start ? (now - start) / fillInterval : 0
        var seen = fills.load(ordering: .relaxed)
        while due > seen {
            let (claimed, current) = fills.compareExchange(expected: seen, desired: due, ordering: .relaxed)
            if claimed {
                // At most a full bucket, however many fills were missed.
                let add = Int64(min(due - seen, UInt64(maxTokens))) &* tokensPerFill
                var t = tokens.load(ordering: .relaxed)
                while true {
                    let next = min(maxTokens, t &+ add)
                    let (done, was) = tokens.compareExchange(expected: t, desired: next, ordering: .relaxed)
                    if done { return }
                    t = was
                }
            }
            seen = current
        }
    }

    /// Tokens left (tests and /config_dump).
    var available: Int64 { tokens.load(ordering: .relaxed) }
}

extension Exchange {
    /// Takes a token from each of the route's buckets; when one is empty the request gets 429
    /// with the RL flag here and never reaches the upstream (false).
    func takeRateLimitTokens(_ route: ProxySnapshot.Route) -> Bool {
        let now = loop.now
        for l in route.rateLimiters where !l.tryTake(now: now) {
            worker.stats.inc(.rateLimited)
            localReply(429, "local_rate_limited", flag: .rateLimited)
            return false
        }
        return true
    }
}

/// The buckets in force, so a snapshot compiled again (new DNS addresses, JWKS key sets,
/// certificates, an unrelated config change) takes over the buckets of the one before instead of
/// starting full ones, each of which would let up to `maxTokens` extra requests through. A bucket
/// is keyed by the sidecar's workload, the LocalRateLimit, the VirtualService route and the bucket
/// config (a changed config starts a new, full bucket, as Envoy does). Entries are weak: a bucket
/// lives while a snapshot uses it, so a limit removed and added again later starts full.
/// Control path only (snapshot compilation); the request path never consults it.
final class RateLimiterRegistry: Sendable {
    static let shared = RateLimiterRegistry()

    struct Key: Hashable {
        /// `<workload namespace>/<workload name>/<bootstrap name>`: proxies sharing one process
        /// (tests) keep apart.
        let workload: String
        /// `<namespace>/<name>` of the LocalRateLimit.
        let limit: String
        /// `<namespace>/<VirtualService>#<index>/<route label>` of the VirtualService route.
        let route: String
        let maxTokens: Int
        let tokensPerFill: Int
        let fillInterval: UInt64
    }
    private struct Entry { weak var limiter: LocalRateLimiter? }
    private let entries = Mutex<[Key: Entry]>([:])

    /// The bucket in force for `key`, or a new full one started at `now`.
    func limiter(_ key: Key, _ bucket: LocalRateLimit.TokenBucket, now: UInt64) -> LocalRateLimiter {
        entries.withLock { e in
            if let l = e[key]?.limiter { return l }
            // Buckets no snapshot uses any more go (at most once per new bucket).
            e = e.filter { $0.value.limiter != nil }
            let l = LocalRateLimiter(bucket, now: now)
            e[key] = Entry(limiter: l)
            return l
        }
    }

    /// Buckets still in use (tests).
    var count: Int { entries.withLock { $0.values.filter { $0.limiter != nil }.count } }
}

extension TrafficCompiler {
    /// The buckets of the LocalRateLimits that apply to route `index` (`h`) of `vs` in this
    /// sidecar (its workload selected): those of the snapshot before when their config is the
    /// same, new and full otherwise. Keyed by the route's index and label, so two routes of one
    /// VirtualService never share a bucket (an unnamed route `1` and one named "1").
    static func rateLimiters(_ b: Bootstrap, _ vs: IstioTraffic.VirtualService, _ index: Int, _ h: IstioTraffic.HTTPRoute,
                             now: UInt64 = Clock.monotonicNanos()) -> [LocalRateLimiter] {
        b.traffic.localRateLimits.filter { $0.applies(to: vs, routeName: h.name) && $0.selects(labels: b.workload.labels) }
            .map { l in
                let t = l.tokenBucket
                let key = RateLimiterRegistry.Key(workload: "\(b.workload.namespace)/\(b.workload.name)/\(b.name)", limit: "\(l.namespace)/\(l.name)",
                                                  route: "\(vs.namespace)/\(vs.name)#\(index)/\(Bootstrap.routeLabel(vs, index))", maxTokens: t.maxTokens,
                                                  tokensPerFill: t.tokensPerFill, fillInterval: t.fillInterval)
                return RateLimiterRegistry.shared.limiter(key, t, now: now)
            }
    }
}
