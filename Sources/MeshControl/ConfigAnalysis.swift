import MeshConfig
import MeshCore

/// One thing `meshctl analyze` found in a set of config files: the level, a stable code (Istio's
/// `IST…` code where the meaning is Istio's, `MESH…` for ours), the resource and where it is
/// written, and what to do about it.
public struct ConfigFinding: Sendable, Equatable {
    public enum Level: Int, Sendable, Comparable {
        case info = 0, warning = 1, error = 2
        public var name: String { ["Info", "Warning", "Error"][rawValue] }
        public static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
        /// `Error`, `Warning` or `Info` (any case), as istioctl's `--failure-threshold` takes them.
        public init?(name: String) {
            switch name.lowercased() {
            case "error": self = .error
            case "warning": self = .warning
            case "info": self = .info
            default: return nil
            }
        }
    }
    public var level: Level
    public var code: String
    /// `Kind namespace/name`, or empty when the finding is about the set as a whole.
    public var resource: String
    public var file: String
    public var line: Int
    public var message: String

    /// `Warning [IST0101] (VirtualService default/reviews vs.yaml:3) message`, the shape of
    /// `istioctl analyze`'s lines; escaped, since names and values come from input.
    public var text: String {
        var at = resource
        if !file.isEmpty { at += (at.isEmpty ? "" : " ") + file + (line > 0 ? ":\(line)" : "") }
        return Printable.escaped("\(level.name) [\(code)]\(at.isEmpty ? "" : " (\(at))") \(message)")
    }
}

/// `meshctl analyze`: a set of config files checked offline, as meshd would check an apply of
/// them to an empty store (the same code: the sidecar's parsers and meshd's render-and-check),
/// and then looked at for what is accepted but probably not meant: a destination host nothing
/// defines, a subset no route uses, a policy whose selector selects no workload known, a route
/// that an earlier catch-all route hides. Workloads register at run time, so which services and
/// labels exist is known only from the files (ServiceEntry, WorkloadEntry) and from what the
/// caller adds (`known`): the registry of a running meshd, or services named on the command line.
public enum ConfigAnalysis {
    /// A workload known to exist: a registered one (from meshd) or one named by the operator.
    public struct KnownWorkload: Sendable {
        public var service: String
        public var namespace: String
        public var labels: [(String, String)]
        public init(service: String, namespace: String, labels: [(String, String)] = []) {
            self.service = service; self.namespace = namespace; self.labels = labels
        }
    }

    /// Every finding, errors first (an error stops the analysis: what follows it would be read
    /// from a set meshd refuses), then by file and line.
    public static func analyze(_ inputs: [ConfigStore.Input], known: [KnownWorkload] = [], trustDomain: String = "cluster.local") -> [ConfigFinding] {
        var docs: [ConfigStore.Document] = []
        do throws(ConfigError) {
            for input in inputs {
                let split = try ConfigStore.split(input.text, file: input.file)
                for d in split {
                    guard ConfigStore.storedKinds.contains(d.kind) else {
                        throw ConfigError(file: d.file, document: d.index, line: d.line,
                                          message: "kind \(d.kind) is not stored by meshd yet (supported: \(ConfigStore.storedKinds.sorted().joined(separator: ", ")))")
                    }
                    if let prev = docs.first(where: { $0.key == d.key }) {
                        throw ConfigError(file: d.file, document: d.index, line: d.line,
                                          message: "\(d.kind) \(d.namespace)/\(d.name) is given twice (also \(prev.file):\(prev.line))")
                    }
                    docs.append(d)
                }
            }
            var state = ConfigStore.State()
            for d in docs { state.documents[d.key] = d; state.order.append(d.key) }
            for (i, w) in known.enumerated() {
                let id = "spiffe://\(trustDomain)/ns/\(w.namespace)/sa/\(w.service)"
                state.workloads["\(id)|analyze-\(i)"] = ConfigStore.Workload(identity: id, service: w.service, namespace: w.namespace, labels: w.labels,
                                                                              address: "127.0.0.1:\(15006 + i % 1000)", lastSeen: 0, connected: true)
            }
            try ConfigStore.allocateVIPs(&state)
            try ConfigStore.check(state, trustDomain: trustDomain)
            try ConfigStore.checkAppliedCanaries(state, incoming: docs)
        } catch {
            return [ConfigFinding(level: .error, code: "MESH0001", resource: "", file: error.file, line: error.line,
                                  message: "refused, as meshd would refuse it: " + errorText(error))]
        }
        let cfg: IstioTraffic.Config
        do {
            cfg = try IstioTraffic.parse(ConfigStore.renderDocuments(docs).text, file: "(the files)")
        } catch {
            return [ConfigFinding(level: .error, code: "MESH0001", resource: "", file: error.file, line: error.line, message: errorText(error))]
        }
        var out: [ConfigFinding] = []
        let at = { (kind: String, ns: String, name: String) -> (String, String, Int) in
            let d = docs.first { $0.kind == kind && $0.namespace == ns && $0.name == name }
            return ("\(kind) \(ns)/\(name)", d?.file ?? "", d?.line ?? 0)
        }
        func add(_ level: ConfigFinding.Level, _ code: String, _ kind: String, _ ns: String, _ name: String, _ message: String) {
            let w = at(kind, ns, name)
            out.append(ConfigFinding(level: level, code: code, resource: w.0, file: w.1, line: w.2, message: message))
        }

        // Hosts something defines: ServiceEntry hosts, and services of known workloads.
        var serviceNames = Set<String>()   // every spelling: name, name.ns, FQDN
        for w in known { serviceNames.formUnion(Bootstrap.expandedHosts(w.service, namespace: w.namespace).dropFirst()) }
        var entryHosts: [String] = []
        for se in cfg.serviceEntries { entryHosts += se.hosts }
        func defined(_ host: String, in ns: String) -> Bool {
            let spellings = Bootstrap.expandedHosts(host, namespace: ns)
            if spellings.contains(where: { serviceNames.contains($0) }) { return true }
            for h in entryHosts {
                if h == host || spellings.contains(h) { return true }
                if h.hasPrefix("*.") && host.hasSuffix(h.dropFirst()) { return true }
            }
            return false
        }
        let hint = known.isEmpty ? " (offline: give --service NAME.NAMESPACE for services your workloads register, or --use-meshd)" : ""
        for vs in cfg.virtualServices {
            var hosts: [(String, String)] = []
            for (i, r) in vs.http.enumerated() {
                hosts += r.route.map { ($0.destination.host, "http[\(i)]") }
                if let m = r.mirror { hosts.append((m.host, "http[\(i)].mirror")) }
            }
            for (i, r) in vs.tcp.enumerated() { hosts += r.route.map { ($0.destination.host, "tcp[\(i)]") } }
            var seen = Set<String>()
            for (h, path) in hosts where !defined(h, in: vs.namespace) && seen.insert(h).inserted {
                add(.warning, "IST0101", "VirtualService", vs.namespace, vs.name,
                    "\(path): destination host \"\(h)\" is not a ServiceEntry host here nor a service known\(hint)")
            }
            // A Gateway named in `gateways` that no Gateway document here defines (IST0101).
            let named = Set(vs.gateways + vs.http.flatMap { $0.match.flatMap(\.gateways) })
            for g in named.sorted() where g != IstioTraffic.meshGateway {
                let key = IstioTraffic.gatewayKey(g, namespace: vs.namespace)
                if !cfg.gateways.contains(where: { "\($0.namespace)/\($0.name)" == key }) {
                    add(.warning, "IST0101", "VirtualService", vs.namespace, vs.name, "gateway \"\(g)\" is not a Gateway in these files")
                }
            }
            // A route after one that matches every request is never used (Istio's IST0131).
            if let all = vs.http.firstIndex(where: { r in r.match.isEmpty || r.match.contains(where: matchesEverything) }),
               all + 1 < vs.http.count {
                for i in (all + 1)..<vs.http.count {
                    add(.warning, "IST0131", "VirtualService", vs.namespace, vs.name,
                        "http[\(i)]\(vs.http[i].name.map { " (\($0))" } ?? "") is never used: http[\(all)] before it matches every request")
                }
            }
        }
        for dr in cfg.destinationRules {
            if !defined(dr.host, in: dr.namespace) {
                add(.warning, "IST0101", "DestinationRule", dr.namespace, dr.name,
                    "spec.host \"\(dr.host)\" is not a ServiceEntry host here nor a service known\(hint)")
            }
            let drHosts = Set(Bootstrap.expandedHosts(dr.host, namespace: dr.namespace).dropFirst(dr.host.contains(".") ? 0 : 1))
            for s in dr.subsets {
                let used = cfg.virtualServices.contains { vs in
                    let dests = vs.http.flatMap { r in r.route.map(\.destination) + (r.mirror.map { [$0] } ?? []) } + vs.tcp.flatMap { $0.route.map(\.destination) }
                    return dests.contains { d in d.subset == s.name && !drHosts.isDisjoint(with: Bootstrap.expandedHosts(d.host, namespace: vs.namespace)) }
                }
                if !used {
                    add(.warning, "MESH0002", "DestinationRule", dr.namespace, dr.name,
                        "subset \"\(s.name)\" is used by no VirtualService route in these files")
                }
            }
        }
        // Selectors: the labels of workloads known (registered, WorkloadEntries, inline endpoints).
        var workloads: [(ns: String, labels: [(String, String)])] = known.map { ($0.namespace, $0.labels) }
        for we in cfg.workloadEntries { workloads.append((we.namespace, we.endpoint.labels)) }
        for se in cfg.serviceEntries { for e in se.endpoints { workloads.append((se.namespace, e.labels)) } }
        func selectsSome(_ ns: String, _ sel: [(String, String)]) -> Bool {
            workloads.contains { w in w.ns == ns && sel.allSatisfy { s in w.labels.contains { $0.0 == s.0 && $0.1 == s.1 } } }
        }
        let what = known.isEmpty ? "no workload in these files (WorkloadEntry, ServiceEntry endpoints)" : "no workload known"
        for p in cfg.authorizationPolicies { if let s = p.selector, !selectsSome(p.namespace, s) {
            add(.warning, "MESH0003", "AuthorizationPolicy", p.namespace, p.name, "spec.selector selects \(what): the policy applies nowhere")
        } }
        for p in cfg.peerAuthentications { if let s = p.selector, !selectsSome(p.namespace, s) {
            add(.warning, "MESH0003", "PeerAuthentication", p.namespace, p.name, "spec.selector selects \(what): the policy applies nowhere")
        } }
        for p in cfg.requestAuthentications { if let s = p.selector, !selectsSome(p.namespace, s) {
            add(.warning, "MESH0003", "RequestAuthentication", p.namespace, p.name, "spec.selector selects \(what): the policy applies nowhere")
        } }
        for sc in cfg.sidecars { if let s = sc.selector, !selectsSome(sc.namespace, s) {
            add(.warning, "MESH0003", "Sidecar", sc.namespace, sc.name, "spec.workloadSelector selects \(what): the Sidecar applies nowhere")
        } }
        return out.sorted { a, b in
            if a.level != b.level { return a.level > b.level }
            return (a.file, a.line) < (b.file, b.line)
        }
    }

    /// A match entry with no condition at all: every request (on every proxy it binds to) matches it.
    static func matchesEverything(_ m: IstioTraffic.HTTPMatch) -> Bool {
        let x = m.extras
        return m.uri == nil && m.method == nil && m.headers.isEmpty && m.gateways.isEmpty && x.queryParams.isEmpty && x.authority == nil
            && x.port == nil && x.scheme == nil && x.withoutHeaders.isEmpty && x.sourceLabels == nil && x.sourceNamespace == nil
    }

    /// The error without its file and line (the finding carries them).
    private static func errorText(_ e: ConfigError) -> String {
        var s = ""
        if e.document > 0 { s += "document \(e.document): " }
        if !e.path.isEmpty { s += "\(e.path): " }
        return s + e.message
    }
}
