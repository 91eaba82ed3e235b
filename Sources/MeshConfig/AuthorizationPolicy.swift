import MeshCore

/// Istio's `security.istio.io/v1` AuthorizationPolicy for the subset of DESIGN §3: `selector`
/// (matchLabels), `action` ALLOW or DENY, `rules[].from[].source.principals` (and
/// notPrincipals, namespaces) and `rules[].to[].operation.paths`/`methods`/`ports` (and notPaths,
/// notMethods, notPorts), with Istio's meanings: principals are SPIFFE IDs without `spiffe://`, and values
/// may be exact, `prefix*`, `*suffix` or `*`.
public struct AuthorizationPolicy: Sendable {
    /// AUDIT: a matching request is counted and logged for audit, never denied (`AuthzConditions.swift`).
    public enum Action: String, Sendable { case allow = "ALLOW", deny = "DENY", audit = "AUDIT" }

    public struct Source: Sendable {
        public var principals: [String] = []
        public var notPrincipals: [String] = []
        public var namespaces: [String] = []
        public var notNamespaces: [String] = []
        /// `iss/sub` of the request's verified JWT (RequestAuthentication).
        public var requestPrincipals: [String] = []
        public var notRequestPrincipals: [String] = []
        /// The caller's address (`ipBlocks`) and the original client's (`remoteIpBlocks`: the
        /// same address here, no trusted proxies in front of a sidecar).
        public var ipBlocks: [AuthzCIDR] = []
        public var notIpBlocks: [AuthzCIDR] = []
        public var remoteIpBlocks: [AuthzCIDR] = []
        public var notRemoteIpBlocks: [AuthzCIDR] = []
    }

    public struct Operation: Sendable {
        public var paths: [String] = []
        public var notPaths: [String] = []
        public var methods: [String] = []
        public var notMethods: [String] = []
        /// `ports` / `notPorts`: the service port of the connection (HTTP and TCP alike).
        public var ports: [Int] = []
        public var notPorts: [Int] = []
    }

    public struct Rule: Sendable {
        public var from: [Source] = []
        public var to: [Operation] = []
        public var when: [Condition] = []
    }

    public var name: String
    public var namespace: String
    /// nil: every workload of the namespace.
    public var selector: [(String, String)]?
    public var action: Action
    public var rules: [Rule]

    static let apiVersions = ["security.istio.io/v1", "security.istio.io/v1beta1"]

    /// Whether this policy applies to a workload with these labels in this namespace.
    public func selects(namespace ns: String, labels: [(String, String)]) -> Bool {
        guard ns == namespace else { return false }
        guard let sel = selector else { return true }
        return sel.allSatisfy { s in labels.contains { $0.0 == s.0 && $0.1 == s.1 } }
    }

    static func parse(_ spec: inout ConfigReader, name: String, namespace: String, ctx: ConfigError) throws(ConfigError) -> AuthorizationPolicy {
        var selector: [(String, String)]? = nil
        if var sel = try spec.object("selector") {
            selector = try sel.stringMap("matchLabels") ?? []
            try sel.finish()
        }
        let actionText = try spec.string("action") ?? "ALLOW"
        guard let action = Action(rawValue: actionText) else {
            throw ConfigReader.error(ctx, "spec.action", spec.map.line, "expected ALLOW, DENY or AUDIT, got \"\(actionText)\" (CUSTOM is not supported)")
        }
        var rules: [Rule] = []
        for var r in try spec.objectList("rules") ?? [] {
            var rule = Rule()
            for var f in try r.objectList("from") ?? [] {
                guard var s = try f.object("source") else { throw ConfigReader.error(ctx, f.sub("source"), f.map.line, "required field is missing") }
                var src = Source()
                src.principals = try s.stringList("principals") ?? []
                src.notPrincipals = try s.stringList("notPrincipals") ?? []
                src.namespaces = try s.stringList("namespaces") ?? []
                src.notNamespaces = try s.stringList("notNamespaces") ?? []
                src.requestPrincipals = try s.stringList("requestPrincipals") ?? []
                src.notRequestPrincipals = try s.stringList("notRequestPrincipals") ?? []
                for f in ["ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"] {
                    var blocks: [AuthzCIDR] = []
                    for v in try s.stringList(f) ?? [] {
                        guard let c = AuthzCIDR(v) else { throw ConfigReader.error(ctx, s.sub(f), s.map.line, "expected an IP address or CIDR block, got \"\(v)\"") }
                        blocks.append(c)
                    }
                    switch f {
                    case "ipBlocks": src.ipBlocks = blocks
                    case "notIpBlocks": src.notIpBlocks = blocks
                    case "remoteIpBlocks": src.remoteIpBlocks = blocks
                    default: src.notRemoteIpBlocks = blocks
                    }
                }
                for f in ["serviceAccounts", "notServiceAccounts"] { try s.refuse(f) }
                try s.finish()
                try f.finish()
                rule.from.append(src)
            }
            for var t in try r.objectList("to") ?? [] {
                guard var o = try t.object("operation") else { throw ConfigReader.error(ctx, t.sub("operation"), t.map.line, "required field is missing") }
                var op = Operation()
                op.paths = try o.stringList("paths") ?? []
                op.notPaths = try o.stringList("notPaths") ?? []
                op.methods = try o.stringList("methods") ?? []
                op.notMethods = try o.stringList("notMethods") ?? []
                for field in ["ports", "notPorts"] {
                    var list: [Int] = []
                    for v in try o.stringList(field) ?? [] {
                        guard let n = Int(v), n >= 1, n <= 65535 else {
                            throw ConfigReader.error(ctx, o.sub(field), o.map.line, "expected a port number from 1 to 65535, got \"\(v)\"")
                        }
                        list.append(n)
                    }
                    if field == "ports" { op.ports = list } else { op.notPorts = list }
                }
                for p in op.paths + op.notPaths where !(p.hasPrefix("/") || p.hasPrefix("*")) {
                    throw ConfigReader.error(ctx, o.sub("paths"), o.map.line, "a path starts with / or *, got \"\(p)\"")
                }
                try o.finish()
                try t.finish()
                rule.to.append(op)
            }
            rule.when = try parseConditions(&r, ctx: ctx)
            try r.finish()
            rules.append(rule)
        }
        try spec.finish()
        return AuthorizationPolicy(name: name, namespace: namespace, selector: selector, action: action, rules: rules)
    }
}
