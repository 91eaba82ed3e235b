import MeshCore

/// One scrape of the sidecars' metrics at one moment: the samples of each admin address that
/// answered, and when (monotonic nanoseconds, for the rate's divisor).
public struct MeshScrape: Sendable {
    public var at: UInt64
    public var sidecars: [(admin: String, samples: [PrometheusSample])]

    public init(at: UInt64, sidecars: [(admin: String, samples: [PrometheusSample])]) {
        self.at = at
        self.sidecars = sidecars
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

    /// A series' identity within one sidecar's scrape: its name and labels in a stable order.
    static func seriesKey(_ s: PrometheusSample) -> String {
        var k = s.name
        for (n, v) in s.labels.sorted(by: { $0.key < $1.key }) { k += "\u{1}" + n + "\u{2}" + v }
        return k
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

    /// The view between `before` and `after` (nil when they are the same moment or out of order).
    public init?(before: MeshScrape, after: MeshScrape) {
        guard after.at > before.at else { return nil }
        seconds = Double(after.at - before.at) / 1e9
        var earlier: [String: [String: Double]] = [:]
        for (admin, samples) in before.sidecars {
            var m: [String: Double] = [:]
            for s in samples where MeshTrafficView.http.contains(s.name) || MeshTrafficView.tcp.contains(s.name) {
                m[MeshTrafficView.seriesKey(s)] = s.value
            }
            earlier[admin] = m
        }
        var edges: [String: Edge] = [:]
        var routes: [String: RouteRow] = [:]
        var security: [String: Bool] = [:]   // source id + destination id -> mutual TLS
        for (admin, samples) in after.sidecars {
            if let e = samples.first(where: { $0.name == "mesh_certificate_expiry_timestamp_seconds" }) {
                certificateExpiry[admin] = Int64(e.value)
            }
            // A sidecar the earlier scrape did not see: no window for it yet.
            guard let old = earlier[admin] else { continue }
            for s in samples {
                let bucket = s.name == "istio_request_duration_milliseconds_bucket"
                let tcp = MeshTrafficView.tcp.contains(s.name)
                guard tcp || MeshTrafficView.http.contains(s.name) else { continue }
                let prior = old[MeshTrafficView.seriesKey(s)] ?? 0
                // A counter that went down was reset (the sidecar restarted): all of it is new.
                let delta = s.value >= prior ? s.value - prior : s.value
                guard delta > 0 else { continue }
                let src = MeshTrafficView.sourceNode(s), dst = MeshTrafficView.destinationNode(s)
                let ek = (tcp ? "tcp\u{1}" : "http\u{1}") + src.id + "\u{1}" + dst.id
                switch s.labels["reporter"] {
                case "source" where tcp:
                    if edges[ek] == nil { edges[ek] = Edge(source: src, destination: dst, tcp: true) }
                    if s.name == "istio_tcp_connections_opened_total" { edges[ek]!.figures.connections += delta } else { edges[ek]!.figures.bytes += delta }
                case "source":
                    let route = s.labels["route"] ?? "-"
                    let rk = route + "\u{1}" + dst.service + "\u{1}" + dst.version
                    if edges[ek] == nil { edges[ek] = Edge(source: src, destination: dst) }
                    if routes[rk] == nil { routes[rk] = RouteRow(route: route, service: dst.service, version: dst.version) }
                    if bucket {
                        guard let le = s.labels["le"] else { continue }
                        let b = PrometheusSamples.bound(le)
                        edges[ek]!.figures.buckets[b, default: 0] += delta
                        routes[rk]!.figures.buckets[b, default: 0] += delta
                    } else {
                        let err = MeshTrafficView.isError(s) ? delta : 0
                        edges[ek]!.figures.requests += delta
                        edges[ek]!.figures.errors += err
                        routes[rk]!.figures.requests += delta
                        routes[rk]!.figures.errors += err
                    }
                case "destination" where !bucket:
                    guard let p = s.labels["connection_security_policy"], p == "mutual_tls" || p == "none" else { continue }
                    // Any plaintext request on the edge makes it not (only) mTLS.
                    security[ek] = (security[ek] ?? true) && p == "mutual_tls"
                default:
                    continue
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
