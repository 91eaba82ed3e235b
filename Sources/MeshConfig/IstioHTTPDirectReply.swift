import MeshCore

/// `http[].redirect` and `http[].directResponse` (Istio's HTTPRedirect and
/// HTTPDirectResponse): routes the sidecar answers itself, without an upstream. As in Istio, a
/// route has at most one of `route`, `redirect` and `directResponse`; fields that only make sense
/// when a request goes upstream (retries, timeout, fault, mirror, rewrite, headers) are refused
/// on such a route, naming the field, rather than accepted and ignored.
extension IstioTraffic {
    /// Istio's `redirect`: the Location is built from the request, with these parts replaced.
    public struct HTTPRedirect: Sendable {
        public enum DerivePort: String, Sendable { case fromProtocolDefault = "FROM_PROTOCOL_DEFAULT", fromRequestPort = "FROM_REQUEST_PORT" }
        /// The path (and query, when it has one) of the Location; nil keeps the request's.
        public var uri: String?
        /// The host of the Location; nil keeps the request's.
        public var authority: String?
        public var port: Int?
        public var derivePort: DerivePort?
        /// `http` or `https`; nil keeps the request's.
        public var scheme: String?
        /// 301 (Istio's default), 302, 303, 307 or 308.
        public var redirectCode: Int = 301
    }

    /// Istio's `directResponse`: a fixed status and body.
    public struct HTTPDirectResponse: Sendable {
        public var status: Int
        public var body: [UInt8]?
    }

    /// Codes Envoy's redirect action can send (its RedirectResponseCode).
    public static let redirectCodes: Set<Int> = [301, 302, 303, 307, 308]

    /// Reads `redirect` and `directResponse` of route `r`; true when the route has one.
    static func parseDirectReply(_ r: inout ConfigReader, into route: inout HTTPRoute, ctx: ConfigError) throws(ConfigError) -> Bool {
        if var rd = try r.object("redirect") {
            var x = HTTPRedirect()
            if let u = try rd.string("uri") {
                guard u.hasPrefix("/"), u.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else {
                    throw ConfigReader.error(ctx, rd.sub("uri"), rd.map.line, "expected a path starting with / (printable ASCII, no spaces), got \"\(u)\"")
                }
                x.uri = u
            }
            if let a = try rd.string("authority") {
                guard !a.isEmpty, a.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "/") && $0 != UInt8(ascii: ",") }) else {
                    throw ConfigReader.error(ctx, rd.sub("authority"), rd.map.line, "expected a host name such as reviews.example.com, got \"\(a)\"")
                }
                x.authority = a
            }
            x.port = try rd.int("port", min: 1, max: 65535)
            if let d = try rd.string("derivePort") {
                guard let v = HTTPRedirect.DerivePort(rawValue: d) else {
                    throw ConfigReader.error(ctx, rd.sub("derivePort"), rd.map.line, "expected FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT, got \"\(d)\"")
                }
                if x.port != nil { throw ConfigReader.error(ctx, rd.sub("derivePort"), rd.map.line, "give port or derivePort, not both") }
                x.derivePort = v
            }
            if let s = try rd.string("scheme") {
                guard s == "http" || s == "https" else {
                    throw ConfigReader.error(ctx, rd.sub("scheme"), rd.map.line, "expected http or https, got \"\(s)\"")
                }
                x.scheme = s
            }
            if let c = try rd.int("redirectCode", min: 100, max: 599) {
                guard redirectCodes.contains(c) else {
                    throw ConfigReader.error(ctx, rd.sub("redirectCode"), rd.map.line, "expected 301, 302, 303, 307 or 308, got \(c)")
                }
                x.redirectCode = c
            }
            try rd.finish()
            route.redirect = x
        }
        if var dr = try r.object("directResponse") {
            if route.redirect != nil {
                throw ConfigReader.error(ctx, r.sub("directResponse"), dr.map.line, "a route has either redirect or directResponse, not both")
            }
            guard let st = try dr.int("status", min: 200, max: 599) else {
                throw ConfigReader.error(ctx, dr.sub("status"), dr.map.line, "required field is missing (an HTTP status from 200 to 599)")
            }
            var body: [UInt8]? = nil
            if var b = try dr.object("body") {
                let s = try b.string("string")
                let raw = try b.string("bytes")
                if s != nil && raw != nil { throw ConfigReader.error(ctx, b.path, b.map.line, "exactly one of string or bytes") }
                if let s { body = Array(s.utf8) }
                if let raw {
                    guard let d = Base64Decoding.decode(raw) else {
                        throw ConfigReader.error(ctx, b.sub("bytes"), b.map.line, "expected base64 (RFC 4648, padded), got \"\(raw.prefix(40))\"")
                    }
                    body = d
                }
                if body == nil { throw ConfigReader.error(ctx, b.path, b.map.line, "expected one of string or bytes") }
                if body!.count > 1 << 20 { throw ConfigReader.error(ctx, b.path, b.map.line, "a direct response body is at most 1 MiB, this one is \(body!.count) bytes") }
                try b.finish()
            }
            try dr.finish()
            route.directResponse = HTTPDirectResponse(status: st, body: body)
        }
        return route.redirect != nil || route.directResponse != nil
    }

    /// Refuses, on a route answered by the sidecar, the fields that only act on an upstream.
    static func checkDirectReplyRoute(_ r: ConfigReader, _ route: HTTPRoute, ctx: ConfigError) throws(ConfigError) {
        let which = route.redirect != nil ? "redirect" : "directResponse"
        for f in ["retries", "timeout", "fault", "mirror", "mirrorPercentage", "rewrite", "headers"] {
            if let e = r.map.entries.first(where: { $0.key == f }) {
                throw ConfigReader.error(ctx, r.sub(f), e.keyLine, "a route with \(which) is answered by the sidecar, so \(f) cannot apply (Istio refuses \(which) with route, and this mesh refuses what would be ignored)")
            }
        }
    }
}

/// Standard base64 (RFC 4648 §4) with padding, strict: what protobuf's JSON/YAML form of
/// `bytes` carries. Control path only.
enum Base64Decoding {
    static func decode(_ s: String) -> [UInt8]? {
        let u = Array(s.utf8)
        if u.count % 4 != 0 { return nil }
        func v(_ c: UInt8) -> Int? {
            switch c {
            case 65...90: return Int(c) - 65
            case 97...122: return Int(c) - 71
            case 48...57: return Int(c) + 4
            case 43: return 62
            case 47: return 63
            default: return nil
            }
        }
        var out: [UInt8] = []
        var i = 0
        while i < u.count {
            let last = i + 4 == u.count
            let pad = last ? (u[i + 3] == 61 ? (u[i + 2] == 61 ? 2 : 1) : 0) : 0
            guard let a = v(u[i]), let b = v(u[i + 1]) else { return nil }
            let c = pad >= 2 ? 0 : v(u[i + 2])
            let d = pad >= 1 ? 0 : v(u[i + 3])
            guard let c, let d else { return nil }
            let n = (a << 18) | (b << 12) | (c << 6) | d
            out.append(UInt8((n >> 16) & 0xff))
            if pad < 2 { out.append(UInt8((n >> 8) & 0xff)) }
            if pad < 1 { out.append(UInt8(n & 0xff)) }
            i += 4
        }
        return out
    }
}
