// Writes the seeds that only the real code can make: join tokens signed with the fuzz key, and a
// config exactly as meshd pushes it (ConfigStore rendering a ProxyConfig plus the Istio documents,
// after `apply` and registrations, as in tests/e2e/test_config_push.py). Run by
// `scripts/fuzz.sh --seeds`; the output is committed under fuzz/corpus. No key is written: the
// token key is a fixed test constant, and the temporary meshd state directory is removed.
import MeshConfig
import MeshControl
import MeshCA
import MeshPKI
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// Generates the seed files into the corpus directory given as the first argument.
@main
struct GenSeeds {
    /// The key FuzzJoinToken verifies with (keep the two in step).
    static let fuzzKey = Array("fuzz-token-key-0123456789abcdef!".utf8)

    static func write(_ path: String, _ bytes: [UInt8]) {
        guard let f = fopen(path, "wb") else { fatalError("cannot write \(path)") }
        _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
        fclose(f)
        print("wrote \(path) (\(bytes.count) bytes)")
    }

    static func main() throws {
        Log.minimum = .error
        let corpus = CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "fuzz/corpus"

        // Join tokens: mode byte 0 (verify this text) or 1 (mint these fields, then verify).
        let valid = JoinToken(namespace: "default", serviceAccount: "reviews", expires: 4_102_444_800, id: "0123456789abcdef")
        let expired = JoinToken(namespace: "shop", serviceAccount: "cart", expires: 1_700_000_000, id: "feedfacecafebeef")
        let tokens: [(String, String)] = [
            ("valid", valid.encode(key: fuzzKey)),
            ("expired", expired.encode(key: fuzzKey)),
            ("other-key", valid.encode(key: Array("not-the-fuzz-key".utf8))),
        ]
        for (name, t) in tokens { write("\(corpus)/FuzzJoinToken/\(name)", [0] + Array(t.utf8)) }
        write("\(corpus)/FuzzJoinToken/mint-fields", [1] + Array("default".utf8) + [0] + Array("reviews".utf8) + [0] + Array("c0ffee".utf8))
        write("\(corpus)/FuzzJoinToken/mint-injection", [1] + Array("default".utf8) + [0] + Array("web&ns=kube-system".utf8) + [0] + Array("x&sa=admin".utf8))

        // A pushed config: two versions of reviews, a caller, a canary split, a ServiceEntry.
        var template = Array("/tmp/genseeds-meshd.XXXXXX".utf8CString)
        guard let p = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else { fatalError("mkdtemp") }
        let dir = String(cString: p)
        defer {
            for f in ["applied.yaml", "sources.txt", "registry.txt"] { unlink("\(dir)/\(f)") }
            rmdir(dir)
        }
        let store = try ConfigStore(stateDir: dir)
        _ = try store.apply([ConfigStore.Input(file: "seed.yaml", text: """
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: reviews}
            spec:
              hosts: [reviews]
              http:
              - name: canary
                match:
                - headers: {x-canary: {exact: "yes"}}
                route:
                - destination: {host: reviews, subset: v2}
              - name: split
                retries: {attempts: 3, perTryTimeout: 2s, retryOn: "5xx,connect-failure"}
                timeout: 10s
                route:
                - destination: {host: reviews, subset: v1}
                  weight: 90
                - destination: {host: reviews, subset: v2}
                  weight: 10
            ---
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {name: reviews}
            spec:
              host: reviews
              trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
              subsets:
              - {name: v1, labels: {version: v1}}
              - {name: v2, labels: {version: v2}}
            ---
            apiVersion: networking.istio.io/v1
            kind: ServiceEntry
            metadata: {name: payments}
            spec:
              hosts: [payments.example.com]
              ports: [{number: 8443, name: http, protocol: HTTP}]
              resolution: STATIC
              endpoints: [{address: 127.0.0.1}]
            ---
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: reviews-callers}
            spec:
              selector: {matchLabels: {app: reviews}}
              action: ALLOW
              rules:
              - from: [{source: {principals: ["cluster.local/ns/default/sa/productpage"]}}]
            """)])
        try store.register(identity: "spiffe://cluster.local/ns/default/sa/reviews", service: "reviews", namespace: "default",
                       labels: [("app", "reviews"), ("version", "v1")], address: "127.0.0.1:16001")
        try store.register(identity: "spiffe://cluster.local/ns/default/sa/reviews", service: "reviews", namespace: "default",
                       labels: [("app", "reviews"), ("version", "v2")], address: "127.0.0.1:16002")
        try store.register(identity: "spiffe://cluster.local/ns/default/sa/productpage", service: "productpage", namespace: "default",
                       labels: [("app", "productpage")], address: "127.0.0.1:16003")
        let pushed = store.proxyConfig()
        write("\(corpus)/FuzzConfig/pushed-meshd.yaml", Array(pushed.text.utf8))
        // The seed must be one a sidecar accepts (FuzzConfig applies it over this bootstrap).
        var o = MeshModeOptions(service: "reviews")
        o.labels = [("version", "v2")]
        o.appPort = 9080
        let tls = Bootstrap.TLSFiles(certChain: "(fuzz)", privateKey: "(fuzz)", trustBundle: "(fuzz)",
                                     trustDomain: "cluster.local", minTLS13: false)
        let applied = try Bootstrap.meshMode(o, tls: tls).withPushedConfig(pushed.text, source: "meshd")
        print("pushed config accepted by a mesh-mode sidecar: \(applied.clusters.count) clusters, \(applied.routes.count) routes")
        let empty = try ConfigStore(stateDir: dir + "-empty")
        write("\(corpus)/FuzzConfig/pushed-empty.yaml", Array(empty.proxyConfig().text.utf8))
        rmdir(dir + "-empty")
    }
}
