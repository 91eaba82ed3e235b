/// AuthorizationPolicy and RequestAuthentication are not enforced on gateway proxies (their
/// request path runs neither check), so one that selects a gateway is refused rather than
/// accepted and ignored (fail-open): by meshd at apply (a selector matching a Gateway's
/// `selector` labels or a known gateway proxy's labels), by a gateway on a push (meshd sends it
/// one that selects its labels, so that it refuses it by name: NACK) and in a static file.
public enum GatewayPolicies {
    public static let notSupported = "policies on gateways are not supported yet"

    /// The AuthorizationPolicy and RequestAuthentication documents of `cfg` that select a
    /// gateway proxy of `namespace` with `labels` (`withSelectorOnly`: only those with a
    /// selector, not the namespace-wide ones), as "Kind ns/name".
    public static func selecting(_ cfg: IstioTraffic.Config, namespace: String, labels: [(String, String)],
                                 withSelectorOnly: Bool) -> [String] {
        var out: [String] = []
        for p in cfg.authorizationPolicies where (p.selector != nil || !withSelectorOnly) && p.selects(namespace: namespace, labels: labels) {
            out.append("AuthorizationPolicy \(p.namespace)/\(p.name)")
        }
        for p in cfg.requestAuthentications where (p.selector != nil || !withSelectorOnly) && p.selects(namespace: namespace, labels: labels) {
            out.append("RequestAuthentication \(p.namespace)/\(p.name)")
        }
        return out
    }

    /// Whether policy `kind` `namespace`/`name` of `cfg` has a selector that selects a gateway
    /// proxy of `gatewayNamespace` with `labels`.
    public static func selects(_ cfg: IstioTraffic.Config, kind: String, namespace: String, name: String,
                               gatewayNamespace: String, labels: [(String, String)]) -> Bool {
        selecting(cfg, namespace: gatewayNamespace, labels: labels, withSelectorOnly: true).contains("\(kind) \(namespace)/\(name)")
    }

    /// The error for policy `what` ("Kind ns/name") selecting `target`.
    public static func error(file: String, _ what: String, selecting target: String, selector: Bool) -> ConfigError {
        ConfigError(file: file, path: "\(what): \(selector ? "spec.selector" : "metadata.namespace")",
                    message: "selects \(target): \(notSupported) (a gateway proxy runs neither AuthorizationPolicy nor RequestAuthentication checks; select only sidecar workloads)")
    }
}

extension Bootstrap {
    /// A gateway proxy refuses every AuthorizationPolicy and RequestAuthentication that selects
    /// it (its namespace and labels), rather than running without them.
    func refuseGatewayPolicies(file: String) throws(ConfigError) {
        guard gatewayMode else { return }
        let found = GatewayPolicies.selecting(traffic, namespace: workload.namespace, labels: workload.labels, withSelectorOnly: false)
        guard let first = found.first else { return }
        let hasSelector = traffic.authorizationPolicies.contains { "AuthorizationPolicy \($0.namespace)/\($0.name)" == first && $0.selector != nil }
            || traffic.requestAuthentications.contains { "RequestAuthentication \($0.namespace)/\($0.name)" == first && $0.selector != nil }
        throw GatewayPolicies.error(file: file, first, selecting: "this gateway proxy (namespace \(workload.namespace))", selector: hasSelector)
    }
}
