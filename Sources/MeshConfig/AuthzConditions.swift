import MeshCore

/// AuthorizationPolicy `rules[].when[]` (Istio's conditions): a key naming a request attribute,
/// and `values` (one must match) and/or `notValues` (none may match). Values are exact,
/// `prefix*`, `*suffix` or `*` (presence), except `destination.port` (a port number).
/// A condition on an absent attribute fails `values` and passes `notValues` (Envoy RBAC).
extension AuthorizationPolicy {
    /// The attribute a condition reads.
    public enum ConditionKey: Sendable, Equatable {
        /// `request.auth.claims[a][b]...`: the path into the verified JWT's claims.
        case claim([String])
        /// `request.auth.principal`: `iss/sub` of the verified JWT.
        case requestPrincipal
        /// `request.auth.audiences`: its `aud`.
        case audiences
        /// `request.auth.presenter`: its `azp`.
        case presenter
        /// `request.headers[name]` (lowercase name).
        case header(String)
        /// `source.principal`: the caller's SPIFFE ID without `spiffe://`.
        case sourcePrincipal
        /// `source.namespace`: the namespace in the caller's SPIFFE ID.
        case sourceNamespace
        /// `destination.port`: the workload's service port.
        case destinationPort
        /// `source.ip` and `remote.ip` (the same address here: no trusted proxies in front).
        case sourceIP

        /// Keys that only an HTTP request has (a TCP connection is judged as Istio does).
        public var needsHTTP: Bool {
            switch self {
            case .claim, .requestPrincipal, .audiences, .presenter, .header: return true
            case .sourcePrincipal, .sourceNamespace, .destinationPort, .sourceIP: return false
            }
        }
    }

    /// One `when` entry: the attribute, and the values it must (and must not) have.
    public struct Condition: Sendable {
        public var key: ConditionKey
        public var values: [String] = []
        public var notValues: [String] = []
        /// `source.ip` / `remote.ip`: the values as address blocks.
        public var blocks: [AuthzCIDR] = []
        public var notBlocks: [AuthzCIDR] = []
    }

    /// Istio keys this mesh does not evaluate yet: refused by name.
    static let conditionKeysNotYet = ["destination.ip", "connection.sni"]

    static func parseConditionKey(_ key: String) -> ConditionKey? {
        switch key {
        case "request.auth.principal": return .requestPrincipal
        case "request.auth.audiences": return .audiences
        case "request.auth.presenter": return .presenter
        case "source.principal": return .sourcePrincipal
        case "source.namespace": return .sourceNamespace
        case "destination.port": return .destinationPort
        case "source.ip", "remote.ip": return .sourceIP
        default: break
        }
        if key.hasPrefix("request.headers[") && key.hasSuffix("]") {
            let name = String(key.dropFirst(16).dropLast())
            guard RequestAuthentication.isHeaderName(name) else { return nil }
            return .header(name.lowercased())
        }
        if key.hasPrefix("request.auth.claims[") && key.hasSuffix("]") {
            // [a][b][c]: each segment non-empty, no brackets inside.
            let inner = key.dropFirst(19)   // from the first '['
            var parts: [String] = []
            var rest = Substring(inner)
            while !rest.isEmpty {
                guard rest.first == "[", let close = rest.firstIndex(of: "]") else { return nil }
                let seg = rest[rest.index(after: rest.startIndex)..<close]
                guard !seg.isEmpty, !seg.contains("[") else { return nil }
                parts.append(String(seg))
                rest = rest[rest.index(after: close)...]
            }
            return parts.isEmpty || parts.count > 8 ? nil : .claim(parts)
        }
        return nil
    }

    /// Parses `rules[].when` (`r` is the rule's reader).
    static func parseConditions(_ r: inout ConfigReader, ctx: ConfigError) throws(ConfigError) -> [Condition] {
        var out: [Condition] = []
        for (i, var w) in (try r.objectList("when") ?? []).enumerated() {
            let path = "\(r.sub("when"))[\(i)]"
            let keyText = try w.string("key", required: true)!
            if conditionKeysNotYet.contains(keyText) || keyText.hasPrefix("experimental.") {
                throw ConfigReader.error(ctx, "\(path).key", w.map.line, "condition key \"\(keyText)\": \(IstioTraffic.notSupported)")
            }
            guard let key = parseConditionKey(keyText) else {
                throw ConfigReader.error(ctx, "\(path).key", w.map.line,
                                         "unknown condition key \"\(keyText)\" (known: request.auth.claims[NAME]..., request.auth.principal, request.auth.audiences, request.auth.presenter, request.headers[NAME], source.ip, remote.ip, source.principal, source.namespace, destination.port)")
            }
            var c = Condition(key: key)
            c.values = try w.stringList("values") ?? []
            c.notValues = try w.stringList("notValues") ?? []
            if c.values.isEmpty && c.notValues.isEmpty {
                throw ConfigReader.error(ctx, path, w.map.line, "a condition needs values or notValues")
            }
            if key == .destinationPort {
                for v in c.values + c.notValues where !(Int(v).map { $0 >= 1 && $0 <= 65535 } ?? false) {
                    throw ConfigReader.error(ctx, "\(path).values", w.map.line, "expected a port number from 1 to 65535, got \"\(v)\"")
                }
            }
            if key == .sourceIP {
                for (list, isNot) in [(c.values, false), (c.notValues, true)] {
                    for v in list {
                        guard let b = AuthzCIDR(v) else {
                            throw ConfigReader.error(ctx, "\(path).\(isNot ? "notValues" : "values")", w.map.line, "expected an IP address or CIDR block, got \"\(v)\"")
                        }
                        if isNot { c.notBlocks.append(b) } else { c.blocks.append(b) }
                    }
                }
            }
            try w.finish()
            out.append(c)
        }
        return out
    }
}
