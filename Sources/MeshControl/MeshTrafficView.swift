import MeshCore

/// One scrape of the sidecars' metrics: for each admin address that answered, when it answered
/// (monotonic nanoseconds: its deltas are divided by its own interval) and the series the web
/// page reads, reduced when the scrape is taken (`Sidecar.init(admin:at:samples:)`) to a compact
/// key -> value form (the families and labels `MeshTrafficView` uses, nothing else).
public struct MeshScrape: Sendable {
    /// One sidecar's answer.
    public struct Sidecar: Sendable {
        public var admin: String
        /// When its answer arrived (monotonic nanoseconds).
        public var at: UInt64
        /// `MeshTrafficView.reducedKey` -> value (series that reduce to one key are summed).
        public var series: [MeshTrafficView.SeriesKey: Double]
        /// `mesh_certificate_expiry_timestamp_seconds`, when it exports one.
        public var certificateExpiry: Int64?

        public init(admin: String, at: UInt64, samples: [PrometheusSample]) {
            self.admin = admin
            self.at = at
            var m: [MeshTrafficView.SeriesKey: Double] = [:]
            var expiry: Int64?
            for s in samples {
                if s.name == "mesh_certificate_expiry_timestamp_seconds" {
                    if expiry == nil { expiry = Int64(s.value) }
                    continue
                }
                if let k = MeshTrafficView.reducedKey(s) { m[k, default: 0] += s.value }
            }
            self.series = m
            self.certificateExpiry = expiry
        }
    }

    /// When the scrape finished (the page's window is the time between two).
    public var at: UInt64
    public var sidecars: [Sidecar]

    public init(at: UInt64, scraped: [Sidecar]) {
        self.at = at
        self.sidecars = scraped
    }

    /// Every sidecar answered at `at`.
    public init(at: UInt64, sidecars: [(admin: String, samples: [PrometheusSample])]) {
        self.init(at: at, scraped: sidecars.map { Sidecar(admin: $0.admin, at: at, samples: $0.samples) })
    }
}

/// The mesh's traffic between two scrapes (DESIGN §14, meshd's web page): edges between
/// services and their versions with requests/s, success rate, p50/p99 and whether the traffic is
/// mTLS, and per-route rows with the figures `meshctl top` prints. Every figure is a delta between
/// the two scrapes, per series, so a sidecar that restarted (its counters reset) or appeared in
/// between does not count its whole history as new traffic.
public struct MeshTrafficView: Sendable {
    /// A workload's side of an edge: service, namespace and version.
    public struct Node: Hashable, Comparable, Sendable {
        public var service: String
        public var namespace: String
        public var version: String
        public var id: String { "\(service).\(namespace) \(version)" }
        public static func < (a: Node, b: Node) -> Bool { (a.service, a.namespace, a.version) < (b.service, b.namespace, b.version) }
    }

    /// Requests, errors and latency buckets counted over the window.
    public struct Figures: Sendable {
        public var requests = 0.0
        public var errors = 0.0
        /// `le` bound -> cumulative count within the window.
        public var buckets: [Double: Double] = [:]
        /// TCP connections opened, and bytes both ways (opaque TCP and upgraded tunnels).
        public var connections = 0.0
        public var bytes = 0.0
        /// Whether anything was counted.
        public var any: Bool { requests > 0 || connections > 0 || bytes > 0 }

        /// Successful requests in percent (nil without requests).
        public var successPercent: Double? { requests > 0 ? 100 * (requests - errors) / requests : nil }
        public func quantile(_ q: Double) -> Double? { PrometheusSamples.quantile(q, [:], buckets) }
    }

    /// Traffic from one service version to another, as the calling sidecars report it: HTTP
    /// (and gRPC) requests, or TCP connections (`tcp`: an edge of its own).
    public struct Edge: Sendable {
        public var source: Node
        public var destination: Node
        public var tcp = false
        public var figures = Figures()
        /// What the receiving sidecars report of the connection (`connection_security_policy`
        /// of their `reporter="destination"` series): true for `mutual_tls`, false for `none`,
        /// nil when no receiving sidecar reported this traffic in the window.
        public var mtls: Bool?
    }

    /// A route row, keyed as `meshctl top` keys it (route, destination service, version).
    public struct RouteRow: Sendable {
        public var route: String
        public var service: String
        public var version: String
        public var figures = Figures()
    }

    /// The window's length in seconds (the time between the two scrapes).
    public var seconds: Double
    public var edges: [Edge] = []
    public var routes: [RouteRow] = []
    /// Each sidecar's certificate expiry (Unix seconds) from the later scrape, by admin address.
    public var certificateExpiry: [String: Int64] = [:]

    /// An error the way `meshctl top` counts one: a 5xx, or no response at all (code 0).
    static func isError(_ s: PrometheusSample) -> Bool {
        guard let c = s.labels["response_code"] else { return false }
        return c.hasPrefix("5") || c == "0"
    }

    /// The series the view reads: HTTP requests and their latency, TCP connections and bytes.
    static let http: Set<String> = ["istio_requests_total", "istio_request_duration_milliseconds_bucket"]
    static let tcp: Set<String> = ["istio_tcp_connections_opened_total", "istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total"]

    /// The source of a series: Istio's canonical service when the sidecar exports it, else the app.
    static func sourceNode(_ s: PrometheusSample) -> Node {
        Node(service: s.labels["source_canonical_service"] ?? s.labels["source_app"] ?? "unknown",
             namespace: s.labels["source_workload_namespace"] ?? "unknown",
             version: s.labels["source_version"] ?? "unknown")
    }

    static func destinationNode(_ s: PrometheusSample) -> Node {
        Node(service: s.labels["destination_service_name"] ?? "unknown",
             namespace: s.labels["destination_service_namespace"] ?? "unknown",
             version: s.labels["destination_version"] ?? "unknown")
    }

    /// What the view reads of a series: its family, reporter, both ends, and `route`, whether it
    /// is an error and `le` for the caller's HTTP series, or `connection_security_policy` for
    /// the receiver's (every other label is dropped; series that differ only there are summed).
    public struct SeriesKey: Hashable, Sendable {
        var name: String
        var destinationReporter: Bool
        var source: Node
        var destination: Node
        var route = ""
        var error = false
        var le = ""
        var mutualTLS = false
    }

    /// A sample reduced to its `SeriesKey`; nil for a series the view does not use.
    static func reducedKey(_ s: PrometheusSample) -> SeriesKey? {
        let bucket = s.name == "istio_request_duration_milliseconds_bucket"
        let tcp = MeshTrafficView.tcp.contains(s.name)
        guard tcp || MeshTrafficView.http.contains(s.name) else { return nil }
        var k = SeriesKey(name: s.name, destinationReporter: false, source: sourceNode(s), destination: destinationNode(s))
        switch s.labels["reporter"] {
        case "source" where tcp:
            break
        case "source":
            k.route = s.labels["route"] ?? "-"
            if bucket {
                guard let le = s.labels["le"] else { return nil }
                k.le = le
            } else {
                k.error = isError(s)
            }
        case "destination" where !bucket:
            guard let p = s.labels["connection_security_policy"], p == "mutual_tls" || p == "none" else { return nil }
            k.destinationReporter = true
            k.mutualTLS = p == "mutual_tls"
        default:
            return nil
        }
        return k
    }

    /// The view between `before` and `after` (nil when they are the same moment or out of order).
    /// Each sidecar's deltas are divided by its own interval (the time between its two answers)
    /// and given over the window `seconds`, so a slow scrape of the others does not skew its rates.
    public init?(before: MeshScrape, after: MeshScrape) {
        guard after.at > before.at else { return nil }
        seconds = Double(after.at - before.at) / 1e9
        var earlier: [String: MeshScrape.Sidecar] = [:]
        for s in before.sidecars { earlier[s.admin] = s }
        var edges: [String: Edge] = [:]
        var routes: [String: RouteRow] = [:]
        var security: [String: Bool] = [:]   // source id + destination id -> mutual TLS
        for sc in after.sidecars {
            if let e = sc.certificateExpiry { certificateExpiry[sc.admin] = e }
            // A sidecar the earlier scrape did not see: no window for it yet.
            guard let old = earlier[sc.admin], sc.at > old.at else { continue }
            let scale = seconds / (Double(sc.at - old.at) / 1e9)
            for (key, value) in sc.series {
                let prior = old.series[key] ?? 0
                // A counter that went down was reset (the sidecar restarted): all of it is new.
                let counted = value >= prior ? value - prior : value
                guard counted > 0 else { continue }
                let delta = counted * scale
                let tcp = MeshTrafficView.tcp.contains(key.name)
                let src = key.source, dst = key.destination
                let ek = (tcp ? "tcp\u{1}" : "http\u{1}") + src.id + "\u{1}" + dst.id
                if key.destinationReporter {
                    // Any plaintext request on the edge makes it not (only) mTLS.
                    security[ek] = (security[ek] ?? true) && key.mutualTLS
                } else if tcp {
                    if edges[ek] == nil { edges[ek] = Edge(source: src, destination: dst, tcp: true) }
                    if key.name == "istio_tcp_connections_opened_total" { edges[ek]!.figures.connections += delta } else { edges[ek]!.figures.bytes += delta }
                } else {
                    let rk = key.route + "\u{1}" + dst.service + "\u{1}" + dst.version
                    if edges[ek] == nil { edges[ek] = Edge(source: src, destination: dst) }
                    if routes[rk] == nil { routes[rk] = RouteRow(route: key.route, service: dst.service, version: dst.version) }
                    if key.name == "istio_request_duration_milliseconds_bucket" {
                        let b = PrometheusSamples.bound(key.le)
                        edges[ek]!.figures.buckets[b, default: 0] += delta
                        routes[rk]!.figures.buckets[b, default: 0] += delta
                    } else {
                        let err = key.error ? delta : 0
                        edges[ek]!.figures.requests += delta
                        edges[ek]!.figures.errors += err
                        routes[rk]!.figures.requests += delta
                        routes[rk]!.figures.errors += err
                    }
                }
            }
        }
        for (k, v) in security { edges[k]?.mtls = v }
        self.edges = edges.values.filter { $0.figures.any }
            .sorted { ($0.source, $0.destination, $0.tcp ? 1 : 0) < ($1.source, $1.destination, $1.tcp ? 1 : 0) }
        self.routes = routes.values.filter { $0.figures.requests > 0 }
            .sorted { ($0.route, $0.service, $0.version) < ($1.route, $1.service, $1.version) }
    }
}
