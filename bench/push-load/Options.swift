import MeshControlWire
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

let usage = """
    push-load: simulated sidecars for meshd, on MeshIO event loops (bench/push.sh)

    USAGE:
      push-load --api HOST:PORT[,HOST:PORT...] --admin URL[,URL...] --admin-token-file FILE
                --root-cert FILE [--streams 1000] [--namespaces 10] [--register 1]
                [--applies 20] [--sidecar-scope] [--csr-clients 0] [--csr-seconds 10] ...

    Gets a workload certificate per namespace (a join token minted on the admin port, a CSR to
    the API port), opens --streams config streams (one keep-alive mTLS connection each, spread
    over the namespaces, the threads and the --api addresses round-robin), registers the first
    --register streams of each namespace as workloads of service `svc` there, and waits until
    every stream has ACKed its first config and no push came for --quiet. Then it measures
    meshd (--watch-pid) and itself idle for --idle, and runs --applies applies of a
    VirtualService of service `svc` in the first namespace through the admin port, each timed
    from just before the apply until every stream that should get it ACKed it; pushes to streams
    that should not get it are counted. Then, with --csr-clients C, C keep-alive clients post a
    CSR with a join token to the API (--csr-api, default --api) for --csr-seconds: signatures/s.
    Prints one summary of key=value lines on stdout; progress on stderr.

    OPTIONS:
      --api LIST             meshd API addresses (HOST:PORT, comma-separated: replicas)
      --admin LIST           meshd admin URLs (http://IP:PORT, or https:// with --root-cert);
                             tokens are minted on the first, applies go round-robin
      --admin-token-file F   STATE-DIR/admin-token
      --root-cert F          STATE-DIR/root-cert.pem (the API's trust anchor)
      --trust-domain TD      default cluster.local
      --streams N            simulated sidecars (default 1000; 0: none, CSR run only)
      --namespaces K         namespaces load-0..load-K-1, streams spread round-robin (default 10)
      --register R           streams per namespace registered as workloads of `svc` (default 1)
      --sidecar-scope        first apply a Sidecar (egress hosts ["./*"]) in every namespace:
                             then only the first namespace's sidecars should get each apply
      --applies A            applies to time (default 20)
      --settle D             wait after each apply before counting unexpected pushes (500ms)
      --apply-timeout D      per apply, for every expected ACK (default 30s)
      --connect-timeout D    for every stream's first config (default 180s)
      --quiet D              no push for this long before measuring (default 1s)
      --idle D               idle measurement window (default 5s; 0: none)
      --watch-pid PID        a meshd process to report CPU, RSS and threads for (repeatable)
      --threads T            event-loop threads (default 2)
      --ramp M               handshakes in flight per thread (default 64)
      --sources auto|none|IP,IP...
                             source addresses to spread streams over; auto: when the API is on
                             127.x, 127.1.0.1, 127.1.0.2, ... (meshd caps connections per client
                             address), else none (default auto)
      --per-source N         streams per source address (default 1000)
      --csr-clients C        CSR-signing clients (default 0: no signing run)
      --csr-seconds S        signing run length (default 10)
      --csr-api LIST         API addresses for the signing run (default --api)
      --log-level LEVEL      debug, info, warn or error (default warn)
      -h, --help             this text

    Exit status: 0 when every stream got its first config and every apply reached every stream
    that should get it; 1 otherwise (the summary is printed either way); 2 for a bad command line.

    """

/// A fatal setup error: one line on stderr, exit 2 (bad flags) or 1 (meshd refused something).
func fail(_ message: String, code: Int32 = 2) -> Never {
    var line = "push-load: error: \(message)\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    exit(code)
}

/// Progress on stderr.
func note(_ message: String) {
    var line = "push-load: \(message)\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

/// The command line, checked: every flag honoured or refused by name.
struct Options {
    var api: [SocketAddress] = []
    var admin: [ControlEndpoint] = []
    var adminToken = ""
    var rootPEM = ""
    var trustDomain = "cluster.local"
    var streams = 1000
    var namespaces = 10
    var register = 1
    var sidecarScope = false
    var applies = 20
    var settle: UInt64 = 500_000_000
    var applyTimeout: UInt64 = 30_000_000_000
    var connectTimeout: UInt64 = 180_000_000_000
    var quiet: UInt64 = 1_000_000_000
    var idle: UInt64 = 5_000_000_000
    var watchPids: [String] = []
    var threads = 2
    var ramp = 64
    var sources: [SocketAddress] = []
    var perSource = 1000
    var csrClients = 0
    var csrSeconds = 10
    var csrAPI: [SocketAddress] = []

    static let specs: [Flags.Spec] = [
        .init("api"), .init("admin"), .init("admin-token-file"), .init("root-cert"), .init("trust-domain"),
        .init("streams"), .init("namespaces"), .init("register"), .init("sidecar-scope", value: false), .init("applies"),
        .init("settle"), .init("apply-timeout"), .init("connect-timeout"), .init("quiet"), .init("idle"), .init("watch-pid"),
        .init("threads"), .init("ramp"), .init("sources"), .init("per-source"), .init("csr-clients"), .init("csr-seconds"),
        .init("csr-api"), .init("log-level"), .init("help", value: false),
    ]

    static func addresses(_ text: String, flag: String) -> [SocketAddress] {
        let parts = text.split(separator: ",").map { String($0).trimmingCharacters }
        if parts.isEmpty { fail("--\(flag): expected HOST:PORT[,HOST:PORT...], got \"\(text)\"") }
        return parts.map { p in
            guard let a = SocketAddress(p) else { fail("--\(flag): \"\(p)\" is not HOST:PORT (an IP address and a port)") }
            return a
        }
    }

    static func duration(_ flags: Flags, _ name: String, _ def: UInt64) -> UInt64 {
        guard let t = flags.string(name) else { return def }
        guard let n = DurationParser.parseNanos(t) else { fail("--\(name): expected a duration such as 500ms, 10s or 2m, got \"\(t)\"") }
        return n
    }

    init(_ args: [String]) {
        let flags: Flags
        do { flags = try Flags(args, specs: Options.specs) } catch { fail("\(error)") }
        if flags.has("help") { print(usage, terminator: ""); exit(0) }
        if let p = flags.positional.first { fail("unexpected argument \"\(p)\" (see --help)") }
        switch flags.string("log-level") ?? "warn" {
        case "debug": Log.minimum = .debug
        case "info": Log.minimum = .info
        case "warn": Log.minimum = .warn
        case "error": Log.minimum = .error
        case let l: fail("--log-level: expected debug, info, warn or error, got \"\(l)\"")
        }
        guard let api = flags.string("api") else { fail("missing --api HOST:PORT (meshd's API port; see --help)") }
        self.api = Options.addresses(api, flag: "api")
        guard let tokenFile = flags.string("admin-token-file") else { fail("missing --admin-token-file STATE-DIR/admin-token") }
        guard let rootFile = flags.string("root-cert") else { fail("missing --root-cert STATE-DIR/root-cert.pem") }
        guard let root = ProcSample.readFile(rootFile), root.contains("BEGIN CERTIFICATE") else {
            fail("--root-cert \(rootFile): cannot read a PEM certificate there")
        }
        rootPEM = root
        guard let tok = ProcSample.readFile(tokenFile) else { fail("--admin-token-file \(tokenFile): cannot read it") }
        adminToken = tok.split(whereSeparator: { $0 == "\n" || $0 == " " }).first.map(String.init) ?? ""
        if adminToken.isEmpty { fail("--admin-token-file \(tokenFile) is empty") }
        guard let adminList = flags.string("admin") else { fail("missing --admin http://IP:PORT (meshd's admin port)") }
        for url in adminList.split(separator: ",").map(String.init) {
            let tls = url.hasPrefix("https://")
            guard tls || url.hasPrefix("http://") else { fail("--admin: expected http://IP:PORT or https://IP:PORT, got \"\(url)\"") }
            let hostPort = String(url.dropFirst(tls ? 8 : 7).prefix { $0 != "/" })
            guard let a = SocketAddress(hostPort) else { fail("--admin: \"\(url)\" does not name IP:PORT") }
            if tls {
                let host = hostPort.hasPrefix("[") ? String(hostPort.dropFirst().prefix { $0 != "]" }) : String(hostPort.prefix { $0 != ":" })
                do { admin.append(try ControlEndpoint(tls: host, port: a.port, rootPEM: rootPEM, rootFile: rootFile)) } catch { fail("--admin \(url): \(error)") }
            } else {
                admin.append(ControlEndpoint(plain: a))
            }
        }
        trustDomain = flags.string("trust-domain") ?? trustDomain
        do {
            streams = try flags.int("streams", min: 0, max: 1_000_000) ?? streams
            namespaces = try flags.int("namespaces", min: 1, max: 10_000) ?? namespaces
            register = try flags.int("register", min: 0, max: 1_000_000) ?? register
            applies = try flags.int("applies", min: 0, max: 100_000) ?? applies
            threads = try flags.int("threads", min: 1, max: 64) ?? threads
            ramp = try flags.int("ramp", min: 1, max: 100_000) ?? ramp
            perSource = try flags.int("per-source", min: 1, max: 60_000) ?? perSource
            csrClients = try flags.int("csr-clients", min: 0, max: 100_000) ?? csrClients
            csrSeconds = try flags.int("csr-seconds", min: 1, max: 3600) ?? csrSeconds
        } catch { fail("\(error)") }
        if streams > 0 && streams < namespaces { fail("--streams \(streams) is fewer than --namespaces \(namespaces): every namespace needs a stream") }
        if streams == 0 && csrClients == 0 { fail("nothing to do: --streams 0 and --csr-clients 0") }
        sidecarScope = flags.has("sidecar-scope")
        settle = Options.duration(flags, "settle", settle)
        applyTimeout = Options.duration(flags, "apply-timeout", applyTimeout)
        connectTimeout = Options.duration(flags, "connect-timeout", connectTimeout)
        quiet = Options.duration(flags, "quiet", quiet)
        idle = Options.duration(flags, "idle", idle)
        for p in flags.all("watch-pid") {
            for one in p.split(separator: ",").map(String.init) {
                guard Int(one) != nil, ProcSample.read(one) != nil else { fail("--watch-pid \(one): no such process") }
                watchPids.append(one)
            }
        }
        csrAPI = flags.string("csr-api").map { Options.addresses($0, flag: "csr-api") } ?? self.api
        switch flags.string("sources") ?? "auto" {
        case "none":
            sources = []
        case "auto":
            let loopback = self.api.allSatisfy { $0.text.hasPrefix("127.") }
            if loopback {
                let n = (streams + perSource - 1) / perSource
                guard n <= 250 * 250 else { fail("--sources auto: too many streams for 127.1.x.y at --per-source \(perSource)") }
                sources = (0..<max(n, 1)).map { SocketAddress(host: "127.1.\($0 / 250).\($0 % 250 + 1)", port: 0)! }
            }
        case let list:
            sources = list.split(separator: ",").map { ip in
                guard let a = SocketAddress(host: String(ip), port: 0) else { fail("--sources: \"\(ip)\" is not an IP address") }
                return a
            }
        }
    }
}
