import MeshConfig
import MeshCore

extension AdminServer {
    /// The security state in `/config_dump`: the inbound mTLS mode in force and the
    /// PeerAuthentications that decide it, and the AuthorizationPolicies that select this
    /// workload with their rules as written (what `meshctl proxy-config authz` shows).
    func securityDump(_ j: inout JSONWriter, _ b: Bootstrap) {
        let w = b.workload
        func selects(_ sel: [(String, String)]?) -> Bool {
            guard let sel, !sel.isEmpty else { return true }
            return sel.allSatisfy { s in w.labels.contains { $0.0 == s.0 && $0.1 == s.1 } }
        }
        func list(_ name: String, _ values: [String]) {
            if values.isEmpty { return }
            j.beginArray(name); for v in values { j.string(nil, v) }; j.endArray()
        }
        func ports(_ name: String, _ values: [Int]) {
            if values.isEmpty { return }
            j.beginArray(name); for v in values { j.number(nil, Int64(v)) }; j.endArray()
        }
        j.beginObject("peer_authentication")
        j.string("mode", snapshot.inboundMode.rawValue)
        j.beginArray("policies")
        for p in b.traffic.peerAuthentications where p.namespace == w.namespace && selects(p.selector) {
            j.beginObject()
            j.string("name", "\(p.namespace)/\(p.name)")
            j.string("scope", p.selector?.isEmpty == false ? "workload" : "namespace")
            j.string("mode", p.mode?.rawValue ?? "UNSET")
            j.endObject()
        }
        j.endArray()
        j.endObject()
        j.beginArray("authorization_policies")
        for p in b.traffic.authorizationPolicies where p.selects(namespace: w.namespace, labels: w.labels) {
            j.beginObject()
            j.string("name", "\(p.namespace)/\(p.name)")
            j.string("action", p.action.rawValue)
            j.beginArray("rules")
            for r in p.rules {
                j.beginObject()
                j.beginArray("from")
                for s in r.from {
                    j.beginObject()
                    list("principals", s.principals); list("not_principals", s.notPrincipals); list("namespaces", s.namespaces)
                    j.endObject()
                }
                j.endArray()
                j.beginArray("to")
                for o in r.to {
                    j.beginObject()
                    list("paths", o.paths); list("not_paths", o.notPaths); list("methods", o.methods); list("not_methods", o.notMethods)
                    ports("ports", o.ports); ports("not_ports", o.notPorts)
                    j.endObject()
                }
                j.endArray()
                j.endObject()
            }
            j.endArray()
            j.endObject()
        }
        j.endArray()
    }
}
