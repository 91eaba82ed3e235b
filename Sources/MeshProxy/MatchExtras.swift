#if canImport(Glibc)
import Glibc
#endif
import MeshConfig
import MeshCore
import MeshHTTP

/// The conditions of one `match[]` entry beyond uri, method and headers, compiled to bytes at
/// snapshot time (Istio's queryParams, authority, port, scheme, withoutHeaders and a
/// case-insensitive uri). Only entries that use one carry it, so the common route pays one
/// index test. `sourceLabels`/`sourceNamespace` never get here: they are decided when the
/// snapshot is compiled (`TrafficCompiler`), against the sidecar's own workload.
struct MatchExtras: Sendable {
    /// A query parameter condition: `presence` (Istio's `exact: ""` and catch-alls) or a value match.
    struct Query: Sendable {
        let name: [UInt8]
        let match: ByteMatch?
    }
    /// A `withoutHeaders` condition: with `match` nil (a catch-all) the header must be absent;
    /// otherwise present with a value the match refuses (Envoy's invert_match).
    struct Without: Sendable {
        let name: [UInt8]
        let match: ByteMatch?
    }
    var queries: [Query] = []
    var authority: ByteMatch?
    var port = 0
    var scheme: ByteMatch?
    var without: [Without] = []
    /// `ignoreUriCase`: the uri's exact or prefix value, lowercased (the entry's own uri
    /// condition is then left out of the fast table).
    var uriIgnoringCase: (prefix: Bool, value: [UInt8])?

    /// Compiles the extras of an Istio match entry with its `uri`; nil when it has none that
    /// act on a request.
    init?(_ m: IstioTraffic.HTTPMatch) {
        let x = m.extras
        for q in x.queryParams {
            let presence = (q.match.kind == .exact && q.match.value.isEmpty) || IstioTraffic.isCatchAll(q.match)
            queries.append(Query(name: Array(q.name.utf8), match: presence ? nil : ByteMatch(q.match)))
        }
        authority = x.authority.map(ByteMatch.init)
        port = x.port ?? 0
        scheme = x.scheme.map(ByteMatch.init)
        for w in x.withoutHeaders {
            without.append(Without(name: Array(w.name.utf8), match: IstioTraffic.isCatchAll(w.match) ? nil : ByteMatch(w.match)))
        }
        if x.ignoreUriCase, let u = m.uri, u.kind != .regex {
            uriIgnoringCase = (u.kind == .prefix, Array(u.value.lowercased().utf8))
        }
        if queries.isEmpty && authority == nil && port == 0 && scheme == nil && without.isEmpty && uriIgnoringCase == nil { return nil }
    }

    /// Whether the request meets every condition. `path[0..<n]` is the path with its query,
    /// `q` the index of its `?` (n when none).
    func matches<R: RoutableRequest>(_ req: R, path pp: UnsafePointer<UInt8>, _ pn: Int, query q: Int) -> Bool {
        if let u = uriIgnoringCase {
            let len = u.prefix ? pn : q
            if u.prefix ? len < u.value.count : len != u.value.count { return false }
            if !u.value.isEmpty && !u.value.withUnsafeBufferPointer({ ASCII.equalsLowerBytes(pp, $0.count, $0.baseAddress!) }) { return false }
        }
        if port != 0 && req.servicePort != port { return false }
        if let s = scheme, !req.withScheme({ s.matches($0, $1) }) { return false }
        if let a = authority, !req.withAuthority({ a.matches($0, $1) }) { return false }
        for w in without {
            let ok = w.name.withUnsafeBufferPointer { nb -> Bool in
                guard let m = w.match else { return req.withHeader(nb.baseAddress!, nb.count, { _, _ in true }) == nil }
                return req.withHeader(nb.baseAddress!, nb.count, { !m.matches($0, $1) }) ?? false
            }
            if !ok { return false }
        }
        for qp in queries {
            guard let ok = QueryString.withFirstValue(pp + min(q + 1, pn), pn - min(q + 1, pn), qp.name, { v, vn in qp.match?.matches(v, vn) ?? true }),
                  ok else { return false }
        }
        return true
    }
}

/// The query string as Envoy's route matcher reads it: `&`-separated `name=value` pairs (a
/// pair without `=` has the empty value), compared raw, not percent-decoded; the first pair
/// with the name counts.
enum QueryString {
    /// Calls `body` with the first raw value of parameter `name` in `p[0..<n]` (the text after
    /// `?`, a `#fragment` excluded); nil when it is absent.
    static func withFirstValue<T>(_ p: UnsafePointer<UInt8>, _ n: Int, _ name: [UInt8], _ body: (UnsafePointer<UInt8>, Int) -> T) -> T? {
        var end = 0
        while end < n && p[end] != UInt8(ascii: "#") { end += 1 }
        var i = 0
        while i < end {
            var e = i
            while e < end && p[e] != UInt8(ascii: "&") { e += 1 }
            var eq = i
            while eq < e && p[eq] != UInt8(ascii: "=") { eq += 1 }
            if eq - i == name.count && name.withUnsafeBufferPointer({ memcmp($0.baseAddress!, p + i, $0.count) == 0 || $0.isEmpty }) {
                let vs = min(eq + 1, e)
                return body(p + vs, e - vs)
            }
            i = e + 1
        }
        return nil
    }
}

extension RoutableRequest {
    /// The service port the caller used (0 when unknown); see `HeadRequestView`.
    var servicePort: Int { 0 }
    /// The request's scheme: the outbound listener is plaintext, so `http`.
    func withScheme<T>(_ body: (UnsafePointer<UInt8>, Int) -> T) -> T {
        let s: StaticString = "http"
        return body(s.utf8Start, s.utf8CodeUnitCount)
    }
    /// The `:authority` / Host value as sent (port included).
    func withAuthority<T>(_ body: (UnsafePointer<UInt8>, Int) -> T) -> T {
        let h: StaticString = "host"
        let e: StaticString = ""
        return withHeader(h.utf8Start, h.utf8CodeUnitCount, body) ?? body(e.utf8Start, 0)
    }
}

extension TrafficCompiler {
    /// The match entries of route `h` that select this workload as the caller (Istio's
    /// `sourceLabels` / `sourceNamespace`: the sidecar routing is the caller); nil when the
    /// route had entries and none is left, so the route is dropped.
    static func sourceSelected(_ b: Bootstrap, _ h: IstioTraffic.HTTPRoute) -> [IstioTraffic.HTTPMatch]? {
        let kept = h.match.filter { $0.extras.selectsSource(namespace: b.workload.namespace, labels: b.workload.labels) }
        return !h.match.isEmpty && kept.isEmpty ? nil : kept
    }
}
