import MeshControlWire
import MeshCore

/// One sample of a Prometheus text exposition: series name, labels, value.
public struct PrometheusSample: Sendable {
    public let name: String
    public let labels: [String: String]
    public let value: Double

    public init(name: String, labels: [String: String], value: Double) {
        self.name = name
        self.labels = labels
        self.value = value
    }
}

/// Reading the sidecars' own metrics (DESIGN §6) from outside them: `meshctl top`, meshd's web
/// page and its canary checks all start from the same samples.
public enum PrometheusSamples {
    /// Parses Prometheus text format lines (`name{a="b",...} value`), unescaping label values.
    /// Comment lines and lines without a numeric value are skipped.
    public static func parse(_ text: String) -> [PrometheusSample] {
        var out: [PrometheusSample] = []
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let l = Array(line.utf8)
            var i = 0
            while i < l.count && l[i] != UInt8(ascii: "{") && l[i] != UInt8(ascii: " ") { i += 1 }
            let name = String(decoding: l[0..<i], as: UTF8.self)
            var labels: [String: String] = [:]
            if i < l.count && l[i] == UInt8(ascii: "{") {
                i += 1
                while i < l.count && l[i] != UInt8(ascii: "}") {
                    var k = i
                    while k < l.count && l[k] != UInt8(ascii: "=") { k += 1 }
                    let key = String(decoding: l[i..<k], as: UTF8.self)
                    k += 2   // ="
                    var v: [UInt8] = []
                    while k < l.count && l[k] != UInt8(ascii: "\"") {
                        if l[k] == UInt8(ascii: "\\"), k + 1 < l.count { k += 1; v.append(l[k] == UInt8(ascii: "n") ? 10 : l[k]) } else { v.append(l[k]) }
                        k += 1
                    }
                    labels[key] = String(decoding: v, as: UTF8.self)
                    i = k + 1
                    if i < l.count && l[i] == UInt8(ascii: ",") { i += 1 }
                }
                i += 1
            }
            let rest = String(decoding: l[min(i, l.count)...], as: UTF8.self).split(separator: " ")
            if let v = rest.first.flatMap({ Double($0) }) { out.append(PrometheusSample(name: name, labels: labels, value: v)) }
        }
        return out
    }

    /// The q-quantile from histogram bucket-count deltas (`le` bound -> cumulative count, before
    /// and after), linear within a bucket as Prometheus's `histogram_quantile` is; nil when no
    /// observation fell between the two.
    public static func quantile(_ q: Double, _ before: [Double: Double], _ after: [Double: Double]) -> Double? {
        let bounds = after.keys.sorted()
        let counts = bounds.map { (after[$0] ?? 0) - (before[$0] ?? 0) }
        guard let total = counts.last, total > 0 else { return nil }
        let rank = q * total
        var prevBound = 0.0, prevCount = 0.0
        for (b, c) in zip(bounds, counts) {
            if c >= rank {
                if b.isInfinite { return prevBound }
                return prevBound + (b - prevBound) * (c - prevCount > 0 ? (rank - prevCount) / (c - prevCount) : 0)
            }
            prevBound = b
            prevCount = c
        }
        return prevBound
    }

    /// An `le` label as a bound (`+Inf` is infinity).
    public static func bound(_ le: String) -> Double { le == "+Inf" ? .infinity : (Double(le) ?? .infinity) }

    /// The samples of each sidecar admin address (`HOST:PORT`) that answered `GET /stats/prometheus`
    /// within `timeoutSeconds`; the ones that did not are left out (a sidecar going away is normal).
    public static func scrape(_ admins: [String], timeoutSeconds: Int = 3) -> [(admin: String, samples: [PrometheusSample])] {
        var out: [(admin: String, samples: [PrometheusSample])] = []
        for a in admins {
            guard let addr = SocketAddress(a),
                  let r = try? ControlClient.request(addr, context: nil, method: "GET", path: "/stats/prometheus", timeoutSeconds: timeoutSeconds),
                  r.status == 200 else { continue }
            out.append((a, parse(r.body)))
        }
        return out
    }
}
