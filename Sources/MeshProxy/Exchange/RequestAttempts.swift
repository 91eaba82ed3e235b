/// The retry and circuit-breaker bookkeeping of one request, shared by the HTTP/1.1 path
/// (DownstreamConnection) and the HTTP/2 path (H2BridgeStream): the cluster's requests in flight
/// (`http2MaxRequests`), the endpoint's in-flight count (LEAST_REQUEST), outlier outcomes, retries
/// left, Envoy's retry budget and the back-off between attempts. Plain counters on the worker;
/// nothing here allocates.
struct RequestAttempts {
    var policy = RetryPolicy.default
    private(set) var left = 0
    private(set) var done = 0
    /// A retry was refused by the budget or `maxRetries`.
    private(set) var refused = false
    /// The endpoint of the attempt in progress.
    private(set) var pool: EndpointPool?
    private var retryCounted = false
    /// The cluster whose requests in flight include this request, or -1.
    private(set) var cluster = -1
    /// The routing state the request was routed with (its cluster indices).
    private(set) var routing: RoutingState?

    /// Starts a request to `cluster`: false (nothing counted) when the cluster already has
    /// `maxRequests` in flight.
    mutating func admit(_ routing: RoutingState, cluster c: Int, policy p: RetryPolicy) -> Bool {
        release(routing.worker)
        policy = p
        left = p.retries
        done = 0
        refused = false
        let rt = routing.clusterState[c]
        if rt.activeRequests >= routing.snapshot.clusters[c].maxRequests { return false }
        rt.activeRequests += 1
        rt.earnRetryToken()
        cluster = c
        self.routing = routing
        return true
    }

    /// An attempt goes to `p` (counted once until it ends).
    mutating func startAttempt(on p: EndpointPool) {
        if pool == nil { pool = p; p.activeRequests += 1 }
    }

    /// The attempt moves to another endpoint without counting as a retry (the keep-alive race).
    mutating func leaveEndpoint() {
        if let p = pool { p.activeRequests -= 1; pool = nil }
    }

    /// The attempt in progress ended (its endpoint's count, and the retry it was, released).
    mutating func endAttempt(_ worker: Worker) {
        if let p = pool { p.activeRequests -= 1; pool = nil }
        if retryCounted {
            retryCounted = false
            if cluster >= 0, let r = routing { r.clusterState[cluster].activeRetries -= 1 }
        }
    }

    /// The request ended: everything it held is released (idempotent).
    mutating func release(_ worker: Worker) {
        endAttempt(worker)
        if cluster >= 0, let r = routing {
            r.clusterState[cluster].activeRequests -= 1
        }
        cluster = -1
        routing = nil
    }

    /// Outlier detection's view of the current attempt's result.
    func outcome(_ worker: Worker, status: Int, gatewayFailure: Bool) {
        if let p = pool { p.routing.recordOutcome(p, status: status, gatewayFailure: gatewayFailure) }
    }

    /// Whether one more attempt may be made: retries left, the request replayable, and room in the
    /// retry budget (a refusal is counted and remembered for the URX flag).
    mutating func mayRetry(_ worker: Worker, replayable: Bool) -> Bool {
        guard left > 0, replayable, cluster >= 0, let r = routing else { return false }
        if !r.retryAllowed(cluster: cluster) {
            worker.stats.inc(.retryOverflow)
            refused = true
            return false
        }
        return true
    }

    /// Books the next attempt as a retry in flight and returns its back-off (Envoy's: fully
    /// jittered, 25 ms doubling up to 250 ms).
    mutating func bookRetry(_ worker: Worker) -> UInt64 {
        left -= 1
        done += 1
        endAttempt(worker)
        retryCounted = true
        routing?.clusterState[cluster].activeRetries += 1
        let base: UInt64 = min(25_000_000 << UInt64(min(done - 1, 4)), 250_000_000)
        return 1 + worker.rng.next() % base
    }

    /// Retries were made or refused: a final retriable failure is "retries exhausted" (URX).
    var exhausted: Bool { done > 0 || refused }

    /// An attempt ended without a response: records it for outlier detection and decides.
    /// `.retry`: book a retry (counted by cause); `.fail(exhausted:)`: answer the request, with
    /// `exhausted` true when the failure was retriable but no retry was left or allowed.
    mutating func failed(_ f: AttemptFailure, _ worker: Worker, replayable: Bool) -> AttemptDecision {
        outcome(worker, status: 0, gatewayFailure: true)
        let retriable: Bool
        switch f {
        case .connect: retriable = policy.onConnectFailure
        case .reset: retriable = policy.onReset
        case .refused: retriable = policy.onRefusedStream
        case .timeout: retriable = policy.onTimeout
        }
        if retriable && mayRetry(worker, replayable: replayable) {
            switch f {
            case .connect, .refused: worker.stats.inc(.retries)
            case .reset: worker.stats.inc(.retriesReset)
            case .timeout: worker.stats.inc(.retriesTimeout)
            }
            return .retry
        }
        return .fail(exhausted: retriable && exhausted)
    }
}

extension RequestAttempts {
    /// A response head arrived (`grpc`: its grpc-status, -1 when absent; `listedHeader`: it carries
    /// a header the request named in x-envoy-retriable-header-names): records it for outlier
    /// detection and decides. `.retry`: drop this response and book a retry; `.pass(exhausted:)`:
    /// forward it, flagged URX when it was retriable but no retry was left or allowed.
    mutating func responded(status: Int, grpc: Int, listedHeader: Bool = false, _ worker: Worker, replayable: Bool) -> AttemptDecision {
        outcome(worker, status: status, gatewayFailure: false)
        let byHeader = listedHeader && policy.on.contains(.retriableHeaders)
        guard byHeader || policy.retries(status: status, grpc: grpc) else { return .fail(exhausted: false) }
        if mayRetry(worker, replayable: replayable) {
            worker.stats.inc(.retriesStatus)
            return .retry
        }
        return .fail(exhausted: exhausted)
    }
}

/// What ended an attempt without a response.
enum AttemptFailure { case connect, reset, refused, timeout }

/// What to do after an attempt: retry it, or go on with this outcome (`exhausted`: it was
/// retriable but no retry was left or allowed).
enum AttemptDecision { case retry, fail(exhausted: Bool) }
