import MeshConfig
import MeshCore

/// The sidecar's command line in mesh mode (DESIGN §2, §10, §11), checked whole before meshd is
/// contacted: every syntax error names its flag. No file is read here (`loadFiles` does that), so
/// `meshctl kube-inject`'s tests can parse the command line they write through this same code.
public struct SidecarMeshFlags: Sendable {
    /// Every flag the sidecar accepts, static mode's included.
    public static let specs: [Flags.Spec] = [
        .init("config"), .init("concurrency"), .init("log-level"), .init("check", value: false), .init("help", value: false),
        .init("meshd"), .init("root-cert"), .init("token"), .init("token-file"), .init("service"), .init("namespace"),
        .init("service-account"), .init("label"), .init("app-port"), .init("app-protocol"), .init("inbound-port"),
        .init("outbound-port"), .init("admin-port"), .init("trust-domain"), .init("route"), .init("service-port"),
        .init("advertise-address"), .init("listen-address"), .init("capture", value: false),
        .init("dns-port"), .init("resolv-conf"), .init("labels-file"), .init("status-port"), .init("app-probe"),
        .init("allow-insecure-skip-verify", value: false), .init("dns-resolver"),
        .init("gateway", value: false),
        .init("access-log-path"), .init("access-log-sampling"),
    ] + TraceExportOptions.flagNames.map { Flags.Spec($0) }

    /// The flags only mesh mode takes (static mode refuses each by name).
    public static let meshOnly: [String] = [
        "meshd", "root-cert", "token", "token-file", "service", "namespace", "service-account", "label", "app-port",
        "app-protocol", "inbound-port", "outbound-port", "admin-port", "trust-domain", "route", "service-port",
        "advertise-address", "listen-address", "capture", "dns-port", "resolv-conf", "labels-file", "status-port", "app-probe",
        "gateway", "access-log-path", "access-log-sampling",
    ]

    /// `--meshd`, as given (for messages) and parsed.
    public var meshdText: String
    public var meshd: [MeshdEndpoint]
    public var rootCert: String
    public var token: JoinToken
    public var labelsFile: String?
    /// The workload and its listeners; `labels` holds the `--label` ones only (the labels file
    /// is merged in by `loadFiles`).
    public var options: MeshModeOptions
    /// Where other sidecars reach this one (`--advertise-address`, canonical IP text).
    public var advertise: String
    /// `--dns-port` (0: off; 15053 by default under `--capture`) and `--resolv-conf`.
    public var dnsPort: Int
    public var resolvConf: String?
    /// `--status-port` (0: off), bound on the listen address.
    public var statusPort: Int
    public var appProbes: [AppProbe]
    public var logLevel: Log.Level?
    public var check: Bool
    /// `--otlp-endpoint` and the `--trace-*` flags (both modes).
    public var traceExport = TraceExportOptions()
    /// The SPIFFE ID the sidecar asks meshd for.
    public var identity: String { "spiffe://\(options.trustDomain)/ns/\(options.namespace)/sa/\(options.serviceAccount ?? options.service)" }

    /// Parses the words after the executable's name (mesh mode: `--meshd` is required).
    public static func parse(_ args: [String]) throws(FlagError) -> SidecarMeshFlags {
        let flags: Flags
        do { flags = try Flags(args, specs: specs) } catch { throw FlagError(Printable.escaped(error.description)) }
        return try parse(flags)
    }

    /// Parses flags already split by `Flags` with `specs`. The error is one line (values
    /// echoed from the command line have their control characters escaped).
    public static func parse(_ flags: Flags) throws(FlagError) -> SidecarMeshFlags {
        do { return try checked(flags) } catch { throw FlagError(Printable.escaped(error.description)) }
    }

    private static func checked(_ flags: Flags) throws(FlagError) -> SidecarMeshFlags {
        if !flags.positional.isEmpty { throw FlagError("unexpected argument \"\(flags.positional[0])\" (see --help)") }
        var logLevel: Log.Level? = nil
        if let lvl = flags.string("log-level") {
            switch lvl {
            case "debug": logLevel = .debug
            case "info": logLevel = .info
            case "warn": logLevel = .warn
            case "error": logLevel = .error
            default: throw FlagError("--log-level: expected debug, info, warn or error, got \"\(lvl)\"")
            }
        }
        let concurrency = try flags.int("concurrency", min: 1, max: 256)
        if flags.has("config") { throw FlagError("--config (static mode) and --meshd (mesh mode) exclude each other") }
        if flags.has("allow-insecure-skip-verify") {
            throw FlagError("--allow-insecure-skip-verify is a static-mode flag: in mesh mode meshd's --allow-insecure-skip-verify decides")
        }
        // One address or several (meshd replicas, tried in turn): HOST:PORT[,HOST:PORT...].
        guard let meshdText = flags.string("meshd") else {
            throw FlagError("--meshd: expected meshd's API address as HOST:PORT (e.g. 127.0.0.1:15012 or meshd.mesh-system.svc:15012)")
        }
        var meshd: [MeshdEndpoint] = []
        for part in meshdText.split(separator: ",", omittingEmptySubsequences: false) {
            let e: MeshdEndpoint
            do { e = try MeshdEndpoint.parse(String(part)) } catch {
                throw FlagError("--meshd: \(error.description) in \"\(meshdText)\" (expected HOST:PORT[,HOST:PORT...], e.g. 127.0.0.1:15012 or meshd.mesh-system.svc:15012)")
            }
            if meshd.contains(where: { $0.description == e.description }) { throw FlagError("--meshd: \(e) is given twice") }
            meshd.append(e)
        }
        guard let rootPath = flags.string("root-cert") else { throw FlagError("mesh mode needs --root-cert FILE (meshd's STATE-DIR/root-cert.pem)") }
        let token: JoinToken
        switch (flags.string("token"), flags.string("token-file")) {
        case (.some, .some): throw FlagError("give --token or --token-file, not both")
        case (.some(let t), nil):
            guard !t.isEmpty else { throw FlagError("mesh mode needs a join token: --token T or --token-file F (`meshctl token create`)") }
            guard JoinToken.isWellFormed(t) else { throw FlagError("--token: the token holds a space or control character") }
            token = .literal(t)
        case (nil, .some(let f)):
            guard !f.isEmpty else { throw FlagError("--token-file: expected a file name") }
            token = .file(f)
        case (nil, nil):
            throw FlagError("mesh mode needs a join token: --token T or --token-file F (`meshctl token create`)")
        }
        guard let service = flags.string("service") else { throw FlagError("mesh mode needs --service NAME") }
        var o = MeshModeOptions(service: service)
        o.namespace = flags.string("namespace") ?? "default"
        o.serviceAccount = flags.string("service-account")
        for l in flags.all("label") {
            let kv = l.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2, !kv[0].isEmpty else { throw FlagError("--label: expected k=v, got \"\(l)\"") }
            if o.labels.contains(where: { $0.0 == kv[0] }) { throw FlagError("--label: \(kv[0]) is given twice") }
            o.labels.append((kv[0], kv[1]))
        }
        let labelsFile = flags.string("labels-file")
        if labelsFile == "" { throw FlagError("--labels-file: expected a file name") }
        o.appPort = try flags.int("app-port", min: 1, max: 65535)
        o.inboundPort = try flags.int("inbound-port", min: 0, max: 65535) ?? 15006
        o.outboundPort = try flags.int("outbound-port", min: 0, max: 65535) ?? 15001
        o.adminPort = try flags.int("admin-port", min: 0, max: 65535) ?? 15000
        o.servicePort = try flags.int("service-port", min: 1, max: 65535)
        // Under capture the app's DNS goes to the sidecar: its port is on unless set to 0.
        let dnsPort = try flags.int("dns-port", min: 0, max: 65535) ?? (flags.has("capture") ? 15053 : 0)
        let resolvConf = flags.string("resolv-conf")
        if resolvConf != nil && dnsPort == 0 { throw FlagError("--resolv-conf: the DNS port is off; give --dns-port P to turn it on") }
        let statusPort = try flags.int("status-port", min: 0, max: 65535) ?? 0
        if statusPort > 0 {
            let taken: [(String, Int)] = [("--inbound-port", o.appPort == nil ? 0 : o.inboundPort), ("--outbound-port", o.outboundPort),
                                          ("--admin-port", o.adminPort), ("--dns-port", dnsPort), ("--app-port", o.appPort ?? 0)]
            if let clash = taken.first(where: { $0.1 == statusPort }) {
                throw FlagError("--status-port: \(statusPort) is also \(clash.0)")
            }
        }
        var probes: [AppProbe] = []
        for p in flags.all("app-probe") {
            let probe = try AppProbe.parse(p)
            if probes.contains(where: { $0.path == probe.path }) { throw FlagError("--app-probe: \(probe.path) is given twice") }
            probes.append(probe)
        }
        if !probes.isEmpty && statusPort == 0 {
            throw FlagError("--app-probe: the probes are served on the status port; give --status-port P")
        }
        // The inbound listener binds the listen address and the sidecar registers advertise:port
        // (DESIGN §10); outbound and admin stay on 127.0.0.1.
        let addresses: MeshAddresses
        do {
            addresses = try MeshAddresses.resolve(listen: flags.string("listen-address"), advertise: flags.string("advertise-address"))
        } catch { throw FlagError(error.description) }
        o.listenAddress = addresses.listen
        o.appProtocol = flags.string("app-protocol") ?? "http"
        o.trustDomain = flags.string("trust-domain") ?? "cluster.local"
        o.concurrency = concurrency
        o.routes = flags.all("route")
        o.capture = flags.has("capture")
        o.gateway = flags.has("gateway")
        // Access logs (Telemetry `accessLogging` switches them): where lines go and the share
        // of non-error requests kept (docs/observability.md).
        if let p = flags.string("access-log-path") {
            guard !p.isEmpty else { throw FlagError("--access-log-path: expected a file name (or /dev/stdout)") }
            o.accessLogPath = p
        }
        if let t = flags.string("access-log-sampling") {
            guard let v = Double(t), v > 0, v <= 1 else { throw FlagError("--access-log-sampling: expected a fraction in (0, 1], got \"\(t)\"") }
            o.accessLogSampling = v
        }
        if o.gateway && o.capture { throw FlagError("--gateway: a gateway takes no --capture (it has no app whose traffic to capture)") }
        var f = SidecarMeshFlags(meshdText: meshdText, meshd: meshd, rootCert: rootPath, token: token, labelsFile: labelsFile,
                                 options: o, advertise: addresses.advertise, dnsPort: dnsPort, resolvConf: resolvConf,
                                 statusPort: statusPort, appProbes: probes, logLevel: logLevel, check: flags.has("check"))
        f.traceExport = try TraceExportOptions.parse(flags)
        // The listeners and the workload as the sidecar will build them (a credential-free dry build).
        do { _ = try f.bootstrap(nil) } catch { throw FlagError(error.description) }
        return f
    }

    /// The mesh-mode bootstrap for these flags with `creds` (nil: a dry build, to check them).
    public func bootstrap(_ creds: WorkloadIdentity.Credentials?) throws(ConfigError) -> Bootstrap {
        var tls = Bootstrap.TLSFiles(certChain: "(issued by meshd \(meshdText))", privateKey: "(in memory)",
                                     trustBundle: rootCert, trustDomain: options.trustDomain, minTLS13: false)
        tls.certChainPEM = creds?.chainPEM
        tls.privateKeyPEM = creds?.keyPEM
        tls.trustBundlePEM = creds?.bundlePEM
        var b = try Bootstrap.meshMode(options, tls: tls)
        b.traceExport = traceExport
        return b
    }

    /// What the files named by the flags hold, read at start: the root certificate and the
    /// labels file (merged into `options.labels`, `--label` winning). `withToken`: the token
    /// file too (`--check`; a running sidecar reads it when it needs a token). Errors name the
    /// flag and the file.
    public mutating func loadFiles(withToken: Bool) throws(FlagError) -> (rootPEM: String, token: String?) {
        let rootPEM: String
        switch AgentFiles.read(rootCert) {
        case .success(let t) where t.contains("BEGIN CERTIFICATE"): rootPEM = t
        case .success: throw FlagError("--root-cert \(rootCert): no PEM certificate there")
        case .failure(let e): throw FlagError("--root-cert \(rootCert): cannot read it (\(e))")
        }
        var token: String? = nil
        if withToken {
            do { token = try self.token.current() } catch { throw FlagError(error.description) }
        }
        if let lf = labelsFile {
            let fromFile: [(String, String)]
            do { fromFile = try LabelsFile.read(lf) } catch { throw FlagError(error.description) }
            options.labels = LabelsFile.merge(file: fromFile, flags: options.labels)
        }
        return (rootPEM, token)
    }
}
