#if canImport(Glibc)
import Glibc
#endif
import MeshConfig
import MeshCore

/// The AuthorizationPolicies that select this workload, compiled for the inbound request path
/// (Istio's semantics): a request is denied when a DENY policy's rule matches it, else allowed
/// when there is no ALLOW policy or an ALLOW policy's rule matches it. A rule matches when one of
/// its `from` sources and one of its `to` operations match (an empty list matches anything).
/// Principals are the caller's SPIFFE ID without `spiffe://`; a plaintext caller has none.
struct AuthzTable: Sendable {
    /// exact, `prefix*`, `*suffix`, or `*`.
    struct Pattern: Sendable {
        enum Kind: Sendable { case exact, prefix, suffix, any }
        let kind: Kind
        let bytes: [UInt8]

        init(_ s: String) {
            if s == "*" { kind = .any; bytes = [] }
            else if s.hasSuffix("*") { kind = .prefix; bytes = Array(s.dropLast().utf8) }
            else if s.hasPrefix("*") { kind = .suffix; bytes = Array(s.dropFirst().utf8) }
            else { kind = .exact; bytes = Array(s.utf8) }
        }

        func matches(_ p: UnsafePointer<UInt8>, _ n: Int) -> Bool {
            let m = bytes.count
            switch kind {
            case .any: return true
            case .exact: return n == m && (m == 0 || bytes.withUnsafeBufferPointer { memcmp($0.baseAddress!, p, m) == 0 })
            case .prefix: return n >= m && (m == 0 || bytes.withUnsafeBufferPointer { memcmp($0.baseAddress!, p, m) == 0 })
            case .suffix: return n >= m && (m == 0 || bytes.withUnsafeBufferPointer { memcmp($0.baseAddress!, p + n - m, m) == 0 })
            }
        }
    }

    struct Source: Sendable {
        var principals: [Pattern], notPrincipals: [Pattern], namespaces: [Pattern]
        var notNamespaces: [Pattern] = [], requestPrincipals: [Pattern] = [], notRequestPrincipals: [Pattern] = []
        var ipBlocks: [AuthzCIDR] = [], notIpBlocks: [AuthzCIDR] = []
        /// `remoteIpBlocks` / `notRemoteIpBlocks`: checked against the same address (no trusted
        /// proxies in front of a sidecar), but as fields of their own: every list present must
        /// hold (Istio ANDs the fields of a source).
        var remoteIpBlocks: [AuthzCIDR] = [], notRemoteIpBlocks: [AuthzCIDR] = []
        /// Any of the four address lists is set: the caller's address is needed.
        var needsAddress: Bool { !ipBlocks.isEmpty || !notIpBlocks.isEmpty || !remoteIpBlocks.isEmpty || !notRemoteIpBlocks.isEmpty }
    }
    struct Operation: Sendable {
        var paths: [Pattern], notPaths: [Pattern], methods: [Pattern], notMethods: [Pattern]
        var ports: [Int] = [], notPorts: [Int] = []
        /// It names fields only HTTP has (paths, methods): for a TCP connection an ALLOW rule's
        /// such operation never matches, and a DENY rule's ignores them (Istio).
        var needsHTTP: Bool { !paths.isEmpty || !notPaths.isEmpty || !methods.isEmpty || !notMethods.isEmpty }
    }
    struct Rule: Sendable {
        var from: [Source], to: [Operation]
        var when: [Condition] = []
    }

    private var deny: [[Rule]] = []
    private var allow: [[Rule]] = []
    /// AUDIT policies' rules (`AuthzConditionMatch.swift`): matched requests are counted, not denied.
    private(set) var audit: [[Rule]] = []
    /// Some rule reads the caller's address (`ipBlocks`, `source.ip`): it is looked up (once
    /// per connection) only then.
    private(set) var needsAddress = false

    /// The policies of `policies` that select this workload; nil when none does (all allowed).
    init?(_ policies: [AuthorizationPolicy], namespace: String, labels: [(String, String)]) {
        let mine = policies.filter { $0.selects(namespace: namespace, labels: labels) }
        if mine.isEmpty { return nil }
        let p = { (l: [String]) in l.map(Pattern.init) }
        for pol in mine {
            let rules = pol.rules.map { r in
                Rule(from: r.from.map { Source(principals: p($0.principals), notPrincipals: p($0.notPrincipals), namespaces: p($0.namespaces),
                                               notNamespaces: p($0.notNamespaces), requestPrincipals: p($0.requestPrincipals),
                                               notRequestPrincipals: p($0.notRequestPrincipals),
                                               ipBlocks: $0.ipBlocks, notIpBlocks: $0.notIpBlocks,
                                               remoteIpBlocks: $0.remoteIpBlocks, notRemoteIpBlocks: $0.notRemoteIpBlocks) },
                     to: r.to.map { Operation(paths: p($0.paths), notPaths: p($0.notPaths), methods: p($0.methods), notMethods: p($0.notMethods),
                                              ports: $0.ports, notPorts: $0.notPorts) },
                     when: r.when.map(Condition.init))
            }
            if rules.contains(where: { r in r.from.contains { $0.needsAddress } || r.when.contains { if case .sourceIP = $0.key { return true }; return false } }) {
                needsAddress = true
            }
            switch pol.action {
            case .deny: deny.append(rules)
            case .allow: allow.append(rules)
            case .audit: audit.append(rules)
            }
        }
    }

    /// Whether a request is allowed. `principal` is the caller's SPIFFE ID (with `spiffe://`),
    /// empty for a plaintext caller; `path` may carry a query (ignored); `port` is the service
    /// port the request came to (0: not known, then rules on ports do not match it).
    func allows(principal: UnsafePointer<UInt8>, _ pn: Int, method: UnsafePointer<UInt8>, _ mn: Int,
                path: UnsafePointer<UInt8>, _ pathLength: Int, port: Int = 0, attrs: RequestAttributes = RequestAttributes()) -> Bool {
        decide(principal: principal, pn, method: method, mn, path: path, pathLength, port: port, tcp: false, attrs: attrs)
    }

    /// Whether a TCP connection is allowed (checked once, when it is established): by the
    /// caller's principal and the service port; HTTP-only fields follow Istio (an ALLOW
    /// operation that needs them never matches, a DENY rule ignores them).
    func allowsTCP(principal: [UInt8], port: Int, source: IPEndpoint? = nil) -> Bool {
        let none: StaticString = ""
        return principal.withUnsafeBufferPointer { pp in
            decide(principal: pp.baseAddress ?? none.utf8Start, pp.count, method: none.utf8Start, 0, path: none.utf8Start, 0,
                   port: port, tcp: true, attrs: RequestAttributes(source: source))
        }
    }

    /// Whether an AUDIT policy matches a TCP connection (HTTP-only fields never match).
    func auditsTCP(principal: [UInt8], port: Int, source: IPEndpoint? = nil) -> Bool {
        guard !audit.isEmpty else { return false }
        let none: StaticString = ""
        return principal.withUnsafeBufferPointer { pp in
            decide(principal: pp.baseAddress ?? none.utf8Start, pp.count, method: none.utf8Start, 0, path: none.utf8Start, 0,
                   port: port, tcp: true, attrs: RequestAttributes(source: source), rulesOf: .audit)
        }
    }

    private func decide(principal: UnsafePointer<UInt8>, _ pn: Int, method: UnsafePointer<UInt8>, _ mn: Int,
                        path: UnsafePointer<UInt8>, _ pathLength: Int, port: Int, tcp: Bool,
                        attrs: RequestAttributes = RequestAttributes(), rulesOf which: Which = .verdict) -> Bool {
        var pp = principal, pl = pn
        let scheme: StaticString = "spiffe://"
        if pl >= 9 && memcmp(pp, scheme.utf8Start, 9) == 0 { pp += 9; pl -= 9 }
        var q = 0
        while q < pathLength && path[q] != 63 { q += 1 }
        func any(_ ps: [Pattern], _ p: UnsafePointer<UInt8>, _ n: Int) -> Bool { ps.contains { $0.matches(p, n) } }
        func namespaceOf() -> (UnsafePointer<UInt8>, Int) {
            // td/ns/NS/sa/SA
            var i = 0, slashes = 0, start = -1
            while i < pl {
                if pp[i] == 47 { slashes += 1; if slashes == 2 { start = i + 1 } else if slashes == 3 { return (pp + start, i - start) } }
                i += 1
            }
            return (pp, 0)
        }
        func sourceMatches(_ s: Source, deny: Bool) -> Bool {
            if pl == 0 && (!s.principals.isEmpty || !s.namespaces.isEmpty) { return false }
            if !s.principals.isEmpty && !any(s.principals, pp, pl) { return false }
            // No identity (plaintext) is no principal, so it is none of `notPrincipals` (`*` included:
            // Istio's "deny what is not mTLS" rule).
            if !s.notPrincipals.isEmpty && pl > 0 && any(s.notPrincipals, pp, pl) { return false }
            if !s.namespaces.isEmpty { let (np, nn) = namespaceOf(); if !any(s.namespaces, np, nn) { return false } }
            if !s.notNamespaces.isEmpty && pl > 0 { let (np, nn) = namespaceOf(); if any(s.notNamespaces, np, nn) { return false } }
            if s.needsAddress {
                // An unknown address is in no block (it fails ipBlocks, passes notIpBlocks).
                let a = attrs.source
                if !s.ipBlocks.isEmpty && !(a.map { ip in s.ipBlocks.contains { $0.contains(ip) } } ?? false) { return false }
                if let ip = a, s.notIpBlocks.contains(where: { $0.contains(ip) }) { return false }
                if !s.remoteIpBlocks.isEmpty && !(a.map { ip in s.remoteIpBlocks.contains { $0.contains(ip) } } ?? false) { return false }
                if let ip = a, s.notRemoteIpBlocks.contains(where: { $0.contains(ip) }) { return false }
            }
            if !s.requestPrincipals.isEmpty || !s.notRequestPrincipals.isEmpty {
                // A TCP connection has no request principal (Istio: an HTTP-only field, which an
                // ALLOW rule never matches and a DENY rule ignores).
                if tcp {
                    if !deny { return false }
                } else {
                    let rp = attrs.jwt?.principal
                    let rpn = rp?.readableBytes ?? 0
                    if !s.requestPrincipals.isEmpty && (rpn == 0 || !any(s.requestPrincipals, UnsafePointer(rp!.readPointer), rpn)) { return false }
                    if !s.notRequestPrincipals.isEmpty && rpn > 0 && any(s.notRequestPrincipals, UnsafePointer(rp!.readPointer), rpn) { return false }
                }
            }
            return true
        }
        func opMatches(_ o: Operation, deny: Bool) -> Bool {
            if !o.ports.isEmpty && !o.ports.contains(port) { return false }
            if !o.notPorts.isEmpty && o.notPorts.contains(port) { return false }
            if tcp { return deny || !o.needsHTTP }
            if !o.paths.isEmpty && !any(o.paths, path, q) { return false }
            if !o.notPaths.isEmpty && any(o.notPaths, path, q) { return false }
            if !o.methods.isEmpty && !any(o.methods, method, mn) { return false }
            if !o.notMethods.isEmpty && any(o.notMethods, method, mn) { return false }
            return true
        }
        func ruleMatches(_ r: Rule, deny: Bool) -> Bool {
            (r.from.isEmpty || r.from.contains { sourceMatches($0, deny: deny) }) && (r.to.isEmpty || r.to.contains { opMatches($0, deny: deny) })
                && r.when.allSatisfy { c in
                    // TCP: a condition on an HTTP attribute never holds for ALLOW, is ignored for DENY (Istio).
                    if tcp && c.needsHTTP { return deny }
                    return c.matches(attrs, principal: pp, pl, namespace: namespaceOf(), port: port)
                }
        }
        if which == .audit { return audit.contains { $0.contains { ruleMatches($0, deny: false) } } }
        for rules in deny where rules.contains(where: { ruleMatches($0, deny: true) }) { return false }
        if allow.isEmpty { return true }
        return allow.contains { $0.contains { ruleMatches($0, deny: false) } }
    }

    /// The verdict on one request: the raw request path is normalised into `scratch` first
    /// (`normalize`); `.refused` when the path itself is refused (400), `.denied` (403).
    enum Verdict {
        case allowed, denied, refused
        /// The local reply for a refusal: 403 (denied) or 400 (path refused), its counter and flag.
        var status: Int { self == .denied ? 403 : 400 }
        var reason: StaticString { self == .denied ? "RBAC: access denied" : "path not accepted (encoded slash, backslash or fragment)" }
        var counter: WorkerStats.Counter { self == .denied ? .authzDenied : .badRequests }
        var flag: ResponseFlag { self == .denied ? .none : .downstreamProtocolError }
    }

    /// Normalises `rawPath` (into `scratch`) and checks the request; one entry point for the
    /// HTTP/1.1 and both HTTP/2 request paths. `principal` is the caller's SPIFFE ID bytes, empty
    /// for a plaintext caller.
    func check(principal: [UInt8], method: UnsafePointer<UInt8>, _ mn: Int,
               rawPath: UnsafePointer<UInt8>, _ pn: Int, scratch: ByteBuffer, port: Int = 0,
               attrs: RequestAttributes = RequestAttributes(), audited: UnsafeMutablePointer<Bool>? = nil) -> Verdict {
        guard AuthzTable.normalize(rawPath, pn, into: scratch) else { return .refused }
        let ok = principal.withUnsafeBufferPointer { pp in
            if let audited, !audit.isEmpty {
                audited.pointee = decide(principal: pp.baseAddress ?? method, pp.count, method: method, mn,
                                         path: UnsafePointer(scratch.readPointer), scratch.readableBytes, port: port, tcp: false,
                                         attrs: attrs, rulesOf: .audit)
            }
            return allows(principal: pp.baseAddress ?? method, pp.count, method: method, mn,
                          path: UnsafePointer(scratch.readPointer), scratch.readableBytes, port: port, attrs: attrs)
        }
        return ok ? .allowed : .denied
    }

    /// The path as policies see it (Envoy's normalisation, so `//admin`, `/./admin` or `/%61dmin`
    /// cannot slip past a rule on `/admin`): query dropped, unreserved `%XX` decoded, slashes
    /// merged, dot segments resolved. False (the request is refused) for a fragment, a
    /// backslash, an encoded `/` or `\`, or a bad escape.
    static func normalize(_ p: UnsafePointer<UInt8>, _ n: Int, into out: ByteBuffer) -> Bool {
        out.clear()
        func hex(_ c: UInt8) -> Int? {
            switch c {
            case 48...57: return Int(c - 48)
            case 65...70: return Int(c - 55)
            case 97...102: return Int(c - 87)
            default: return nil
            }
        }
        var i = 0
        while i < n && p[i] != 63 {   // '?'
            var c = p[i]
            if c == 35 || c == 92 { return false }   // '#', '\'
            if c == 37 {   // '%'
                guard i + 2 < n, let h = hex(p[i + 1]), let l = hex(p[i + 2]) else { return false }
                let v = UInt8(h * 16 + l)
                if v == 47 || v == 92 { return false }   // encoded '/' or '\'
                let unreserved = (v >= 65 && v <= 90) || (v >= 97 && v <= 122) || (v >= 48 && v <= 57) || v == 45 || v == 46 || v == 95 || v == 126
                if unreserved {
                    c = v
                    i += 2
                } else {
                    out.append(p + i, 3)
                    i += 3
                    continue
                }
            }
            if c == 47 && out.readableBytes > 0 && out.base[out.writeIndex - 1] == 47 { i += 1; continue }   // merge '//'
            out.append(c)
            i += 1
            // Resolve "/." and "/.." segments as soon as they are complete.
            let w = out.writeIndex
            let atEnd = i >= n || p[i] == 63 || p[i] == 47
            if atEnd && w >= 2 && out.base[w - 1] == 46 && out.base[w - 2] == 47 {
                out.writeIndex = w - 1            // "/." -> "/"
            } else if atEnd && w >= 3 && out.base[w - 1] == 46 && out.base[w - 2] == 46 && out.base[w - 3] == 47 {
                var j = w - 3                      // "/.." -> drop the previous segment
                if j > 0 { j -= 1; while j > 0 && out.base[j] != 47 { j -= 1 } }
                out.writeIndex = j + 1
            }
        }
        if out.isEmpty { out.append(47); return true }
        return out.base[0] == 47
    }
}
