// meshctl demo --capture: the demo's story with every workload in its own network namespace,
// enforced by transparent capture (DESIGN §10, docs/capture.md).
import MeshCapture
import MeshControlWire
import MeshPKI
import MeshCore
import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// What the capture demo runs where: meshd's host and the three workloads, in start order.
enum DemoCaptureLayout {
    static let meshdHost = "meshd"
    static let workloads = ["reviews-v1", "reviews-v2", "productpage"]
    static let callerHost = "productpage"
    static let url = "http://reviews.default.svc.cluster.local:9080/"
    static let appPort = 9080
    /// Temporary directories are `/tmp/<prefix><pid>-XXXXXX` (a killed run's is removed later).
    static let tmpPrefix = "meshctl-demo-capture-"
}

/// The absolute path of this executable (/proc/self/exe), or nil.
private func selfExecutable() -> String? {
    var buf = [CChar](repeating: 0, count: 4097)
    let n = readlink("/proc/self/exe", &buf, 4096)
    guard n > 0 else { return nil }
    return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// Copies `from` to `to` with mode `mode` (the sidecar's binary where uid 1337 can run it).
private func copyFile(_ from: String, _ to: String, mode: mode_t) -> String? {
    let src = open(from, O_RDONLY | O_CLOEXEC)
    guard src >= 0 else { return "cannot read \(from): \(String(cString: strerror(errno)))" }
    defer { close(src) }
    let dst = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
    guard dst >= 0 else { return "cannot write \(to): \(String(cString: strerror(errno)))" }
    defer { close(dst) }
    var chunk = [UInt8](repeating: 0, count: 1 << 20)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(src, $0.baseAddress, 1 << 20) }
        if n < 0 && errno == EINTR { continue }
        if n < 0 { return "cannot read \(from): \(String(cString: strerror(errno)))" }
        if n == 0 { break }
        var off = 0
        while off < n {
            let w = chunk.withUnsafeBytes { write(dst, $0.baseAddress! + off, n - off) }
            if w < 0 && errno == EINTR { continue }
            if w <= 0 { return "cannot write \(to): \(String(cString: strerror(errno)))" }
            off += w
        }
    }
    _ = fchmod(dst, mode)
    return nil
}

/// The last `n` lines of a log file, for a failure message.
private func logTail(_ path: String, _ n: Int = 12) -> [String] {
    guard let text = try? FileStore.read(path) else { return [] }
    return text.split(separator: "\n").suffix(n).map(String.init)
}

/// Removes temporary directories of earlier capture demos whose meshctl is gone.
private func reapStaleDirectories(rm: String) -> [String] {
    guard let d = opendir("/tmp") else { return [] }
    var out: [String] = []
    while let e = readdir(d) {
        let n = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if let p = DemoHosts.ownerPid(n, prefix: DemoCaptureLayout.tmpPrefix), DemoHosts.isGone(p) { out.append("/tmp/\(n)") }
    }
    closedir(d)
    for dir in out { _ = try? ProcessRunner.run(rm, ["-rf", "--", dir]) }
    return out
}

/// `meshctl demo --capture`: meshd and the demo's workloads (reviews v1 and v2, the productpage
/// caller), each in its own network namespace on a bridge, each started with `meshctl run
/// --capture` there, the caller calling reviews by name with no proxy variable; then the story
/// of `meshctl demo`. Everything it made (namespaces, and with them rules, links and addresses;
/// processes; its temporary directory) is removed when it ends: at the end of the story, on
/// SIGINT/SIGTERM, and after a failure halfway. A run killed outright is cleaned up by the next.
func runCaptureDemo(keepRunning: Bool, phaseSeconds: Double) -> Never {
    if geteuid() != 0 {
        fail("demo --capture needs root: it creates network namespaces and capture rules (run it with sudo, or run meshctl demo)", code: 2)
    }
    if let missing = CaptureRunPrivileges.missing() { fail("demo --capture: \(missing)", code: 2) }
    guard let ipPath = ProcessRunner.find("ip") else { fail("demo --capture needs iproute2's ip: install the Debian package iproute2", code: 1) }
    guard let rmPath = ProcessRunner.find("rm") else { fail("demo --capture: rm not found", code: 1) }
    guard let exe = selfExecutable() else { fail("cannot read /proc/self/exe", code: 1) }
    let here = exe.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
    let meshdPath = "\(here)/meshd", sidecarPath = "\(here)/sidecar"
    for p in [meshdPath, sidecarPath] where access(p, X_OK) != 0 {
        fail("demo --capture: \(p) not found (meshd and sidecar are looked for next to meshctl)", code: 1)
    }
    let signals = SignalWaiter()
    let tty = isatty(1) == 1
    func say(_ s: String) { print("demo: \(s)"); fflush(nil) }

    // A run killed outright left its namespaces (and what ran in them) and its directory.
    let staleNS = DemoHosts.reapStale(ipPath: ipPath, meshctl: exe)
    let staleDirs = reapStaleDirectories(rm: rmPath)
    if !staleNS.isEmpty || !staleDirs.isEmpty {
        say("removed what an earlier demo that was killed left behind: \((staleNS + staleDirs).joined(separator: ", "))")
    }

    var template = Array("/tmp/\(DemoCaptureLayout.tmpPrefix)\(getpid())-XXXXXX".utf8CString)
    guard let dirp = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else { fail("cannot create a temporary directory", code: 1) }
    let dir = String(cString: dirp)
    // The sidecars run as uid 1337: they cross the directory to their binary, and see nothing else.
    chmod(dir, 0o711)
    let hosts = DemoHosts(hosts: [DemoCaptureLayout.meshdHost] + DemoCaptureLayout.workloads, ipPath: ipPath)
    var meshd: ChildProcess? = nil
    var workloads: [(name: String, process: ChildProcess)] = []

    /// Every exit once something exists: workloads stopped (each `meshctl run` drains its sidecar,
    /// stops its app and removes its rules), meshd stopped, namespaces and directory removed.
    func teardown(_ code: Int32) -> Never {
        say("stopping every process and removing the network namespaces")
        for w in workloads.reversed() { w.process.signal(SIGTERM) }
        for w in workloads.reversed() { w.process.wait(timeoutSeconds: 20) }
        if let m = meshd { m.signal(SIGTERM); m.wait(timeoutSeconds: 10) }
        hosts.destroy(meshctl: exe)
        _ = try? ProcessRunner.run(rmPath, ["-rf", "--", dir])
        exit(code)
    }
    func failed(_ message: String, logs: [String]) -> Never {
        say(message)
        for l in logs {
            let t = logTail(l)
            if t.isEmpty { continue }
            say("  last lines of \(l.split(separator: "/").last ?? ""):")
            for line in t { say("  | \(line)") }
        }
        teardown(1)
    }
    func check() {
        if signals.wait(millis: 0) != 0 { teardown(130) }
        if let m = meshd, !m.isRunning { failed("meshd exited unexpectedly (\(exitReason(m.exitStatus)))", logs: ["\(dir)/meshd.log"]) }
        for w in workloads where !w.process.isRunning {
            failed("\(w.name) exited unexpectedly (\(exitReason(w.process.exitStatus)))", logs: ["\(dir)/\(w.name)-run.log", "\(dir)/\(w.name)-sidecar.log"])
        }
    }
    func pause(_ seconds: Double) {
        let end = Clock.monotonicNanos() + UInt64(seconds * 1e9)
        while Clock.monotonicNanos() < end {
            if signals.wait(millis: 100) != 0 { teardown(130) }
            check()
        }
    }

    // Private binaries: the sidecar as a copy uid 1337 can run wherever meshctl was built;
    // meshctl as a link, so `meshctl run` finds that sidecar next to it.
    let bin = "\(dir)/bin"
    mkdir(bin, 0o711)
    if let e = copyFile(sidecarPath, "\(bin)/sidecar", mode: 0o755) { failed(e, logs: []) }
    if symlink(exe, "\(bin)/meshctl") != 0 { failed("cannot link \(bin)/meshctl: \(String(cString: strerror(errno)))", logs: []) }
    let meshctl = "\(bin)/meshctl"

    say("creating network namespaces \(hosts.base)-{\(([DemoCaptureLayout.meshdHost] + DemoCaptureLayout.workloads).joined(separator: ","))} on a bridge (in \(hosts.bridge)), \(DemoHosts.subnet).0/24")
    do { try hosts.build() } catch { failed("cannot build the hosts: \(error.message)", logs: []) }

    // meshd on the bridge: its API and its admin port (TLS, meshctl run mints tokens through it)
    // on its host's address.
    let meshdIP = hosts.address(DemoCaptureLayout.meshdHost)
    let state = "\(dir)/meshd"
    say("starting meshd in \(hosts.ns(DemoCaptureLayout.meshdHost)) on \(meshdIP) (certificate authority and config store), state in \(state)")
    do {
        meshd = try ChildProcess(path: ipPath, args: [ipPath, "netns", "exec", hosts.ns(DemoCaptureLayout.meshdHost), meshdPath, "--state-dir", state,
                                                      "--listen-address", meshdIP, "--admin-address", meshdIP, "--cert-ttl", "1h"],
                                 logPath: "\(dir)/meshd.log", newGroup: true)
    } catch { failed("\(error)", logs: []) }
    let adminURL = "https://\(meshdIP):15014"
    let rootCert = "\(state)/root-cert.pem", tokenFile = "\(state)/admin-token"
    var endpoint: ControlEndpoint? = nil
    for _ in 0..<200 {
        if endpoint == nil, access(tokenFile, R_OK) == 0, let pem = try? FileStore.read(rootCert) {
            endpoint = try? ControlEndpoint(tls: meshdIP, port: 15014, rootPEM: pem, rootFile: rootCert)
        }
        if let e = endpoint, hosts.inside(hosts.ns(DemoCaptureLayout.meshdHost), { (try? e.request(method: "GET", path: "/ready", timeoutSeconds: 1))?.status }) == 200 {
            break
        }
        pause(0.1)
    }
    guard let admin = endpoint else { failed("meshd did not write its root certificate within 20 s", logs: ["\(dir)/meshd.log"]) }
    func ctl(_ method: String, _ path: String, _ body: String = "") -> String {
        let token = ((try? FileStore.read(tokenFile)) ?? "").split(separator: "\n").first.map(String.init) ?? ""
        let r = hosts.inside(hosts.ns(DemoCaptureLayout.meshdHost)) {
            try? admin.request(method: method, path: path, headers: [("authorization", "Bearer \(token)")], body: body)
        }
        guard let answer = r ?? nil, answer.status == 200 else { return "" }
        return answer.body
    }

    // The workloads, each in its namespace under `meshctl run --capture`: the rules of `meshctl
    // capture apply`, the sidecar as uid 1337 with its DNS port, the app with no proxy variable.
    func start(_ host: String, service: String, labels: [String], appPort: Int?, app: [String]) {
        var args = [ipPath, "netns", "exec", hosts.ns(host), meshctl, "--meshd", adminURL, "--root-cert", rootCert,
                    "--admin-token-file", tokenFile, "run", "--capture", "--service", service]
        for l in labels { args += ["--label", l] }
        if let p = appPort { args += ["--app-port", String(p)] }
        args += ["--advertise-address", hosts.address(host), "--sidecar-log", "\(dir)/\(host)-sidecar.log", "--"] + app
        do { workloads.append((host, try ChildProcess(path: ipPath, args: args, logPath: "\(dir)/\(host)-run.log", newGroup: true))) } catch {
            failed("\(error)", logs: [])
        }
    }
    say("starting reviews v1 and v2 (the sample app) and productpage (a caller), each in its namespace with meshctl run --capture")
    for v in ["v1", "v2"] {
        start("reviews-\(v)", service: "reviews", labels: ["version=\(v)"], appPort: DemoCaptureLayout.appPort,
              app: [meshctl, "demo-app", "--name", "reviews-\(v)", "--port", String(DemoCaptureLayout.appPort)])
    }
    start(DemoCaptureLayout.callerHost, service: "productpage", labels: [], appPort: nil,
          app: [meshctl, "demo-caller", "--url", DemoCaptureLayout.url, "--rate", "50"])
    var ready = false
    for _ in 0..<600 {
        if ctl("GET", "/v1/proxies").split(separator: "\n").filter({ $0.contains("\tconnected\t") }).count >= 3 { ready = true; break }
        pause(0.1)
    }
    if !ready {
        failed("the sidecars did not all connect within 60 s", logs: DemoCaptureLayout.workloads.flatMap { ["\(dir)/\($0)-run.log", "\(dir)/\($0)-sidecar.log"] })
    }

    // The caller's own view: the name resolves (its sidecar's DNS port answers with the VIP) and
    // its calls arrive at its sidecar (captured), which reports them.
    let caller = hosts.ns(DemoCaptureLayout.callerHost)
    let callerAdmin = "127.0.0.1:\(CaptureOptions().adminPort)"
    var reached = false
    for _ in 0..<300 {
        if hosts.inside(caller, { !collect([callerAdmin]).isEmpty }) == true { reached = true; break }
        pause(0.1)
    }
    if !reached {
        failed("productpage's calls did not reach its sidecar within 30 s",
               logs: ["\(dir)/productpage-run.log", "\(dir)/productpage-sidecar.log"])
    }
    let vips = hosts.inside(caller) { () -> String in
        switch resolveTCP("reviews.default.svc.cluster.local", port: DemoCaptureLayout.appPort) {
        case .success(let a): return a.map(\.text).joined(separator: ", ")
        case .failure(let e): return "not resolved (\(e.text))"
        }
    } ?? "?"
    say("productpage calls \(DemoCaptureLayout.url) with no proxy variable: the name resolves to \(vips) (the VIP and port, from its sidecar's DNS port) and the kernel sends the connection to its sidecar")

    let story = DemoStory(say: say, ctl: ctl, table: { interval in
        hosts.inside(caller) { topTable(admins: [callerAdmin], interval: interval) } ?? ""
    }, pause: pause, check: check, tty: tty, phaseSeconds: phaseSeconds)
    story.identities()
    story.walkCanary()
    if keepRunning {
        let m = hosts.ns(DemoCaptureLayout.meshdHost)
        say("the mesh stays up in the network namespaces \(hosts.base)-*. Try (as root):")
        say("  ip netns exec \(caller) curl -s \(DemoCaptureLayout.url)")
        say("  ip netns exec \(caller) iptables-save -t nat")
        say("  ip netns exec \(m) \(exe) --meshd \(adminURL) --root-cert \(rootCert) --admin-token-file \(tokenFile) status")
        say("logs: \(dir). Ctrl-C stops everything and removes the namespaces.")
        while true { pause(3600) }
    }
    say("done: the canary went from 100/0 to 0/100, every call captured and carried over mutual TLS")
    teardown(0)
}
