import MeshCore

/// `apiVersion: mesh.io/v1alpha1`, `kind: LocalRateLimit`: this mesh's kind for Envoy's
/// local_ratelimit filter on the routes of a VirtualService, until Istio has one of its own.
///
/// ```yaml
/// apiVersion: mesh.io/v1alpha1
/// kind: LocalRateLimit
/// metadata: {name: reviews-limit, namespace: default}
/// spec:
///   virtualService: reviews          # a VirtualService of this namespace
///   routes: [canary]                 # its http[].name entries; absent: every http route
///   workloadSelector:                # optional: only the calling sidecars with these labels
///     labels: {app: productpage}
///   tokenBucket: {maxTokens: 20, tokensPerFill: 20, fillInterval: 1s}
/// ```
///
/// A sidecar routing a request by one of those routes takes a token first (one bucket per
/// route per sidecar, shared by its workers); with none left the request gets 429 with
/// `x-mesh-response-flags: RL` and never reaches the upstream.
public struct LocalRateLimit: Sendable {
    public static let apiVersions = ["mesh.io/v1alpha1"]
    public static let kind = "LocalRateLimit"

    /// Envoy's TokenBucket: starts full, `tokensPerFill` added every `fillInterval`, at most `maxTokens`.
    public struct TokenBucket: Sendable, Equatable {
        public var maxTokens: Int
        public var tokensPerFill: Int
        /// Nanoseconds; at least 50 ms (Envoy's minimum fill interval).
        public var fillInterval: UInt64
    }

    public var name: String
    public var namespace: String
    public var virtualService: String
    /// `http[].name` values; empty: every http route of the VirtualService.
    public var routes: [String]
    /// nil: every sidecar that routes by the VirtualService.
    public var selector: [(String, String)]?
    public var tokenBucket: TokenBucket

    /// Whether this limit is enforced by a sidecar of a workload with these labels.
    public func selects(labels: [(String, String)]) -> Bool {
        guard let sel = selector else { return true }
        return sel.allSatisfy { s in labels.contains { $0.0 == s.0 && $0.1 == s.1 } }
    }

    /// Whether it applies to route `index` (named `routeName`) of VirtualService `vs`.
    public func applies(to vs: IstioTraffic.VirtualService, routeName: String?) -> Bool {
        guard vs.namespace == namespace, vs.name == virtualService else { return false }
        return routes.isEmpty || routeName.map(routes.contains) == true
    }

    static func parse(_ spec: inout ConfigReader, name: String, namespace: String, ctx: ConfigError) throws(ConfigError) -> LocalRateLimit {
        let vs = try spec.string("virtualService", required: true)!
        guard Names.isObjectName(vs) else {
            throw ConfigReader.error(ctx, spec.sub("virtualService"), spec.map.line, "expected the name of a VirtualService in namespace \(namespace), got \"\(vs)\"")
        }
        let routes = try spec.stringList("routes") ?? []
        if let n = spec.map.entries.first(where: { $0.key == "routes" }), routes.isEmpty {
            throw ConfigReader.error(ctx, spec.sub("routes"), n.keyLine, "an empty list limits nothing: name http[].name entries, or leave routes out for every route")
        }
        var selector: [(String, String)]? = nil
        if var ws = try spec.object("workloadSelector") {
            guard let labels = try ws.stringMap("labels"), !labels.isEmpty else {
                throw ConfigReader.error(ctx, ws.sub("labels"), ws.map.line, "required field is missing (the labels of the calling workloads)")
            }
            try ws.finish()
            selector = labels
        }
        guard var tb = try spec.object("tokenBucket") else {
            throw ConfigReader.error(ctx, spec.sub("tokenBucket"), spec.map.line, "required field is missing (maxTokens, tokensPerFill, fillInterval)")
        }
        guard let maxTokens = try tb.int("maxTokens", min: 1, max: 1 << 30) else {
            throw ConfigReader.error(ctx, tb.sub("maxTokens"), tb.map.line, "required field is missing")
        }
        // Envoy: tokens_per_fill defaults to 1.
        let perFill = try tb.int("tokensPerFill", min: 1, max: 1 << 30) ?? 1
        guard let fill = try tb.duration("fillInterval", allowZero: false) else {
            throw ConfigReader.error(ctx, tb.sub("fillInterval"), tb.map.line, "required field is missing (a duration of at least 50ms)")
        }
        guard fill >= 50_000_000 else {
            throw ConfigReader.error(ctx, tb.sub("fillInterval"), tb.map.line, "must be at least 50ms (Envoy's minimum)")
        }
        try tb.finish()
        try spec.finish()
        return LocalRateLimit(name: name, namespace: namespace, virtualService: vs, routes: routes, selector: selector,
                              tokenBucket: TokenBucket(maxTokens: maxTokens, tokensPerFill: perFill, fillInterval: fill))
    }

    /// The set holds together: each limit names a VirtualService of its namespace and routes it
    /// has, and no route is limited twice for the same callers (one bucket per route).
    static func validate(_ cfg: IstioTraffic.Config, file: String) throws(ConfigError) {
        for l in cfg.localRateLimits {
            let at = "LocalRateLimit \(l.namespace)/\(l.name)"
            guard let vs = cfg.virtualServices.first(where: { $0.namespace == l.namespace && $0.name == l.virtualService }) else {
                throw ConfigError(file: file, path: "\(at): spec.virtualService",
                                  message: "no VirtualService \(l.namespace)/\(l.virtualService) (apply them together)")
            }
            for (i, r) in l.routes.enumerated() where !vs.http.contains(where: { $0.name == r }) {
                throw ConfigError(file: file, path: "\(at): spec.routes[\(i)]",
                                  message: "VirtualService \(l.namespace)/\(l.virtualService) has no http route named \"\(r)\"")
            }
        }
        for (i, a) in cfg.localRateLimits.enumerated() {
            for b in cfg.localRateLimits[(i + 1)...] where a.namespace == b.namespace && a.virtualService == b.virtualService {
                let overlap = a.routes.isEmpty || b.routes.isEmpty || a.routes.contains(where: b.routes.contains)
                let sameCallers = a.selector == nil || b.selector == nil
                    || (a.selector!.count == b.selector!.count && a.selector!.allSatisfy { s in b.selector!.contains { $0 == s } })
                if overlap && sameCallers {
                    throw ConfigError(file: file, path: "LocalRateLimit \(b.namespace)/\(b.name): spec.routes",
                                      message: "limits a route of VirtualService \(b.namespace)/\(b.virtualService) that LocalRateLimit \(a.namespace)/\(a.name) already limits (one bucket per route)")
                }
            }
        }
    }
}
