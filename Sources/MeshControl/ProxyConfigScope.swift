import MeshConfig
import MeshCore
import MeshIO
import MeshPKI

/// What one sidecar is sent (DESIGN §5 "only what it needs", Istio's `Sidecar` egress scope):
/// its namespace and the Sidecar resource that applies to it (none: every host of the mesh).
/// Sidecars with the same scope get the same config, so meshd renders it once per scope and
/// version, however many sidecars share it.
struct ProxyScope: Hashable, Sendable {
    var namespace: String
    /// The applying Sidecar as `namespace/name`; nil when none applies.
    var sidecar: String?
    /// A gateway proxy: its labels as sorted `k=v` (GatewayScope.swift); nil for a sidecar.
    var gateway: [String]? = nil
    /// The cache key.
    var key: String { "\(namespace)|\(sidecar ?? "*")" + (gateway.map { "|gateway|" + $0.joined(separator: ",") } ?? "") }

    /// The scope of a workload of `namespace` with `labels` under these Sidecar resources.
    static func of(namespace: String, labels: [(String, String)], sidecars: [IstioSidecar]) -> ProxyScope {
        let s = IstioSidecar.applying(namespace: namespace, labels: labels, in: sidecars).first
        return ProxyScope(namespace: namespace, sidecar: s.map { "\($0.namespace)/\($0.name)" })
    }

    /// The namespace of a SPIFFE ID `spiffe://TD/ns/NS/sa/SA`, nil for any other shape.
    static func namespace(ofIdentity id: String) -> String? {
        let parts = id.split(separator: "/", omittingEmptySubsequences: false)
        // "spiffe:", "", TD, "ns", NS, "sa", SA
        guard parts.count == 7, parts[0] == "spiffe:", parts[3] == "ns", parts[5] == "sa" else { return nil }
        return String(parts[4])
    }
}

/// The documents in force parsed once per version, with every cluster's text rendered once:
/// what each scope's render shares (`ConfigStore.render(_:scope:)` only selects and joins).
struct RenderBase {
    /// A mesh cluster (`service.namespace`) or a ServiceEntry host's cluster.
    struct ClusterText {
        /// The cluster's name in the config (`service.namespace`, or the entry host as written).
        var name: String
        /// `service.namespace` of the host as a VirtualService or DestinationRule names it.
        var key: String
        /// The namespace its host belongs to (Istio's config namespace), and the names it
        /// answers to, FQDN first: what `egress.hosts` are matched against.
        var namespace: String
        var names: [String]
        var text: String
    }

    let version: Int
    let cfg: IstioTraffic.Config
    let state: ConfigStore.State
    /// Mesh clusters sorted by name, then entry clusters in document order (the whole-mesh order).
    var mesh: [ClusterText] = []
    var entries: [ClusterText] = []
    /// Cluster keys a VirtualService's hosts name, by VirtualService index.
    var vsHostKeys: [[String]] = []
    /// Destination keys (http routes, mirrors, tcp routes) by VirtualService index.
    var vsDestinationKeys: [[String]] = []
    /// The names each VirtualService's hosts answer to, and its namespace.
    var vsNames: [[String]] = []

    static func key(_ host: String, _ ns: String) -> String { DeclaredProtocol.serviceKey(host, ns) }

    /// The names a host written in a document of namespace `ns` answers to, FQDN first.
    static func names(_ host: String, _ ns: String) -> [String] {
        let parts = host.split(separator: ".")
        switch parts.count {
        case 1: return ["\(host).\(ns).svc.cluster.local", "\(host).\(ns)", host]
        case 2: return ["\(host).svc.cluster.local", host, String(parts[0])]
        default: return [host]
        }
    }

    /// `parsed`: the documents of `s` already parsed (else parsed here; they were validated
    /// when applied).
    init(_ s: ConfigStore.State, trustDomain: String, parsed: IstioTraffic.Config? = nil) {
        version = s.version
        state = s
        let q = YAML.quoted
        let cfg = parsed ?? (try? IstioTraffic.parse(ConfigStore.renderDocuments(s.order.compactMap { s.documents[$0] }).text,
                                                     file: "(stored)")) ?? IstioTraffic.Config()
        self.cfg = cfg
        let key = RenderBase.key
        var services: [String: [ConfigStore.Workload]] = [:]
        for w in s.workloads.values { services["\(w.service).\(w.namespace)", default: []].append(w) }
        // Hosts a VirtualService routes or a DestinationRule names need a cluster even before
        // any endpoint registers (requests get 503 UH, not a refused config).
        var names = Set(services.keys)
        for vs in cfg.virtualServices {
            // A VirtualService bound only to gateways names no mesh host (its hosts are the gateway's).
            let meshBound = vs.bound(.mesh) != nil
            vsHostKeys.append(vs.hosts.map { key($0, vs.namespace) })
            vsNames.append(vs.hosts.flatMap { RenderBase.names($0, vs.namespace) })
            var dests: [String] = []
            for r in vs.http {
                dests += r.route.map { key($0.destination.host, vs.namespace) }
                if let m = r.mirror { dests.append(key(m.host, vs.namespace)) }
            }
            for r in vs.tcp { dests += r.route.map { key($0.destination.host, vs.namespace) } }
            vsDestinationKeys.append(dests)
            if meshBound { for h in vs.hosts { names.insert(key(h, vs.namespace)) } }
            for r in vs.http { for d in r.route { names.insert(key(d.destination.host, vs.namespace)) } }
        }
        for dr in cfg.destinationRules { names.insert(key(dr.host, dr.namespace)) }
        // ServiceEntries: their hosts become clusters of their own (names as written).
        for se in cfg.serviceEntries {
            var eps = se.endpoints
            if let sel = se.workloadSelector {
                eps += cfg.workloadEntries.filter { we in we.namespace == se.namespace
                    && sel.allSatisfy { l in we.endpoint.labels.contains { $0.0 == l.0 && $0.1 == l.1 } } }.map(\.endpoint)
            }
            let port = se.ports[0]
            let sas = Set(eps.compactMap(\.serviceAccount)).sorted().map { "spiffe://\(trustDomain)/ns/\(se.namespace)/sa/\($0)" }
            let mtls = se.meshInternal && !eps.isEmpty && eps.allSatisfy { $0.serviceAccount != nil }
            // resolution DNS: endpoints given by name are resolved by the sidecars (dnsEndpoints).
            let isName = { (e: ServiceEntry.Endpoint) in SocketAddress(host: e.address, port: 1) == nil }
            let rendered = eps.filter { !isName($0) }.map { e -> String in
                let p = e.ports.first { $0.0 == port.name }?.1 ?? port.targetPort ?? port.number
                let labels = e.labels.map { "\(q($0.0)): \(q($0.1))" }.joined(separator: ", ")
                return "{address: \(q("\(e.address):\(p)")), labels: {\(labels)}}"
            }
            let named = eps.filter(isName).map { e -> String in
                let p = e.ports.first { $0.0 == port.name }?.1 ?? port.targetPort ?? port.number
                let labels = e.labels.map { "\(q($0.0)): \(q($0.1))" }.joined(separator: ", ")
                return "{host: \(q(e.address)), port: \(p), labels: {\(labels)}}"
            }
            for h in se.hosts {
                names.remove(key(h, se.namespace))
                let addresses = se.addresses.isEmpty ? ConfigStore.vipTexts(s.vips, h) : se.addresses
                var out = "  - name: \(q(h))\n    tls: \(mtls ? "ISTIO_MUTUAL" : "DISABLE")\n"
                if port.proto != "HTTP" { out += "    serviceProtocol: \(port.proto)\n" }
                out += "    port: \(port.number)\n"
                if !addresses.isEmpty { out += "    addresses: [\(addresses.map(q).joined(separator: ", "))]\n" }
                if mtls && !sas.isEmpty { out += "    subjectAltNames: [\(sas.map(q).joined(separator: ", "))]\n" }
                out += "    endpoints:\n"
                if rendered.isEmpty { out += "      []\n" }
                for e in rendered { out += "      - \(e)\n" }
                if se.resolution != "STATIC" {
                    // Without endpoints each host resolves its own name (Istio).
                    let dns = eps.isEmpty ? ["{host: \(q(h)), port: \(port.targetPort ?? port.number)}"] : named
                    if !dns.isEmpty { out += "    resolution: \(se.resolution)\n    dnsEndpoints:\n" + dns.map { "      - \($0)\n" }.joined() }
                }
                entries.append(ClusterText(name: h, key: key(h, se.namespace), namespace: se.namespace, names: [h], text: out))
            }
        }
        let declared = DeclaredProtocol.all(in: cfg)
        for k in names.sorted() {
            // Named service.namespace: the same service name in two namespaces are two clusters.
            let eps = (services[k] ?? []).sorted { $0.address < $1.address }
            var out = "  - name: \(q(k))\n    tls: ISTIO_MUTUAL\n"
            // What the service speaks and its port (the same for every workload: `register`);
            // before any workload registers, what a VirtualService's route to it says.
            if let p = eps.first?.serviceProtocol {
                if p != "HTTP" { out += "    serviceProtocol: \(p)\n" }
            } else if declared[k]?.tcp == true {
                out += "    serviceProtocol: TCP\n"
            }
            if let p = eps.first(where: { $0.servicePort != nil })?.servicePort { out += "    port: \(p)\n" }
            let vips = ConfigStore.vipTexts(s.vips, k)
            if !vips.isEmpty { out += "    addresses: [\(vips.map(q).joined(separator: ", "))]\n" }
            // Callers accept only the identities registered for this service.
            let ids = Set(eps.map(\.identity)).sorted()
            if !ids.isEmpty { out += "    subjectAltNames: [\(ids.map(q).joined(separator: ", "))]\n" }
            out += "    endpoints:\n"
            if eps.isEmpty { out += "      []\n" }
            for w in eps {
                let labels = w.labels.map { "\(q($0.0)): \(q($0.1))" }.joined(separator: ", ")
                out += "      - {address: \(q(w.address)), labels: {\(labels)}}\n"
            }
            let ns = k.split(separator: ".").dropFirst().first.map(String.init) ?? ""
            mesh.append(ClusterText(name: k, key: k, namespace: ns, names: RenderBase.names(k, ns), text: out))
        }
    }

    /// The Sidecar resource with this `namespace/name`.
    func sidecar(_ id: String?) -> IstioSidecar? {
        guard let id else { return nil }
        return cfg.sidecars.first { "\($0.namespace)/\($0.name)" == id }
    }

    /// Every scope a sidecar can have under this config: for each namespace given (where
    /// sidecars are known) and each namespace a Sidecar resource is in, the scope of a workload
    /// no selector picks; the scope of every Sidecar with a selector; the scope of each
    /// registered workload. Sorted by key.
    func scopes(namespaces: Set<String>) -> [ProxyScope] {
        var out = Set<ProxyScope>()
        var nss = namespaces
        for sc in cfg.sidecars { nss.insert(sc.namespace) }
        for ns in nss { out.insert(ProxyScope.of(namespace: ns, labels: [], sidecars: cfg.sidecars)) }
        for sc in cfg.sidecars where sc.selector != nil { out.insert(ProxyScope(namespace: sc.namespace, sidecar: "\(sc.namespace)/\(sc.name)")) }
        for w in state.workloads.values {
            out.insert(ProxyScope.of(namespace: w.namespace, labels: w.labels, sidecars: cfg.sidecars))
        }
        return out.sorted { $0.key < $1.key }
    }
}

extension ConfigStore {
    /// The pushed config for one scope (nil: the whole mesh, every policy of every namespace):
    /// a `ProxyConfig` document with the clusters of the hosts the scope's egress hosts allow
    /// (all of them when no Sidecar applies) and their default routes, plus every cluster a
    /// VirtualService it gets routes or mirrors to (so the set stays one the sidecar accepts),
    /// then the VirtualServices and DestinationRules of those hosts and the AuthorizationPolicy,
    /// PeerAuthentication and RequestAuthentication documents of its own and the root namespace (the sidecar applies
    /// their selectors itself). Every value that came from input is written quoted.
    static func render(_ b: RenderBase, scope: ProxyScope?) -> (text: String, placed: [(line: Int, doc: Document)]) {
        if let g = scope, g.gateway != nil { return renderGateway(b, scope: g) }
        let q = YAML.quoted
        let s = b.state
        let egress = scope.flatMap { b.sidecar($0.sidecar) }?.egressHosts
        let own = scope?.namespace ?? ""
        func visible(_ names: [String], _ ns: String) -> Bool {
            guard let hosts = egress else { return true }
            return hosts.contains { $0.selects(names: names, namespace: ns, own: own) }
        }
        // VirtualServices: visible by their namespace and hosts (Istio's config namespace).
        var vsIn: [Bool] = []
        var routed = Set<String>()
        var pulled = Set<String>()
        for (i, vs) in b.cfg.virtualServices.enumerated() {
            let v = visible(b.vsNames[i], vs.namespace) && (scope == nil || vs.bound(.mesh) != nil)
            vsIn.append(v)
            if v {
                routed.formUnion(b.vsHostKeys[i])
                pulled.formUnion(b.vsDestinationKeys[i])
            }
        }
        // Clusters: the visible ones get default routes; those only a visible VirtualService
        // routes to come along without one (reachable through that VirtualService only).
        // No version in the text: a change outside the scope leaves it, and its digest, as it was
        // (and two scopes that see the same get the same text).
        var out = "apiVersion: sidecar.mesh/v1alpha1\nkind: ProxyConfig\nmetadata: {name: proxy-config}\nspec:\n  clusters:\n"
        var keys = Set<String>()
        var meshRouted: [String] = []
        for c in b.mesh {
            let v = visible(c.names, c.namespace)
            guard v || pulled.contains(c.key) else { continue }
            out += c.text
            keys.insert(c.key)
            if v { meshRouted.append(c.name) }
        }
        var entryRouted: [(index: Int, name: String)] = []
        for (i, c) in b.entries.enumerated() {
            let v = visible(c.names, c.namespace)
            guard v || pulled.contains(c.key) else { continue }
            out += c.text
            keys.insert(c.key)
            if v { entryRouted.append((i, c.name)) }
        }
        var routes = ""
        for k in meshRouted where !routed.contains(k) {
            routes += "  - name: \(q(k))\n    hosts: [\(q(k))]\n    cluster: \(q(k))\n"
        }
        for (i, name) in entryRouted where !routed.contains(RenderBase.key(name, "default")) {
            routes += "  - name: entry-\(i)\n    hosts: [\(q(name))]\n    cluster: \(q(name))\n"
        }
        out += routes.isEmpty ? "  routes: []\n" : "  routes:\n" + routes
        out += "  outboundTrafficPolicy: {mode: \(s.outboundTrafficPolicy.rawValue)}\n"
        out += OTLPEndpoint.Pushed.specLine
        // The documents a sidecar applies itself (entries are rendered into clusters above;
        // Sidecar resources are meshd's alone).
        var vsByKey: [String: Bool] = [:]
        for (i, vs) in b.cfg.virtualServices.enumerated() { vsByKey["\(vs.namespace)/\(vs.name)"] = vsIn[i] }
        let drKeys = Dictionary(b.cfg.destinationRules.map { ("\($0.namespace)/\($0.name)", RenderBase.key($0.host, $0.namespace)) },
                                uniquingKeysWith: { a, _ in a })
        let docs = s.order.compactMap { s.documents[$0] }.filter { d in
            switch d.kind {
            case "VirtualService": return vsByKey["\(d.namespace)/\(d.name)"] ?? false
            case "DestinationRule": return drKeys["\(d.namespace)/\(d.name)"].map { keys.contains($0) } ?? false
            case LocalRateLimit.kind:
                // With the VirtualService it limits (the sidecar checks they come together).
                let vs = b.cfg.localRateLimits.first { $0.namespace == d.namespace && $0.name == d.name }?.virtualService
                return vs.flatMap { vsByKey["\(d.namespace)/\($0)"] } ?? false
            case "AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication", Telemetry.kind:
                return scope == nil || d.namespace == own || d.namespace == IstioSidecar.rootNamespace
            default: return false
            }
        }
        guard !docs.isEmpty else { return (out, []) }
        out += "---\n"
        let firstLine = out.utf8.reduce(1) { $0 + ($1 == 10 ? 1 : 0) }
        let rendered = renderDocuments(docs, firstLine: firstLine)
        return (out + rendered.text, rendered.placed)
    }
}

/// Scoped renders of the version in force, computed when a config stream asks and kept until
/// the version moves: 10,000 sidecars of 100 scopes cost 100 renders a change. One render at
/// a time (a burst of streams asking for the same scope renders it once); bounded to the
/// current version and `limit` scopes.
final class ScopedRenders: @unchecked Sendable {
    private let lock = PlainLock()
    private var base: RenderBase?
    private var snapshots: [String: ProxyConfigSnapshot] = [:]
    private var renders = 0
    static let limit = 4096
    /// The last few texts of each scope, for pushes as deltas.
    let deltas = DeltaPushes()

    /// The snapshot of `scope` for the state in force (`read` is called under this cache's
    /// lock, so a stream that read an older state cannot make the cache go back a version).
    func snapshot(_ read: () -> ConfigStore.State, trustDomain: String, scope: (RenderBase) -> ProxyScope) -> ProxyConfigSnapshot {
        lock.lock()
        defer { lock.unlock() }
        let s = read()
        if base?.version != s.version {
            base = RenderBase(s, trustDomain: trustDomain)
            snapshots.removeAll(keepingCapacity: true)
        }
        let b = base!
        let sc = scope(b)
        if let hit = snapshots[sc.key] { return hit }
        let text = ConfigStore.render(b, scope: sc).text
        renders += 1
        let digest = MeshCrypto.digestHex(text)
        let snap = ProxyConfigSnapshot(version: b.version, digest: digest, text: text, textDigest: digest)
        deltas.remember(scope: sc.key, digest: digest, text: text)
        if snapshots.count >= ScopedRenders.limit { snapshots.removeAll(keepingCapacity: true) }
        snapshots[sc.key] = snap
        return snap
    }

    /// Renders done since start (tests: one per scope and version).
    var renderCount: Int { lock.lock(); defer { lock.unlock() }; return renders }
}

extension ConfigStore {
    /// The snapshot for one sidecar: its namespace from its SPIFFE ID, its labels from its
    /// registration (identity|node; none for a caller-only sidecar), the Sidecar that applies.
    func scopedConfig(identity: String, node: String) -> ProxyConfigSnapshot {
        let ns = ProxyScope.namespace(ofIdentity: identity) ?? defaultNamespace
        var labels: [(String, String)] = []
        var gateway: [(String, String)]? = nil
        return scoped.snapshot({
            let s = currentState()
            labels = s.workloads["\(identity)|\(node)"]?.labels ?? []
            gateway = s.proxies["\(identity)|\(node)"]?.gatewayLabels
            return s
        }, trustDomain: trustDomain) { b in
            if let g = gateway { return GatewayScope.scope(namespace: ns, labels: g) }
            return ProxyScope.of(namespace: ns, labels: labels, sidecars: b.cfg.sidecars)
        }
    }

    /// Whether a sidecar has the config in force for its scope (ACKed this version, or a config
    /// with the digest its scope has now: a change that did not touch its scope is not sent).
    public func isCurrent(_ p: ProxyStatus) -> Bool {
        // The digest when there is one: it also covers the trust bundle, which moves no version.
        if p.ackedDigest.isEmpty { return p.ackedVersion == version }
        return p.ackedDigest == proxyConfig(identity: p.identity, node: p.node).digest
    }

    /// Renders done by the scoped cache since start.
    var scopedRenderCount: Int { scoped.renderCount }
}

extension ConfigStore {
    /// Whether a registration only adds an endpoint to (or relabels one of) a service that
    /// exists with the same protocol and port, so that the whole-set check can be skipped.
    ///
    /// Why that is safe: the state before was checked (every apply and every other
    /// registration ran `check`, which renders and checks every scope a sidecar can have). With
    /// this workload added, each scope's config differs from the one checked only inside the
    /// cluster of this service, which every scope that shows the service already has: one more
    /// (or relabelled) entry in `endpoints` and maybe one more identity in `subjectAltNames`.
    /// The set of clusters, their protocol and port lines (the same as every peer's, the
    /// condition here), the VIPs (the service's host has one), the routes and the documents are
    /// unchanged, and so is every check that depends on them (hosts routed once, subsets,
    /// tcp/http routes against the protocol, the protocol a VirtualService declares, which
    /// the peers already met). What the sidecar checks of an endpoint alone is that its
    /// address parses (checked here as the sidecar parses it) and that its labels are strings
    /// (they are written quoted). The scopes do not change either: the workload's namespace
    /// has a peer, so its default scope was checked, and every Sidecar with a selector has
    /// its scope checked whether it selects a workload or not; only the rule that one
    /// workload has at most one such Sidecar depends on the labels, and it is checked here.
    /// Anything else (a new service, another protocol or port, a service that moves) takes
    /// the whole check. The cost is one pass over the registry (the peer scan), not a render
    /// and a parse per namespace: 10,000 registrations are no longer 10,000 whole checks.
    static func onlyAddsAnEndpoint(_ s: State, service: String, namespace: String, labels: [(String, String)], address: String,
                                   old: Workload?, peers: Int, peersOnPort: Int) -> Bool {
        guard peers > 0, peersOnPort == peers, SocketAddress(address) != nil else { return false }
        if let o = old, o.service != service || o.namespace != namespace { return false }
        guard labels.allSatisfy({ Names.isLabelKey($0.0) && Names.isLabelValue($0.1) }) else { return false }
        // Sidecars with selectors in the namespace: at most one may select the workload.
        let docs = s.order.compactMap { s.documents[$0] }.filter { $0.kind == "Sidecar" && $0.namespace == namespace }
        if docs.isEmpty { return true }
        guard let cfg = try? IstioTraffic.parse(renderDocuments(docs).text, file: "(stored)") else { return false }
        return IstioSidecar.applying(namespace: namespace, labels: labels, in: cfg.sidecars).filter { $0.selector != nil }.count <= 1
    }
}
