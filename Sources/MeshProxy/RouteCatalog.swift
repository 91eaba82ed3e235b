import Synchronization

/// Process-wide ids for route labels, stable across config snapshots: request metrics key their
/// series by this id (16 bits), so a series keeps its `route` label when a new config reorders
/// or adds routes. Control path only (snapshot compilation and scrapes); bounded.
final class RouteCatalog: Sendable {
    struct Entry: Sendable {
        var label: String
        var serviceFQDN: String
        var serviceName: String
        var serviceNamespace: String
    }

    static let shared = RouteCatalog()
    /// Ids 0..<capacity; the top of the 16-bit space holds MetricKey's special values.
    static let capacity = 0xFFF0
    /// Routes beyond the capacity share this id (label "overflow").
    static let overflowID = 0xFFFD

    private let state = Mutex<(ids: [String: Int], entries: [Entry])>(([:], []))

    /// The id of `label`, registering it (and refreshing its service labels) as needed.
    func id(label: String, serviceFQDN: String, serviceName: String, serviceNamespace: String) -> Int {
        state.withLock { s in
            let e = Entry(label: label, serviceFQDN: serviceFQDN, serviceName: serviceName, serviceNamespace: serviceNamespace)
            if let i = s.ids[label] { s.entries[i] = e; return i }
            if s.entries.count >= RouteCatalog.capacity { return RouteCatalog.overflowID }
            s.ids[label] = s.entries.count
            s.entries.append(e)
            return s.entries.count - 1
        }
    }

    func entry(_ id: Int) -> Entry? {
        state.withLock { s in id < s.entries.count ? s.entries[id] : nil }
    }
}

extension RouteCatalog {
    /// The pseudo-services of captured connections to destinations outside the mesh, named as
    /// Istio names them in metrics: passed through (ALLOW_ANY) or refused (REGISTRY_ONLY).
    static let passthroughID = shared.id(label: "PassthroughCluster", serviceFQDN: "PassthroughCluster",
                                         serviceName: "PassthroughCluster", serviceNamespace: "unknown")
    static let blackHoleID = shared.id(label: "BlackHoleCluster", serviceFQDN: "BlackHoleCluster",
                                       serviceName: "BlackHoleCluster", serviceNamespace: "unknown")
}
