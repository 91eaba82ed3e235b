import MeshCore
import Synchronization

/// Istio's `security.istio.io/v1` RequestAuthentication: which JWTs a workload accepts
/// (`selector.matchLabels`, `jwtRules[]`). As in Istio, a request with a token that fails every
/// rule is refused (401); a request without a token passes (an AuthorizationPolicy on
/// `requestPrincipals` or `request.auth.*` conditions refuses it).
public struct RequestAuthentication: Sendable {
    /// `fromHeaders[]`: the header and the prefix before the token (`Authorization: Bearer `).
    public struct HeaderLocation: Sendable, Equatable {
        public var name: String
        public var prefix: String
    }

    /// `outputClaimToHeaders[]`: a claim copied to a request header.
    public struct ClaimToHeader: Sendable, Equatable {
        public var header: String
        public var claim: String
    }

    /// One `jwtRules[]` entry.
    public struct JWTRule: Sendable {
        public var issuer: String
        public var audiences: [String] = []
        /// Inline `jwks`, parsed and its keys built.
        public var jwks: JSONWebKeySet?
        /// `jwksUri` (http or https), fetched by the sidecar off its worker loops.
        public var jwksUri: String?
        /// Defaults to `Authorization: Bearer ` when neither fromHeaders nor fromParams is set.
        public var fromHeaders: [HeaderLocation] = []
        /// Defaults to `access_token` when neither fromHeaders nor fromParams is set.
        public var fromParams: [String] = []
        public var outputPayloadToHeader: String?
        /// false (default): the header or parameter carrying the token is removed before the app.
        public var forwardOriginalToken = false
        public var outputClaimToHeaders: [ClaimToHeader] = []
    }

    public var name: String
    public var namespace: String
    public var selector: [(String, String)]?
    public var jwtRules: [JWTRule]

    /// Whether this policy applies to a workload with these labels in this namespace (a policy
    /// in the root namespace applies to every namespace, as in Istio).
    public func selects(namespace ns: String, labels: [(String, String)]) -> Bool {
        guard ns == namespace || namespace == IstioSidecar.rootNamespace else { return false }
        guard let sel = selector else { return true }
        return sel.allSatisfy { s in labels.contains { $0.0 == s.0 && $0.1 == s.1 } }
    }

    /// A request header name: an HTTP token, lowercase in use.
    static func isHeaderName(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 256 && s.utf8.allSatisfy { c in
            (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= 48 && c <= 57) || c == 45 || c == 95 || c == 46
        } && !s.hasPrefix(":")
    }

    static func parse(_ spec: inout ConfigReader, name: String, namespace: String, ctx: ConfigError) throws(ConfigError) -> RequestAuthentication {
        var selector: [(String, String)]? = nil
        if var sel = try spec.object("selector") {
            selector = try sel.stringMap("matchLabels") ?? []
            try sel.finish()
        }
        try spec.refuse("targetRef")
        try spec.refuse("targetRefs")
        var rules: [JWTRule] = []
        for var r in try spec.objectList("jwtRules") ?? [] {
            let issuer = try r.string("issuer", required: true)!
            var rule = JWTRule(issuer: issuer)
            rule.audiences = try r.stringList("audiences") ?? []
            let line = r.map.line
            if let text = try r.string("jwks") {
                do throws(JSONWebKeySet.ParseError) { rule.jwks = try JSONWebKeySet.parse(text) } catch {
                    throw ConfigReader.error(ctx, r.sub("jwks"), line, "not a usable JSON Web Key Set: \(error.message)")
                }
            }
            if let uri = try r.string("jwksUri") {
                guard uri.hasPrefix("http://") || uri.hasPrefix("https://"), JWKSLocation(uri) != nil else {
                    throw ConfigReader.error(ctx, r.sub("jwksUri"), line, "expected an http:// or https:// URL with a host, got \"\(uri)\"")
                }
                rule.jwksUri = uri
            }
            if rule.jwks != nil && rule.jwksUri != nil {
                throw ConfigReader.error(ctx, r.sub("jwks"), line, "give jwks or jwksUri, not both")
            }
            if rule.jwks == nil && rule.jwksUri == nil {
                throw ConfigReader.error(ctx, r.sub("jwksUri"), line, "jwks or jwksUri is required (OpenID discovery from the issuer is not supported yet)")
            }
            for (i, var h) in (try r.objectList("fromHeaders") ?? []).enumerated() {
                let n = try h.string("name", required: true)!
                guard isHeaderName(n) else {
                    throw ConfigReader.error(ctx, "\(r.sub("fromHeaders"))[\(i)].name", h.map.line, "expected a header name, got \"\(n)\"")
                }
                let prefix = try h.string("prefix") ?? ""
                try h.finish()
                rule.fromHeaders.append(HeaderLocation(name: n.lowercased(), prefix: prefix))
            }
            rule.fromParams = try r.stringList("fromParams") ?? []
            try r.refuse("fromCookies")
            try r.refuse("timeout")
            if let h = try r.string("outputPayloadToHeader") {
                guard isHeaderName(h) else { throw ConfigReader.error(ctx, r.sub("outputPayloadToHeader"), line, "expected a header name, got \"\(h)\"") }
                rule.outputPayloadToHeader = h.lowercased()
            }
            rule.forwardOriginalToken = try r.bool("forwardOriginalToken") ?? false
            for (i, var c) in (try r.objectList("outputClaimToHeaders") ?? []).enumerated() {
                let h = try c.string("header", required: true)!
                let claim = try c.string("claim", required: true)!
                guard isHeaderName(h) else {
                    throw ConfigReader.error(ctx, "\(r.sub("outputClaimToHeaders"))[\(i)].header", c.map.line, "expected a header name, got \"\(h)\"")
                }
                try c.finish()
                rule.outputClaimToHeaders.append(ClaimToHeader(header: h.lowercased(), claim: claim))
            }
            if rule.fromHeaders.isEmpty && rule.fromParams.isEmpty {
                rule.fromHeaders = [HeaderLocation(name: "authorization", prefix: "Bearer ")]
                rule.fromParams = ["access_token"]
            }
            try r.finish()
            rules.append(rule)
        }
        try spec.finish()
        return RequestAuthentication(name: name, namespace: namespace, selector: selector, jwtRules: rules)
    }
}

/// A `jwksUri` taken apart: scheme, host, port and path (the fetcher connects with these).
public struct JWKSLocation: Sendable, Equatable {
    public var tls: Bool
    public var host: String
    public var port: Int
    public var path: String

    public init?(_ uri: String) {
        var rest: Substring
        if uri.hasPrefix("https://") { tls = true; rest = uri.dropFirst(8) }
        else if uri.hasPrefix("http://") { tls = false; rest = uri.dropFirst(7) }
        else { return nil }
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        var hostPort = rest[..<slash]
        path = slash == rest.endIndex ? "/" : String(rest[slash...])
        guard !path.contains(where: { $0 == " " || $0 == "\r" || $0 == "\n" || $0 == "#" }) else { return nil }
        port = tls ? 443 : 80
        if hostPort.hasPrefix("[") {
            guard let close = hostPort.firstIndex(of: "]") else { return nil }
            host = String(hostPort[hostPort.index(after: hostPort.startIndex)..<close])
            let after = hostPort[hostPort.index(after: close)...]
            if after.hasPrefix(":") { guard let p = Int(after.dropFirst()), p > 0, p < 65536 else { return nil }; port = p }
            else if !after.isEmpty { return nil }
        } else {
            if let colon = hostPort.lastIndex(of: ":") {
                guard let p = Int(hostPort[hostPort.index(after: colon)...]), p > 0, p < 65536 else { return nil }
                port = p
                hostPort = hostPort[..<colon]
            }
            host = String(hostPort)
        }
        rest = ""
        guard !host.isEmpty, !host.contains("@"), host.utf8.allSatisfy({ $0 > 32 && $0 < 127 }) else { return nil }
    }
}

extension RequestAuthentication {
    /// One warning per `jwksUri` given as plain http://: Istio allows it, and so does this mesh,
    /// but anyone on the path to that server can hand the sidecar keys of their own and so
    /// forge tokens the policy accepts. Logged when the policy is compiled (sidecar) and applied
    /// (meshd), never per request.
    public var plaintextKeySetWarnings: [String] {
        jwtRules.enumerated().compactMap { i, r in
            guard let u = r.jwksUri, u.hasPrefix("http://") else { return nil }
            return "RequestAuthentication \(namespace)/\(name): spec.jwtRules[\(i)].jwksUri \(u) is plain http://: "
                + "anyone on the path to it can substitute keys and forge tokens this policy accepts; use https://"
        }
    }

    private static let warned = Mutex<Set<String>>([])

    /// Logs `plaintextKeySetWarnings` of `policies`, each once in this process (a sidecar
    /// compiles its policies again on every config push and key-set change).
    public static func warnPlaintextKeySets(_ policies: [RequestAuthentication]) {
        for p in policies {
            for w in p.plaintextKeySetWarnings where warned.withLock({ $0.insert(w).inserted }) { Log.warn("config", w) }
        }
    }
}
