import XCTest
import MeshCore
@testable import MeshProxy

/// The retry state machine with a fake clock (plain nanosecond values advanced by hand) and a
/// seeded FastRandom: what each `retryOn` condition retries, retries running out (URX), the
/// budget being asked only when a retry is otherwise allowed, Envoy's jittered back-off, and the
/// retry budget's concurrent and rate rules.
final class RetryStateTests: XCTestCase {
    typealias On = RetryPolicy.On

    static let allFlags: [(String, On)] = [
        ("5xx", .fiveXX), ("gateway-error", .gatewayError), ("reset", .reset),
        ("connect-failure", .connectFailure), ("refused-stream", .refusedStream),
        ("retriable-4xx", .retriable4xx), ("cancelled", .grpcCancelled),
        ("deadline-exceeded", .grpcDeadlineExceeded), ("internal", .grpcInternal),
        ("resource-exhausted", .grpcResourceExhausted), ("unavailable", .grpcUnavailable),
        ("retriable-headers", .retriableHeaders),
    ]

    private func state(_ on: On, codes: [Int] = [], retries: Int = 2) -> RetryState {
        RetryState(policy: RetryPolicy(retries: retries, perTryTimeout: 0, on: on, statusCodes: codes))
    }

    private func isRetry(_ d: AttemptDecision) -> Bool {
        if case .retry = d { return true }
        return false
    }

    /// nil for `.retry`, else the `exhausted` flag.
    private func exhaustedFlag(_ d: AttemptDecision) -> Bool? {
        if case .fail(let e) = d { return e }
        return nil
    }

    private func respond(_ s: inout RetryState, _ status: Int, grpc: Int = -1, listed: Bool = false,
                         replayable: Bool = true, budget: Bool = true) -> AttemptDecision {
        s.responded(status: status, grpc: grpc, listedHeader: listed, replayable: replayable, budgetAllows: budget)
    }

    // MARK: failures without a response

    /// Each failure against each retryOn word alone: retried exactly by the words Envoy's
    /// retry policy maps it to (a per-try timeout counts as a 504).
    func testEveryFailureAgainstEachRetryOnFlag() {
        let retriedBy: [(AttemptFailure, Set<String>)] = [
            (.connect, ["connect-failure", "5xx", "gateway-error"]),
            (.reset, ["reset", "5xx"]),
            (.refused, ["refused-stream", "5xx"]),
            (.timeout, ["reset", "5xx", "gateway-error"]),
        ]
        for (f, words) in retriedBy {
            for (word, flag) in Self.allFlags {
                var s = state(flag)
                let d = s.failed(f, replayable: true, budgetAllows: true)
                if words.contains(word) {
                    XCTAssertTrue(isRetry(d), "\(f) with retryOn \(word) is retried")
                } else {
                    XCTAssertEqual(exhaustedFlag(d), false, "\(f) with retryOn \(word) alone is not retried, not URX")
                }
            }
            var none = state([])
            XCTAssertEqual(exhaustedFlag(none.failed(f, replayable: true, budgetAllows: true)), false, "\(f) with no retryOn")
        }
    }

    /// A per-try timeout is retried when 504 is among the retriable status codes, and only then.
    func testTimeoutRetriedByStatusCode504() {
        var s = state([], codes: [504])
        XCTAssertTrue(isRetry(s.failed(.timeout, replayable: true, budgetAllows: true)))
        for other in [[503], [500, 502], [408]] {
            var t = state([], codes: other)
            XCTAssertEqual(exhaustedFlag(t.failed(.timeout, replayable: true, budgetAllows: true)), false, "codes \(other)")
        }
        // The codes list does not make a connect failure, reset or refused stream retriable.
        for f in [AttemptFailure.connect, .reset, .refused] {
            var t = state([], codes: [504, 503, 502])
            XCTAssertEqual(exhaustedFlag(t.failed(f, replayable: true, budgetAllows: true)), false, "\(f)")
        }
    }

    /// The default policy (DESIGN §2): two retries on connect failure and refused stream only.
    func testDefaultPolicy() {
        for f in [AttemptFailure.connect, .refused] {
            var s = RetryState()
            XCTAssertTrue(isRetry(s.failed(f, replayable: true, budgetAllows: true)), "\(f)")
        }
        for f in [AttemptFailure.reset, .timeout] {
            var s = RetryState()
            XCTAssertEqual(exhaustedFlag(s.failed(f, replayable: true, budgetAllows: true)), false, "\(f)")
        }
        var s = RetryState()
        XCTAssertEqual(exhaustedFlag(respond(&s, 503)), false, "no status is retried by default")
    }

    // MARK: responses

    private func retriesStatus(_ on: On, codes: [Int] = [], _ status: Int, grpc: Int = -1) -> Bool {
        var s = state(on, codes: codes)
        return isRetry(respond(&s, status, grpc: grpc))
    }

    func testFiveXX() {
        for st in [500, 501, 502, 503, 504, 505, 599] { XCTAssertTrue(retriesStatus(.fiveXX, st), "\(st)") }
        for st in [200, 204, 301, 400, 404, 409, 429, 499] { XCTAssertFalse(retriesStatus(.fiveXX, st), "\(st)") }
    }

    func testGatewayError() {
        for st in [502, 503, 504] { XCTAssertTrue(retriesStatus(.gatewayError, st), "\(st)") }
        for st in [200, 409, 500, 501, 505, 599] { XCTAssertFalse(retriesStatus(.gatewayError, st), "\(st)") }
    }

    func testRetriable4xx() {
        XCTAssertTrue(retriesStatus(.retriable4xx, 409))
        for st in [400, 403, 404, 408, 429, 500, 503] { XCTAssertFalse(retriesStatus(.retriable4xx, st), "\(st)") }
    }

    func testStatusCodesList() {
        for st in [429, 418, 503] { XCTAssertTrue(retriesStatus([], codes: [429, 418, 503], st), "\(st)") }
        for st in [200, 409, 500, 502, 504] { XCTAssertFalse(retriesStatus([], codes: [429, 418, 503], st), "\(st)") }
        // Codes add to the words: 5xx plus 429.
        XCTAssertTrue(retriesStatus(.fiveXX, codes: [429], 429))
        XCTAssertTrue(retriesStatus(.fiveXX, codes: [429], 500))
        XCTAssertFalse(retriesStatus(.fiveXX, codes: [429], 404))
    }

    /// Status words other than their own never retry a status: connect-failure, reset, the gRPC
    /// words and retriable-headers alone leave a 503 (without grpc-status) alone.
    func testNonStatusWordsDoNotRetryStatuses() {
        let statusWords: Set<String> = ["5xx", "gateway-error"]
        for (word, flag) in Self.allFlags where !statusWords.contains(word) {
            XCTAssertFalse(retriesStatus(flag, 503), word)
            XCTAssertFalse(retriesStatus(flag, 500), word)
        }
    }

    func testGrpcStatuses() {
        let words: [(On, Int)] = [(.grpcCancelled, 1), (.grpcDeadlineExceeded, 4), (.grpcResourceExhausted, 8),
                                  (.grpcInternal, 13), (.grpcUnavailable, 14)]
        for (flag, code) in words {
            XCTAssertTrue(retriesStatus(flag, 200, grpc: code), "grpc \(code) with its word")
            XCTAssertFalse(retriesStatus(flag, 200, grpc: -1), "no grpc-status")
            for other in 0...16 where other != code {
                XCTAssertFalse(retriesStatus(flag, 200, grpc: other), "grpc \(other) with the word for \(code)")
            }
            // Another gRPC word does not retry this code.
            for (otherFlag, otherCode) in words where otherCode != code {
                XCTAssertFalse(retriesStatus(otherFlag, 200, grpc: code), "grpc \(code) with the word for \(otherCode)")
            }
        }
        let all: On = [.grpcCancelled, .grpcDeadlineExceeded, .grpcResourceExhausted, .grpcInternal, .grpcUnavailable]
        for code in [0, 2, 3, 5, 6, 7, 9, 10, 11, 12, 15, 16] {
            XCTAssertFalse(retriesStatus(all, 200, grpc: code), "grpc \(code)")
        }
        XCTAssertFalse(retriesStatus([.fiveXX, .gatewayError, .retriable4xx], 200, grpc: 14), "status words ignore grpc-status")
    }

    /// x-envoy-retriable-header-names: a listed header retries only under `retriable-headers`.
    func testRetriableHeaders() {
        var s = state(.retriableHeaders)
        XCTAssertTrue(isRetry(respond(&s, 200, listed: true)))
        s = state(.retriableHeaders)
        XCTAssertEqual(exhaustedFlag(respond(&s, 200, listed: false)), false, "no listed header")
        s = state(.retriableHeaders)
        XCTAssertEqual(exhaustedFlag(respond(&s, 503, listed: false)), false, "the word is not 5xx")
        for (word, flag) in Self.allFlags where word != "retriable-headers" {
            var t = state(flag)
            XCTAssertEqual(exhaustedFlag(respond(&t, 200, listed: true)), false, "listed header under \(word)")
        }
    }

    // MARK: running out, replay, budget

    /// Two retries: the third retriable answer is forwarded as URX; a response the policy does
    /// not retry is never URX, even after retries.
    func testAttemptsExhaustedIsURX() {
        var rng = FastRandom(seed: 7)
        var s = state(.fiveXX, retries: 2)
        XCTAssertFalse(s.exhausted)
        XCTAssertTrue(isRetry(respond(&s, 503)))
        _ = s.bookRetry(&rng)
        XCTAssertTrue(isRetry(respond(&s, 503)))
        _ = s.bookRetry(&rng)
        XCTAssertEqual([s.left, s.done], [0, 2])
        XCTAssertEqual(exhaustedFlag(respond(&s, 503)), true, "third 503: retries exhausted")
        XCTAssertEqual(exhaustedFlag(respond(&s, 200)), false, "a success after retries is not URX")
        XCTAssertEqual(exhaustedFlag(s.failed(.connect, replayable: true, budgetAllows: true)), true, "connect failure after retries")
        XCTAssertEqual(exhaustedFlag(s.failed(.refused, replayable: true, budgetAllows: true)), true)
        // Under 5xx a per-try timeout (a 504) is retriable too: exhausted as well.
        XCTAssertEqual(exhaustedFlag(s.failed(.timeout, replayable: true, budgetAllows: true)), true)

        var f = state(.connectFailure, retries: 1)
        XCTAssertTrue(isRetry(f.failed(.connect, replayable: true, budgetAllows: true)))
        _ = f.bookRetry(&rng)
        XCTAssertEqual(exhaustedFlag(f.failed(.connect, replayable: true, budgetAllows: true)), true)
        XCTAssertEqual(exhaustedFlag(f.failed(.reset, replayable: true, budgetAllows: true)), false, "reset is never retriable here")
        XCTAssertEqual(exhaustedFlag(respond(&f, 503)), false, "503 is never retriable here")
    }

    /// With no retry made and none refused, a retriable failure is not URX (attempts: 0).
    func testZeroAttemptsIsNotURX() {
        var s = state([.fiveXX, .connectFailure], retries: 0)
        XCTAssertEqual(exhaustedFlag(respond(&s, 503)), false)
        XCTAssertEqual(exhaustedFlag(s.failed(.connect, replayable: true, budgetAllows: true)), false)
    }

    /// A budget refusal ends the retries: URX even before any retry was made.
    func testBudgetRefusalIsURX() {
        var s = state(.fiveXX, retries: 3)
        XCTAssertEqual(exhaustedFlag(respond(&s, 503, budget: false)), true)
        XCTAssertTrue(s.refused)
        XCTAssertEqual(s.done, 0)
        XCTAssertEqual(s.left, 3, "a refusal spends no retry")
        // The budget may allow the next one again.
        XCTAssertTrue(isRetry(respond(&s, 503, budget: true)))

        var f = state(.reset, retries: 3)
        XCTAssertEqual(exhaustedFlag(f.failed(.reset, replayable: true, budgetAllows: false)), true)
        var n = state(.reset, retries: 3)
        XCTAssertEqual(exhaustedFlag(n.failed(.connect, replayable: true, budgetAllows: false)), false,
                       "a failure the policy does not retry never asks the budget and is not URX")
        XCTAssertFalse(n.refused)
    }

    /// A request that cannot be replayed (body gone, response started) is never retried and
    /// never spends the budget.
    func testNotReplayableIsNotRetried() {
        var asked = 0
        func budget() -> Bool { asked += 1; return true }
        var s = state([.fiveXX, .connectFailure, .reset, .refusedStream], retries: 5)
        for f in [AttemptFailure.connect, .reset, .refused, .timeout] {
            XCTAssertEqual(exhaustedFlag(s.failed(f, replayable: false, budgetAllows: budget())), false, "\(f)")
        }
        XCTAssertEqual(exhaustedFlag(s.responded(status: 503, grpc: -1, listedHeader: false, replayable: false,
                                                 budgetAllows: budget())), false)
        XCTAssertEqual(asked, 0, "the budget is not asked")
        XCTAssertEqual([s.left, s.done], [5, 0])
        XCTAssertFalse(s.refused)
    }

    /// The budget (which may spend a token) is asked exactly when the policy, retries left and
    /// replay allow a retry, once per decision.
    func testBudgetAskedOnlyWhenARetryIsOtherwiseAllowed() {
        var asked = 0
        func budget() -> Bool { asked += 1; return true }
        var rng = FastRandom(seed: 1)
        var s = state([.gatewayError], retries: 1)
        _ = s.responded(status: 200, grpc: -1, listedHeader: false, replayable: true, budgetAllows: budget())
        _ = s.responded(status: 500, grpc: -1, listedHeader: false, replayable: true, budgetAllows: budget())
        _ = s.failed(.reset, replayable: true, budgetAllows: budget())
        XCTAssertEqual(asked, 0, "not retriable")
        XCTAssertTrue(isRetry(s.responded(status: 502, grpc: -1, listedHeader: false, replayable: true, budgetAllows: budget())))
        XCTAssertEqual(asked, 1)
        _ = s.bookRetry(&rng)
        XCTAssertEqual(exhaustedFlag(s.failed(.connect, replayable: true, budgetAllows: budget())), true)
        XCTAssertEqual(asked, 1, "no retry left: not asked")
    }

    // MARK: back-off

    /// Envoy's back-off: uniform in 1 ns ... 25 ms, 50 ms, 100 ms, 200 ms, then 250 ms for every
    /// later retry; fully jittered (draws spread over the whole range, not a constant).
    func testBackoffBoundsAndJitterPerRetry() {
        let ceilings: [UInt64] = [25_000_000, 50_000_000, 100_000_000, 200_000_000, 250_000_000, 250_000_000, 250_000_000]
        var rng = FastRandom(seed: 0x5eed)
        let draws = 2000
        var samples = Array(repeating: [UInt64](), count: ceilings.count)
        for _ in 0..<draws {
            var s = state(.fiveXX, retries: ceilings.count)
            for i in 0..<ceilings.count { samples[i].append(s.bookRetry(&rng)) }
            XCTAssertEqual(s.left, 0)
            XCTAssertEqual(s.done, ceilings.count)
        }
        for (i, ceiling) in ceilings.enumerated() {
            let d = samples[i]
            XCTAssertGreaterThanOrEqual(d.min()!, 1, "retry \(i + 1)")
            XCTAssertLessThanOrEqual(d.max()!, ceiling, "retry \(i + 1) within \(ceiling / 1_000_000) ms")
            XCTAssertGreaterThan(d.max()!, ceiling / 100 * 98, "retry \(i + 1) reaches near its ceiling")
            XCTAssertLessThan(d.min()!, ceiling / 50, "retry \(i + 1) is fully jittered down to near 0")
            XCTAssertGreaterThan(Set(d).count, draws * 99 / 100, "retry \(i + 1) draws are not repeated")
            let mean = Double(d.reduce(0, +)) / Double(draws)
            XCTAssertEqual(mean / Double(ceiling), 0.5, accuracy: 0.05, "retry \(i + 1) uniform")
        }
        // Each ceiling is above the previous one until the cap: the doubling is really used.
        XCTAssertGreaterThan(samples[1].max()!, 25_000_000)
        XCTAssertGreaterThan(samples[3].max()!, 100_000_000)
    }

    /// The same seed gives the same back-offs (the randomness is the parameter, nothing else).
    func testBackoffIsTheRandomSourcesOnly() {
        var a = FastRandom(seed: 42), b = FastRandom(seed: 42), c = FastRandom(seed: 43)
        var sa = state(.fiveXX, retries: 3), sb = state(.fiveXX, retries: 3), sc = state(.fiveXX, retries: 3)
        let da = (0..<3).map { _ in sa.bookRetry(&a) }
        let db = (0..<3).map { _ in sb.bookRetry(&b) }
        let dc = (0..<3).map { _ in sc.bookRetry(&c) }
        XCTAssertEqual(da, db)
        XCTAssertNotEqual(da, dc)
    }

    // MARK: retry budget

    static let t0: UInt64 = 5_000_000_000   // the fake clock's start (0 means "not yet")
    static let ms: UInt64 = 1_000_000

    /// Spends the budget's tokens at `now` until it refuses; returns how many were spent.
    private func drain(_ b: inout RetryBudget, now: UInt64) -> Int {
        var n = 0
        while b.take(now: now) { n += 1; if n > 1000 { break } }
        return n
    }

    /// At least 3 retries in flight are always allowed, without a token, whatever the requests.
    func testBudgetAllowsThreeConcurrentRetries() {
        var b = RetryBudget()
        XCTAssertEqual(drain(&b, now: Self.t0), 10, "a second's worth of tokens to start with")
        for retries in 0..<3 {
            XCTAssertTrue(b.allows(activeRetries: retries, activeRequests: 1, maxRetries: 1024, now: Self.t0), "\(retries) in flight")
        }
        XCTAssertFalse(b.allows(activeRetries: 3, activeRequests: 1, maxRetries: 1024, now: Self.t0), "a 4th needs a token")
        XCTAssertFalse(b.allows(activeRetries: 3, activeRequests: 19, maxRetries: 1024, now: Self.t0), "19/5 is 3")
        XCTAssertEqual(b.tokens, 0)
    }

    /// Beyond 3, retries in flight up to 20% of requests in flight are allowed without a token.
    func testBudgetTwentyPercentOfActiveRequests() {
        var b = RetryBudget()
        _ = drain(&b, now: Self.t0)
        for retries in 0..<20 {
            XCTAssertTrue(b.allows(activeRetries: retries, activeRequests: 100, maxRetries: 1024, now: Self.t0), "\(retries) of 100")
        }
        XCTAssertFalse(b.allows(activeRetries: 20, activeRequests: 100, maxRetries: 1024, now: Self.t0), "20 of 100")
        XCTAssertTrue(b.allows(activeRetries: 20, activeRequests: 105, maxRetries: 1024, now: Self.t0), "20 of 105")
        XCTAssertFalse(b.allows(activeRetries: 21, activeRequests: 105, maxRetries: 1024, now: Self.t0), "21 of 105")
    }

    /// Past the concurrent rule a token is spent; with none left, retries are refused.
    func testBudgetSpendsTokensBeyondTheConcurrentRule() {
        var b = RetryBudget()
        XCTAssertEqual(b.tokens, 10_000)
        XCTAssertTrue(b.allows(activeRetries: 2, activeRequests: 10, maxRetries: 1024, now: Self.t0))
        XCTAssertEqual(b.tokens, 10_000, "within the concurrent rule: no token")
        var allowed = 0
        for _ in 0..<20 where b.allows(activeRetries: 50, activeRequests: 10, maxRetries: 1024, now: Self.t0) { allowed += 1 }
        XCTAssertEqual(allowed, 10)
        XCTAssertEqual(b.tokens, 0)
    }

    /// `maxRetries` caps retries in flight even when the budget would allow them.
    func testBudgetMaxRetries() {
        var b = RetryBudget()
        XCTAssertFalse(b.allows(activeRetries: 2, activeRequests: 100, maxRetries: 2, now: Self.t0))
        XCTAssertFalse(b.allows(activeRetries: 0, activeRequests: 100, maxRetries: 0, now: Self.t0))
        XCTAssertTrue(b.allows(activeRetries: 1, activeRequests: 100, maxRetries: 2, now: Self.t0))
        XCTAssertFalse(b.allows(activeRetries: 30, activeRequests: 10, maxRetries: 30, now: Self.t0))
        XCTAssertEqual(b.tokens, 10_000, "a refusal by maxRetries spends no token")
    }

    /// Tokens refill at 10 a second on the fake clock: exhausted at t, still refused at t+99 ms,
    /// allowed again at t+100 ms (one retry), the next one at t+200 ms.
    func testBudgetRefillsOverFakeTime() {
        var b = RetryBudget()
        let t = Self.t0
        XCTAssertEqual(drain(&b, now: t), 10)
        XCTAssertFalse(b.take(now: t + 99 * Self.ms))
        XCTAssertTrue(b.take(now: t + 100 * Self.ms))
        XCTAssertFalse(b.take(now: t + 100 * Self.ms), "only one came back")
        XCTAssertFalse(b.take(now: t + 199 * Self.ms))
        XCTAssertTrue(b.take(now: t + 200 * Self.ms))
        XCTAssertEqual(drain(&b, now: t + 1200 * Self.ms), 10, "a second later: 10 more")
    }

    /// Refills sampled at sub-millisecond steps lose no time: polled every 0.3 ms after being
    /// exhausted, the first retry comes back at the first poll at or after 100 ms.
    func testBudgetRefillKeepsSubMillisecondRemainders() {
        var b = RetryBudget()
        let t = Self.t0
        XCTAssertEqual(drain(&b, now: t), 10)
        var now = t
        while now < t + 200 * Self.ms && !b.take(now: now) { now += 300_000 }
        XCTAssertEqual(now, t + 100_200_000, "first poll at or after 100 ms (334 polls of 0.3 ms)")
    }

    /// Each request started earns a fifth of a retry; the bank holds at most 100 retries, by
    /// earning or by refilling.
    func testBudgetEarnAndCap() {
        var b = RetryBudget()
        _ = drain(&b, now: Self.t0)
        for _ in 0..<4 { b.earn() }
        XCTAssertFalse(b.take(now: Self.t0), "4 requests: 0.8 of a retry")
        b.earn()
        XCTAssertTrue(b.take(now: Self.t0), "5 requests: one retry")
        XCTAssertFalse(b.take(now: Self.t0))

        var e = RetryBudget()
        for _ in 0..<10_000 { e.earn() }
        XCTAssertEqual(e.tokens, RetryBudget.maxTokens)
        XCTAssertEqual(drain(&e, now: Self.t0), 100)

        var r = RetryBudget()
        _ = drain(&r, now: Self.t0)
        XCTAssertEqual(drain(&r, now: Self.t0 + 3600 * 1000 * Self.ms), 100, "an hour idle banks 100, not 36,000")
    }
}
