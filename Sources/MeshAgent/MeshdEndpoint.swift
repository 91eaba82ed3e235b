import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// One entry of `sidecar --meshd HOST:PORT[,HOST:PORT...]`: an IPv4 or IPv6 (`[v6]:port`)
/// literal, or a DNS name resolved before the first certificate request (in Kubernetes,
/// `meshd.mesh-system.svc:15012`).
public enum MeshdEndpoint: Sendable, Equatable, CustomStringConvertible {
    case address(SocketAddress)
    case name(String, port: Int)

    public var description: String {
        switch self {
        case .address(let a): return a.text
        case .name(let n, let p): return "\(n):\(p)"
        }
    }

    /// Parses one `HOST:PORT`; the error says what is wrong with it (the caller names the flag).
    public static func parse(_ s: String) throws(FlagError) -> MeshdEndpoint {
        guard let colon = s.lastIndex(of: ":") else { throw FlagError("expected HOST:PORT, got \"\(s)\"") }
        let host = String(s[..<colon])
        let portText = s[s.index(after: colon)...]
        guard !portText.isEmpty, portText.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }), portText.utf8.count <= 5,
              let port = Int(portText), port >= 1, port <= 65535 else {
            throw FlagError("expected a port from 1 to 65535 after the last ':' in \"\(s)\"")
        }
        guard !host.isEmpty else { throw FlagError("no host before the port in \"\(s)\"") }
        if host.hasPrefix("[") || host.contains(":") {
            // IPv6 only in brackets ("::1:80" would be ambiguous).
            guard host.hasPrefix("["), host.hasSuffix("]"), isIPLiteral(String(host.dropFirst().dropLast())),
                  let a = SocketAddress(host: host, port: port) else {
                throw FlagError("expected an IPv6 address in brackets such as [fd00::2]:15012, got \"\(s)\"")
            }
            return .address(a)
        }
        if isIPLiteral(host) {
            guard let a = SocketAddress(host: host, port: port) else { throw FlagError("expected HOST:PORT, got \"\(s)\"") }
            return .address(a)
        }
        guard isHostName(host) else {
            throw FlagError("\"\(host)\" is neither an IP address nor a DNS name (letters, digits, '-' and '.'; labels of 1 to 63 characters not starting or ending with '-'; 253 characters in all)")
        }
        return .name(host, port: port)
    }

    /// A DNS name as `--meshd` takes it: labels of letters, digits and '-' (1 to 63 characters,
    /// not starting or ending with '-') joined by '.', at most 253 characters, one trailing dot
    /// allowed (a fully qualified name); the last label not all digits (that is a broken IP
    /// address, not a name).
    public static func isHostName(_ s: String) -> Bool {
        var name = Substring(s)
        if name.hasSuffix(".") { name = name.dropLast() }
        guard !name.isEmpty, name.utf8.count <= 253 else { return false }
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        for l in labels {
            guard !l.isEmpty, l.utf8.count <= 63, l.first != "-", l.last != "-" else { return false }
            guard l.utf8.allSatisfy({ ($0 >= 97 && $0 <= 122) || ($0 >= 65 && $0 <= 90) || ($0 >= 48 && $0 <= 57) || $0 == 45 }) else { return false }
        }
        return !labels.last!.utf8.allSatisfy { $0 >= 48 && $0 <= 57 }
    }

    /// An IPv4 or IPv6 address literal (no brackets, no name).
    static func isIPLiteral(_ s: String) -> Bool {
        var v4 = in_addr(), v6 = in6_addr()
        return inet_pton(AF_INET, s, &v4) == 1 || inet_pton(AF_INET6, s, &v6) == 1
    }
}

/// Turns `--meshd` endpoints into addresses with getaddrinfo (blocking: call it off any event
/// loop). Every address of every name is kept, in the order given; an address met twice is
/// kept once.
public enum MeshdResolver {
    /// The addresses of every endpoint that resolved, and one line per name that did not.
    public static func resolve(_ endpoints: [MeshdEndpoint]) -> (addresses: [SocketAddress], failures: [String]) {
        var out: [SocketAddress] = []
        var failures: [String] = []
        func add(_ a: SocketAddress) { if !out.contains(a) { out.append(a) } }
        for e in endpoints {
            switch e {
            case .address(let a): add(a)
            case .name(let n, let p):
                switch lookup(n, port: p) {
                case .success(let list): list.forEach(add)
                case .failure(let why): failures.append("\(n): \(why.description)")
                }
            }
        }
        return (out, failures)
    }

    /// The TCP addresses of `name` (IPv4 and IPv6, as getaddrinfo orders them) with `port`.
    public static func lookup(_ name: String, port: Int) -> Result<[SocketAddress], FlagError> {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>? = nil
        let rc = getaddrinfo(name, nil, &hints, &res)
        guard rc == 0 else { return .failure(FlagError(String(cString: gai_strerror(rc)))) }
        defer { freeaddrinfo(res) }
        var list: [SocketAddress] = []
        var p = res
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        while let ai = p {
            p = ai.pointee.ai_next
            guard let sa = ai.pointee.ai_addr else { continue }
            var text: String? = nil
            if ai.pointee.ai_family == AF_INET {
                var a = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr }
                if inet_ntop(AF_INET, &a, &buf, socklen_t(buf.count)) != nil { text = buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) } }
            } else if ai.pointee.ai_family == AF_INET6 {
                var a = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_addr }
                if inet_ntop(AF_INET6, &a, &buf, socklen_t(buf.count)) != nil { text = buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) } }
            }
            if let t = text, let s = SocketAddress(host: t, port: port), !list.contains(s) { list.append(s) }
        }
        return list.isEmpty ? .failure(FlagError("no IPv4 or IPv6 address")) : .success(list)
    }
}
