import MeshCore

/// Responses the proxy generates itself (no route, upstream down, timeouts, bad requests), with
/// Envoy's response flag for each, so logs and metrics say why a request failed.
enum ResponseFlag: UInt8, Sendable {
    case none, noRoute, upstreamConnectFailure, upstreamOverflow, upstreamConnectionTermination,
         upstreamRequestTimeout, streamIdleTimeout, downstreamProtocolError, upstreamProtocolError,
         downstreamConnectionTermination

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
        }
    }
}

enum StatusText {
    static func reason(_ status: Int) -> StaticString {
        switch status {
        case 0: return "OK"
        case 400: return "Bad Request"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 408: return "Request Timeout"
        case 413: return "Content Too Large"
        case 414: return "URI Too Long"
        case 417: return "Expectation Failed"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 501: return "Not Implemented"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 504: return "Gateway Timeout"
        case 505: return "HTTP Version Not Supported"
        default: return "Error"
        }
    }
}

extension ByteBuffer {
    /// Appends a complete HTTP/1.1 response with a plain-text body.
    func appendLocalReply(status: Int, body: StaticString, close: Bool, flag: ResponseFlag) {
        append("HTTP/1.1 ")
        appendDecimal(status)
        append(" ")
        append(StatusText.reason(status))
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
