/// Checks that the traffic documents of a static config fit its bootstrap: every VirtualService
/// host is routed once (by `spec.routes` or one VirtualService), every destination and
/// DestinationRule host names a cluster, and every route has a usable metric label.
extension Bootstrap {
    /// The cluster a destination host names: the cluster whose name, as a short service name in
    /// this workload's namespace, answers to the host (`reviews`, `reviews.default`,
    /// `reviews.default.svc.cluster.local`), or nil.
    public func clusterIndex(forHost host: String, namespace ns: String? = nil) -> Int? {
        var h = host.lowercased()
        // A short name means the service in the document's namespace (Istio).
        if !h.contains(".") { h = "\(h).\(ns ?? workload.namespace)" }
        return clusters.firstIndex { Bootstrap.expandedHosts($0.name.lowercased(), namespace: workload.namespace).contains(h) }
    }

    /// The metric label of a VirtualService http route: `<VirtualService>.<route name or index>`.
    public static func routeLabel(_ vs: IstioTraffic.VirtualService, _ index: Int) -> String {
        "\(vs.name).\(vs.http[index].name ?? String(index))"
    }

    /// The metric label of a VirtualService tcp route (Istio's tcp routes have no name):
    /// `<VirtualService>.tcp-<index>`.
    public static func tcpRouteLabel(_ vs: IstioTraffic.VirtualService, _ index: Int) -> String {
        "\(vs.name).tcp-\(index)"
    }

    func checkTraffic(file: String, requireRoutes: Bool = true) throws(ConfigError) {
        if let se = traffic.serviceEntries.first {
            throw ConfigError(file: file, path: "ServiceEntry \(se.namespace)/\(se.name)",
                              message: "ServiceEntry and WorkloadEntry are applied through meshd; in a static file, declare a cluster (spec.clusters) instead")
        }
        if let we = traffic.workloadEntries.first {
            throw ConfigError(file: file, path: "WorkloadEntry \(we.namespace)/\(we.name)",
                              message: "ServiceEntry and WorkloadEntry are applied through meshd; in a static file, declare a cluster (spec.clusters) instead")
        }
        if let sc = traffic.sidecars.first {
            throw ConfigError(file: file, path: "Sidecar \(sc.namespace)/\(sc.name)",
                              message: "a Sidecar resource is applied through meshd (it chooses what each sidecar is sent); in a static file, list only the clusters and routes this sidecar needs")
        }
        func fail(_ kind: String, _ ns: String, _ name: String, _ path: String, _ msg: String) -> ConfigError {
            ConfigError(file: file, path: "\(kind) \(ns)/\(name): \(path)", message: msg)
        }
        var routed: [String: String] = [:]
        for (ri, r) in routes.enumerated() {
            for h in r.hosts { for e in Bootstrap.expandedHosts(h.lowercased(), namespace: workload.namespace) { routed[e] = "spec.routes[\(ri)]" } }
        }
        var labels = Set(routes.map(\.name))
        var total = routes.count
        for vs in traffic.virtualServices {
            for (hi, h) in vs.hosts.enumerated() {
                if h.contains("*") && !gatewayMode {   // gateways route wildcard hosts (GatewayTable)
                    throw fail("VirtualService", vs.namespace, vs.name, "spec.hosts[\(hi)]", "wildcard hosts are not supported; name the service (\"\(h)\")")
                }
                for e in Bootstrap.expandedHosts(h.lowercased(), namespace: vs.namespace) {
                    if let prev = routed[e], prev != "VirtualService \(vs.namespace)/\(vs.name)" {
                        throw fail("VirtualService", vs.namespace, vs.name, "spec.hosts[\(hi)]", "host \"\(h)\" is already routed by \(prev) (as \(e))")
                    }
                    routed[e] = "VirtualService \(vs.namespace)/\(vs.name)"
                }
            }
            if vs.http.isEmpty && vs.tcp.isEmpty {
                throw fail("VirtualService", vs.namespace, vs.name, "spec.http", "a VirtualService needs at least one http or tcp route")
            }
            // A service speaks HTTP or TCP: http routes go to HTTP services, tcp routes to TCP ones
            // (the same check in meshd and every sidecar).
            // (A service whose protocol is not declared, AUTO, takes both.)
            func isTCP(_ host: String) -> Bool? {
                clusterIndex(forHost: host, namespace: vs.namespace).map { clusters[$0].serviceProtocol == .tcp }
            }
            func takesTCP(_ host: String) -> Bool? {
                clusterIndex(forHost: host, namespace: vs.namespace).map { [.tcp, .auto].contains(clusters[$0].serviceProtocol) }
            }
            for (ri, r) in vs.http.enumerated() {
                for (di, d) in r.route.enumerated() where isTCP(d.destination.host) == true {
                    throw fail("VirtualService", vs.namespace, vs.name, "spec.http[\(ri)].route[\(di)].destination.host",
                               "\"\(d.destination.host)\" is a TCP service (serviceProtocol: TCP): route it with a tcp route, not an http one")
                }
                if let m = r.mirror, isTCP(m.host) == true {
                    throw fail("VirtualService", vs.namespace, vs.name, "spec.http[\(ri)].mirror.host",
                               "\"\(m.host)\" is a TCP service (serviceProtocol: TCP): an http route cannot mirror to it")
                }
            }
            for (ti, t) in vs.tcp.enumerated() {
                for (di, d) in t.route.enumerated() {
                    guard let tcp = takesTCP(d.destination.host) else {
                        throw fail("VirtualService", vs.namespace, vs.name, "spec.tcp[\(ti)].route[\(di)].destination.host",
                                   "no cluster serves host \"\(d.destination.host)\" (clusters: \(clusters.map(\.name).joined(separator: ", ")))")
                    }
                    if !tcp {
                        throw fail("VirtualService", vs.namespace, vs.name, "spec.tcp[\(ti)].route[\(di)].destination.host",
                                   "\"\(d.destination.host)\" is not a TCP service (its protocol is HTTP): route it with an http route, not a tcp one")
                    }
                }
                if !labels.insert(Bootstrap.tcpRouteLabel(vs, ti)).inserted {
                    throw fail("VirtualService", vs.namespace, vs.name, "spec.tcp[\(ti)]", "route \"\(Bootstrap.tcpRouteLabel(vs, ti))\" is defined twice")
                }
                total += 1
            }
            for (ri, r) in vs.http.enumerated() {
                let label = Bootstrap.routeLabel(vs, ri)
                let ok = label.utf8.count <= 253 && label.utf8.allSatisfy {
                    ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || $0 == 45 || $0 == 46 || $0 == 95
                }
                if !ok { throw fail("VirtualService", vs.namespace, vs.name, "spec.http[\(ri)].name", "expected letters, digits, '-', '_' or '.', got \"\(r.name ?? "")\"") }
                if !labels.insert(label).inserted {
                    throw fail("VirtualService", vs.namespace, vs.name, "spec.http[\(ri)].name", "route \"\(label)\" is defined twice")
                }
                for (di, d) in r.route.enumerated() where clusterIndex(forHost: d.destination.host, namespace: vs.namespace) == nil {
                    throw fail("VirtualService", vs.namespace, vs.name, "spec.http[\(ri)].route[\(di)].destination.host",
                               "no cluster serves host \"\(d.destination.host)\" (clusters: \(clusters.map(\.name).joined(separator: ", ")))")
                }
                if let m = r.mirror, clusterIndex(forHost: m.host, namespace: vs.namespace) == nil {
                    throw fail("VirtualService", vs.namespace, vs.name, "spec.http[\(ri)].mirror.host",
                               "no cluster serves host \"\(m.host)\" (clusters: \(clusters.map(\.name).joined(separator: ", ")))")
                }
                total += 1
            }
        }
        if total >= 60_000 { throw ConfigError(file: file, message: "at most 59,999 routes in all, got \(total)") }
        for dr in traffic.destinationRules where clusterIndex(forHost: dr.host, namespace: dr.namespace) == nil {
            throw fail("DestinationRule", dr.namespace, dr.name, "spec.host",
                       "no cluster serves host \"\(dr.host)\" (clusters: \(clusters.map(\.name).joined(separator: ", ")))")
        }
        if requireRoutes && outbound != nil && total == 0 && !gatewayMode {
            throw ConfigError(file: file, path: "spec.routes", message: "the outbound listener needs at least one route (spec.routes or a VirtualService)")
        }
    }
}
