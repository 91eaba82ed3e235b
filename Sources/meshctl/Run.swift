// meshctl run: a sidecar in mesh mode next to any command (issue: meshctl run and demo), with
// transparent capture under --capture (DESIGN §10), and a sidecar restarted when it dies.
import MeshCapture
import MeshControlWire
import MeshPKI
import MeshCore
import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// A free TCP port on 127.0.0.1 (bound and released; the sidecar binds it right after).
/// `n` distinct free ports on 127.0.0.1: every socket is held until all are chosen (a port
/// released at once could be handed out again for the next one, and a sidecar refuses to share
/// a port between its own listeners).
func freePorts(_ n: Int) -> [Int] {
    var fds: [Int32] = []
    defer { for fd in fds { close(fd) } }
    var ports: [Int] = []
    for _ in 0..<n {
        let fd = Socket.listen(SocketAddress(host: "127.0.0.1", port: 0)!, reusePort: false)
        if fd >= 0 { fds.append(fd) }
        ports.append(fd >= 0 ? Socket.localPort(fd) : 0)
    }
    return ports
}

func freePort() -> Int { freePorts(1)[0] }

func note(_ s: String) {
    var line = "meshctl run: \(s)\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

/// What `meshctl run` was asked for (the flags, validated).
struct RunRequest {
    var service: String
    var namespace: String
    var serviceAccount: String
    var labels: [String]
    var appPort: Int?
    var appProtocol: String?
    /// `--service-port`: the port callers use for the service, when it is not the app port (the
    /// versions of a service on one host listen on different app ports, all register this one).
    var servicePort: Int? = nil
    /// `--token-file`: the join token to start with (else one is minted).
    var tokenFile: String?
    var sidecarLog: String?
    var command: [String]
    /// The admin URL's host: meshd's API is dialed there when meshd reports a wildcard address.
    var adminHost: String
    var advertiseAddress: String?
    /// `--capture`: the rules' options (and the sidecar's ports); nil without capture.
    var capture: CaptureOptions?
}

/// How `run` reaches meshd's admin API: one request that throws rather than exits (a restart
/// that cannot reach meshd backs off and tries again), and whether an admin token is configured
/// (needed to mint join tokens).
struct MeshdAdmin {
    /// Exits naming the flag when no admin token is configured (after the capture checks).
    let requireToken: () -> Void
    let call: (String, String) throws(CAError) -> String
    let canMint: Bool
}

/// Exit reason of a child for the log: `exit status N` or `killed by signal N (SIGKILL)`.
func exitReason(_ status: Int32?) -> String {
    guard let s = status else { return "unknown status" }
    if s <= 128 { return "exit status \(s)" }
    let names: [Int32: String] = [SIGKILL: "SIGKILL", SIGSEGV: "SIGSEGV", SIGABRT: "SIGABRT", SIGTERM: "SIGTERM",
                                  SIGINT: "SIGINT", SIGBUS: "SIGBUS", SIGILL: "SIGILL", SIGTRAP: "SIGTRAP", SIGHUP: "SIGHUP"]
    return "killed by signal \(s - 128)" + (names[s - 128].map { " (\($0))" } ?? "")
}

/// Restart back-off for a sidecar that exits unexpectedly: 0.2 s, doubling to 5 s; back to 0.2 s
/// once a sidecar stayed up 60 s.
struct RestartBackoff {
    static let first = 0.2, limit = 5.0, resetAfterNanos: UInt64 = 60_000_000_000
    private(set) var next = RestartBackoff.first

    /// The delay before the next start, given how long the one that ended stayed up.
    mutating func delay(upNanos: UInt64?) -> Double {
        if let up = upNanos, up >= RestartBackoff.resetAfterNanos { next = RestartBackoff.first }
        let d = next
        next = min(next * 2, RestartBackoff.limit)
        return d
    }
}

/// `api-port: N`, then `api-address: IP:PORT` when meshd's API listens on a concrete address,
/// then the trust bundle. A wildcard API is dialed at the admin URL's host.
func parseBootstrap(_ boot: String, adminHost: String) throws(CAError) -> (api: String, bundle: String) {
    var lines = boot.split(separator: "\n", omittingEmptySubsequences: false)
    guard let first = lines.first, first.hasPrefix("api-port: "), let apiPort = Int(first.dropFirst(10)) else {
        throw CAError("meshd's /v1/bootstrap answer is not understood")
    }
    lines.removeFirst()
    var api = SocketAddress(host: adminHost, port: apiPort)?.text ?? "\(adminHost):\(apiPort)"
    if let l = lines.first, l.hasPrefix("api-address: ") {
        guard SocketAddress(String(l.dropFirst(13))) != nil else { throw CAError("meshd's /v1/bootstrap answer is not understood: \(l)") }
        api = String(l.dropFirst(13))
        lines.removeFirst()
    }
    return (api, lines.joined(separator: "\n"))
}

/// Proxy variables the app never gets under capture (any case): its calls go to their real
/// destinations and the kernel sends them through the sidecar.
let proxyVariables: Set<String> = ["http_proxy", "https_proxy", "no_proxy", "grpc_proxy", "all_proxy", "ftp_proxy"]

/// Whether `entry` (`KEY=value`) sets one of `proxyVariables`, in any case.
func isProxyVariable(_ entry: String) -> Bool {
    let key = entry.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).first.map { String($0).lowercased() } ?? ""
    return proxyVariables.contains(key)
}

/// Starts the sidecar, waits until it is ready, starts the command (with `http_proxy` pointing at
/// the sidecar, or under capture with no proxy variable at all), forwards signals, restarts a
/// sidecar that dies, and exits with the command's status.
func runCommand(_ req: RunRequest, meshd: MeshdAdmin) -> Never {
    let signals = SignalWaiter()
    let capture = req.capture
    // Under capture: who the sidecar and the app run as, checked before anything starts.
    var sidecarCreds: Credentials? = nil
    var appCreds: Credentials? = nil
    if let o = capture {
        if let missing = CaptureRunPrivileges.missing() {
            fail("run --capture needs root: \(missing) (apply the capture rules, start the sidecar as uid \(o.proxyUID))", code: 1)
        }
        sidecarCreds = Credentials(uid: uid_t(o.proxyUID), gid: gid_t(o.proxyGID), groups: [])
        do { appCreds = try CaptureRunPrivileges.invokingUser() } catch { fail(error.description, code: 2) }
        // The proxy gid among the app's supplementary groups would let it become that gid
        // (a setgid file) and leave capture: it is not given.
        if let c = appCreds, c.groups.contains(where: { Int($0) == o.proxyGID }) {
            appCreds = Credentials(uid: c.uid, gid: c.gid, groups: c.groups.filter { Int($0) != o.proxyGID })
        }
        // An app that runs as root keeps uid 0 but none of root's capabilities (except binding
        // ports below 1024): with them it could change the rules or take the proxy's gid.
        if (appCreds?.uid ?? getuid()) == 0 {
            let c = appCreds ?? Credentials(uid: 0, gid: getgid(), groups: [getgid()])
            appCreds = Credentials(uid: c.uid, gid: c.gid, groups: c.groups.filter { Int($0) != o.proxyGID }, dropCapabilities: true)
        }
        let (auid, agid) = appCreds.map { ($0.uid, $0.gid) } ?? (getuid(), getgid())
        if Int(auid) == o.proxyUID || Int(agid) == o.proxyGID {
            fail("run --capture: the app would run as uid \(auid) gid \(agid), the proxy's --proxy-uid \(o.proxyUID) / --proxy-gid \(o.proxyGID): its traffic would never be captured (run as another user, or choose other proxy ids)")
        }
    }
    meshd.requireToken()   // run mints join tokens and reads the bootstrap with it
    // Under capture meshctl's own calls to meshd are made with the proxy gid, so the rules do not
    // send them to the sidecar (which may be the one being restarted).
    func asProxy<T>(_ body: () throws(CAError) -> T) throws(CAError) -> T {
        guard let o = capture else { return try body() }
        let saved = getegid()
        _ = setegid(gid_t(o.proxyGID))
        defer { _ = setegid(saved) }
        return try body()
    }
    func mint() throws(CAError) -> String {
        let t = try asProxy { () throws(CAError) in
            try meshd.call("POST", "/v1/tokens?namespace=\(ControlClient.percentEncode(req.namespace))&serviceAccount=\(ControlClient.percentEncode(req.serviceAccount))&ttl=1h")
        }
        return t.trimmingTrailingNewlines
    }
    func readTokenFile(_ f: String) throws(CAError) -> String {
        try FileStore.read(f).split(whereSeparator: { $0 == "\n" || $0 == " " }).first.map(String.init) ?? ""
    }
    var firstToken: String
    var boot: (api: String, bundle: String)
    do {
        firstToken = try req.tokenFile.map { f throws(CAError) in try readTokenFile(f) } ?? mint()
        boot = try parseBootstrap(try meshd.call("GET", "/v1/bootstrap"), adminHost: req.adminHost)
    } catch { fail("\(error)", code: 1) }

    var template = Array("/tmp/meshctl-run-XXXXXX".utf8CString)
    guard let dirp = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else { fail("cannot create a temporary directory") }
    let dir = String(cString: dirp)
    let log = req.sidecarLog ?? "\(dir)/sidecar.log"
    if let c = sidecarCreds {
        // The sidecar (another uid) may cross the directory and read its own files, nothing else.
        chmod(dir, 0o711)
        if req.sidecarLog == nil {
            let fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            if fd >= 0 { _ = fchown(fd, c.uid, c.gid); close(fd) }
        }
    }
    let ports: (inbound: Int, outbound: Int, admin: Int)
    if let o = capture {
        ports = (o.inboundPort, o.outboundPort, o.adminPort)
    } else {
        let p = freePorts(3)
        ports = (p[0], p[1], p[2])
    }
    let here = CommandLine.arguments[0].split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
    let sidecarPath = here.isEmpty ? "sidecar" : (access("\(here)/sidecar", X_OK) == 0 ? "\(here)/sidecar" : "sidecar")
    var args = [sidecarPath, "--meshd", boot.api, "--root-cert", "\(dir)/root-cert.pem", "--token-file", "\(dir)/token",
                "--service", req.service, "--namespace", req.namespace, "--service-account", req.serviceAccount,
                "--outbound-port", String(ports.outbound), "--inbound-port", String(ports.inbound), "--admin-port", String(ports.admin)]
    for l in req.labels { args += ["--label", l] }
    if let p = req.appPort { args += ["--app-port", String(p)] }
    if let p = req.appProtocol { args += ["--app-protocol", p] }
    if let p = req.servicePort { args += ["--service-port", String(p)] }
    if let a = req.advertiseAddress { args += ["--advertise-address", a] }
    if let o = capture { args += ["--capture", "--dns-port", String(o.dnsPort)] }

    // The join token is only needed until the sidecar has its certificate: removed once it is
    // ready, and on any exit. Each start gets its own.
    func cleanup() { unlink("\(dir)/token"); unlink("\(dir)/root-cert.pem") }
    func writeFiles(token: String, bundle: String) throws(CAError) {
        try FileStore.writeAtomically("\(dir)/token", token + "\n", mode: 0o600)
        try FileStore.writeAtomically("\(dir)/root-cert.pem", bundle, mode: 0o644)
        if let c = sidecarCreds {
            for f in ["\(dir)/token", "\(dir)/root-cert.pem"] where chown(f, c.uid, c.gid) != 0 {
                throw CAError("cannot hand \(f) to uid \(c.uid): \(String(cString: strerror(errno)))")
            }
        }
    }
    func start(token: String, bundle: String) throws(CAError) -> ChildProcess {
        try writeFiles(token: token, bundle: bundle)
        return try ChildProcess(path: sidecarPath, args: args, logPath: log, newGroup: true, credentials: sidecarCreds, dieWithParent: true)
    }

    let applier = CaptureApplier(note: { note("capture: \($0)") })
    var rulesApplied = false
    var sidecar: ChildProcess? = nil
    /// Every exit after this point: the sidecar stopped, its files removed, the rules taken back.
    func finish(_ code: Int32, _ message: String? = nil) -> Never {
        if let s = sidecar { s.signal(SIGTERM); s.wait(timeoutSeconds: 30) }
        cleanup()
        rmdir(dir)   // only when empty: a sidecar log kept there (no --sidecar-log) keeps it
        if rulesApplied, let o = capture {
            do { note(try applier.remove(o)) } catch {
                note("could not remove the capture rules: \(error.description) (run meshctl capture remove)")
            }
        }
        if let m = message { fail(m, code: code) }
        exit(code)
    }

    if let o = capture {
        do {
            let applied = try applier.apply(o)
            if applied.hasPrefix("capture unchanged") {
                // The rules were in force before this run (another `run --capture`, or `meshctl
                // capture apply`): they are not this run's to remove at its end.
                cleanup()
                rmdir(dir)
                fail("run --capture: capture rules are already in force in this network namespace (another captured app, or meshctl capture apply): one captured app per namespace; meshctl capture remove takes them away", code: 1)
            }
            note(applied)
            rulesApplied = true
        } catch {
            // A failed apply leaves nothing half applied (the library takes back what it did).
            cleanup()
            rmdir(dir)
            fail(error.description, code: error.exitCode)
        }
    }
    do { sidecar = try start(token: firstToken, bundle: boot.bundle) } catch { finish(1, "\(error)") }
    firstToken = ""
    var sidecarStarted = Clock.monotonicNanos()
    if capture != nil {
        note("sidecar (pid \(sidecar!.pid)) for spiffe://…/ns/\(req.namespace)/sa/\(req.serviceAccount) as uid \(sidecarCreds!.uid) gid \(sidecarCreds!.gid), capture on: outbound :\(ports.outbound), inbound :\(ports.inbound)"
             + (req.appPort.map { " -> app :\($0)" } ?? "") + ", admin :\(ports.admin), dns :\(capture!.dnsPort); log \(log)")
    } else {
        note("sidecar (pid \(sidecar!.pid)) for spiffe://…/ns/\(req.namespace)/sa/\(req.serviceAccount): outbound 127.0.0.1:\(ports.outbound) (http_proxy)"
             + (req.appPort.map { ", inbound :\(ports.inbound) -> app :\($0)" } ?? " (calls out only)") + ", admin :\(ports.admin); log \(log)")
    }

    // The app starts only once the sidecar is ready (certificate in place, config applied).
    let adminAddress = SocketAddress(host: "127.0.0.1", port: ports.admin)!
    func ready() -> Bool {
        (try? ControlClient.request(adminAddress, context: nil, method: "GET", path: "/ready", timeoutSeconds: 1))?.status == 200
    }
    while true {
        if ready() { break }
        if let s = sidecar, !s.isRunning {
            let tail = (try? FileStore.read(log)).map { String($0.suffix(600)) } ?? ""
            sidecar = nil
            finish(1, "the sidecar exited before it was ready (\(exitReason(s.exitStatus)); log \(log)):\n\(tail)")
        }
        if signals.wait(millis: 100) != 0 { finish(130) }
        if Clock.monotonicNanos() - sidecarStarted > 60_000_000_000 {
            finish(1, "the sidecar was not ready within 60 s (log \(log))")
        }
    }
    cleanup()
    var env = ChildProcess.currentEnvironment().filter {
        !$0.hasPrefix("http_proxy=") && !$0.hasPrefix("HTTP_PROXY=") && !$0.hasPrefix("MESH_")
    }
    if capture != nil {
        // No proxy variable at all: the app calls real names and addresses.
        env = env.filter { !isProxyVariable($0) }
        env += ["MESH_SIDECAR_ADMIN=127.0.0.1:\(ports.admin)", "MESH_SERVICE=\(req.service)", "MESH_NAMESPACE=\(req.namespace)"]
    } else {
        // Local addresses stay direct (the app's own admin or health calls), as with any proxy.
        if !env.contains(where: { $0.hasPrefix("no_proxy=") || $0.hasPrefix("NO_PROXY=") }) {
            env += ["no_proxy=127.0.0.1,localhost", "NO_PROXY=127.0.0.1,localhost"]
        }
        env += ["http_proxy=http://127.0.0.1:\(ports.outbound)", "HTTP_PROXY=http://127.0.0.1:\(ports.outbound)",
                "MESH_OUTBOUND=127.0.0.1:\(ports.outbound)", "MESH_SIDECAR_ADMIN=127.0.0.1:\(ports.admin)",
                "MESH_SERVICE=\(req.service)", "MESH_NAMESPACE=\(req.namespace)"]
    }
    let app: ChildProcess
    do { app = try ChildProcess(path: req.command[0], args: req.command, environment: env, newGroup: true, credentials: appCreds, dieWithParent: true) } catch {
        finish(127, "\(error)")
    }
    var stopping = false
    var backoff = RestartBackoff()
    var restartAt: UInt64? = nil
    var awaitingReady = false
    var restarts = 0
    while true {
        let sig = signals.wait(millis: 100)
        if sig == SignalWaiter.sighup {
            app.signal(sig)   // a reload for the app, not a shutdown
        } else if sig != 0 && stopping {
            app.signal(SIGKILL)   // a second Ctrl-C: no more waiting
        } else if sig != 0 {
            // Shutdown: the sidecar stops taking new inbound requests and finishes those in
            // flight, then the app (and its children) get the signal; the sidecar exits last.
            stopping = true
            if sidecar != nil {
                _ = try? ControlClient.request(adminAddress, context: nil, method: "POST", path: "/drain", timeoutSeconds: 2)
            }
            app.signal(sig)
        }
        if !app.isRunning { finish(app.exitStatus ?? 1) }
        if stopping { continue }   // no restart once shutting down
        let now = Clock.monotonicNanos()
        if let s = sidecar, !s.isRunning {
            // A sidecar that dies is started again; the app keeps running. Under capture its new
            // connections are refused meanwhile (nothing listens on the redirect ports).
            let delay = backoff.delay(upNanos: now - sidecarStarted)
            sidecar = nil
            awaitingReady = false
            restartAt = now + UInt64(delay * 1e9)
            note("the sidecar exited unexpectedly (\(exitReason(s.exitStatus)); log \(log)); restarting it in \(delay) s"
                 + (capture != nil ? " (until then the app's new connections are refused: capture fails closed)" : ""))
        }
        if sidecar == nil, let t = restartAt, now >= t {
            do {
                let token = try meshd.canMint || req.tokenFile == nil ? mint() : readTokenFile(req.tokenFile!)
                let bundle = (try? asProxy { () throws(CAError) in try parseBootstrap(try meshd.call("GET", "/v1/bootstrap"), adminHost: req.adminHost) })?.bundle ?? boot.bundle
                sidecar = try start(token: token, bundle: bundle)
                sidecarStarted = Clock.monotonicNanos()
                restartAt = nil
                awaitingReady = true
                restarts += 1
                note("sidecar restarted (restart \(restarts), pid \(sidecar!.pid)) with a fresh join token")
            } catch {
                cleanup()
                let delay = backoff.delay(upNanos: nil)
                restartAt = Clock.monotonicNanos() + UInt64(delay * 1e9)
                note("could not restart the sidecar: \(error); trying again in \(delay) s")
            }
        }
        if awaitingReady, sidecar != nil, ready() {
            awaitingReady = false
            cleanup()
            note("the restarted sidecar is ready (restart \(restarts))")
        }
    }
}
