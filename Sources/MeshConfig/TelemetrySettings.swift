/// What the Telemetry resources in force say for one workload, resolved (mesh-wide in the root
/// namespace `IstioSidecar.rootNamespace` < namespace-wide < workload selector; Istio's precedence).
///
/// As Istio documents it, a more specific resource overrides what it sets: `tracing` field by
/// field (`providers`, `randomSamplingPercentage`, `disableSpanReporting`, `customTags` each
/// replace the less specific value when set); `accessLogging` per provider and side, as Istio's
/// pilot merges it (`AccessLogSettings.init(levels:)`): an entry without providers applies to the
/// providers of the entry before it (mesh-wide, namespace, workload, in order), so
/// `[{match: {mode: SERVER}, disabled: true}]` turns off only the server side of the providers
/// a less specific resource enabled, and keeps their filters.
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
        var logs: [[Telemetry.AccessLogging]] = []
        for t in [root, ns, wl] {
            guard let t else { continue }
            if let tr = t.tracing {
                if let v = tr.providers { out.tracing.providers = v }
                if let v = tr.randomSamplingPercentage { out.tracing.randomSamplingPercentage = v }
                if let v = tr.disableSpanReporting { out.tracing.disableSpanReporting = v }
                if let v = tr.customTags { out.tracing.customTags = v }
            }
            // Istio: an empty `accessLogging: []` is as if not set.
            if let al = t.accessLogging, !al.isEmpty { logs.append(al) }
        }
        if !logs.isEmpty { out.accessLogging = AccessLogSettings(levels: logs) }
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

    /// The entries of one `accessLogging` list (as `init(levels: [entries])`).
    public init(_ entries: [Telemetry.AccessLogging]) {
        self.init(levels: [entries])
    }

    /// The `accessLogging` lists in force for one workload, least specific first (mesh-wide,
    /// namespace, workload), merged per side as Istio's pilot merges them:
    /// - The providers a side logs with: those named by the most specific list that names any
    ///   (in an entry covering that side); when none names any, the default provider `envoy`.
    /// - Each entry applies to the providers it names or, naming none, to those of the entry
    ///   before it (across lists; the first inherits `envoy`). Walking all entries in order,
    ///   an entry covering the side (`match.mode`) turns each in-scope provider on or, with
    ///   `disabled: true`, off; the last one decides.
    /// - A provider's filter: that of the last entry covering the side that names it (an entry
    ///   naming it without a filter logs every request), so a provider inherits its filter
    ///   through entries that do not name it. Unlike Istio, which ignores the filter of an
    ///   entry without providers, such an entry sets the filter of the providers it inherits.
    public init(levels: [[Telemetry.AccessLogging]]) {
        self.client = AccessLogSettings.merge(levels, side: .client)
        self.server = AccessLogSettings.merge(levels, side: .server)
    }

    private static func merge(_ levels: [[Telemetry.AccessLogging]], side: Telemetry.WorkloadMode) -> [Rule] {
        func covers(_ e: Telemetry.AccessLogging) -> Bool { e.mode == .clientAndServer || e.mode == side }
        let defaults = ["envoy"]
        var inScope = defaults
        var filters: [String: AccessLogFilter?] = [:]
        var parent = defaults
        for level in levels {
            var named: [String] = []
            for e in level {
                let names = e.providers.isEmpty ? parent : e.providers
                parent = names
                guard covers(e) else { continue }
                for p in e.providers where !named.contains(p) { named.append(p) }
                if !e.providers.isEmpty || e.filter != nil {
                    for p in names { filters[p] = e.filter }
                }
            }
            if !named.isEmpty { inScope = named }
        }
        var out: [(String, Rule?)] = []
        parent = defaults
        for level in levels {
            for e in level {
                let names = e.providers.isEmpty ? parent : e.providers
                parent = names
                guard covers(e) else { continue }
                for p in names where inScope.contains(p) {
                    let rule = e.disabled ? nil : Rule(format: p == "envoy-json" ? .json : .text, filter: filters[p] ?? nil)
                    if let i = out.firstIndex(where: { $0.0 == p }) { out[i].1 = rule } else { out.append((p, rule)) }
                }
            }
        }
        return out.compactMap(\.1)
    }
}
