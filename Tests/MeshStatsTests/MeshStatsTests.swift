import XCTest
@testable import MeshStats

final class MeshStatsTests: XCTestCase {
    func testLabelValuesAreEscaped() {
        XCTAssertEqual(PrometheusText.escape("plain"), "plain")
        XCTAssertEqual(PrometheusText.escape("a\"b"), "a\\\"b")
        XCTAssertEqual(PrometheusText.escape("a\\b"), "a\\\\b")
        XCTAssertEqual(PrometheusText.escape("a\nb"), "a\\nb")
        var p = PrometheusText()
        p.family("x_total", type: "counter", help: "h")
        p.sample("x_total", [("route", "vs.\"evil\"\n")], 3)
        XCTAssertEqual(p.text, "# HELP x_total h\n# TYPE x_total counter\nx_total{route=\"vs.\\\"evil\\\"\\n\"} 3\n")
    }

    func testSeriesAreCreatedOnceAndSummed() {
        let t = SeriesTable(slotsPerSeries: 2, capacity: 16)
        for i in 0..<10 { t.series(UInt64(i % 3))[0] += 1 }
        var seen: [UInt64: UInt64] = [:]
        t.forEach { k, s in seen[k] = s[0] }
        XCTAssertEqual(seen, [0: 4, 1: 3, 2: 3])
    }

    func testCardinalityIsBoundedByTheOverflowSeries() {
        let t = SeriesTable(slotsPerSeries: 1, capacity: 8)
        for i in 0..<100 { t.series(UInt64(i))[0] += 1 }
        XCTAssertEqual(t.seriesCount, 8)
        var overflow: UInt64 = 0, total: UInt64 = 0
        t.forEach { k, s in total += s[0]; if k == SeriesTable.overflowKey { overflow = s[0] } }
        XCTAssertEqual(total, 100)
        XCTAssertEqual(overflow, 93)
    }

    func testBuckets() {
        let b = Buckets.istioDurationMillis
        XCTAssertEqual(b.index(0), 0)
        XCTAssertEqual(b.index(500), 0)          // 0.5 ms, inclusive upper bound
        XCTAssertEqual(b.index(501), 1)
        XCTAssertEqual(b.index(UInt64.max), b.bounds.count)
        XCTAssertEqual(b.labels.first, "0.5")
        XCTAssertEqual(Buckets.istioBytes.labels, ["1", "10", "100", "1000", "10000", "100000", "1000000", "10000000", "100000000", "1000000000"])
    }
}
