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
/// each fill is credited exactly once whichever worker sees it first. Built with the snapshot
/// (a new config starts a full bucket, as Envoy's filter does when its config changes).
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

extension TrafficCompiler {
    /// The buckets of the LocalRateLimits that apply to route `h` of `vs` in this sidecar (its
    /// workload selected), each new and full.
    static func rateLimiters(_ b: Bootstrap, _ vs: IstioTraffic.VirtualService, _ h: IstioTraffic.HTTPRoute) -> [LocalRateLimiter] {
        b.traffic.localRateLimits.filter { $0.applies(to: vs, routeName: h.name) && $0.selects(labels: b.workload.labels) }
            .map { LocalRateLimiter($0.tokenBucket, now: Clock.monotonicNanos()) }
    }
}
