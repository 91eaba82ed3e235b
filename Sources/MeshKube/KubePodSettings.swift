import MeshYAML
import MeshCapture

/// What a pod's annotations (and labels) ask of the injection, read and checked once: whether to
/// inject at all, the capture flags, the hold, probe rewriting, resources and concurrency.
/// Every `sidecar.mesh.io/*`, `sidecar.istio.io/*`, `traffic.sidecar.istio.io/*` and
/// `proxy.istio.io/config` annotation is either honoured here or refused by name.
struct KubePodSettings {
    var inject = true
    /// Why not, for the report ("sidecar.istio.io/inject: false", "hostNetwork").
    var skipReason: String? = nil
    /// `meshctl capture apply` flags from the traffic annotations (the status port excluded too).
    var captureFlags: [String] = []
    /// Inbound ports captured: nil = every port ('*'), else the list (for probe rewriting).
    var includeInbound: Set<Int>? = nil
    var excludeInbound: Set<Int> = []
    var hold = true
    var holdGiven = false
    var rewriteProbes = true
    var concurrency = KubeInjectOptions.defaultConcurrency
    var cpuRequest = "50m", memoryRequest = "32Mi"
    var cpuLimit: String? = nil, memoryLimit: String? = "512Mi"

    /// Annotations this tool reads (anything else under the mesh's and Istio's prefixes is refused).
    static let injectKeys = ["sidecar.istio.io/inject", "sidecar.mesh.io/inject"]
    static let trafficKeys = [
        "traffic.sidecar.istio.io/includeInboundPorts": "--include-inbound-ports",
        "traffic.sidecar.istio.io/excludeInboundPorts": "--exclude-inbound-ports",
        "traffic.sidecar.istio.io/excludeOutboundPorts": "--exclude-outbound-ports",
        "traffic.sidecar.istio.io/includeOutboundIPRanges": "--include-outbound-cidrs",
        "traffic.sidecar.istio.io/excludeOutboundIPRanges": "--exclude-outbound-cidrs",
    ]
    static let resourceKeys = ["sidecar.istio.io/proxyCPU", "sidecar.istio.io/proxyMemory",
                               "sidecar.istio.io/proxyCPULimit", "sidecar.istio.io/proxyMemoryLimit"]
    static let otherKeys = ["sidecar.istio.io/rewriteAppHTTPProbers", "sidecar.istio.io/interceptionMode",
                            "proxy.istio.io/config", KubeInjectStatus.annotation,
                            "prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path",
                            "kubectl.kubernetes.io/default-container"]

    /// Reads the pod template's annotations and labels. `doc` resolves aliases and merge keys.
    static func read(template: YAMLNode, doc: YAMLDocument) throws(KubeError) -> KubePodSettings {
        var s = KubePodSettings()
        let d = doc.index
        let meta = doc.lookup(template, "metadata").map { doc.resolve($0) }
        let annotations = meta.flatMap { doc.lookup($0, "annotations") }.map { doc.resolve($0) }
        let labels = meta.flatMap { doc.lookup($0, "labels") }.map { doc.resolve($0) }
        /// The annotation's string value and its line, refusing a non-string.
        func value(_ map: YAMLNode?, _ key: String, _ what: String) throws(KubeError) -> (String, Int)? {
            guard let map, let n = doc.lookup(map, key).map({ doc.resolve($0) }) else { return nil }
            guard let v = n.scalar, !n.isNull else {
                throw KubeError(document: d, line: n.line, "\(what) \(key): expected a string value")
            }
            return (v, n.line)
        }
        // Refuse what is not understood under the prefixes this tool owns.
        if let pairs = annotations?.pairs {
            for p in pairs {
                guard let k = p.key.scalar else { continue }
                let owned = k.hasPrefix("sidecar.mesh.io/") || k.hasPrefix("sidecar.istio.io/")
                    || k.hasPrefix("traffic.sidecar.istio.io/") || k.hasPrefix("proxy.istio.io/")
                if owned && !injectKeys.contains(k) && trafficKeys[k] == nil && !resourceKeys.contains(k) && !otherKeys.contains(k) {
                    if k == "sidecar.istio.io/status" {
                        throw KubeError(document: d, line: p.key.line, "annotation \(k): this pod was injected by Istio; remove Istio's injection first (istioctl x kube-uninject)")
                    }
                    throw KubeError(document: d, line: p.key.line, "annotation \(k) is not supported by meshctl kube-inject (docs/kubernetes.md lists the annotations it honours)")
                }
            }
        }
        for key in injectKeys {
            for (map, what) in [(annotations, "annotation"), (labels, "label")] {
                guard let (v, line) = try value(map, key, what) else { continue }
                switch v.lowercased() {
                case "false", "n", "no", "off": s.inject = false; s.skipReason = "\(what) \(key): \"\(v)\""
                case "true", "y", "yes", "on", "enabled": break
                default: throw KubeError(document: d, line: line, "\(what) \(key): expected \"true\" or \"false\", got \"\(v)\"")
                }
            }
        }
        if let spec = doc.lookup(template, "spec").map({ doc.resolve($0) }),
           let hn = doc.lookup(spec, "hostNetwork").map({ doc.resolve($0) }) {
            // As Kubernetes' YAML 1.1 reader sees it: `yes`, `True`, `on`... are true too.
            guard let on = KubePodSettings.yamlBool(hn) else {
                throw KubeError(document: d, line: hn.line, "spec.hostNetwork: expected true or false, got \"\(hn.scalar ?? "a collection")\"")
            }
            if on {
                s.inject = false
                s.skipReason = s.skipReason ?? "hostNetwork: true (capture would redirect the node's traffic)"
            }
        }
        if let (mode, line) = try value(annotations, "sidecar.istio.io/interceptionMode", "annotation"), mode != "REDIRECT" {
            throw KubeError(document: d, line: line, "annotation sidecar.istio.io/interceptionMode: only REDIRECT is supported, got \"\(mode)\"")
        }
        if let (v, line) = try value(annotations, "sidecar.istio.io/rewriteAppHTTPProbers", "annotation") {
            switch v { case "true": s.rewriteProbes = true; case "false": s.rewriteProbes = false
            default: throw KubeError(document: d, line: line, "annotation sidecar.istio.io/rewriteAppHTTPProbers: expected \"true\" or \"false\", got \"\(v)\"") }
        }
        for key in resourceKeys {
            guard let (v, line) = try value(annotations, key, "annotation") else { continue }
            guard KubePodSettings.isQuantity(v) else {
                throw KubeError(document: d, line: line, "annotation \(key): expected a Kubernetes quantity such as 100m or 128Mi, got \"\(v)\"")
            }
            switch key {
            case "sidecar.istio.io/proxyCPU": s.cpuRequest = v
            case "sidecar.istio.io/proxyMemory": s.memoryRequest = v
            case "sidecar.istio.io/proxyCPULimit": s.cpuLimit = v
            default: s.memoryLimit = v
            }
        }
        // A request above its limit is a pod the API server refuses.
        for (kind, req, lim, reqKey, limKey) in [("cpu", s.cpuRequest, s.cpuLimit, "proxyCPU", "proxyCPULimit"),
                                                  ("memory", s.memoryRequest, s.memoryLimit, "proxyMemory", "proxyMemoryLimit")] {
            guard let lim, let r = KubePodSettings.quantity(req), let l = KubePodSettings.quantity(lim), r > l else { continue }
            throw KubeError(document: d, line: annotations?.line ?? template.line,
                            "annotations sidecar.istio.io/\(reqKey) and \(limKey): the sidecar's \(kind) request \(req) is above its limit \(lim)")
        }
        if let (text, line) = try value(annotations, "proxy.istio.io/config", "annotation") {
            try s.readProxyConfig(text, line: line, document: d)
        }
        // Capture flags: the status port is never captured (the kubelet and Prometheus reach it).
        var flags: [String] = []
        var excludeIn = "\(KubeInjectOptions.statusPort)"
        for key in trafficKeys.keys.sorted() {
            guard let (v, line) = try value(annotations, key, "annotation") else { continue }
            let flag = trafficKeys[key]!
            let trimmed = v.filter { $0 != " " }
            if flag == "--exclude-inbound-ports" {
                let ports = trimmed.split(separator: ",").map(String.init).filter { $0 != "\(KubeInjectOptions.statusPort)" }
                if !ports.isEmpty { excludeIn += "," + ports.joined(separator: ",") }
                // Checked alone, so that an error names this annotation's own value.
                if !trimmed.isEmpty { try check([flag, trimmed], key: key, line: line, document: d) }
                continue
            }
            if trimmed.isEmpty {
                // Istio reads an empty include list as "capture nothing", which capture cannot do.
                if flag.hasPrefix("--include") {
                    throw KubeError(document: d, line: line, "annotation \(key): an empty value (no capture) is not supported; remove the sidecar with sidecar.mesh.io/inject: \"false\" instead")
                }
                continue
            }
            try check([flag, trimmed], key: key, line: line, document: d)
            flags += [flag, trimmed]
        }
        s.captureFlags = ["--exclude-inbound-ports", excludeIn] + flags
        do {
            let (_, o) = try CaptureOptions.parse(["apply"] + s.captureFlags)
            s.excludeInbound = Set(o.excludeInboundPorts)
            if case .ports(let list) = o.includeInboundPorts { s.includeInbound = Set(list) }
        } catch {
            throw KubeError(document: d, line: annotations?.line ?? 0, "the capture annotations together: \(error)")
        }
        return s
    }

    private static func check(_ flags: [String], key: String, line: Int, document: Int) throws(KubeError) {
        do { _ = try CaptureOptions.parse(["apply"] + flags) } catch {
            throw KubeError(document: document, line: line, "annotation \(key): \(error)")
        }
    }

    /// `proxy.istio.io/config`: a YAML/JSON ProxyConfig; holdApplicationUntilProxyStarts and
    /// concurrency are honoured, any other field is refused by name.
    private mutating func readProxyConfig(_ text: String, line: Int, document d: Int) throws(KubeError) {
        let key = "proxy.istio.io/config"
        let parsed: YAMLNode?
        do { parsed = try YAML.parse(text).documents.first?.root } catch {
            throw KubeError(document: d, line: line, "annotation \(key): not YAML: \(error.message)")
        }
        guard let root = parsed else { return }
        guard let pairs = root.pairs else { throw KubeError(document: d, line: line, "annotation \(key): expected a ProxyConfig mapping") }
        for p in pairs {
            let k = p.key.scalar ?? ""
            switch k {
            case "holdApplicationUntilProxyStarts":
                switch p.value.scalar { case "true": hold = true; case "false": hold = false
                default: throw KubeError(document: d, line: line, "annotation \(key): holdApplicationUntilProxyStarts: expected true or false") }
                holdGiven = true
            case "concurrency":
                guard let v = p.value.scalar, let n = Int(v), n >= 1, n <= 64 else {
                    throw KubeError(document: d, line: line, "annotation \(key): concurrency: expected a number of workers from 1 to 64")
                }
                concurrency = n
            default:
                throw KubeError(document: d, line: line, "annotation \(key): field \(k) is not supported (holdApplicationUntilProxyStarts and concurrency are)")
            }
        }
    }

    /// A boolean as YAML 1.1 (and so Kubernetes) reads an untagged plain scalar or a `!!bool`;
    /// nil for anything else.
    static func yamlBool(_ n: YAMLNode) -> Bool? {
        guard case .scalar(let v, let style) = n.kind else { return nil }
        guard style == .plain || n.tag == "tag:yaml.org,2002:bool" else { return nil }
        switch v {
        case "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON", "y", "Y": return true
        case "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF", "n", "N": return false
        default: return nil
        }
    }

    /// A quantity's value in base units (cores, bytes), to compare a request with a limit.
    static func quantity(_ v: String) -> Double? {
        guard isQuantity(v) else { return nil }
        let factors: [(String, Double)] = [("Ki", 1024), ("Mi", 1048576), ("Gi", 1073741824), ("Ti", 1099511627776),
                                           ("Pi", 1125899906842624), ("Ei", 1152921504606846976), ("m", 0.001), ("k", 1e3),
                                           ("M", 1e6), ("G", 1e9), ("T", 1e12), ("P", 1e15), ("E", 1e18)]
        for (suffix, f) in factors where v.hasSuffix(suffix) {
            return Double(v.dropLast(suffix.count)).map { $0 * f }
        }
        return Double(v)
    }

    /// A Kubernetes resource quantity (decimal with an optional SI or binary suffix).
    static func isQuantity(_ v: String) -> Bool {
        var digits = Substring(v)
        for suffix in ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "m", "k", "M", "G", "T", "P", "E"] where digits.hasSuffix(suffix) {
            digits = digits.dropLast(suffix.count)
            break
        }
        let parts = digits.split(separator: ".", omittingEmptySubsequences: false)
        guard !digits.isEmpty, parts.count <= 2 else { return false }
        return parts.allSatisfy { !$0.isEmpty && $0.allSatisfy { $0 >= "0" && $0 <= "9" } }
    }
}
