import MeshCore

/// `http[].corsPolicy` (Istio's CorsPolicy, Envoy's CORS filter semantics): which origins may
/// call the route from a browser, and what a preflight answers.
extension IstioTraffic {
    public struct CORSPolicy: Sendable {
        /// What happens to a preflight whose origin no `allowOrigins` entry matches (Istio 1.22+).
        public enum UnmatchedPreflights: String, Sendable {
            /// Sent on to the upstream like any request (Istio's default).
            case forward = "FORWARD"
            /// Answered 200 by the sidecar without any CORS header.
            case ignore = "IGNORE"
        }
        public var allowOrigins: [StringMatch] = []
        public var allowMethods: [String] = []
        public var allowHeaders: [String] = []
        public var exposeHeaders: [String] = []
        /// Seconds (Istio gives a duration; Envoy sends whole seconds).
        public var maxAge: UInt64?
        public var allowCredentials: Bool?
        public var unmatchedPreflights: UnmatchedPreflights = .forward
    }

    static func parseCORS(_ r: inout ConfigReader, into route: inout HTTPRoute, ctx: ConfigError) throws(ConfigError) {
        guard var c = try r.object("corsPolicy") else { return }
        var p = CORSPolicy()
        for var o in try c.objectList("allowOrigins") ?? [] { p.allowOrigins.append(try stringMatch(&o, ctx: ctx)) }
        try c.refuse("allowOrigin")   // deprecated in Istio for allowOrigins; refused by name
        p.allowMethods = try c.stringList("allowMethods") ?? []
        for (i, m) in p.allowMethods.enumerated() where !Names.isHTTPToken(m) {
            throw ConfigReader.error(ctx, "\(c.sub("allowMethods"))[\(i)]", c.map.line, "expected an HTTP method such as GET, got \"\(m)\"")
        }
        p.allowHeaders = try c.stringList("allowHeaders") ?? []
        p.exposeHeaders = try c.stringList("exposeHeaders") ?? []
        for (key, list) in [("allowHeaders", p.allowHeaders), ("exposeHeaders", p.exposeHeaders)] {
            for (i, h) in list.enumerated() where !(Names.isHTTPToken(h) || h == "*") {
                throw ConfigReader.error(ctx, "\(c.sub(key))[\(i)]", c.map.line, "expected a header name, got \"\(h)\"")
            }
        }
        if let age = try c.duration("maxAge", allowZero: true) {
            guard age % 1_000_000_000 == 0 else {
                throw ConfigReader.error(ctx, c.sub("maxAge"), c.map.line, "expected whole seconds (Access-Control-Max-Age is in seconds)")
            }
            p.maxAge = age / 1_000_000_000
        }
        p.allowCredentials = try c.bool("allowCredentials")
        if let u = try c.string("unmatchedPreflights") {
            guard let v = CORSPolicy.UnmatchedPreflights(rawValue: u) else {
                throw ConfigReader.error(ctx, c.sub("unmatchedPreflights"), c.map.line, "expected FORWARD or IGNORE, got \"\(u)\"")
            }
            p.unmatchedPreflights = v
        }
        try c.finish()
        route.corsPolicy = p
    }
}
