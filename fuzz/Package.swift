// swift-tools-version:6.0
// libFuzzer targets for the mesh's parsers (issue 9, hardening). A package of its own, so that the
// root package's normal build and CI never compile these; it depends on the root by path and
// uses its library products. Build and run with `scripts/fuzz.sh` (see fuzz/README.md): each
// target is an executable whose `main` comes from libFuzzer (`-sanitize=fuzzer`), so the Swift
// sources are compiled with `-parse-as-library` and define `LLVMFuzzerTestOneInput`.
import PackageDescription
import Foundation

/// The root package's identity is the name of its directory (a path dependency).
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent

/// One fuzz target per parser entry point, each depending on the real modules it exercises.
func fuzzer(_ name: String, _ products: [String]) -> Target {
    .executableTarget(name: name, dependencies: ["CFuzzDriver"] + products.map { .product(name: $0, package: root) },
                      path: "Sources/\(name)")
}

let package = Package(
    name: "mesh-fuzz",
    dependencies: [.package(path: "..")],
    targets: [
        .target(name: "CFuzzDriver", path: "Sources/CFuzzDriver"),
        fuzzer("FuzzHTTP1", ["MeshHTTP", "MeshCore"]),
        fuzzer("FuzzHTTP2", ["MeshHTTP", "MeshCore"]),
        fuzzer("FuzzExchangeHead", ["MeshHTTP", "MeshCore"]),
        fuzzer("FuzzConfig", ["MeshConfig", "MeshCore"]),
        fuzzer("FuzzJoinToken", ["MeshCA", "MeshPKI", "MeshCore"]),
        fuzzer("FuzzCSR", ["MeshCA", "MeshPKI", "MeshCore"]),
        fuzzer("FuzzDNS", ["MeshDNS"]),
        // Writes the generated seeds (tokens, a pushed config) into fuzz/corpus; built without
        // sanitizers by `scripts/fuzz.sh --seeds`, never part of a fuzz run.
        .executableTarget(name: "GenSeeds", dependencies: [.product(name: "MeshControl", package: root),
                                                           .product(name: "MeshCA", package: root),
                                                           .product(name: "MeshPKI", package: root),
                                                           .product(name: "MeshConfig", package: root),
                                                           .product(name: "MeshCore", package: root)],
                          path: "Sources/GenSeeds"),
    ]
)
