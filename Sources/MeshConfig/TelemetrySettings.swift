/// What the Telemetry resources in force say for one workload, resolved (mesh-wide in the root
/// namespace `IstioSidecar.rootNamespace` < namespace-wide < workload selector; Istio's precedence).
///
/// As Istio documents it, a more specific resource overrides what it sets: `tracing` field by
/// field (`providers`, `randomSamplingPercentage`, `disableSpanReporting`, `customTags` each
/// replace the less specific value when set), `accessLogging` as a whole (the most specific
/// resource that has an `accessLogging` list decides; `[{disabled: true}]` turns logs off).
/// Where Istio calls two resources at one level invalid (two selecting one workload), the first
/// by name applies.
public struct TelemetrySettings: Sendable, Equatable {
    public var tracing: TracingSettings = TracingSettings()
    /// nil: no Telemetry sets `accessLogging` for this workload (a static bootstrap's
    /// `spec.accessLog` applies; in mesh mode, no access log).
    public var accessLogging: AccessLogSettings? = nil

    public init() {}

    public static func resolve(_ docs: [Telemetry], namespace: String, labels: [(String, String)]) -> TelemetrySettings {
        let byName = docs.sorted { ($0.namespace, $0.name) < ($1.namespace, $1.name) }
        let root = namespace == IstioSidecar.rootNamespace
            ? nil : byName.first { $0.namespace == IstioSidecar.rootNamespace && $0.selector == nil }
        let ns = byName.first { $0.namespace == namespace && $0.selector == nil }
        let wl = byName.first { $0.namespace == namespace && $0.selector != nil && $0.selects(namespace: namespace, labels: labels) }
        var out = TelemetrySettings()
        for t in [root, ns, wl] {
            guard let t else { continue }
            if let tr = t.tracing {
                if let v = tr.providers { out.tracing.providers = v }
                if let v = tr.randomSamplingPercentage { out.tracing.randomSamplingPercentage = v }
                if let v = tr.disableSpanReporting { out.tracing.disableSpanReporting = v }
                if let v = tr.customTags { out.tracing.customTags = v }
            }
            if let al = t.accessLogging { out.accessLogging = AccessLogSettings(al) }
        }
        return out
    }
}

/// `spec.tracing[0]` resolved.
public struct TracingSettings: Sendable, Equatable {
    public var randomSamplingPercentage: Double = 1.0    // 0...100; Istio's default 1%
    public var disableSpanReporting: Bool = false
    public var customTags: [TracingTag] = []
    /// `providers[].name` as written (empty: the mesh's default tracing provider).
    public var providers: [String] = []
    public init() {}
}

/// One `customTags` entry: `literal.value`, `header.name` (+ `defaultValue`), `environment.name` (+ `defaultValue`).
public struct TracingTag: Sendable, Equatable {
    public enum Source: Sendable, Equatable { case literal(String), header(name: String, defaultValue: String?), environment(name: String, defaultValue: String?) }
    public var name: String
    public var source: Source
    public init(name: String, source: Source) { self.name = name; self.source = source }
}

/// The access-log line formats: `envoy` writes Envoy's default text format, `envoy-json` this
/// mesh's JSON line (docs/observability.md).
public enum AccessLogFormat: Sendable, Equatable {
    case text, json
}

/// `accessLogging` resolved for one workload: the lines each side writes per request (one per
/// rule whose filter matches; no rule, no line).
public struct AccessLogSettings: Sendable, Equatable {
    /// One provider on one side: its format and the filter a request must pass (nil: every request).
    public struct Rule: Sendable, Equatable {
        public var format: AccessLogFormat
        public var filter: AccessLogFilter?
    }
    /// The outbound side (Istio's CLIENT).
    public var client: [Rule] = []
    /// The inbound side (Istio's SERVER).
    public var server: [Rule] = []

    public var isEmpty: Bool { client.isEmpty && server.isEmpty }

    public init() {}

    /// The entries of one `accessLogging` list: for each provider (default `envoy`) and side its
    /// `match.mode` covers, the last entry naming that provider and side decides (`disabled`
    /// removes it).
    public init(_ entries: [Telemetry.AccessLogging]) {
        var client: [(String, Rule?)] = []
        var server: [(String, Rule?)] = []
        func put(_ list: inout [(String, Rule?)], _ p: String, _ r: Rule?) {
            if let i = list.firstIndex(where: { $0.0 == p }) { list[i].1 = r } else { list.append((p, r)) }
        }
        for e in entries {
            for p in e.providers.isEmpty ? ["envoy"] : e.providers {
                let rule = e.disabled ? nil : Rule(format: p == "envoy-json" ? .json : .text, filter: e.filter)
                if e.mode != .server { put(&client, p, rule) }
                if e.mode != .client { put(&server, p, rule) }
            }
        }
        self.client = client.compactMap(\.1)
        self.server = server.compactMap(\.1)
    }
}
