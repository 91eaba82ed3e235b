import XCTest
import MeshYAML
import MeshCapture
@testable import MeshKube

/// kube-inject's transform on small manifests: what is added, what is refused, and that the
/// init container's command line is exactly what `meshctl capture apply` accepts.
final class KubeInjectTests: XCTestCase {
    let pod = """
        apiVersion: v1
        kind: Pod
        metadata:
          name: web
          labels:
            app: web
        spec:
          containers:
          - name: web
            image: example/web:1
            ports:
            - containerPort: 8080

        """

    func inject(_ text: String, native: Bool = false) throws -> String {
        var o = KubeInjectOptions()
        o.nativeSidecar = native
        return try KubeInject.run(text, options: o, uninject: false).output
    }

    func container(_ out: String, _ list: String, _ name: String) throws -> YAMLNode? {
        let root = try YAML.parse(out).documents[0].root!
        return root["spec"]?[list]?.items?.first { $0["name"]?.scalar == name }
    }

    func testInitContainerArgsParseAsMeshctlCapture() throws {
        let text = pod.replacingOccurrences(of: "  labels:\n    app: web\n", with: """
              labels:
                app: web
              annotations:
                traffic.sidecar.istio.io/excludeOutboundPorts: "5432,6379"
                traffic.sidecar.istio.io/excludeInboundPorts: "9090"
                traffic.sidecar.istio.io/includeOutboundIPRanges: "10.0.0.0/8"

            """)
        let out = try inject(text)
        let initC = try XCTUnwrap(container(out, "initContainers", "mesh-init"))
        XCTAssertEqual(initC["command"]?.items?.compactMap(\.scalar), ["/usr/bin/meshctl"])
        let args = try XCTUnwrap(initC["args"]?.items?.compactMap(\.scalar))
        let (action, o) = try CaptureOptions.parse(args)
        XCTAssertEqual(action, .apply)
        XCTAssertEqual(o.proxyUID, 1337)
        XCTAssertEqual(o.proxyGID, 1337)
        XCTAssertEqual(o.excludeOutboundPorts, [5432, 6379])
        XCTAssertEqual(o.excludeInboundPorts, [15021, 9090])
        XCTAssertEqual(o.includeOutboundCIDRs, .networks([try CIDR(parsing: "10.0.0.0/8", flag: "x")]))
        let caps = initC["securityContext"]?["capabilities"]
        XCTAssertEqual(caps?["add"]?.items?.compactMap(\.scalar), ["NET_ADMIN", "NET_RAW"])
        XCTAssertEqual(caps?["drop"]?.items?.compactMap(\.scalar), ["ALL"])
        XCTAssertEqual(initC["securityContext"]?["runAsUser"]?.scalar, "0")
    }

    func testBadAnnotationsAreRefusedNamingDocumentLineAndField() {
        let cases: [(String, String)] = [
            ("traffic.sidecar.istio.io/excludeOutboundPorts: \"99999\"", "annotation traffic.sidecar.istio.io/excludeOutboundPorts"),
            ("traffic.sidecar.istio.io/includeOutboundIPRanges: \"10.0.0.0/33\"", "annotation traffic.sidecar.istio.io/includeOutboundIPRanges"),
            ("sidecar.istio.io/proxyImage: other", "annotation sidecar.istio.io/proxyImage is not supported"),
            ("sidecar.istio.io/inject: \"maybe\"", "sidecar.istio.io/inject: expected \"true\" or \"false\""),
            ("sidecar.istio.io/interceptionMode: TPROXY", "only REDIRECT"),
            ("proxy.istio.io/config: '{\"tracing\": {}}'", "field tracing is not supported"),
            ("sidecar.istio.io/proxyMemory: lots", "expected a Kubernetes quantity"),
            ("traffic.sidecar.istio.io/includeInboundPorts: \"\"", "an empty value (no capture) is not supported"),
        ]
        for (annotation, want) in cases {
            let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n" + pod.replacingOccurrences(
                of: "  labels:\n    app: web\n", with: "  labels:\n    app: web\n  annotations:\n    \(annotation)\n")
            let line = text.split(separator: "\n", omittingEmptySubsequences: false).firstIndex { $0.contains(annotation) }! + 1
            XCTAssertThrowsError(try inject(text), annotation) { e in
                let s = "\(e)"
                XCTAssertTrue(s.hasPrefix("document 2, line \(line): "), "\(annotation): \(s)")
                XCTAssertTrue(s.contains(want), "\(annotation): \(s)")
            }
        }
    }

    func testNotYAMLOrNotAnObjectIsRefusedNamingTheDocument() {
        XCTAssertThrowsError(try inject("a: 1\n---\nkey: [unclosed\n")) { e in
            XCTAssertTrue("\(e)".hasPrefix("document 2, line "), "\(e)")
            XCTAssertTrue("\(e)".contains("not valid YAML"), "\(e)")
        }
        let listLine = pod.split(separator: "\n", omittingEmptySubsequences: false).count + 1
        XCTAssertThrowsError(try inject(pod + "---\n- just\n- a list\n")) { e in
            XCTAssertEqual("\(e)", "document 2, line \(listLine): not a Kubernetes object (expected a mapping with apiVersion and kind)")
        }
        XCTAssertThrowsError(try inject("apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: x}\n")) { e in
            XCTAssertTrue("\(e)".contains("Deployment apiVersion extensions/v1beta1 is not one kube-inject knows (apps/v1)"), "\(e)")
        }
    }

    func testNamesTheInjectionAddsMustBeFree() {
        let text = pod.replacingOccurrences(of: "  - name: web\n", with: "  - name: mesh-proxy\n")
        XCTAssertThrowsError(try inject(text)) { e in
            XCTAssertTrue("\(e)".contains("spec.containers: mesh-proxy is a name kube-inject adds"), "\(e)")
        }
    }

    func testClassicPutsTheProxyFirstWithAHoldAndNativeInInitContainers() throws {
        let classic = try YAML.parse(try inject(pod)).documents[0].root!
        let names = classic["spec"]?["containers"]?.items?.compactMap { $0["name"]?.scalar }
        XCTAssertEqual(names, ["mesh-proxy", "web"])
        let proxy = classic["spec"]!["containers"]!.items![0]
        XCTAssertEqual(proxy["lifecycle"]?["postStart"]?["exec"]?["command"]?.items?.compactMap(\.scalar),
                       ["/usr/bin/meshctl", "wait-ready", "--admin-port", "15000", "--timeout", "120s"])
        XCTAssertNil(proxy["restartPolicy"])
        XCTAssertEqual(proxy["securityContext"]?["runAsUser"]?.scalar, "1337")
        XCTAssertEqual(proxy["securityContext"]?["readOnlyRootFilesystem"]?.scalar, "true")
        let native = try YAML.parse(try inject(pod, native: true)).documents[0].root!
        XCTAssertEqual(native["spec"]?["containers"]?.items?.compactMap { $0["name"]?.scalar }, ["web"])
        let inits = native["spec"]!["initContainers"]!.items!
        XCTAssertEqual(inits.compactMap { $0["name"]?.scalar }, ["mesh-init", "mesh-proxy"])
        XCTAssertEqual(inits[1]["restartPolicy"]?.scalar, "Always")
        XCTAssertNotNil(inits[1]["startupProbe"])
        XCTAssertNil(inits[1]["lifecycle"])
    }

    func testStatusPortIsNeverCapturedAndTheAppPortIsTheFirstTCPPort() throws {
        let out = try inject(pod)
        let proxy = try XCTUnwrap(container(out, "containers", "mesh-proxy"))
        let args = try XCTUnwrap(proxy["args"]?.items?.compactMap(\.scalar))
        func value(_ flag: String) -> String? { args.firstIndex(of: flag).map { args[$0 + 1] } }
        XCTAssertEqual(value("--app-port"), "8080")
        XCTAssertEqual(value("--app-protocol"), "http")
        XCTAssertEqual(value("--service"), "web")
        XCTAssertEqual(value("--status-port"), "15021")
        XCTAssertEqual(value("--meshd"), "$(MESHD_ADDRESS)")
        XCTAssertTrue(args.contains("--capture"))
    }

    func testProtocolSelectionFollowsIstio() {
        XCTAssertEqual(KubePodInjector.protocolOf(name: "grpc-web"), "grpc")
        XCTAssertEqual(KubePodInjector.protocolOf(name: "http2-agent"), "http2")
        XCTAssertEqual(KubePodInjector.protocolOf(name: "tcp-redis"), "tcp")
        XCTAssertEqual(KubePodInjector.protocolOf(name: "mysql"), "tcp")
        XCTAssertEqual(KubePodInjector.protocolOf(name: "http"), "http")
        XCTAssertEqual(KubePodInjector.protocolOf(name: nil), "http")
    }

    func testMeshdAddressCheck() {
        XCTAssertNoThrow(try KubeInjectOptions.checkMeshd("meshd.mesh-system.svc:15012,10.0.0.7:15012,[fd00::1]:15012"))
        for bad in ["meshd", "meshd:0", "mesh_d:15012", ":15012", "a..b:1", "meshd:15012,"] {
            XCTAssertThrowsError(try KubeInjectOptions.checkMeshd(bad), bad)
        }
    }

    func testManifestsRefuseReplicasWithoutEtcdAndBadNamespaces() {
        var o = KubeManifests.Options(rootCertPEM: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
        o.replicas = 3
        XCTAssertThrowsError(try KubeManifests.render(o)) { XCTAssertTrue("\($0)".hasPrefix("--replicas 3:"), "\($0)") }
        o.store = "etcd://etcd-0:2379,etcd-1"
        XCTAssertThrowsError(try KubeManifests.render(o)) { XCTAssertTrue("\($0)".hasPrefix("--store:"), "\($0)") }
        o.store = "etcd://etcd-0.etcd:2379,etcd-1.etcd:2379"
        o.appNamespaces = ["Shop"]
        XCTAssertThrowsError(try KubeManifests.render(o)) { XCTAssertTrue("\($0)".hasPrefix("--app-namespace:"), "\($0)") }
        o.appNamespaces = ["shop", "default"]
        XCTAssertNoThrow(try KubeManifests.render(o))
    }

    func testManifestsPassGatewayGrantsToMeshdAndRefuseMalformedOnes() throws {
        var o = KubeManifests.Options(rootCertPEM: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
        o.gatewayServiceAccounts = ["istio-ingress/ingressgateway", "bad"]
        XCTAssertThrowsError(try KubeManifests.render(o)) {
            XCTAssertTrue("\($0)".hasPrefix("--gateway-service-account \"bad\": expected NAMESPACE/SERVICE-ACCOUNT"), "\($0)")
        }
        func meshdArgs(_ text: String) throws -> [String] {
            let docs = try YAML.parse(text).documents.compactMap(\.root)
            let deploy = try XCTUnwrap(docs.first { $0["kind"]?.scalar == "Deployment" })
            let c = try XCTUnwrap(deploy["spec"]?["template"]?["spec"]?["containers"]?.items?.first)
            return c["args"]?.items?.compactMap(\.scalar) ?? []
        }
        // None by default: no grant in meshd's args.
        o.gatewayServiceAccounts = []
        XCTAssertFalse(try meshdArgs(try KubeManifests.render(o)).contains("--gateway-service-account"))
        o.gatewayServiceAccounts = ["istio-ingress/ingressgateway", "shop/gw,shop/gw2"]
        let args = try meshdArgs(try KubeManifests.render(o))
        let given = args.indices.filter { args[$0] == "--gateway-service-account" }.map { args[$0 + 1] }
        XCTAssertEqual(given, ["istio-ingress/ingressgateway", "shop/gw,shop/gw2"])
    }

    func testHoldOffPutsTheProxyLastWithoutAHookAndIsRefusedForNative() throws {
        let text = pod.replacingOccurrences(of: "  labels:\n    app: web\n", with: """
              labels:
                app: web
              annotations:
                proxy.istio.io/config: |
                  holdApplicationUntilProxyStarts: false

            """)
        let root = try YAML.parse(try inject(text)).documents[0].root!
        let list = root["spec"]!["containers"]!.items!
        XCTAssertEqual(list.compactMap { $0["name"]?.scalar }, ["web", "mesh-proxy"])
        XCTAssertNil(list[1]["lifecycle"])
        XCTAssertNil(root["metadata"]?["annotations"]?["kubectl.kubernetes.io/default-container"])
        XCTAssertThrowsError(try inject(text, native: true)) {
            XCTAssertTrue("\($0)".contains("holdApplicationUntilProxyStarts: false cannot apply to a native sidecar"), "\($0)")
        }
    }

    /// The test pod with `extra` lines added to its container (indented under `- name: web`).
    func podWith(container extra: String = "", spec specExtra: String = "", annotations: String = "", labels: String = "") -> String {
        var t = pod
        if !extra.isEmpty {
            t = t.replacingOccurrences(of: "    image: example/web:1\n", with: "    image: example/web:1\n" + extra)
        }
        if !specExtra.isEmpty { t = t.replacingOccurrences(of: "spec:\n", with: "spec:\n" + specExtra) }
        if !annotations.isEmpty {
            t = t.replacingOccurrences(of: "    app: web\n", with: "    app: web\n  annotations:\n" + annotations)
        }
        if !labels.isEmpty { t = t.replacingOccurrences(of: "    app: web\n", with: labels) }
        return t
    }

    func refused(_ text: String, _ want: String, line wantLine: String? = nil, file: StaticString = #filePath, lineNo: UInt = #line) {
        XCTAssertThrowsError(try inject(text), file: file, line: lineNo) { e in
            XCTAssertTrue("\(e)".contains(want), "\(e)", file: file, line: lineNo)
            if let l = wantLine {
                let n = text.split(separator: "\n", omittingEmptySubsequences: false).firstIndex { $0.contains(l) }! + 1
                XCTAssertTrue("\(e)".hasPrefix("document 1, line \(n):"), "\(e)", file: file, line: lineNo)
            }
        }
    }

    func testProbesThatCannotPassThroughTheSidecarAreRefused() throws {
        refused(podWith(container: "    readinessProbe:\n      grpc:\n        port: 8080\n"),
                "a grpc probe on captured port 8080 would meet the sidecar's mutual TLS", line: "      grpc:")
        refused(podWith(container: "    livenessProbe:\n      httpGet:\n        port: 8080\n        httpHeaders:\n        - {name: X, value: y}\n"),
                "livenessProbe.httpGet: a probe with host, httpHeaders or scheme HTTPS on captured port 8080", line: "      httpGet:")
        refused(podWith(container: "    readinessProbe:\n      httpGet: {port: 8080, scheme: HTTPS}\n"), "scheme HTTPS on captured port 8080")
        refused(podWith(container: "    readinessProbe:\n      httpGet:\n        port: 8080\n        path: *p\n    env:\n    - {name: P, value: &p /x}\n"
                        .replacingOccurrences(of: "    readinessProbe", with: "    env:\n    - {name: P, value: &p /x}\n    readinessProbe")
                        .replacingOccurrences(of: "    env:\n    - {name: P, value: &p /x}\n\n", with: "")),
                "readinessProbe.httpGet.path is an alias (*p)")
        refused(podWith(container: "    readinessProbe:\n      httpGet:\n        port: nope\n"), "\"nope\" is not a port number or a port name")
        // Not captured (excluded) or rewriting off: left alone.
        let excluded = try inject(podWith(container: "    readinessProbe:\n      grpc:\n        port: 8080\n",
                                          annotations: "    traffic.sidecar.istio.io/excludeInboundPorts: \"8080\"\n"))
        XCTAssertTrue(excluded.contains("grpc:\n        port: 8080"))
        let off = try inject(podWith(container: "    readinessProbe:\n      httpGet: {port: 8080, scheme: HTTPS}\n",
                                     annotations: "    sidecar.istio.io/rewriteAppHTTPProbers: \"false\"\n"))
        XCTAssertTrue(off.contains("httpGet: {port: 8080, scheme: HTTPS}"))
    }

    func testHostNetworkAsKubernetesReadsIt() throws {
        for yes in ["yes", "True", "on", "true"] {
            XCTAssertEqual(try inject(podWith(spec: "  hostNetwork: \(yes)\n")), podWith(spec: "  hostNetwork: \(yes)\n"), yes)
        }
        XCTAssertNotEqual(try inject(podWith(spec: "  hostNetwork: no\n")), podWith(spec: "  hostNetwork: no\n"))
        refused(podWith(spec: "  hostNetwork: \"true\"\n"), "spec.hostNetwork: expected true or false", line: "hostNetwork")
    }

    func testNamesTheSidecarWouldRefuseAreRefusedHere() {
        refused(podWith(labels: "    app: Reviews\n"), "metadata.labels.app: \"Reviews\" cannot be the mesh service name", line: "app: Reviews")
        refused(podWith(spec: "  serviceAccountName: team.reviews\n"), "spec.serviceAccountName: \"team.reviews\" cannot be a mesh identity",
                line: "serviceAccountName")
        refused(podWith(labels: "    tier: web\n").replacingOccurrences(of: "  name: web\n", with: "  name: web.v2\n"),
                "metadata.name \"web.v2\" cannot be the mesh service name")
    }

    func testAResourceRequestAboveItsLimitIsRefused() {
        refused(podWith(annotations: "    sidecar.istio.io/proxyMemory: 1Gi\n"), "memory request 1Gi is above its limit 512Mi")
        refused(podWith(annotations: "    sidecar.istio.io/proxyCPULimit: 10m\n"), "cpu request 50m is above its limit 10m")
        XCTAssertNoThrow(try inject(podWith(annotations: "    sidecar.istio.io/proxyMemory: 1Gi\n    sidecar.istio.io/proxyMemoryLimit: 2Gi\n")))
    }
}
