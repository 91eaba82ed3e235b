import MeshCore

/// The `http[].match[]` conditions beyond uri, method and headers (Istio's HTTPMatchRequest):
/// `queryParams`, `authority`, `port`, `scheme`, `withoutHeaders`, `ignoreUriCase`, and the
/// caller conditions `sourceLabels` and `sourceNamespace`, which the sidecar doing the routing
/// decides once at compile time against its own workload (a match entry they do not select is
/// dropped). `name` is only a label. `gateways` is read with the gateway binding
/// (IstioGatewayBinding.swift); `statPrefix` names Envoy stats this proxy does not have: refused by name.
extension IstioTraffic {
    public struct HTTPMatchExtras: Sendable {
        /// `match[].name`: a label for the entry (kept for /config_dump, never matched on).
        public var name: String?
        /// `queryParams`: each named parameter's first raw (not decoded) value must match;
        /// `exact: ""` and a catch-all (`prefix: ""`, `regex: ".*"`) only ask for presence.
        public var queryParams: [(name: String, match: StringMatch)] = []
        /// `authority`: the `:authority`/Host value as sent, port included (Envoy's header match).
        public var authority: StringMatch?
        /// `port`: the service port the caller used.
        public var port: Int?
        /// `scheme`: the request's scheme (`http` on the plaintext outbound listener).
        public var scheme: StringMatch?
        /// `withoutHeaders`: Envoy's inverted header match: the header must be present with a
        /// value that does not match; a catch-all matcher means "the header is absent".
        public var withoutHeaders: [(name: String, match: StringMatch)] = []
        /// `ignoreUriCase`: `uri` exact and prefix matches ignore ASCII case.
        public var ignoreUriCase = false
        /// `sourceLabels`: the calling workload's labels must include all of these.
        public var sourceLabels: [(String, String)]?
        /// `sourceNamespace`: the calling workload's namespace.
        public var sourceNamespace: String?

        public init() {}

        /// Whether a caller (the sidecar's own workload) with these labels in this namespace
        /// satisfies `sourceLabels` and `sourceNamespace` (Istio drops the entry otherwise).
        public func selectsSource(namespace ns: String, labels: [(String, String)]) -> Bool {
            if let want = sourceNamespace, want != ns { return false }
            if let sel = sourceLabels, !sel.allSatisfy({ s in labels.contains { $0.0 == s.0 && $0.1 == s.1 } }) { return false }
            return true
        }
    }

    /// Istio's catch-all string matches: `prefix: ""` and regex `.*` (a presence match in Envoy).
    public static func isCatchAll(_ m: StringMatch) -> Bool {
        (m.kind == .prefix && m.value.isEmpty) || (m.kind == .regex && (m.value == ".*" || m.value == "*"))
    }

    /// Reads the extra fields of one `match[]` entry into `hm.extras`.
    static func parseMatchExtras(_ m: inout ConfigReader, into hm: inout HTTPMatch, ctx: ConfigError) throws(ConfigError) {
        var x = HTTPMatchExtras()
        x.name = try m.string("name")
        if var q = try m.object("queryParams") {
            for e in q.map.entries {
                guard !e.key.isEmpty, e.key.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "&") && $0 != UInt8(ascii: "=") }) else {
                    throw ConfigReader.error(ctx, q.sub(e.key), e.keyLine, "expected a query parameter name (printable ASCII without '&', '=' or spaces)")
                }
                var r = try ConfigReader(e.value, path: q.sub(e.key), context: ctx)
                x.queryParams.append((e.key, try stringMatchAllowingEmpty(&r, ctx: ctx)))
            }
            q.markAllKnown()
            try q.finish()
        }
        if var a = try m.object("authority") { x.authority = try stringMatchAllowingEmpty(&a, ctx: ctx) }
        if var s = try m.object("scheme") { x.scheme = try stringMatchAllowingEmpty(&s, ctx: ctx) }
        x.port = try m.int("port", min: 1, max: 65535)
        if var w = try m.object("withoutHeaders") {
            for e in w.map.entries {
                guard Names.isHTTPToken(e.key) else {
                    throw ConfigReader.error(ctx, w.sub(e.key), e.keyLine, "expected a header name (letters, digits and !#$%&'*+-.^_`|~)")
                }
                var r = try ConfigReader(e.value, path: w.sub(e.key), context: ctx)
                x.withoutHeaders.append((e.key.lowercased(), try stringMatchAllowingEmpty(&r, ctx: ctx)))
            }
            w.markAllKnown()
            try w.finish()
        }
        x.ignoreUriCase = try m.bool("ignoreUriCase") ?? false
        if let labels = try m.stringMap("sourceLabels") {
            for (k, v) in labels {
                guard Names.isLabelKey(k), Names.isLabelValue(v) else {
                    throw ConfigReader.error(ctx, m.sub("sourceLabels.\(k)"), m.map.line, "expected a Kubernetes label key and value, got \"\(k)\": \"\(v)\"")
                }
            }
            x.sourceLabels = labels
        }
        if let ns = try m.string("sourceNamespace") {
            guard Names.isDNSLabel(ns) else {
                throw ConfigReader.error(ctx, m.sub("sourceNamespace"), m.map.line, "expected a namespace (a DNS label), got \"\(ns)\"")
            }
            x.sourceNamespace = ns
        }
        try m.refuse("statPrefix")
        hm.extras = x
    }

    /// A StringMatch where an empty value is meaningful (`exact: ""`: presence for query
    /// parameters, the empty value elsewhere).
    static func stringMatchAllowingEmpty(_ r: inout ConfigReader, ctx: ConfigError) throws(ConfigError) -> StringMatch {
        try stringMatch(&r, ctx: ctx)
    }
}

extension Names {
    /// An HTTP field name (RFC 9110 token).
    public static func isHTTPToken(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || "!#$%&'*+-.^_`|~".utf8.contains(c)
        }
    }
}
