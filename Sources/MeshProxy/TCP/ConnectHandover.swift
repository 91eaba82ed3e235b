import MeshCore

/// What an HTTP/1.1 `CONNECT host:port` on the outbound listener gets (docs/tcp.md): a TCP
/// relay when host names a TCP service (or ServiceEntry) with a tcp route for that port; 404
/// (NR) for a host the mesh does not know or a port no tcp route takes; 405 for an HTTP
/// service (send it HTTP requests instead); 400 for a target that is not `host:port`.
enum ConnectHandover {
    enum Decision {
        case relay(TCPTarget)
        case refuse(status: Int, body: StaticString, flag: ResponseFlag)
    }

    static func resolve(_ s: ProxySnapshot, _ p: UnsafePointer<UInt8>, _ n: Int) -> Decision {
        // authority-form: host ":" port (an IPv6 literal in brackets keeps its colons).
        var colon = -1
        var i = n - 1
        while i >= 0 { if p[i] == 58 { colon = i; break }; if p[i] == 93 { break }; i -= 1 }
        guard colon > 0, colon < n - 1, n - colon - 1 <= 5 else {
            return .refuse(status: 400, body: "CONNECT needs a host:port target", flag: .downstreamProtocolError)
        }
        var port = 0
        for k in (colon + 1)..<n {
            let c = p[k]
            guard c >= 48 && c <= 57 else { return .refuse(status: 400, body: "CONNECT needs a host:port target", flag: .downstreamProtocolError) }
            port = port * 10 + Int(c - 48)
        }
        guard port >= 1 && port <= 65535 else { return .refuse(status: 400, body: "CONNECT needs a host:port target", flag: .downstreamProtocolError) }
        let sv = s.tcpHosts.lookup(p, colon)
        if sv >= 0 {
            for r in s.tcpServices[sv] where s.tcpRoutes[r].matches(port: port) { return .relay(.route(r)) }
            return .refuse(status: 404, body: "no tcp route of this service takes this port", flag: .noRoute)
        }
        if s.hosts.lookup(p, colon) >= 0 {
            return .refuse(status: 405, body: "an HTTP service: send it HTTP requests (CONNECT carries TCP services only)", flag: .none)
        }
        return .refuse(status: 404, body: "no TCP service of the mesh has this host", flag: .noRoute)
    }
}
