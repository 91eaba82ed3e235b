import Glibc

/// The caller's IP address, hashed for consistent hash `useSourceIp` (the port left out, so every
/// connection of one caller hashes alike). Read with getpeername only for targets that hash on it.
enum SourceAddressHash {
    static func of(fd: Int32) -> UInt64? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &ss) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) }
        }
        guard rc == 0 else { return nil }
        let family = Int32(ss.ss_family)
        return withUnsafePointer(to: &ss) { p -> UInt64? in
            switch family {
            case AF_INET:
                return p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                    withUnsafeBytes(of: sin.pointee.sin_addr) { LBHash.bytes($0.bindMemory(to: UInt8.self).baseAddress!, 4) }
                }
            case AF_INET6:
                return p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin in
                    withUnsafeBytes(of: sin.pointee.sin6_addr) { raw in
                        let b = raw.bindMemory(to: UInt8.self).baseAddress!
                        // An IPv4-mapped address hashes as the IPv4 address it carries.
                        let mapped = (0..<10).allSatisfy { b[$0] == 0 } && b[10] == 0xff && b[11] == 0xff
                        return mapped ? LBHash.bytes(b + 12, 4) : LBHash.bytes(b, 16)
                    }
                }
            default:
                return nil
            }
        }
    }
}

extension DownstreamConnection {
    var sourceAddressHash: UInt64? { SourceAddressHash.of(fd: fd) }
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
