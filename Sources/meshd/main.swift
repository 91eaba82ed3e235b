// meshd: the control plane. Thin: flags, the certificate authority in the state directory, the
// API and admin ports (MeshControl), then wait for SIGTERM.
import MeshConfig
import MeshControl
import MeshCA
import MeshPKI
import MeshCore
import MeshIO
import MeshEtcd
#if canImport(Glibc)
import Glibc
#endif

let usage = """
    meshd: the service mesh's control plane (certificate authority)

    USAGE:
      meshd --state-dir DIR [--store file|etcd://HOST:PORT[,HOST:PORT...]] [--api-port 15012] [--admin-port 15014] [--trust-domain cluster.local]
            [--cert-ttl 24h] [--ca-dir DIR] [--outbound-traffic-policy ALLOW_ANY|REGISTRY_ONLY] [--listen-address 127.0.0.1] [--admin-address 127.0.0.1]
            [--max-stream-age 30m] [--api-loops 2] [--log-level info] [--gateway-service-account NS/SA]...
            [--kube-api in-cluster|https://HOST:PORT [--kube-ca FILE] [--kube-token-file FILE] [--kube-audience mesh]]

    On first start meshd creates a root CA in the state directory (keys mode 0600) and writes
    STATE-DIR/root-cert.pem (the trust anchor sidecars need, --root-cert) and STATE-DIR/admin-token
    (meshctl's credential). With --ca-dir it signs with a plug-in CA instead: DIR holds ca-cert.pem,
    ca-key.pem, root-cert.pem and cert-chain.pem (Istio's names).

    API port (TLS, certificate from meshd's own CA): POST /v1/certificate, a CSR authenticated by
    a join token (`meshctl token create`) or, to renew, by the workload's current certificate.
    With --kube-api, also by a Kubernetes service-account token (audience --kube-api's), which
    meshd has the apiserver check with a TokenReview.
    Admin port (plain HTTP on 127.0.0.1 by default; TLS with meshd's own certificate when
    --admin-address is not loopback): GET /ready and GET /metrics (open), and meshctl's API
    (admin token); /ui/, a web page of the mesh (its data with the admin token; docs/web-ui.md).
    meshd's certificate names 127.0.0.1 and the listen and admin addresses as IP
    SANs; meshctl verifies it against STATE-DIR/root-cert.pem (meshctl --root-cert).

    OPTIONS:
      --state-dir DIR        CA keys, root-cert.pem, admin-token, token-key (created if missing);
                             one meshd per directory (it holds STATE-DIR/meshd.lock)
      --store file|etcd://HOST:PORT[,HOST:PORT...]
                             where the config, the registry and the VIPs live: the state directory
                             (file, default) or etcd v3 (its JSON gateway), shared by several meshd
                             replicas; they all need the same --ca-dir and share the admin token and
                             join-token key through etcd (STATE-DIR/admin-token is written for meshctl)
      --replica-id ID        this replica's name in etcd (default HOSTNAME-APIPORT)
      --leader-ttl DURATION  the leader's lease (default 5s, 2s to 60s): a replica that stops
                             keeping it alive stops leading at once and another takes over after it
      --config-dir DIR       Istio documents (*.yaml, *.yml; the kinds meshctl apply takes) applied at
                             start and whenever a file there changes (checked every second)
      --api-port N           default 15012
      --admin-port N         default 15014
      --listen-address IP    address of the API port (default 127.0.0.1; 0.0.0.0 or :: for all);
                             sidecars on other hosts dial it (sidecar --meshd IP:PORT)
      --admin-address IP     address of the admin port (default 127.0.0.1); a concrete IP other
                             than loopback serves it over TLS to other hosts (meshctl --meshd
                             https://IP:PORT --root-cert STATE-DIR/root-cert.pem)
      --trust-domain TD      SPIFFE trust domain (default cluster.local)
      --cert-ttl DURATION    workload certificate lifetime (default 24h; e.g. 10s for tests)
      --outbound-traffic-policy ALLOW_ANY|REGISTRY_ONLY   what sidecars under capture do with a
                             connection to a destination outside the mesh: pass it through
                             (ALLOW_ANY, default) or refuse and count it (BlackHoleCluster)
      --ca-dir DIR           plug-in CA
      --registry-grace D     how long a workload whose sidecar went away stays registered, and
                             how long after a restart meshd keeps the workloads it knew (30s)
      --max-apply-bytes N    the largest request the admin port reads, i.e. one `meshctl apply`
                             (default 1048576 = 1 MiB; suffixes Ki, Mi; larger gets 413)
      --max-stream-age D     a sidecar's config stream is closed at its next answer after this
                             age (jittered ±10%), so that streams spread over replicas (30m;
                             0: never)
      --api-loops N          event-loop threads serving the API port (default 2); certificate
                             signing and registration run on 4 worker threads
      --kube-api in-cluster|https://HOST:PORT
                             accept Kubernetes service-account tokens as join credentials,
                             reviewed by this apiserver (TokenReview; off by default). in-cluster:
                             https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT. Only https;
                             its certificate must chain to --kube-ca and name the host
      --kube-ca FILE         the apiserver's CA (default
                             /var/run/secrets/kubernetes.io/serviceaccount/ca.crt)
      --kube-token-file FILE meshd's own bearer token for the apiserver, re-read for every review
                             (default /var/run/secrets/kubernetes.io/serviceaccount/token); its
                             service account needs `create` on tokenreviews (authentication.k8s.io)
      --kube-audience AUD    the audience a workload's token must be issued for (default mesh)
      --gateway-service-account NS/SA[,NS/SA...]
                             gateway proxies (sidecar --gateway) with the service account SA of
                             namespace NS may be sent the TLS secrets of NS that their Gateways
                             name (repeatable; Istio's Role granting the gateway's service account
                             get/list/watch on secrets in NS). None by default: a gateway whose
                             service account is not granted gets no secret, and meshd says so
      --allow-insecure-skip-verify
                             accept DestinationRule tls.insecureSkipVerify: true (refused
                             otherwise: it turns off the server's verification)
      --otlp-endpoint URL    the OTLP/HTTP collector (http://HOST[:PORT][/PATH]; https is not
                             supported yet) pushed to every sidecar that has no --otlp-endpoint
                             of its own (docs/observability.md)
      --log-level LEVEL      debug, info, warn or error
      -h, --help             this text

    SIGTERM or SIGINT: exit 0.

    """

func fail(_ message: String, code: Int32 = 2) -> Never {
    var line = "meshd: error: \(message)\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    exit(code)
}

let specs: [Flags.Spec] = [
    .init("state-dir"), .init("config-dir"), .init("api-port"), .init("admin-port"), .init("listen-address"), .init("admin-address"),
    .init("trust-domain"), .init("outbound-traffic-policy"), .init("cert-ttl"), .init("ca-dir"), .init("log-level"), .init("help", value: false),
    .init("registry-grace"), .init("max-apply-bytes"), .init("store"), .init("replica-id"), .init("leader-ttl"),
    .init("max-stream-age"), .init("api-loops"),
    .init("kube-api"), .init("kube-ca"), .init("kube-token-file"), .init("kube-audience"),
    .init("allow-insecure-skip-verify", value: false),
    .init("gateway-service-account"),
    .init("otlp-endpoint"),
]
let flags: Flags
do { flags = try Flags(Array(CommandLine.arguments.dropFirst()), specs: specs) } catch { fail("\(error)") }
if flags.has("help") { print(usage, terminator: ""); exit(0) }
// DestinationRule tls.insecureSkipVerify: refused by the one parser unless allowed here.
IstioTraffic.Allowance.allowInsecureSkipVerify(flags.has("allow-insecure-skip-verify"))
// Tracing: the collector pushed to sidecars that name none (spec.otlpEndpoint of ProxyConfig).
if let e = flags.string("otlp-endpoint") {
    do { OTLPEndpoint.Pushed.set(try OTLPEndpoint.parse(e)) } catch { fail("--otlp-endpoint: \(error)") }
}
if let p = flags.positional.first { fail("unexpected argument \"\(p)\" (see --help)") }
guard let stateDir = flags.string("state-dir") else { fail("missing --state-dir DIR (see --help)") }
switch flags.string("log-level") ?? "info" {
case "debug": Log.minimum = .debug
case "info": Log.minimum = .info
case "warn": Log.minimum = .warn
case "error": Log.minimum = .error
case let other: fail("--log-level: expected debug, info, warn or error, got \"\(other)\"")
}
let apiPort: Int, adminPort: Int
do {
    apiPort = try flags.int("api-port", min: 0, max: 65535) ?? 15012
    adminPort = try flags.int("admin-port", min: 0, max: 65535) ?? 15014
} catch { fail("\(error)") }
var certTTL = 24 * 3600
if let t = flags.string("cert-ttl") {
    guard let n = DurationParser.parseNanos(t), n >= 1_000_000_000, n <= 8760 * 3_600_000_000_000 else {
        fail("--cert-ttl: expected a duration from 1s to 8760h such as 10s, 1h or 24h, got \"\(t)\"")
    }
    certTTL = Int(n / 1_000_000_000)
}
var grace: Int64 = 30
if let t = flags.string("registry-grace") {
    guard let n = DurationParser.parseNanos(t), n >= 1_000_000_000, n <= 3_600_000_000_000 else {
        fail("--registry-grace: expected a duration from 1s to 1h, got \"\(t)\"")
    }
    grace = Int64(n / 1_000_000_000)
}
var maxApplyBytes = 1 << 20
if let t = flags.string("max-apply-bytes") {
    let (digits, unit) = t.hasSuffix("Mi") ? (t.dropLast(2), 1 << 20) : t.hasSuffix("Ki") ? (t.dropLast(2), 1 << 10) : (Substring(t), 1)
    guard let n = Int(digits), n >= 1, n <= (256 << 20) / unit, n * unit >= 1024 else {
        fail("--max-apply-bytes: expected a size from 1Ki to 256Mi such as 4Mi or 2097152, got \"\(t)\"")
    }
    maxApplyBytes = n * unit
}
// Config streams (DESIGN §12): the API port's event loops and a stream's maximum age.
var maxStreamAge = APIStreamServer.Settings().maxStreamAge
if let t = flags.string("max-stream-age") {
    guard let n = DurationParser.parseNanos(t), n == 0 || (n >= 1_000_000_000 && n <= 168 * 3_600_000_000_000) else {
        fail("--max-stream-age: expected 0 (no maximum) or a duration from 1s to 168h such as 30m, got \"\(t)\"")
    }
    maxStreamAge = n
}
let apiLoops: Int
do { apiLoops = try flags.int("api-loops", min: 1, max: 64) ?? 2 } catch { fail("\(error)") }
let trustDomain = flags.string("trust-domain") ?? "cluster.local"
// Which gateways may be sent TLS secrets (DESIGN §15): none unless granted here.
let gatewayAccounts: GatewayServiceAccounts
do { gatewayAccounts = try GatewayServiceAccounts.parse(flags.all("gateway-service-account")) } catch { fail(error.description) }
let policyText = flags.string("outbound-traffic-policy") ?? "ALLOW_ANY"
guard let outboundPolicy = Bootstrap.OutboundTrafficPolicy(rawValue: policyText) else {
    fail("--outbound-traffic-policy: expected ALLOW_ANY or REGISTRY_ONLY, got \"\(policyText)\"")
}
if trustDomain.isEmpty || trustDomain.contains("/") || trustDomain.contains(":") { fail("--trust-domain: expected a name such as cluster.local, got \"\(trustDomain)\"") }
let listen = flags.string("listen-address") ?? "127.0.0.1"
guard let apiAddress = SocketAddress(host: listen, port: apiPort) else {
    fail("--listen-address: expected an IP address such as 10.0.0.1, fd00::1, 0.0.0.0 or ::, got \"\(listen)\"")
}
let adminHost = flags.string("admin-address") ?? "127.0.0.1"
guard let adminAddress = SocketAddress(host: adminHost, port: adminPort) else {
    fail("--admin-address: expected an IP address such as 127.0.0.1 or 10.0.0.1, got \"\(adminHost)\"")
}
if IPKind.of(adminAddress) == .wildcard {
    fail("--admin-address: \(adminHost) is a wildcard; give the concrete IP meshctl dials (its certificate check needs that address)")
}
let adminTLS = IPKind.of(adminAddress) != .loopback
if adminTLS && IPKind.of(apiAddress) == .loopback {
    Log.warn("meshd", "--admin-address \(adminHost) opens the admin port to other hosts, but the API listens on \(listen): sidecars there cannot reach it (--listen-address)")
}

// The store: the state directory, or etcd shared by replicas (DESIGN §12).
let storeText = flags.string("store") ?? "file"
var etcdEndpoints: [String]? = nil
if storeText != "file" {
    guard storeText.hasPrefix("etcd://") else { fail("--store: expected file or etcd://HOST:PORT[,HOST:PORT...], got \"\(storeText)\"") }
    let list = storeText.dropFirst("etcd://".count).split(separator: ",", omittingEmptySubsequences: false).map(String.init)
    guard !list.isEmpty, list.allSatisfy({ !$0.isEmpty && !$0.contains("/") }) else {
        fail("--store: expected etcd://HOST:PORT[,HOST:PORT...] (no path), got \"\(storeText)\"")
    }
    etcdEndpoints = list
    if flags.string("ca-dir") == nil {
        fail("--store \(storeText): replicas sign with one CA: give every replica the same --ca-dir (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem)")
    }
    if flags.string("config-dir") != nil {
        fail("--config-dir: not with --store etcd (every replica would own the directory's documents); apply them with meshctl through any replica")
    }
} else {
    for f in ["replica-id", "leader-ttl"] where flags.string(f) != nil { fail("--\(f): only with --store etcd://...") }
}
var leaderTTL = 5
if let t = flags.string("leader-ttl") {
    guard let n = DurationParser.parseNanos(t), n >= 2_000_000_000, n <= 60_000_000_000, n % 1_000_000_000 == 0 else {
        fail("--leader-ttl: expected whole seconds from 2s to 60s such as 5s, got \"\(t)\"")
    }
    leaderTTL = Int(n / 1_000_000_000)
}
let replicaID: String = flags.string("replica-id") ?? {
    var name = [CChar](repeating: 0, count: 256)
    gethostname(&name, name.count - 1)
    // A port chosen by the kernel (0) is not known yet: a random suffix keeps ids apart.
    return "\(String(cString: name))-\(apiPort == 0 ? MeshCrypto.randomHex(bytes: 3) : String(apiPort))"
}()
if !Names.isLabelValue(replicaID) || replicaID.isEmpty {
    fail("--replica-id: expected letters, digits, '-', '_' or '.' (at most 63), got \"\(replicaID)\"")
}

// Kubernetes service-account tokens as join credentials, reviewed by the apiserver.
let kubeReviewer: KubeTokenReviewer?
do {
    var env: [String: String] = [:]
    for k in ["KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"] {
        if let v = getenv(k) { env[k] = String(decoding: UnsafeRawBufferPointer(start: v, count: strlen(v)), as: UTF8.self) }
    }
    let config = try KubeAPIConfig.fromFlags(kubeAPI: flags.string("kube-api"), caFile: flags.string("kube-ca"), tokenFile: flags.string("kube-token-file"),
                                             audience: flags.string("kube-audience"), environment: env)
    if let c = config { kubeReviewer = try KubeTokenReviewer(config: c) } else { kubeReviewer = nil }
} catch {
    fail(error.description)
}

let signals = SignalWaiter()
let server: MeshdServer
// A global, so held until exit: no second meshd may work on this state directory (StateLock).
let stateLock: StateLock
do {
    try FileStore.makeDirectory(stateDir)
    stateLock = try StateLock(stateDir: stateDir)
    if let endpoints = etcdEndpoints {
        let client: EtcdClient
        do { client = try EtcdClient(endpoints: endpoints) } catch { throw CAError("--store: \(error.description)") }
        let replica = MeshdReplica(client: client, endpoints: endpoints.joined(separator: ","), id: replicaID, leaderTTL: leaderTTL)
        try replica.claim()
        let ca = try CertificateAuthority(stateDir: stateDir, caDir: flags.string("ca-dir"), trustDomain: trustDomain, certTTL: certTTL,
                                          shared: try replica.sharedSecrets())
        server = try MeshdServer(ca: ca, addresses: [IPKind.host(apiAddress), IPKind.host(adminAddress)])
        server.store = try ConfigStore.shared(client: client, endpoints: replica.endpoints, replica: replicaID, stateDir: stateDir,
                                              trustDomain: trustDomain, grace: grace, outboundTrafficPolicy: outboundPolicy)
        server.replica = replica
    } else {
        let ca = try CertificateAuthority(stateDir: stateDir, caDir: flags.string("ca-dir"), trustDomain: trustDomain, certTTL: certTTL)
        server = try MeshdServer(ca: ca, addresses: [IPKind.host(apiAddress), IPKind.host(adminAddress)])
        server.store = try ConfigStore(stateDir: stateDir, trustDomain: trustDomain, grace: grace, outboundTrafficPolicy: outboundPolicy)
    }
    server.store?.grantGatewayServiceAccounts(gatewayAccounts)
    try server.bind(api: apiAddress, admin: adminAddress, maxApplyBytes: maxApplyBytes, adminTLS: adminTLS,
                    apiHost: IPKind.of(apiAddress) == .wildcard ? nil : IPKind.host(apiAddress))
} catch {
    fail("\(error)", code: 1)
}
server.kubeReviewer = kubeReviewer
if let k = kubeReviewer {
    Log.info("meshd", "Kubernetes service-account tokens (audience \(k.config.audience)) reviewed by \(k.config.url) (CA \(k.config.caFile), meshd's token \(k.config.tokenFile))")
}
let store = server.store!
if let dir = flags.string("config-dir") {
    let watcher = ConfigDirectory(path: dir, store: store)
    watcher.check()
    Threads.spawnDetached { while true { usleep(1_000_000); watcher.check() } }
}
if let replica = server.replica {
    // Follow what other replicas commit, say this one is here, campaign; singleton work only
    // while leading (its writes fenced on the election).
    Threads.spawnDetached { store.followStore() }
    replica.start()
    Threads.spawnDetached {
        while true {
            usleep(2_000_000)
            let fence = replica.fence
            store.expireShared(fence: fence, live: fence == nil ? nil : replica.liveReplicas())
        }
    }
} else {
    Threads.spawnDetached { while true { usleep(2_000_000); store.expire() } }
}
// The canary controller (DESIGN §13): singleton work, on the leader only.
let canaryLeadership: (@Sendable () -> EtcdCompare?)?
if let replica = server.replica { canaryLeadership = { replica.fence } } else { canaryLeadership = nil }
let canaryEnv = StoreCanaryEnvironment(store: store, leadership: canaryLeadership)
do { try canaryEnv.checkStored() } catch { fail("\(error)") }
let canaryController = CanaryController(env: canaryEnv)
server.canaries = canaryController
canaryController.showRecorded()
Threads.spawnDetached {
    while true {
        usleep(200_000)
        canaryEnv.publishAdmins()
        if server.replica.map({ $0.isLeader }) ?? true { canaryController.tick() } else { canaryController.standby() }
    }
}
server.api!.settings.maxStreamAge = maxStreamAge
server.api!.settings.loops = apiLoops
Threads.spawnDetached { server.api!.run() }
Threads.spawnDetached { server.admin!.run() }
Log.info("meshd", "ready: API \(SocketAddress(host: listen, port: server.api!.port)!) (TLS), admin \(SocketAddress(host: adminHost, port: server.admin!.port)!) (\(adminTLS ? "TLS" : "plain HTTP")); trust domain \(trustDomain), certificates live \(certTTL)s; state in \(server.replica.map { "etcd \($0.endpoints) as replica \($0.id)" } ?? stateDir)")
let sig = signals.wait()
Log.info("meshd", "signal \(sig): exiting")
server.replica?.resign()
exit(0)

/// What an address is for meshd's ports: a wildcard (all addresses), loopback, or another
/// concrete IP (reachable from other hosts: the admin port is then served over TLS).
enum IPKind {
    case wildcard, loopback, other

    static func of(_ a: SocketAddress) -> IPKind {
        withUnsafeBytes(of: a.storage) { raw in
            if a.family == AF_INET {
                let b = withUnsafeBytes(of: raw.load(as: sockaddr_in.self).sin_addr) { Array($0) }
                return b.allSatisfy { $0 == 0 } ? .wildcard : b[0] == 127 ? .loopback : .other
            }
            let b = withUnsafeBytes(of: raw.load(as: sockaddr_in6.self).sin6_addr) { Array($0) }
            if b.allSatisfy({ $0 == 0 }) { return .wildcard }
            if b.dropLast().allSatisfy({ $0 == 0 }) && b[15] == 1 { return .loopback }
            // An IPv4-mapped loopback (::ffff:127.x.y.z).
            if b[0..<10].allSatisfy({ $0 == 0 }) && b[10] == 0xff && b[11] == 0xff && b[12] == 127 { return .loopback }
            return .other
        }
    }

    /// The canonical IP text of an address (no port, no brackets), as the certificate's IP SAN.
    static func host(_ a: SocketAddress) -> String {
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        return withUnsafeBytes(of: a.storage) { raw -> String in
            if a.family == AF_INET {
                var v4 = raw.load(as: sockaddr_in.self).sin_addr
                return inet_ntop(AF_INET, &v4, &buf, socklen_t(buf.count)) != nil ? String(cString: buf) : ""
            }
            var v6 = raw.load(as: sockaddr_in6.self).sin6_addr
            return inet_ntop(AF_INET6, &v6, &buf, socklen_t(buf.count)) != nil ? String(cString: buf) : ""
        }
    }
}
