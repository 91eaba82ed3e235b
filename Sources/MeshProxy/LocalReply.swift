import MeshCore
import MeshHTTP

/// Responses the proxy generates itself (no route, upstream down, timeouts, bad requests), with
/// Envoy's response flag for each, so logs and metrics say why a request failed.
enum ResponseFlag: UInt8, Sendable {
    case none, noRoute, upstreamConnectFailure, upstreamOverflow, upstreamConnectionTermination,
         upstreamRequestTimeout, streamIdleTimeout, downstreamProtocolError, upstreamProtocolError,
         downstreamConnectionTermination, noHealthyUpstream, retryLimitExceeded, faultInjected, delayInjected,
         /// A TCP connection denied by an AuthorizationPolicy (this mesh's flag: Envoy's network
         /// RBAC filter sets none; docs/tcp.md).
         authorizationDenied,
         /// Refused by a LocalRateLimit's token bucket (Envoy's local_ratelimit flag).
         rateLimited

    /// Envoy's short code (DESIGN §6).
    var code: StaticString {
        switch self {
        case .none: return "-"
        case .noRoute: return "NR"
        case .upstreamConnectFailure: return "UF"
        case .upstreamOverflow: return "UO"
        case .upstreamConnectionTermination: return "UC"
        case .upstreamRequestTimeout: return "UT"
        case .streamIdleTimeout: return "SI"
        case .downstreamProtocolError: return "DPE"
        case .upstreamProtocolError: return "UPE"
        case .downstreamConnectionTermination: return "DC"
        case .noHealthyUpstream: return "UH"
        case .retryLimitExceeded: return "URX"
        case .faultInjected: return "FI"
        case .delayInjected: return "DI"
        case .authorizationDenied: return "RBAC"
        case .rateLimited: return "RL"
        }
    }
}

extension ByteBuffer {
    /// Appends a complete HTTP/1.1 response with a plain-text body.
    func appendLocalReply(status: Int, body: StaticString, close: Bool, flag: ResponseFlag) {
        append("HTTP/1.1 ")
        appendDecimal(status)
        append(" ")
        append(StatusReason.phrase(status))
        append("\r\ncontent-type: text/plain\r\ncontent-length: ")
        appendDecimal(body.utf8CodeUnitCount + 1)
        append("\r\nx-mesh-response-flags: ")
        append(flag.code)
        if close { append("\r\nconnection: close") }
        append("\r\n\r\n")
        append(body)
        append(UInt8(ascii: "\n"))
    }
}

extension Worker {
    /// Appends a random UUID v4 (a new x-request-id) without allocating.
    func appendRequestID(_ out: ByteBuffer) {
        let a = rng.next(), c = rng.next()
        RequestID.append(a, c, into: out)
    }
}
