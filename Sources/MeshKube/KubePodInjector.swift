import MeshYAML
import MeshAgent

/// Injects the sidecar into one pod template (a mapping with `metadata` and `spec`) and takes it
/// out again, using the status annotation as the record of what was added.
struct KubePodInjector {
    typealias O = KubeInjectOptions
    let doc: YAMLDocument
    let options: KubeInjectOptions
    /// The workload's own name (metadata.name), the last fallback for the service name.
    let workloadName: String?
    /// The object's metadata.namespace (nil: the namespace it is applied to).
    var workloadNamespace: String? = nil
    /// Warnings for the report (a probe left as it was, a Job that will not complete...).
    var notes: [String] = []

    init(doc: YAMLDocument, options: KubeInjectOptions, workloadName: String?) {
        self.doc = doc; self.options = options; self.workloadName = workloadName
    }

    var d: Int { doc.index }

    static func statusText(_ t: YAMLNode) -> String? {
        t["metadata"]?["annotations"]?[KubeInjectStatus.annotation]?.scalar
    }

    // MARK: inject

    /// Returns "injected (classic)" or the reason it was skipped.
    mutating func inject(_ t: inout YAMLNode, kind: String) throws(KubeError) -> String {
        guard t.pairs != nil else { throw KubeError(document: d, line: t.line, "the pod template: expected a mapping") }
        if KubePodInjector.statusText(t) != nil { try uninject(&t) }
        let s = try KubePodSettings.read(template: t, doc: doc)
        guard s.inject else { return "skipped (\(s.skipReason ?? "opted out"))" }
        let native = options.nativeSidecar
        if native && s.holdGiven && !s.hold {
            throw KubeError(document: d, line: t.line, "annotation proxy.istio.io/config: holdApplicationUntilProxyStarts: false cannot apply to a native sidecar (Kubernetes starts it before the app)")
        }
        guard let spec = t["spec"], spec.pairs != nil else { throw KubeError(document: d, line: t.line, "the pod template has no spec mapping") }
        guard let containers = spec["containers"]?.items, !containers.isEmpty else {
            throw KubeError(document: d, line: spec.line, "spec.containers: expected at least one container")
        }
        // Names this injection adds must be free.
        for (list, names) in [("containers", [O.proxyName, O.initName]), ("initContainers", [O.proxyName, O.initName]),
                              ("volumes", [O.tokenVolume, O.configVolume, O.podinfoVolume, O.initRunVolume])] {
            for item in spec[list]?.items ?? [] where names.contains(item["name"]?.scalar ?? "") {
                throw KubeError(document: d, line: item.line, "spec.\(list): \(item["name"]!.scalar!) is a name kube-inject adds (without its \(KubeInjectStatus.annotation) annotation)")
            }
        }
        var status = KubeInjectStatus()
        status.mode = native ? "native" : "classic"
        var app = try appInfo(t, containers)
        let serviceAccount = try checkedServiceAccount(spec)
        // Probes first (they change the app containers, and the sidecar needs their targets).
        try KubeWorkloads.edit(&t, ["spec", "containers"][...], document: d, where: "") { (list: inout YAMLNode) throws(KubeError) in
            for i in 0..<(list.items?.count ?? 0) {
                var c = list.items![i]
                try rewriteProbes(&c, settings: s, app: &app, status: &status)
                list.withItem(at: i) { $0 = c }
            }
        }
        if kind == "Job" || kind == "CronJob", !native {
            notes.append("a classic sidecar keeps a \(kind)'s pod running after the app exits; use --native-sidecar (Kubernetes 1.29+) so the pod completes")
        }
        try checkSidecarAccepts(KubeSidecarNodes.sidecarArgs(app, s, options), serviceAccount: serviceAccount, line: t.line)
        let initC = KubeSidecarNodes.initContainer(s, options)
        let hold = native || s.hold
        let proxy = KubeSidecarNodes.proxyContainer(app, s, options, native: native, hold: hold)
        try KubeWorkloads.edit(&t, ["spec"][...], document: d, where: "") { (spec: inout YAMLNode) throws(KubeError) in
            if spec["initContainers"] == nil {
                spec.set("initContainers", .sequence([]))
                status.created.append("spec.initContainers")
            }
            if spec["volumes"] == nil {
                spec.set("volumes", .sequence([]))
                status.created.append("spec.volumes")
            }
            try KubeWorkloads.edit(&spec, ["initContainers"][...], document: d, where: "spec") { (l: inout YAMLNode) throws(KubeError) in
                guard l.items != nil else { throw KubeError(document: d, line: l.line, "spec.initContainers: expected a list") }
                if native {
                    // First: capture, then the proxy, so later init containers' traffic goes through it.
                    l.insert(initC, at: 0)
                    l.insert(proxy, at: 1)
                } else {
                    // Last: earlier init containers run before capture (there is no proxy yet to serve them).
                    l.insert(initC, at: l.items!.count)
                }
            }
            status.initContainers = native ? [O.initName, O.proxyName] : [O.initName]
            if !native {
                try KubeWorkloads.edit(&spec, ["containers"][...], document: d, where: "spec") { (l: inout YAMLNode) throws(KubeError) in
                    l.insert(proxy, at: hold ? 0 : l.items!.count)
                }
                status.containers = [O.proxyName]
            }
            try KubeWorkloads.edit(&spec, ["volumes"][...], document: d, where: "spec") { (l: inout YAMLNode) throws(KubeError) in
                guard l.items != nil else { throw KubeError(document: d, line: l.line, "spec.volumes: expected a list") }
                for (name, v) in KubeSidecarNodes.volumes() {
                    l.insert(v, at: l.items!.count)
                    status.volumes.append(name)
                }
            }
        }
        // Annotations: what was added is recorded; the status goes last.
        if t["metadata"] == nil {
            t.set("metadata", .mapping([]))
            status.created.append("metadata")
        }
        let firstApp = containers.first?["name"]?.scalar
        try KubeWorkloads.edit(&t, ["metadata"][...], document: d, where: "") { (m: inout YAMLNode) throws(KubeError) in
            guard m.pairs != nil else { throw KubeError(document: d, line: m.line, "metadata: expected a mapping") }
            if m["annotations"] == nil || m["annotations"]!.isNull {
                // A null value (`annotations:` or `~`) is recorded as written, to be put back.
                status.created.append(m["annotations"].map { "metadata.annotations=" + ($0.scalar ?? "") } ?? "metadata.annotations")
                m.set("annotations", .mapping([]))
            }
            try KubeWorkloads.edit(&m, ["annotations"][...], document: d, where: "metadata") { (a: inout YAMLNode) throws(KubeError) in
                guard a.pairs != nil else { throw KubeError(document: d, line: a.line, "metadata.annotations: expected a mapping") }
                func add(_ k: String, _ v: String) {
                    a.set(k, .string(v))
                    status.annotations.append(k)
                }
                if !native && hold, let first = firstApp, a["kubectl.kubernetes.io/default-container"] == nil {
                    add("kubectl.kubernetes.io/default-container", first)
                }
                if a["prometheus.io/scrape"] == nil && a["prometheus.io/port"] == nil && a["prometheus.io/path"] == nil {
                    add("prometheus.io/scrape", "true")
                    add("prometheus.io/port", "\(O.statusPort)")
                    add("prometheus.io/path", "/stats/prometheus")
                }
                // Single-quoted, as Istio writes its status: JSON needs no escaping there.
                a.set(KubeInjectStatus.annotation, YAMLNode(kind: .scalar(status.json, .singleQuoted)))
            }
        }
        return "injected (\(status.mode))"
    }

    /// The service name, app port and protocol from the pod's labels and first container port.
    func appInfo(_ t: YAMLNode, _ containers: [YAMLNode]) throws(KubeError) -> KubeSidecarNodes.App {
        let labels = doc.lookup(t, "metadata").map { doc.resolve($0) }.flatMap { doc.lookup($0, "labels") }.map { doc.resolve($0) }
        var service: String? = nil
        for key in ["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"] {
            if let l = labels, let n = doc.lookup(l, key), let v = n.scalar, !v.isEmpty {
                guard KubePodInjector.isDNSLabel(v) else {
                    throw KubeError(document: d, line: n.line, "metadata.labels.\(key): \"\(v)\" cannot be the mesh service name (a DNS label: lower-case letters, digits and '-', at most 63)")
                }
                service = v
                break
            }
        }
        if service == nil, let w = workloadName, !KubePodInjector.isDNSLabel(w) {
            throw KubeError(document: d, line: t.line, "metadata.name \"\(w)\" cannot be the mesh service name (a DNS label); give the pod an app label")
        }
        guard let svc = service ?? workloadName else {
            throw KubeError(document: d, line: t.line, "no service name: give the pod an app or app.kubernetes.io/name label (or the workload a metadata.name)")
        }
        var app = KubeSidecarNodes.App(service: svc, port: nil, proto: "http")
        outer: for c in containers {
            for p in doc.lookup(c, "ports").map({ doc.resolve($0) })?.items ?? [] {
                let proto = doc.lookup(p, "protocol")?.scalar ?? "TCP"
                guard proto == "TCP", let v = doc.lookup(p, "containerPort")?.scalar, let n = Int(v), n >= 1, n <= 65535 else { continue }
                app.port = n
                app.proto = KubePodInjector.protocolOf(name: doc.lookup(p, "name")?.scalar)
                break outer
            }
        }
        return app
    }

    static func isDNSLabel(_ s: String) -> Bool {
        let u = Array(s.utf8)
        guard !u.isEmpty, u.count <= 63, u.first != UInt8(ascii: "-"), u.last != UInt8(ascii: "-") else { return false }
        return u.allSatisfy { ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == UInt8(ascii: "-") }
    }

    /// The pod's service account (its mesh identity), which must be a DNS label for the sidecar
    /// and meshd (Kubernetes also allows dots); nil: `default`.
    func checkedServiceAccount(_ spec: YAMLNode) throws(KubeError) -> String? {
        for key in ["serviceAccountName", "serviceAccount"] {
            guard let n = doc.lookup(spec, key), let v = n.scalar, !v.isEmpty else { continue }
            guard KubePodInjector.isDNSLabel(v) else {
                throw KubeError(document: d, line: n.line, "spec.\(key): \"\(v)\" cannot be a mesh identity (a DNS label: lower-case letters, digits and '-', at most 63)")
            }
            return v
        }
        return nil
    }

    /// The sidecar's own parser run on the command line written, with the values the kubelet
    /// would put in its `$(VAR)`s: what it would refuse in the pod is refused here.
    func checkSidecarAccepts(_ args: [String], serviceAccount: String?, line: Int) throws(KubeError) {
        let sample = ["MESHD_ADDRESS": "meshd.mesh-system.svc:15012", "POD_NAMESPACE": workloadNamespace ?? "default",
                      "SERVICE_ACCOUNT": serviceAccount ?? "default", "INSTANCE_IP": "10.0.0.1"]
        let expanded = args.map { a -> String in
            var a = a
            for (k, v) in sample { a = a.replacing("$(\(k))", with: v) }
            return a
        }
        do { _ = try SidecarMeshFlags.parse(expanded) } catch {
            throw KubeError(document: d, line: line, "the sidecar would refuse the command line written for it: \(error)")
        }
    }

    /// Istio's protocol selection by port name (`http2-*`, `grpc-*`, `tcp-*`...); unnamed: http.
    /// (A container port has no appProtocol; that field is the Service's.)
    static func protocolOf(name: String?) -> String {
        let word = (name ?? "").lowercased()
        let prefix = word.split(separator: "-", maxSplits: 1).first.map(String.init) ?? ""
        switch prefix {
        case "http2", "h2c": return "http2"
        case "grpc": return "grpc"
        case "tcp", "tls", "https", "mongo", "mysql", "redis", "kafka": return "tcp"
        default: return "http"
        }
    }

    /// Sends each HTTP probe of a captured port through the sidecar's status port (the kubelet's
    /// plaintext probe would otherwise meet mutual TLS); records the original for uninject.
    mutating func rewriteProbes(_ c: inout YAMLNode, settings s: KubePodSettings, app: inout KubeSidecarNodes.App,
                                status: inout KubeInjectStatus) throws(KubeError) {
        guard let cname = c["name"]?.scalar else { throw KubeError(document: d, line: c.line, "a container without a name") }
        /// The port a probe's `port` names (a number or one of the container's port names).
        func portNumber(_ node: YAMLNode, _ at: String) throws(KubeError) -> Int {
            if case .alias(let a) = node.kind { throw notInPlace(at, a, node.line) }
            let text = node.scalar ?? ""
            var port = Int(text)
            if port == nil {
                for cp in c["ports"]?.items ?? [] where cp["name"]?.scalar == text {
                    port = cp["containerPort"]?.scalar.flatMap { Int($0) }
                }
            }
            guard let n = port, n >= 1, n <= 65535 else {
                throw KubeError(document: d, line: node.line, "container \(cname) \(at): \"\(text)\" is not a port number or a port name of the container")
            }
            return n
        }
        func notInPlace(_ at: String, _ alias: String, _ line: Int) -> KubeError {
            KubeError(document: d, line: line, "container \(cname) \(at) is an alias (*\(alias)): kube-inject rewrites probes written in place only (write it out, or set sidecar.istio.io/rewriteAppHTTPProbers: \"false\")")
        }
        /// The line of `key` itself in mapping `m` (a value's own line is that of its first key).
        func keyLine(_ m: YAMLNode, _ key: String) -> Int { m.pairs?.first { $0.key.scalar == key }?.key.line ?? m.line }
        func captured(_ port: Int) -> Bool { (s.includeInbound?.contains(port) ?? true) && !s.excludeInbound.contains(port) }
        for (probe, word) in [("readinessProbe", "readyz"), ("livenessProbe", "livez"), ("startupProbe", "startupz")] {
            guard let p = c[probe] else { continue }
            // Without rewriting, the user answers for their probes (e.g. a PERMISSIVE port).
            guard s.rewriteProbes else { continue }
            if case .alias(let a) = p.kind { throw notInPlace(probe, a, p.line) }
            if p["<<"] != nil { throw KubeError(document: d, line: p.line, "container \(cname) \(probe): a merge key (<<) in a probe is not rewritten; write the probe out") }
            if let g = p["grpc"] {
                let port = try portNumber(g["port"] ?? g, "\(probe).grpc.port")
                if captured(port) {
                    throw KubeError(document: d, line: keyLine(p, "grpc"), "container \(cname) \(probe): a grpc probe on captured port \(port) would meet the sidecar's mutual TLS and fail; use an httpGet probe, exclude the port (traffic.sidecar.istio.io/excludeInboundPorts), or set sidecar.istio.io/rewriteAppHTTPProbers: \"false\" if the port is PERMISSIVE")
                }
                continue
            }
            if let t = p["tcpSocket"] {
                let port = try portNumber(t["port"] ?? t, "\(probe).tcpSocket.port")
                if captured(port) { notes.append("container \(cname) \(probe): a tcpSocket probe on captured port \(port) reaches the sidecar, so it checks the sidecar, not the app") }
                continue
            }
            guard let h = p["httpGet"] else { continue }
            if case .alias(let a) = h.kind { throw notInPlace("\(probe).httpGet", a, h.line) }
            if h["<<"] != nil { throw KubeError(document: d, line: h.line, "container \(cname) \(probe).httpGet: a merge key (<<) is not rewritten; write it out") }
            guard let portNode = h["port"] else {
                throw KubeError(document: d, line: h.line, "container \(cname) \(probe).httpGet: no port")
            }
            let target = try portNumber(portNode, "\(probe).httpGet.port")
            guard captured(target) else { continue }
            if let pathNode = h["path"], case .alias(let a) = pathNode.kind { throw notInPlace("\(probe).httpGet.path", a, pathNode.line) }
            if h["host"] != nil || h["httpHeaders"] != nil || (h["scheme"]?.scalar ?? "HTTP") != "HTTP" {
                throw KubeError(document: d, line: keyLine(p, "httpGet"), "container \(cname) \(probe).httpGet: a probe with host, httpHeaders or scheme HTTPS on captured port \(target) cannot be sent through the sidecar and would meet its mutual TLS; drop those fields, exclude the port, or set sidecar.istio.io/rewriteAppHTTPProbers: \"false\" if the port is PERMISSIVE")
            }

            var path = h["path"]?.scalar ?? "/"
            if !path.hasPrefix("/") { path = "/" + path }
            let statusPath = "/app-health/\(cname)/\(word)"
            app.probes.append("\(statusPath)=\(target)\(path)")
            // Recorded on one line (flow style); its own style is put back on uninject.
            var flat = h
            var blockStyle = false
            if case .mapping(let pairs, let flow) = h.kind { flat.kind = .mapping(pairs, flow: true); blockStyle = !flow }
            let original: String
            do { original = try YAML.emit(YAMLDocument(root: flat)) } catch {
                throw KubeError(document: d, line: h.line, "container \(cname) \(probe).httpGet: \(error)")
            }
            var line = Substring(original)
            while line.hasSuffix("\n") { line = line.dropLast() }
            status.probes.append(.init(container: cname, probe: probe, httpGet: String(line), block: blockStyle))
            c.withValue(probe) { p in
                p.withValue("httpGet") { h in
                    h.set("path", .string(statusPath))
                    h.set("port", .int(O.statusPort))
                }
            }
        }
    }

    // MARK: uninject

    /// Removes exactly what the status annotation records; a template without it is left alone.
    func uninject(_ t: inout YAMLNode) throws(KubeError) {
        guard let text = KubePodInjector.statusText(t) else { return }
        let st: KubeInjectStatus
        do { st = try KubeInjectStatus.parse(text) } catch {
            throw KubeError(document: d, line: t["metadata"]?["annotations"]?[KubeInjectStatus.annotation]?.line ?? t.line, error.message)
        }
        try KubeWorkloads.edit(&t, ["spec"][...], document: d, where: "") { (spec: inout YAMLNode) throws(KubeError) in
            for (list, names) in [("initContainers", st.initContainers), ("containers", st.containers), ("volumes", st.volumes)] {
                guard spec[list] != nil else { continue }
                spec.withValue(list) { l in
                    var i = (l.items?.count ?? 0) - 1
                    while i >= 0 {
                        if let n = l.items![i]["name"]?.scalar, names.contains(n) { l.removeItem(at: i) }
                        i -= 1
                    }
                }
            }
            for p in st.probes {
                guard var parsed = try? YAML.parse(p.httpGet).documents.first?.root else {
                    throw KubeError(document: d, line: spec.line, "annotation \(KubeInjectStatus.annotation): the recorded \(p.probe) of \(p.container) is not YAML")
                }
                if p.block, case .mapping(let pairs, _) = parsed.kind { parsed.kind = .mapping(pairs, flow: false) }
                spec.withValue("containers") { l in
                    for i in 0..<(l.items?.count ?? 0) where l.items![i]["name"]?.scalar == p.container {
                        l.withItem(at: i) { c in c.withValue(p.probe) { probe in probe.set("httpGet", parsed) } }
                    }
                }
            }
            for key in ["initContainers", "volumes"] where st.created.contains("spec.\(key)") {
                if spec[key]?.items?.isEmpty == true { spec.remove(key) }
            }
        }
        t.withValue("metadata") { m in
            m.withValue("annotations") { a in
                for k in st.annotations { a.remove(k) }
                a.remove(KubeInjectStatus.annotation)
            }
            if m["annotations"]?.pairs?.isEmpty == true {
                if st.created.contains("metadata.annotations") { m.remove("annotations") }
                else if let null = st.created.first(where: { $0.hasPrefix("metadata.annotations=") }) {
                    m.set("annotations", YAMLNode(kind: .scalar(String(null.dropFirst("metadata.annotations=".count)), .plain)))
                }
            }
        }
        if st.created.contains("metadata"), t["metadata"]?.pairs?.isEmpty == true { t.remove("metadata") }
    }
}
