/// The retry and circuit-breaker bookkeeping of one request, shared by the HTTP/1.1 path
/// (DownstreamConnection) and the HTTP/2 path (H2BridgeStream): the cluster's requests in flight
/// (`http2MaxRequests`), the endpoint's in-flight count (LEAST_REQUEST), outlier outcomes, the
/// cluster's retries in flight and retry budget, and the stats. The decisions themselves (retries
/// left, what is retriable, URX, the back-off) are `RetryState`'s. Plain counters on the worker;
/// nothing here allocates.
struct RequestAttempts {
    /// The pure retry decisions of this request.
    private(set) var state = RetryState()
    /// The endpoint of the attempt in progress.
    private(set) var pool: EndpointPool?
    private var retryCounted = false
    /// The cluster whose requests in flight include this request, or -1.
    private(set) var cluster = -1
    /// The routing state the request was routed with (its cluster indices).
    private(set) var routing: RoutingState?

    /// The route's retry policy.
    var policy: RetryPolicy { state.policy }

    /// Starts a request to `cluster`: false (nothing counted) when the cluster already has
    /// `maxRequests` in flight.
    mutating func admit(_ routing: RoutingState, cluster c: Int, policy p: RetryPolicy) -> Bool {
        release(routing.worker)
        state = RetryState(policy: p)
        let rt = routing.clusterState[c]
        if rt.activeRequests >= routing.snapshot.clusters[c].maxRequests { return false }
        rt.activeRequests += 1
        rt.retryBudget.earn()
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

    /// The retry budget's answer for one more retry of `cluster` on `routing`; a refusal is
    /// counted (`RetryState` remembers it for the URX flag). Asked by `RetryState` only when the
    /// policy, the retries left and replay allow a retry; a request not admitted to a cluster is
    /// passed as not replayable, so it never gets here.
    private static func budgetAllows(_ routing: RoutingState?, cluster: Int, _ worker: Worker) -> Bool {
        guard cluster >= 0, let r = routing else { return false }
        if r.retryAllowed(cluster: cluster) { return true }
        worker.stats.inc(.retryOverflow)
        return false
    }

    /// Books the next attempt as a retry in flight and returns its back-off (Envoy's: fully
    /// jittered, 25 ms doubling up to 250 ms).
    mutating func bookRetry(_ worker: Worker) -> UInt64 {
        let delay = state.bookRetry(&worker.rng)
        endAttempt(worker)
        retryCounted = true
        routing?.clusterState[cluster].activeRetries += 1
        return delay
    }

    /// Retries were made or refused: a final retriable failure is "retries exhausted" (URX).
    var exhausted: Bool { state.exhausted }

    /// An attempt ended without a response: records it for outlier detection and decides.
    /// `.retry`: book a retry (counted by cause); `.fail(exhausted:)`: answer the request, with
    /// `exhausted` true when the failure was retriable but no retry was left or allowed.
    mutating func failed(_ f: AttemptFailure, _ worker: Worker, replayable: Bool) -> AttemptDecision {
        outcome(worker, status: 0, gatewayFailure: true)
        let (r, c) = (routing, cluster)
        let d = state.failed(f, replayable: replayable && c >= 0 && r != nil,
                             budgetAllows: RequestAttempts.budgetAllows(r, cluster: c, worker))
        if case .retry = d {
            switch f {
            case .connect, .refused: worker.stats.inc(.retries)
            case .reset: worker.stats.inc(.retriesReset)
            case .timeout: worker.stats.inc(.retriesTimeout)
            }
        }
        return d
    }
}

extension RequestAttempts {
    /// A response head arrived (`grpc`: its grpc-status, -1 when absent; `listedHeader`: it carries
    /// a header the request named in x-envoy-retriable-header-names): records it for outlier
    /// detection and decides. `.retry`: drop this response and book a retry; `.fail(exhausted:)`:
    /// forward it, flagged URX when it was retriable but no retry was left or allowed.
    mutating func responded(status: Int, grpc: Int, listedHeader: Bool = false, _ worker: Worker, replayable: Bool) -> AttemptDecision {
        outcome(worker, status: status, gatewayFailure: false)
        let (r, c) = (routing, cluster)
        let d = state.responded(status: status, grpc: grpc, listedHeader: listedHeader,
                                replayable: replayable && c >= 0 && r != nil,
                                budgetAllows: RequestAttempts.budgetAllows(r, cluster: c, worker))
        if case .retry = d { worker.stats.inc(.retriesStatus) }
        return d
    }
}

/// What ended an attempt without a response.
enum AttemptFailure { case connect, reset, refused, timeout }

/// What to do after an attempt: retry it, or go on with this outcome (`exhausted`: it was
/// retriable but no retry was left or allowed).
enum AttemptDecision { case retry, fail(exhausted: Bool) }
