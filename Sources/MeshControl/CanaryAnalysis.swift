import MeshConfig
import MeshCore

/// One scrape of the sidecars serving a canary's host, reduced to what its checks read: the
/// destination reporter's request counters and duration buckets for the stable and canary
/// versions, one value per sidecar and series.
public struct CanarySample: Sendable, Equatable {
    /// Monotonic nanoseconds.
    public var time: UInt64
    /// The sidecar admin addresses that answered (a series absent from an admin that answered
    /// did not exist yet: it starts at 0).
    public var admins: Set<String>
    /// Series key (`CanaryAnalysis.key`) -> value.
    public var values: [String: Double]
    /// The sidecars meshd knows (0: not counted) and how many of them were scraped (the others
    /// did not answer, or share an admin address with another: docs/canary.md, "Limits").
    public var sidecars = 0, scraped = 0

    public init(time: UInt64, admins: Set<String>, values: [String: Double]) {
        self.time = time
        self.admins = admins
        self.values = values
    }
}

/// One version's figures over a window.
public struct CanaryFigures: Sendable, Equatable {
    public var requests: Double
    /// Requests answered 5xx.
    public var errors: Double
    /// The 99th percentile of request durations (ms), nil when no request ended in the window.
    public var p99: Double?
    /// Percent of requests not answered 5xx (nil without requests).
    public var successRate: Double? { requests > 0 ? (requests - errors) * 100 / requests : nil }
}

/// The analysis math of the canary checks (RESEARCH §2.2, Flagger's Istio queries computed from
/// the sidecars' own counters rather than Prometheus): rates are counter increases over a window
/// of samples (a counter that went down was reset: its new value is the increase), summed over
/// sidecars; p99 is `histogram_quantile(0.99, sum by (le) (increase(bucket)))`.
public enum CanaryAnalysis {
    static let requests = "istio_requests_total"
    static let buckets = "istio_request_duration_milliseconds_bucket"

    /// A series key: admin, version, what it counts (`r` requests, `e` 5xx, `b` a bucket with its
    /// `le`), then the rest of the labels, so series of one sidecar stay apart.
    static func key(admin: String, version: String, kind: String, le: String, rest: String) -> String {
        "\(admin)\u{1}\(version)\u{1}\(kind)\u{1}\(le)\u{1}\(rest)"
    }

    /// Reduces scrapes to the series of `service`.`namespace` reported by its own (destination)
    /// sidecars for `versions`.
    public static func sample(time: UInt64, scrapes: [(admin: String, samples: [PrometheusSample])], service: String, namespace: String,
                              versions: Set<String>) -> CanarySample {
        var values: [String: Double] = [:]
        for (admin, samples) in scrapes {
            for s in samples where s.name == requests || s.name == buckets {
                guard s.labels["reporter"] == "destination", s.labels["destination_service_name"] == service,
                      s.labels["destination_service_namespace"] == namespace,
                      let v = s.labels["destination_version"], versions.contains(v) else { continue }
                let rest = s.labels.filter { $0.key != "le" }.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
                if s.name == requests {
                    values[key(admin: admin, version: v, kind: "r", le: "", rest: rest), default: 0] += s.value
                    if s.labels["response_code"]?.hasPrefix("5") == true {
                        values[key(admin: admin, version: v, kind: "e", le: "", rest: rest), default: 0] += s.value
                    }
                } else if let le = s.labels["le"] {
                    values[key(admin: admin, version: v, kind: "b", le: le, rest: rest), default: 0] += s.value
                }
            }
        }
        return CanarySample(time: time, admins: Set(scrapes.map(\.admin)), values: values)
    }

    /// The increase of every series from `a` to `b`: a counter that went down was reset (its
    /// value is the increase); a series new in `b` from an admin that answered in `a` started
    /// at 0; a sidecar absent from `a` has no baseline and counts from its next sample.
    static func increase(_ a: CanarySample, _ b: CanarySample) -> [String: Double] {
        var out: [String: Double] = [:]
        for (k, v) in b.values {
            let admin = String(k.prefix { $0 != "\u{1}" })
            guard a.admins.contains(admin) else { continue }
            let before = a.values[k] ?? 0
            out[k] = v >= before ? v - before : v
        }
        return out
    }

    /// The figures of `version` over the last `window` nanoseconds of `ring` (samples in time
    /// order): the increases between consecutive samples whose span lies in the window.
    public static func figures(_ ring: [CanarySample], version: String, window: UInt64) -> CanaryFigures {
        guard let last = ring.last else { return CanaryFigures(requests: 0, errors: 0, p99: nil) }
        // The window opens at the last sample taken at or before its start (checks are not
        // exactly periodic: a sample a little older than the window still opens it).
        let from = last.time >= window ? last.time - window : 0
        let start = ring.lastIndex { $0.time <= from } ?? 0
        let inWindow = Array(ring[start...])
        var req = 0.0, err = 0.0
        var bucket: [Double: Double] = [:]
        for (a, b) in zip(inWindow, inWindow.dropFirst()) {
            for (k, d) in increase(a, b) {
                let parts = k.split(separator: "\u{1}", omittingEmptySubsequences: false)
                guard parts.count >= 4, parts[1] == version else { continue }
                switch parts[2] {
                case "r": req += d
                case "e": err += d
                default: bucket[PrometheusSamples.bound(String(parts[3])), default: 0] += d
                }
            }
        }
        return CanaryFigures(requests: req, errors: err, p99: PrometheusSamples.quantile(0.99, [:], bucket))
    }
}
