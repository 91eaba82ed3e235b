import MeshConfig
import MeshCore
import MeshPKI

/// How meshd turns its state into what it checks and pushes (DESIGN §3, §5): the whole set
/// validated with the sidecar's own code, the pushed `ProxyConfig` rendered from the registry
/// and the documents in force, errors moved back to the operator's file and line, and the
/// mesh hosts that get VIPs.
extension ConfigStore {
    /// The whole set must hold together (subsets defined, hosts routed once, ...) and the config
    /// meshd would push must be one that a sidecar accepts, in every scope a sidecar can have:
    /// each namespace sidecars are known in (registered workloads, connected callers, and
    /// `default`), each namespace a Sidecar resource is in, each Sidecar with a selector, each
    /// registered workload (`RenderBase.scopes`). An error is moved back to the document, file
    /// and line it came from; one that only a Sidecar's scope shows names that Sidecar.
    static func check(_ s: State, trustDomain: String) throws(ConfigError) {
        let stored = renderDocuments(s.order.compactMap { s.documents[$0] })
        let cfg: IstioTraffic.Config
        do { cfg = try IstioTraffic.parse(stored.text, file: "(the config that would result)") } catch {
            throw locate(error, in: stored.placed)
        }
        try checkSidecarSelection(s, cfg: cfg, placed: stored.placed)
        try checkGatewayPolicies(s, cfg: cfg, placed: stored.placed)
        let base = RenderBase(s, trustDomain: trustDomain, parsed: cfg)
        // Every namespace a sidecar is known in: registered workloads, and connected callers
        // (spiffe://TD/ns/NS/sa/SA), which register nothing.
        let callers = s.proxies.values.compactMap { ProxyScope.namespace(ofIdentity: $0.identity) }
        let namespaces = Set(s.workloads.values.map(\.namespace)).union(callers).union(["default"])
        // A config text is checked once, whatever the number of scopes that render to it: the
        // sidecar's check of a pushed text does not depend on its namespace (that only expands
        // one-label route hosts, and meshd renders none: clusters are service.namespace or a
        // ServiceEntry host, which has a dot; VirtualService and DestinationRule hosts expand
        // in their own namespace). Without Sidecar resources the scopes of namespaces without
        // policies of their own are one text: one check instead of one per namespace.
        var checked = Set<String>()
        for scope in base.scopes(namespaces: namespaces) {
            let push = render(base, scope: scope)
            guard checked.insert(MeshCrypto.digestHex(push.text)).inserted else { continue }
            do { try Bootstrap.checkPushed(push.text, namespace: scope.namespace, source: "(the config meshd would push)") } catch {
                let found = locate(error, in: push.placed)
                // A Sidecar resource shapes this scope: name it (the set without it may be fine).
                guard let id = scope.sidecar, let sc = base.sidecar(id),
                      let p = stored.placed.first(where: { $0.doc.kind == "Sidecar" && $0.doc.namespace == sc.namespace && $0.doc.name == sc.name }) else {
                    throw found
                }
                let d = p.doc
                throw ConfigError(file: d.file.isEmpty ? "(in force: Sidecar \(id))" : d.file, document: d.index,
                                  path: "Sidecar \(id): spec.egress[0].hosts", line: d.line + max(0, (fieldLine(d.text, "spec.egress") ?? 1) - 1),
                                  message: "the config it gives the sidecars of namespace \(scope.namespace) would be refused: \(found.description)")
            }
        }
        try checkGatewayScopes(base)
    }

    /// Istio leaves a workload that two Sidecars with selectors select undefined: meshd refuses
    /// it, naming both and the workload (checked on every registration too).
    static func checkSidecarSelection(_ s: State, cfg: IstioTraffic.Config, placed: [(line: Int, doc: Document)]) throws(ConfigError) {
        guard cfg.sidecars.contains(where: { $0.selector != nil }) else { return }
        for k in s.workloads.keys.sorted() {
            let w = s.workloads[k]!
            let picked = IstioSidecar.applying(namespace: w.namespace, labels: w.labels, in: cfg.sidecars).filter { $0.selector != nil }
            guard picked.count > 1 else { continue }
            let e = ConfigError(file: "(the config that would result)", path: "Sidecar \(picked[1].namespace)/\(picked[1].name): spec.workloadSelector",
                                message: "selects the workload \(w.service).\(w.namespace) at \(w.address), as Sidecar \(picked[0].namespace)/\(picked[0].name) does (one Sidecar with a selector per workload: make the selectors exclusive)")
            throw locate(e, in: placed)
        }
    }

    /// Documents joined as one YAML text, with the line each starts on there.
    static func renderDocuments(_ docs: [Document], firstLine: Int = 1) -> (text: String, placed: [(line: Int, doc: Document)]) {
        var text = ""
        var line = firstLine
        var placed: [(Int, Document)] = []
        for (i, d) in docs.enumerated() {
            if i > 0 { text += "\n---\n"; line += 2 }
            placed.append((line, d))
            text += d.text
            line += d.text.utf8.reduce(0) { $0 + ($1 == 10 ? 1 : 0) }
        }
        return (text + "\n", placed)
    }

    /// An error found in a rendered set, told in the terms of the document it is about: its
    /// file, its number there and the line (when the error has one, or when its field path can
    /// be found in the document).
    static func locate(_ e: ConfigError, in placed: [(line: Int, doc: Document)]) -> ConfigError {
        var doc: Document? = nil
        var line = 0
        var path = e.path
        if e.line > 0, let p = placed.last(where: { $0.line <= e.line }) {
            doc = p.doc
            line = p.doc.line + (e.line - p.line)
        } else {
            // Errors about the set name the document as "Kind ns/name: field path".
            for p in placed where path.hasPrefix("\(p.doc.kind) \(p.doc.namespace)/\(p.doc.name): ") {
                doc = p.doc
                path = String(path.dropFirst("\(p.doc.kind) \(p.doc.namespace)/\(p.doc.name): ".count))
                line = p.doc.line + max(0, (fieldLine(p.doc.text, path) ?? 1) - 1)
                break
            }
        }
        guard let d = doc else {
            return ConfigError(file: e.file, document: e.document, path: e.path, line: e.line,
                               message: "\(e.message) (in the config meshd generates from the registry and the documents in force)")
        }
        let file = d.file.isEmpty ? "(in force: \(d.kind) \(d.namespace)/\(d.name))" : d.file
        return ConfigError(file: file, document: d.index, path: path.isEmpty ? "" : "\(d.kind) \(d.namespace)/\(d.name): \(path)",
                           line: line, message: e.message)
    }

    /// The line of a field path such as `spec.http[1].route[0].destination.host` in a document's text.
    static func fieldLine(_ text: String, _ path: String) -> Int? {
        guard let node = (try? YAML.parseDocuments(text))?.first?.node else { return nil }
        var n = node
        var best = node.line
        for part in path.split(separator: ".") {
            var name = Substring(part)
            var indexes: [Int] = []
            while let open = name.lastIndex(of: "["), name.hasSuffix("]"), let i = Int(name[name.index(after: open)..<name.index(before: name.endIndex)]) {
                indexes.insert(i, at: 0)
                name = name[..<open]
            }
            guard let m = n.asMapping, let e = m.entries.first(where: { $0.key == name }) else { return best }
            n = e.value
            best = e.keyLine
            for i in indexes {
                guard case .sequence(let seq) = n, i >= 0, i < seq.items.count else { return best }
                n = seq.items[i]
                best = n.line
            }
        }
        return best
    }

    /// The pushed config of the whole mesh (every cluster, every document a sidecar applies),
    /// with the line each document starts on; a sidecar is sent its scope's (`render(_:scope:)`).
    static func renderProxyConfig(_ s: State, trustDomain: String) -> (text: String, placed: [(line: Int, doc: Document)]) {
        render(RenderBase(s, trustDomain: trustDomain), scope: nil)
    }

    /// A host's allocated VIPs as text (IPv4, then IPv6), empty when it has none.
    static func vipTexts(_ v: VIPAllocator, _ host: String) -> [String] {
        guard let slot = v.slots[host] else { return [] }
        return [VIPAllocator.ipv4(slot), VIPAllocator.ipv6(slot)]
    }

    /// Gives a VIP to every mesh host of the state that has none (DESIGN §10 "DNS"): the
    /// clusters `renderProxyConfig` makes (`name.namespace` of registered services and of hosts
    /// that VirtualServices and DestinationRules name) and ServiceEntry hosts without
    /// `addresses`. A ServiceEntry's own addresses are never given to another host; one that
    /// meshd already gave to another host, or that two entries name, is refused by name.
    static func allocateVIPs(_ s: inout State) throws(ConfigError) {
        let hosts = try meshHosts(s)
        let reserved = Set(hosts.explicit.flatMap { $0.addresses.compactMap(VIPAllocator.slot(ofIPv4:)) })
        for h in hosts.auto where s.vips.slots[h] == nil {
            guard s.vips.allocate(h, reserved: reserved) != nil else {
                throw ConfigError(file: "(the config that would result)", message: "no free address left in 240.240.0.0/16 for \(h)")
            }
        }
    }

    /// The mesh hosts of a state: those meshd allocates for (sorted) and ServiceEntry hosts
    /// with their own addresses, checked against the allocated ones.
    static func meshHosts(_ s: State) throws(ConfigError) -> (auto: [String], explicit: [(host: String, addresses: [String])]) {
        let all = renderDocuments(s.order.compactMap { s.documents[$0] }).text
        let cfg = (try? IstioTraffic.parse(all, file: "(stored)")) ?? IstioTraffic.Config()
        func key(_ host: String, _ ns: String) -> String {
            let parts = host.split(separator: ".")
            return parts.count >= 2 ? "\(parts[0]).\(parts[1])" : "\(host).\(ns)"
        }
        var hosts = Set(s.workloads.values.map { "\($0.service).\($0.namespace)" })
        for vs in cfg.virtualServices {
            if vs.bound(.mesh) != nil { for h in vs.hosts { hosts.insert(key(h, vs.namespace)) } }   // a gateway-only host is no mesh host
            for r in vs.http { for d in r.route { hosts.insert(key(d.destination.host, vs.namespace)) } }
        }
        for dr in cfg.destinationRules { hosts.insert(key(dr.host, dr.namespace)) }
        var entryHosts: [String] = []
        var explicit: [(host: String, addresses: [String])] = []
        var named: [String: String] = [:]
        for se in cfg.serviceEntries {
            for h in se.hosts {
                hosts.remove(key(h, se.namespace))
                if se.addresses.isEmpty { entryHosts.append(h) }
            }
            if !se.addresses.isEmpty { explicit.append((se.hosts[0], se.addresses)) }
            for (i, a) in se.addresses.enumerated() {
                let at = "ServiceEntry \(se.namespace)/\(se.name): spec.addresses[\(i)]"
                if let other = named[a] {
                    throw ConfigError(file: "(the config that would result)", path: at, message: "\(a) is also the address of \(other)")
                }
                named[a] = se.hosts[0]
                if let slot = VIPAllocator.slot(ofIPv4: a), let owner = s.vips.owner(of: slot), owner != se.hosts[0] {
                    throw ConfigError(file: "(the config that would result)", path: at,
                                      message: "\(a) is the address meshd gave to \(owner); choose another (outside 240.240.0.0/16 is safest)")
                }
            }
        }
        return (hosts.union(entryHosts).sorted(), explicit)
    }
}
