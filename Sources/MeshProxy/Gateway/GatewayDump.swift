import MeshConfig
import MeshCore

extension AdminServer {
    /// A gateway's servers in `/config_dump` (what `meshctl proxy-config listeners` shows): each
    /// Gateway server it serves, with its port, protocol, hosts, TLS mode and credential, and
    /// whether the port serves now or why it refuses connections (a secret not delivered).
    func gatewayDump(_ j: inout JSONWriter, _ b: Bootstrap) {
        guard b.gatewayMode else { return }
        let table = snapshot.gateway
        j.beginArray("gateway_servers")
        for g in b.traffic.gateways {
            for s in g.servers {
                j.beginObject()
                j.string("gateway", "\(g.namespace)/\(g.name)")
                j.number("port", Int64(s.port))
                j.string("protocol", s.proto.rawValue)
                j.beginArray("hosts")
                for h in s.hosts {
                    switch h.namespace {
                    case .any: j.string(nil, "*/\(h.dnsName)")
                    case .own: j.string(nil, "./\(h.dnsName)")
                    case .named(let ns): j.string(nil, "\(ns)/\(h.dnsName)")
                    }
                }
                j.endArray()
                if let t = s.tls {
                    if let m = t.mode { j.string("tls_mode", m.rawValue) }
                    if let c = t.credentialName { j.string("credential_name", c) }
                    if t.httpsRedirect { j.bool("https_redirect", true) }
                }
                if let p = table?.ports.first(where: { $0.port == s.port }) {
                    j.string("state", p.credential.isEmpty ? "serving" : "refusing: " + p.credential)
                } else {
                    j.string("state", "not open")
                }
                j.endObject()
            }
        }
        j.endArray()
    }
}
