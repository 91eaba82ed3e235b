import MeshConfig
import MeshCore
import MeshIO

/// Where a captured outbound connection goes, by its original destination (DESIGN §10): a mesh
/// service's VIP and service port is routed like a named call — an HTTP service through the
/// HTTP router (its virtual host, whatever Host the request carries), a TCP service through its
/// TCP routes — and anything else follows the outbound traffic policy. Built once per snapshot;
/// the data path does one dictionary lookup per captured connection.
struct CaptureTable: Sendable {
    /// What a VIP and port lead to.
    enum Entry: Sendable, Equatable {
        /// An HTTP service: `vhosts[vhost]` when the request's Host names no other.
        case http(vhost: Int)
        /// A TCP service: `tcpServices[service]`, its routes tried by port.
        case tcp(service: Int)
        /// A service whose protocol is not declared: HTTP (`vhost`) or TCP (`service`), told
        /// from the connection's first bytes (`ProtocolDetector`).
        case detect(vhost: Int, service: Int)

        /// The virtual host of an entry that can carry HTTP.
        var httpVHost: Int? {
            switch self {
            case .http(let v), .detect(let v, _): return v
            case .tcp: return nil
            }
        }
    }

    private var byDestination: [IPEndpoint: Entry] = [:]
    /// The sidecar's own ports (outbound, inbound, admin, DNS): a captured connection whose
    /// original destination is one of them on a local address would loop through this sidecar.
    let ownPorts: [UInt16]
    /// The addresses those ports are bound to besides loopback (the inbound listen address).
    let ownAddresses: [IPEndpoint]
    let policy: Bootstrap.OutboundTrafficPolicy

    /// The table of a bootstrap, given the compiled host tables. Clusters without VIPs are not
    /// reachable by capture.
    init(_ b: Bootstrap, hosts: HostTable, tcpHosts: HostTable, ownPorts: [Int]) {
        policy = b.outboundTrafficPolicy
        self.ownPorts = ownPorts.filter { $0 > 0 && $0 < 65536 }.map { UInt16($0) }
        var own: [IPEndpoint] = []
        for l in [b.inbound, b.outbound].compactMap({ $0 }) {
            if let e = IPEndpoint(l.address), !e.isUnspecified { own.append(e.with(port: 0)) }
        }
        ownAddresses = own
        appPort = UInt16(truncatingIfNeeded: b.inbound?.appAddress?.port ?? 0)
        for c in b.clusters {
            guard !c.addresses.isEmpty else { continue }
            // A service whose port meshd does not know yet (no workload registered it) is
            // reached on any port of its VIP: the VIP is its own.
            let port = c.port ?? 0
            let name = Array(c.name.lowercased().utf8)
            let v = name.withUnsafeBufferPointer { hosts.lookup($0.baseAddress!, $0.count) }
            let sv = name.withUnsafeBufferPointer { tcpHosts.lookup($0.baseAddress!, $0.count) }
            let entry: Entry
            switch c.serviceProtocol {
            case .tcp:
                guard sv >= 0 else { continue }
                entry = .tcp(service: sv)
            case .auto:
                guard v >= 0, sv >= 0 else { continue }
                entry = .detect(vhost: v, service: sv)
            case .http, .http2, .grpc:
                guard v >= 0 else { continue }
                entry = .http(vhost: v)
            }
            for a in c.addresses {
                guard let sa = SocketAddress(host: a, port: port), let e = IPEndpoint(sa) else { continue }
                byDestination[e] = entry
            }
        }
    }

    /// The local app's port (0: no app): a captured inbound connection to another port is
    /// passed through to that port.
    let appPort: UInt16

    /// For a connection accepted on the inbound listener: the port of this host it was going to
    /// when capture redirected it there, if that is not the app's port (nil: it came to the
    /// listener itself, or to the app's port, and is served as the app's).
    func inboundPassthroughPort(_ fd: Int32) -> Int? {
        guard appPort > 0, let original = Socket.originalDestination(fd), original.port != appPort,
              let local = Socket.localEndpoint(fd), original != local else { return nil }
        return Int(original.port)
    }

    /// The entry for an original destination, or nil: outside the mesh.
    @inline(__always) func lookup(_ e: IPEndpoint) -> Entry? { byDestination[e] ?? byDestination[e.with(port: 0)] }

    /// Whether a destination is this sidecar itself (one of its ports, on loopback or one of its
    /// own addresses): carrying it would bring the connection straight back here.
    func isLoop(_ e: IPEndpoint) -> Bool {
        guard ownPorts.contains(e.port) else { return false }
        if e.isLoopback || e.isUnspecified { return true }
        let a = e.with(port: 0)
        return ownAddresses.contains(a)
    }

    var count: Int { byDestination.count }
}
