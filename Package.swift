// swift-tools-version:6.0
// The service mesh: a sidecar proxy on epoll + OpenSSL 3 + nghttp2, in layers (DESIGN §7):
// C modules -> MeshCore -> MeshIO -> MeshTLS -> MeshHTTP -> MeshConfig/MeshStats -> MeshProxy/MeshControl -> executables.
import PackageDescription

/// The data-path modules ship at `-O` with Swift's bounds and overflow checks ON (the parsers of
/// untrusted input trap instead of reading past a buffer). Only run-time exclusivity enforcement
/// is off there: on the request path it was a third of the sidecar's instructions (callgrind,
/// swift_beginAccess on class fields such as ByteBuffer's indices), and this single-threaded
/// event-loop code never holds an access to a field across a call that could reach it again.
/// Measured against the former `-Ounchecked` build (bench/RESULTS-checks.md): +1.3% instructions
/// per request in callgrind, CPU per request within the run-to-run spread. The few checks that
/// showed in the profile are removed locally, each with a comment (`&+` where overflow cannot
/// happen, raw pointers where the bound was just checked). MeshConfig, MeshControl and the
/// control path keep every check (exclusivity included).
let hot: [SwiftSetting] = [
    .unsafeFlags(["-wmo", "-enforce-exclusivity=unchecked"], .when(configuration: .release)),
]

let package = Package(
    name: "swift-mesh",
    products: [
        .executable(name: "sidecar", targets: ["sidecar"]),
        .executable(name: "meshd", targets: ["meshd"]),
        .executable(name: "meshctl", targets: ["meshctl"]),
        // bench/push.sh's simulated sidecars (bench code, not shipped).
        .executable(name: "push-load", targets: ["push-load"]),
        // Libraries for the fuzz package (fuzz/Package.swift); nothing here builds them by default.
        .library(name: "MeshCore", targets: ["MeshCore"]),
        .library(name: "MeshHTTP", targets: ["MeshHTTP"]),
        .library(name: "MeshConfig", targets: ["MeshConfig"]),
        .library(name: "MeshPKI", targets: ["MeshPKI"]),
        .library(name: "MeshCA", targets: ["MeshCA"]),
        .library(name: "MeshControl", targets: ["MeshControl"]),
        .library(name: "MeshDNS", targets: ["MeshDNS"]),
    ],
    targets: [
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl",
                       providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CNghttp2", pkgConfig: "libnghttp2",
                       providers: [.apt(["libnghttp2-dev"])]),
        .systemLibrary(name: "CYAML", pkgConfig: "yaml-0.1",
                       providers: [.apt(["libyaml-dev"])]),
        .target(name: "CMeshShims", dependencies: ["COpenSSL"]),
        .target(name: "MeshCore", dependencies: ["CMeshShims"], swiftSettings: hot),
        .target(name: "MeshIO", dependencies: ["MeshCore", "CMeshShims"], swiftSettings: hot),
        .target(name: "MeshTLS", dependencies: ["MeshIO", "MeshCore", "CMeshShims", "COpenSSL"], swiftSettings: hot),
        .target(name: "MeshHTTP", dependencies: ["MeshCore", "CNghttp2"], swiftSettings: hot),
        .target(name: "MeshConfig", dependencies: ["MeshCore", "COpenSSL"]),
        // The DNS message codec (hostile input, pure; the server on MeshIO is in MeshProxy/DNS).
        .target(name: "MeshDNS", dependencies: ["MeshCore"], swiftSettings: hot),
        .target(name: "MeshStats", dependencies: [], swiftSettings: hot),
        // The control path, in four modules: certificates and their files (MeshPKI), the wire
        // between sidecars, meshctl and meshd (MeshControlWire), the certificate authority
        // (MeshCA), meshd's config store and servers (MeshControl), and the sidecar's agent
        // (MeshAgent: its identity from meshd). The sidecar links MeshAgent, never MeshCA or MeshControl.
        .target(name: "MeshPKI", dependencies: ["MeshCore", "MeshTLS", "CMeshShims", "COpenSSL"]),
        .target(name: "MeshControlWire", dependencies: ["MeshCore", "MeshConfig", "MeshIO", "MeshTLS", "MeshHTTP", "MeshPKI", "CMeshShims", "COpenSSL"]),
        .target(name: "MeshCA", dependencies: ["MeshCore", "MeshIO", "MeshTLS", "MeshPKI", "CMeshShims", "COpenSSL"]),
        .target(name: "MeshControl",
                dependencies: ["MeshCore", "MeshIO", "MeshTLS", "MeshHTTP", "MeshConfig", "MeshPKI", "MeshCA", "MeshControlWire", "MeshEtcd", "CMeshShims", "COpenSSL"]),
        .target(name: "MeshAgent", dependencies: ["MeshCore", "MeshIO", "MeshTLS", "MeshPKI", "MeshControlWire", "MeshConfig", "COpenSSL"]),
        .target(name: "MeshProxy",
                dependencies: ["MeshCore", "MeshIO", "MeshTLS", "MeshHTTP", "MeshConfig", "MeshStats", "MeshDNS"],
                swiftSettings: hot),
        .executableTarget(name: "sidecar", dependencies: ["MeshProxy", "MeshConfig", "MeshCore", "MeshAgent", "MeshControlWire", "MeshPKI", "MeshTLS", "MeshIO"], swiftSettings: hot),
        .executableTarget(name: "meshd", dependencies: ["MeshConfig", "MeshControl", "MeshCA", "MeshPKI", "MeshCore", "MeshIO", "MeshEtcd"]),
        // Transparent capture: the iptables rules (pure model and rendering) and their applier.
        .target(name: "MeshCapture", dependencies: ["MeshCore"]),
        // etcd v3 through its JSON gateway (blocking HTTP/1.1), and leader election on a lease.
        .target(name: "MeshEtcd", dependencies: ["MeshCore", "MeshIO"]),
        // YAML 1.1 streams on libyaml: documents with styles, tags, anchors and byte-exact segments (kube-inject).
        .target(name: "MeshYAML", dependencies: ["CYAML"]),
        // meshctl kube-inject and kube-manifests (DESIGN §11): Kubernetes manifests through MeshYAML.
        .target(name: "MeshKube", dependencies: ["MeshYAML", "MeshCore", "MeshCapture", "MeshAgent", "MeshConfig"]),
        .executableTarget(name: "meshctl", dependencies: ["MeshControlWire", "MeshControl", "MeshConfig", "MeshEtcd", "MeshPKI", "MeshCore", "MeshIO", "MeshCapture", "MeshKube"]),
        // Simulated sidecars for bench/push.sh: config streams on MeshIO event loops.
        .executableTarget(name: "push-load", dependencies: ["MeshAgent", "MeshControlWire", "MeshPKI", "MeshTLS", "MeshHTTP", "MeshIO", "MeshCore"],
                          path: "bench/push-load"),
        .testTarget(name: "MeshKubeTests", dependencies: ["MeshKube", "MeshYAML", "MeshCapture", "MeshAgent", "MeshConfig", "MeshCore"]),
        .testTarget(name: "MeshCoreTests", dependencies: ["MeshCore", "MeshIO"]),
        .testTarget(name: "MeshIOTests", dependencies: ["MeshIO", "MeshCore"]),
        .testTarget(name: "MeshHTTPTests", dependencies: ["MeshHTTP", "MeshCore", "CNghttp2"]),
        .testTarget(name: "MeshConfigTests", dependencies: ["MeshConfig", "MeshCore"]),
        .testTarget(name: "MeshDNSTests", dependencies: ["MeshDNS", "MeshProxy", "MeshConfig", "MeshIO", "MeshCore"]),
        .testTarget(name: "MeshStatsTests", dependencies: ["MeshStats"]),
        .testTarget(name: "MeshTLSTests", dependencies: ["MeshTLS", "MeshIO", "MeshCore"]),
        .testTarget(name: "MeshControlTests", dependencies: ["MeshControl", "MeshEtcd", "MeshCA", "MeshPKI", "MeshControlWire", "MeshAgent", "MeshConfig", "MeshCore", "MeshTLS", "MeshIO"]),
        .testTarget(name: "MeshAgentTests", dependencies: ["MeshAgent", "MeshConfig", "MeshCore"]),
        .testTarget(name: "MeshCaptureTests", dependencies: ["MeshCapture", "MeshCore"]),
        .testTarget(name: "MeshEtcdTests", dependencies: ["MeshEtcd", "MeshCore", "MeshIO"]),
        .testTarget(name: "MeshYAMLTests", dependencies: ["MeshYAML"]),
        .testTarget(name: "MeshProxyTests", dependencies: ["MeshProxy", "MeshCore", "MeshConfig", "MeshHTTP", "MeshIO"]),
    ]
)
