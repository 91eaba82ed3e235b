import MeshConfig
import MeshTLS

/// Where a gateway server's TLS context comes from, chosen per server when a snapshot is
/// compiled (never per connection): ISTIO_MUTUAL servers share the gateway's mesh context (its
/// SPIFFE certificate, a mesh client certificate required); SIMPLE and MUTUAL servers take the
/// context of their `credentialName` secret of the Gateway's namespace, delivered by meshd and kept
/// in memory (GatewaySecrets; nil while it was not delivered); other servers terminate nothing.
struct GatewayServerTLS {
    let bootstrap: Bootstrap
    private var mesh: TLSContext?

    init(_ b: Bootstrap) { bootstrap = b }

    /// The server side of `server`, nil when it terminates no TLS.
    mutating func context(for server: IstioGateway.Server, namespace: String) throws -> TLSContext? {
        switch server.tls?.mode {
        case .istioMutual?:
            if let m = mesh { return m }
            let m = try meshContext()
            mesh = m
            return m
        case .simple?, .mutual?:
            guard let name = server.tls?.credentialName else { return nil }
            return GatewaySecrets.shared.context("\(namespace)/\(name)", mutual: server.tls?.mode == .mutual)
        case .passthrough?, nil:
            return nil
        }
    }

    private func meshContext() throws -> TLSContext {
        guard let t = bootstrap.tls else { throw TLSConfigError("an ISTIO_MUTUAL Gateway server needs the gateway's mesh certificate") }
        return try TLSContext(role: .server, options: ProxySnapshot.meshServerOptions(t))
    }
}
