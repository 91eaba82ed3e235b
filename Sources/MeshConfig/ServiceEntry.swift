import MeshCore

/// Istio's `networking.istio.io/v1` ServiceEntry and WorkloadEntry (DESIGN §3): services and
/// endpoints that have no sidecar of ours. meshd turns them into clusters: a MESH_INTERNAL
/// endpoint with a service account is reached over mutual TLS and must present that identity;
/// MESH_EXTERNAL endpoints are reached in plaintext unless a DestinationRule originates TLS
/// (IstioClientTLS.swift). STATIC, DNS or DNS_ROUND_ROBIN resolution. A port of protocol
/// TCP (or, without a protocol, named `tcp`/`tcp-*`) makes a TCP service: carried as bytes.
public struct ServiceEntry: Sendable {
    public struct Port: Sendable {
        public var number: Int; public var name: String; public var proto: String
        /// `targetPort`: the endpoints' port when an endpoint names none (Istio), e.g. port 80
        /// HTTP with targetPort 443 for TLS origination.
        public var targetPort: Int? = nil
    }
    public struct Endpoint: Sendable {
        public var address: String
        public var ports: [(String, Int)]
        public var labels: [(String, String)]
        public var serviceAccount: String?
    }
    public var name: String
    public var namespace: String
    public var hosts: [String]
    public var ports: [Port]
    public var meshInternal: Bool
    public var endpoints: [Endpoint]
    /// Labels of WorkloadEntries (same namespace) that join the endpoints.
    public var workloadSelector: [(String, String)]?
    /// `spec.addresses`: the host's virtual IPs (single IPv4/IPv6 addresses); empty: meshd
    /// allocates them (DESIGN §10 "DNS").
    public var addresses: [String] = []
    /// `spec.resolution`: STATIC (endpoints are IP addresses), DNS (every address the names
    /// resolve to is an endpoint) or DNS_ROUND_ROBIN (one address at a time: Envoy's
    /// LOGICAL_DNS); with DNS, endpoints may be names, and without endpoints the hosts are
    /// resolved. The sidecar resolves them (MeshProxy's EndpointResolver).
    public var resolution: String = "STATIC"

    static func parse(_ spec: inout ConfigReader, name: String, namespace: String, ctx: ConfigError) throws(ConfigError) -> ServiceEntry {
        guard let hosts = try spec.stringList("hosts"), !hosts.isEmpty else {
            throw ConfigReader.error(ctx, "spec.hosts", spec.map.line, "a ServiceEntry needs at least one host")
        }
        // Written whole into every sidecar's config: a short name would mean another service in
        // each namespace, so hosts are fully qualified (a dot), lowercase DNS names.
        for (i, h) in hosts.enumerated() where !Names.isHost(h, wildcard: false) || !h.contains(".") {
            throw ConfigReader.error(ctx, "spec.hosts[\(i)]", spec.map.line, "expected a fully qualified lowercase host name such as api.example.com, got \"\(h)\"")
        }
        var ports: [Port] = []
        for var p in try spec.objectList("ports") ?? [] {
            let n = try p.int("number", min: 1, max: 65535)
            guard let number = n else { throw ConfigReader.error(ctx, p.sub("number"), p.map.line, "required field is missing") }
            let pname = try p.string("name") ?? "port-\(number)"
            // Istio: `protocol` wins; without it the port's name declares one (`tcp`/`tcp-*`;
            // `http`, `http2`, `grpc` and their `-*` forms), and a name that declares none leaves
            // it to detection (AUTO: HTTP routes and TCP both reach it; captured connections are
            // told apart by their first bytes).
            let declared = ServiceEntry.protocolOfName(pname)
            let proto = try p.string("protocol") ?? declared ?? "AUTO"
            guard proto == "HTTP" || proto == "TCP" || (proto == "AUTO" && declared == nil && p.map["protocol"] == nil) else {
                throw ConfigReader.error(ctx, p.sub("protocol"), p.map.line, "expected HTTP (endpoints reached over HTTP/1.1) or TCP (carried as bytes), got \"\(proto)\"")
            }
            if !ports.isEmpty { throw ConfigReader.error(ctx, p.sub("number"), p.map.line, "a second port is not supported yet") }
            ports.append(Port(number: number, name: pname, proto: proto, targetPort: try p.int("targetPort", min: 1, max: 65535)))
            try p.finish()
        }
        if ports.isEmpty { throw ConfigReader.error(ctx, "spec.ports", spec.map.line, "a ServiceEntry needs a port") }
        let location = try spec.string("location") ?? "MESH_EXTERNAL"
        guard location == "MESH_EXTERNAL" || location == "MESH_INTERNAL" else {
            throw ConfigReader.error(ctx, "spec.location", spec.map.line, "expected MESH_INTERNAL or MESH_EXTERNAL, got \"\(location)\"")
        }
        let resolution = try spec.string("resolution") ?? "STATIC"
        guard ["STATIC", "DNS", "DNS_ROUND_ROBIN"].contains(resolution) else {
            throw ConfigReader.error(ctx, "spec.resolution", spec.map.entries.first { $0.key == "resolution" }?.keyLine ?? spec.map.line, "expected STATIC, DNS or DNS_ROUND_ROBIN (NONE is not supported yet), got \"\(resolution)\"")
        }
        var endpoints: [Endpoint] = []
        for var e in try spec.objectList("endpoints") ?? [] {
            let path = e.path, line = e.map.line
            let ep = try endpoint(&e, ctx: ctx, allowNames: resolution != "STATIC")
            for (pn, _) in ep.ports where !ports.contains(where: { $0.name == pn }) {
                throw ConfigReader.error(ctx, "\(path).ports.\(pn)", line, "no port of this ServiceEntry is named \"\(pn)\" (ports: \(ports.map(\.name).joined(separator: ", ")))")
            }
            endpoints.append(ep)
        }
        var selector: [(String, String)]? = nil
        if resolution != "STATIC", spec.map.entries.contains(where: { $0.key == "workloadSelector" }) {
            throw ConfigReader.error(ctx, "spec.workloadSelector", spec.map.entries.first { $0.key == "workloadSelector" }?.keyLine ?? spec.map.line, "with resolution \(resolution): \(IstioTraffic.notSupported) (WorkloadEntries have addresses: use STATIC)")
        }
        if var ws = try spec.object("workloadSelector") {
            selector = try ws.stringMap("labels") ?? []
            try ws.finish()
        }
        try spec.refuse("exportTo")
        let addresses = try spec.stringList("addresses") ?? []
        var itemLines: [Int] = []
        if case .sequence(let seq)? = spec.node("addresses") { itemLines = seq.items.map(\.line) }
        for (i, a) in addresses.enumerated() {
            let line = i < itemLines.count ? itemLines[i] : spec.map.line
            if a.contains("/") {
                throw ConfigReader.error(ctx, "spec.addresses[\(i)]", line, "CIDR ranges are not supported as addresses; give single IPv4 or IPv6 addresses, got \"\(a)\"")
            }
            guard !a.hasPrefix("["), SocketAddress(host: a, port: 1) != nil else {
                throw ConfigReader.error(ctx, "spec.addresses[\(i)]", line, "expected an IPv4 or IPv6 address, got \"\(a)\"")
            }
            if addresses[..<i].contains(a) { throw ConfigReader.error(ctx, "spec.addresses[\(i)]", line, "\(a) is given twice") }
        }
        if !addresses.isEmpty && hosts.count > 1 {
            throw ConfigReader.error(ctx, "spec.addresses", spec.map.line, "addresses with more than one host are not supported: each host needs addresses of its own (one ServiceEntry per host)")
        }
        try spec.finish()
        var se = ServiceEntry(name: name, namespace: namespace, hosts: hosts, ports: ports, meshInternal: location == "MESH_INTERNAL",
                              endpoints: endpoints, workloadSelector: selector)
        se.addresses = addresses
        se.resolution = resolution
        return se
    }

    /// The protocol a port's name declares (Istio's `<protocol>[-<suffix>]` convention), nil
    /// when it declares none.
    static func protocolOfName(_ name: String) -> String? {
        let head = name.split(separator: "-", maxSplits: 1).first.map(String.init) ?? name
        switch head {
        case "tcp": return "TCP"
        case "http", "http2", "grpc": return "HTTP"
        default: return nil
        }
    }

    static func endpoint(_ e: inout ConfigReader, ctx: ConfigError, allowNames: Bool = false) throws(ConfigError) -> Endpoint {
        let address = try e.string("address", required: true)!
        if SocketAddress(host: address, port: 1) == nil {
            // A DNS name is resolved by the sidecars (resolution DNS / DNS_ROUND_ROBIN).
            guard allowNames else {
                throw ConfigReader.error(ctx, e.sub("address"), e.map.line, "expected an IP address (DNS names need resolution: DNS), got \"\(address)\"")
            }
            guard Names.isHost(address, wildcard: false) else {
                throw ConfigReader.error(ctx, e.sub("address"), e.map.line, "expected an IP address or a lowercase DNS name, got \"\(address)\"")
            }
        }
        var ports: [(String, Int)] = []
        if var p = try e.object("ports") {
            for entry in p.map.entries {
                guard case .scalar(let s) = entry.value, let n = Int(s.value), n > 0, n < 65536 else {
                    throw ConfigReader.error(ctx, p.sub(entry.key), entry.keyLine, "expected a port number")
                }
                ports.append((entry.key, n))
            }
            p.markAllKnown()
            try p.finish()
        }
        let labels = try e.stringMap("labels") ?? []
        let sa = try e.string("serviceAccount")
        try e.refuse("network")
        try e.refuse("locality")
        try e.refuse("weight")
        try e.finish()
        return Endpoint(address: address, ports: ports, labels: labels, serviceAccount: sa)
    }
}

/// A WorkloadEntry: one endpoint without a sidecar, selected by a ServiceEntry's workloadSelector.
public struct WorkloadEntry: Sendable {
    public var name: String
    public var namespace: String
    public var endpoint: ServiceEntry.Endpoint

    static func parse(_ spec: inout ConfigReader, name: String, namespace: String, ctx: ConfigError) throws(ConfigError) -> WorkloadEntry {
        WorkloadEntry(name: name, namespace: namespace, endpoint: try ServiceEntry.endpoint(&spec, ctx: ctx))
    }
}
