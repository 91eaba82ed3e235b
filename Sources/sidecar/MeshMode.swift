// Mesh mode: identity from meshd, listeners from the command line (DESIGN §2).
import MeshConfig
import MeshAgent
import MeshControlWire
import MeshPKI
import MeshCore
import MeshIO
import MeshProxy
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Runs the sidecar in mesh mode until SIGTERM/SIGINT; never returns.
func runMeshMode(_ flags: Flags, concurrency: Int?) -> Never {
    // One address or several (meshd replicas, tried in turn): IP:PORT[,IP:PORT...].
    guard let meshdText = flags.string("meshd") else { fail("--meshd: expected meshd's API address as IP:PORT (e.g. 127.0.0.1:15012)") }
    var meshd: [SocketAddress] = []
    for part in meshdText.split(separator: ",", omittingEmptySubsequences: false) {
        guard let a = SocketAddress(String(part)) else {
            fail("--meshd: expected meshd's API address as IP:PORT[,IP:PORT...] (e.g. 127.0.0.1:15012), got \"\(part)\" in \"\(meshdText)\"")
        }
        if meshd.contains(where: { $0.text == a.text }) { fail("--meshd: \(a.text) is given twice") }
        meshd.append(a)
    }
    guard let rootPath = flags.string("root-cert") else { fail("mesh mode needs --root-cert FILE (meshd's STATE-DIR/root-cert.pem)") }
    guard let rootPEM = readFile(rootPath), rootPEM.contains("BEGIN CERTIFICATE") else { fail("--root-cert \(rootPath): no PEM certificate there") }
    var token = flags.string("token")
    if let f = flags.string("token-file") {
        if token != nil { fail("give --token or --token-file, not both") }
        guard let t = readFile(f) else { fail("--token-file \(f): cannot read it") }
        token = t.split(whereSeparator: { $0 == "\n" || $0 == " " }).first.map(String.init)
    }
    guard let token, !token.isEmpty else { fail("mesh mode needs a join token: --token T or --token-file F (`meshctl token create`)") }
    guard let service = flags.string("service") else { fail("mesh mode needs --service NAME") }
    var o = MeshModeOptions(service: service)
    var dnsPort = 0
    o.namespace = flags.string("namespace") ?? "default"
    o.serviceAccount = flags.string("service-account")
    for l in flags.all("label") {
        let kv = l.split(separator: "=", maxSplits: 1).map(String.init)
        guard kv.count == 2, !kv[0].isEmpty else { fail("--label: expected k=v, got \"\(l)\"") }
        o.labels.append((kv[0], kv[1]))
    }
    do {
        o.appPort = try flags.int("app-port", min: 1, max: 65535)
        o.inboundPort = try flags.int("inbound-port", min: 0, max: 65535) ?? 15006
        o.outboundPort = try flags.int("outbound-port", min: 0, max: 65535) ?? 15001
        o.adminPort = try flags.int("admin-port", min: 0, max: 65535) ?? 15000
        o.servicePort = try flags.int("service-port", min: 1, max: 65535)
        // Under capture the app's DNS goes to the sidecar: its port is on unless set to 0.
        dnsPort = try flags.int("dns-port", min: 0, max: 65535) ?? (flags.has("capture") ? 15053 : 0)
    } catch { fail("\(error)") }
    let resolvConf = flags.string("resolv-conf")
    if resolvConf != nil && dnsPort == 0 { fail("--resolv-conf: the DNS port is off; give --dns-port P to turn it on") }
    // The inbound listener binds the listen address and the sidecar registers advertise:port
    // (DESIGN §10); outbound and admin stay on 127.0.0.1.
    let addresses: MeshAddresses
    do {
        addresses = try MeshAddresses.resolve(listen: flags.string("listen-address"), advertise: flags.string("advertise-address"))
    } catch { fail("\(error)") }
    o.listenAddress = addresses.listen
    let advertise = addresses.advertise
    /// `advertise:port` as meshd stores it (`[v6]:port` for IPv6).
    @Sendable func advertised(_ port: Int) -> String { SocketAddress(host: advertise, port: port)?.text ?? "\(advertise):\(port)" }
    o.appProtocol = flags.string("app-protocol") ?? "http"
    o.trustDomain = flags.string("trust-domain") ?? "cluster.local"
    o.concurrency = concurrency
    o.routes = flags.all("route")
    o.capture = flags.has("capture")
    let identity = "spiffe://\(o.trustDomain)/ns/\(o.namespace)/sa/\(o.serviceAccount ?? service)"

    // Check the flags once before talking to meshd (a credential-free dry build).
    let opts = o
    @Sendable func bootstrap(_ c: WorkloadIdentity.Credentials?) throws(ConfigError) -> Bootstrap {
        var tls = Bootstrap.TLSFiles(certChain: "(issued by meshd \(meshdText))", privateKey: "(in memory)",
                                     trustBundle: rootPath, trustDomain: opts.trustDomain, minTLS13: false)
        tls.certChainPEM = c?.chainPEM
        tls.privateKeyPEM = c?.keyPEM
        tls.trustBundlePEM = c?.bundlePEM
        return try Bootstrap.meshMode(opts, tls: tls)
    }
    let dry: Bootstrap
    do { dry = try bootstrap(nil) } catch { fail("\(error)") }

    let signals = SignalWaiter()
    Threads.raiseOpenFilesLimit()
    let wi = WorkloadIdentity(meshd: meshd, identity: identity, rootPEM: rootPEM, token: token)
    let running = Mutex<ProxyServer?>(nil)
    let workers = concurrency ?? Threads.cpuCount
    // The proxy ports are taken before meshd is asked for anything: a port in use (another
    // sidecar, any other process) stops this one at once, naming it. Connections that arrive
    // before the workers run wait in the listen backlog.
    let sockets: ListenerSockets
    do {
        sockets = try ListenerSockets.bind(outbound: dry.outbound?.address, inbound: dry.inbound?.address, workers: workers,
                                           capture: o.capture)
    } catch { fail("\(error)", code: 1) }
    // The DNS port, bound with the proxy ports (a port in use stops the sidecar now); it
    // forwards every name until the first config from meshd names the mesh's.
    var dns: DNSServer? = nil
    if dnsPort > 0 {
        do { dns = try DNSServer.start(port: dnsPort, resolvConf: resolvConf ?? "/etc/resolv.conf") } catch {
            sockets.close()
            fail("\(error)", code: 1)
        }
    }
    let dnsServer = dns
    // Until the certificate arrives the admin port answers /ready with 503 (DESIGN §2).
    let waiting: ControlServer
    do {
        waiting = try ControlServer(address: SocketAddress(host: "127.0.0.1", port: o.adminPort)!, name: "admin", context: { nil }) { r in
            switch r.path {
            case "/healthz": return ControlResponse(200, "OK\n")
            default: return ControlResponse(503, "not ready: waiting for a certificate from meshd at \(meshdText)\n")
            }
        }
    } catch { fail("\(error)", code: 1) }
    let waitingThread = Threads.spawn(name: "admin-wait") { waiting.run() }
    /// What the config in force is made of: the credentials and the routing config meshd pushed.
    let inputs = Mutex<(creds: WorkloadIdentity.Credentials?, pushed: String?, version: Int)>((nil, nil, 1))
    /// Builds and applies a snapshot from the current inputs; the error (a refused push) leaves
    /// the config in force.
    @Sendable func rebuild(_ server: ProxyServer) throws -> String {
        let (creds, pushed, v) = inputs.withLock { i -> (WorkloadIdentity.Credentials?, String?, Int) in
            i.version += 1
            return (i.creds, i.pushed, i.version)
        }
        var b = try bootstrap(creds)
        if let p = pushed { b = try b.withPushedConfig(p, source: "meshd") }
        server.replace(try ProxySnapshot(bootstrap: b, version: "mesh-\(v)"))
        return "mesh-\(v)"
    }
    Threads.spawnDetached {
        let creds: WorkloadIdentity.Credentials
        switch wi.obtain() {
        case .none: return
        case .failure(let e)?: fail("\(e)", code: 1)
        case .success(let c)?: creds = c
        }
        inputs.withLock { $0.creds = creds }
        waiting.stop()
        Threads.join(waitingThread)
        let server: ProxyServer
        do {
            let snap = try ProxySnapshot(bootstrap: try bootstrap(creds), version: "mesh-1")
            server = ProxyServer(snapshot: snap, concurrency: workers)
            // `/ready` stays 503 until the first config from meshd is applied (DESIGN §2).
            try server.start(sockets: sockets, ready: false)
            if let d = dnsServer { server.attachDNS(d) }
        } catch {
            fail("\(error)", code: 1)
        }
        running.withLock { $0 = server }
        Log.info("sidecar", "\(identity) ready (mesh mode) with \(workers) worker(s): outbound :\(server.outboundPort)"
                 + (server.inboundPort > 0 ? ", inbound \(SocketAddress(host: opts.listenAddress, port: server.inboundPort)?.text ?? "") (mTLS), registered as \(advertised(server.inboundPort))" : "")
                 + ", admin :\(server.adminPort)")
        wi.startRenewal { c in
            inputs.withLock { $0.creds = c }
            do { _ = try rebuild(server) } catch {
                Log.error("sidecar", "new certificate not applied (the previous one stays): \(error)")
            }
        }
        // The config stream: register this workload, then take each config meshd pushes,
        // answering ACK or NACK; while meshd is away the last good config stays.
        let labels = opts.labels.contains { $0.0 == "app" } ? opts.labels : [("app", opts.service)] + opts.labels
        let registration = opts.appPort.map { _ in
            ConfigStream.Registration(service: opts.service, namespace: opts.namespace, address: advertised(server.inboundPort),
                                      labels: labels.map { ConfigStream.Label(key: $0.0, value: $0.1) },
                                      serviceProtocol: opts.serviceProtocol.rawValue, servicePort: opts.servicePort ?? opts.appPort)
        }
        let stream = ConfigStreamClient(
            identity: wi, registration: registration,
            node: advertised(opts.appPort != nil ? server.inboundPort : server.adminPort),
            admin: "127.0.0.1:\(server.adminPort)",
            apply: { text, _ in
                let previous = inputs.withLock { i -> String? in let p = i.pushed; i.pushed = text; return p }
                do { return try rebuild(server) } catch {
                    inputs.withLock { $0.pushed = previous }
                    throw error
                }
            },
            ready: { why in
                server.markReady()
                Log.info("sidecar", "ready: \(why)")
            })
        Threads.spawnDetached { stream.run() }
    }
    let sig = signals.wait()
    wi.stop()
    guard let server = running.withLock({ $0 }) else {
        Log.info("sidecar", "signal \(sig) before the certificate arrived: exiting")
        exit(0)
    }
    Log.info("sidecar", "signal \(sig): draining")
    server.drainAndStop(timeout: Bootstrap.Defaults.drainTimeout)
    exit(0)
}
