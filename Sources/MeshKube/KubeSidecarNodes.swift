import MeshYAML

/// The YAML of what is injected: the capture init container, the sidecar container (classic or
/// native), and the volumes they mount. Command lines are built here from the same constants
/// the sidecar and `meshctl capture` use by default.
enum KubeSidecarNodes {
    typealias O = KubeInjectOptions

    /// The words after `meshctl` in the init container (`capture apply` and the pod's flags).
    static func initArgs(_ s: KubePodSettings) -> [String] {
        ["capture", "apply", "--proxy-uid", "\(O.proxyUID)", "--proxy-gid", "\(O.proxyUID)"] + s.captureFlags
    }

    /// The app the sidecar fronts, read from the pod's containers.
    struct App {
        var service: String
        var port: Int?
        var proto: String
        /// `--app-probe` values: `/app-health/C/KIND=PORT/PATH`.
        var probes: [String] = []
    }

    /// The words after `sidecar` (Kubernetes expands each `$(VAR)` from the container's env).
    static func sidecarArgs(_ app: App, _ s: KubePodSettings, _ o: KubeInjectOptions) -> [String] {
        var a = ["--meshd", o.meshd ?? "$(MESHD_ADDRESS)", "--root-cert", O.rootCertPath, "--token-file", O.tokenPath,
                 "--service", app.service, "--namespace", "$(POD_NAMESPACE)", "--service-account", "$(SERVICE_ACCOUNT)",
                 "--labels-file", O.labelsPath, "--advertise-address", "$(INSTANCE_IP)", "--listen-address", "0.0.0.0",
                 "--capture", "--status-port", "\(O.statusPort)", "--concurrency", "\(s.concurrency)"]
        if let p = app.port { a += ["--app-port", "\(p)", "--app-protocol", app.proto] }
        for p in app.probes { a += ["--app-probe", p] }
        return a
    }

    static func strings(_ list: [String]) -> YAMLNode { .sequence(list.map { YAMLNode.string($0) }) }

    static func resources(cpu: String, memory: String, cpuLimit: String?, memoryLimit: String?) -> YAMLNode {
        var limits: [(String, YAMLNode)] = []
        if let c = cpuLimit { limits.append(("cpu", .string(c))) }
        if let m = memoryLimit { limits.append(("memory", .string(m))) }
        var pairs: [(String, YAMLNode)] = []
        if !limits.isEmpty { pairs.append(("limits", .mapping(limits))) }
        pairs.append(("requests", .mapping([("cpu", .string(cpu)), ("memory", .string(memory))])))
        return .mapping(pairs)
    }

    static func initContainer(_ s: KubePodSettings, _ o: KubeInjectOptions) -> YAMLNode {
        .mapping([
            ("name", .string(O.initName)),
            ("image", .string(o.image)),
            ("command", strings([O.meshctlBinary])),
            ("args", strings(initArgs(s))),
            ("resources", resources(cpu: "10m", memory: "16Mi", cpuLimit: nil, memoryLimit: "64Mi")),
            ("securityContext", .mapping([
                ("allowPrivilegeEscalation", .bool(false)),
                ("capabilities", .mapping([("add", strings(["NET_ADMIN", "NET_RAW"])), ("drop", strings(["ALL"]))])),
                ("privileged", .bool(false)),
                ("readOnlyRootFilesystem", .bool(true)),
                ("runAsGroup", .int(0)),
                ("runAsNonRoot", .bool(false)),
                ("runAsUser", .int(0)),
            ])),
            ("volumeMounts", .sequence([mount(O.initRunVolume, "/run", readOnly: false)])),
        ])
    }

    static func mount(_ name: String, _ path: String, readOnly: Bool) -> YAMLNode {
        var pairs: [(String, YAMLNode)] = [("name", .string(name)), ("mountPath", .string(path))]
        if readOnly { pairs.append(("readOnly", .bool(true))) }
        return .mapping(pairs)
    }

    static func fieldEnv(_ name: String, _ path: String) -> YAMLNode {
        .mapping([("name", .string(name)), ("valueFrom", .mapping([("fieldRef", .mapping([("fieldPath", .string(path))]))]))])
    }

    static func readyProbe(period: Int, failures: Int) -> YAMLNode {
        .mapping([
            ("httpGet", .mapping([("path", .string("/ready")), ("port", .int(O.statusPort))])),
            ("periodSeconds", .int(period)),
            ("timeoutSeconds", .int(3)),
            ("failureThreshold", .int(failures)),
        ])
    }

    /// The sidecar container; `native` adds `restartPolicy: Always` (it goes in initContainers),
    /// `hold` the postStart hook that keeps the app from starting before the sidecar is ready.
    static func proxyContainer(_ app: App, _ s: KubePodSettings, _ o: KubeInjectOptions, native: Bool, hold: Bool) -> YAMLNode {
        var env: [YAMLNode] = [
            fieldEnv("POD_NAMESPACE", "metadata.namespace"),
            fieldEnv("SERVICE_ACCOUNT", "spec.serviceAccountName"),
            fieldEnv("INSTANCE_IP", "status.podIP"),
        ]
        if o.meshd == nil {
            env.append(.mapping([("name", .string("MESHD_ADDRESS")), ("valueFrom", .mapping([("configMapKeyRef", .mapping([
                ("name", .string(O.configMapName)), ("key", .string("meshd")),
            ]))]))]))
        }
        var pairs: [(String, YAMLNode)] = [
            ("name", .string(O.proxyName)),
            ("image", .string(o.image)),
            ("command", strings([O.sidecarBinary])),
            ("args", strings(sidecarArgs(app, s, o))),
            ("env", .sequence(env)),
            ("ports", .sequence([.mapping([("name", .string("mesh-status")), ("containerPort", .int(O.statusPort)), ("protocol", .string("TCP"))])])),
        ]
        if native { pairs.append(("restartPolicy", .string("Always"))) }
        if hold && !native {
            pairs.append(("lifecycle", .mapping([("postStart", .mapping([("exec", .mapping([
                ("command", strings([O.meshctlBinary, "wait-ready", "--admin-port", "\(O.adminPort)", "--timeout", "120s"])),
            ]))]))])))
        }
        pairs += [
            ("startupProbe", readyProbe(period: 1, failures: 600)),
            ("readinessProbe", readyProbe(period: 2, failures: 30)),
            ("resources", resources(cpu: s.cpuRequest, memory: s.memoryRequest, cpuLimit: s.cpuLimit, memoryLimit: s.memoryLimit)),
            ("securityContext", .mapping([
                ("allowPrivilegeEscalation", .bool(false)),
                ("capabilities", .mapping([("drop", strings(["ALL"]))])),
                ("privileged", .bool(false)),
                ("readOnlyRootFilesystem", .bool(true)),
                ("runAsGroup", .int(O.proxyUID)),
                ("runAsNonRoot", .bool(true)),
                ("runAsUser", .int(O.proxyUID)),
            ])),
            ("volumeMounts", .sequence([
                mount(O.tokenVolume, O.tokenDir, readOnly: true),
                mount(O.configVolume, O.configDir, readOnly: true),
                mount(O.podinfoVolume, O.podinfoDir, readOnly: true),
            ])),
        ]
        return .mapping(pairs)
    }

    /// The volumes, in the order they are added (names as in KubeInjectOptions).
    static func volumes() -> [(String, YAMLNode)] {
        [
            (O.tokenVolume, .mapping([("name", .string(O.tokenVolume)), ("projected", .mapping([("sources", .sequence([
                .mapping([("serviceAccountToken", .mapping([
                    ("audience", .string(O.tokenAudience)), ("expirationSeconds", .int(O.tokenSeconds)), ("path", .string("token")),
                ]))]),
            ]))]))])),
            (O.configVolume, .mapping([("name", .string(O.configVolume)), ("configMap", .mapping([
                ("name", .string(O.configMapName)),
                ("items", .sequence([.mapping([("key", .string("root-cert.pem")), ("path", .string("root-cert.pem"))])])),
            ]))])),
            (O.podinfoVolume, .mapping([("name", .string(O.podinfoVolume)), ("downwardAPI", .mapping([
                ("items", .sequence([.mapping([("path", .string("labels")), ("fieldRef", .mapping([("fieldPath", .string("metadata.labels"))]))])])),
            ]))])),
            (O.initRunVolume, .mapping([("name", .string(O.initRunVolume)), ("emptyDir", .mapping([("medium", .string("Memory"))]))])),
        ]
    }
}
