// meshctl kube-inject | kube-manifests | wait-ready (DESIGN §11). Thin: MeshKube transforms;
// this reads the input, writes the output only when the whole transform succeeded, and reports.
import MeshCore
import MeshKube
import MeshPKI
import MeshControlWire
#if canImport(Glibc)
import Glibc
#endif

let kubeInjectUsage = """
    meshctl kube-inject: put the sidecar into Kubernetes workloads (as istioctl kube-inject does)

    USAGE:
      meshctl kube-inject -f IN.yaml|- [-o OUT.yaml] [--native-sidecar] [--meshd HOST:PORT[,HOST:PORT...]]
                          [--image IMAGE] [--uninject]

      -f FILE|-          the manifests (multi-document YAML; - reads stdin)
      -o FILE            where to write them (default stdout); nothing is written on error
      --native-sidecar   the sidecar as a native sidecar (an init container with restartPolicy:
                         Always; Kubernetes 1.29+); default: first in containers, the app held
                         until it is ready
      --meshd ADDR       meshd's API address for the sidecars (default: the mesh-sidecar
                         ConfigMap's meshd key, which meshctl kube-manifests writes)
      --image IMAGE      the image with /usr/bin/sidecar and /usr/bin/meshctl (default \(KubeInjectOptions.defaultImage))
      --uninject         take out exactly what an injection added

    Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob and List are injected; other
    documents pass through byte for byte. One line per workload goes to stderr. docs/kubernetes.md

    """

let kubeManifestsUsage = """
    meshctl kube-manifests: what runs meshd in a Kubernetes cluster

    USAGE:
      meshctl kube-manifests --root-cert FILE [--replicas N] [--store etcd://HOST:PORT[,...]]
                             [--image IMAGE] [--app-namespace NS]... [--gateway-service-account NS/SA]...
                             [-o OUT.yaml]

      --root-cert FILE     the plug-in CA's root-cert.pem (the CA itself goes in the mesh-ca Secret:
                           kubectl -n mesh-system create secret generic mesh-ca --from-file=DIR)
      --replicas N         meshd replicas (more than 1 needs --store etcd://...)
      --store etcd://...   the etcd cluster the replicas share (default: the file store on a volume)
      --app-namespace NS   a namespace whose pods are injected: gets the mesh-sidecar ConfigMap
                           (repeatable; default: default)
      --gateway-service-account NS/SA
                           passed to meshd: gateways with this service account may be sent the
                           TLS secrets of NS (repeatable; none by default)

    Namespace mesh-system, ServiceAccount meshd, ClusterRole and binding for TokenReview, a
    PersistentVolumeClaim (file store), Deployment, Service (API 15012, admin 15014),
    PodDisruptionBudget, and a mesh-sidecar ConfigMap per app namespace. docs/kubernetes.md

    """

private func kubeSay(_ fd: Int32, _ text: String) {
    let line = Printable.escaped(text, keepNewlines: true)
    line.withCString { _ = write(fd, $0, strlen($0)) }
}

private func kubeFail(_ message: String, code: Int32 = 2) -> Never {
    kubeSay(2, "meshctl: error: \(message)\n")
    exit(code)
}

/// stdin to the end.
private func readStandardInput() -> String {
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(0, &chunk, chunk.count)
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        bytes.append(contentsOf: chunk[0..<n])
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// Writes the output to `-o FILE` atomically (a temporary file renamed over it) or stdout.
private func writeOutput(_ text: String, to path: String?) {
    guard let path else {
        var rest = Array(text.utf8)[...]
        while !rest.isEmpty {
            let n = rest.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { kubeFail("cannot write to stdout: \(String(cString: strerror(errno)))", code: 1) }
            rest = rest.dropFirst(n)
        }
        return
    }
    do { try FileStore.writeAtomically(path, text, mode: 0o644) } catch { kubeFail("-o \(path): \(error)", code: 1) }
}

/// `meshctl kube-inject ...` (the words after `meshctl`); exits.
func runKubeInject(_ args: [String]) -> Never {
    let specs: [Flags.Spec] = [.init("f"), .init("filename"), .init("o"), .init("output"), .init("native-sidecar", value: false),
                               .init("meshd"), .init("image"), .init("uninject", value: false), .init("help", value: false)]
    let flags: Flags
    do { flags = try Flags(args, specs: specs) } catch { kubeFail("\(error)") }
    if flags.has("help") { kubeSay(1, kubeInjectUsage); exit(0) }
    if let extra = flags.positional.first { kubeFail("kube-inject: unexpected argument \"\(extra)\"") }
    guard let input = flags.string("f") ?? flags.string("filename") else { kubeFail("kube-inject: missing -f FILE (or - for stdin)") }
    var o = KubeInjectOptions()
    o.nativeSidecar = flags.has("native-sidecar")
    if let m = flags.string("meshd") {
        do { try KubeInjectOptions.checkMeshd(m) } catch { kubeFail("--meshd: \(error)") }
        o.meshd = m
    }
    if let i = flags.string("image") {
        if i.isEmpty || i.contains(where: { $0 == " " || $0 == "\n" || $0 == "\t" }) { kubeFail("--image: expected an image reference, got \"\(i)\"") }
        o.image = i
    }
    if flags.has("uninject") && (flags.has("native-sidecar") || flags.has("meshd") || flags.has("image")) {
        kubeFail("--uninject takes only -f and -o (it removes what the status annotation records)")
    }
    let text: String
    if input == "-" { text = readStandardInput() } else {
        do { text = try FileStore.read(input) } catch { kubeFail("-f \(input): \(error)", code: 1) }
    }
    let result: KubeInject.Result
    do { result = try KubeInject.run(text, options: o, uninject: flags.has("uninject")) } catch {
        kubeFail("\(input == "-" ? "stdin" : input): \(error)", code: 1)
    }
    writeOutput(result.output, to: flags.string("o") ?? flags.string("output"))
    for line in result.report { kubeSay(2, "meshctl kube-inject: \(line)\n") }
    exit(0)
}

/// `meshctl kube-manifests ...`; exits.
func runKubeManifests(_ args: [String]) -> Never {
    let specs: [Flags.Spec] = [.init("root-cert"), .init("replicas"), .init("store"), .init("image"), .init("app-namespace"), .init("gateway-service-account"),
                               .init("o"), .init("output"), .init("help", value: false)]
    let flags: Flags
    do { flags = try Flags(args, specs: specs) } catch { kubeFail("\(error)") }
    if flags.has("help") { kubeSay(1, kubeManifestsUsage); exit(0) }
    if let extra = flags.positional.first { kubeFail("kube-manifests: unexpected argument \"\(extra)\"") }
    guard let rootPath = flags.string("root-cert") else { kubeFail("kube-manifests: missing --root-cert FILE (the plug-in CA's root-cert.pem)") }
    let pem: String
    do { pem = try FileStore.read(rootPath) } catch { kubeFail("--root-cert \(rootPath): \(error)", code: 1) }
    var o = KubeManifests.Options(rootCertPEM: pem)
    do { o.replicas = try flags.int("replicas", min: 1, max: 9) ?? 1 } catch { kubeFail("\(error)") }
    o.store = flags.string("store")
    if let i = flags.string("image") { o.image = i }
    let ns = flags.all("app-namespace")
    if !ns.isEmpty { o.appNamespaces = ns }
    o.gatewayServiceAccounts = flags.all("gateway-service-account")
    let text: String
    do { text = try KubeManifests.render(o) } catch { kubeFail("\(error)") }
    writeOutput(text, to: flags.string("o") ?? flags.string("output"))
    exit(0)
}

/// `meshctl wait-ready [--admin-port 15000] [--timeout 120s]`: polls the local sidecar's (or
/// meshd's) GET /ready on 127.0.0.1 until 200; exit 0, or 1 at the timeout. The injected
/// sidecar's postStart hook, so the app starts after the sidecar is ready.
func runWaitReady(_ args: [String]) -> Never {
    let specs: [Flags.Spec] = [.init("admin-port"), .init("timeout"), .init("help", value: false)]
    let flags: Flags
    do { flags = try Flags(args, specs: specs) } catch { kubeFail("\(error)") }
    if flags.has("help") {
        kubeSay(1, "meshctl wait-ready [--admin-port 15000] [--timeout 120s]: wait until GET http://127.0.0.1:PORT/ready answers 200\n")
        exit(0)
    }
    if let extra = flags.positional.first { kubeFail("wait-ready: unexpected argument \"\(extra)\"") }
    let port: Int
    do { port = try flags.int("admin-port", min: 1, max: 65535) ?? 15000 } catch { kubeFail("\(error)") }
    var timeout: UInt64 = 120_000_000_000
    if let t = flags.string("timeout") {
        guard let n = DurationParser.parseNanos(t), n >= 1_000_000_000, n <= 3_600_000_000_000 else {
            kubeFail("--timeout: expected a duration from 1s to 1h, got \"\(t)\"")
        }
        timeout = n
    }
    let address = SocketAddress(host: "127.0.0.1", port: port)!
    let deadline = Clock.monotonicNanos() + timeout
    var last = "no answer"
    while true {
        do {
            let r = try ControlClient.request(address, context: nil, method: "GET", path: "/ready", timeoutSeconds: 1)
            if r.status == 200 { exit(0) }
            last = "\(r.status) \(r.body.split(separator: "\n").first ?? "")"
        } catch { last = "\(error)" }
        if Clock.monotonicNanos() >= deadline {
            kubeFail("wait-ready: 127.0.0.1:\(port)/ready not ready after \(timeout / 1_000_000_000)s (last: \(last))", code: 1)
        }
        usleep(200_000)
    }
}
