// meshctl top: per-route requests/s, success rate and latency, read from the sidecars' metrics.
import MeshControlWire
import MeshPKI
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// One sample of a Prometheus text exposition: series name, labels, value.
struct Sample {
    let name: String
    let labels: [String: String]
    let value: Double
}

/// Parses Prometheus text format lines (`name{a="b",...} value`), unescaping label values.
func parsePrometheus(_ text: String) -> [Sample] {
    var out: [Sample] = []
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
        if let v = rest.first.flatMap({ Double($0) }) { out.append(Sample(name: name, labels: labels, value: v)) }
    }
    return out
}

/// Per route and destination version, as the calling sidecars report them.
struct RouteStats {
    var requests = 0.0
    var errors = 0.0
    var buckets: [Double: Double] = [:]   // le -> cumulative count
}

func routeKey(_ s: Sample) -> String? {
    guard s.labels["reporter"] == "source", let route = s.labels["route"] else { return nil }
    return "\(route)\t\(s.labels["destination_service_name"] ?? "?")\t\(s.labels["destination_version"] ?? "unknown")"
}

func collect(_ admins: [String]) -> [String: RouteStats] {
    var out: [String: RouteStats] = [:]
    for a in admins {
        guard let addr = SocketAddress(a), let r = try? ControlClient.request(addr, context: nil, method: "GET", path: "/stats/prometheus", timeoutSeconds: 3),
              r.status == 200 else { continue }
        for s in parsePrometheus(r.body) {
            guard let k = routeKey(s) else { continue }
            if s.name == "istio_requests_total" {
                out[k, default: RouteStats()].requests += s.value
                if let c = s.labels["response_code"], c.hasPrefix("5") || c == "0" { out[k, default: RouteStats()].errors += s.value }
            } else if s.name == "istio_request_duration_milliseconds_bucket", let le = s.labels["le"] {
                let bound = le == "+Inf" ? Double.infinity : (Double(le) ?? .infinity)
                out[k, default: RouteStats()].buckets[bound, default: 0] += s.value
            }
        }
    }
    return out
}

/// The q-quantile from bucket-count deltas (linear within a bucket, as Prometheus does).
func quantile(_ q: Double, _ before: [Double: Double], _ after: [Double: Double]) -> Double? {
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

/// One `top` table over `interval` seconds.
func topTable(admins: [String], interval: Double) -> String {
    let before = collect(admins)
    usleep(UInt32(interval * 1_000_000))
    let after = collect(admins)
    var rows: [(String, String)] = []
    for (k, a) in after {
        let b = before[k] ?? RouteStats()
        let n = a.requests - b.requests
        if n <= 0 { continue }
        let errors = a.errors - b.errors
        let p50 = quantile(0.5, b.buckets, a.buckets).map { String(format1($0)) + " ms" } ?? "-"
        let p99 = quantile(0.99, b.buckets, a.buckets).map { String(format1($0)) + " ms" } ?? "-"
        let f = k.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
        let line = pad(f[0], 28) + pad(f[1], 14) + pad(f[2], 10) + pad(format1(n / interval), 10)
            + pad(format1(100 * (n - errors) / n) + "%", 10) + pad(p50, 12) + p99
        rows.append((k, line))
    }
    let head = pad("ROUTE", 28) + pad("SERVICE", 14) + pad("VERSION", 10) + pad("REQ/S", 10) + pad("SUCCESS", 10) + pad("P50", 12) + "P99"
    return ([head] + rows.sorted { $0.0 < $1.0 }.map(\.1)).joined(separator: "\n") + "\n"
}

func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }

func format1(_ v: Double) -> String {
    let r = (v * 10).rounded() / 10
    return r == r.rounded() ? String(Int(r)) : String(r)
}

/// The admin addresses of the sidecars meshd knows (connected ones).
func sidecarAdmins(_ proxies: String) -> [String] {
    proxies.split(separator: "\n").filter { $0.contains("\tconnected\t") }.compactMap { l in
        l.split(separator: "\t").first { $0.hasPrefix("admin ") }.map { String($0.dropFirst(6)) }.flatMap { $0 == "-" ? nil : $0 }
    }
}
