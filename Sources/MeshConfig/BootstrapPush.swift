import MeshCore

/// Routing config that meshd pushes to a sidecar in mesh mode: one `kind: ProxyConfig` document
/// with the mesh's clusters (one per service, endpoints labelled by workload) and default host
/// routes, followed by the VirtualService and DestinationRule documents in force. The sidecar
/// applies it over its own bootstrap (identity, listeners, credentials stay), validated exactly
/// like a static file; anything refused is NACKed and the config in force stays.
extension Bootstrap {
    public static let proxyConfigKind = "ProxyConfig"

    /// This bootstrap with its clusters, routes and traffic replaced by a pushed config.
    public func withPushedConfig(_ text: String, source: String) throws(ConfigError) -> Bootstrap {
        let docs: [(node: YAMLNode, line: Int)]
        do { docs = try YAML.parseDocuments(text) } catch { throw ConfigError(file: source, line: error.line, message: "YAML: \(error.message)") }
        var found = false
        var next = self
        for (i, doc) in docs.enumerated() {
            guard case .scalar(let k)? = doc.node.asMapping?["kind"], k.value == Bootstrap.proxyConfigKind else { continue }
            if found { throw ConfigError(file: source, document: i + 1, message: "a second ProxyConfig document") }
            found = true
            let ctx = ConfigError(file: source, document: i + 1, message: "")
            var top = try ConfigReader(doc.node, path: "", context: ctx)
            let api = try top.string("apiVersion", required: true)!
            _ = try top.string("kind")
            guard api == Bootstrap.apiVersion else { throw ConfigReader.error(ctx, "apiVersion", doc.line, "expected \(Bootstrap.apiVersion)") }
            if var meta = try top.object("metadata") { _ = try meta.string("name"); try meta.finish() }
            guard var spec = try top.object("spec") else { throw ConfigReader.error(ctx, "spec", doc.line, "required field is missing") }
            try top.finish()
            next.clusters = try Bootstrap.parseClusters(&spec, haveTLS: tls != nil, allowEmpty: true, ctx: ctx)
            next.routes = try Bootstrap.parseRoutes(&spec, clusters: next.clusters, name: name, namespace: workload.namespace, ctx: ctx)
            next.outboundTrafficPolicy = try Bootstrap.parseOutboundTrafficPolicy(&spec, ctx: ctx)
            next.pushedOTLPEndpoint = try Bootstrap.parsePushedOTLPEndpoint(&spec, ctx: ctx)
            try spec.finish()
        }
        guard found else { throw ConfigError(file: source, message: "no ProxyConfig document") }
        // A document without metadata.namespace is in "default", as meshd stored it (kubectl's
        // convention), whatever this sidecar's own namespace.
        next.traffic = try IstioTraffic.parse(documents: docs, file: source, defaultNamespace: "default",
                                              skipKinds: [Bootstrap.proxyConfigKind])
        try next.bindTraffic(file: source)
        try next.checkTraffic(file: source, requireRoutes: false)
        return next
    }

    /// The check meshd runs before it stores a change (one validation, DESIGN §3): the config it
    /// would push, applied exactly as a sidecar of `namespace` applies it, to a mesh-mode bootstrap.
    public static func checkPushed(_ text: String, namespace: String, source: String) throws(ConfigError) {
        var o = MeshModeOptions(service: "meshd-check")
        o.namespace = namespace
        o.appPort = 1
        let tls = TLSFiles(certChain: "(meshd check)", privateKey: "(meshd check)", trustBundle: "(meshd check)",
                           trustDomain: "cluster.local", minTLS13: true)
        _ = try Bootstrap.meshMode(o, tls: tls).withPushedConfig(text, source: source)
    }
}
