import MeshConfig
import MeshHTTP
import MeshCore
import MeshTLS

/// A gateway proxy's servers compiled for the data path (DESIGN §15): one entry per port of the
/// Gateways that select it, telling the worker what an accepted connection becomes. HTTP ports
/// go to the HTTP path with their own listener settings (`httpsRedirect` answers 301 there);
/// TLS-terminating ports (ISTIO_MUTUAL: the gateway's mesh certificate) first complete the
/// handshake with the server's context (`GatewayServerTLS`); PASSTHROUGH
/// ports read the ClientHello's SNI and carry the bytes by the matching tls route; TCP ports
/// carry the bytes by their tcp route. Built once per snapshot; lookups are by port.
public final class GatewayTable: Sendable {
    public enum Kind: Sendable, Equatable {
        case http
        /// HTTP after a TLS handshake with the port's `serverTLS`.
        case terminatedHTTP
        case passthrough
        case tcp
    }

    /// One tls route match compiled: SNI patterns (lowercase; `*.suffix` kept as `.suffix` for
    /// a suffix test; `*` as empty), and the tcp route (index into the snapshot's `tcpRoutes`).
    struct SNIRoute: Sendable {
        let exact: [[UInt8]]
        let suffixes: [[UInt8]]
        let any: Bool
        let route: Int

        func matches(_ p: UnsafeRawBufferPointer, _ off: Int, _ n: Int) -> Bool {
            if any { return true }
            for e in exact where e.count == n {
                var same = true
                for i in 0..<n where e[i] != ASCII.lower(p[off + i]) { same = false; break }
                if same { return true }
            }
            for s in suffixes where n > s.count {
                var same = true
                let base = off + n - s.count
                for i in 0..<s.count where s[i] != ASCII.lower(p[base + i]) { same = false; break }
                if same { return true }
            }
            return false
        }
    }

    /// One port.
    public struct Port: Sendable {
        public let port: Int
        public let kind: Kind
        /// The listener settings of its HTTP connections (the outbound listener's, with
        /// `httpsRedirect`).
        let settings: ProxySnapshot.ListenerSettings
        /// PASSTHROUGH: the tls routes for this port, in order (first match wins).
        let sniRoutes: [SNIRoute]
        /// TCP: the tcp route (index into `tcpRoutes`), -1 when none binds.
        let tcpRoute: Int
        /// `terminatedHTTP`: the server side of its TLS (GatewayServerTLS).
        let serverTLS: TLSContext?
        /// HTTP ports: the hosts routed here (Istio keeps routes per port: the hosts of the
        /// VirtualServices bound to a Gateway serving the port that its server hosts admit), to
        /// virtual hosts of the snapshot; then wildcard hosts, most specific first.
        let hosts: HostTable
        let wildcards: [(suffix: [UInt8], vhost: Int)]
        /// SIMPLE/MUTUAL without `serverTLS`: why (the secret its `credentialName` names was not
        /// delivered, or has no CA for MUTUAL), written when the snapshot is built; connections
        /// are refused with it.
        var credential = ""
    }

    public let ports: [Port]
    /// The address the ports are opened on (`--listen-address`).
    public let listenHost: String

    init(ports: [Port], listenHost: String) {
        self.ports = ports
        self.listenHost = listenHost
    }

    /// Whether host pattern `a` takes every name `b` takes (`*` takes all; `*.x` takes `*.y.x`
    /// and `y.x`; a name only itself).
    static func covers(_ a: String, _ b: String) -> Bool {
        if a == "*" || a == b { return true }
        guard a.hasPrefix("*.") else { return false }
        let suffix = a.dropFirst(1)
        return b != "*" && b.hasSuffix(suffix) && b.count > suffix.count
    }

    /// The virtual host for host `p[0..<n]` on gateway port `port`: an exact name, else the most
    /// specific wildcard; -1 when the port routes no such host.
    @inline(__always) func vhost(port: Int, _ p: UnsafePointer<UInt8>, _ n: Int) -> Int {
        guard let e = self.port(port) else { return -1 }
        let v = e.hosts.lookup(p, n)
        return v >= 0 ? v : GatewayTable.wildcardVHost(e.wildcards, p, n)
    }

    /// The virtual host of the most specific of `wildcards` (`.suffix`, or empty for `*`, most
    /// specific first) that takes `p[0..<n]`, or -1.
    @inline(__always) static func wildcardVHost(_ wildcards: [(suffix: [UInt8], vhost: Int)], _ p: UnsafePointer<UInt8>, _ n: Int) -> Int {
        for w in wildcards {
            let k = w.suffix.count
            if k == 0 { return w.vhost }
            if n <= k { continue }
            var same = true
            for i in 0..<k where w.suffix[i] != ASCII.lower(p[n - k + i]) { same = false; break }
            if same { return w.vhost }
        }
        return -1
    }

    /// The entry for `port`, or nil.
    func port(_ port: Int) -> Port? {
        for p in ports where p.port == port { return p }
        return nil
    }

    /// The tcp route of the first tls route on `port` whose SNI pattern takes the name at
    /// `p[off..<off+n]`, or -1.
    func sniRoute(_ entry: Port, _ p: UnsafeRawBufferPointer, _ off: Int, _ n: Int) -> Int {
        for r in entry.sniRoutes where r.matches(p, off, n) { return r.route }
        return -1
    }
}

extension TrafficCompiler {
    /// Compiles a gateway's servers and its tcp/tls routes (appended to `tcpRoutes`); nil for a
    /// sidecar. `outbound` is the listener settings HTTP ports start from.
    mutating func compileGateway(_ b: Bootstrap, outbound: ProxySnapshot.ListenerSettings?) throws -> GatewayTable? {
        guard b.gatewayMode, let base = outbound else { return nil }
        var ports: [GatewayTable.Port] = []
        var serverTLS = GatewayServerTLS(b)
        // Servers by port across the Gateways that select this proxy (servers sharing a port agree
        // on protocol and tls: BootstrapGateway refused the rest); each port takes the routes
        // bound to any Gateway serving it.
        var byPort: [Int: [(gateway: String, namespace: String, server: IstioGateway.Server)]] = [:]
        var order: [Int] = []
        for g in b.traffic.gateways {
            for s in g.servers {
                if byPort[s.port] == nil { order.append(s.port) }
                byPort[s.port, default: []].append(("\(g.namespace)/\(g.name)", g.namespace, s))
            }
        }
        for port in order {
            let list = byPort[port]!
            let s = list[0].server
            let kind: GatewayTable.Kind
            switch (s.proto, s.tls?.mode) {
            case (_, .passthrough?): kind = .passthrough
            case (.tcp, _): kind = .tcp
            case (_, .istioMutual?), (_, .simple?), (_, .mutual?): kind = .terminatedHTTP
            default: kind = .http
            }
            let settings = ProxySnapshot.ListenerSettings(address: base.address, headerTimeout: base.headerTimeout, idleTimeout: base.idleTimeout,
                                                          streamIdleTimeout: base.streamIdleTimeout, maxConnections: base.maxConnections,
                                                          httpsRedirect: s.tls?.httpsRedirect == true, gatewayPort: port)
            var sni: [GatewayTable.SNIRoute] = []
            var tcp = -1
            var done = Set<String>()
            for (key, _, _) in list where done.insert(key).inserted {
                // Istio: the routes of the VirtualServices bound to this Gateway, in order.
                for whole in b.gatewayRoutes {
                    guard let vs = whole.bound(.gateways([key])) else { continue }
                    if kind == .passthrough {
                        for (ti, t) in vs.tls.enumerated() {
                            let ms = t.match.filter { $0.port == nil || $0.port == port }
                            if ms.isEmpty { continue }
                            let r = addTCPRoute(b, vs, label: "\(vs.name).tls-\(ti)", t.route)
                            for m in ms {
                                let names = m.sniHosts.map { $0.lowercased() }
                                sni.append(.init(exact: names.filter { !$0.hasPrefix("*") }.map { Array($0.utf8) },
                                                 suffixes: names.filter { $0.hasPrefix("*.") }.map { Array($0.dropFirst().utf8) },
                                                 any: names.contains("*"), route: r))
                            }
                        }
                    } else if kind == .tcp && tcp < 0 {
                        for (ti, t) in vs.tcp.enumerated() where t.ports.isEmpty || t.ports.contains(port) {
                            tcp = addTCPRoute(b, vs, label: Bootstrap.tcpRouteLabel(vs, ti), t.route)
                            break
                        }
                    }
                }
            }
            // HTTP: the hosts of the VirtualServices bound to a Gateway serving this port that
            // the server hosts admit, each to its VirtualService's virtual host.
            var hostEntries: [(String, Int)] = []
            var wildcards: [(suffix: [UInt8], vhost: Int)] = []
            if kind == .http || kind == .terminatedHTTP {
                for vs in b.traffic.virtualServices {
                    let serving = list.filter { vs.bound(.gateways([$0.gateway])) != nil }
                    for h in vs.hosts {
                        let lower = h.lowercased()
                        guard let v = self.hostEntries.first(where: { $0.0 == lower })?.1 else { continue }
                        // Istio narrows a VirtualService host to the server host that admits it
                        // when that one is the narrower (`*` bound through `bookinfo.example`).
                        var names = Set<String>()
                        for item in serving {
                            for sh in item.server.hosts where sh.admits(vsHost: lower, vsNamespace: vs.namespace, gatewayNamespace: item.namespace) {
                                names.insert(GatewayTable.covers(sh.dnsName, lower) ? lower : sh.dnsName)
                            }
                        }
                        for n in names.sorted() {
                            if n.hasPrefix("*") {
                                wildcards.append((Array(n.dropFirst().utf8), v))
                            } else {
                                for e in Bootstrap.expandedHosts(n, namespace: vs.namespace) { hostEntries.append((e, v)) }
                            }
                        }
                    }
                }
                wildcards.sort { $0.suffix.count > $1.suffix.count }
            }
            ports.append(.init(port: port, kind: kind, settings: settings, sniRoutes: sni, tcpRoute: tcp,
                               serverTLS: kind == .terminatedHTTP ? try serverTLS.context(for: s, namespace: list[0].namespace) : nil,
                               hosts: HostTable(hostEntries), wildcards: wildcards,
                               credential: s.tls?.credentialName.map { GatewaySecrets.shared.absence("\(list[0].namespace)/\($0)", mutual: s.tls?.mode == .mutual) } ?? ""))
        }
        return GatewayTable(ports: ports.sorted { $0.port < $1.port }, listenHost: b.gatewayListenHost)
    }

    /// One gateway tcp or tls route as a TCP route of the snapshot; its index.
    private mutating func addTCPRoute(_ b: Bootstrap, _ vs: IstioTraffic.VirtualService, label: String,
                                      _ route: [IstioTraffic.RouteDestination]) -> Int {
        let (ts, cum) = weightedTargets(b, route, namespace: vs.namespace)
        let first = route[0].destination
        let svc = Self.service(first.host, vs.namespace)
        tcpRoutes.append(.init(cluster: b.clusterIndex(forHost: first.host, namespace: vs.namespace)!, label: label,
                               serviceFQDN: svc.fqdn, serviceName: svc.name, serviceNamespace: svc.ns, ports: [],
                               targets: ts, cumulativeWeights: cum))
        return tcpRoutes.count - 1
    }
}
