import MeshConfig
import MeshTLS

/// Where a gateway server's TLS context comes from, chosen per server when a snapshot is
/// compiled (never per connection): ISTIO_MUTUAL servers share the gateway's mesh context (its
/// SPIFFE certificate, a mesh client certificate required); SIMPLE and MUTUAL servers take the
/// context of their `credentialName` secret, kept in memory (the parser refuses those modes until
/// secrets are delivered to gateways, so none reaches here yet); other servers terminate nothing.
struct GatewayServerTLS {
    let bootstrap: Bootstrap
    private var mesh: TLSContext?

    init(_ b: Bootstrap) { bootstrap = b }

    /// The server side of `server`, nil when it terminates no TLS.
    mutating func context(for server: IstioGateway.Server) throws -> TLSContext? {
        switch server.tls?.mode {
        case .istioMutual?:
            if let m = mesh { return m }
            let m = try meshContext()
            mesh = m
            return m
        case .simple?, .mutual?:
            throw TLSConfigError("Gateway server on port \(server.port): tls mode \(server.tls!.mode!.rawValue) with credentialName \(server.tls?.credentialName ?? "-"): \(IstioTraffic.notSupported)")
        case .passthrough?, nil:
            return nil
        }
    }

    private func meshContext() throws -> TLSContext {
        guard let t = bootstrap.tls else { throw TLSConfigError("an ISTIO_MUTUAL Gateway server needs the gateway's mesh certificate") }
        var so = TLSContext.Options(certChainFile: t.certChain, privateKeyFile: t.privateKey, trustBundleFile: t.trustBundle)
        so.trustDomain = t.trustDomain
        so.certChainPEM = t.certChainPEM
        so.privateKeyPEM = t.privateKeyPEM
        so.trustBundlePEM = t.trustBundlePEM
        so.alpn = ["h2", "http/1.1"]
        so.minVersion13 = t.minTLS13
        return try TLSContext(role: .server, options: so)
    }
}
