// meshctl run: a sidecar in mesh mode next to any command (issue: meshctl run and demo).
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

/// Starts the sidecar, waits until it is ready, starts the command with `http_proxy` pointing at
/// the sidecar, forwards signals, and exits with the command's status.
func runCommand(service: String, namespace: String, serviceAccount: String, labels: [String], appPort: Int?,
                appProtocol: String?, tokenFile: String?, sidecarLog: String?, command: [String],
                adminHost: String, advertiseAddress: String?, call: (String, String) -> String) -> Never {
    let signals = SignalWaiter()
    var token: String
    if let f = tokenFile {
        do { token = try FileStore.read(f).split(whereSeparator: { $0 == "\n" || $0 == " " }).first.map(String.init) ?? "" } catch { fail("\(error)") }
    } else {
        token = call("POST", "/v1/tokens?namespace=\(ControlClient.percentEncode(namespace))&serviceAccount=\(ControlClient.percentEncode(serviceAccount))&ttl=1h")
        token = token.trimmingTrailingNewlines
    }
    // `api-port: N`, then `api-address: IP:PORT` when meshd's API listens on a concrete address,
    // then the trust bundle. A wildcard API is dialed at the admin URL's host.
    let boot = call("GET", "/v1/bootstrap")
    var lines = boot.split(separator: "\n", omittingEmptySubsequences: false)
    guard let first = lines.first, first.hasPrefix("api-port: "), let apiPort = Int(first.dropFirst(10)) else {
        fail("meshd's /v1/bootstrap answer is not understood")
    }
    lines.removeFirst()
    var api = SocketAddress(host: adminHost, port: apiPort)?.text ?? "\(adminHost):\(apiPort)"
    if let l = lines.first, l.hasPrefix("api-address: ") {
        guard SocketAddress(String(l.dropFirst(13))) != nil else { fail("meshd's /v1/bootstrap answer is not understood: \(l)") }
        api = String(l.dropFirst(13))
        lines.removeFirst()
    }
    let bundle = lines.joined(separator: "\n")
    var template = Array("/tmp/meshctl-run-XXXXXX".utf8CString)
    guard let dirp = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else { fail("cannot create a temporary directory") }
    let dir = String(cString: dirp)
    do {
        try FileStore.writeAtomically("\(dir)/token", token + "\n", mode: 0o600)
        try FileStore.writeAtomically("\(dir)/root-cert.pem", bundle, mode: 0o644)
    } catch { fail("\(error)") }
    let ports = freePorts(3)
    let (inbound, outbound, admin) = (ports[0], ports[1], ports[2])
    let here = CommandLine.arguments[0].split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
    let sidecarPath = here.isEmpty ? "sidecar" : (access("\(here)/sidecar", X_OK) == 0 ? "\(here)/sidecar" : "sidecar")
    let log = sidecarLog ?? "\(dir)/sidecar.log"
    var args = [sidecarPath, "--meshd", api, "--root-cert", "\(dir)/root-cert.pem", "--token-file", "\(dir)/token",
                "--service", service, "--namespace", namespace, "--service-account", serviceAccount,
                "--outbound-port", String(outbound), "--inbound-port", String(inbound), "--admin-port", String(admin)]
    for l in labels { args += ["--label", l] }
    if let p = appPort { args += ["--app-port", String(p)] }
    if let p = appProtocol { args += ["--app-protocol", p] }
    if let a = advertiseAddress { args += ["--advertise-address", a] }
    let sidecar: ChildProcess
    do { sidecar = try ChildProcess(path: sidecarPath, args: args, logPath: log, newGroup: true) } catch { fail("\(error)") }
    // The join token is only needed until the sidecar has its certificate: removed on any exit.
    let cleanup = { unlink("\(dir)/token"); unlink("\(dir)/root-cert.pem") }
    note("sidecar for spiffe://…/ns/\(namespace)/sa/\(serviceAccount): outbound 127.0.0.1:\(outbound) (http_proxy)"
         + (appPort.map { ", inbound :\(inbound) -> app :\($0)" } ?? " (calls out only)") + ", admin :\(admin); log \(log)")

    // The app starts only once the sidecar is ready (certificate in place, config applied).
    let adminAddress = SocketAddress(host: "127.0.0.1", port: admin)!
    let start = Clock.monotonicNanos()
    while true {
        if let r = try? ControlClient.request(adminAddress, context: nil, method: "GET", path: "/ready", timeoutSeconds: 2), r.status == 200 { break }
        if !sidecar.isRunning {
            let tail = (try? FileStore.read(log)).map { String($0.suffix(600)) } ?? ""
            cleanup()
            fail("the sidecar exited before it was ready (log \(log)):\n\(tail)", code: 1)
        }
        if signals.wait(millis: 100) != 0 { sidecar.signal(SIGTERM); sidecar.wait(timeoutSeconds: 10); cleanup(); exit(130) }
        if Clock.monotonicNanos() - start > 60_000_000_000 {
            sidecar.signal(SIGTERM); sidecar.wait(timeoutSeconds: 10)
            cleanup()
            fail("the sidecar was not ready within 60 s (log \(log))", code: 1)
        }
    }
    var env = ChildProcess.currentEnvironment().filter {
        !$0.hasPrefix("http_proxy=") && !$0.hasPrefix("HTTP_PROXY=") && !$0.hasPrefix("MESH_")
    }
    // Local addresses stay direct (the app's own admin or health calls), as with any proxy.
    if !env.contains(where: { $0.hasPrefix("no_proxy=") || $0.hasPrefix("NO_PROXY=") }) {
        env += ["no_proxy=127.0.0.1,localhost", "NO_PROXY=127.0.0.1,localhost"]
    }
    env += ["http_proxy=http://127.0.0.1:\(outbound)", "HTTP_PROXY=http://127.0.0.1:\(outbound)",
            "MESH_OUTBOUND=127.0.0.1:\(outbound)", "MESH_SIDECAR_ADMIN=127.0.0.1:\(admin)",
            "MESH_SERVICE=\(service)", "MESH_NAMESPACE=\(namespace)"]
    let app: ChildProcess
    do { app = try ChildProcess(path: command[0], args: command, environment: env, newGroup: true) } catch {
        sidecar.signal(SIGTERM); sidecar.wait(timeoutSeconds: 10)
        cleanup()
        fail("\(error)", code: 127)
    }
    cleanup()
    var stopping = false
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
            _ = try? ControlClient.request(adminAddress, context: nil, method: "POST", path: "/drain", timeoutSeconds: 2)
            app.signal(sig)
        }
        if !app.isRunning {
            let status = app.exitStatus ?? 1
            sidecar.signal(SIGTERM)
            sidecar.wait(timeoutSeconds: 30)
            exit(status)
        }
        if !sidecar.isRunning && !stopping {
            note("the sidecar exited (log \(log)); stopping the app")
            app.signal(SIGTERM)
            app.wait(timeoutSeconds: 10)
            exit(1)
        }
    }
}
