import MeshConfig
import MeshCore
import MeshHTTP

/// A route's `corsPolicy` compiled for the data path, with Envoy's CORS filter behaviour:
/// a request without `Origin` is left alone; an origin no `allowOrigins` entry matches gets no
/// CORS header (its preflight is forwarded, or answered 200 without headers under
/// `unmatchedPreflights: IGNORE`); an allowed origin's preflight (`OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`) is answered 200 here with the allow headers, and its other
/// requests' responses carry `Access-Control-Allow-Origin` (the origin itself),
/// `-Allow-Credentials` and `-Expose-Headers`.
final class CORSTable: Sendable {
    let origins: [ByteMatch]
    let allowMethods: [UInt8]
    let allowHeaders: [UInt8]
    let exposeHeaders: [UInt8]
    let maxAge: [UInt8]
    let allowCredentials: Bool
    let ignoreUnmatchedPreflights: Bool

    init(_ p: IstioTraffic.CORSPolicy) {
        origins = p.allowOrigins.map(ByteMatch.init)
        allowMethods = Array(p.allowMethods.joined(separator: ",").utf8)
        allowHeaders = Array(p.allowHeaders.joined(separator: ",").utf8)
        exposeHeaders = Array(p.exposeHeaders.joined(separator: ",").utf8)
        maxAge = p.maxAge.map { Array(String($0).utf8) } ?? []
        allowCredentials = p.allowCredentials ?? false
        ignoreUnmatchedPreflights = p.unmatchedPreflights == .ignore
    }

    /// Envoy's isOriginAllowed: an entry matching `*` allows every origin.
    func allows(_ p: UnsafePointer<UInt8>, _ n: Int) -> Bool {
        let star: StaticString = "*"
        for o in origins where o.matches(star.utf8Start, 1) || o.matches(p, n) { return true }
        return false
    }

    static let origin: StaticString = "origin"
    static let requestMethod: StaticString = "access-control-request-method"
}

extension Exchange {
    /// Runs the route's CORS policy on the request; true when the request was answered here
    /// (a preflight), false when it goes on.
    func corsPreflight(_ c: CORSTable) -> Bool {
        let r = request
        guard r.methodKind == .options,
              let origin = r.withValue(CORSTable.origin.utf8Start, CORSTable.origin.utf8CodeUnitCount, { $1 > 0 ? c.allows($0, $1) : nil }),
              let asked = r.withValue(CORSTable.requestMethod.utf8Start, CORSTable.requestMethod.utf8CodeUnitCount, { $1 > 0 }), asked else {
            return false
        }
        guard let allowed = origin else { return false }   // an empty Origin: not CORS
        if !allowed && !c.ignoreUnmatchedPreflights { return false }   // FORWARD: the upstream answers
        guard let dn = down, !finished else { return true }
        worker.stats.inc(.corsPreflights)
        flag = .none
        status = 200
        localReason = "cors preflight"
        worker.stats.countResponse(200)
        let h = response
        h.reset()
        h.status = 200
        if allowed {
            addCORSHeader(h, "access-control-allow-origin", originValue: true, [])
            if c.allowCredentials { addCORSHeader(h, "access-control-allow-credentials", originValue: false, CORSTable.trueBytes) }
            if !c.allowMethods.isEmpty { addCORSHeader(h, "access-control-allow-methods", originValue: false, c.allowMethods) }
            if !c.allowHeaders.isEmpty { addCORSHeader(h, "access-control-allow-headers", originValue: false, c.allowHeaders) }
            if !c.maxAge.isEmpty { addCORSHeader(h, "access-control-max-age", originValue: false, c.maxAge) }
        }
        h.beginField("content-length", kind: .contentLength)
        h.bytes.appendDecimal(0)
        h.endField()
        h.contentLength = 0
        responseStarted = true
        responseBytes &+= UInt64(dn.sendResponseHead(h, endStream: true, close: false))
        finish()
        return true
    }

    /// On a response to an allowed origin's request: Access-Control-Allow-Origin (the origin),
    /// -Allow-Credentials and -Expose-Headers, replacing any the upstream sent.
    func addCORSResponseHeaders(_ c: CORSTable) {
        let r = request
        guard let ok = r.withValue(CORSTable.origin.utf8Start, CORSTable.origin.utf8CodeUnitCount, { $1 > 0 && c.allows($0, $1) }), ok else { return }
        let h = response
        let names = CORSTable.responseNames
        for i in 0..<h.fields.count where h.fields[i].forwarded {
            let f = h.fields[i]
            for n in names where Int(f.name.length) == n.utf8CodeUnitCount && ASCII.equalsLowerBytes(h.pointer(f.name), Int(f.name.length), n.utf8Start) {
                h.drop(i)
            }
        }
        addCORSHeader(h, "access-control-allow-origin", originValue: true, [])
        if c.allowCredentials { addCORSHeader(h, "access-control-allow-credentials", originValue: false, CORSTable.trueBytes) }
        if !c.exposeHeaders.isEmpty { addCORSHeader(h, "access-control-expose-headers", originValue: false, c.exposeHeaders) }
    }

    /// Adds `name: value` to `h`, or `name: <the request's Origin>`.
    private func addCORSHeader(_ h: MessageHead, _ name: StaticString, originValue: Bool, _ value: [UInt8]) {
        if originValue {
            let r = request
            _ = r.withValue(CORSTable.origin.utf8Start, CORSTable.origin.utf8CodeUnitCount) { p, n in
                h.addField(name, p, n)
            }
            return
        }
        value.withUnsafeBufferPointer { _ = h.addField(name, $0.baseAddress!, $0.count) }
    }
}

extension CORSTable {
    static let trueBytes: [UInt8] = Array("true".utf8)
    /// The response headers the policy sets (any the upstream sent are replaced).
    static let responseNames: [StaticString] = ["access-control-allow-origin", "access-control-allow-credentials", "access-control-expose-headers"]
}
