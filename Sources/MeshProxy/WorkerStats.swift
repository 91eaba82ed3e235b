import MeshStats

/// One worker's counters, bumped by that worker's thread only and read by the admin thread when it
/// sums all workers for a scrape. The slots are `SharedCounters`: relaxed atomic loads and stores,
/// which compile to the same plain moves as before but make the admin thread's read race-free.
public final class WorkerStats: @unchecked Sendable {
    public enum Counter: Int, CaseIterable, Sendable {
        case downstreamConnectionsTotal, downstreamConnectionsActive, requestsTotal
        case responses1xx, responses2xx, responses3xx, responses4xx, responses5xx
        case localReplies, noRoute, badRequests
        case upstreamConnectionsTotal, upstreamConnectionsActive, upstreamConnectFailures, upstreamConnectTimeouts
        case upstreamReused, upstreamKeepAliveRaceRetries, upstreamUnstartedRetries, retries, upstreamResetsBeforeResponse, upstreamOverflow
        case tlsHandshakesOK, tlsHandshakesFailed, tlsSessionsResumed
        case requestTimeouts, headerTimeouts, upgrades
        case http2DownstreamConnections, http2UpstreamConnections, http2RapidResetClosures
        case retriesStatus, retriesReset, retriesTimeout, retryOverflow, outlierEjections, faultAborts, faultDelays
        case mirrorRequests, mirrorSkipped, authzDenied
        case uriTooLong, headersTooLarge, http2Floods, http2ProtocolErrors, streamIdleTimeouts
        case connectionsHibernated, connectionLimit, http2MalformedRequests
        case capturedConnections, captureLoopsRefused, passthroughConnections, blackHoleConnections
        case detectedHTTP, detectedTCP
        case rateLimited, redirects, directResponses, corsPreflights
        case jwtRejected, authzAudited

        public var name: String {
            switch self {
            case .downstreamConnectionsTotal: return "downstream_connections_total"
            case .downstreamConnectionsActive: return "downstream_connections_active"
            case .requestsTotal: return "requests_total"
            case .responses1xx: return "responses_1xx"
            case .responses2xx: return "responses_2xx"
            case .responses3xx: return "responses_3xx"
            case .responses4xx: return "responses_4xx"
            case .responses5xx: return "responses_5xx"
            case .localReplies: return "local_replies"
            case .noRoute: return "no_route"
            case .badRequests: return "bad_requests"
            case .upstreamConnectionsTotal: return "upstream_connections_total"
            case .upstreamConnectionsActive: return "upstream_connections_active"
            case .upstreamConnectFailures: return "upstream_connect_failures"
            case .upstreamConnectTimeouts: return "upstream_connect_timeouts"
            case .upstreamReused: return "upstream_requests_on_reused_connections"
            case .upstreamKeepAliveRaceRetries: return "upstream_keepalive_race_retries"
            case .upstreamUnstartedRetries: return "upstream_unstarted_connection_retries"
            case .retries: return "retries"
            case .upstreamResetsBeforeResponse: return "upstream_resets_before_response"
            case .upstreamOverflow: return "upstream_overflow"
            case .tlsHandshakesOK: return "tls_handshakes_ok"
            case .tlsHandshakesFailed: return "tls_handshakes_failed"
            case .tlsSessionsResumed: return "tls_sessions_resumed"
            case .requestTimeouts: return "request_timeouts"
            case .headerTimeouts: return "header_timeouts"
            case .upgrades: return "upgrades"
            case .http2DownstreamConnections: return "http2_downstream_connections_total"
            case .http2UpstreamConnections: return "http2_upstream_connections_total"
            case .http2RapidResetClosures: return "http2_rapid_reset_closures"
            case .retriesStatus: return "retries_on_status"
            case .retriesReset: return "retries_on_reset"
            case .retriesTimeout: return "retries_on_per_try_timeout"
            case .retryOverflow: return "retries_refused_by_budget"
            case .outlierEjections: return "outlier_ejections"
            case .faultAborts: return "fault_aborts"
            case .faultDelays: return "fault_delays"
            case .mirrorRequests: return "mirror_requests"
            case .mirrorSkipped: return "mirror_skipped"
            case .authzDenied: return "authz_denied"
            case .uriTooLong: return "uri_too_long"
            case .headersTooLarge: return "headers_too_large"
            case .http2Floods: return "http2_flood_closures"
            case .http2ProtocolErrors: return "http2_protocol_errors"
            case .streamIdleTimeouts: return "stream_idle_timeouts"
            case .connectionsHibernated: return "downstream_idle_buffer_releases"
            case .connectionLimit: return "downstream_connections_refused_at_limit"
            case .http2MalformedRequests: return "http2_malformed_requests"
            case .capturedConnections: return "captured_connections_total"
            case .captureLoopsRefused: return "captured_connections_refused_loop"
            case .passthroughConnections: return "outbound_passthrough_connections_total"
            case .blackHoleConnections: return "outbound_blackhole_connections_total"
            case .detectedHTTP: return "captured_connections_detected_http"
            case .detectedTCP: return "captured_connections_detected_tcp"
            case .rateLimited: return "local_rate_limited"
            case .redirects: return "redirects"
            case .directResponses: return "direct_responses"
            case .corsPreflights: return "cors_preflights"
            case .jwtRejected: return "jwt_rejected"
            case .authzAudited: return "authz_audited"
            }
        }
    }

    private let values: SharedCounters

    public init() {
        values = .allocate(count: Counter.allCases.count)
    }

    deinit { values.deallocate() }

    /// Single-writer updates (the owning worker's thread only): relaxed load + relaxed store.
    @inline(__always) public func inc(_ c: Counter) { values.add(c.rawValue, 1) }
    @inline(__always) public func dec(_ c: Counter) { values.subtract(c.rawValue, 1) }
    @inline(__always) public func add(_ c: Counter, _ n: UInt64) { values.add(c.rawValue, n) }
    /// Relaxed load (any thread).
    public func get(_ c: Counter) -> UInt64 { values[c.rawValue] }

    @inline(__always) public func countResponse(_ status: Int) {
        switch status {
        case ..<200: inc(.responses1xx)
        case ..<300: inc(.responses2xx)
        case ..<400: inc(.responses3xx)
        case ..<500: inc(.responses4xx)
        default: inc(.responses5xx)
        }
    }
}
