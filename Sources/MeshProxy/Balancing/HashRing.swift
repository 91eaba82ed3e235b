/// Envoy's ring hash (Karger et al.'s consistent hashing): each endpoint places points on a
/// 64-bit ring at the hashes of `"<address>_<i>"`; a key belongs to the first point at or after
/// its hash. Unlike Envoy, which divides `minimumRingSize` among the endpoints (so every
/// endpoint's points change when one joins, and keys move between old endpoints too), each
/// endpoint places `minimumRingSize` points (the ring has at least that many, as asked), the
/// whole ring capped at `maxPoints`: an endpoint's points do not depend on the others (up to
/// 1,024 endpoints at the default size), so adding one to N moves only the keys its points
/// take, about 1/(N+1) of them, all to it.
enum HashRing {
    /// The most points a ring has (12 bytes each): 12 MiB.
    static let maxPoints = 1 << 20

    /// Builds the ring for endpoints identified by `keys` (their position is the owner).
    static func build(keys: [String], minimumSize: Int) -> ConsistentHashTable {
        let n = keys.count
        precondition(n > 0)
        let per = max(1, min(minimumSize, maxPoints / n))
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
