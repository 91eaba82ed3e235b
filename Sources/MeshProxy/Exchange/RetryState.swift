/// The retry decisions of one request, as a value with no side effects: retries left, which
/// failures, statuses, grpc-statuses and listed headers the route's `RetryPolicy` retries, the
/// "retries exhausted" (URX) rule and Envoy's back-off. The randomness and the retry budget's
/// answer are parameters, so every decision can be checked with a seeded generator.
/// `RequestAttempts` keeps the counters on worker objects and asks this for each decision.
struct RetryState {
    private(set) var policy: RetryPolicy
    /// Retries still allowed by the policy.
    private(set) var left: Int
    /// Retries booked so far.
    private(set) var done = 0
    /// A retry was refused by the retry budget (or the cluster's `maxRetries`).
    private(set) var refused = false

    init(policy: RetryPolicy = .default) {
        self.policy = policy
        left = policy.retries
    }

    /// Whether the policy retries an attempt that ended without a response this way.
    func retriable(_ f: AttemptFailure) -> Bool {
        switch f {
        case .connect: return policy.onConnectFailure
        case .reset: return policy.onReset
        case .refused: return policy.onRefusedStream
        case .timeout: return policy.onTimeout
        }
    }

    /// Whether the policy retries a response with this status (`grpc`: its grpc-status, -1 when
    /// absent; `listedHeader`: it carries a header named in x-envoy-retriable-header-names).
    func retriable(status: Int, grpc: Int, listedHeader: Bool) -> Bool {
        (listedHeader && policy.on.contains(.retriableHeaders)) || policy.retries(status: status, grpc: grpc)
    }

    /// Whether one more attempt may be made: retries left, the request replayable, and room in
    /// the retry budget. The budget is asked only when the rest allows a retry (asking may spend a
    /// token); its refusal is remembered for the URX flag.
    mutating func mayRetry(replayable: Bool, budgetAllows: @autoclosure () -> Bool) -> Bool {
        guard left > 0, replayable else { return false }
        if !budgetAllows() {
            refused = true
            return false
        }
        return true
    }

    /// An attempt ended without a response. `.retry`: book one; `.fail(exhausted:)`: answer the
    /// request, `exhausted` when the failure was retriable but no retry was left or allowed.
    mutating func failed(_ f: AttemptFailure, replayable: Bool, budgetAllows: @autoclosure () -> Bool) -> AttemptDecision {
        let retriable = retriable(f)
        if retriable && mayRetry(replayable: replayable, budgetAllows: budgetAllows()) { return .retry }
        return .fail(exhausted: retriable && exhausted)
    }

    /// A response head arrived. `.retry`: drop it and book a retry; `.fail(exhausted:)`: forward
    /// it, flagged URX when it was retriable but no retry was left or allowed.
    mutating func responded(status: Int, grpc: Int, listedHeader: Bool, replayable: Bool,
                            budgetAllows: @autoclosure () -> Bool) -> AttemptDecision {
        guard retriable(status: status, grpc: grpc, listedHeader: listedHeader) else { return .fail(exhausted: false) }
        if mayRetry(replayable: replayable, budgetAllows: budgetAllows()) { return .retry }
        return .fail(exhausted: exhausted)
    }

    /// Books the next attempt as a retry and returns its back-off in nanoseconds: Envoy's, fully
    /// jittered in 1...ceiling, the ceiling 25 ms doubling with each retry up to 250 ms.
    mutating func bookRetry<R: RandomNumberGenerator>(_ rng: inout R) -> UInt64 {
        left -= 1
        done += 1
        return 1 + rng.next() % RetryState.backoffCeiling(retry: done)
    }

    /// The longest back-off before retry number `n` (1 for the first retry), in nanoseconds.
    static func backoffCeiling(retry n: Int) -> UInt64 {
        min(25_000_000 << UInt64(min(n - 1, 4)), 250_000_000)
    }

    /// Retries were made or refused: a final retriable failure is "retries exhausted" (URX).
    var exhausted: Bool { done > 0 || refused }
}

/// One cluster's retry budget on one worker, with the time passed in: Envoy's concurrent rule
/// (retries in flight under 20% of the requests in flight, at least 3) and, beyond it, Linkerd's
/// rate rule (a token earned per 5 requests and 10 a second, at most 100 banked). The concurrent
/// rule alone fails a burst, such as every request in flight to an endpoint reset at once when it
/// dies, that the other endpoints could serve, while a cluster that keeps failing still gets at
/// most about 40% more attempts than requests plus 10 a second.
struct RetryBudget {
    /// The rate part, in thousandths of a retry: 200 per request started, 10,000 a second, at most
    /// `maxTokens`; a second's worth to start with.
    private(set) var tokens = 10_000
    /// When the tokens were last refilled (0: not yet).
    private var tokensAt: UInt64 = 0
    static let maxTokens = 100_000

    /// A request to the cluster started: it earns a fifth of a retry.
    @inline(__always) mutating func earn() {
        if tokens < RetryBudget.maxTokens { tokens += 200 }
    }

    /// Spends one retry from the rate budget if there is one (refilled at 10 a second).
    mutating func take(now: UInt64) -> Bool {
        if tokensAt == 0 { tokensAt = now }
        let elapsed = now &- tokensAt
        if elapsed >= 1_000_000 {   // whole milliseconds: 10 tokens/s is 10 thousandths per ms
            tokens = min(RetryBudget.maxTokens, tokens + Int(elapsed / 1_000_000) * 10)
            tokensAt = now &- elapsed % 1_000_000
        }
        if tokens < 1000 { return false }
        tokens -= 1000
        return true
    }

    /// Whether one more retry fits, with `activeRetries` retries and `activeRequests` requests of
    /// the cluster in flight and its `maxRetries`: a token is spent only past the concurrent rule.
    mutating func allows(activeRetries: Int, activeRequests: Int, maxRetries: Int, now: UInt64) -> Bool {
        if activeRetries >= maxRetries { return false }
        if activeRetries < max(3, activeRequests / 5) { return true }
        return take(now: now)
    }
}
