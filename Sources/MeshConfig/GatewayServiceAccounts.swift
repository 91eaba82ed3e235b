/// `meshd --gateway-service-account NS/SA` (repeatable, and `NS/SA,NS/SA`): the service
/// accounts whose gateway proxies may be sent the TLS secrets of namespace NS. Istio's
/// equivalent is a Role granting the gateway's service account `get`/`list`/`watch` on
/// `secrets` in NS (istiod checks it with a SubjectAccessReview before it sends a credential);
/// here the operator names the grant on meshd's command line. Nothing is granted by default.
/// `meshctl kube-manifests --gateway-service-account` checks its values with the same code.
public struct GatewayServiceAccounts: Sendable, Equatable {
    /// The flag, as errors name it.
    public static let flag = "--gateway-service-account"

    /// The grants, as `NS/SA`.
    public private(set) var granted: Set<String> = []

    public init() {}

    /// Why a flag value was refused (it names the flag and the value).
    public struct Refusal: Error, Sendable, CustomStringConvertible {
        public let description: String
    }

    /// Reads the flag's values (each one or several `NS/SA` separated by commas): NS a namespace
    /// name (DNS label), SA a service-account name (DNS subdomain), as Kubernetes names them.
    public static func parse(_ values: [String]) throws(Refusal) -> GatewayServiceAccounts {
        var out = GatewayServiceAccounts()
        for value in values {
            let items = value.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            for item in items {
                let p = item.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
                let reason: String?
                if p.count != 2 {
                    reason = "expected NAMESPACE/SERVICE-ACCOUNT such as default/ingressgateway"
                } else if !Names.isDNSLabel(p[0]) {
                    reason = "\"\(p[0])\" is not a namespace name (lowercase letters, digits and '-', at most 63)"
                } else if !Names.isObjectName(p[1]) {
                    reason = "\"\(p[1])\" is not a service-account name (lowercase letters, digits, '-' and '.', at most 253)"
                } else {
                    reason = nil
                }
                if let reason {
                    throw Refusal(description: "\(flag) \"\(value)\": \(reason)")
                }
                out.granted.insert(item)
            }
        }
        return out
    }

    /// Whether the proxy whose verified identity is `identity` may be sent the TLS secrets of
    /// `namespace`: its identity is exactly `spiffe://TD/ns/NAMESPACE/sa/SA` (meshd's trust
    /// domain) and NAMESPACE/SA is granted.
    public func grants(identity: String, namespace: String, trustDomain: String) -> Bool {
        let prefix = "spiffe://\(trustDomain)/ns/\(namespace)/sa/"
        guard identity.hasPrefix(prefix) else { return false }
        let sa = String(identity.dropFirst(prefix.count))
        return Names.isObjectName(sa) && granted.contains("\(namespace)/\(sa)")
    }

    /// The service-account part of an identity `spiffe://TD/ns/NS/sa/SA` (nil otherwise): what
    /// an operator would grant.
    public static func account(ofIdentity id: String) -> (namespace: String, serviceAccount: String)? {
        let parts = id.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 7, parts[0] == "spiffe:", parts[1].isEmpty, parts[3] == "ns", parts[5] == "sa" else { return nil }
        return (String(parts[4]), String(parts[6]))
    }
}
