#if canImport(Glibc)
import Glibc
#endif

/// An IP address and port as two words and a port, made from a `sockaddr_storage` without any
/// allocation or formatting: the key the capture table looks an original destination up by
/// (a VIP and port, or one of the sidecar's own listeners for the loop guard). IPv4 addresses are
/// kept IPv4-mapped (`::ffff:a.b.c.d`), so one key space holds both families and an IPv4 peer
/// seen on an IPv6 socket matches its IPv4 form.
public struct IPEndpoint: Hashable, Sendable {
    /// The address's first and last 8 bytes, in network order read as big-endian integers.
    public var high: UInt64
    public var low: UInt64
    public var port: UInt16

    public init(high: UInt64, low: UInt64, port: UInt16) { self.high = high; self.low = low; self.port = port }

    /// An IPv4 address given as its 32-bit value (host order: 240.240.0.1 is 0xF0F0_0001).
    public init(ipv4: UInt32, port: UInt16) {
        high = 0
        low = 0x0000_FFFF_0000_0000 | UInt64(ipv4)
        self.port = port
    }

    /// The endpoint of a socket address (nil for a family other than IPv4/IPv6).
    public init?(storage: sockaddr_storage) {
        var ss = storage
        switch Int32(ss.ss_family) {
        case AF_INET:
            let a = withUnsafeBytes(of: &ss) { $0.load(as: sockaddr_in.self) }
            self.init(ipv4: UInt32(bigEndian: a.sin_addr.s_addr), port: UInt16(bigEndian: a.sin_port))
        case AF_INET6:
            let a = withUnsafeBytes(of: &ss) { $0.load(as: sockaddr_in6.self) }
            var hi: UInt64 = 0, lo: UInt64 = 0
            withUnsafeBytes(of: a.sin6_addr) { b in
                for i in 0..<8 { hi = hi << 8 | UInt64(b[i]) }
                for i in 8..<16 { lo = lo << 8 | UInt64(b[i]) }
            }
            self.init(high: hi, low: lo, port: UInt16(bigEndian: a.sin6_port))
        default:
            return nil
        }
    }

    /// The endpoint of a parsed address.
    public init?(_ address: SocketAddress) { self.init(storage: address.storage) }

    /// The same address with another port (a VIP's service port, a listener's port).
    public func with(port p: UInt16) -> IPEndpoint { IPEndpoint(high: high, low: low, port: p) }

    /// True for an IPv4 (or IPv4-mapped) address.
    public var isIPv4: Bool { high == 0 && low >> 32 == 0x0000_FFFF }

    /// True for a loopback address (127.0.0.0/8 or ::1).
    public var isLoopback: Bool {
        (isIPv4 && UInt32(truncatingIfNeeded: low) >> 24 == 127) || (high == 0 && low == 1)
    }

    /// True for an unspecified address (0.0.0.0 or ::), a listener bound to every address.
    public var isUnspecified: Bool { (high == 0 && low == 0) || (isIPv4 && UInt32(truncatingIfNeeded: low) == 0) }

    /// The socket address to connect to (IPv4 as `sockaddr_in`). Formats the text form: for the
    /// rare paths (passthrough to a destination outside the mesh, logs), never a mesh call's.
    public var socketAddress: SocketAddress {
        if isIPv4 {
            let v = UInt32(truncatingIfNeeded: low)
            let host = "\(v >> 24).\(v >> 16 & 255).\(v >> 8 & 255).\(v & 255)"
            return SocketAddress(host: host, port: Int(port))!
        }
        var a = in6_addr()
        withUnsafeMutableBytes(of: &a) { b in
            for i in 0..<8 { b[i] = UInt8(truncatingIfNeeded: high >> UInt64(56 - 8 * i)) }
            for i in 0..<8 { b[8 + i] = UInt8(truncatingIfNeeded: low >> UInt64(56 - 8 * i)) }
        }
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        _ = inet_ntop(AF_INET6, &a, &buf, socklen_t(buf.count))
        let host = buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        return SocketAddress(host: host, port: Int(port))!
    }
}
