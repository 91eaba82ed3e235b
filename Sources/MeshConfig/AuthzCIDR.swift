#if canImport(Glibc)
import Glibc
#endif
import MeshCore

/// An address block of AuthorizationPolicy `ipBlocks`/`notIpBlocks`, `remoteIpBlocks`/
/// `notRemoteIpBlocks` and the `source.ip`/`remote.ip` conditions: `A.B.C.D`, `A.B.C.D/N`,
/// an IPv6 address or block. Kept as IPEndpoint's 128-bit form (IPv4 as `::ffff:A.B.C.D`).
public struct AuthzCIDR: Sendable, Equatable {
    public let high: UInt64
    public let low: UInt64
    /// Prefix length over the 128 bits.
    public let bits: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        let host = String(parts[0])
        var v4 = in_addr(), v6 = in6_addr()
        var hi: UInt64 = 0, lo: UInt64 = 0, maxBits = 128, offset = 0
        if inet_pton(AF_INET, host, &v4) == 1 {
            lo = 0x0000_FFFF_0000_0000 | UInt64(UInt32(bigEndian: v4.s_addr))
            maxBits = 32; offset = 96
        } else if inet_pton(AF_INET6, host, &v6) == 1 {
            withUnsafeBytes(of: v6) { b in
                for i in 0..<8 { hi = hi << 8 | UInt64(b[i]) }
                for i in 8..<16 { lo = lo << 8 | UInt64(b[i]) }
            }
        } else { return nil }
        var n = maxBits
        if parts.count == 2 {
            guard let v = Int(parts[1]), v >= 0, v <= maxBits, !parts[1].hasPrefix("+") else { return nil }
            n = v
        }
        bits = offset + n
        // Host bits are cleared (Istio accepts 10.1.2.3/8 as 10.0.0.0/8).
        let (mh, ml) = AuthzCIDR.mask(bits)
        high = hi & mh
        low = lo & ml
    }

    static func mask(_ bits: Int) -> (UInt64, UInt64) {
        let h: UInt64 = bits >= 64 ? ~0 : (bits == 0 ? 0 : ~0 << UInt64(64 - bits))
        let l: UInt64 = bits <= 64 ? 0 : (bits >= 128 ? ~0 : ~0 << UInt64(128 - bits))
        return (h, l)
    }

    public func contains(_ e: IPEndpoint) -> Bool {
        let (mh, ml) = AuthzCIDR.mask(bits)
        return e.high & mh == high && e.low & ml == low
    }
}
