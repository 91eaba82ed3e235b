// meshctl: the operator's CLI. Thin: flags and one request to meshd's admin API per command.
import MeshCapture
import MeshControlWire
import MeshPKI
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

let usage = """
    meshctl: operate the service mesh through meshd's admin API

    USAGE:
      meshctl [--meshd http://127.0.0.1:15014[,URL...]] [--admin-token-file FILE] COMMAND

    COMMANDS:
      apply -f FILE|DIR [--wait]   validate, then store Istio documents (upsert by
                            kind/namespace/name); the whole config that would result is checked
                            as the sidecars check it, a refusal names file, line, document and
                            field; documents already in force as given change nothing
                            ("unchanged", no push); --wait returns once every connected sidecar
                            the change reaches acknowledged it (the others are sent nothing)
      delete -f FILE|DIR [--ignore-not-found]
                            remove the documents named in the files; a document that is not
                            in force is an error (exit 1) unless --ignore-not-found
      analyze -f FILE|DIR [--service NAME.NAMESPACE]... [--use-meshd] [--failure-threshold Error|Warning|Info] [-o json]
                            offline, like istioctl analyze: the files checked as meshd would check
                            an apply of them (refusals with file, line and field), then warnings:
                            a destination host nothing defines, a subset no route uses, a policy
                            that selects no workload known, a route an earlier catch-all hides.
                            Workloads register at run time: --service names the services yours
                            register, --use-meshd reads meshd's registry. Exit 79 when a finding
                            reaches the threshold (default Error)
      proxy-config routes|clusters|listeners|secrets|authz|all PROXY [-o json]
                            one sidecar's config as it applies it, read from its admin port
                            (/config_dump, /clusters, /certs); PROXY is the admin HOST:PORT, or
                            with meshd's admin token a connected sidecar's identity or service
      get services|proxies
      create secret tls NAME --cert FILE --key FILE [--ca FILE] [--namespace NS]
                            store a TLS secret in meshd for Gateway servers' tls.credentialName
                            (--ca: the CA client certificates must chain to, for MUTUAL); checked
                            here and by meshd (PEM, key matches the leaf, chain in order, not
                            expired); an existing name is replaced (rotation): created,
                            configured or unchanged
      delete secret tls NAME [--namespace NS]
      get secrets           namespace, name, subject, SANs, not-after, fingerprint (never a key)
      get routes [-o yaml]  the documents in force: hosts, matches, destinations and weights
                            of each route (-o yaml: the stored documents as applied)
      status                per sidecar: identity, connected, config version, ACK/NACK
      top [--interval 2s] [--once]
                            per route and destination version: requests/s, success rate,
                            p50/p99 latency, read from the sidecars' metrics (refreshed until
                            Ctrl-C; --once prints one table)
      run --service NAME [--namespace NS] [--service-account SA] [--label k=v]... [--app-port P]
          [--service-port N] [--app-protocol http|http2|grpc|tcp] [--token-file F] [--sidecar-log FILE]
          [--advertise-address IP] -- CMD [ARGS...]
                            start a sidecar in mesh mode for CMD (a token is minted unless given),
                            start CMD once the sidecar is ready, with http_proxy/HTTP_PROXY set to
                            it; signals go to the sidecar (drain) then CMD; exits with CMD's status.
                            No --app-port: a workload that only calls out. The sidecar dials
                            meshd's API at the address meshd reports (else the --meshd host);
                            --advertise-address: this host's IP other sidecars reach the app at.
                            A sidecar that exits unexpectedly is restarted (fresh join token,
                            back-off 0.2 s doubling to 5 s), the app keeps running
      run --capture [capture flags] --service NAME ... -- CMD [ARGS...]
                            (root) the same with transparent capture in this network namespace:
                            applies the capture rules (the capture flags of meshctl capture; the
                            sidecar gets their ports), starts the sidecar as --proxy-uid/--proxy-gid
                            (1337), CMD as the invoking user (SUDO_UID/SUDO_GID under sudo) with no
                            proxy variable; the rules are removed when it ends (docs/capture.md)
      demo [--keep-running]  the whole mesh on this machine: meshd, three versions of a sample app
                            and a caller, each with its sidecar; meshd's canary controller walks
                            a good v2 to promotion and rolls a bad v3 (30% 500s) back, printing
                            each check's figures and what the caller sees (about a minute;
                            Ctrl-C stops everything)
      demo --capture [--keep-running]
                            (root) the same with each workload in its own network namespace on a
                            bridge under run --capture, the caller calling reviews by name with no
                            proxy variable; namespaces removed at the end (docs/capture.md)
      capture apply|remove|print [--proxy-uid 1337] [--proxy-gid 1337] [--outbound-port 15001]
          [--inbound-port 15006] [--admin-port 15000] [--dns-port 15053]
          [--include-inbound-ports '*'|P,P] [--exclude-inbound-ports P,P] [--exclude-outbound-ports P,P]
          [--include-outbound-cidrs '*'|CIDR,...] [--exclude-outbound-cidrs CIDR,...] [--no-dns]
          [--backend auto|nft|legacy]
                            transparent capture in the current network namespace: iptables rules
                            sending the app's TCP and DNS through its sidecar (print: the rules,
                            no root; meshctl capture --help; docs/capture.md)
      kube-inject -f IN.yaml|- [-o OUT.yaml] [--native-sidecar] [--meshd HOST:PORT] [--image I] [--uninject]
                            put the sidecar into Kubernetes workloads (meshctl kube-inject --help;
                            docs/kubernetes.md)
      kube-manifests --root-cert FILE [--replicas N] [--store etcd://...] [--app-namespace NS]...
                     [--gateway-service-account NS/SA]...
                            what runs meshd in a Kubernetes cluster
      wait-ready [--admin-port 15000] [--timeout 120s]
                            wait until the local sidecar's /ready answers 200 (the injected
                            sidecar's postStart hook)
      canary status [NAME] [--namespace NS] [-o json]
                            Canaries meshd walks (docs/canary.md): phase, canary weight, failed
                            checks, the last checks with their figures, recent events
      canary abort|resume NAME [--namespace NS]
                            abort: 100% to the stable subset at once (Aborted); resume: a Paused
                            canary continues from its step
      token create --namespace NS --service-account SA [--ttl 1h]
                            mint a join token for one identity; prints only the token
      ca status             the roots in force and which one issues
      ca rotate-root STEP   root rotation, one step at a time, traffic flowing throughout:
                              add     a new root joins the trust bundle (the old one still issues)
                              issue   the new root issues (both stay trusted)
                              retire  the old root leaves the trust bundle
                            sidecars pick up the bundle with their next certificate

    GLOBAL FLAGS (before or after the command; environment MESHD, MESH_ADMIN_TOKEN_FILE,
    MESH_ROOT_CERT):
      --meshd URL[,URL...]    meshd's admin URL (default http://127.0.0.1:15014); https://IP:PORT
                              when meshd serves it on another host (meshd --admin-address IP).
                              Several (replicas): each command tries them in order while one
                              cannot be reached (an HTTP error answer is final)
      --root-cert FILE        with https://: meshd's STATE-DIR/root-cert.pem; meshd's certificate
                              must chain to it and name the IP dialed
      --admin-token-file FILE meshd's STATE-DIR/admin-token
      -h, --help              this text

    """

func fail(_ message: String, code: Int32 = 2) -> Never {
    var line = "meshctl: error: \(Printable.escaped(message, keepNewlines: true))\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    exit(code)
}

let specs: [Flags.Spec] = [
    .init("meshd"), .init("admin-token-file"), .init("namespace"), .init("service-account"), .init("ttl"), .init("help", value: false),
    .init("f"), .init("filename"), .init("wait", value: false), .init("ignore-not-found", value: false), .init("o"), .init("output"),
    .init("interval"), .init("once", value: false), .init("keep-running", value: false), .init("name"), .init("port"),
    .init("host"), .init("rate"), .init("phase"), .init("url"),
    .init("service"), .init("label"), .init("app-port"), .init("app-protocol"), .init("token-file"), .init("sidecar-log"),
    .init("root-cert"), .init("advertise-address"), .init("capture", value: false), .init("service-port"),
    .init("failure-threshold"), .init("use-meshd", value: false),
    .init("cert"), .init("key"), .init("ca"), .init("error-percent"), .init("delay-ms"),
] + CaptureOptions.flagSpecs.filter { $0.name != "help" }
// `meshctl capture ...` takes its own flags (none of the global ones apply to it).
if CommandLine.arguments.count > 1 && CommandLine.arguments[1] == "capture" { runCapture(Array(CommandLine.arguments.dropFirst())) }
// Commands that never talk to meshd's admin API take their own flags too.
if CommandLine.arguments.count > 1 {
    switch CommandLine.arguments[1] {
    case "kube-inject": runKubeInject(Array(CommandLine.arguments.dropFirst(2)))
    case "kube-manifests": runKubeManifests(Array(CommandLine.arguments.dropFirst(2)))
    case "wait-ready": runWaitReady(Array(CommandLine.arguments.dropFirst(2)))
    default: break
    }
}
let flags: Flags
do { flags = try Flags(Array(CommandLine.arguments.dropFirst()), specs: specs) } catch { fail("\(error)") }
if flags.has("help") || flags.positional.isEmpty { print(usage, terminator: ""); exit(flags.has("help") ? 0 : 2) }
// The demo's own processes (not for operators): the sample app and the caller.
if flags.positional.first == "demo-app" {
    do {
        demoApp(name: flags.string("name") ?? "app", port: try flags.int("port", min: 1, max: 65535) ?? 9080,
                errorPercent: try flags.int("error-percent", min: 0, max: 100) ?? 0, delayMillis: try flags.int("delay-ms", min: 0, max: 60000) ?? 0)
    } catch { fail("\(error)") }
}
if flags.positional.first == "demo-caller" {
    let rate: Int
    do { rate = try flags.int("rate", min: 1, max: 10000) ?? 50 } catch { fail("\(error)") }
    if let u = flags.string("url") {
        // Under capture: by name, resolved by the caller itself (no MESH_OUTBOUND, no proxy).
        if flags.has("host") { fail("demo-caller: give --host (through MESH_OUTBOUND) or --url (by name, under capture), not both") }
        guard let target = DemoURL(u) else { fail("--url: expected http://HOST[:PORT][/PATH], got \"\(u)\"") }
        demoCallerByName(target, rate: rate)
    }
    demoCaller(host: flags.string("host") ?? "reviews", rate: rate)
}
if flags.positional.first == "demo" {
    // demo takes these flags only: any other (a capture flag, --meshd...) is refused by name.
    if let f = flags.values.keys.sorted().first(where: { !["capture", "keep-running", "phase"].contains($0) }) {
        fail("--\(f) is not a flag of demo (meshctl demo [--capture] [--keep-running] [--phase 10s])")
    }
    var phase = 10.0
    if let t = flags.string("phase") {
        guard let n = DurationParser.parseNanos(t), n >= 1_000_000_000, n <= 600_000_000_000 else {
            fail("--phase: expected a duration from 1s to 10m, got \"\(t)\"")
        }
        phase = Double(n) / 1e9
    }
    if flags.has("capture") { runCaptureDemo(keepRunning: flags.has("keep-running"), phaseSeconds: phase) }
    runDemo(keepRunning: flags.has("keep-running"), phaseSeconds: phase)
}

func env(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
let url = flags.string("meshd") ?? env("MESHD") ?? "http://127.0.0.1:15014"
/// One admin URL of --meshd: its HOST:PORT (`[v6]:PORT` for IPv6), address, host without the
/// port (and without brackets), and whether it is TLS.
struct AdminURL {
    let text: String
    let tls: Bool
    let address: SocketAddress
    let host: String
    init(_ u: String) {
        text = u
        tls = u.hasPrefix("https://")
        let hostPort = String((tls || u.hasPrefix("http://") ? u.dropFirst(tls ? 8 : 7) : "").split(separator: "/").first ?? "")
        guard let a = SocketAddress(hostPort) else {
            fail("--meshd: expected meshd's admin URL such as http://127.0.0.1:15014 or https://10.0.0.1:15014 (several: URL,URL), got \"\(u)\"")
        }
        address = a
        var h = String(hostPort[..<hostPort.lastIndex(of: ":")!])
        if h.hasPrefix("[") && h.hasSuffix("]") { h = String(h.dropFirst().dropLast()) }
        host = h
    }
}
// Several URLs (meshd replicas): each command tries them in order while one cannot be reached.
let adminURLs = url.split(separator: ",", omittingEmptySubsequences: false).map { AdminURL(String($0)) }
/// The first admin URL's host (`meshctl run` finds meshd's API there when meshd names none).
let adminHost = adminURLs[0].host
// Two optionals, not an optional tuple: `guard let (a, b) = optionalTuple` at top level crashes
// Swift 6.3.1's optimizer (CopyPropagation, "Found outside of lifetime use") in release builds.
let rootCertPath = flags.string("root-cert") ?? env("MESH_ROOT_CERT")
let rootCertName = flags.string("root-cert") != nil ? "--root-cert" : "MESH_ROOT_CERT"
var rootPEM: String? = nil
if let tlsURL = adminURLs.first(where: { $0.tls }) {
    guard let path = rootCertPath else {
        fail("--meshd \(tlsURL.text) is TLS: give --root-cert FILE (meshd's STATE-DIR/root-cert.pem) or MESH_ROOT_CERT")
    }
    do { rootPEM = try FileStore.read(path) } catch { fail("\(rootCertName): \(error)") }
} else if rootCertPath != nil {
    fail("\(rootCertName) is for an https:// --meshd URL (meshd's admin port on another host); --meshd is \(url)")
}
let endpoint = ControlEndpoints(adminURLs.map { u -> (name: String, endpoint: ControlEndpoint) in
    guard u.tls, let pem = rootPEM, let path = rootCertPath else { return (u.text, ControlEndpoint(plain: u.address)) }
    do { return (u.text, try ControlEndpoint(tls: u.host, port: u.address.port, rootPEM: pem, rootFile: path)) } catch { fail("\(rootCertName): \(error)") }
})

let tokenFile = flags.string("admin-token-file") ?? env("MESH_ADMIN_TOKEN_FILE")
let fileFlag = flags.string("f") ?? flags.string("filename")
let waitFlag = flags.has("wait")
let ignoreNotFound = flags.has("ignore-not-found")

func adminToken() -> String {
    guard let path = tokenFile else {
        fail("this command needs meshd's admin token: --admin-token-file STATE-DIR/admin-token (or MESH_ADMIN_TOKEN_FILE)")
    }
    do {
        let t = try FileStore.read(path).split(whereSeparator: { $0 == "\n" || $0 == " " }).first.map(String.init) ?? ""
        if t.isEmpty { fail("\(path) is empty") }
        return t
    } catch { fail("\(error)") }
}

let meshdURL = url
func call(_ method: String, _ path: String, body: String = "", contentType: String? = nil) -> String {
    do {
        var headers = [("authorization", "Bearer \(adminToken())")]
        if let t = contentType { headers.append(("content-type", t)) }
        let r = try endpoint.request(method: method, path: path, headers: headers, body: body)
        if r.status != 200 { fail("meshd answered \(r.status): \(r.body.trimmingTrailingNewlines)", code: 1) }
        return r.body
    } catch {
        fail("\(error) (is meshd running? --meshd \(meshdURL))", code: 1)
    }
}

/// The YAML files named by -f: a file, or every *.yaml/*.yml in a directory (sorted).
func inputFiles() -> [(name: String, text: String)] {
    guard let path = fileFlag else { fail("missing -f FILE|DIR") }
    var names = [path]
    if let d = opendir(path) {
        names = []
        while let e = readdir(d) {
            let n = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if (n.hasSuffix(".yaml") || n.hasSuffix(".yml")) && !n.hasPrefix(".") { names.append("\(path)/\(n)") }
        }
        closedir(d)
        names.sort()
        if names.isEmpty { fail("\(path): no *.yaml or *.yml file there") }
    }
    return names.map { n in
        do { return (n, try FileStore.read(n)) } catch { fail("\(error)") }
    }
}

/// Prints text from meshd on the terminal: control characters from input never reach it raw.
func show(_ text: String) { print(Printable.escaped(text, keepNewlines: true), terminator: "") }

func applyFiles(delete: Bool) {
    let files = inputFiles()
    let answer = call("POST", "/v1/config/\(delete ? "delete" : "apply")", body: ConfigUpload.encode(files), contentType: ConfigUpload.contentType)
    // `version N` or `unchanged N`, then KIND<tab>NAMESPACE/NAME<tab>OUTCOME per document.
    var lines = answer.split(separator: "\n").map(String.init)
    let first = lines.isEmpty ? "" : lines.removeFirst()
    let changed = first.hasPrefix("version ")
    let v = Int(first.split(separator: " ").last ?? "") ?? 0
    let docs = lines.map { $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init) }.filter { $0.count == 3 }
    let missing = docs.filter { $0[2] == "not found" }
    if changed {
        show("\(delete ? "deleted" : "applied"): version \(v)\n")
    } else if docs.isEmpty {
        show("unchanged: version \(v) (no document in \(files.map(\.name).joined(separator: ", ")))\n")
    } else if missing.isEmpty {
        show("unchanged: version \(v) (the documents in force are already these)\n")
    }
    for d in docs where d[2] != "not found" { show("  \(d[0]) \(d[1]): \(d[2])\n") }
    if !missing.isEmpty {
        let list = missing.map { "\($0[0]) \($0[1])" }.joined(separator: ", ")
        if ignoreNotFound { show("not found (ignored): \(list)\n") } else { fail("not found: \(list)", code: 1) }
    }
    guard changed, waitFlag else { return }

    // --wait: until every connected sidecar acknowledged this version (or a later one), or has
    // the config in force for its scope (state "ACK": the change did not touch its scope).
    for _ in 0..<600 {
        let lines = call("GET", "/v1/proxies").split(separator: "\n").dropFirst()
        let connected = lines.filter { $0.contains("\tconnected\t") }
        let done = connected.allSatisfy { l in
            let cols = l.split(separator: "\t")
            return cols.contains("ACK") || (cols.first { $0.hasPrefix("acked ") }.flatMap { Int($0.dropFirst(6)) }.map { $0 >= v } ?? false)
        }
        if done { print("acknowledged by \(connected.count) sidecar(s)"); return }
        // A NACK of this version (or a later one) is final; an older one is being superseded.
        let refused = connected.first { l in
            let parts = String(l).components(marker: "NACK (version ")
            guard parts.count == 2 else { return false }
            return Int(parts[1].prefix { $0.isNumber }).map { $0 >= v } ?? false
        }
        if let nack = refused { fail("a sidecar refused it: \(nack)", code: 1) }
        usleep(100_000)
    }
    fail("not every sidecar acknowledged version \(v) within 60 s (see meshctl status)", code: 1)
}

let cmd = flags.positional
// The capture flags belong to `run --capture` (and `meshctl capture`): refused by name elsewhere.
let captureFlagsGiven = CaptureOptions.flagSpecs.map(\.name).filter { $0 != "help" && flags.has($0) }
if let f = captureFlagsGiven.first, !(cmd.first == "run" && flags.has("capture")) {
    fail(cmd.first == "run" ? "--\(f) is a capture flag: it needs --capture" : "--\(f) is a flag of run --capture and capture, not of \(cmd.first ?? "this command")")
}
if flags.has("capture") && cmd.first != "run" { fail("--capture is a flag of run, not of \(cmd.first ?? "this command")") }
if cmd.first == "run" {
    let argv = CommandLine.arguments
    guard let dd = argv.firstIndex(of: "--"), dd + 1 < argv.count else { fail("run: give the command after -- (meshctl run --service NAME -- CMD ARGS)") }
    guard let service = flags.string("service") else { fail("run: missing --service NAME") }
    let appPort: Int?, servicePort: Int?
    do {
        appPort = try flags.int("app-port", min: 1, max: 65535)
        servicePort = try flags.int("service-port", min: 1, max: 65535)
    } catch { fail("\(error)") }
    if servicePort != nil && appPort == nil { fail("run: --service-port needs --app-port (a workload without an app port serves nothing)") }
    var capture: CaptureOptions? = nil
    if flags.has("capture") {
        // One parser: the capture flags go through `meshctl capture apply`'s own validation.
        var words = ["capture", "apply"]
        for f in CaptureOptions.flagSpecs where f.name != "help" {
            for v in flags.all(f.name) { words.append(f.takesValue ? "--\(f.name)=\(v)" : "--\(f.name)") }
        }
        do { capture = try CaptureOptions.parse(words).options } catch { fail(error.description, code: error.exitCode) }
    }
    let ns = flags.string("namespace") ?? "default"
    var req = RunRequest(service: service, namespace: ns, serviceAccount: flags.string("service-account") ?? service,
                         labels: flags.all("label"), appPort: appPort, appProtocol: flags.string("app-protocol"),
                         tokenFile: flags.string("token-file"), sidecarLog: flags.string("sidecar-log"),
                         command: Array(argv[(dd + 1)...]), adminHost: adminHost, advertiseAddress: flags.string("advertise-address"),
                         capture: capture)
    req.servicePort = servicePort
    runCommand(req, meshd: MeshdAdmin(requireToken: { _ = adminToken() }, call: { (m: String, p: String) throws(CAError) -> String in
        guard let path = tokenFile else { throw CAError("no admin token (--admin-token-file)") }
        let t = try FileStore.read(path).split(whereSeparator: { $0 == "\n" || $0 == " " }).first.map(String.init) ?? ""
        let r: (status: Int, body: String)
        do { r = try endpoint.request(method: m, path: p, headers: [("authorization", "Bearer \(t)")]) } catch {
            throw CAError("\(error) (is meshd running? --meshd \(meshdURL))")
        }
        if r.status != 200 { throw CAError("meshd answered \(r.status): \(r.body.trimmingTrailingNewlines)") }
        return r.body
    }, canMint: tokenFile != nil))
}
switch (cmd.first, cmd.dropFirst().first) {
case ("create", _), ("delete", "secret"), ("get", "secrets"), ("get", "secret"):
    runSecretCommand(cmd, namespace: flags.string("namespace"), cert: flags.string("cert"), key: flags.string("key"), ca: flags.string("ca"))
case ("apply", _):
    applyFiles(delete: false)
case ("delete", _):
    applyFiles(delete: true)
case ("analyze", _):
    if let extra = cmd.dropFirst().first { fail("analyze: unexpected argument \"\(extra)\" (meshctl analyze -f FILE|DIR)") }
    runAnalyze(files: inputFiles(), flags: flags, registry: { call("GET", "/v1/services") })
case ("proxy-config", _):
    if cmd.count > 3 { fail("proxy-config: unexpected argument \"\(cmd[3])\"") }
    let o = flags.string("o") ?? flags.string("output")
    if let o, o != "json" { fail("-o: expected json, got \"\(o)\"") }
    runProxyConfig(section: cmd.dropFirst().first, target: cmd.dropFirst(2).first, json: o == "json", proxies: { call("GET", "/v1/proxies") })
case ("get", "services"):
    show(call("GET", "/v1/services"))
case ("get", "routes"):
    switch flags.string("o") ?? flags.string("output") {
    case nil: show(call("GET", "/v1/routes"))
    case "yaml"?: show(call("GET", "/v1/routes?o=yaml"))
    case let o?: fail("-o: expected yaml, got \"\(o)\"")
    }
case ("top", _):
    var interval = 2.0
    if let t = flags.string("interval") {
        guard let n = DurationParser.parseNanos(t), n >= 100_000_000, n <= 60_000_000_000 else { fail("--interval: expected 100ms to 60s, got \"\(t)\"") }
        interval = Double(n) / 1e9
    }
    let once = flags.has("once")
    while true {
        let admins = sidecarAdmins(call("GET", "/v1/proxies"))
        if admins.isEmpty { fail("no connected sidecar reports metrics yet", code: 1) }
        let table = topTable(admins: admins, interval: interval)
        if once { print(table, terminator: ""); break }
        print("\u{1B}[2J\u{1B}[H" + table, terminator: "")
    }
case ("canary", _):
    runCanaryCommand(cmd, namespace: flags.string("namespace"), output: flags.string("o") ?? flags.string("output"), call: { call($0, $1) })
case ("get", "proxies"), ("status", _):
    show(call("GET", "/v1/proxies"))
case ("token", "create"):
    guard let ns = flags.string("namespace") else { fail("token create: missing --namespace NS") }
    guard let sa = flags.string("service-account") else { fail("token create: missing --service-account SA") }
    var path = "/v1/tokens?namespace=\(ControlClient.percentEncode(ns))&serviceAccount=\(ControlClient.percentEncode(sa))"
    if let t = flags.string("ttl") { path += "&ttl=\(ControlClient.percentEncode(t))" }
    print(call("POST", path), terminator: "")
case ("ca", "status"):
    print(call("GET", "/v1/ca"), terminator: "")
case ("ca", "rotate-root"):
    guard let step = cmd.dropFirst(2).first, ["add", "issue", "retire"].contains(step) else {
        fail("ca rotate-root: expected a step: add, issue or retire")
    }
    print(call("POST", "/v1/ca/rotate?step=\(step)"), terminator: "")
default:
    fail("unknown command \"\(cmd.joined(separator: " "))\" (see --help)")
}

extension String {
    var trimmingTrailingNewlines: String {
        var s = self
        while s.hasSuffix("\n") { s.removeLast() }
        return s
    }
}
