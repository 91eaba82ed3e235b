import MeshConfig
import MeshCore

/// How meshd turns its state into what it checks and pushes (DESIGN §3, §5): the whole set
/// validated with the sidecar's own code, the pushed `ProxyConfig` rendered from the registry
/// and the documents in force, errors moved back to the operator's file and line, and the
/// mesh hosts that get VIPs.
extension ConfigStore {
    /// The whole set must hold together (subsets defined, hosts routed once, ...) and the config
    /// meshd would push must be one that a sidecar accepts, in every namespace that has one. An
    /// error is moved back to the document, file and line it came from.
    static func check(_ s: State, trustDomain: String) throws(ConfigError) {
        let stored = renderDocuments(s.order.compactMap { s.documents[$0] })
        do { _ = try IstioTraffic.parse(stored.text, file: "(the config that would result)") } catch {
            throw locate(error, in: stored.placed)
        }
        let push = renderProxyConfig(s, trustDomain: trustDomain)
        // Every namespace a sidecar is known in: registered workloads, and connected callers
        // (spiffe://TD/ns/NS/sa/SA), which register nothing.
        let callers = s.proxies.values.compactMap { p -> String? in
            let parts = p.identity.split(separator: "/")
            return parts.count >= 5 && parts[parts.count - 4] == "ns" ? String(parts[parts.count - 3]) : nil
        }
        let namespaces = Set(s.workloads.values.map(\.namespace)).union(callers).union(["default"]).sorted()
        for ns in namespaces {
            do { try Bootstrap.checkPushed(push.text, namespace: ns, source: "(the config meshd would push)") } catch {
                throw locate(error, in: push.placed)
            }
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

    /// The pushed config for a state: a `ProxyConfig` document (every service a cluster, default
    /// routes) followed by the documents a sidecar applies itself, with the line each of those
    /// starts on. Every value that came from input is written quoted (`YAML.quoted`), so the
    /// text always parses back to the same strings.
    static func renderProxyConfig(_ s: State, trustDomain: String) -> (text: String, placed: [(line: Int, doc: Document)]) {
        let q = YAML.quoted
        // The stored set, parsed (it was validated when applied).
        let all = renderDocuments(s.order.compactMap { s.documents[$0] }).text
        let cfg = (try? IstioTraffic.parse(all, file: "(stored)")) ?? IstioTraffic.Config()
        func key(_ host: String, _ ns: String) -> String {
            let parts = host.split(separator: ".")
            return parts.count >= 2 ? "\(parts[0]).\(parts[1])" : "\(host).\(ns)"
        }
        var services: [String: [Workload]] = [:]
        for w in s.workloads.values { services["\(w.service).\(w.namespace)", default: []].append(w) }
        // Hosts a VirtualService routes or a DestinationRule names need a cluster even before
        // any endpoint registers (requests get 503 UH, not a refused config).
        var names = Set(services.keys)
        var routed = Set<String>()
        for vs in cfg.virtualServices {
            for h in vs.hosts { names.insert(key(h, vs.namespace)); routed.insert(key(h, vs.namespace)) }
            for r in vs.http { for d in r.route { names.insert(key(d.destination.host, vs.namespace)) } }
        }
        for dr in cfg.destinationRules { names.insert(key(dr.host, dr.namespace)) }
        // ServiceEntries: their hosts become clusters of their own (names as written).
        var entryClusters: [(name: String, mtls: Bool, sans: [String], endpoints: [String], proto: String, port: Int, addresses: [String])] = []
        for se in cfg.serviceEntries {
            var eps = se.endpoints
            if let sel = se.workloadSelector {
                eps += cfg.workloadEntries.filter { we in we.namespace == se.namespace
                    && sel.allSatisfy { l in we.endpoint.labels.contains { $0.0 == l.0 && $0.1 == l.1 } } }.map(\.endpoint)
            }
            let port = se.ports[0]
            let sas = Set(eps.compactMap(\.serviceAccount))
            let mtls = se.meshInternal && !eps.isEmpty && eps.allSatisfy { $0.serviceAccount != nil }
            let rendered = eps.map { e -> String in
                let p = e.ports.first { $0.0 == port.name }?.1 ?? port.number
                let labels = e.labels.map { "\(q($0.0)): \(q($0.1))" }.joined(separator: ", ")
                return "{address: \(q("\(e.address):\(p)")), labels: {\(labels)}}"
            }
            for h in se.hosts {
                names.remove(key(h, se.namespace))
                entryClusters.append((h, mtls, sas.sorted().map { "spiffe://\(trustDomain)/ns/\(se.namespace)/sa/\($0)" }, rendered,
                                      port.proto, port.number, se.addresses.isEmpty ? ConfigStore.vipTexts(s.vips, h) : se.addresses))
            }
        }
        let declared = DeclaredProtocol.all(in: cfg)
        var out = "apiVersion: sidecar.mesh/v1alpha1\nkind: ProxyConfig\nmetadata: {name: v\(s.version)}\nspec:\n  clusters:\n"
        let sorted = names.sorted()
        for k in sorted {
            // Named service.namespace: the same service name in two namespaces are two clusters.
            let eps = (services[k] ?? []).sorted { $0.address < $1.address }
            out += "  - name: \(q(k))\n    tls: ISTIO_MUTUAL\n"
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
        }
        for c in entryClusters {
            out += "  - name: \(q(c.name))\n    tls: \(c.mtls ? "ISTIO_MUTUAL" : "DISABLE")\n"
            if c.proto != "HTTP" { out += "    serviceProtocol: \(c.proto)\n" }
            out += "    port: \(c.port)\n"
            if !c.addresses.isEmpty { out += "    addresses: [\(c.addresses.map(q).joined(separator: ", "))]\n" }
            if c.mtls && !c.sans.isEmpty { out += "    subjectAltNames: [\(c.sans.map(q).joined(separator: ", "))]\n" }
            out += "    endpoints:\n"
            if c.endpoints.isEmpty { out += "      []\n" }
            for e in c.endpoints { out += "      - \(e)\n" }
        }
        var routes = ""
        for k in sorted where !routed.contains(k) {
            routes += "  - name: \(q(k))\n    hosts: [\(q(k))]\n    cluster: \(q(k))\n"
        }
        for (i, c) in entryClusters.enumerated() where !routed.contains(key(c.name, "default")) {
            routes += "  - name: entry-\(i)\n    hosts: [\(q(c.name))]\n    cluster: \(q(c.name))\n"
        }
        out += routes.isEmpty ? "  routes: []\n" : "  routes:\n" + routes
        out += "  outboundTrafficPolicy: {mode: \(s.outboundTrafficPolicy.rawValue)}\n"
        // The documents a sidecar applies itself (entries are rendered into clusters above).
        let own = s.order.compactMap { s.documents[$0] }.filter { $0.kind != "ServiceEntry" && $0.kind != "WorkloadEntry" }
        guard !own.isEmpty else { return (out, []) }
        out += "---\n"
        let firstLine = out.utf8.reduce(1) { $0 + ($1 == 10 ? 1 : 0) }
        let docs = renderDocuments(own, firstLine: firstLine)
        return (out + docs.text, docs.placed)
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
            for h in vs.hosts { hosts.insert(key(h, vs.namespace)) }
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
