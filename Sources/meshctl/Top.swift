// meshctl top: per-route requests/s, success rate and latency, read from the sidecars' metrics.
import MeshControl
import MeshControlWire
import MeshPKI
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// Per route and destination version, as the calling sidecars report them.
struct RouteStats {
    var requests = 0.0
    var errors = 0.0
    var buckets: [Double: Double] = [:]   // le -> cumulative count
}

func routeKey(_ s: PrometheusSample) -> String? {
    guard s.labels["reporter"] == "source", let route = s.labels["route"] else { return nil }
    return "\(route)\t\(s.labels["destination_service_name"] ?? "?")\t\(s.labels["destination_version"] ?? "unknown")"
}

func collect(_ admins: [String]) -> [String: RouteStats] {
    var out: [String: RouteStats] = [:]
    for (_, samples) in PrometheusSamples.scrape(admins) {
        for s in samples {
            guard let k = routeKey(s) else { continue }
            if s.name == "istio_requests_total" {
                out[k, default: RouteStats()].requests += s.value
                if let c = s.labels["response_code"], c.hasPrefix("5") || c == "0" { out[k, default: RouteStats()].errors += s.value }
            } else if s.name == "istio_request_duration_milliseconds_bucket", let le = s.labels["le"] {
                out[k, default: RouteStats()].buckets[PrometheusSamples.bound(le), default: 0] += s.value
            }
        }
    }
    return out
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
        let p50 = PrometheusSamples.quantile(0.5, b.buckets, a.buckets).map { String(format1($0)) + " ms" } ?? "-"
        let p99 = PrometheusSamples.quantile(0.99, b.buckets, a.buckets).map { String(format1($0)) + " ms" } ?? "-"
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
