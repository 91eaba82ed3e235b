import MeshConfig
import MeshCore
import MeshHTTP

/// A route the sidecar answers itself (Istio's `redirect` and `directResponse`), compiled at
/// snapshot time: the status, the body bytes, and the parts of a redirect's Location that do not
/// depend on the request. The reply carries no response flag (Envoy sets none for a direct
/// response or a redirect) and is recorded with the route's label like any response.
struct DirectReply: Sendable {
    enum PortRule: Sendable {
        /// Keep the request's port, except the old scheme's default when the scheme changes.
        case keep
        /// No port (`derivePort: FROM_PROTOCOL_DEFAULT`, or a new `authority` without `port`).
        case none
        /// `port: N`.
        case fixed([UInt8])
        /// `derivePort: FROM_REQUEST_PORT`: the port the caller used.
        case request
    }
    let status: Int
    let body: [UInt8]
    /// Redirects only: the Location's parts (nil: the request's).
    let isRedirect: Bool
    let scheme: [UInt8]?
    let authority: [UInt8]?
    let port: PortRule
    let uri: [UInt8]?
    /// The `uri` carries its own query (else the request's query is kept, as Envoy's path_redirect).
    let uriHasQuery: Bool

    init(redirect r: IstioTraffic.HTTPRedirect) {
        status = r.redirectCode
        body = []
        isRedirect = true
        scheme = r.scheme.map { Array($0.utf8) }
        authority = r.authority.map { Array($0.utf8) }
        if let p = r.port { port = .fixed(Array(String(p).utf8)) }
        else if r.derivePort == .fromRequestPort { port = .request }
        else if r.derivePort == .fromProtocolDefault || r.authority != nil { port = .none }
        else { port = .keep }
        uri = r.uri.map { Array($0.utf8) }
        uriHasQuery = r.uri?.contains("?") ?? false
    }

    init(response d: IstioTraffic.HTTPDirectResponse) {
        status = d.status
        body = d.body ?? []
        isRedirect = false
        scheme = nil; authority = nil; port = .keep; uri = nil; uriHasQuery = false
    }

    /// Appends the Location of a redirect for a request with this authority (`host[:port]`),
    /// path (with query) and service port.
    func appendLocation(_ out: ByteBuffer, authority a: UnsafePointer<UInt8>, _ an: Int, path p: UnsafePointer<UInt8>, _ pn: Int, servicePort: Int) {
        if let s = scheme { out.append(s) } else { out.append("http") }
        out.append("://")
        let hostLen = HostTable.hostLength(a, an)
        if let h = authority { out.append(h) } else { out.append(a, hostLen) }
        switch port {
        case .none: break
        case .fixed(let digits): out.append(UInt8(ascii: ":")); out.append(digits)
        case .request:
            if servicePort > 0 { out.append(UInt8(ascii: ":")); out.appendDecimal(servicePort) }
        case .keep:
            if authority == nil && hostLen < an {
                // The request's port, unless the scheme changes and it was the old default (80).
                let portPart = a + hostLen + 1, portLen = an - hostLen - 1
                let isDefault = portLen == 2 && portPart[0] == UInt8(ascii: "8") && portPart[1] == UInt8(ascii: "0")
                if !(scheme != nil && isDefault) { out.append(a + hostLen, an - hostLen) }
            }
        }
        var q = 0
        while q < pn && p[q] != UInt8(ascii: "?") { q += 1 }
        if let u = uri {
            out.append(u)
            if !uriHasQuery { out.append(p + q, pn - q) }
        } else if pn == 0 {
            out.append(UInt8(ascii: "/"))
        } else {
            out.append(p, pn)
        }
    }
}

extension Exchange {
    /// Answers the request with the route's redirect or direct response (no upstream).
    func sendDirectReply(_ d: DirectReply, route: ProxySnapshot.Route) {
        guard let dn = down, !finished else { return }
        flag = .none
        status = d.status
        localReason = d.isRedirect ? "redirect" : "direct response"
        worker.stats.inc(d.isRedirect ? .redirects : .directResponses)
        worker.stats.countResponse(d.status)
        let r = response
        r.reset()
        r.status = d.status
        if d.isRedirect {
            let req = request
            let out = worker.scratch
            out.clear()
            let sp = req.authority.isEmpty ? 0 : requestServicePort(req, req.pointer(req.authority))
            d.appendLocation(out, authority: req.pointer(req.authority), Int(req.authority.length),
                             path: req.pointer(req.path), Int(req.path.length), servicePort: sp)
            r.addField("location", UnsafePointer(out.readPointer), out.readableBytes)
        }
        if !d.body.isEmpty {
            let ct: StaticString = "text/plain"
            r.addField("content-type", ct.utf8Start, ct.utf8CodeUnitCount)
        }
        r.beginField("content-length", kind: .contentLength)
        r.bytes.appendDecimal(d.body.count)
        r.endField()
        r.contentLength = Int64(d.body.count)
        if let c = route.cors { addCORSResponseHeaders(c) }
        responseStarted = true
        let noBody = d.body.isEmpty || request.methodKind == .head
        responseBytes &+= UInt64(dn.sendResponseHead(r, endStream: noBody, close: false))
        if !noBody {
            d.body.withUnsafeBufferPointer { dn.sendResponseBody($0.baseAddress!, $0.count) }
            responseBytes &+= UInt64(d.body.count)
            dn.endResponse(trailers: nil)
        }
        finish()
    }

    /// The service port the caller used: the port in its Host/:authority (an http_proxy
    /// request names it there), else the original destination port of a captured connection,
    /// else 80 (the plaintext listener's default port).
    func requestServicePort(_ r: MessageHead, _ hp: UnsafePointer<UInt8>) -> Int {
        let n = Int(r.authority.length)
        let h = HostTable.hostLength(hp, n)
        if h + 1 < n && hp[h] == UInt8(ascii: ":") {
            var v = 0
            for i in (h + 1)..<n {
                let c = hp[i]
                guard c >= 48 && c <= 57, v < 65536 else { return 0 }
                v = v * 10 + Int(c - 48)
            }
            return v
        }
        if let dst = down?.capturedDestination { return Int(dst.port) }
        return 80
    }
}

extension AdminServer {
    /// A route's reply, CORS policy and rate limits in `/config_dump` (`virtual_service_routes[]`).
    func routingMoreDump(_ j: inout JSONWriter, _ r: ProxySnapshot.Route) {
        if let d = r.direct {
            j.beginObject(d.isRedirect ? "redirect" : "direct_response")
            j.number("status", Int64(d.status))
            if d.isRedirect {
                if let s = d.scheme { j.string("scheme", String(decoding: s, as: UTF8.self)) }
                if let a = d.authority { j.string("authority", String(decoding: a, as: UTF8.self)) }
                if let u = d.uri { j.string("uri", String(decoding: u, as: UTF8.self)) }
            } else {
                j.number("body_bytes", Int64(d.body.count))
            }
            j.endObject()
        }
        if let c = r.cors {
            j.beginObject("cors")
            j.number("allow_origins", Int64(c.origins.count))
            j.string("allow_methods", String(decoding: c.allowMethods, as: UTF8.self))
            j.string("allow_headers", String(decoding: c.allowHeaders, as: UTF8.self))
            j.string("expose_headers", String(decoding: c.exposeHeaders, as: UTF8.self))
            j.string("max_age", String(decoding: c.maxAge, as: UTF8.self))
            j.bool("allow_credentials", c.allowCredentials)
            j.string("unmatched_preflights", c.ignoreUnmatchedPreflights ? "IGNORE" : "FORWARD")
            j.endObject()
        }
        if !r.rateLimiters.isEmpty {
            j.beginArray("local_rate_limits")
            for l in r.rateLimiters {
                j.beginObject()
                j.number("max_tokens", l.maxTokens)
                j.number("tokens_per_fill", l.tokensPerFill)
                j.number("fill_interval_ms", l.fillInterval / 1_000_000)
                j.number("tokens_available", l.available)
                j.endObject()
            }
            j.endArray()
        }
    }
}

extension TrafficCompiler {
    /// Compiles route `i` of `vs`, a `redirect` or `directResponse` (no destinations, no cluster:
    /// metrics name the VirtualService's first host), and returns its index.
    mutating func appendDirectRoute(_ b: Bootstrap, _ vs: IstioTraffic.VirtualService, _ i: Int, _ h: IstioTraffic.HTTPRoute,
                                    _ kept: [IstioTraffic.HTTPMatch]) -> Int {
        let reply = h.redirect.map(DirectReply.init(redirect:)) ?? DirectReply(response: h.directResponse!)
        let svc = Self.service(vs.hosts[0], vs.namespace)
        let matches = kept.map { m -> RouteMatch in
            var rm = RouteMatch()
            rm.uri = m.uri.map(ByteMatch.init)
            rm.method = m.method.map(ByteMatch.init)
            rm.headers = m.headers.map { (Array($0.name.utf8), ByteMatch($0.match)) }
            rm.extras = MatchExtras(m)
            return rm
        }
        routes.append(.init(cluster: -1, timeout: 0, label: Bootstrap.routeLabel(vs, i), serviceFQDN: svc.fqdn, serviceName: svc.name,
                            serviceNamespace: svc.ns, matches: matches, targets: [], cumulativeWeights: [], retry: .default, fault: nil,
                            mirrorTarget: .none, mirrorPPM: 0, requestOps: HeaderOps(), responseOps: HeaderOps(), rewriteURI: nil,
                            rewriteAuthority: nil, direct: reply, cors: h.corsPolicy.map(CORSTable.init),
                            rateLimiters: Self.rateLimiters(b, vs, i, h)))
        return routes.count - 1
    }
}
