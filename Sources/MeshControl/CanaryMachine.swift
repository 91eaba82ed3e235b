import MeshConfig
import MeshCore

/// The decisions of a canary run, apart from where figures come from and where weights go
/// (CanaryController.swift), so that tests drive them with an injected clock and figures.
public enum CanaryMachine {
    /// The outcome of one check.
    public enum Result: String, Sendable { case pass, fail, held }

    /// One check of every metric: its result, a line with the figures, and (failed) the
    /// failing metric with its value.
    public struct Verdict: Sendable {
        public var result: Result
        public var line: String
        public var failing: String?
    }

    static func pct(_ v: Double) -> String {
        let r = (v * 10).rounded() / 10
        return r == r.rounded() ? String(Int(r)) : String(r)
    }

    static func num(_ v: Double) -> String { v == v.rounded() && abs(v) < 1e15 ? String(Int(v)) : String((v * 10).rounded() / 10) }

    /// Judges the canary's figures against every metric (`figures(version, window)`); only the
    /// canary is judged (Flagger), the stable's figures are shown beside it.
    public static func judge(_ c: Canary, stableVersion: String, canaryVersion: String, step: String,
                             figures: (String, UInt64) -> CanaryFigures) -> Verdict {
        var parts: [String] = []
        var result = Result.pass
        var failing: String? = nil
        var held: String? = nil
        // minRequests counts the canary's requests in the latest analysis.interval (issue 21),
        // not over a metric's window: a window full of old traffic does not make a check.
        let requests = figures(canaryVersion, c.analysis.interval).requests
        let minimum = Double(max(c.analysis.minRequests, 1))
        for m in c.analysis.metrics {
            let f = figures(canaryVersion, m.interval), s = figures(stableVersion, m.interval)
            let stableNote: String
            var value: Double? = nil
            switch m.name {
            case .requestSuccessRate:
                value = f.successRate
                stableNote = s.successRate.map { "stable \(pct($0))%" } ?? "stable no requests"
            case .requestDuration:
                value = f.p99
                stableNote = s.p99.map { "stable \(num($0)) ms" } ?? "stable no requests"
            }
            let enough = requests >= minimum && value != nil
            let label = m.name == .requestSuccessRate ? "success" : "p99"
            guard enough, let v = value else {
                let why = value == nil && requests >= minimum
                    ? "\(label): no canary request ended in its window of \(m.interval / 1_000_000)ms"
                    : "\(label): \(num(requests)) canary request(s) in the last analysis.interval (\(c.analysis.interval / 1_000_000)ms), fewer than minRequests \(max(c.analysis.minRequests, 1))"
                parts.append("\(label) no data (\(num(f.requests)) requests; \(stableNote))")
                switch c.analysis.onNoData {
                case .hold: if result == .pass { result = .held }; held = held ?? why
                case .fail:
                    result = .fail
                    failing = failing ?? "\(why) (onNoData: fail)"
                case .pass: break
                }
                continue
            }
            switch m.name {
            case .requestSuccessRate:
                let ok = v >= m.min!
                parts.append("success \(pct(v))% (min \(num(m.min!))%; \(stableNote))")
                if !ok { result = .fail; failing = failing ?? "request-success-rate \(pct(v))% is below \(num(m.min!))%" }
            case .requestDuration:
                let ok = v <= m.max!
                parts.append("p99 \(num(v)) ms (max \(num(m.max!)) ms; \(stableNote))")
                if !ok { result = .fail; failing = failing ?? "request-duration p99 \(num(v)) ms is above \(num(m.max!)) ms" }
            }
        }
        var line = "\(step): " + parts.joined(separator: ", ") + ", \(num(requests)) requests"
        if result == .held, let h = held { line += " — held: \(h)" }
        return Verdict(result: result, line: line, failing: failing)
    }

    /// Starts (or restarts) a run: step 0, nothing failed; returns the weight to write.
    public static func start(_ c: Canary, _ s: inout CanaryStatus, specHash: String, now: Int64, why: String) -> Int {
        let keep = (s.events, s.passed, s.failed, s.held)
        s = CanaryStatus(namespace: c.namespace, name: c.name)
        (s.events, s.passed, s.failed, s.held) = keep
        s.specHash = specHash
        s.step = 0
        s.weight = c.analysis.steps[0]
        s.move(to: .progressing, now: now)
        s.message = "\(why): canary \(c.canary) at \(s.weight)%"
        s.event(s.message, now: now)
        return s.weight
    }

    /// Applies one check's verdict; returns the canary weight to write (nil: none).
    public static func apply(_ v: Verdict, _ c: Canary, _ s: inout CanaryStatus, now: Int64) -> Int? {
        s.check(v.line)
        switch v.result {
        case .held:
            s.held += 1
            s.message = v.line
            return nil
        case .fail:
            s.failed += 1
            s.failedChecks += 1
            if s.failedChecks >= c.analysis.threshold {
                s.weight = 0
                s.move(to: .failed, now: now)
                s.message = "rolled back to 100% \(c.stable) after \(s.failedChecks) failed check(s): \(v.failing ?? v.line)"
                s.event(s.message, now: now)
                return 0
            }
            s.message = "failed check \(s.failedChecks) of \(c.analysis.threshold): \(v.failing ?? v.line)"
            s.event(s.message, now: now)
            return nil
        case .pass:
            s.passed += 1
            let a = c.analysis
            if let n = a.iterations {
                s.iterations += 1
                if s.iterations < n {
                    s.message = v.line
                    return nil
                }
            } else if s.step + 1 < a.steps.count {
                s.step += 1
                s.weight = a.steps[s.step]
                s.message = v.line
                s.event("advanced canary \(c.canary) to \(s.weight)% (\(v.line))", now: now)
                return s.weight
            }
            s.weight = 100
            s.move(to: .succeeded, now: now)
            s.message = "promoted: canary \(c.canary) at 100% (\(v.line))"
            s.event(s.message, now: now)
            return 100
        }
    }
}
