import CMeshShims
#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 or IPv6 socket address, parsed from `HOST:PORT` (`[v6]:PORT` for IPv6). Host names are
/// not resolved here: the data path only ever sees addresses.
public struct SocketAddress: Sendable, Equatable, CustomStringConvertible {
    public var storage = sockaddr_storage()
    public var length: socklen_t = 0
    public let text: String

    public init?(host: String, port: Int) {
        guard port >= 0 && port <= 65535 else { return nil }
        var h = host
        if h.hasPrefix("[") && h.hasSuffix("]") { h = String(h.dropFirst().dropLast()) }
        if h == "localhost" { h = "127.0.0.1" }
        var v4 = sockaddr_in()
        if inet_pton(AF_INET, h, &v4.sin_addr) == 1 {
            v4.sin_family = sa_family_t(AF_INET)
            v4.sin_port = in_port_t(UInt16(port).bigEndian)
            withUnsafeMutableBytes(of: &storage) { dst in
                withUnsafeBytes(of: v4) { dst.copyMemory(from: $0) }
            }
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
            text = "\(h):\(port)"
            return
        }
        var v6 = sockaddr_in6()
        if inet_pton(AF_INET6, h, &v6.sin6_addr) == 1 {
            v6.sin6_family = sa_family_t(AF_INET6)
            v6.sin6_port = in_port_t(UInt16(port).bigEndian)
            withUnsafeMutableBytes(of: &storage) { dst in
                withUnsafeBytes(of: v6) { dst.copyMemory(from: $0) }
            }
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            text = "[\(h)]:\(port)"
            return
        }
        return nil
    }

    /// Parses `HOST:PORT` or `[V6]:PORT`.
    public init?(_ hostPort: String) {
        guard let colon = hostPort.lastIndex(of: ":") else { return nil }
        let host = String(hostPort[..<colon])
        let portText = hostPort[hostPort.index(after: colon)...]
        guard !portText.isEmpty, portText.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }), let port = Int(portText), !host.isEmpty else { return nil }
        // An IPv6 host must be bracketed ("[::1]:80"), or "::1:80" would be ambiguous.
        if host.contains(":") && !(host.hasPrefix("[") && host.hasSuffix("]")) { return nil }
        self.init(host: host, port: port)
    }

    public var family: Int32 { Int32(storage.ss_family) }
    public var port: Int {
        withUnsafeBytes(of: storage) { raw in
            if family == AF_INET { return Int(UInt16(bigEndian: raw.load(as: sockaddr_in.self).sin_port)) }
            return Int(UInt16(bigEndian: raw.load(as: sockaddr_in6.self).sin6_port))
        }
    }
    public var description: String { text }

    public static func == (a: SocketAddress, b: SocketAddress) -> Bool { a.text == b.text }
}

