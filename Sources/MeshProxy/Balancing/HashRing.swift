/// Envoy's ring hash (Karger et al.'s consistent hashing): each endpoint places points on a
/// 64-bit ring at the hashes of `"<address>_<i>"`; a key belongs to the first point at or after
/// its hash. Each endpoint's point count is `ceil(minimumRingSize / endpoints)` rounded up to a
/// power of two (so the ring has at least `minimumRingSize` points, at most twice that): unlike
/// Envoy's exact division, the count rarely changes with the number of endpoints, so adding an
/// endpoint to N moves only the keys its new points take, about 1/(N+1) of them, all to it.
enum HashRing {
    /// Builds the ring for endpoints identified by `keys` (their position is the owner).
    static func build(keys: [String], minimumSize: Int) -> ConsistentHashTable {
        let n = keys.count
        precondition(n > 0)
        var per = 1
        while per < (minimumSize + n - 1) / n { per <<= 1 }
        per = max(1, min(per, IstioHashLimits.maxTable / n))
        var entries: [(point: UInt64, owner: Int32)] = []
        entries.reserveCapacity(per * n)
        for (o, k) in keys.enumerated() {
            for i in 0..<per { entries.append((LBHash.string("\(k)_\(i)"), Int32(o))) }
        }
        // Ties (vanishingly rare) are broken by owner, so the ring is the same in every process.
        entries.sort { $0.point != $1.point ? $0.point < $1.point : $0.owner < $1.owner }
        return ConsistentHashTable(kind: .ring, points: entries.map(\.point), owners: entries.map(\.owner))
    }
}

/// Bounds on the tables, as Envoy bounds them (`maximum_ring_size` 8M).
enum IstioHashLimits {
    static let maxTable = 8_388_608
}
