import MeshCore

/// Istio's `networking.istio.io` **Sidecar** resource for the part this mesh honours: which hosts
/// a workload's sidecar can reach (`spec.egress[].hosts`), for the workloads it applies to
/// (`metadata.namespace`, `spec.workloadSelector.labels`). meshd uses it to give each sidecar
/// only the config of the services it can call (its scope); sidecars never read it themselves.
/// Every other field of Istio's API (egress `port`/`bind`/`captureMode`, `ingress`,
/// `outboundTrafficPolicy`, `inboundConnectionPool`) is refused by name.
///
/// Which one applies (Istio's rules): a Sidecar in the workload's namespace whose selector
/// selects it; else the namespace's selector-less Sidecar; else the selector-less Sidecar of the
/// root namespace (`rootNamespace`); else none, and the workload sees every host.
public struct IstioSidecar: Sendable {
    /// The namespace whose selector-less Sidecar is the mesh-wide default, as Istio's
    /// `istio-system`: meshd's own namespace (its SPIFFE ID is `spiffe://TD/ns/mesh-system/sa/meshd`).
    public static let rootNamespace = "mesh-system"

    /// One `namespace/dnsName` entry of `egress[].hosts`.
    public struct EgressHost: Sendable, Equatable {
        public enum Namespace: Sendable, Equatable {
            /// `*`: any namespace.
            case any
            /// `.`: the namespace of the workload the Sidecar applies to.
            case own
            /// `~`: no namespace (Istio's way of selecting nothing).
            case none
            case named(String)
        }
        public var namespace: Namespace
        /// `*`, `*.suffix` or a host name.
        public var dnsName: String

        /// Whether a host of config namespace `ns`, answering to `names` (its FQDN first, then its
        /// shorter spellings), is selected for a workload of namespace `own`.
        public func selects(names: [String], namespace ns: String, own: String) -> Bool {
            switch namespace {
            case .any: break
            case .own: if ns != own { return false }
            case .none: return false
            case .named(let n): if ns != n { return false }
            }
            if dnsName == "*" { return true }
            if dnsName.hasPrefix("*.") {
                let suffix = dnsName.dropFirst(1)   // ".suffix"
                return names.contains { $0.hasSuffix(suffix) && $0.count > suffix.count }
            }
            return names.contains(dnsName)
        }
    }

    public var name: String
    public var namespace: String
    /// `workloadSelector.labels`; nil: the namespace's default (every workload of it).
    public var selector: [(String, String)]?
    public var egressHosts: [EgressHost]

    /// Whether this Sidecar's selector selects a workload with these labels (a selector-less
    /// Sidecar selects none this way: it is the namespace default).
    public func selects(labels: [(String, String)]) -> Bool {
        guard let sel = selector else { return false }
        return sel.allSatisfy { s in labels.contains { $0.0 == s.0 && $0.1 == s.1 } }
    }

    /// The Sidecars whose selectors select a workload of `namespace` with `labels` (Istio leaves
    /// more than one undefined; meshd refuses that), else the namespace default, else the root
    /// namespace's default, else empty.
    public static func applying(namespace: String, labels: [(String, String)], in sidecars: [IstioSidecar]) -> [IstioSidecar] {
        let mine = sidecars.filter { $0.namespace == namespace }
        let selecting = mine.filter { $0.selects(labels: labels) }
        if !selecting.isEmpty { return selecting }
        if let d = mine.first(where: { $0.selector == nil }) { return [d] }
        if let d = sidecars.first(where: { $0.namespace == rootNamespace && $0.selector == nil }) { return [d] }
        return []
    }

    static func parse(_ spec: inout ConfigReader, name: String, namespace: String, ctx: ConfigError) throws(ConfigError) -> IstioSidecar {
        var selector: [(String, String)]? = nil
        if var sel = try spec.object("workloadSelector") {
            let labels = try sel.stringMap("labels") ?? []
            try sel.finish()
            if labels.isEmpty {
                throw ConfigReader.error(ctx, sel.sub("labels"), sel.map.line, "a workloadSelector needs at least one label (leave workloadSelector out for the namespace default)")
            }
            selector = labels
        }
        let egress = try spec.objectList("egress") ?? []
        if egress.isEmpty {
            throw ConfigReader.error(ctx, "spec.egress", spec.map.line, "a Sidecar needs spec.egress with at least one entry of hosts")
        }
        if egress.count > 1 {
            // Without ports every egress listener is the catch-all one, and Istio allows one.
            throw ConfigReader.error(ctx, "spec.egress[1]", egress[1].map.line, "only one egress entry without a port is allowed (ports are not supported: list every host in spec.egress[0].hosts)")
        }
        var hosts: [EgressHost] = []
        for var e in egress {
            for f in ["port", "bind", "captureMode"] { try e.refuse(f) }
            guard let list = try e.stringList("hosts"), !list.isEmpty else {
                throw ConfigReader.error(ctx, e.sub("hosts"), e.map.line, "an egress entry needs at least one host (namespace/dnsName, e.g. \"./*\" or \"istio-system/*\")")
            }
            for (i, h) in list.enumerated() {
                guard let parsed = egressHost(h) else {
                    throw ConfigReader.error(ctx, "\(e.sub("hosts"))[\(i)]", e.map.line,
                                             "expected namespace/dnsName: namespace *, . , ~ or a namespace name; dnsName *, *.suffix or a lowercase host name (e.g. \"./*\", \"prod/reviews.prod.svc.cluster.local\"), got \"\(h)\"")
                }
                hosts.append(parsed)
            }
            try e.finish()
        }
        for f in ["ingress", "outboundTrafficPolicy", "inboundConnectionPool"] { try spec.refuse(f) }
        try spec.finish()
        return IstioSidecar(name: name, namespace: namespace, selector: selector, egressHosts: hosts)
    }

    /// `namespace/dnsName` as Istio's validation takes it for a Sidecar, or nil.
    public static func egressHost(_ text: String) -> EgressHost? {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty, !parts[1].contains("/") else { return nil }
        let dns = String(parts[1])
        // `*`, `*.suffix` or a name; a `*` anywhere else (`*foo.com`, `a.*.com`) is refused.
        guard Names.isHost(dns, wildcard: true), !dns.dropFirst().contains("*") else { return nil }
        let ns: EgressHost.Namespace
        switch parts[0] {
        case "*": ns = .any
        case ".": ns = .own
        case "~": ns = .none
        default:
            guard Names.isDNSLabel(String(parts[0])) else { return nil }
            ns = .named(String(parts[0]))
        }
        return EgressHost(namespace: ns, dnsName: dns)
    }
}
