import MeshCore
import MeshIO

/// The caller's IP address, hashed for consistent hash `useSourceIp` (the port left out, so every
/// connection of one caller hashes alike). HTTP requests hash the connection's `callerAddress`,
/// read with getpeername once per connection (not per request); a TCP connection reads it once.
enum SourceAddressHash {
    /// An IPv4 address (IPv4-mapped in `IPEndpoint`) hashes as its 4 bytes, IPv6 as its 16.
    @inline(__always) static func of(_ a: IPEndpoint) -> UInt64 {
        var raw = (a.high.bigEndian, a.low.bigEndian)
        return withUnsafeBytes(of: &raw) { r in
            let b = r.bindMemory(to: UInt8.self).baseAddress!
            return a.isIPv4 ? LBHash.bytes(b + 12, 4) : LBHash.bytes(b, 16)
        }
    }

    static func of(fd: Int32) -> UInt64? { Socket.peerEndpoint(fd).map(of) }
}

extension DownstreamConnection {
    var sourceAddressHash: UInt64? { callerAddress.map(SourceAddressHash.of) }
}

extension H2ServerStream {
    var sourceAddressHash: UInt64? { handler.conn.sourceAddressHash }
}

extension TCPProxySession {
    /// A TCP connection's consistent-hash key: the caller's address for `useSourceIp`; the HTTP
    /// keys do not apply to bytes, so such a target is entered at random (nil), as Envoy does.
    static func sourceHash(_ s: ProxySnapshot, _ target: Int, _ fd: Int32) -> UInt64? {
        guard case .sourceIP? = s.targets[target].balancing?.hashKey else { return nil }
        return SourceAddressHash.of(fd: fd)
    }
}
