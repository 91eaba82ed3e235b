import MeshConfig
import MeshCore

/// Turns a validated bootstrap and its VirtualServices/DestinationRules into the snapshot's
/// tables: clusters with their DestinationRule policy, subset targets, routes in match order, and
/// the host entries that lead to them. Control path only; runs once per config.
struct TrafficCompiler {
    var clusters: [ProxySnapshot.Cluster] = []
    var inboundCluster = ClusterID.none
    var routes: [ProxySnapshot.Route] = []
    var targets: [RouteTarget] = []
    var vhosts: [VirtualHost] = []
    var hostEntries: [(String, Int)] = []
    /// TCP services: host -> index into `tcpServices` (each a list of `tcpRoutes` indices).
    var tcpHostEntries: [(String, Int)] = []
    var tcpServices: [[Int]] = []
    var tcpRoutes: [ProxySnapshot.TCPRoute] = []
    private var targetIndex: [String: Int] = [:]

    init(_ b: Bootstrap, tls: ClusterTLSPlan = ClusterTLSPlan()) {
        let ns = b.workload.namespace
        for (ci, c) in b.clusters.enumerated() {
            let dr = b.traffic.destinationRules.first { b.clusterIndex(forHost: $0.host, namespace: $0.namespace) == ci }
            let tp = dr?.trafficPolicy
            var outlier: ProxySnapshot.OutlierPolicy? = nil
            if let t = tp, t.consecutive5xxErrors != nil || t.consecutiveGatewayErrors != nil || t.baseEjectionTime != nil
                || t.maxEjectionPercent != nil || t.interval != nil {
                // Istio's defaults: 5 consecutive 5xx, gateway errors off, 30 s base ejection, 10 %.
                outlier = .init(consecutive5xx: t.consecutive5xxErrors ?? 5, consecutiveGateway: t.consecutiveGatewayErrors ?? 0,
                                baseEjection: t.baseEjectionTime ?? 30_000_000_000, maxEjectionPercent: t.maxEjectionPercent ?? 10,
                                interval: t.interval ?? 10_000_000_000)
            }
            clusters.append(.init(name: c.name, endpoints: c.endpoints, mutualTLS: tls.mutualTLS(ci, default: c.tls == .istioMutual),
                                  expectedPeers: tls.expectedPeers(ci, default: c.subjectAltNames), connectTimeout: tp?.connectTimeout ?? c.connectTimeout,
                                  idleTimeout: tp?.idleTimeout ?? c.idleTimeout, maxConnections: tp?.maxConnections ?? c.maxConnections,
                                  maxRequestsPerConnection: tp?.maxRequestsPerConnection ?? 0,
                                  http2: c.protocolHTTP2, loadBalancer: tp?.loadBalancer ?? .roundRobin,
                                  maxPendingRequests: tp?.http1MaxPendingRequests ?? 1024,
                                  maxRequests: tp?.http2MaxRequests ?? Int.max, maxRetries: tp?.maxRetries ?? Int.max,
                                  outlier: outlier, serviceTCP: c.serviceProtocol == .tcp, detectProtocol: c.serviceProtocol == .auto,
                                  servicePort: c.port ?? 0,
                                  tcpIdleTimeout: tp?.tcpIdleTimeout ?? Bootstrap.Defaults.tcpIdleTimeout,
                                  origination: tls.origination(ci)))
        }
        if let inb = b.inbound, let app = inb.appAddress {
            inboundCluster = ClusterID(clusters.count)
            clusters.append(.init(name: "inbound|\(app.port)||local-app", endpoints: [app], mutualTLS: false,
                                  expectedPeers: [], connectTimeout: Bootstrap.Defaults.connectTimeout,
                                  idleTimeout: Bootstrap.Defaults.poolIdleTimeout,
                                  maxConnections: Bootstrap.Defaults.maxConnections, maxRequestsPerConnection: 0, http2: inb.appHTTP2,
                                  loadBalancer: .roundRobin, maxPendingRequests: 1024, maxRequests: Int.max,
                                  maxRetries: Int.max, outlier: nil, serviceTCP: inb.appTCP, servicePort: inb.servicePort ?? app.port,
                                  sourceAddress: inb.appSource))
        }

        // spec.routes: one route per host set, to the whole cluster, with the default retries.
        for r in b.routes {
            let ci = clusters.firstIndex { $0.name == r.cluster }!
            let t = target(b, cluster: ci, subset: nil)
            let svc = Self.service(r.hosts[0], ns)
            if clusters[ci].serviceTCP || clusters[ci].detectProtocol {
                // A TCP service: one TCP route to the whole cluster, and no HTTP route (an HTTP
                // request to it gets 404 NR; CONNECT reaches it). A service whose protocol is not
                // declared gets both (its captured connections are told apart by their bytes).
                let tr = tcpRoutes.count
                tcpRoutes.append(.init(cluster: ci, label: r.name, serviceFQDN: svc.fqdn, serviceName: svc.name, serviceNamespace: svc.ns,
                                       ports: clusters[ci].servicePort > 0 ? [clusters[ci].servicePort] : [], targets: [t],
                                       cumulativeWeights: [100]))
                let sv = tcpServices.count
                tcpServices.append([tr])
                for h in r.hosts {
                    for e in Bootstrap.expandedHosts(h.lowercased(), namespace: ns) { tcpHostEntries.append((e, sv)) }
                    let parts = h.lowercased().split(separator: ".")
                    if parts.count == 2 && parts[1] == ns { tcpHostEntries.append((String(parts[0]), sv)) }
                }
                if clusters[ci].serviceTCP { continue }
            }
            let ri = routes.count
            routes.append(.init(cluster: ci, timeout: r.timeout, label: r.name, serviceFQDN: svc.fqdn, serviceName: svc.name,
                                serviceNamespace: svc.ns, matches: [], targets: [t], cumulativeWeights: [100],
                                retry: .default, fault: nil, mirrorTarget: .none, mirrorPPM: 0,
                                requestOps: HeaderOps(), responseOps: HeaderOps(), rewriteURI: nil,
                                rewriteAuthority: nil))
            let v = vhosts.count
            vhosts.append(VirtualHost(routes: [ri]))
            for h in r.hosts {
                for e in Bootstrap.expandedHosts(h.lowercased(), namespace: ns) { hostEntries.append((e, v)) }
                // `name.<own namespace>` also answers to the short name (routes meshd pushes).
                let parts = h.lowercased().split(separator: ".")
                if parts.count == 2 && parts[1] == ns { hostEntries.append((String(parts[0]), v)) }
            }
        }

        // VirtualServices: their http routes in order, per host.
        for vs in b.traffic.virtualServices {
            var list: [Int] = []
            for (i, h) in vs.http.enumerated() {
                // sourceLabels / sourceNamespace, redirect / directResponse: MatchExtras.swift, DirectReply.swift.
                guard let kept = Self.sourceSelected(b, h) else { continue }
                if h.redirect != nil || h.directResponse != nil { list.append(appendDirectRoute(b, vs, i, h, kept)); continue }
                let (ts, cum) = weightedTargets(b, h.route, namespace: vs.namespace)
                let first = h.route[0].destination
                let svc = Self.service(first.host, vs.namespace)
                var mirrorTarget = TargetID.none
                if let m = h.mirror { mirrorTarget = TargetID(target(b, cluster: b.clusterIndex(forHost: m.host, namespace: vs.namespace)!, subset: m.subset)) }
                let matches = kept.map { m -> RouteMatch in
                    var rm = RouteMatch()
                    rm.uri = m.uri.map(ByteMatch.init)
                    rm.method = m.method.map(ByteMatch.init)
                    rm.headers = m.headers.map { (Array($0.name.utf8), ByteMatch($0.match)) }
                    rm.extras = MatchExtras(m)
                    return rm
                }
                list.append(routes.count)
                routes.append(.init(cluster: b.clusterIndex(forHost: first.host, namespace: vs.namespace)!, timeout: h.timeout ?? 0,
                                    label: Bootstrap.routeLabel(vs, i), serviceFQDN: svc.fqdn, serviceName: svc.name,
                                    serviceNamespace: svc.ns, matches: matches, targets: ts, cumulativeWeights: cum,
                                    retry: h.retries.map(RetryPolicy.init) ?? .default, fault: FaultPolicy(h.fault),
                                    mirrorTarget: mirrorTarget, mirrorPPM: h.mirror == nil ? 0 : UInt64((h.mirrorPercent ?? 100) * 10_000),
                                    requestOps: HeaderOps(h.requestHeaders), responseOps: HeaderOps(h.responseHeaders),
                                    rewriteURI: h.rewriteURI.map { Array($0.utf8) },
                                    rewriteAuthority: h.rewriteAuthority.map { Array($0.utf8) },
                                    cors: h.corsPolicy.map(CORSTable.init), rateLimiters: Self.rateLimiters(b, vs, i, h)))
            }
            if !vs.http.isEmpty {
                let v = vhosts.count
                vhosts.append(VirtualHost(routes: list))
                for h in vs.hosts { for e in Bootstrap.expandedHosts(h.lowercased(), namespace: vs.namespace) { hostEntries.append((e, v)) } }
            }
            // Its tcp routes, in order, for the same hosts.
            if !vs.tcp.isEmpty {
                var tlist: [Int] = []
                for (i, tr) in vs.tcp.enumerated() {
                    let (ts, cum) = weightedTargets(b, tr.route, namespace: vs.namespace)
                    let first = tr.route[0].destination
                    let svc = Self.service(first.host, vs.namespace)
                    tlist.append(tcpRoutes.count)
                    tcpRoutes.append(.init(cluster: b.clusterIndex(forHost: first.host, namespace: vs.namespace)!,
                                           label: Bootstrap.tcpRouteLabel(vs, i), serviceFQDN: svc.fqdn, serviceName: svc.name,
                                           serviceNamespace: svc.ns, ports: tr.ports, targets: ts, cumulativeWeights: cum))
                }
                let sv = tcpServices.count
                tcpServices.append(tlist)
                for h in vs.hosts { for e in Bootstrap.expandedHosts(h.lowercased(), namespace: vs.namespace) { tcpHostEntries.append((e, sv)) } }
            }
        }
    }

    /// The target for a cluster, or for the endpoints a subset of its DestinationRule selects.
    /// A route's destinations (http or tcp alike) as targets with cumulative weights out of 100;
    /// a lone destination takes everything, a weight of 0 takes nothing.
    mutating func weightedTargets(_ b: Bootstrap, _ route: [IstioTraffic.RouteDestination],
                                          namespace: String) -> (targets: [Int], cumulative: [Int]) {
        var ts: [Int] = []
        var cum: [Int] = []
        var sum = 0
        for d in route where d.weight > 0 || route.count == 1 {
            let ci = b.clusterIndex(forHost: d.destination.host, namespace: namespace)!
            ts.append(target(b, cluster: ci, subset: d.destination.subset))
            sum += route.count == 1 ? 100 : d.weight
            cum.append(sum)
        }
        return (ts, cum)
    }

    private mutating func target(_ b: Bootstrap, cluster ci: Int, subset: String?) -> Int {
        let name = subset.map { "\(clusters[ci].name)/\($0)" } ?? clusters[ci].name
        if let t = targetIndex[name] { return t }
        var eps = Array(b.clusters[ci].endpoints.indices)
        if let s = subset {
            let dr = b.traffic.destinationRules.first { b.clusterIndex(forHost: $0.host, namespace: $0.namespace) == ci }
            let labels = dr?.subsets.first { $0.name == s }?.labels ?? []
            eps = eps.filter { e in
                labels.allSatisfy { l in b.clusters[ci].endpointLabels[e].contains { $0.0 == l.0 && $0.1 == l.1 } }
            }
            if eps.isEmpty { Log.warn("config", "subset \(name) selects no endpoint: its requests will get 503 (UH)") }
        }
        var lb = clusters[ci].loadBalancer
        if let s = subset, let dr = b.traffic.destinationRules.first(where: { b.clusterIndex(forHost: $0.host, namespace: $0.namespace) == ci }),
           let v = dr.subsets.first(where: { $0.name == s })?.trafficPolicy?.loadBalancer {
            lb = v
        }
        let t = targets.count
        targets.append(RouteTarget(cluster: ci, endpoints: eps, name: name, loadBalancer: lb,
                                   balancing: TargetBalancing.compile(b, cluster: ci, endpoints: eps, subset: subset)))
        targetIndex[name] = t
        return t
    }

    /// Istio's destination_service labels for a host as written.
    static func service(_ host: String, _ ns: String) -> (fqdn: String, name: String, ns: String) {
        let parts = host.lowercased().split(separator: ".").map(String.init)
        let name = parts.first ?? host
        let sns = parts.count > 1 ? parts[1] : ns
        return ("\(name).\(sns).svc.cluster.local", name, sns)
    }
}
