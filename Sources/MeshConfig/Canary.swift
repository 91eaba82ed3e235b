import MeshCore

/// `apiVersion: mesh.io/v1alpha1`, `kind: Canary`: a canary that meshd's leader walks by itself
/// (DESIGN §13), with Flagger's `analysis` field names (docs/canary.md).
///
/// ```yaml
/// apiVersion: mesh.io/v1alpha1
/// kind: Canary
/// metadata: {name: reviews}
/// spec:
///   host: reviews                    # the DestinationRule's host
///   stable: v1                       # its subsets
///   canary: v2
///   virtualService: {name: reviews, route: canary}   # optional: default the one for the host
///   analysis:
///     interval: 2s
///     threshold: 2
///     stepWeight: 10                 # or stepWeights: [10, 20, 50]
///     maxWeight: 50
///     minRequests: 10
///     onNoData: hold                 # hold | fail | pass
///     metrics:
///     - {name: request-success-rate, interval: 4s, thresholdRange: {min: 99}}
///     - {name: request-duration, interval: 4s, thresholdRange: {max: 500}}
/// ```
///
/// This parser checks the document alone (the same code in meshd and the sidecar); how it fits
/// the DestinationRule and VirtualService in force is `Canary.check(in:)`, run at apply.
public struct Canary: Sendable, Equatable {
    public static let apiVersions = ["mesh.io/v1alpha1"]
    public static let kind = "Canary"

    /// Which VirtualService route the canary drives: by `http[].name`, or by index.
    public enum RouteRef: Sendable, Equatable {
        case name(String)
        case index(Int)
    }

    /// `spec.virtualService`: the VirtualService (in the Canary's namespace) and its route.
    public struct VirtualServiceRef: Sendable, Equatable {
        public var name: String
        public var route: RouteRef?
    }

    /// A built-in Flagger metric.
    public enum MetricName: String, Sendable, Equatable {
        /// Percent of the canary's requests not answered 5xx; `thresholdRange.min`.
        case requestSuccessRate = "request-success-rate"
        /// The canary's p99 request duration in milliseconds; `thresholdRange.max`.
        case requestDuration = "request-duration"
    }

    /// One `analysis.metrics[]` entry.
    public struct Metric: Sendable, Equatable {
        public var name: MetricName
        /// The query window (nanoseconds): counters are compared across it.
        public var interval: UInt64
        public var min: Double?
        public var max: Double?
    }

    /// What a check with fewer than `minRequests` canary requests counts as (RESEARCH §2).
    public enum OnNoData: String, Sendable, Equatable { case hold, fail, pass }

    /// `spec.analysis`.
    public struct Analysis: Sendable, Equatable {
        /// Nanoseconds between checks.
        public var interval: UInt64
        /// Failed checks that roll the canary back.
        public var threshold: Int
        /// The canary weights walked, in order; the last is `maxWeight`. With `iterations`, one
        /// weight (`maxWeight`) held for that many passing checks.
        public var steps: [Int]
        public var maxWeight: Int
        public var iterations: Int?
        public var metrics: [Metric]
        public var minRequests: Int
        public var onNoData: OnNoData
    }

    public var name: String
    public var namespace: String
    public var host: String
    public var stable: String
    public var canary: String
    public var virtualService: VirtualServiceRef?
    public var analysis: Analysis

    /// The smallest `analysis.interval` (checks scrape every sidecar once per interval).
    public static let minInterval: UInt64 = 500_000_000
    /// The most samples a metric's window may span (`metrics[].interval` / `analysis.interval`):
    /// the controller keeps that many scrapes of every sidecar in memory.
    public static let maxSamples = 720

    static func parse(_ spec: inout ConfigReader, name: String, namespace: String, ctx: ConfigError) throws(ConfigError) -> Canary {
        let host = try spec.string("host", required: true)!
        guard Names.isHost(host, wildcard: false) else {
            throw ConfigReader.error(ctx, spec.sub("host"), spec.map.line, "expected a lowercase host name such as reviews or reviews.default.svc.cluster.local, got \"\(host)\"")
        }
        let stable = try spec.string("stable", required: true)!
        let canary = try spec.string("canary", required: true)!
        if stable == canary {
            throw ConfigReader.error(ctx, spec.sub("canary"), spec.map.line, "must name another subset than stable (both are \"\(stable)\")")
        }
        var vsRef: VirtualServiceRef? = nil
        if var vs = try spec.object("virtualService") {
            let n = try vs.string("name", required: true)!
            guard Names.isObjectName(n) else {
                throw ConfigReader.error(ctx, vs.sub("name"), vs.map.line, "expected the name of a VirtualService in namespace \(namespace), got \"\(n)\"")
            }
            var route: RouteRef? = nil
            if let rn = vs.node("route") {
                guard case .scalar(let s) = rn, !s.value.isEmpty else {
                    throw ConfigReader.error(ctx, vs.sub("route"), rn.line, "expected an http[].name or an index into http[], got \(ConfigReader.describe(rn))")
                }
                if !s.quoted, let i = Int(s.value) {
                    guard i >= 0 && i < 1024 else { throw ConfigReader.error(ctx, vs.sub("route"), rn.line, "an index into http[] must be between 0 and 1023, got \(i)") }
                    route = .index(i)
                } else {
                    route = .name(s.value)
                }
            }
            try vs.finish()
            vsRef = VirtualServiceRef(name: n, route: route)
        }
        guard var a = try spec.object("analysis") else {
            throw ConfigReader.error(ctx, spec.sub("analysis"), spec.map.line, "required field is missing (interval, threshold, stepWeight or stepWeights, maxWeight, metrics)")
        }
        // Flagger fields this mesh does not do: refused by name, never dropped.
        for f in ["webhooks", "stepWeightPromotion", "match", "mirror", "mirrorWeight", "sessionAffinity", "primaryReadyThreshold", "canaryReadyThreshold", "alerts"] {
            try a.refuse(f)
        }
        for f in ["progressDeadlineSeconds", "skipAnalysis", "targetRef", "service", "autoscalerRef", "provider", "revertOnDeletion", "suspend"] { try spec.refuse(f) }
        guard let interval = try a.duration("interval", allowZero: false) else {
            throw ConfigReader.error(ctx, a.sub("interval"), a.map.line, "required field is missing (a duration such as 1m or 2s)")
        }
        if interval < minInterval {
            throw ConfigReader.error(ctx, a.sub("interval"), a.map.line, "must be at least 500ms (every check scrapes the host's sidecars), got \(interval / 1_000_000)ms")
        }
        // Flagger's default threshold is 1.
        let threshold = try a.int("threshold", min: 1, max: 1000) ?? 1
        let stepWeight = try a.int("stepWeight", min: 1, max: 100)
        let stepWeightsLine = a.map.entries.first { $0.key == "stepWeights" }?.keyLine ?? a.map.line
        let stepWeightsNode = a.node("stepWeights")
        let maxWeightLine = a.map.entries.first { $0.key == "maxWeight" }?.keyLine ?? a.map.line
        let maxWeight = try a.int("maxWeight", min: 1, max: 100)
        let iterations = try a.int("iterations", min: 1, max: 10000)
        var stepWeights: [Int]? = nil
        if let n = stepWeightsNode {
            guard case .sequence(let seq) = n, !seq.items.isEmpty else {
                throw ConfigReader.error(ctx, a.sub("stepWeights"), stepWeightsLine, "expected a non-empty list of weights such as [10, 20, 50], got \(ConfigReader.describe(n))")
            }
            var ws: [Int] = []
            for (i, item) in seq.items.enumerated() {
                guard case .scalar(let s) = item, !s.quoted, let w = Int(s.value) else {
                    throw ConfigReader.error(ctx, "\(a.sub("stepWeights"))[\(i)]", item.line, "expected an integer weight, got \(ConfigReader.describe(item))")
                }
                guard w >= 1 && w <= 100 else {
                    throw ConfigReader.error(ctx, "\(a.sub("stepWeights"))[\(i)]", item.line, "must be between 1 and 100, got \(w)")
                }
                if let last = ws.last, w <= last {
                    throw ConfigReader.error(ctx, "\(a.sub("stepWeights"))[\(i)]", item.line, "steps must increase: \(w) follows \(last)")
                }
                ws.append(w)
            }
            stepWeights = ws
        }
        var steps: [Int]
        var top: Int
        if let iterations {
            if stepWeight != nil || stepWeights != nil {
                throw ConfigReader.error(ctx, a.sub("iterations"), a.map.line, "a fixed-weight analysis (iterations) walks no steps: give stepWeight/stepWeights or iterations, not both")
            }
            guard let m = maxWeight else {
                throw ConfigReader.error(ctx, a.sub("maxWeight"), a.map.line, "required with iterations (the canary weight held for the \(iterations) checks)")
            }
            steps = [m]
            top = m
        } else if let ws = stepWeights {
            if stepWeight != nil {
                throw ConfigReader.error(ctx, a.sub("stepWeight"), a.map.line, "stepWeight and stepWeights cannot both be given")
            }
            if let m = maxWeight, m != ws.last! {
                throw ConfigReader.error(ctx, a.sub("stepWeights"), stepWeightsLine, "the steps never reach maxWeight \(m) (the last is \(ws.last!)): end the list with \(m), or leave maxWeight out")
            }
            steps = ws
            top = ws.last!
        } else if let s = stepWeight {
            guard let m = maxWeight else {
                throw ConfigReader.error(ctx, a.sub("maxWeight"), a.map.line, "required with stepWeight (the weight at which the canary is promoted)")
            }
            if m % s != 0 {
                throw ConfigReader.error(ctx, a.sub("maxWeight"), maxWeightLine, "steps of \(s) never reach maxWeight \(m) (\(m) is not a multiple of \(s)); use stepWeights for an uneven ladder")
            }
            steps = Array(stride(from: s, through: m, by: s))
            top = m
        } else {
            throw ConfigReader.error(ctx, a.sub("stepWeight"), a.map.line, "required field is missing (stepWeight with maxWeight, stepWeights, or iterations with maxWeight)")
        }
        let minRequests = try a.int("minRequests", min: 0, max: 1 << 30) ?? 1
        var onNoData = OnNoData.hold
        if let s = try a.string("onNoData") {
            guard let v = OnNoData(rawValue: s) else {
                throw ConfigReader.error(ctx, a.sub("onNoData"), a.map.line, "expected hold, fail or pass, got \"\(s)\"")
            }
            onNoData = v
        }
        guard let list = try a.objectList("metrics"), !list.isEmpty else {
            throw ConfigReader.error(ctx, a.sub("metrics"), a.map.line, "required field is missing (request-success-rate and/or request-duration)")
        }
        var metrics: [Metric] = []
        for var m in list {
            try m.refuse("templateRef")
            try m.refuse("query")
            let n = try m.string("name", required: true)!
            guard let mn = MetricName(rawValue: n) else {
                throw ConfigReader.error(ctx, m.sub("name"), m.map.line, "unknown metric \"\(n)\" (known: request-success-rate, request-duration)")
            }
            if metrics.contains(where: { $0.name == mn }) {
                throw ConfigReader.error(ctx, m.sub("name"), m.map.line, "\(n) is given twice")
            }
            // Flagger's default window is 1m; a window shorter than the checks' interval would
            // compare a sample with itself.
            let window = try m.duration("interval", allowZero: false) ?? max(60_000_000_000, interval)
            if window < interval {
                throw ConfigReader.error(ctx, m.sub("interval"), m.map.line, "must be at least analysis.interval (\(interval / 1_000_000)ms): counters are sampled once per interval")
            }
            if window / interval > UInt64(maxSamples) {
                throw ConfigReader.error(ctx, m.sub("interval"), m.map.line, "spans \(window / interval) checks of analysis.interval (\(interval / 1_000_000)ms); at most \(maxSamples) (the controller keeps one scrape per check in memory): shorten the window or lengthen analysis.interval")
            }
            guard var tr = try m.object("thresholdRange") else {
                throw ConfigReader.error(ctx, m.sub("thresholdRange"), m.map.line, "required field is missing (\(mn == .requestSuccessRate ? "min, in percent" : "max, in milliseconds"))")
            }
            let lo = try number(&tr, "min", ctx: ctx), hi = try number(&tr, "max", ctx: ctx)
            try tr.finish()
            switch mn {
            case .requestSuccessRate:
                if hi != nil { throw ConfigReader.error(ctx, tr.sub("max"), tr.map.line, "\(IstioTraffic.notSupported) for request-success-rate (a success rate has a min)") }
                guard let lo else { throw ConfigReader.error(ctx, tr.sub("min"), tr.map.line, "required field is missing (the lowest success rate, in percent)") }
                guard lo >= 0 && lo <= 100 else { throw ConfigReader.error(ctx, tr.sub("min"), tr.map.line, "a percentage must be between 0 and 100, got \(lo)") }
            case .requestDuration:
                if lo != nil { throw ConfigReader.error(ctx, tr.sub("min"), tr.map.line, "\(IstioTraffic.notSupported) for request-duration (a p99 has a max)") }
                guard let hi else { throw ConfigReader.error(ctx, tr.sub("max"), tr.map.line, "required field is missing (the highest p99, in milliseconds)") }
                guard hi > 0 else { throw ConfigReader.error(ctx, tr.sub("max"), tr.map.line, "must be greater than 0 milliseconds, got \(hi)") }
            }
            try m.finish()
            metrics.append(Metric(name: mn, interval: window, min: lo, max: hi))
        }
        try a.finish()
        try spec.finish()
        return Canary(name: name, namespace: namespace, host: host, stable: stable, canary: canary, virtualService: vsRef,
                      analysis: Analysis(interval: interval, threshold: threshold, steps: steps, maxWeight: top, iterations: iterations,
                                         metrics: metrics, minRequests: minRequests, onNoData: onNoData))
    }

    private static func number(_ r: inout ConfigReader, _ key: String, ctx: ConfigError) throws(ConfigError) -> Double? {
        guard let n = r.node(key) else { return nil }
        guard case .scalar(let s) = n, !s.quoted, let v = Double(s.value), v.isFinite else {
            throw ConfigReader.error(ctx, r.sub(key), n.line, "expected a number, got \(ConfigReader.describe(n))")
        }
        return v
    }
}
