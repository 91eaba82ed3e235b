// meshctl demo-caller --url: the demo's caller under capture, an app that knows nothing of the mesh.
import MeshControlWire
import MeshCore
import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// An `http://HOST[:PORT][/PATH]` URL as the capture demo's caller takes it (`--url`).
struct DemoURL: Equatable {
    let host: String
    let port: Int
    let path: String

    /// The `host` header a client sends for it (the port only when it is not 80).
    var authority: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return port == 80 ? h : "\(h):\(port)"
    }

    /// Parses `text`; nil unless it is plain `http://` with a host and a port from 1 to 65535.
    init?(_ text: String) {
        guard text.hasPrefix("http://") else { return nil }
        let rest = text.dropFirst(7)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<slash]
        path = slash == rest.endIndex ? "/" : String(rest[slash...])
        var hostPart: Substring
        var portPart: Substring? = nil
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return nil }
            hostPart = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { return nil }
                portPart = after.dropFirst()
            }
        } else if let colon = authority.firstIndex(of: ":") {
            hostPart = authority[..<colon]
            portPart = authority[authority.index(after: colon)...]
        } else {
            hostPart = authority
        }
        guard !hostPart.isEmpty, !hostPart.contains(where: { $0 == " " || $0 == "@" || $0 == "?" || $0 == "#" }),
              !path.contains(where: { $0 == " " || $0 == "\r" || $0 == "\n" }) else { return nil }
        if let p = portPart {
            guard let n = Int(p), n >= 1, n <= 65535, p.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
            port = n
        } else {
            port = 80
        }
        host = String(hostPart)
    }
}

/// The addresses `host` resolves to for a TCP connection to `port`, in the order getaddrinfo gives
/// them (the system resolver, as any app: /etc/hosts, then DNS), or the resolver's error text.
func resolveTCP(_ host: String, port: Int) -> Result<[SocketAddress], DemoResolveError> {
    var hints = addrinfo()
    hints.ai_family = AF_UNSPEC
    hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    var res: UnsafeMutablePointer<addrinfo>? = nil
    let rc = getaddrinfo(host, String(port), &hints, &res)
    guard rc == 0 else { return .failure(DemoResolveError(text: String(cString: gai_strerror(rc)))) }
    defer { freeaddrinfo(res) }
    var out: [SocketAddress] = []
    var p = res
    while let ai = p {
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        var text: String? = nil
        if ai.pointee.ai_family == AF_INET {
            ai.pointee.ai_addr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                var a = sin.pointee.sin_addr
                if inet_ntop(AF_INET, &a, &buf, socklen_t(buf.count)) != nil { text = String(cString: buf) }
            }
        } else if ai.pointee.ai_family == AF_INET6 {
            ai.pointee.ai_addr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin6 in
                var a = sin6.pointee.sin6_addr
                if inet_ntop(AF_INET6, &a, &buf, socklen_t(buf.count)) != nil { text = String(cString: buf) }
            }
        }
        if let t = text, let a = SocketAddress(host: t, port: port), !out.contains(where: { $0.text == a.text }) { out.append(a) }
        p = ai.pointee.ai_next
    }
    return out.isEmpty ? .failure(DemoResolveError(text: "no IPv4 or IPv6 address")) : .success(out)
}

/// Why a name did not resolve (getaddrinfo's message).
struct DemoResolveError: Error, Equatable {
    let text: String
}

/// `meshctl demo-caller --url http://NAME:PORT/ --rate N`: calls the URL N times a second the way
/// an app that knows nothing of the mesh does: it resolves the name itself (getaddrinfo, again
/// for every request) and connects to the address it gets. Under `run --capture` the sidecar's
/// DNS port answers the name with the service's VIP and the kernel sends the connection to the
/// sidecar. What it resolved, and each change of that or of the outcome, goes to stderr.
func demoCallerByName(_ url: DemoURL, rate: Int) -> Never {
    let signals = SignalWaiter()
    let gap = UInt32(1_000_000 / max(rate, 1))
    Threads.spawnDetached {
        var last = ""
        func report(_ state: String) {
            if state != last {
                last = state
                var line = "demo-caller: \(state)\n"
                line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
            }
        }
        while true {
            switch resolveTCP(url.host, port: url.port) {
            case .failure(let e):
                report("cannot resolve \(url.host): \(e.text)")
            case .success(let addrs):
                var outcome = "no answer"
                for a in addrs {
                    if let r = try? ControlClient.request(a, context: nil, method: "GET", path: url.path,
                                                          headers: [("host", url.authority)], timeoutSeconds: 5) {
                        outcome = "status \(r.status)"
                        break
                    }
                }
                report("\(url.host) -> \(addrs.map(\.text).joined(separator: ", ")): \(outcome)")
            }
            usleep(gap)
        }
    }
    _ = signals.wait()
    exit(0)
}
