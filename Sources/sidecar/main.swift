// sidecar: the data-plane proxy. Thin: parse flags, load and compile the config, start the
// workers, wait for SIGTERM/SIGINT, drain, exit. Everything else lives in MeshProxy.
import MeshConfig
import MeshAgent
import MeshControlWire
import MeshPKI
import MeshCore
import MeshIO
import MeshProxy
import MeshTLS
#if canImport(Glibc)
import Glibc
#endif

let usage = """
    sidecar: a service-mesh sidecar proxy (epoll, OpenSSL 3, HTTP/1.1 and HTTP/2)

    USAGE:
      sidecar --config FILE.yaml [--concurrency N] [--log-level debug|info|warn|error]
      sidecar --meshd HOST:PORT[,HOST:PORT...] --root-cert FILE (--token T | --token-file F) --service NAME
              [--namespace default] [--service-account SA] [--label k=v]... [--app-port P]
              [--app-protocol http|http2|grpc|tcp] [--inbound-port 15006] [--outbound-port 15001]
              [--admin-port 15000] [--concurrency N] [--trust-domain cluster.local]
              [--route HOST=IP:PORT[,IP:PORT]]... [--advertise-address IP] [--listen-address IP]
              [--capture] [--dns-port P] [--resolv-conf FILE] [--labels-file F] [--status-port P]
              [--app-probe /app-health/CONTAINER/readyz|livez|startupz=PORT[/PATH]]... [--check]

    Static mode: one YAML file declares this workload, its listeners (outbound: plain HTTP from
    the local app, routed by Host to clusters over mutual TLS; inbound: mutual TLS from other
    sidecars, forwarded to the local app), its certificate files, clusters and routes. See
    config/client-sidecar.yaml and config/server-sidecar.yaml for commented examples.

    OPTIONS:
      --config FILE        the static bootstrap (apiVersion sidecar.mesh/v1alpha1, kind Bootstrap)
      --concurrency N      worker threads, each one epoll loop (default: spec.concurrency, else
                           the number of CPUs)
      --log-level LEVEL    debug, info (default), warn or error
      --allow-insecure-skip-verify
                           accept DestinationRule tls.insecureSkipVerify: true in the static file
                           (refused otherwise; in mesh mode meshd's flag of that name decides)
      --dns-resolver IP:PORT
                           the DNS server asked for the names of DNS clusters (ServiceEntry
                           resolution: DNS); default: the first nameserver of /etc/resolv.conf
      --otlp-endpoint URL  send spans to this OTLP/HTTP collector (http://HOST[:PORT][/PATH],
                           port 4318 and /v1/traces by default; https is not supported yet); both
                           modes; in mesh mode meshd's --otlp-endpoint is used when this is absent.
                           Without a collector no span is recorded and trace headers pass as sent
      --trace-batch-size N spans per export request (default 512)
      --trace-flush-interval DURATION
                           a partial batch is sent after this long (default 1s; 10ms to 60s)
      --trace-queue-size N spans each worker holds for the exporter (default 512); beyond it
                           spans are dropped and counted (mesh_tracing_spans_dropped_total)
      --check              validate the config and load its certificates, then exit; the
                           workload certificate must be within its validity period and chain
                           to spec.tls.trustBundle (checked at start and on SIGHUP too)
      -h, --help           this text

    Admin (spec.admin, default 127.0.0.1:15000): GET /ready, /healthz, /stats.
    SIGTERM or SIGINT: stop accepting, finish in-flight requests (spec.drainTimeout, default 20s),
    exit 0. SIGHUP: re-read the config file (routes, clusters, VirtualServices, DestinationRules,
    certificate files); a valid one applies to new requests, a refused one changes nothing
    (listener and admin addresses need a restart).

    Mesh mode: the sidecar generates its private key in memory (EC P-256), obtains its
    certificate for spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/SERVICE-ACCOUNT from meshd with the
    join token (`meshctl token create`), starts serving, and renews at half lifetime with a new
    key (authenticated by its current certificate; retried with back-off while meshd is away).
    New certificates apply to new connections; established ones continue.
      --meshd HOST:PORT[,HOST:PORT...]   meshd's API address (TLS); several: meshd replicas.
                             HOST: an IPv4 address, [IPv6], or a DNS name (meshd.mesh-system.svc),
                             resolved before the first certificate request, every address kept
                             in order, each once; while no name resolves the sidecar keeps trying
                             every second (logged once per 10 s; /ready 503), it does not exit.
                             Certificate requests try them in turn; the config stream keeps one
                             connection and, when it fails, moves to the next (first retry in
                             100-300 ms, then jittered back-off); after meshd closes it at its
                             maximum age, to a random one. The last good config keeps serving.
      --root-cert FILE       the trust anchor (meshd's STATE-DIR/root-cert.pem)
      --token T, --token-file F   the join token; the file is read each time a token is needed
                             (the first certificate, and a later one when the certificate lapsed
                             or was refused), trailing whitespace trimmed: a projected
                             service-account token the kubelet rotates works. An unreadable or
                             empty file then is retried with back-off, naming the file
      --service NAME         this workload's service; also --namespace (default "default"),
                             --service-account (default: the service), --label k=v (app=NAME is
                             always added)
      --labels-file F        labels from the Kubernetes downward API (metadata.labels in a
                             downwardAPI volume: key="value" per line, Go-quoted), read at start
                             and registered like --label ones; a key given both ways takes the
                             --label value. A malformed line stops the sidecar naming file and line
      --status-port P        a port on the listen address for the kubelet and Prometheus
                             (default 0: off; Istio uses 15021): GET/HEAD /ready, /healthz,
                             /stats/prometheus (as on the admin port) and the app probes; all
                             else 404 (/config_dump, /certs, /clusters, POST /drain stay on the
                             loopback admin port). Bound with the proxy ports
      --app-probe /app-health/CONTAINER/readyz|livez|startupz=PORT[/PATH]   (repeatable; needs
                             --status-port) GET on the status port at the first path makes a GET
                             from the sidecar to 127.0.0.1:PORT at PATH (default /): 200 when the
                             app answers 200-399, the app's status otherwise, 503 with a reason
                             when it cannot be reached or does not answer within 10 s (at most 8
                             in flight per path, the rest 503)
      --access-log-path F    where access-log lines go when a Telemetry accessLogging enables them
                             for this workload (default /dev/stdout, as Istio's); opened at start
      --access-log-sampling S   the share (0, 1] of non-error requests logged (default 1; errors
                             and audited requests are always logged); docs/observability.md
      --check                parse the flags and read the files they name (root certificate,
                             token file, labels file), print "flags ok" and exit 0, without
                             contacting meshd or binding ports; exit 2 naming what is wrong
      --app-port P           the local app's port (inbound listener); none: a caller-only workload
      --app-protocol P       what the app speaks: http (HTTP/1.1, default), http2 or grpc (h2c),
                             or tcp (opaque bytes, docs/tcp.md)
      --inbound-port, --outbound-port, --admin-port   defaults 15006, 15001, 15000
      --trust-domain TD      must match meshd's (default cluster.local)
      --advertise-address IP  where other sidecars reach this one (registered with meshd as
                             IP:INBOUND-PORT, [IP]:PORT for IPv6; default: the listen address,
                             else 127.0.0.1); a concrete address, never a wildcard
      --listen-address IP    the address the inbound (mTLS) listener binds (default: the
                             advertise address); 0.0.0.0 or :: only with an explicit
                             --advertise-address; a concrete address must equal the advertise
                             address. The outbound listener and admin always bind 127.0.0.1
      --route HOST=IP:PORT[,IP:PORT]  static outbound routes over mTLS (HTTP/2) until the first
                             config arrives from meshd (which then replaces them)
      --service-port N       the port callers use for this service (default: the app port);
                             registered with meshd, matched by tcp routes and authz ports
      --capture              behind transparent capture (`meshctl capture apply`, or `meshctl run
                             --capture`): the outbound listener (also on [::1]) routes each
                             connection by its original destination: a mesh service's VIP and
                             port like a named call, anything else by meshd's
                             outboundTrafficPolicy (ALLOW_ANY passes it through, REGISTRY_ONLY
                             refuses it); the app is reached from 127.0.0.6. Run the sidecar as
                             the proxy uid/gid (1337) so its own connections are not captured
      --dns-port P           answer DNS on 127.0.0.1:P and [::1]:P, UDP and TCP (default 0: off;
                             15053 with --capture):
                             mesh names (svc, svc.ns, svc.ns.svc, svc.ns.svc.cluster.local,
                             ServiceEntry hosts) get the VIPs meshd allocated, TTL 30; other names
                             are forwarded to the nameservers of --resolv-conf (2 s each, then
                             the next; SERVFAIL when all fail). See docs/dns.md
      --resolv-conf FILE     where the nameservers are read (default /etc/resolv.conf)
    The sidecar registers its workload with meshd and applies the routing and security config
    meshd pushes (answering ACK or NACK; the last good config stays while meshd is away).
    The proxy ports are bound before meshd is asked for anything; /ready answers 200 once the
    certificate is in place and the first config from meshd is applied.
    Ports: no other process may hold a proxy or admin port (the workers share theirs through
    SO_REUSEPORT among themselves only); a port in use stops the sidecar, naming it.

    """

func fail(_ message: String, code: Int32 = 2) -> Never {
    var line = "sidecar: error: \(Printable.escaped(message))\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    exit(code)
}

func readFile(_ path: String) -> String? { try? FileStore.read(path) }

let flags: Flags
do {
    flags = try Flags(Array(CommandLine.arguments.dropFirst()), specs: SidecarMeshFlags.specs)
} catch {
    fail("\(error)")
}
if flags.has("help") {
    print(usage, terminator: "")
    exit(0)
}
if let r = flags.string("dns-resolver") {
    // ServiceEntry resolution DNS: the server asked (default: /etc/resolv.conf's first).
    guard let a = SocketAddress(r) else { fail("--dns-resolver: expected IP:PORT (e.g. 127.0.0.1:53 or [::1]:53), got \"\(r)\"") }
    EndpointResolver.shared.setNameserver(a)
}
if flags.has("meshd") {
    // Mesh mode: the whole command line checked by MeshAgent's parser (also used by the tests
    // of `meshctl kube-inject`), before any file is read or meshd contacted.
    let mesh: SidecarMeshFlags
    do { mesh = try SidecarMeshFlags.parse(flags) } catch { fail("\(error)") }
    if let lvl = mesh.logLevel { Log.minimum = lvl }
    runMeshMode(mesh)
}
if let lvl = flags.string("log-level") {
    switch lvl {
    case "debug": Log.minimum = .debug
    case "info": Log.minimum = .info
    case "warn": Log.minimum = .warn
    case "error": Log.minimum = .error
    default: fail("--log-level: expected debug, info, warn or error, got \"\(lvl)\"")
    }
}
let concurrencyFlag: Int?
do { concurrencyFlag = try flags.int("concurrency", min: 1, max: 256) } catch { fail("\(error)") }
if flags.has("dns-port") || flags.has("resolv-conf") {
    fail("--dns-port and --resolv-conf are mesh-mode flags (with --meshd); static mode has no DNS port")
}
if let f = SidecarMeshFlags.meshOnly.first(where: { flags.has($0) }) {
    fail("--\(f) is a mesh-mode flag (with --meshd); static mode takes its workload from the config file")
}
if let p = flags.positional.first { fail("unexpected argument \"\(p)\" (see --help)") }
guard let configPath = flags.string("config") else { fail("missing --config FILE.yaml, or --meshd for mesh mode (see --help)") }

IstioTraffic.Allowance.allowInsecureSkipVerify(flags.has("allow-insecure-skip-verify"))
guard let text = readFile(configPath) else { fail("cannot read \(configPath): \(String(cString: strerror(errno)))") }
let traceExport: TraceExportOptions
do { traceExport = try TraceExportOptions.parse(flags) } catch { fail("\(error)") }
let bootstrap: Bootstrap
do {
    var b = try Bootstrap.parse(text, file: configPath)
    b.traceExport = traceExport
    bootstrap = b
} catch {
    fail("\(error)")
}
let snapshot: ProxySnapshot
do {
    snapshot = try ProxySnapshot(bootstrap: bootstrap, version: "static-1")
} catch {
    fail("\(configPath): \(error)")
}
do {
    try checkOwnCertificate(bootstrap)
} catch {
    fail("\(configPath): \(error)")
}
if flags.has("check") {
    print("config ok: \(configPath)")
    exit(0)
}

// Block the signals before any thread starts, so only the signalfd sees them.
let signals = SignalWaiter()
Threads.raiseOpenFilesLimit()
let concurrency = concurrencyFlag ?? bootstrap.concurrency ?? Threads.cpuCount
let server = ProxyServer(snapshot: snapshot, concurrency: concurrency)
do {
    try server.start()
} catch {
    fail("\(error)", code: 1)
}
var listening: [String] = []
if server.outboundPort > 0 { listening.append("outbound :\(server.outboundPort)") }
if server.inboundPort > 0 { listening.append("inbound :\(server.inboundPort) (mTLS)") }
listening.append("admin :\(server.adminPort)")
Log.info("sidecar", "\(bootstrap.name) (\(bootstrap.workload.service).\(bootstrap.workload.namespace)) ready with \(concurrency) worker(s): \(listening.joined(separator: ", "))")

// SIGHUP re-reads the config file: a valid one replaces the config in force for new requests
// (requests in flight finish on the old one); a refused one changes nothing.
var inForce = bootstrap
var reloads = 1
var sig = signals.waitReleasingIdleMemory()
while sig == SignalWaiter.sighup {
    reloads += 1
    if let next = reload(configPath, current: inForce) {
        do {
            let snap = try ProxySnapshot(bootstrap: next, version: "static-\(reloads)")
            server.replace(snap)
            inForce = next
            Log.info("sidecar", "SIGHUP: \(configPath) applied as config version static-\(reloads)")
        } catch {
            Log.error("sidecar", "SIGHUP: \(configPath) refused, the config in force stays: \(error)")
        }
    }
    sig = signals.waitReleasingIdleMemory()
}
Log.info("sidecar", "signal \(sig): draining (up to \(inForce.drainTimeout / 1_000_000_000)s)")
server.drainAndStop(timeout: inForce.drainTimeout)
Log.info("sidecar", "stopped after \(server.total(.requestsTotal)) request(s)")
exit(0)

/// The config file re-read for SIGHUP, or nil (logged) when it is refused or changes what a
/// running sidecar cannot change (its listening addresses).
func reload(_ path: String, current: Bootstrap) -> Bootstrap? {
    guard let text = readFile(path) else {
        Log.error("sidecar", "SIGHUP: cannot read \(path); the config in force stays")
        return nil
    }
    var next: Bootstrap
    do { next = try Bootstrap.parse(text, file: path); next.traceExport = current.traceExport } catch {
        Log.error("sidecar", "SIGHUP: \(error); the config in force stays")
        return nil
    }
    do { try checkOwnCertificate(next) } catch {
        Log.error("sidecar", "SIGHUP: \(path): \(error); the config in force stays")
        return nil
    }
    if next.outbound?.address != current.outbound?.address || next.inbound?.address != current.inbound?.address
        || next.admin != current.admin || next.concurrency != current.concurrency || (next.accessLog == nil) != (current.accessLog == nil) {
        Log.error("sidecar", "SIGHUP: \(path) changes listener or admin addresses, concurrency or access logging, which need a restart; the config in force stays")
        return nil
    }
    return next
}

/// Refuses a workload certificate that its peers would refuse: expired, not yet valid, or not
/// chaining to the workload's own trust bundle (the error names the file and the reason).
func checkOwnCertificate(_ b: Bootstrap) throws {
    guard let tls = b.tls else { return }
    guard let chain = tls.certChainPEM ?? readFile(tls.certChain) else {
        throw TLSConfigError("cannot read certificate \(tls.certChain): \(String(cString: strerror(errno)))")
    }
    guard let bundle = tls.trustBundlePEM ?? readFile(tls.trustBundle) else {
        throw TLSConfigError("cannot read trust bundle \(tls.trustBundle): \(String(cString: strerror(errno)))")
    }
    try CertificateCheck.verify(chainPEM: chain, chainFile: tls.certChain, bundlePEM: bundle, bundleFile: tls.trustBundle,
                                now: Int64(time(nil)))
}
