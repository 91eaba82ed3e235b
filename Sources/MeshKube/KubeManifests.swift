import MeshYAML

/// `meshctl kube-manifests`: what runs meshd in a cluster (Namespace, ServiceAccount, the RBAC
/// for TokenReview, the plug-in CA Secret's mount, Deployment, Service, PodDisruptionBudget) and
/// the `mesh-sidecar` ConfigMap (root certificate and meshd's address) for each meshed namespace.
/// The CA's private key never passes through here: the Secret is created from its files.
public enum KubeManifests {
    public struct Options: Sendable {
        public var replicas = 1
        /// `etcd://HOST:PORT[,...]`, or nil for the file store on a PersistentVolumeClaim.
        public var store: String? = nil
        public var image = KubeInjectOptions.defaultImage
        /// The plug-in CA's root certificate (PEM): the trust anchor the ConfigMaps carry.
        public var rootCertPEM: String
        /// Namespaces whose pods are injected (each gets the `mesh-sidecar` ConfigMap).
        public var appNamespaces = ["default"]
        /// `--gateway-service-account NS/SA` values passed on to meshd's args: the gateways whose
        /// service accounts may be sent TLS secrets (GatewayServiceAccounts; none by default).
        public var gatewayServiceAccounts: [String] = []
        public init(rootCertPEM: String) { self.rootCertPEM = rootCertPEM }
    }

    /// meshd's namespace and service account: its SPIFFE identity, which sidecars check, is
    /// spiffe://TD/ns/mesh-system/sa/meshd.
    public static let namespace = "mesh-system"
    public static let name = "meshd"
    public static let apiPort = 15012
    public static let adminPort = 15014
    public static let caSecret = "mesh-ca"

    /// Checks the options; the error names the flag.
    public static func check(_ o: Options) throws(KubeError) {
        if o.replicas < 1 || o.replicas > 9 { throw KubeError(document: 0, line: 0, "--replicas: expected 1 to 9, got \(o.replicas)") }
        if o.replicas > 1 && o.store == nil {
            throw KubeError(document: 0, line: 0, "--replicas \(o.replicas): replicas share their state through etcd: give --store etcd://HOST:PORT[,...]")
        }
        if let s = o.store {
            let list = s.hasPrefix("etcd://") ? s.dropFirst(7).split(separator: ",", omittingEmptySubsequences: false) : []
            guard !list.isEmpty, list.allSatisfy({ p in
                guard let colon = p.lastIndex(of: ":"), let port = Int(p[p.index(after: colon)...]), port >= 1, port <= 65535 else { return false }
                return colon > p.startIndex && !p.contains("/")
            }) else { throw KubeError(document: 0, line: 0, "--store: expected etcd://HOST:PORT[,HOST:PORT...], got \"\(s)\"") }
        }
        guard o.rootCertPEM.contains("-----BEGIN CERTIFICATE-----") else {
            throw KubeError(document: 0, line: 0, "--root-cert: no PEM certificate in it")
        }
        if o.appNamespaces.isEmpty { throw KubeError(document: 0, line: 0, "--app-namespace: at least one namespace") }
        for ns in o.appNamespaces where !isDNSLabel(ns) {
            throw KubeError(document: 0, line: 0, "--app-namespace: \"\(ns)\" is not a Kubernetes namespace name (lower-case letters, digits and '-', at most 63)")
        }
        if Set(o.appNamespaces).count != o.appNamespaces.count { throw KubeError(document: 0, line: 0, "--app-namespace: a namespace is given twice") }
        try checkGatewayServiceAccounts(o.gatewayServiceAccounts)
        if o.image.isEmpty || o.image.contains(where: { $0 == " " || $0 == "\n" || $0 == "\t" }) {
            throw KubeError(document: 0, line: 0, "--image: expected an image reference, got \"\(o.image)\"")
        }
    }

    static func isDNSLabel(_ s: String) -> Bool {
        let u = Array(s.utf8)
        guard !u.isEmpty, u.count <= 63, u.first != UInt8(ascii: "-"), u.last != UInt8(ascii: "-") else { return false }
        return u.allSatisfy { ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == UInt8(ascii: "-") }
    }

    /// The manifests, as one multi-document YAML stream.
    public static func render(_ o: Options) throws(KubeError) -> String {
        try check(o)
        var docs: [YAMLNode] = []
        let labels: YAMLNode = .mapping([("app", .string(name))])
        func meta(_ n: String, _ ns: String? = namespace, labels l: YAMLNode? = nil) -> YAMLNode {
            var p: [(String, YAMLNode)] = [("name", .string(n))]
            if let ns { p.append(("namespace", .string(ns))) }
            if let l { p.append(("labels", l)) }
            return .mapping(p)
        }
        func object(_ api: String, _ kind: String, _ m: YAMLNode, _ rest: [(String, YAMLNode)]) -> YAMLNode {
            .mapping([("apiVersion", .string(api)), ("kind", .string(kind)), ("metadata", m)] + rest)
        }
        docs.append(object("v1", "Namespace", meta(namespace, nil), []))
        docs.append(object("v1", "ServiceAccount", meta(name), []))
        // meshd reviews the sidecars' service-account tokens (meshd --kube-api in-cluster).
        docs.append(object("rbac.authorization.k8s.io/v1", "ClusterRole", meta("mesh-meshd", nil), [
            ("rules", .sequence([.mapping([
                ("apiGroups", .sequence([.string("authentication.k8s.io")])),
                ("resources", .sequence([.string("tokenreviews")])),
                ("verbs", .sequence([.string("create")])),
            ])])),
        ]))
        docs.append(object("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", meta("mesh-meshd", nil), [
            ("roleRef", .mapping([("apiGroup", .string("rbac.authorization.k8s.io")), ("kind", .string("ClusterRole")), ("name", .string("mesh-meshd"))])),
            ("subjects", .sequence([.mapping([("kind", .string("ServiceAccount")), ("name", .string(name)), ("namespace", .string(namespace))])])),
        ]))
        let fileStore = o.store == nil
        if fileStore {
            docs.append(object("v1", "PersistentVolumeClaim", meta("meshd-state"), [
                ("spec", .mapping([
                    ("accessModes", .sequence([.string("ReadWriteOnce")])),
                    ("resources", .mapping([("requests", .mapping([("storage", .string("1Gi"))]))])),
                ])),
            ]))
        }
        // A directory meshd creates (0700, its own) inside the volume: the volume's root belongs
        // to root with the fsGroup, which meshd refuses for the directory holding its keys.
        var args = ["--state-dir", "/var/lib/mesh/meshd", "--ca-dir", "/etc/mesh/ca", "--listen-address", "0.0.0.0",
                    "--admin-address", "$(POD_IP)", "--kube-api", "in-cluster"]
        if let s = o.store { args += ["--store", s, "--replica-id", "$(POD_NAME)"] }
        for g in o.gatewayServiceAccounts { args += [gatewayServiceAccountFlag, g] }
        let env: YAMLNode = .sequence([
            .mapping([("name", .string("POD_NAME")), ("valueFrom", .mapping([("fieldRef", .mapping([("fieldPath", .string("metadata.name"))]))]))]),
            .mapping([("name", .string("POD_IP")), ("valueFrom", .mapping([("fieldRef", .mapping([("fieldPath", .string("status.podIP"))]))]))]),
            // So that `kubectl exec deploy/meshd -- meshctl status` needs no flags.
            .mapping([("name", .string("MESHD")), ("value", .string("https://$(POD_IP):\(adminPort)"))]),
            .mapping([("name", .string("MESH_ROOT_CERT")), ("value", .string("/etc/mesh/ca/root-cert.pem"))]),
            .mapping([("name", .string("MESH_ADMIN_TOKEN_FILE")), ("value", .string("/var/lib/mesh/meshd/admin-token"))]),
        ])
        let probe: YAMLNode = .mapping([
            ("httpGet", .mapping([("path", .string("/ready")), ("port", .int(adminPort)), ("scheme", .string("HTTPS"))])),
            ("periodSeconds", .int(5)), ("timeoutSeconds", .int(3)),
        ])
        let container: YAMLNode = .mapping([
            ("name", .string(name)),
            ("image", .string(o.image)),
            ("command", .sequence([.string("/usr/bin/meshd")])),
            ("args", .sequence(args.map { YAMLNode.string($0) })),
            ("env", env),
            ("ports", .sequence([
                .mapping([("name", .string("https-api")), ("containerPort", .int(apiPort)), ("protocol", .string("TCP"))]),
                .mapping([("name", .string("https-admin")), ("containerPort", .int(adminPort)), ("protocol", .string("TCP"))]),
            ])),
            ("readinessProbe", probe),
            ("resources", .mapping([
                ("limits", .mapping([("memory", .string("1Gi"))])),
                ("requests", .mapping([("cpu", .string("100m")), ("memory", .string("128Mi"))])),
            ])),
            ("securityContext", .mapping([
                ("allowPrivilegeEscalation", .bool(false)),
                ("capabilities", .mapping([("drop", .sequence([.string("ALL")]))])),
                ("readOnlyRootFilesystem", .bool(true)),
                ("runAsGroup", .int(KubeInjectOptions.proxyUID)),
                ("runAsNonRoot", .bool(true)),
                ("runAsUser", .int(KubeInjectOptions.proxyUID)),
            ])),
            ("volumeMounts", .sequence([
                .mapping([("name", .string("ca")), ("mountPath", .string("/etc/mesh/ca")), ("readOnly", .bool(true))]),
                .mapping([("name", .string("state")), ("mountPath", .string("/var/lib/mesh"))]),
            ])),
        ])
        let stateVolume: YAMLNode = fileStore
            ? .mapping([("name", .string("state")), ("persistentVolumeClaim", .mapping([("claimName", .string("meshd-state"))]))])
            : .mapping([("name", .string("state")), ("emptyDir", .mapping([("medium", .string("Memory"))]))])
        var podSpec: [(String, YAMLNode)] = [
            ("serviceAccountName", .string(name)),
            ("securityContext", .mapping([("fsGroup", .int(KubeInjectOptions.proxyUID)), ("seccompProfile", .mapping([("type", .string("RuntimeDefault"))]))])),
            ("containers", .sequence([container])),
            ("volumes", .sequence([
                .mapping([("name", .string("ca")), ("secret", .mapping([("secretName", .string(caSecret)), ("defaultMode", .int(0o440))]))]),
                stateVolume,
            ])),
        ]
        if o.replicas > 1 {
            // Spread replicas over nodes where the scheduler can.
            podSpec.insert(("affinity", .mapping([("podAntiAffinity", .mapping([("preferredDuringSchedulingIgnoredDuringExecution", .sequence([
                .mapping([("weight", .int(100)), ("podAffinityTerm", .mapping([
                    ("labelSelector", .mapping([("matchLabels", labels)])),
                    ("topologyKey", .string("kubernetes.io/hostname")),
                ]))]),
            ]))]))])), at: 1)
        }
        docs.append(object("apps/v1", "Deployment", meta(name, labels: labels), [
            ("spec", .mapping([
                ("replicas", .int(o.replicas)),
                ("selector", .mapping([("matchLabels", labels)])),
                // The file store is one directory on one volume, held by one meshd at a time.
                ("strategy", fileStore ? .mapping([("type", .string("Recreate"))])
                    : .mapping([("type", .string("RollingUpdate")), ("rollingUpdate", .mapping([("maxSurge", .int(1)), ("maxUnavailable", .int(0))]))])),
                ("template", .mapping([
                    ("metadata", .mapping([("labels", labels), ("annotations", .mapping([("sidecar.mesh.io/inject", .string("false"))]))])),
                    ("spec", .mapping(podSpec)),
                ])),
            ])),
        ]))
        docs.append(object("v1", "Service", meta(name, labels: labels), [
            ("spec", .mapping([
                ("selector", labels),
                ("ports", .sequence([
                    .mapping([("name", .string("https-api")), ("port", .int(apiPort)), ("targetPort", .int(apiPort)), ("protocol", .string("TCP"))]),
                    .mapping([("name", .string("https-admin")), ("port", .int(adminPort)), ("targetPort", .int(adminPort)), ("protocol", .string("TCP"))]),
                ])),
            ])),
        ]))
        docs.append(object("policy/v1", "PodDisruptionBudget", meta(name), [
            ("spec", .mapping([("maxUnavailable", .int(1)), ("selector", .mapping([("matchLabels", labels)]))])),
        ]))
        for ns in o.appNamespaces {
            docs.append(object("v1", "ConfigMap", meta(KubeInjectOptions.configMapName, ns), [
                ("data", .mapping([
                    ("meshd", .string("\(name).\(namespace).svc:\(apiPort)")),
                    ("root-cert.pem", .literal(o.rootCertPEM.hasSuffix("\n") ? o.rootCertPEM : o.rootCertPEM + "\n")),
                ])),
            ]))
        }
        var out = ""
        for d in docs {
            do { out += try YAML.emit(YAMLDocument(root: d), forceStart: true) } catch {
                throw KubeError(document: 0, line: 0, "cannot write the manifests: \(error.message)")
            }
        }
        return out
    }
}
