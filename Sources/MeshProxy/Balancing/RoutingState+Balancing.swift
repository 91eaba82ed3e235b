import Glibc
import MeshCore

/// Picking for targets with a `TargetBalancing` (consistent hash, locality levels, warm-up):
/// called from `RoutingState.pickEndpoint(target:avoid:hash:)`. Allocation-free; the only
/// per-request work beyond a table lookup is counting healthy endpoints per locality level
/// (health changes at run time, so it cannot be compiled).
extension RoutingState {
    func pickBalanced(target t: Int, _ tg: RouteTarget, _ bal: TargetBalancing, avoid: EndpointPool?, hash: UInt64?) -> EndpointPool? {
        let ps = pools[tg.cluster]
        let eps = tg.endpoints
        let now = worker.loop.now
        let level = bal.levelWeights != nil ? pickLocality(tg, bal, ps, now) : bal.levels.count > 1 ? pickLevel(tg, bal, ps, now) : 0
        if level < 0 { return nil }
        if let table = bal.table {
            // Walk the ring (or Maglev table) from the key's slot: the first endpoint of the level
            // that is not ejected takes the request, so the keys of an ejected endpoint move to
            // their next owners and every other key stays where it was.
            var s = table.slot(for: hash ?? worker.rng.next())
            let n = eps.count
            // Endpoints looked at, one bit each (the worker's bitmap, grown once to the largest
            // target): the walk ends when every endpoint was seen, so a pick looks at a few
            // slots per endpoint at most, not the whole table when all but the avoided one are out.
            let words = (n + 63) >> 6
            if worker.lbVisited.count < words { worker.lbVisited = [UInt64](repeating: 0, count: words) }
            var fallback: EndpointPool? = nil
            var distinct = 0
            var steps = 0
            let picked = worker.lbVisited.withUnsafeMutableBufferPointer { seen -> EndpointPool? in
                for w in 0..<words { seen[w] = 0 }
                while steps < table.count {
                    let pos = Int(table.owners[s])
                    steps += 1
                    s += 1
                    if s == table.count { s = 0 }
                    let bit: UInt64 = 1 << UInt64(pos & 63)
                    if seen[pos >> 6] & bit != 0 { continue }
                    seen[pos >> 6] |= bit
                    distinct += 1
                    let p = ps[eps[pos]]
                    if bal.levelOf[pos] == level && p.ejectedUntil <= now {
                        if p !== avoid { return p }
                        fallback = p
                    }
                    if distinct == n { break }
                }
                return nil
            }
            hashWalkSteps = steps
            if let p = picked { return p }
            return fallback
        }
        let list = bal.levels[level]
        let n = list.count
        if balancingRR.count != snapshot.targets.count {
            balancingRR = snapshot.targets.map { [Int](repeating: worker.id, count: $0.balancing?.levels.count ?? 0) }
        }
        var start: Int
        switch tg.loadBalancer {
        case .roundRobin:
            start = balancingRR[t][level] % n
        case .random:
            start = Int(worker.rng.next() % UInt64(n))
        case .leastRequest:
            start = Int(worker.rng.next() % UInt64(n))
            if n > 1 {
                var j = Int(worker.rng.next() % UInt64(n - 1))
                if j >= start { j += 1 }
                let a = ps[eps[list[start]]], b = ps[eps[list[j]]]
                let aOK = a.ejectedUntil <= now && a !== avoid, bOK = b.ejectedUntil <= now && b !== avoid
                if aOK && bOK {
                    let first = a.activeRequests <= b.activeRequests ? a : b
                    if warmAccepts(first, bal, now) { return first }
                    let other = first === a ? b : a
                    if warmAccepts(other, bal, now) { return other }
                }
                if !aOK && bOK { start = j }
            }
        }
        var fallback: EndpointPool? = nil
        var cold: EndpointPool? = nil
        for k in 0..<n {
            let i = (start + k) % n
            let p = ps[eps[list[i]]]
            if p.ejectedUntil > now { continue }
            if p === avoid { fallback = p; continue }
            if !warmAccepts(p, bal, now) {
                if cold == nil { cold = p }
                continue
            }
            if tg.loadBalancer == .roundRobin { balancingRR[t][level] = i + 1 }
            return p
        }
        if tg.loadBalancer == .roundRobin { balancingRR[t][level] = start + 1 }
        return cold ?? fallback
    }

    /// Envoy's slow start: an endpoint added `elapsed` ago, within the warm-up window, takes a
    /// request with probability max(minimumPercent, (elapsed / duration)^(1 / aggression)); the
    /// others take the rest. Endpoints present when the worker first saw the cluster are warm.
    @inline(__always) func warmAccepts(_ p: EndpointPool, _ bal: TargetBalancing, _ now: UInt64) -> Bool {
        guard let w = bal.warmup, p.addedAt > 0, now < p.addedAt &+ w.duration else { return true }
        let elapsed = Double(now &- p.addedAt) / Double(w.duration)
        var share = w.aggression == 1 ? elapsed : pow(elapsed, 1 / w.aggression)
        share = max(share, Double(w.minimumPPM) / 1_000_000)
        return Double(worker.rng.next() % 1_000_000) < share * 1_000_000
    }

    /// `distribute`: a locality by weight, each weight scaled by min(1, 1.4 x its healthy share)
    /// (Envoy's locality-weighted balancing); -1 when none has a healthy endpoint.
    private func pickLocality(_ tg: RouteTarget, _ bal: TargetBalancing, _ ps: [EndpointPool], _ now: UInt64) -> Int {
        guard let weights = bal.levelWeights else { return 0 }
        var total: UInt64 = 0
        for l in 0..<weights.count { total += effectiveWeight(l, weights[l], tg, bal, ps, now) }
        if total == 0 { return -1 }
        let x = worker.rng.next() % total
        var acc: UInt64 = 0
        for l in 0..<weights.count {
            acc += effectiveWeight(l, weights[l], tg, bal, ps, now)
            if x < acc { return l }
        }
        return -1
    }

    @inline(__always) private func effectiveWeight(_ l: Int, _ w: UInt64, _ tg: RouteTarget, _ bal: TargetBalancing,
                                                   _ ps: [EndpointPool], _ now: UInt64) -> UInt64 {
        let list = bal.levels[l]
        if list.isEmpty { return 0 }
        var healthy: UInt64 = 0
        for pos in list where ps[tg.endpoints[pos]].ejectedUntil <= now { healthy += 1 }
        let n = UInt64(list.count)
        // min(1, 1.4 x healthy / n) of the weight.
        return min(w, w * TargetBalancing.overprovisioning * healthy / (100 * n))
    }

    /// The locality level for this request: Envoy's priority load with the overprovisioning
    /// factor (a level's share is min(100 %, 1.4 x its healthy fraction), the rest spills to the
    /// next levels; normalised when the levels together are under 100 %), drawn at random.
    /// -1 when no endpoint of any level is healthy.
    private func pickLevel(_ tg: RouteTarget, _ bal: TargetBalancing, _ ps: [EndpointPool], _ now: UInt64) -> Int {
        let full: UInt64 = 1_000_000
        var total: UInt64 = 0
        // Up to 8 levels on the stack (Istio's locality priorities are at most 5; a longer
        // failoverPriority list gets its first 8 levels weighed, the rest only as a last resort).
        var health: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
        let m = min(bal.levels.count, 8)
        var firstHealthy = -1
        withUnsafeMutableBytes(of: &health) { raw in
            let h = raw.bindMemory(to: UInt64.self)
            for l in 0..<bal.levels.count {
                let list = bal.levels[l]
                var healthy: UInt64 = 0
                for pos in list where ps[tg.endpoints[pos]].ejectedUntil <= now { healthy += 1 }
                if healthy > 0 && firstHealthy < 0 { firstHealthy = l }
                if l < m {
                    h[l] = min(full, TargetBalancing.overprovisioning * healthy * (full / 100) / UInt64(list.count))
                    total += h[l]
                }
            }
        }
        if firstHealthy < 0 { return -1 }
        if total == 0 { return firstHealthy }
        let norm = min(full, total)
        let x = worker.rng.next() % full
        var acc: UInt64 = 0
        var remaining = full
        var chosen = firstHealthy
        withUnsafeBytes(of: &health) { raw in
            let h = raw.bindMemory(to: UInt64.self)
            for l in 0..<m {
                let load = min(remaining, h[l] * full / norm)
                remaining -= load
                acc += load
                if load > 0 && x < acc { chosen = l; return }
            }
        }
        return chosen
    }
}
