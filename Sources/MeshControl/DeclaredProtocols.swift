import MeshConfig

/// What the documents in force say a mesh service speaks before (or whatever) its workloads
/// register: a VirtualService `tcp` route to it makes it TCP, an `http` route (or mirror) to it
/// makes it HTTP. meshd renders a not-yet-registered service's cluster with that protocol (so a
/// `tcp` route can be applied first) and refuses, by name, a registration that disagrees.
struct DeclaredProtocol: Equatable {
    /// The service speaks opaque TCP (else HTTP).
    var tcp: Bool
    /// The document that says so, as `VirtualService NAMESPACE/NAME`.
    var by: String

    /// `service.namespace` of a destination host as written in a document of `namespace`
    /// (`cache`, `cache.default` and `cache.default.svc.cluster.local` are the same service).
    static func serviceKey(_ host: String, _ namespace: String) -> String {
        let parts = host.split(separator: ".")
        return parts.count >= 2 ? "\(parts[0]).\(parts[1])" : "\(host).\(namespace)"
    }

    /// Per `service.namespace`, the first VirtualService (in the order applied) that routes to
    /// it. When two disagree, the sidecar's own check refuses the set (an http route to a TCP
    /// service, or the reverse), so the first one is enough here.
    static func all(in cfg: IstioTraffic.Config) -> [String: DeclaredProtocol] {
        var out: [String: DeclaredProtocol] = [:]
        for vs in cfg.virtualServices {
            let by = "VirtualService \(vs.namespace)/\(vs.name)"
            for r in vs.tcp {
                for d in r.route where out[serviceKey(d.destination.host, vs.namespace)] == nil {
                    out[serviceKey(d.destination.host, vs.namespace)] = DeclaredProtocol(tcp: true, by: by)
                }
            }
            for r in vs.http {
                var hosts = r.route.map(\.destination.host)
                if let m = r.mirror { hosts.append(m.host) }
                for h in hosts where out[serviceKey(h, vs.namespace)] == nil {
                    out[serviceKey(h, vs.namespace)] = DeclaredProtocol(tcp: false, by: by)
                }
            }
        }
        return out
    }
}
