import MeshCore
import MeshHTTP
import MeshConfig
import MeshIO
import MeshTLS
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The admin listener (127.0.0.1:15000 by default) on its own thread and event loop, so admin
/// traffic never runs on a data-path worker. Endpoints: `/ready` (200 once the config is applied
/// and every listener is bound, 503 before and while draining), `/healthz`, `/stats/prometheus`,
/// `/stats` (counters, one `name: value` per line), `/config_dump`, `/clusters`, `/certs`, and
/// `POST /drain` (stop accepting, finish in-flight requests, exit). The status port
/// (`StatusServer`) repeats `/ready`, `/healthz` and `/stats/prometheus` through `respond`, from
/// its own thread: `respond` reads only atomics, the locked state and the workers' published stats.
final class AdminServer: @unchecked Sendable {
    let loop = EventLoop(name: "admin")
    private let workers: [Worker]
    /// The config in force and facts derived from it; replaced whole when credentials rotate.
    private struct State {
        var snapshot: ProxySnapshot
        var appliedAt: Int64
        var chain: [CertificateInfo]
        var roots: [CertificateInfo]
    }
    private let state: Mutex<State>
    var snapshot: ProxySnapshot { state.withLock { $0.snapshot } }
    private var startedAt: Int64 { state.withLock { $0.appliedAt } }
    private var chain: [CertificateInfo] { state.withLock { $0.chain } }
    private var roots: [CertificateInfo] { state.withLock { $0.roots } }
    let ready = Atomic<Bool>(false)
    let draining = Atomic<Bool>(false)
    private var listener: Listener?

    init(workers: [Worker], snapshot: ProxySnapshot) {
        self.workers = workers
        state = Mutex(AdminServer.state(for: snapshot))
    }

    private static func state(for snapshot: ProxySnapshot) -> State {
        var chain: [CertificateInfo] = [], roots: [CertificateInfo] = []
        if let t = snapshot.bootstrap.tls {
            chain = t.certChainPEM.map { X509Info.load(pem: $0) } ?? X509Info.load(pemFile: t.certChain)
            roots = t.trustBundlePEM.map { X509Info.load(pem: $0) } ?? X509Info.load(pemFile: t.trustBundle)
        }
        return State(snapshot: snapshot, appliedAt: Int64(Clock.wallNanos() / 1_000_000_000), chain: chain, roots: roots)
    }

    /// A new snapshot is in force (called from any thread).
    func replace(_ snapshot: ProxySnapshot) {
        let s = AdminServer.state(for: snapshot)
        state.withLock { $0 = s }
    }

    func listen(fd: Int32) -> Bool {
        let l = Listener(loop: loop, fd: fd, name: "admin") { [unowned self] cfd in
            let c = AdminConnection(server: self, fd: cfd)
            _ = c.start()
            c.loop.setDeadline(c, c.loop.now + 30_000_000_000)
        }
        listener = l
        return l.start()
    }

    private var localIdentity: String { (snapshot.serverTLS ?? snapshot.clientTLS)?.localIdentity ?? "" }

    func respond(method: HTTPMethod, path: String, into out: ByteBuffer) {
        var status = 200
        var body = ""
        var contentType = "text/plain; charset=utf-8"
        let isRead = method == .get || method == .head
        switch (path, isRead) {
        case ("/ready", true):
            if ready.load(ordering: .acquiring) && !draining.load(ordering: .acquiring) {
                body = "LIVE\n"
            } else {
                status = 503
                body = draining.load(ordering: .acquiring) ? "DRAINING\n" : "PRE_INITIALIZING\n"
            }
        case ("/healthz", true):
            body = "OK\n"
        case ("/stats", true):
            for c in WorkerStats.Counter.allCases {
                var sum: UInt64 = 0
                for w in workers { sum &+= w.stats.get(c) }
                body += "\(c.name): \(sum)\n"
            }
            body += "workers: \(workers.count)\nconfig_version: \(snapshot.version)\n"
        case ("/stats/prometheus", true):
            contentType = "text/plain; version=0.0.4; charset=utf-8"
            body = MetricsExporter(workers: workers, snapshot: snapshot, localIdentity: localIdentity,
                                   configAppliedAt: startedAt, certExpiry: chain.first?.notAfter ?? 0).render()
        case ("/config_dump", true):
            contentType = "application/json"
            body = configDump()
        case ("/clusters", true):
            contentType = "application/json"
            body = clusters()
        case ("/certs", true):
            contentType = "application/json"
            body = certs()
        case ("/drain", false) where method == .post:
            draining.store(true, ordering: .releasing)
            body = "draining\n"
            // The main thread waits for SIGTERM and drains every worker; ask it the same way.
            kill(getpid(), SIGTERM)
        case ("/", true):
            body = "admin endpoints: /ready /healthz /stats /stats/prometheus /config_dump /clusters /certs, POST /drain\n"
        case ("/ready", false), ("/healthz", false), ("/stats", false), ("/stats/prometheus", false),
             ("/config_dump", false), ("/clusters", false), ("/certs", false), ("/drain", true):
            status = 405
            body = "method not allowed\n"
        default:
            status = 404
            body = "not found\n"
        }
        out.append("HTTP/1.1 ")
        out.appendDecimal(status)
        out.append(" ")
        out.append(StatusReason.phrase(status))
        out.append("\r\ncontent-type: ")
        out.append(string: contentType)
        out.append("\r\ncontent-length: ")
        out.appendDecimal(body.utf8.count)
        out.append("\r\n\r\n")
        if method != .head { out.append(string: body) }
    }

    private func configDump() -> String {
        let b = snapshot.bootstrap
        var j = JSONWriter()
        j.beginObject()
        j.string("version", snapshot.version)
        j.number("last_applied", startedAt)
        j.beginObject("bootstrap")
        j.string("name", b.name)
        j.beginObject("workload")
        j.string("name", b.workload.name)
        j.string("service", b.workload.service)
        j.string("namespace", b.workload.namespace)
        j.string("service_account", b.workload.serviceAccount)
        j.beginObject("labels")
        for (k, v) in b.workload.labels { j.string(k, v) }
        j.endObject()
        j.endObject()
        j.string("admin", b.admin.text)
        if let t = b.tls {
            j.beginObject("tls")
            j.string("cert_chain", t.certChain)
            j.string("private_key", t.privateKey)
            j.string("trust_bundle", t.trustBundle)
            j.string("trust_domain", t.trustDomain)
            j.string("min_protocol_version", t.minTLS13 ? "TLSV1_3" : "TLSV1_2")
            j.endObject()
        }
        func listener(_ k: String, _ l: Bootstrap.Listener?) {
            guard let l = l else { return }
            j.beginObject(k)
            j.string("address", l.address.text)
            j.number("header_timeout_ms", l.headerTimeout / 1_000_000)
            j.number("idle_timeout_ms", l.idleTimeout / 1_000_000)
            j.number("stream_idle_timeout_ms", l.streamIdleTimeout / 1_000_000)
            if l.maxConnections > 0 { j.number("max_connections", UInt64(l.maxConnections)) }
            if let a = l.appAddress { j.string("app_address", a.text) }
            j.endObject()
        }
        listener("outbound", b.outbound)
        listener("inbound", b.inbound)
        j.beginArray("clusters")
        for c in b.clusters {
            j.beginObject()
            j.string("name", c.name)
            j.string("tls", c.tls.rawValue)
            j.beginArray("subject_alt_names"); for s in c.subjectAltNames { j.string(nil, s) }; j.endArray()
            j.beginArray("endpoints")
            for (ei, e) in c.endpoints.enumerated() {
                if c.endpointLabels[ei].isEmpty { j.string(nil, e.text); continue }
                j.beginObject()
                j.string("address", e.text)
                j.beginObject("labels"); for (k, v) in c.endpointLabels[ei] { j.string(k, v) }; j.endObject()
                j.endObject()
            }
            j.endArray()
            j.number("connect_timeout_ms", c.connectTimeout / 1_000_000)
            j.number("idle_timeout_ms", c.idleTimeout / 1_000_000)
            j.number("max_connections", Int64(c.maxConnections))
            j.endObject()
        }
        j.endArray()
        j.beginArray("routes")
        for r in b.routes {
            j.beginObject()
            j.string("name", r.name)
            j.beginArray("hosts"); for h in r.hosts { j.string(nil, h) }; j.endArray()
            j.string("cluster", r.cluster)
            j.number("timeout_ms", r.timeout / 1_000_000)
            j.string("destination_service", snapshot.routes.first { $0.label == r.name }?.serviceFQDN ?? "")
            j.endObject()
        }
        j.endArray()
        trafficDump(&j, b)
        securityDump(&j, b)
        gatewayDump(&j, b)
        j.number("drain_timeout_ms", b.drainTimeout / 1_000_000)
        j.bool("stats_enabled", b.statsEnabled)
        if let al = b.accessLog {
            j.beginObject("access_log")
            j.string("path", al.path)
            j.number("sampling", al.sampling)
            j.bool("include_query", al.includeQuery)
            j.endObject()
        }
        j.endObject()
        // A gateway's TLS secrets: names and fingerprints only (GatewaySecrets.swift).
        GatewaySecrets.shared.dump(into: &j)
        j.endObject()
        return j.text + "\n"
    }

    private func clusters() -> String {
        var j = JSONWriter()
        j.beginObject()
        j.beginArray("clusters")
        // Each worker's current routing state, read under its lock; pools found by cluster name
        // and address (a worker may not have taken the newest config yet).
        let states = workers.compactMap { w in w.publishedRouting.withLock { $0 } }
        let current = states.first?.snapshot ?? snapshot
        for c in current.clusters {
            j.beginObject()
            j.string("name", c.name)
            j.string("tls", c.origination?.mode ?? (c.mutualTLS ? "ISTIO_MUTUAL" : "DISABLE"))
            if let o = c.origination { j.string("sni", o.check.sni) }
            j.beginArray("endpoints")
            let now = Clock.monotonicNanos()
            for e in c.endpoints {
                var sums = [UInt64](repeating: 0, count: EndpointCounters.Name.allCases.count)
                var ejectedMs: UInt64 = 0
                for r in states {
                    guard let ci = r.snapshot.clusters.firstIndex(where: { $0.name == c.name }),
                          let pool = r.pools[ci].first(where: { $0.address == e }) else { continue }
                    for n in EndpointCounters.Name.allCases { sums[n.rawValue] &+= pool.counters.get(n) }
                    let until = pool.counters.get(.ejectedUntil)
                    if until > now { ejectedMs = max(ejectedMs, (until - now) / 1_000_000) }
                }
                j.beginObject()
                j.string("address", e.text)
                // No active health checking: an endpoint is healthy unless outlier detection
                // ejected it (on any worker; each worker judges from its own traffic).
                j.string("health_status", ejectedMs > 0 ? "EJECTED" : "HEALTHY")
                j.number("ejected_for_ms", ejectedMs)
                j.number("ejections_total", sums[EndpointCounters.Name.ejections.rawValue])
                j.number("rq_total", sums[EndpointCounters.Name.requests.rawValue])
                j.number("rq_error", sums[EndpointCounters.Name.errors.rawValue])
                j.number("cx_connect_fail", sums[EndpointCounters.Name.connectFailures.rawValue])
                j.number("cx_total", sums[EndpointCounters.Name.connectionsTotal.rawValue])
                j.number("cx_active", sums[EndpointCounters.Name.connectionsActive.rawValue])
                j.endObject()
            }
            j.endArray()
            j.endObject()
        }
        j.endArray()
        j.endObject()
        return j.text + "\n"
    }

    private func certs() -> String {
        func write(_ j: inout JSONWriter, _ c: CertificateInfo) {
            j.string("identity", c.identity)
            j.string("serial", c.serialHex)
            j.string("not_before", X509Info.rfc3339(c.notBefore))
            j.string("not_after", X509Info.rfc3339(c.notAfter))
            j.string("issuer", c.issuer)
            j.string("subject", c.subject)
        }
        var j = JSONWriter()
        j.beginObject()
        if let leaf = chain.first {
            write(&j, leaf)
            j.beginArray("chain")
            for c in chain.dropFirst() { j.beginObject(); write(&j, c); j.endObject() }
            j.endArray()
        }
        j.beginArray("roots")
        for r in roots { j.beginObject(); write(&j, r); j.endObject() }
        j.endArray()
        j.endObject()
        return j.text + "\n"
    }

    func run() { loop.run() }
}

/// One admin client connection: HTTP/1.1 keep-alive, GET only, tiny bodies.
private final class AdminConnection: Connection {
    unowned let server: AdminServer
    var parser = HTTP1Parser()
    var head = HTTPHead()

    init(server: AdminServer, fd: Int32) {
        self.server = server
        super.init(loop: server.loop, fd: fd, security: nil, connecting: false)
    }

    override func onInput() {
        while !input.isEmpty && !isClosing && !isClosed {
            switch parser.parseRequest(input.base, start: input.readIndex, end: input.writeIndex, into: &head) {
            case .incomplete:
                return
            case .error(let e):
                output.appendLocalReply(status: e.status, body: e.reason, close: true, flag: .downstreamProtocolError)
                requestFlush()
                closeAfterFlush()
                return
            case .complete:
                var pathEnd = head.pathEnd
                for i in head.pathStart..<head.pathEnd where input.base[i] == UInt8(ascii: "?") { pathEnd = i; break }
                let path = input.string(head.pathStart, pathEnd)
                // Admin requests carry no body we read: close after one that has one.
                let keep = head.keepAlive && head.contentLength <= 0 && !head.chunked
                let method = head.method
                input.consume(head.headEnd - input.readIndex)
                parser.resetScan()
                server.respond(method: method, path: path, into: output)
                requestFlush()
                if !keep { closeAfterFlush(); return }
                loop.setDeadline(self, loop.now + 30_000_000_000)
            }
        }
    }

    override func onPeerClosed(error: Int32) { closeNow() }
    override func onDeadline(now: UInt64) { closeNow() }
}
