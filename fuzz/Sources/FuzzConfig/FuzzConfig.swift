// Fuzz target: MeshConfig, the YAML subset reader and the models built on it, through the entry
// points that take untrusted or operator-written text:
//   - `Bootstrap.parse`: `sidecar --config FILE.yaml` (static mode: a Bootstrap document plus the
//     Istio documents beside it: VirtualService, DestinationRule, AuthorizationPolicy,
//     PeerAuthentication, ServiceEntry, WorkloadEntry);
//   - `IstioTraffic.parse`: what meshd validates on `meshctl apply` before storing a set;
//   - `Bootstrap.withPushedConfig`: the config meshd pushes to a mesh-mode sidecar (the body of
//     `GET /v1/config` after its `version: V NONCE` line: a ProxyConfig document followed by the
//     Istio documents in force), applied over a mesh-mode bootstrap exactly as the sidecar does.
// The input is the text itself (invalid UTF-8 is repaired the way `String(decoding:)` does, as
// the readers of files and HTTP bodies do). Every refusal must be a thrown ConfigError; an
// accepted config is checked for a few cheap invariants.
import CFuzzDriver
import MeshConfig
import MeshCore

/// Stops the process the way libFuzzer notices (a crash), naming the broken invariant.
func check(_ ok: @autoclosure () -> Bool, _ what: String) {
    if !ok() { fatalError("FuzzConfig invariant: \(what)") }
}

/// The bootstrap a mesh-mode sidecar builds from its flags, onto which pushed config is applied.
let meshBootstrap: Bootstrap = {
    var o = MeshModeOptions(service: "reviews")
    o.labels = [("version", "v2")]
    o.appPort = 9080
    let tls = Bootstrap.TLSFiles(certChain: "(fuzz)", privateKey: "(fuzz)", trustBundle: "(fuzz)",
                                 trustDomain: "cluster.local", minTLS13: false)
    do { return try Bootstrap.meshMode(o, tls: tls) } catch { fatalError("mesh-mode bootstrap: \(error)") }
}()

/// Checks what every accepted traffic set must satisfy.
func checkTraffic(_ t: IstioTraffic.Config) {
    for vs in t.virtualServices {
        check(!vs.hosts.isEmpty, "a VirtualService without hosts was accepted")
        for r in vs.http {
            check(!r.route.isEmpty, "an http route without destinations was accepted")
            check(r.route.reduce(0) { $0 + $1.weight } == 100, "route weights that do not sum to 100 were accepted")
        }
    }
}

@_cdecl("LLVMFuzzerInitialize")
public func fuzzConfigInit(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> Int32 {
    Log.minimum = .error
    _ = meshBootstrap
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfig(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    if let b = try? Bootstrap.parse(text, file: "fuzz.yaml") {
        checkTraffic(b.traffic)
        for r in b.routes { check(b.clusters.contains { $0.name == r.cluster } || r.cluster.isEmpty, "a route names an unknown cluster") }
    }
    if let t = try? IstioTraffic.parse(text, file: "apply.yaml") { checkTraffic(t) }
    if let b = try? meshBootstrap.withPushedConfig(text, source: "meshd") {
        checkTraffic(b.traffic)
        check(b.workload.service == "reviews" && b.inbound != nil, "a push changed the sidecar's own identity or listeners")
    }
    return 0
}

/// The process entry: SwiftPM links `main` as `FuzzConfig_main`; libFuzzer's driver takes over.
@_cdecl("FuzzConfig_main")
public func fuzzerMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> Int32 {
    mesh_fuzz_main(argc, argv)
}
