/// What `meshctl kube-inject` adds and how: the mode, meshd's address, the image, and the fixed
/// names, ports and paths the injected containers share (one place, so the init container's
/// capture flags and the sidecar's command line cannot disagree).
public struct KubeInjectOptions: Sendable, Equatable {
    /// Kubernetes 1.29+ native sidecar (an init container with `restartPolicy: Always`).
    public var nativeSidecar = false
    /// meshd's API address(es) for the sidecar's `--meshd`; nil: from the `mesh-sidecar` ConfigMap.
    public var meshd: String? = nil
    /// The image holding /usr/bin/sidecar and /usr/bin/meshctl (and iptables).
    public var image = KubeInjectOptions.defaultImage

    public init() {}

    public static let defaultImage = "swift-mesh:0.18.0"

    // Names of what is added (a pod already holding one of them, without our status, is refused).
    public static let initName = "mesh-init"
    public static let proxyName = "mesh-proxy"
    public static let tokenVolume = "mesh-token"
    public static let configVolume = "mesh-sidecar"
    public static let podinfoVolume = "mesh-podinfo"
    public static let initRunVolume = "mesh-init-run"

    /// The ConfigMap every meshed namespace holds (written by `meshctl kube-manifests`): keys
    /// `root-cert.pem` (meshd's trust anchor) and `meshd` (its API address, HOST:PORT).
    public static let configMapName = "mesh-sidecar"
    public static let tokenAudience = "mesh"
    public static let tokenSeconds = 43200

    // Paths inside the sidecar container.
    public static let tokenDir = "/var/run/secrets/mesh"
    public static let tokenPath = "/var/run/secrets/mesh/token"
    public static let configDir = "/var/run/mesh/config"
    public static let rootCertPath = "/var/run/mesh/config/root-cert.pem"
    public static let podinfoDir = "/var/run/mesh/podinfo"
    public static let labelsPath = "/var/run/mesh/podinfo/labels"
    public static let sidecarBinary = "/usr/bin/sidecar"
    public static let meshctlBinary = "/usr/bin/meshctl"

    // The proxy's uid/gid and ports (meshctl capture's and the sidecar's defaults).
    public static let proxyUID = 1337
    public static let statusPort = 15021
    public static let adminPort = 15000
    /// Workers per sidecar unless `proxy.istio.io/config` says `concurrency` (Istio's default is 2
    /// too: a pod's sidecar should not start one worker per core of a large node).
    public static let defaultConcurrency = 2
}

extension KubeInjectOptions {
    /// `HOST:PORT[,HOST:PORT...]` as the sidecar's `--meshd` takes it (a DNS name, an IPv4
    /// address or `[IPv6]`); the error says which part is wrong.
    public static func checkMeshd(_ text: String) throws(KubeError) {
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            guard let colon = part.lastIndex(of: ":"), let port = Int(part[part.index(after: colon)...]), port >= 1, port <= 65535 else {
                throw KubeError(document: 0, line: 0, "expected HOST:PORT[,HOST:PORT...], got \"\(part)\" in \"\(text)\"")
            }
            let host = part[..<colon]
            let ok: Bool
            if host.hasPrefix("[") && host.hasSuffix("]") {
                ok = host.count > 2 && host.dropFirst().dropLast().allSatisfy { $0.isHexDigit || $0 == ":" || $0 == "." }
            } else {
                ok = !host.isEmpty && host.count <= 253 && host.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
                    !label.isEmpty && label.count <= 63 && label.first != "-" && label.last != "-"
                        && label.allSatisfy { ($0.isASCII && ($0.isLetter || $0.isNumber)) || $0 == "-" }
                }
            }
            if !ok { throw KubeError(document: 0, line: 0, "\"\(host)\" is not a host name or IP address (in \"\(text)\")") }
        }
    }
}
