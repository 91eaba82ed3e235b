/// Istio's `telemetry.istio.io/v1` (and `v1alpha1`) Telemetry: how a workload's sidecar traces
/// and logs its requests (`selector.matchLabels`, `tracing[]`, `accessLogging[]`). Fields this
/// mesh does not honour (`targetRef(s)`, `metrics`, `tracing[].match`, ...) are refused by name.
/// Resolved per workload by `TelemetrySettings.resolve` (TelemetrySettings.swift).
public struct Telemetry: Sendable {
    public static let kind = "Telemetry"
    public static let apiVersions = ["telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1"]

    /// `accessLogging[].providers[].name` this mesh writes: `envoy` (Istio's built-in provider,
    /// Envoy's default text format) and `envoy-json` (this mesh's JSON line, docs/observability.md).
    public static let accessLogProviders = ["envoy", "envoy-json"]

    /// `accessLogging[].match.mode`: which side of the proxy logs.
    public enum WorkloadMode: String, Sendable, Equatable {
        case client = "CLIENT", server = "SERVER", clientAndServer = "CLIENT_AND_SERVER"
    }

    /// One `tracing[]` entry; nil fields are not set (a less specific resource's value stays).
    public struct Tracing: Sendable, Equatable {
        public var providers: [String]?
        public var randomSamplingPercentage: Double?
        public var disableSpanReporting: Bool?
        /// nil: not set; the tags in the order written.
        public var customTags: [TracingTag]?
    }

    /// One `accessLogging[]` entry.
    public struct AccessLogging: Sendable, Equatable {
        /// Empty: the default provider, `envoy`.
        public var providers: [String] = []
        public var disabled: Bool = false
        public var filter: AccessLogFilter?
        public var mode: WorkloadMode = .clientAndServer
    }

    public var name: String
    public var namespace: String
    /// `selector.matchLabels`; nil without a selector or with no labels in it (namespace-wide, or
    /// mesh-wide in the root namespace, as in Istio).
    public var selector: [(String, String)]?
    /// nil: the resource has no `tracing` (a less specific one's applies).
    public var tracing: Tracing?
    /// nil: the resource has no `accessLogging` (a less specific one's applies).
    public var accessLogging: [AccessLogging]?

    /// Whether this resource applies to a workload with these labels in this namespace: a
    /// resource without a selector in the root namespace applies to every workload; one without
    /// a selector to its namespace; one with a selector to the workloads it selects in its namespace.
    public func selects(namespace ns: String, labels: [(String, String)]) -> Bool {
        guard let sel = selector else { return ns == namespace || namespace == IstioSidecar.rootNamespace }
        guard ns == namespace else { return false }
        return sel.allSatisfy { s in labels.contains { $0.0 == s.0 && $0.1 == s.1 } }
    }

    static func parse(_ spec: inout ConfigReader, name: String, namespace: String, ctx: ConfigError) throws(ConfigError) -> Telemetry {
        var t = Telemetry(name: name, namespace: namespace)
        if var sel = try spec.object("selector") {
            let labels = try sel.stringMap("matchLabels") ?? []
            try sel.finish()
            // Istio: a selector without labels (`selector: {}`) is no selector, the resource
            // applies to its whole namespace (and counts as that namespace's one selectorless).
            if !labels.isEmpty {
                if namespace == IstioSidecar.rootNamespace {
                    throw ConfigReader.error(ctx, "spec.selector", sel.map.line,
                                             "a Telemetry in the root namespace \(IstioSidecar.rootNamespace) is mesh-wide and takes no selector (as in Istio); put a workload's Telemetry in its own namespace")
                }
                t.selector = labels
            }
        }
        try spec.refuse("targetRef")
        try spec.refuse("targetRefs")
        try spec.refuse("metrics")
        if let list = try spec.objectList("tracing") {
            if list.count > 1 {
                throw ConfigReader.error(ctx, "spec.tracing[1]", list[1].map.line,
                                         "at most one tracing entry (per-mode tracing[].match is not supported yet)")
            }
            var tr = Tracing()
            for var r in list {
                try r.refuse("match")
                try r.refuse("useRequestIdForTraceSampling")
                try r.refuse("enableIstioTags")
                if let ps = try r.objectList("providers") {
                    var names: [String] = []
                    for var p in ps {
                        names.append(try p.string("name", required: true)!)
                        try Telemetry.checkTracingProvider(names[names.count - 1], index: names.count - 1, reader: r, line: p.map.line, ctx: ctx)
                        try p.finish()
                    }
                    tr.providers = names
                }
                if let n = r.node("randomSamplingPercentage") {
                    guard case .scalar(let s) = n, !s.quoted, let v = Double(s.value), v.isFinite else {
                        throw ConfigReader.error(ctx, r.sub("randomSamplingPercentage"), n.line, "expected a number from 0 to 100, got \(ConfigReader.describe(n))")
                    }
                    guard v >= 0 && v <= 100 else {
                        throw ConfigReader.error(ctx, r.sub("randomSamplingPercentage"), n.line, "must be between 0 and 100, got \(s.value)")
                    }
                    tr.randomSamplingPercentage = v
                }
                tr.disableSpanReporting = try r.bool("disableSpanReporting")
                if let n = r.node("customTags") {
                    tr.customTags = try customTags(n, path: r.sub("customTags"), ctx: ctx)
                }
                try r.finish()
            }
            t.tracing = tr
        }
        if let list = try spec.objectList("accessLogging") {
            var out: [AccessLogging] = []
            for var r in list {
                var a = AccessLogging()
                for (i, var p) in (try r.objectList("providers") ?? []).enumerated() {
                    let n = try p.string("name", required: true)!
                    guard accessLogProviders.contains(n) else {
                        throw ConfigReader.error(ctx, "\(r.sub("providers"))[\(i)].name", p.map.line,
                                                 "unknown access log provider \"\(n)\" (this mesh writes: \(accessLogProviders.joined(separator: ", ")))")
                    }
                    try p.finish()
                    if !a.providers.contains(n) { a.providers.append(n) }
                }
                a.disabled = try r.bool("disabled") ?? false
                if var f = try r.object("filter") {
                    let text = try f.string("expression", required: true)!
                    do throws(AccessLogFilterError) { a.filter = try AccessLogFilter(text) } catch {
                        throw ConfigReader.error(ctx, f.sub("expression"), f.map.line, "\(error.message) (in \"\(text)\")")
                    }
                    try f.finish()
                }
                if var m = try r.object("match") {
                    if let mode = try m.string("mode") {
                        guard let v = WorkloadMode(rawValue: mode) else {
                            throw ConfigReader.error(ctx, m.sub("mode"), m.map.line, "expected CLIENT, SERVER or CLIENT_AND_SERVER, got \"\(mode)\"")
                        }
                        a.mode = v
                    }
                    try m.finish()
                }
                try r.finish()
                out.append(a)
            }
            t.accessLogging = out
        }
        return t
    }

    /// `customTags`: a map of tag name to exactly one of `literal`, `header`, `environment`.
    private static func customTags(_ node: YAMLNode, path: String, ctx: ConfigError) throws(ConfigError) -> [TracingTag] {
        guard case .mapping(let m) = node else { throw ConfigReader.error(ctx, path, node.line, "expected a mapping of tag names, got \(ConfigReader.describe(node))") }
        var out: [TracingTag] = []
        for e in m.entries {
            let p = "\(path).\(e.key)"
            guard !e.key.isEmpty, e.key.utf8.count <= 256, e.key.utf8.allSatisfy({ $0 > 32 && $0 < 127 && $0 != 34 && $0 != 92 }) else {
                throw ConfigReader.error(ctx, p, e.keyLine, "expected a tag name of printable ASCII without spaces or quotes")
            }
            if TracingTag.builtInNames.contains(e.key) {
                throw ConfigReader.error(ctx, p, e.keyLine, "\"\(e.key)\" is a tag every span already has (OTLP attribute keys are unique): choose another name")
            }
            var r = try ConfigReader(e.value, path: p, context: ctx)
            var sources: [TracingTag.Source] = []
            if var l = try r.object("literal") {
                sources.append(.literal(try l.string("value") ?? ""))
                try l.finish()
            }
            if var h = try r.object("header") {
                let n = try h.string("name", required: true)!
                guard RequestAuthentication.isHeaderName(n) else {
                    throw ConfigReader.error(ctx, h.sub("name"), h.map.line, "expected a header name, got \"\(n)\"")
                }
                sources.append(.header(name: n.lowercased(), defaultValue: try h.string("defaultValue")))
                try h.finish()
            }
            if var v = try r.object("environment") {
                let n = try v.string("name", required: true)!
                sources.append(.environment(name: n, defaultValue: try v.string("defaultValue")))
                try v.finish()
            }
            try r.finish()
            guard sources.count == 1 else {
                throw ConfigReader.error(ctx, p, e.keyLine, "give exactly one of literal, header or environment")
            }
            out.append(TracingTag(name: e.key, source: sources[0]))
        }
        return out
    }

    /// Istio: at most one Telemetry without a selector per namespace (the root namespace's is the mesh's).
    static func validate(_ all: [Telemetry], file: String) throws(ConfigError) {
        var seen: [String: String] = [:]
        for t in all where t.selector == nil {
            if let other = seen[t.namespace] {
                throw ConfigError(file: file, path: "Telemetry \(t.namespace)/\(t.name): spec.selector",
                                  message: "Telemetry \(t.namespace)/\(other) already applies to the whole namespace \(t.namespace) (at most one Telemetry without a selector per namespace)")
            }
            seen[t.namespace] = t.name
        }
    }
}

extension Telemetry {
    init(name: String, namespace: String) {
        self.name = name
        self.namespace = namespace
    }
}

extension TracingTag {
    /// The attribute keys the sidecar writes on every span (SpanEncoder, TracingTable): a
    /// custom tag may not repeat one (refused at apply, by meshd and the sidecar alike).
    public static let builtInNames: Set<String> = [
        "http.method", "http.url", "http.status_code", "http.protocol", "grpc.status_code", "response_flags",
        "upstream_cluster", "route_name", "node_id", "istio.canonical_service", "istio.canonical_revision",
        "istio.namespace", "istio.mesh_id", "downstream_cluster", "peer.address", "guid:x-request-id",
        "user_agent", "request_size", "response_size",
    ]
}
