/// A 64-bit hash that is the same in every process and on every machine (FNV-1a, then
/// MurmurHash3's finaliser to spread the bits), so every sidecar maps a key to the same
/// endpoint. Not keyed: it balances load, it is no defence against a chosen key.
enum LBHash {
    static let seed: UInt64 = 0xcbf2_9ce4_8422_2325

    /// Hashes `n` bytes at `p` continuing from `h` (start with `seed`); `finish` the result.
    @inline(__always) static func add(_ h: UInt64, _ p: UnsafePointer<UInt8>, _ n: Int) -> UInt64 {
        var h = h
        for i in 0..<n { h = (h ^ UInt64(p[i])) &* 0x0000_0100_0000_01b3 }
        return h
    }

    @inline(__always) static func finish(_ h: UInt64) -> UInt64 {
        var k = h
        k ^= k >> 33
        k &*= 0xff51_afd7_ed55_8ccd
        k ^= k >> 33
        k &*= 0xc4ce_b9fe_1a85_ec53
        k ^= k >> 33
        return k
    }

    @inline(__always) static func bytes(_ p: UnsafePointer<UInt8>, _ n: Int) -> UInt64 { finish(add(seed, p, n)) }

    /// Control path: a string's hash (the same as `bytes` of its UTF-8).
    static func string(_ s: String) -> UInt64 {
        var h = seed
        for c in s.utf8 { h = (h ^ UInt64(c)) &* 0x0000_0100_0000_01b3 }
        return finish(h)
    }
}

/// The table a consistent-hash target picks from, built once per config (a ring of Envoy's
/// ring hash, or a Maglev lookup table): slots in order, each owned by one endpoint position of
/// the target. A request's hash names its first slot; walking on to the next slots skips
/// ejected endpoints (and the endpoint a retry avoids) while keeping every other key in place.
final class ConsistentHashTable: Sendable {
    enum Kind: Sendable { case ring, maglev }
    let kind: Kind
    /// Ring only: the sorted point of each slot.
    let points: [UInt64]
    /// The endpoint position (index into the target's endpoints) owning each slot.
    let owners: [Int32]

    init(kind: Kind, points: [UInt64], owners: [Int32]) {
        self.kind = kind
        self.points = points
        self.owners = owners
    }

    var count: Int { owners.count }

    /// The first slot for `hash`: the first ring point at or after it (wrapping), or the Maglev
    /// entry `hash mod size`.
    @inline(__always) func slot(for hash: UInt64) -> Int {
        switch kind {
        case .maglev:
            return Int(hash % UInt64(owners.count))
        case .ring:
            var lo = 0, hi = points.count
            while lo < hi {
                let mid = (lo + hi) >> 1
                if points[mid] < hash { lo = mid + 1 } else { hi = mid }
            }
            return lo == points.count ? 0 : lo
        }
    }

    /// The endpoint position for `hash` (no endpoint skipped).
    @inline(__always) func owner(for hash: UInt64) -> Int { Int(owners[slot(for: hash)]) }

    /// The string each endpoint is placed by: its address, the same in every sidecar.
    static func endpointKey(_ address: String) -> String { address }
}
