import XCTest
@testable import MeshProxy

/// The exchange's deadlines with a fake clock (plain numbers): which one applies, which expired.
final class ExchangeDeadlinesTests: XCTestCase {
    func testNothingSetMeansNoDeadline() {
        let d = ExchangeDeadlines()
        XCTAssertEqual(d.next(responseStarted: false), 0)
        XCTAssertEqual(d.expired(now: .max, responseStarted: false), .none)
    }

    func testEarliestApplies() {
        var d = ExchangeDeadlines()
        d.route = 1_000
        d.attempt = 400
        XCTAssertEqual(d.next(responseStarted: false), 400)
        d.startWait(now: 100, delay: 50)
        XCTAssertEqual(d.next(responseStarted: false), 150)
    }

    func testPerTryTimeoutStopsOnceTheResponseStarted() {
        var d = ExchangeDeadlines()
        d.route = 1_000
        d.attempt = 400
        XCTAssertEqual(d.next(responseStarted: true), 1_000)
        XCTAssertEqual(d.expired(now: 500, responseStarted: true), .none)
        XCTAssertEqual(d.expired(now: 500, responseStarted: false), .attempt)
    }

    func testRouteTimeoutWinsAndBoundsAWait() {
        var d = ExchangeDeadlines()
        d.route = 1_000
        d.startWait(now: 900, delay: 500)
        XCTAssertEqual(d.wait, 1_000, "a back-off never runs past the route timeout")
        d.attempt = 950
        XCTAssertEqual(d.expired(now: 1_000, responseStarted: false), .route)
        XCTAssertEqual(d.expired(now: 999, responseStarted: false), .attempt)
    }

    func testWaitExpiresBeforeAnAttemptDeadline() {
        var d = ExchangeDeadlines()
        d.attempt = 100
        d.startWait(now: 0, delay: 100)
        XCTAssertEqual(d.expired(now: 100, responseStarted: false), .wait)
        XCTAssertEqual(d.expired(now: 99, responseStarted: false), .none)
    }
}
