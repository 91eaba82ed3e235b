import Foundation
import XCTest
@testable import MeshConfig
@testable import MeshControl

/// The canary checks' math: counter increases over a window of samples (resets, sidecars coming
/// and going), the success rate and p99 — checked against `promtool test rules` evaluating
/// Flagger's own Istio queries (RESEARCH §2.2) on the same series.
final class CanaryAnalysisTests: XCTestCase {
    static let sec: UInt64 = 1_000_000_000

    /// Prometheus text of one sidecar for `reviews` version `v`: 200s, 503s and duration buckets.
    static func exposition(_ v: String, ok: Double, err: Double, buckets: [(String, Double)], service: String = "reviews", reporter: String = "destination") -> String {
        let l = "reporter=\"\(reporter)\",destination_service_name=\"\(service)\",destination_service_namespace=\"default\",destination_version=\"\(v)\",route=\"main\""
        var out = "istio_requests_total{\(l),response_code=\"200\"} \(ok)\nistio_requests_total{\(l),response_code=\"503\"} \(err)\n"
        for (le, c) in buckets { out += "istio_request_duration_milliseconds_bucket{\(l),le=\"\(le)\"} \(c)\n" }
        return out
    }

    // The series promtool evaluates below: 5 samples 1 s apart, a counter reset at the fourth.
    static let ok: [Double] = [0, 99, 198, 50, 149]
    static let err: [Double] = [0, 1, 2, 0, 1]
    static let le: [(String, [Double])] = [("5", [0, 10, 20, 30, 50]), ("10", [0, 20, 40, 60, 80]), ("50", [0, 25, 50, 75, 98]),
                                           ("100", [0, 25, 50, 75, 100]), ("+Inf", [0, 25, 50, 75, 100])]

    static func ring(admin: String = "a:1") -> [CanarySample] {
        (0..<5).map { i in
            let text = exposition("v2", ok: ok[i], err: err[i], buckets: le.map { ($0.0, $0.1[i]) })
                + exposition("v2", ok: 1000, err: 0, buckets: [], reporter: "source")          // the caller's view: not read
                + exposition("v2", ok: 1000, err: 1000, buckets: [], service: "ratings")       // another service: not read
            return CanaryAnalysis.sample(time: UInt64(i) * sec, scrapes: [(admin, PrometheusSamples.parse(text))], service: "reviews",
                                         namespace: "default", versions: ["v1", "v2"])
        }
    }

    func testIncreaseAcrossAResetAndPercentiles() {
        let f = CanaryAnalysis.figures(Self.ring(), version: "v2", window: 4 * Self.sec)
        // 99 + 99 + 50 (reset: the new value is the increase) + 99 ok, 1 + 1 + 0 + 1 errors.
        XCTAssertEqual(f.requests, 350)
        XCTAssertEqual(f.errors, 3)
        XCTAssertEqual(f.successRate!, 347.0 / 350 * 100, accuracy: 1e-9)
        XCTAssertEqual(f.p99!, 75, accuracy: 1e-9)
        // A shorter window sees only the last two increases.
        let g = CanaryAnalysis.figures(Self.ring(), version: "v2", window: 2 * Self.sec)
        XCTAssertEqual(g.requests, 150)
        XCTAssertEqual(g.errors, 1)
        // Another version has nothing.
        let v1 = CanaryAnalysis.figures(Self.ring(), version: "v1", window: 4 * Self.sec)
        XCTAssertEqual(v1.requests, 0)
        XCTAssertNil(v1.successRate)
        XCTAssertNil(v1.p99)
    }

    func testLateSamplesStillOpenTheWindow() {
        // Checks run a little late: samples 1.2 s apart, a 1 s window still spans the last pair.
        let r = (0..<3).map { i in
            CanaryAnalysis.sample(time: UInt64(i) * 1_200_000_000, scrapes: [("a:1", PrometheusSamples.parse(Self.exposition("v2", ok: Double(i) * 10, err: 0, buckets: [])))],
                                  service: "reviews", namespace: "default", versions: ["v2"])
        }
        XCTAssertEqual(CanaryAnalysis.figures(r, version: "v2", window: Self.sec).requests, 10)
        XCTAssertEqual(CanaryAnalysis.figures(r, version: "v2", window: 2 * Self.sec).requests, 20)
    }

    func testSidecarsComingAndGoing() {
        var r = Self.ring()
        // A second sidecar appears at the third sample with a long history: no baseline, so its
        // first sample counts nothing; from then on its increases count.
        for i in 2..<5 {
            let more = CanaryAnalysis.sample(time: 0, scrapes: [("b:2", PrometheusSamples.parse(Self.exposition("v2", ok: 5000 + Double(i) * 10, err: 0, buckets: [])))],
                                             service: "reviews", namespace: "default", versions: ["v2"])
            r[i].values.merge(more.values) { a, _ in a }
            r[i].admins.insert("b:2")
        }
        // The first sidecar misses the last scrape (it went away): no negative increase from it.
        r[4].values = r[4].values.filter { !$0.key.hasPrefix("a:1") }
        r[4].admins.remove("a:1")
        let f = CanaryAnalysis.figures(r, version: "v2", window: 4 * Self.sec)
        // Requests count every response code: 100 + 100 + 50 (the reset) from a, 10 + 10 from b.
        XCTAssertEqual(f.requests, 100 + 100 + 50 + 10 + 10)
        XCTAssertEqual(f.errors, 1 + 1)
        // A series new in an admin that answered before starts at 0 (its first requests count).
        let a = CanaryAnalysis.sample(time: 0, scrapes: [("c:3", [])], service: "reviews", namespace: "default", versions: ["v2"])
        let b = CanaryAnalysis.sample(time: Self.sec, scrapes: [("c:3", PrometheusSamples.parse(Self.exposition("v2", ok: 7, err: 2, buckets: [])))],
                                      service: "reviews", namespace: "default", versions: ["v2"])
        XCTAssertEqual(CanaryAnalysis.figures([a, b], version: "v2", window: Self.sec).requests, 9)
        XCTAssertEqual(CanaryAnalysis.figures([a, b], version: "v2", window: Self.sec).errors, 2)
    }

    /// Flagger's exact queries over the same series, evaluated by promtool (Prometheus's own
    /// engine), must give what meshd computes.
    func testMatchesPromtoolOnFlaggersQueries() throws {
        let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"].first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let promtool else { throw XCTSkip("promtool not installed (apt-get install prometheus)") }
        let f = CanaryAnalysis.figures(Self.ring(), version: "v2", window: 4 * Self.sec)
        let sel = "reporter=\"destination\",destination_workload=\"reviews-v2\",destination_workload_namespace=\"default\""
        var series = """
          - series: 'istio_requests_total{\(sel),response_code="200"}'
            values: '\(Self.ok.map { String(Int($0)) }.joined(separator: " "))'
          - series: 'istio_requests_total{\(sel),response_code="503"}'
            values: '\(Self.err.map { String(Int($0)) }.joined(separator: " "))'

        """
        for (le, v) in Self.le {
            series += "  - series: 'istio_request_duration_milliseconds_bucket{\(sel),le=\"\(le)\"}'\n    values: '\(v.map { String(Int($0)) }.joined(separator: " "))'\n"
        }
        let q = "reporter=\"destination\",destination_workload_namespace=\"default\",destination_workload=~\"reviews-v2\""
        let test = """
        rule_files: []
        evaluation_interval: 1s
        tests:
        - interval: 1s
          input_series:
        \(series)
          promql_expr_test:
          - expr: 'sum(rate(istio_requests_total{\(q),response_code!~"5.*"}[4s])) / sum(rate(istio_requests_total{\(q)}[4s])) * 100'
            eval_time: 4s
            exp_samples: [{value: \(f.successRate!)}]
          - expr: 'histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{\(q)}[4s])) by (le))'
            eval_time: 4s
            exp_samples: [{value: \(f.p99!)}]
        """
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("canary-promtool-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("test.yaml")
        try test.write(to: file, atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: promtool)
        p.arguments = ["test", "rules", file.path]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        p.waitUntilExit()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(p.terminationStatus, 0, "promtool disagrees:\n\(text)\n\(test)")
    }
}
