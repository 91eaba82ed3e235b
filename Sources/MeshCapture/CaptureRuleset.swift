/// The capture rules for one address family, as `iptables-restore --noflush` input: pure, the
/// same text `print` shows and `apply` feeds. The order follows Istio's istio-iptables (REDIRECT
/// mode): see docs/capture.md for each rule and why it sits where it does.
public enum CaptureRuleset {
    /// The chains the capture owns (created, flushed and deleted by it, nothing else).
    public static let chains = ["MESH_INBOUND", "MESH_IN_REDIRECT", "MESH_OUTPUT", "MESH_REDIRECT"]
    /// The jumps from the built-in chains into the owned ones, as iptables-save prints them.
    public static let jumps = ["-A PREROUTING -p tcp -j MESH_INBOUND", "-A OUTPUT -j MESH_OUTPUT"]
    /// iptables' multiport match takes at most 15 ports.
    static let multiportLimit = 15

    /// The ruleset for `family`. `omitJumps`: the jump lines already present (apply leaves them
    /// out, so a second apply does not add a second jump; `print` shows them all).
    public static func render(_ o: CaptureOptions, _ family: IPFamily, omitJumps: Set<String> = []) -> String {
        let v6 = family == .ipv6
        let passthroughSource = v6 ? "::6/128" : "127.0.0.6/32"
        let loopback = v6 ? "::1/128" : "127.0.0.1/32"
        var out = ["# meshctl capture: \(family.name) rules for \(v6 ? "ip6tables" : "iptables")-restore --noflush", "*nat"]
        for c in chains { out.append(":\(c) - [0:0]") }
        func add(_ chain: String, _ rule: String) { out.append("-A \(chain) \(rule)") }

        add("MESH_REDIRECT", "-p tcp -j REDIRECT --to-ports \(o.outboundPort)")
        add("MESH_IN_REDIRECT", "-p tcp -j REDIRECT --to-ports \(o.inboundPort)")

        // Inbound: the sidecar's own ports, then the excluded ones, pass; then the capture.
        for m in portMatches(o.ownPorts) { add("MESH_INBOUND", "-p tcp \(m) -j RETURN") }
        for m in portMatches(o.excludeInboundPorts) { add("MESH_INBOUND", "-p tcp \(m) -j RETURN") }
        switch o.includeInboundPorts {
        case .all: add("MESH_INBOUND", "-p tcp -j MESH_IN_REDIRECT")
        case .ports(let list): for p in list { add("MESH_INBOUND", "-p tcp --dport \(p) -j MESH_IN_REDIRECT") }
        }

        // Outbound, in Istio's order.
        for m in portMatches(o.excludeOutboundPorts) {
            add("MESH_OUTPUT", "-p tcp \(m) -j RETURN")
            add("MESH_OUTPUT", "-p udp \(m) -j RETURN")
        }
        add("MESH_OUTPUT", "-o lo -s \(passthroughSource) -j RETURN")
        if o.dns {
            for proto in ["udp", "tcp"] {
                add("MESH_OUTPUT", "-p \(proto) --dport 53 -m owner --uid-owner \(o.proxyUID) -j RETURN")
                add("MESH_OUTPUT", "-p \(proto) --dport 53 -m owner --gid-owner \(o.proxyGID) -j RETURN")
                add("MESH_OUTPUT", "-p \(proto) --dport 53 -j REDIRECT --to-ports \(o.dnsPort)")
            }
        }
        for (kind, id) in [("uid", o.proxyUID), ("gid", o.proxyGID)] {
            // Not the inbound port itself: a sidecar calling its own service connects to its
            // inbound listener's address directly (the REDIRECT would send it to loopback, where
            // that listener may not be bound), as Istio leaves its tunnel port alone.
            add("MESH_OUTPUT", "-o lo ! -d \(loopback) -p tcp ! --dport \(o.inboundPort) -m owner --\(kind)-owner \(id) -j MESH_IN_REDIRECT")
            add("MESH_OUTPUT", "-o lo -m owner ! --\(kind)-owner \(id) -j RETURN")
            add("MESH_OUTPUT", "-m owner --\(kind)-owner \(id) -j RETURN")
        }
        add("MESH_OUTPUT", "-d \(loopback) -j RETURN")
        for c in o.excludeOutboundCIDRs where c.family == family { add("MESH_OUTPUT", "-d \(c.text) -j RETURN") }
        switch o.includeOutboundCIDRs {
        case .all: add("MESH_OUTPUT", "-j MESH_REDIRECT")
        case .networks(let list): for c in list where c.family == family { add("MESH_OUTPUT", "-d \(c.text) -j MESH_REDIRECT") }
        }

        for j in jumps where !omitJumps.contains(j) { out.append(j) }
        out.append("COMMIT")
        return out.joined(separator: "\n") + "\n"
    }

    /// What `print` writes: both families, each marked by its comment line.
    public static func renderAll(_ o: CaptureOptions) -> String {
        IPFamily.allCases.map { render(o, $0) }.joined()
    }

    /// `--dport P`, or `-m multiport --dports P,P,...` in groups of at most 15.
    static func portMatches(_ ports: [Int]) -> [String] {
        var out: [String] = []
        var i = 0
        while i < ports.count {
            let group = ports[i..<min(ports.count, i + multiportLimit)]
            out.append(group.count == 1 ? "--dport \(group.first!)" : "-m multiport --dports \(group.map(String.init).joined(separator: ","))")
            i += multiportLimit
        }
        return out
    }
}
