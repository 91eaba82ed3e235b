import MeshCore

/// Clusters whose endpoints are DNS names (ServiceEntry `resolution: DNS` / `DNS_ROUND_ROBIN`,
/// as meshd renders them, or written in a static file): `resolution` and `dnsEndpoints` of a
/// cluster. The sidecar resolves the names off its worker loops and puts the addresses in the
/// snapshot (MeshProxy's EndpointResolver); the parser only checks their shape.
extension Bootstrap {
    /// How a cluster's endpoints are found: as written (STATIC), every address of the names
    /// (DNS), or the first address of each name's latest answer (DNS_ROUND_ROBIN, Envoy's
    /// LOGICAL_DNS).
    public enum Resolution: String, Sendable { case `static` = "STATIC", dns = "DNS", dnsRoundRobin = "DNS_ROUND_ROBIN" }

    /// One name to resolve, the port its addresses are reached on, and the labels they carry.
    public struct DNSEndpoint: Sendable, Equatable {
        public var host: String
        public var port: Int
        public var labels: [String]   // "key=value", for Equatable
        public var labelPairs: [(String, String)] { labels.map { l in let i = l.firstIndex(of: "=")!; return (String(l[..<i]), String(l[l.index(after: i)...])) } }
    }

    /// `resolution` and `dnsEndpoints` of one cluster (in `spec.clusters` or a pushed config).
    static func parseDNSEndpoints(_ c: inout ConfigReader, ctx: ConfigError) throws(ConfigError) -> (Resolution, [DNSEndpoint]) {
        let text = try c.string("resolution") ?? "STATIC"
        guard let res = Resolution(rawValue: text) else {
            throw ConfigReader.error(ctx, c.sub("resolution"), c.map.line, "expected STATIC, DNS or DNS_ROUND_ROBIN, got \"\(text)\"")
        }
        var out: [DNSEndpoint] = []
        for var e in try c.objectList("dnsEndpoints") ?? [] {
            let host = try e.string("host", required: true)!
            guard Names.isHost(host, wildcard: false), SocketAddress(host: host, port: 1) == nil else {
                throw ConfigReader.error(ctx, e.sub("host"), e.map.line, "expected a lowercase DNS name such as api.example.com, got \"\(host)\"")
            }
            guard let port = try e.int("port", min: 1, max: 65535) else {
                throw ConfigReader.error(ctx, e.sub("port"), e.map.line, "required field is missing")
            }
            let labels = (try e.stringMap("labels") ?? []).map { "\($0.0)=\($0.1)" }
            try e.finish()
            out.append(DNSEndpoint(host: host, port: port, labels: labels))
        }
        if res == .static && !out.isEmpty {
            throw ConfigReader.error(ctx, c.sub("dnsEndpoints"), c.map.line, "names need resolution: DNS or DNS_ROUND_ROBIN")
        }
        if res != .static && out.isEmpty {
            throw ConfigReader.error(ctx, c.sub("dnsEndpoints"), c.map.line, "resolution \(res.rawValue) needs at least one name to resolve (dnsEndpoints)")
        }
        return (res, out)
    }
}
