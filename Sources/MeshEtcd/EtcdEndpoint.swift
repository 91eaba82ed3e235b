import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// One etcd client URL's address, `HOST:PORT`: an IPv4 address, a bracketed IPv6 address or a
/// host name (resolved with getaddrinfo at every connect, so a name that moves is followed).
struct EtcdEndpoint: Sendable, Equatable {
    /// The host without brackets.
    let host: String
    let port: Int
    /// As given (the name errors use).
    let text: String
    /// The address when the host is an IP literal.
    let literal: SocketAddress?

    /// Parses `HOST:PORT`; the error says what is wrong with `text`.
    static func parse(_ text: String) -> Result<EtcdEndpoint, EtcdError> {
        func bad(_ why: String) -> Result<EtcdEndpoint, EtcdError> {
            .failure(EtcdError("etcd endpoint \(JSONWriter.quote(text)): \(why)"))
        }
        if text.isEmpty { return bad("empty") }
        if text.contains("://") { return bad("give HOST:PORT without a scheme (plain HTTP is used)") }
        if text.unicodeScalars.contains(where: { $0.value <= 0x20 || $0.value >= 0x7F }) { return bad("spaces, control or non-ASCII characters") }
        guard let colon = text.lastIndex(of: ":") else { return bad("no port (HOST:PORT)") }
        var host = String(text[..<colon])
        let portText = String(text[text.index(after: colon)...])
        guard !portText.isEmpty, portText.utf8.count <= 5, portText.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
              let port = Int(portText), port >= 1, port <= 65535 else { return bad("port must be 1-65535") }
        if host.hasPrefix("[") || host.hasSuffix("]") {
            guard host.hasPrefix("["), host.hasSuffix("]"), host.count > 2 else { return bad("unbalanced brackets") }
            host = String(host.dropFirst().dropLast())
            var a6 = in6_addr()
            guard inet_pton(AF_INET6, host, &a6) == 1 else { return bad("\(host) is not an IPv6 address") }
            return .success(EtcdEndpoint(host: host, port: port, text: text, literal: SocketAddress(host: host, port: port)))
        }
        if host.isEmpty { return bad("no host") }
        if host.contains(":") { return bad("an IPv6 address must be in brackets ([::1]:2379)") }
        var a4 = in_addr()
        if inet_pton(AF_INET, host, &a4) == 1 {
            return .success(EtcdEndpoint(host: host, port: port, text: text, literal: SocketAddress(host: host, port: port)))
        }
        // A DNS name: letters, digits, '-', '_' and '.', labels of 1-63, at most 253 in all.
        let labels = host.split(separator: ".", omittingEmptySubsequences: false)
        guard host.utf8.count <= 253, labels.allSatisfy({ !$0.isEmpty && $0.utf8.count <= 63 }),
              host.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || $0 == 45 || $0 == 46 || $0 == 95 }) else {
            return bad("\(host) is neither an IP address nor a host name")
        }
        return .success(EtcdEndpoint(host: host, port: port, text: text, literal: nil))
    }

    /// The addresses to try, in the resolver's order.
    func resolve() throws(EtcdError) -> [SocketAddress] {
        if let a = literal { return [a] }
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>? = nil
        let rc = getaddrinfo(host, String(port), &hints, &res)
        guard rc == 0 else { throw EtcdError("etcd \(text): cannot resolve \(host): \(String(cString: gai_strerror(rc)))") }
        defer { freeaddrinfo(res) }
        var out: [SocketAddress] = []
        var p = res
        while let ai = p {
            var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
            var t: String? = nil
            if ai.pointee.ai_family == AF_INET {
                ai.pointee.ai_addr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                    var a = sin.pointee.sin_addr
                    if inet_ntop(AF_INET, &a, &buf, socklen_t(buf.count)) != nil { t = String(decoding: buf.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self) }
                }
            } else if ai.pointee.ai_family == AF_INET6 {
                ai.pointee.ai_addr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin6 in
                    var a = sin6.pointee.sin6_addr
                    if inet_ntop(AF_INET6, &a, &buf, socklen_t(buf.count)) != nil { t = String(decoding: buf.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self) }
                }
            }
            if let t, let a = SocketAddress(host: t, port: port), !out.contains(a) { out.append(a) }
            p = ai.pointee.ai_next
        }
        if out.isEmpty { throw EtcdError("etcd \(text): \(host) has no IPv4 or IPv6 address") }
        return out
    }
}
