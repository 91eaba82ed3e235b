import MeshConfig

extension ConfigStore {
    /// AuthorizationPolicy and RequestAuthentication are not enforced on gateway proxies: meshd
    /// refuses one whose selector matches a Gateway's `selector` labels (in its namespace), and
    /// one being applied (`applied`: "Kind ns/name") whose selector matches the labels of a
    /// gateway proxy it knows and trusts (`trusted`: its identity is a granted gateway service
    /// account; claimed labels alone never block an apply), naming the policy's file and line
    /// (GatewayPolicies, MeshConfig).
    /// A policy in force that a gateway proxy connecting later claims the labels of blocks no
    /// apply: meshd sends it to that gateway, which refuses it by name (NACK).
    static func checkGatewayPolicies(_ s: State, cfg: IstioTraffic.Config, placed: [(line: Int, doc: Document)],
                                     applied: Set<String> = [], trusted: (String) -> Bool = { _ in false }) throws(ConfigError) {
        guard !cfg.authorizationPolicies.isEmpty || !cfg.requestAuthentications.isEmpty else { return }
        var targets: [(namespace: String, labels: [(String, String)], what: String)] = cfg.gateways.map {
            ($0.namespace, $0.selector, "the gateway proxies Gateway \($0.namespace)/\($0.name) selects")
        }
        for p in s.proxies.values.sorted(by: { $0.identity + $0.node < $1.identity + $1.node }) where !applied.isEmpty {
            guard let labels = p.gatewayLabels, let ns = ProxyScope.namespace(ofIdentity: p.identity), trusted(p.identity) else { continue }
            targets.append((ns, labels, "the gateway proxy \(p.identity) at \(p.node)"))
        }
        for (i, t) in targets.enumerated() {
            let found = GatewayPolicies.selecting(cfg, namespace: t.namespace, labels: t.labels, withSelectorOnly: true)
            guard let what = i < cfg.gateways.count ? found.first : found.first(where: applied.contains) else { continue }
            throw locate(GatewayPolicies.error(file: "(the config that would result)", what, selecting: t.what, selector: true), in: placed)
        }
    }
}

extension ConfigStore {
    /// The AuthorizationPolicy and RequestAuthentication documents of an apply, checked against
    /// the gateway proxies `next` knows (see `checkGatewayPolicies`).
    static func checkAppliedPolicies(_ next: State, incoming: [Document], trusted: (String) -> Bool) throws(ConfigError) {
        let applied = Set(incoming.filter { $0.kind == "AuthorizationPolicy" || $0.kind == "RequestAuthentication" }.map { "\($0.kind) \($0.namespace)/\($0.name)" })
        guard !applied.isEmpty, next.proxies.values.contains(where: { $0.gatewayLabels != nil }) else { return }
        let stored = renderDocuments(next.order.compactMap { next.documents[$0] })
        let cfg: IstioTraffic.Config
        do { cfg = try IstioTraffic.parse(stored.text, file: "(the config that would result)") } catch { throw locate(error, in: stored.placed) }
        try checkGatewayPolicies(next, cfg: cfg, placed: stored.placed, applied: applied, trusted: trusted)
    }
}
