import MeshConfig

/// `meshctl kube-manifests --gateway-service-account NS/SA`: the grants passed on to meshd's
/// args, checked with meshd's own code (GatewayServiceAccounts) so that a value meshd would
/// refuse at start is refused here, naming it.
extension KubeManifests {
    /// meshd's flag, as the Deployment's args carry it.
    static let gatewayServiceAccountFlag = GatewayServiceAccounts.flag

    static func checkGatewayServiceAccounts(_ values: [String]) throws(KubeError) {
        do { _ = try GatewayServiceAccounts.parse(values) } catch {
            throw KubeError(document: 0, line: 0, error.description)
        }
    }
}
