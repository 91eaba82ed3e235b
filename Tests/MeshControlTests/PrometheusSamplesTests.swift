import XCTest
@testable import MeshControl

/// The Prometheus text reader and the quantile estimate `meshctl top`, the web page and canary
/// checks share.
final class PrometheusSamplesTests: XCTestCase {
    func testParsesLabelsEscapesAndSkipsComments() {
        let text = """
        # HELP istio_requests_total x
        # TYPE istio_requests_total counter
        istio_requests_total{reporter="source",route="a\\"b",path="x\\ny"} 12
        up 1
        broken{a="b"} notanumber
        """
        let s = PrometheusSamples.parse(text)
        XCTAssertEqual(s.count, 2)
        XCTAssertEqual(s[0].name, "istio_requests_total")
        XCTAssertEqual(s[0].labels, ["reporter": "source", "route": "a\"b", "path": "x\ny"])
        XCTAssertEqual(s[0].value, 12)
        XCTAssertEqual(s[1].name, "up")
        XCTAssertEqual(s[1].labels, [:])
    }

    func testQuantileInterpolatesWithinTheBucketOfTheDelta() {
        let before: [Double: Double] = [10: 100, 20: 100, .infinity: 100]
        // 100 new observations: 50 under 10 ms, 50 between 10 and 20 ms.
        let after: [Double: Double] = [10: 150, 20: 200, .infinity: 200]
        XCTAssertEqual(PrometheusSamples.quantile(0.5, before, after)!, 10, accuracy: 1e-9)
        XCTAssertEqual(PrometheusSamples.quantile(0.99, before, after)!, 19.8, accuracy: 1e-9)
        XCTAssertNil(PrometheusSamples.quantile(0.99, after, after))
        // Everything above the last finite bound: the bound is the answer.
        XCTAssertEqual(PrometheusSamples.quantile(0.99, [10: 0, .infinity: 0], [10: 0, .infinity: 5]), 10)
        XCTAssertEqual(PrometheusSamples.bound("+Inf"), .infinity)
        XCTAssertEqual(PrometheusSamples.bound("2.5"), 2.5)
    }
}
