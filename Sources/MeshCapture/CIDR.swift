#if canImport(Glibc)
import Glibc
#endif

/// An address family of the capture rules: each gets its own ruleset and its own restore binary.
public enum IPFamily: Sendable, CaseIterable {
    case ipv4, ipv6

    public var name: String { self == .ipv4 ? "IPv4" : "IPv6" }
}

/// An IPv4 or IPv6 network in CIDR notation (`10.0.0.0/8`, `fd00::/64`; a bare address is a
/// single host). Host bits below the prefix are refused rather than dropped: `10.1.2.3/8` is
/// more likely a typo than a wish for `10.0.0.0/8`. Rendered as iptables-save prints it.
public struct CIDR: Equatable, Sendable {
    public let family: IPFamily
    /// The network address: 4 or 16 bytes.
    public let bytes: [UInt8]
    public let prefix: Int

    public init(parsing text: String, flag: String) throws(CaptureError) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        let addr = String(parts[0])
        let v6 = addr.contains(":")
        var buf = [UInt8](repeating: 0, count: 16)
        let ok = addr.withCString { s in buf.withUnsafeMutableBytes { inet_pton(v6 ? AF_INET6 : AF_INET, s, $0.baseAddress) } }
        guard !addr.isEmpty, ok == 1 else { throw CaptureError.flag(flag, "\"\(text)\" is not an IPv4 or IPv6 CIDR such as 10.0.0.0/8 or fd00::/8") }
        let width = v6 ? 128 : 32
        var p = width
        if parts.count == 2 {
            let s = String(parts[1])
            guard !s.isEmpty, s.utf8.count <= 3, s.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let n = Int(s), n <= width else {
                throw CaptureError.flag(flag, "\"\(text)\": the prefix length must be 0 to \(width)")
            }
            p = n
        }
        let b = Array(buf.prefix(v6 ? 16 : 4))
        for i in 0..<b.count {
            let keep = max(0, min(8, p - i * 8))
            let mask: UInt8 = keep == 0 ? 0 : UInt8(truncatingIfNeeded: 0xFF << (8 - keep))
            if b[i] & ~mask != 0 {
                throw CaptureError.flag(flag, "\"\(text)\" has bits set past the /\(p) prefix (the network is \(CIDR.render(b.enumerated().map { j, x in j < i ? x : (j == i ? x & mask : 0) }, v6))/\(p))")
            }
        }
        family = v6 ? .ipv6 : .ipv4
        bytes = b
        self.prefix = p
    }

    /// `10.0.0.0/8`, `fd00::/64` (inet_ntop's text, as iptables-save shows it).
    public var text: String { "\(CIDR.render(bytes, family == .ipv6))/\(prefix)" }

    static func render(_ b: [UInt8], _ v6: Bool) -> String {
        var src = b
        var out = [CChar](repeating: 0, count: 64)
        _ = src.withUnsafeMutableBytes { s in inet_ntop(v6 ? AF_INET6 : AF_INET, s.baseAddress, &out, 64) }
        return String(decoding: out.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
