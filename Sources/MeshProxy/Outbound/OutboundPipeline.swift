import MeshCore
import MeshHTTP

/// The life of an outbound request (the local app calling a service of the mesh), step by step.
/// The exchange runs it once the request head is in; what follows (admission, fault, attempts,
/// response, record) is the same for every direction and lives in `Exchange`.
extension Exchange {
    /// Routes the request and rewrites its head for the destination; false when it was answered
    /// here (no route).
    func runOutbound() -> Bool {
        let s = snapshot!
        let r = request
        startTrace()
        if down?.redirectsToHTTPS == true { redirectToHTTPS(); return false }
        // 1. The service: the request's host (port stripped) names a virtual host.
        let hp = r.pointer(r.authority)
        var v = s.hosts.lookup(hp, HostTable.hostLength(hp, Int(r.authority.length)))
        if let g = s.gateway, let p = down?.gatewayPort, p > 0 { v = g.vhost(port: p, hp, HostTable.hostLength(hp, Int(r.authority.length))) }
        // A captured call to a service's VIP: that service, whatever the Host says.
        if v < 0, let dst = down?.capturedDestination, let cv = s.capture?.lookup(dst)?.httpVHost { v = cv }
        guard v >= 0 else {
            worker.stats.inc(.noRoute)
            localReply(404, "no route for this host", flag: .noRoute)
            return false
        }
        // 2. The route: the first of the VirtualService's http[] entries whose match holds.
        // On a gateway `match[].port` is the Gateway server's port the request came in on (Istio).
        let gp = s.gateway == nil ? 0 : down?.gatewayPort ?? 0
        let (ri, m) = s.route(vhost: v, HeadRequestView(head: r, servicePort: gp > 0 ? gp : requestServicePort(r, hp), https: down?.callerTLS != nil))
        guard ri >= 0 else {
            worker.stats.inc(.noRoute)
            localReply(404, "no route matched this request", flag: .noRoute)
            return false
        }
        let route = s.routes[ri]
        routeID = RouteID(ri)
        matchIndex = m
        metricsRoute = route.metricID
        // 2b. CORS preflight, local rate limit, redirect or direct response: answered here.
        if let c = route.cors, corsPreflight(c) { return false }
        if !route.rateLimiters.isEmpty && !takeRateLimitTokens(route) { return false }
        if let d = route.direct { sendDirectReply(d, route: route); return false }
        // 3. The destination: the route's weighted split, and its cluster.
        target = TargetID(route.pickTarget(&worker.rng))
        cluster = ClusterID(s.targets[target.index].cluster)
        if s.targets[target.index].balancing?.hashKey != nil { computeLBHash() }
        retry = route.retry
        // 4. Fault injection, decided now, applied after admission.
        if let f = route.fault {
            if ProxySnapshot.Route.draw(f.delayPPM, &worker.rng) { faultDelaying = true }
            if ProxySnapshot.Route.draw(f.abortPPM, &worker.rng) { faultAbortStatus = f.abortStatus }
        }
        // 5. The head as the destination sees it.
        if route.rewriteURI != nil {
            let scratch = worker.scratch
            scratch.clear()
            route.appendRewrittenPath(scratch, matchIndex: m, r.pointer(r.path), Int(r.path.length))
            r.path = r.keep(UnsafePointer(scratch.readPointer), scratch.readableBytes)
        }
        if let a = route.rewriteAuthority {
            r.authority = a.withUnsafeBufferPointer { r.keep($0.baseAddress!, $0.count) }
        }
        let ops = route.requestOps
        if !ops.isEmpty {
            for i in 0..<r.fields.count where r.fields[i].forwarded && r.fields[i].kind.isOrdinary
                && ops.removes(r.pointer(r.fields[i].name), Int(r.fields[i].name.length)) {
                r.drop(i)
            }
            for (n, v) in ops.add { r.addField(n, v) }
        }
        addRequestID()
        if s.clusters[cluster.index].mutualTLS {
            // Who is calling, for the destination sidecar's metrics (Istio's metadata exchange).
            s.peerMetadata.withUnsafeBufferPointer { _ = r.addField("x-mesh-peer-metadata", $0.baseAddress!, $0.count) }
        }
        return true
    }

    /// Adds an x-request-id when the client sent none (both directions).
    func addRequestID() {
        let r = request
        if r.requestIDIndex >= 0 { return }
        r.beginField("x-request-id", kind: .xRequestID)
        worker.appendRequestID(r.bytes)
        r.requestIDIndex = r.endField()
    }
}

/// A `MessageHead` request as the route matcher sees it.
struct HeadRequestView: RoutableRequest {
    let head: MessageHead
    /// The service port the caller used (`match[].port`).
    var servicePort = 0
    /// The request came over TLS (a gateway's TLS-terminating port; the outbound listener is
    /// plaintext): `match[].scheme` sees `https`.
    var https = false

    func withMethod<R>(_ body: (UnsafePointer<UInt8>, Int) -> R) -> R {
        body(head.pointer(head.method), Int(head.method.length))
    }

    func withPath<R>(_ body: (UnsafePointer<UInt8>, Int) -> R) -> R {
        if head.path.isEmpty { let s: StaticString = "/"; return body(s.utf8Start, 1) }
        return body(head.pointer(head.path), Int(head.path.length))
    }

    func withHeader<R>(_ name: UnsafePointer<UInt8>, _ n: Int, _ body: (UnsafePointer<UInt8>, Int) -> R) -> R? {
        head.withValue(name, n, body)
    }

    func withScheme<T>(_ body: (UnsafePointer<UInt8>, Int) -> T) -> T {
        let s: StaticString = https ? "https" : "http"
        return body(s.utf8Start, s.utf8CodeUnitCount)
    }

    func withAuthority<T>(_ body: (UnsafePointer<UInt8>, Int) -> T) -> T {
        body(head.pointer(head.authority), Int(head.authority.length))
    }
}
