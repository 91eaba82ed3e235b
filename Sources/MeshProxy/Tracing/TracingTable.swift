import MeshConfig
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// Tracing compiled at snapshot time for the data path: whether it is on (a collector is
/// known), the sampling rate in parts per million, and every span attribute that does not
/// change per request already encoded as OTLP `KeyValue` fields (the workload's, per route,
/// per cluster), so building a span is copying bytes and writing the request's own values.
struct TracingTable: Sendable {
    /// A collector is known (the sidecar's flag or meshd's push): trace headers are rewritten
    /// and sampled spans recorded. Off: headers pass through unchanged.
    let enabled: Bool
    let endpoint: OTLPEndpoint?
    let export: TraceExportOptions
    /// Requests sampled when the caller did not decide, per million.
    let samplePPM: UInt64
    /// `disableSpanReporting`: headers are still propagated, nothing is recorded.
    let reportSpans: Bool
    /// Span attributes (field 9 of `Span`) of this workload: node_id, istio.*, literal and
    /// environment custom tags.
    let workloadAttributes: [UInt8]
    /// `route_name` per route index, `upstream_cluster` per cluster index (encoded fields).
    let routeAttributes: [[UInt8]]
    let clusterAttributes: [[UInt8]]
    /// `upstream_cluster` of requests without a cluster, `route_name` of inbound requests.
    let noCluster: [UInt8]
    let inboundRoute: [UInt8]
    /// Custom tags read from a request header (lowercase name) at span time.
    let headerTags: [(key: [UInt8], header: [UInt8], defaultValue: [UInt8]?)]
    /// The OTLP `Resource` message of this sidecar's spans (`service.name` is Istio's
    /// `<canonical service>.<namespace>`).
    let resource: [UInt8]

    init(_ b: Bootstrap, settings policy: TracingSettings, routes: [String], clusters: [String]) {
        endpoint = b.traceExport.endpoint ?? b.pushedOTLPEndpoint
        enabled = endpoint != nil
        export = b.traceExport
        let pct = policy.randomSamplingPercentage.isFinite ? min(max(policy.randomSamplingPercentage, 0), 100) : 1.0
        samplePPM = UInt64((pct * 10_000).rounded())
        reportSpans = !policy.disableSpanReporting
        let wl = b.workload
        func label(_ keys: [String]) -> String? {
            for k in keys { if let v = wl.labels.first(where: { $0.0 == k })?.1 { return v } }
            return nil
        }
        let service = label(["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"]) ?? wl.service
        let revision = label(["service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"]) ?? "latest"
        let mesh = b.tls?.trustDomain ?? "cluster.local"
        let ip = (b.inbound?.address ?? b.outbound?.address).map { a in
            a.text.hasPrefix("[") ? String(a.text.dropFirst().prefix { $0 != "]" }) : String(a.text.prefix { $0 != ":" })
        } ?? "127.0.0.1"
        var attrs: [(String, String)] = [
            ("node_id", "sidecar~\(ip)~\(wl.name).\(wl.namespace)~\(wl.namespace).svc.cluster.local"),
            ("istio.canonical_service", service), ("istio.canonical_revision", revision),
            ("istio.namespace", wl.namespace), ("istio.mesh_id", mesh), ("downstream_cluster", "-"),
        ]
        var headerTags: [(key: [UInt8], header: [UInt8], defaultValue: [UInt8]?)] = []
        for t in policy.customTags {
            switch t.source {
            case .literal(let v): attrs.append((t.name, v))
            case .environment(name: let n, defaultValue: let d):
                if let v = getenv(n) { attrs.append((t.name, String(cString: v))) } else if let d { attrs.append((t.name, d)) }
            case .header(name: let h, defaultValue: let d): headerTags.append((Array(t.name.utf8), Array(h.lowercased().utf8), d.map { Array($0.utf8) }))
            }
        }
        self.headerTags = headerTags
        workloadAttributes = attrs.flatMap { TracingTable.keyValue(9, $0.0, $0.1) }
        routeAttributes = routes.map { TracingTable.keyValue(9, "route_name", $0) }
        clusterAttributes = clusters.map { TracingTable.keyValue(9, "upstream_cluster", $0) }
        noCluster = TracingTable.keyValue(9, "upstream_cluster", "-")
        inboundRoute = TracingTable.keyValue(9, "route_name", "inbound")
        // Resource { attributes = 1 }.
        let res: [(String, String)] = [
            ("service.name", "\(service).\(wl.namespace)"), ("service.namespace", wl.namespace),
            ("service.instance.id", wl.name), ("telemetry.sdk.name", "swift-mesh"), ("istio.mesh_id", mesh),
        ]
        resource = res.flatMap { TracingTable.keyValue(1, $0.0, $0.1) }
    }

    /// A string `KeyValue` as field `field`, encoded (snapshot time).
    static func keyValue(_ field: Int, _ key: String, _ value: String) -> [UInt8] {
        let k = Array(key.utf8), v = Array(value.utf8)
        let size = ProtobufWriter.delimitedSize(field, ProtobufWriter.stringKeyValueSize(keyLength: k.count, valueLength: v.count))
        return ProtobufWriter.encode(capacity: size) { w in
            k.withUnsafeBufferPointer { kb in
                v.withUnsafeBufferPointer { vb in
                    w.stringKeyValue(field, key: kb.baseAddress ?? UnsafePointer(bitPattern: 1)!, kb.count,
                                     value: vb.baseAddress ?? UnsafePointer(bitPattern: 1)!, vb.count)
                }
            }
        } ?? []
    }
}
