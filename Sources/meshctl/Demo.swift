// meshctl demo: the whole mesh on this machine; meshd walks a good canary to promotion and rolls a bad one back.
import MeshControlWire
import MeshPKI
import MeshCore
import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// `meshctl demo-app --name NAME --port P [--error-percent N] [--delay-ms D]`: the sample app
/// (answers "hello from NAME"); a bad version answers N% of its requests 500 (spread evenly: of
/// every 100 requests, exactly N) and waits D ms before each answer.
func demoApp(name: String, port: Int, errorPercent: Int = 0, delayMillis: Int = 0) -> Never {
    let signals = SignalWaiter()
    let served = Locked(0)
    do {
        let server = try ControlServer(address: SocketAddress(host: "127.0.0.1", port: port)!, name: "demo-app", context: { nil }) { _ in
            let i = served.withLock { n -> Int in n += 1; return n }
            if delayMillis > 0 { usleep(UInt32(delayMillis) * 1000) }
            if (i * errorPercent) / 100 != ((i - 1) * errorPercent) / 100 { return ControlResponse(500, "error from \(name)\n") }
            return ControlResponse(200, "hello from \(name)\n")
        }
        Threads.spawnDetached { server.run() }
    } catch { fail("\(error)", code: 1) }
    _ = signals.wait()
    exit(0)
}

/// `meshctl demo-caller --host H --rate N`: calls H through the sidecar's outbound listener
/// (`MESH_OUTBOUND`, set by `meshctl run`) N times a second. Under capture there is no such
/// variable: the caller takes `--url` instead (`demoCallerByName`, DemoCaptureCaller.swift).
func demoCaller(host: String, rate: Int) -> Never {
    let signals = SignalWaiter()
    guard let proxy = getenv("MESH_OUTBOUND").map({ String(cString: $0) }), let addr = SocketAddress(proxy) else {
        fail("demo-caller --host runs under meshctl run (MESH_OUTBOUND); under run --capture give --url http://NAME:PORT/", code: 2)
    }
    let gap = UInt32(1_000_000 / max(rate, 1))
    Threads.spawnDetached {
        while true {
            _ = try? ControlClient.request(addr, context: nil, method: "GET", path: "/", headers: [("host", host)], timeoutSeconds: 5)
            usleep(gap)
        }
    }
    _ = signals.wait()
    exit(0)
}

/// The story both demos tell once the mesh is up: the identities meshd issued, then a canary
/// walked through 100/0, 90/10, 50/50 and 0/100 with a per-version table in each phase. How meshd
/// is asked (`ctl`) and where the table is read (`table`) differ between `demo` and
/// `demo --capture`; what is printed does not.
struct DemoStory {
    /// One line of demo output.
    let say: (String) -> Void
    /// meshd's admin API: method, path, body -> the answer's body ("" when it failed).
    let ctl: (String, String, String) -> String
    /// One `meshctl top` table over the interval (seconds), from the caller's sidecar.
    let table: (Double) -> String
    /// Waits while watching signals and children (the demo's own `pause`).
    let pause: (Double) -> Void
    /// Stops the demo if a signal came or a child died.
    let check: () -> Void
    let tty: Bool
    let phaseSeconds: Double

    /// The SPIFFE IDs of the sidecars meshd lists.
    func identities() {
        say("mTLS identities in use (issued by meshd, renewed at half life):")
        var ids = Set<String>()
        for l in ctl("GET", "/v1/proxies", "").split(separator: "\n") where l.hasPrefix("spiffe://") { ids.insert(String(l.split(separator: "\t")[0])) }
        for id in ids.sorted() { say("  \(id)") }
    }

    /// Applies each canary step through meshd and shows the split the caller's sidecar reports.
    func walkCanary() {
        let rule = """
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: reviews}
        spec:
          host: reviews
          subsets:
          - {name: v1, labels: {version: v1}}
          - {name: v2, labels: {version: v2}}
        """
        for (w1, w2) in [(100, 0), (90, 10), (50, 50), (0, 100)] {
            let vs = """
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: reviews}
            spec:
              hosts: [reviews]
              http:
              - name: canary
                route:
                - destination: {host: reviews, subset: v1}
                  weight: \(w1)
                - destination: {host: reviews, subset: v2}
                  weight: \(w2)
            """
            let v = ctl("POST", "/v1/config/apply?file=demo-canary-\(w1)-\(w2)", vs + "\n---\n" + rule)
            say("canary \(w1)/\(w2): applied (\(v.split(separator: "\n").first.map(String.init) ?? ""))")
            pause(1)
            let phaseEnd = Clock.monotonicNanos() + UInt64(phaseSeconds * 1e9)
            while Clock.monotonicNanos() < phaseEnd {
                check()
                let t = table(min(2, phaseSeconds))
                if tty {
                    print("\u{1B}[2J\u{1B}[H" + "canary \(w1)/\(w2)  (meshctl top, every 2 s; Ctrl-C stops)\n\n" + t, terminator: "")
                } else {
                    for line in t.split(separator: "\n") where line.hasPrefix("productpage") || line.hasPrefix("ROUTE") || line.contains("reviews") {
                        say("  " + line)
                    }
                }
                fflush(nil)
            }
        }
    }
}

/// The demo: meshd, two versions of `reviews` and a caller, each with its sidecar, and a canary.
func runDemo(keepRunning: Bool, phaseSeconds: Double) -> Never {
    let signals = SignalWaiter()
    let tty = isatty(1) == 1
    let me = CommandLine.arguments[0]
    let here = me.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
    let meshdPath = here.isEmpty ? "meshd" : "\(here)/meshd"
    var template = Array("/tmp/meshctl-demo-XXXXXX".utf8CString)
    guard let dirp = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else { fail("cannot create a temporary directory") }
    let dir = String(cString: dirp)
    var children: [ChildProcess] = []
    func say(_ s: String) { print("demo: \(s)") ; fflush(nil) }
    func stopAll(_ code: Int32) -> Never {
        say("stopping every process")
        for c in children.reversed() { c.signal(SIGTERM) }
        for c in children.reversed() { c.wait(timeoutSeconds: 30) }
        exit(code)
    }
    func check() {
        if signals.wait(millis: 0) != 0 { stopAll(130) }
        for c in children where !c.isRunning { say("a process exited unexpectedly (logs in \(dir))"); stopAll(1) }
    }
    func pause(_ seconds: Double) {
        let end = Clock.monotonicNanos() + UInt64(seconds * 1e9)
        while Clock.monotonicNanos() < end {
            if signals.wait(millis: 100) != 0 { stopAll(130) }
            for c in children where !c.isRunning { say("a process exited unexpectedly (logs in \(dir))"); stopAll(1) }
        }
    }

    let meshdPorts = freePorts(2)
    let (api, admin) = (meshdPorts[0], meshdPorts[1])
    say("starting meshd (certificate authority and config store), state in \(dir)/meshd")
    do { children.append(try ChildProcess(path: meshdPath, args: [meshdPath, "--state-dir", "\(dir)/meshd", "--api-port", String(api), "--admin-port", String(admin), "--cert-ttl", "1h"], logPath: "\(dir)/meshd.log")) } catch { fail("\(error)", code: 1) }
    let adminAddr = SocketAddress(host: "127.0.0.1", port: admin)!
    for _ in 0..<100 {
        if let r = try? ControlClient.request(adminAddr, context: nil, method: "GET", path: "/ready", timeoutSeconds: 1), r.status == 200 { break }
        pause(0.1)
    }
    let tokenFile = "\(dir)/meshd/admin-token"
    let adminURL = "http://127.0.0.1:\(admin)"
    func ctl(_ method: String, _ path: String, _ body: String = "") -> String {
        let token = ((try? FileStore.read(tokenFile)) ?? "").split(separator: "\n").first.map(String.init) ?? ""
        guard let r = try? ControlClient.request(adminAddr, context: nil, method: method, path: path,
                                                 headers: [("authorization", "Bearer \(token)")], body: body), r.status == 200 else { return "" }
        return r.body
    }
    func run(_ service: String, _ extra: [String], _ app: [String]) {
        var args = [me, "--meshd", adminURL, "--admin-token-file", tokenFile, "run", "--service", service] + extra
        let version = extra.first { $0.hasPrefix("version=") }.map { "-" + $0.dropFirst(8) } ?? ""
        args += ["--sidecar-log", "\(dir)/\(service)\(version)-sidecar.log", "--"] + app
        do { children.append(try ChildProcess(path: me, args: args, logPath: "\(dir)/\(service)-run.log")) } catch { fail("\(error)", code: 1) }
    }
    say("starting reviews v1, v2 and v3 (the sample app; v3 answers 30% of requests 500) and productpage (a caller), each with its sidecar")
    for v in ["v1", "v2", "v3"] {
        let p = freeAppPort()
        // Each version on its own app port, both registering the service port callers use.
        run("reviews", ["--label", "version=\(v)", "--app-port", String(p), "--service-port", "9080"],
            [me, "demo-app", "--name", "reviews-\(v)", "--port", String(p), "--error-percent", v == "v3" ? "30" : "0"])
    }
    run("productpage", [], [me, "demo-caller", "--host", "reviews", "--rate", "50"])
    var ready = false
    for _ in 0..<300 {
        let p = ctl("GET", "/v1/proxies")
        if p.split(separator: "\n").filter({ $0.contains("\tconnected\t") }).count >= 4 { ready = true; break }
        pause(0.1)
    }
    if !ready { say("the sidecars did not all connect within 30 s (logs in \(dir))"); stopAll(1) }
    let story = DemoStory(say: say, ctl: ctl, table: { topTable(admins: sidecarAdmins(ctl("GET", "/v1/proxies", "")), interval: $0) },
                          pause: pause, check: check, tty: tty, phaseSeconds: phaseSeconds)
    story.identities()
    // Before any route: the caller's requests spread over every version; route them to v1.
    _ = ctl("POST", "/v1/config/apply?file=demo-reviews-v1", """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews}
        spec:
          hosts: [reviews]
          http:
          - name: canary
            route:
            - destination: {host: reviews, subset: v1}
        ---
        \(DemoStory.reviewsRule)
        """)
    pause(1)
    let good = story.autoCanary(stable: "v1", canary: "v2", expect: "a good version: meshd should promote it")
    let bad = good == "Succeeded" ? story.autoCanary(stable: "v2", canary: "v3", expect: "30% errors: meshd should roll it back") : "not run"
    if keepRunning {
        say("the mesh stays up. meshd admin: \(adminURL) (MESHD=\(adminURL) MESH_ADMIN_TOKEN_FILE=\(tokenFile))")
        say("try: MESHD=\(adminURL) MESH_ADMIN_TOKEN_FILE=\(tokenFile) \(me) top")
        say("     MESHD=\(adminURL) MESH_ADMIN_TOKEN_FILE=\(tokenFile) \(me) status")
        say("logs: \(dir). Ctrl-C stops everything.")
        while true { pause(3600) }
    }
    say("done: v2 \(good == "Succeeded" ? "promoted" : good), v3 \(bad == "Failed" ? "rolled back" : bad) by meshd's canary controller, every request over mutual TLS")
    stopAll(good == "Succeeded" && bad == "Failed" ? 0 : 1)
}

/// A free port for a demo app, below the kernel's ephemeral range (32768 and up): a port the
/// kernel hands out for `bind(0)` (each `meshctl run` picks its sidecar's ports so, at the same
/// moment) can never be one chosen here, so the app's later bind cannot find it taken.
func freeAppPort() -> Int {
    var rng = SystemRandomNumberGenerator()
    for _ in 0..<200 {
        let port = Int.random(in: 20000..<32000, using: &rng)
        let fd = Socket.listen(SocketAddress(host: "127.0.0.1", port: port)!, reusePort: false)
        if fd >= 0 { close(fd); return port }
    }
    return freePort()
}
