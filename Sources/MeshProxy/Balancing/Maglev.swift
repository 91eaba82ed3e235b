/// Google's Maglev hashing (Eisenbud et al., NSDI 2016), as Envoy's MAGLEV balancer builds it:
/// a lookup table of prime size M in which every endpoint takes turns claiming its next free
/// preferred entry (its permutation: `offset + j * skip mod M`, both from its address), so each
/// endpoint owns about M/N entries and a change of endpoints moves few of them.
enum Maglev {
    static func build(keys: [String], tableSize m: Int) -> ConsistentHashTable {
        let n = keys.count
        precondition(n > 0 && m > 1)
        var offset = [Int](repeating: 0, count: n)
        var skip = [Int](repeating: 0, count: n)
        for (i, k) in keys.enumerated() {
            offset[i] = Int(LBHash.string("\(k)#offset") % UInt64(m))
            skip[i] = Int(LBHash.string("\(k)#skip") % UInt64(m - 1)) + 1
        }
        var next = [Int](repeating: 0, count: n)
        var table = [Int32](repeating: -1, count: m)
        var filled = 0
        while true {
            for i in 0..<n {
                var c = (offset[i] + next[i] * skip[i]) % m
                while table[c] >= 0 {
                    next[i] += 1
                    c = (offset[i] + next[i] * skip[i]) % m
                }
                table[c] = Int32(i)
                next[i] += 1
                filled += 1
                if filled == m { return ConsistentHashTable(kind: .maglev, points: [], owners: table) }
            }
        }
    }
}
