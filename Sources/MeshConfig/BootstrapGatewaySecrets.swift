/// A gateway from a static file (`sidecar --config` with `spec.gateway`) has no meshd to deliver
/// the `credentialName` secrets of SIMPLE and MUTUAL servers (DESIGN §15: they never touch a
/// gateway's disk), so such a server is refused by name there rather than opened without a
/// certificate.
extension Bootstrap {
    func refuseStaticCredentials(file: String) throws(ConfigError) {
        guard gatewayMode else { return }
        for g in traffic.gateways {
            for (i, s) in g.servers.enumerated() {
                guard let m = s.tls?.mode, m == .simple || m == .mutual else { continue }
                throw ConfigError(file: file, path: "Gateway \(g.namespace)/\(g.name): spec.servers[\(i)].tls.mode",
                                  message: "mode \(m.rawValue) in a static file: \(IstioTraffic.notSupported) (its credentialName secret comes from meshd: run the gateway with --meshd and meshctl create secret tls)")
            }
        }
    }
}
