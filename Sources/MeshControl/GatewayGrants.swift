import MeshConfig
import MeshCore

/// Which gateway proxies meshd may send TLS secrets to (`meshd --gateway-service-account`,
/// GatewayServiceAccounts), and, for each gateway a Gateway selects whose service account is not
/// granted, why its secrets were withheld (logged once per proxy; `meshctl status` shows it).
struct GatewayGrants {
    var accounts = GatewayServiceAccounts()
    /// identity|node → why that gateway gets no secret (only while one is withheld).
    var withheld: [String: String] = [:]
    /// At most this many reasons are kept (a proxy that went away leaves its own behind).
    static let maxWithheld = 4096
}

extension ConfigStore {
    /// Sets the grants (meshd at start, from its flags).
    public func grantGatewayServiceAccounts(_ a: GatewayServiceAccounts) {
        gatewayGrants.withLock { $0.accounts = a }
        for g in a.granted.sorted() {
            Log.info("config", "gateways with the service account \(g) may be sent the TLS secrets of namespace \(g.split(separator: "/")[0]) (\(GatewayServiceAccounts.flag))")
        }
    }

    /// Whether the gateway `identity` at `node`, selected by Gateways of `namespace` that name the
    /// secrets `ids`, may be sent them. When not, the reason is kept for `meshctl status` and
    /// logged the first time (for that proxy and reason); when it may, or nothing is asked any
    /// more (`ids` empty), a kept reason is dropped.
    func mayDeliverSecrets(identity: String, node: String, namespace: String, ids: [String]) -> Bool {
        let key = "\(identity)|\(node)"
        let granted = gatewayGrants.withLock { $0.accounts.grants(identity: identity, namespace: namespace, trustDomain: trustDomain) }
        if granted || ids.isEmpty {
            gatewayGrants.withLock { g in if g.withheld[key] != nil { g.withheld.removeValue(forKey: key) } }
            return granted
        }
        let account = GatewayServiceAccounts.account(ofIdentity: identity).map { "\($0.namespace)/\($0.serviceAccount)" } ?? identity
        let reason = "TLS secrets withheld: \(account) is not granted (\(GatewayServiceAccounts.flag) \(account))"
        let first = gatewayGrants.withLock { g -> Bool in
            guard g.withheld[key] != reason else { return false }
            if g.withheld.count >= GatewayGrants.maxWithheld { g.withheld.removeAll() }
            g.withheld[key] = reason
            return true
        }
        if first {
            Log.warn("config", "the gateway \(identity) at \(node) is selected by a Gateway naming the TLS secret(s) \(ids.joined(separator: ", ")), "
                + "but its service account is not granted them: none is sent (its SIMPLE/MUTUAL ports refuse connections). "
                + "To deliver them, start meshd with \(GatewayServiceAccounts.flag) \(account)")
        }
        return false
    }

    /// Why the gateway `identity` at `node` gets no TLS secret (nil: none withheld).
    public func withheldSecrets(identity: String, node: String) -> String? {
        gatewayGrants.withLock { $0.withheld["\(identity)|\(node)"] }
    }
}
