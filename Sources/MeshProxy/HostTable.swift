import MeshHTTP

/// Case-insensitive lookup of a request's host (without port) among the routed host names, over
/// raw bytes so the request path never builds a String. Open addressing on an FNV-1a hash; built
/// once per config snapshot.
public struct HostTable: Sendable {
    private var keys: [[UInt8]] = []
    private var values: [Int] = []
    private var slots: [Int32]       // index into keys, -1 empty
    private let mask: Int

    public init(_ entries: [(String, Int)]) {
        var cap = 16
        while cap < entries.count * 2 { cap *= 2 }
        slots = Array(repeating: -1, count: cap)
        mask = cap - 1
        for (k, v) in entries {
            let bytes = Array(k.lowercased().utf8)
            if lookupBytes(bytes) >= 0 { continue }
            let idx = Int32(keys.count)
            keys.append(bytes)
            values.append(v)
            var h = HostTable.hash(bytes.withUnsafeBufferPointer { $0.baseAddress! }, bytes.count) & mask
            while slots[h] >= 0 { h = (h + 1) & mask }
            slots[h] = idx
        }
    }

    @inline(__always) static func hash(_ p: UnsafePointer<UInt8>, _ n: Int) -> Int {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for i in 0..<n { h = (h ^ UInt64(ASCII.lower(p[i]))) &* 0x100_0000_01b3 }
        return Int(truncatingIfNeeded: h >> 1)
    }

    private func lookupBytes(_ b: [UInt8]) -> Int {
        b.withUnsafeBufferPointer { lookup($0.baseAddress ?? UnsafePointer(bitPattern: 1)!, b.count) }
    }

    /// The value for `p[0..<n]` (any case), or -1.
    public func lookup(_ p: UnsafePointer<UInt8>, _ n: Int) -> Int {
        if keys.isEmpty || n == 0 { return -1 }
        var h = HostTable.hash(p, n) & mask
        while true {
            let s = slots[h]
            if s < 0 { return -1 }
            let k = keys[Int(s)]
            if k.count == n {
                let eq = k.withUnsafeBufferPointer { kp -> Bool in
                    for i in 0..<n where kp[i] != ASCII.lower(p[i]) { return false }
                    return true
                }
                if eq { return values[Int(s)] }
            }
            h = (h + 1) & mask
        }
    }

    /// Splits `host[:port]` (or `[v6]:port`) and returns the length of the host part.
    @inline(__always) public static func hostLength(_ p: UnsafePointer<UInt8>, _ n: Int) -> Int {
        if n > 0 && p[0] == 91 { // '['
            var i = 0
            while i < n && p[i] != 93 { i += 1 }
            return min(i + 1, n)
        }
        var i = n - 1
        while i >= 0 {
            let c = p[i]
            if c == 58 { return i }
            if c < 48 || c > 57 { return n }
            i -= 1
        }
        return n
    }
}
