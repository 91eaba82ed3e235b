import MeshConfig
import MeshCore
import MeshPKI

/// What meshd sends a gateway proxy (`sidecar --gateway`, DESIGN §15): the Gateways whose
/// selector matches the labels it names on its config requests, the VirtualServices bound to
/// them (whole documents: the proxy applies the binding itself, with the same code meshd checks
/// with), the clusters their routes lead to and those clusters' DestinationRules; no default
/// routes (a gateway routes only what a VirtualService binds to it) and no policies.
enum GatewayScope {
    /// `k=v,k=v` as a gateway sends its labels, each checked as a registration's; nil if malformed.
    static func labels(_ text: String) -> [(String, String)]? {
        var out: [(String, String)] = []
        for kv in text.split(separator: ",") {
            let p = kv.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            guard p.count == 2, Names.isLabelKey(p[0]), Names.isLabelValue(p[1]) else { return nil }
            out.append((p[0], p[1]))
        }
        return out.count <= 64 ? out : nil
    }

    /// The scope of a gateway of `namespace` with `labels` (sorted: the same labels, one render).
    static func scope(namespace: String, labels: [(String, String)]) -> ProxyScope {
        ProxyScope(namespace: namespace, sidecar: nil, gateway: labels.map { "\($0.0)=\($0.1)" }.sorted())
    }

    static func labels(of scope: ProxyScope) -> [(String, String)] {
        (scope.gateway ?? []).compactMap { kv in
            let p = kv.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            return p.count == 2 ? (p[0], p[1]) : nil
        }
    }
}

extension ConfigStore {
    static func renderGateway(_ b: RenderBase, scope: ProxyScope) -> (text: String, placed: [(line: Int, doc: Document)]) {
        let s = b.state
        let keys = b.cfg.gatewayKeys(selecting: GatewayScope.labels(of: scope))
        var bound = Set<String>()
        var pulled = Set<String>()
        for vs in b.cfg.virtualServices where vs.bound(.gateways(keys)) != nil {
            bound.insert("\(vs.namespace)/\(vs.name)")
            var hosts: [String] = []
            for r in vs.http { hosts += r.route.map(\.destination.host); if let m = r.mirror { hosts.append(m.host) } }
            for r in vs.tcp { hosts += r.route.map(\.destination.host) }
            for r in vs.tls { hosts += r.route.map(\.destination.host) }
            for h in hosts { pulled.insert(RenderBase.key(h, vs.namespace)) }
        }
        var out = "apiVersion: sidecar.mesh/v1alpha1\nkind: ProxyConfig\nmetadata: {name: proxy-config}\nspec:\n  clusters:\n"
        var clusterKeys = Set<String>()
        for c in b.mesh + b.entries where pulled.contains(c.key) && !clusterKeys.contains(c.key) {
            out += c.text
            clusterKeys.insert(c.key)
        }
        out += "  routes: []\n"
        out += "  outboundTrafficPolicy: {mode: \(s.outboundTrafficPolicy.rawValue)}\n"
        out += OTLPEndpoint.Pushed.specLine
        let drKeys = Dictionary(b.cfg.destinationRules.map { ("\($0.namespace)/\($0.name)", RenderBase.key($0.host, $0.namespace)) },
                                uniquingKeysWith: { a, _ in a })
        let docs = s.order.compactMap { s.documents[$0] }.filter { d in
            switch d.kind {
            case "Gateway": return keys.contains("\(d.namespace)/\(d.name)")
            case "VirtualService": return bound.contains("\(d.namespace)/\(d.name)")
            case "DestinationRule": return drKeys["\(d.namespace)/\(d.name)"].map { clusterKeys.contains($0) } ?? false
            case LocalRateLimit.kind:
                // With the VirtualService it limits, as a sidecar gets it (ProxyConfigScope.swift).
                let vs = b.cfg.localRateLimits.first { $0.namespace == d.namespace && $0.name == d.name }?.virtualService
                return vs.map { bound.contains("\(d.namespace)/\($0)") } ?? false
            case "AuthorizationPolicy", "RequestAuthentication":
                // Not enforced on gateways: one selecting this gateway is sent so that it refuses
                // (NACKs) the config, naming the policy (GatewayPolicies.swift).
                return GatewayPolicies.selects(b.cfg, kind: d.kind, namespace: d.namespace, name: d.name,
                                               gatewayNamespace: scope.namespace, labels: GatewayScope.labels(of: scope))
            default: return false
            }
        }
        guard !docs.isEmpty else { return (out, []) }
        out += "---\n"
        let firstLine = out.utf8.reduce(1) { $0 + ($1 == 10 ? 1 : 0) }
        let rendered = renderDocuments(docs, firstLine: firstLine)
        return (out + rendered.text, rendered.placed)
    }

    /// Every Gateway's scope (a gateway proxy carrying exactly its selector's labels, in its
    /// namespace) must render to a config that gateway accepts: checked with its own code. A
    /// connected gateway proxy whose labels combine Gateways that clash is not checked here (its
    /// labels would let it block every apply): it refuses (NACKs) its push and keeps the config
    /// in force, as any proxy does.
    static func checkGatewayScopes(_ base: RenderBase) throws(ConfigError) {
        var checked = Set<String>()
        let scopes: [(namespace: String, labels: [(String, String)], what: String)] = base.cfg.gateways.map {
            ($0.namespace, $0.selector, "gateway \($0.namespace)/\($0.name)")
        }
        for g in scopes {
            let scope = GatewayScope.scope(namespace: g.namespace, labels: g.labels)
            let push = renderGateway(base, scope: scope)
            guard checked.insert(MeshCrypto.digestHex(push.text)).inserted else { continue }
            do {
                try Bootstrap.checkPushedGateway(push.text, namespace: g.namespace, labels: g.labels, source: "(the config meshd would push to \(g.what))")
            } catch {
                throw locate(error, in: push.placed)
            }
        }
    }
}
