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
        func blocks(_ name: String, _ values: [AuthzCIDR]) { list(name, values.map(\.text)) }
        j.beginObject("peer_authentication")
        j.string("mode", snapshot.inboundMode.rawValue)
        // Other captured ports with no port_modes entry of their own take this, never `mode`'s override.
        j.string("workload_mode", snapshot.workloadMode.rawValue)
        if !snapshot.inboundPortModes.isEmpty {
            j.beginObject("port_modes")
            for pm in snapshot.inboundPortModes { j.string(String(pm.port), pm.mode.rawValue) }
            j.endObject()
        }
        j.beginArray("policies")
        for p in b.traffic.peerAuthentications where p.namespace == w.namespace && selects(p.selector) {
            j.beginObject()
            j.string("name", "\(p.namespace)/\(p.name)")
            j.string("scope", p.selector?.isEmpty == false ? "workload" : "namespace")
            j.string("mode", p.mode?.rawValue ?? "UNSET")
            if !p.portLevelMtls.isEmpty {
                j.beginObject("port_level_mtls")
                for pm in p.portLevelMtls { j.string(String(pm.port), pm.mode?.rawValue ?? "UNSET") }
                j.endObject()
            }
            j.endObject()
        }
        j.endArray()
        j.endObject()
        j.beginArray("request_authentications")
        for ra in b.traffic.requestAuthentications where ra.selects(namespace: w.namespace, labels: w.labels) {
            j.beginObject()
            j.string("name", "\(ra.namespace)/\(ra.name)")
            j.beginArray("jwt_rules")
            for r in ra.jwtRules {
                j.beginObject()
                j.string("issuer", r.issuer)
                list("audiences", r.audiences)
                if let u = r.jwksUri { j.string("jwks_uri", u) }
                if let k = r.jwks { j.number("inline_keys", Int64(k.keys.count)) }
                list("from_headers", r.fromHeaders.map { $0.prefix.isEmpty ? $0.name : "\($0.name): \($0.prefix)" })
                list("from_params", r.fromParams)
                if let h = r.outputPayloadToHeader { j.string("output_payload_to_header", h) }
                j.bool("forward_original_token", r.forwardOriginalToken)
                j.endObject()
            }
            j.endArray()
            j.endObject()
        }
        j.endArray()
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
                    list("not_namespaces", s.notNamespaces)
                    list("request_principals", s.requestPrincipals); list("not_request_principals", s.notRequestPrincipals)
                    blocks("ip_blocks", s.ipBlocks); blocks("not_ip_blocks", s.notIpBlocks)
                    blocks("remote_ip_blocks", s.remoteIpBlocks); blocks("not_remote_ip_blocks", s.notRemoteIpBlocks)
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
                if !r.when.isEmpty {
                    j.beginArray("when")
                    for c in r.when {
                        j.beginObject()
                        j.string("key", c.key.text)
                        list("values", c.values + c.blocks.map(\.text)); list("not_values", c.notValues + c.notBlocks.map(\.text))
                        j.endObject()
                    }
                    j.endArray()
                }
                j.endObject()
            }
            j.endArray()
            j.endObject()
        }
        j.endArray()
    }
}

extension AuthorizationPolicy.ConditionKey {
    /// The key as Istio writes it (`request.auth.claims[groups]`, `request.headers[x-id]`).
    var text: String {
        switch self {
        case .claim(let path): return "request.auth.claims" + path.map { "[\($0)]" }.joined()
        case .requestPrincipal: return "request.auth.principal"
        case .audiences: return "request.auth.audiences"
        case .presenter: return "request.auth.presenter"
        case .header(let h): return "request.headers[\(h)]"
        case .sourcePrincipal: return "source.principal"
        case .sourceNamespace: return "source.namespace"
        case .destinationPort: return "destination.port"
        case .sourceIP: return "source.ip"
        }
    }
}

extension AuthzCIDR {
    /// `A.B.C.D/N` for an IPv4 block, `X:Y::/N` for an IPv6 one (for /config_dump).
    var text: String {
        if high == 0 && low >> 32 == 0xFFFF && bits >= 96 {
            let a = UInt32(truncatingIfNeeded: low)
            return "\(a >> 24).\(a >> 16 & 255).\(a >> 8 & 255).\(a & 255)/\(bits - 96)"
        }
        var groups: [String] = []
        for i in 0..<8 {
            let word = i < 4 ? high >> UInt64(48 - 16 * i) : low >> UInt64(48 - 16 * (i - 4))
            groups.append(String(word & 0xFFFF, radix: 16))
        }
        return groups.joined(separator: ":") + "/\(bits)"
    }
}
