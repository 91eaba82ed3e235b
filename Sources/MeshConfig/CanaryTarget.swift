import MeshCore

/// What a Canary drives, resolved against the documents in force: the host's DestinationRule
/// and the `version` labels of its two subsets (the sidecars' `destination_version`), and the
/// VirtualService route whose two weights it sets.
public struct CanaryTarget: Sendable, Equatable {
    public var destinationRule: String
    public var stableVersion: String
    public var canaryVersion: String
    /// The service name and namespace the sidecars report (`destination_service_name`, `..._namespace`).
    public var serviceName: String
    public var serviceNamespace: String
    public var virtualService: String
    public var routeIndex: Int
    /// The destination indexes of the stable and the canary subset in that route.
    public var stableIndex: Int
    public var canaryIndex: Int
    /// The canary weight the route has now.
    public var weight: Int
}

extension Canary {
    /// `reviews` in namespace `default` and `reviews.default.svc.cluster.local` are one host.
    static func shortHost(_ h: String, _ ns: String) -> String {
        let parts = h.split(separator: ".")
        if parts.count == 1 { return "\(h).\(ns)" }
        return parts.prefix(2).joined(separator: ".")
    }

    /// Resolves this Canary against `cfg` (the whole set in force or about to be). The error
    /// names the Canary's field that does not fit (`file`: where the Canary came from).
    public func target(in cfg: IstioTraffic.Config, file: String) throws(ConfigError) -> CanaryTarget {
        let me = "Canary \(namespace)/\(name)"
        func refuse(_ path: String, _ msg: String) -> ConfigError { ConfigError(file: file, path: "\(me): \(path)", message: msg) }
        let key = Canary.shortHost(host, namespace)
        guard let dr = cfg.destinationRules.first(where: { Canary.shortHost($0.host, $0.namespace) == key }) else {
            throw refuse("spec.host", "no DestinationRule for host \(host) (it defines the subsets \(stable) and \(canary); apply them together)")
        }
        func version(_ subset: String, _ field: String) throws(ConfigError) -> String {
            guard let s = dr.subsets.first(where: { $0.name == subset }) else {
                throw refuse(field, "DestinationRule \(dr.namespace)/\(dr.name) has no subset \"\(subset)\" (it has: \(dr.subsets.map(\.name).joined(separator: ", ")))")
            }
            guard let v = s.labels.first(where: { $0.0 == "version" })?.1 else {
                throw refuse(field, "subset \"\(subset)\" of DestinationRule \(dr.namespace)/\(dr.name) has no version label (the sidecars report destination_version, which the checks read)")
            }
            return v
        }
        let sv = try version(stable, "spec.stable"), cv = try version(canary, "spec.canary")
        if sv == cv { throw refuse("spec.canary", "subsets \(stable) and \(canary) have the same version label \(sv): their figures cannot be told apart") }
        let vs: IstioTraffic.VirtualService
        if let ref = virtualService {
            guard let v = cfg.virtualServices.first(where: { $0.name == ref.name && $0.namespace == namespace }) else {
                throw refuse("spec.virtualService.name", "no VirtualService \(namespace)/\(ref.name)")
            }
            vs = v
        } else {
            let candidates = cfg.virtualServices.filter { v in v.namespace == namespace && v.hosts.contains { Canary.shortHost($0, namespace) == key } }
            guard candidates.count == 1 else {
                throw refuse("spec.virtualService", candidates.isEmpty
                             ? "no VirtualService in namespace \(namespace) for host \(host) (apply one whose route splits \(stable) and \(canary))"
                             : "\(candidates.count) VirtualServices in namespace \(namespace) route host \(host) (\(candidates.map(\.name).joined(separator: ", "))): name one")
            }
            vs = candidates[0]
        }
        func drivable(_ r: IstioTraffic.HTTPRoute) -> (Int, Int)? {
            guard r.route.count == 2, r.route.allSatisfy({ Canary.shortHost($0.destination.host, vs.namespace) == key }) else { return nil }
            guard let s = r.route.firstIndex(where: { $0.destination.subset == stable }),
                  let c = r.route.firstIndex(where: { $0.destination.subset == canary }) else { return nil }
            return (s, c)
        }
        let why = "a route the canary drives has exactly two destinations: host \(host) subsets \(stable) and \(canary)"
        var index: Int
        switch virtualService?.route {
        case .name(let n)?:
            guard let i = vs.http.firstIndex(where: { $0.name == n }) else {
                throw refuse("spec.virtualService.route", "VirtualService \(vs.namespace)/\(vs.name) has no http route named \"\(n)\"")
            }
            index = i
        case .index(let i)?:
            guard i < vs.http.count else {
                throw refuse("spec.virtualService.route", "VirtualService \(vs.namespace)/\(vs.name) has \(vs.http.count) http route(s), no index \(i)")
            }
            index = i
        case nil:
            let ok = vs.http.indices.filter { drivable(vs.http[$0]) != nil }
            guard ok.count == 1 else {
                throw refuse("spec.virtualService", ok.isEmpty ? "VirtualService \(vs.namespace)/\(vs.name) has no route to drive (\(why))"
                             : "VirtualService \(vs.namespace)/\(vs.name) has \(ok.count) routes that split \(stable) and \(canary) (http[\(ok.map(String.init).joined(separator: "], http["))]): name one with spec.virtualService.route")
            }
            index = ok[0]
        }
        guard let (si, ci) = drivable(vs.http[index]) else {
            throw refuse("spec.virtualService.route", "VirtualService \(vs.namespace)/\(vs.name) http[\(index)] cannot be driven (\(why))")
        }
        let parts = host.split(separator: ".")
        return CanaryTarget(destinationRule: "\(dr.namespace)/\(dr.name)", stableVersion: sv, canaryVersion: cv,
                            serviceName: String(parts[0]), serviceNamespace: parts.count > 1 ? String(parts[1]) : namespace,
                            virtualService: vs.name, routeIndex: index, stableIndex: si, canaryIndex: ci, weight: vs.http[index].route[ci].weight)
    }

    /// The checks of an apply that brings Canaries in (`applied`): each must resolve against the
    /// whole set, and no two Canaries drive one route.
    public static func checkApplied(_ cfg: IstioTraffic.Config, applied: [(namespace: String, name: String, file: String)]) throws(ConfigError) {
        var driven: [String: String] = [:]
        for c in cfg.canaries where !applied.contains(where: { $0.namespace == c.namespace && $0.name == c.name }) {
            if let t = try? c.target(in: cfg, file: "") { driven["\(c.namespace)/\(t.virtualService)#\(t.routeIndex)"] = c.name }
        }
        for c in cfg.canaries {
            guard let a = applied.first(where: { $0.namespace == c.namespace && $0.name == c.name }) else { continue }
            let t = try c.target(in: cfg, file: a.file)
            let k = "\(c.namespace)/\(t.virtualService)#\(t.routeIndex)"
            if let other = driven[k] {
                throw ConfigError(file: a.file, path: "Canary \(c.namespace)/\(c.name): spec.virtualService",
                                  message: "VirtualService \(c.namespace)/\(t.virtualService) http[\(t.routeIndex)] is already driven by Canary \(c.namespace)/\(other)")
            }
            driven[k] = c.name
        }
    }
}
