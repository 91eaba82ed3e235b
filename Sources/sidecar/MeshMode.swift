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

/// Runs the sidecar in mesh mode until SIGTERM/SIGINT; never returns. The flags were checked
/// whole by `SidecarMeshFlags.parse`; the files they name are read here.
func runMeshMode(_ parsed: SidecarMeshFlags) -> Never {
    var flags = parsed
    // DestinationRule tls.insecureSkipVerify: meshd refused it at apply unless its own flag
    // allowed it, so what meshd pushes is accepted here.
    IstioTraffic.Allowance.allowInsecureSkipVerify(true)
    // The root certificate and the labels file, read before anything starts (`--check`: the
    // token file too); a bad one stops the sidecar naming the flag, the file and the line.
    let rootPEM: String
    do { rootPEM = try flags.loadFiles(withToken: flags.check).rootPEM } catch { fail("\(error)") }
    let meshdText = flags.meshdText
    let concurrency = flags.options.concurrency
    let dnsPort = flags.dnsPort
    let resolvConf = flags.resolvConf
    let advertise = flags.advertise
    /// `advertise:port` as meshd stores it (`[v6]:port` for IPv6).
    @Sendable func advertised(_ port: Int) -> String { SocketAddress(host: advertise, port: port)?.text ?? "\(advertise):\(port)" }
    let o = flags.options
    let identity = flags.identity

    // Check the flags once more with the labels of the file (a credential-free dry build).
    let opts = o
    let meshFlags = flags
    @Sendable func bootstrap(_ c: WorkloadIdentity.Credentials?) throws(ConfigError) -> Bootstrap {
        try meshFlags.bootstrap(c)
    }
    let dry: Bootstrap
    do { dry = try bootstrap(nil) } catch { fail("\(error)") }
    if flags.check {
        print("flags ok")
        exit(0)
    }

    let signals = SignalWaiter()
    Threads.raiseOpenFilesLimit()
    /// The identity, made once meshd's names resolve; `stopping`: a signal came first.
    let agent = Mutex<WorkloadIdentity?>(nil)
    let stopping = Atomic<Bool>(false)
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
    // The status port for the kubelet and Prometheus (`--status-port`), on the listen address,
    // bound with the proxy ports; /ready there is 503 until the proxy is ready.
    var statusServer: StatusServer? = nil
    if flags.statusPort > 0 {
        do {
            statusServer = try StatusServer.start(address: SocketAddress(host: o.listenAddress, port: flags.statusPort)!,
                                                  probes: flags.appProbes)
        } catch {
            sockets.close()
            fail("\(error)", code: 1)
        }
    }
    let status = statusServer
    let endpoints = flags.meshd
    let token = flags.token
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
        // meshd's names resolved off any event loop before the first certificate request; while
        // none resolves (in Kubernetes DNS may come up after the pod) keep trying every second.
        guard let addresses = resolveMeshd(endpoints, stopping: stopping) else { return }
        let wi = WorkloadIdentity(meshd: addresses, identity: identity, rootPEM: rootPEM, token: token)
        let stopped = agent.withLock { a -> Bool in
            a = wi
            return stopping.load(ordering: .acquiring)
        }
        if stopped { return }
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
            if let st = status { server.attachStatus(st) }
        } catch {
            fail("\(error)", code: 1)
        }
        running.withLock { $0 = server }
        Log.info("sidecar", "\(identity) ready (mesh mode) with \(workers) worker(s): outbound :\(server.outboundPort)"
                 + (server.inboundPort > 0 ? ", inbound \(SocketAddress(host: opts.listenAddress, port: server.inboundPort)?.text ?? "") (mTLS), registered as \(advertised(server.inboundPort))" : "")
                 + ", admin :\(server.adminPort)" + (status.map { ", status \($0.address)" } ?? ""))
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
            },
            // A gateway's TLS secrets from meshd: held in memory only (GatewaySecrets.swift).
            secrets: opts.gateway ? GatewaySecrets.fromPush : nil)
        if opts.gateway { stream.gatewayLabels = labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",") }
        Threads.spawnDetached { stream.run() }
    }
    let sig = signals.waitReleasingIdleMemory()
    agent.withLock { a in
        stopping.store(true, ordering: .releasing)
        a?.stop()
    }
    guard let server = running.withLock({ $0 }) else {
        Log.info("sidecar", "signal \(sig) before the certificate arrived: exiting")
        exit(0)
    }
    Log.info("sidecar", "signal \(sig): draining")
    server.drainAndStop(timeout: Bootstrap.Defaults.drainTimeout)
    exit(0)
}

/// meshd's addresses from `--meshd` (names resolved with getaddrinfo, in the order given, each
/// address once), trying every second while none resolves and logging that once per 10 s. Nil
/// when a signal came first.
func resolveMeshd(_ endpoints: [MeshdEndpoint], stopping: borrowing Atomic<Bool>) -> [SocketAddress]? {
    var lastLog: UInt64 = 0
    var logged = false
    while !stopping.load(ordering: .acquiring) {
        let r = MeshdResolver.resolve(endpoints)
        if !r.addresses.isEmpty {
            if !r.failures.isEmpty {
                Log.warn("sidecar", "--meshd: cannot resolve \(r.failures.joined(separator: "; ")); using \(r.addresses.map(\.text).joined(separator: ", "))")
            } else if endpoints.contains(where: { if case .name = $0 { return true } else { return false } }) {
                Log.info("sidecar", "--meshd: \(endpoints.map(\.description).joined(separator: ",")) is \(r.addresses.map(\.text).joined(separator: ", "))")
            }
            return r.addresses
        }
        let now = Clock.monotonicNanos()
        if !logged || now - lastLog >= 10_000_000_000 {
            Log.warn("sidecar", "--meshd: cannot resolve \(r.failures.joined(separator: "; ")); trying again every second (not ready until meshd answers)")
            lastLog = now
            logged = true
        }
        for _ in 0..<10 where !stopping.load(ordering: .acquiring) { usleep(100_000) }
    }
    return nil
}
