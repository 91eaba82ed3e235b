/// How a message body is delimited, and the running state of reading one (RFC 9112 §6.3).
/// `advance` says how many of the available bytes belong to the body (data and chunk framing
/// together, for verbatim HTTP/1.1 forwarding) and whether the body ended there.
public struct BodyFramer {
    public enum Mode: Sendable, Equatable { case none, length, chunked, untilClose }
    public private(set) var mode: Mode = .none
    public private(set) var remaining: Int64 = 0
    public private(set) var chunked = ChunkedDecoder()
    public private(set) var isDone = true

    public init() {}

    /// Framing of a request body: chunked, a length, or none (requests never run until close).
    public mutating func startRequest(_ head: HTTPHead) {
        chunked.reset()
        (mode, remaining) = BodyFramer.requestFraming(head)
        isDone = mode == .none
    }

    /// Framing of a response body, given the request method it answers.
    public mutating func startResponse(_ head: HTTPHead, requestMethod: HTTPMethod) {
        chunked.reset()
        (mode, remaining) = BodyFramer.responseFraming(head, requestMethod: requestMethod)
        isDone = mode == .none
    }

    /// How a request body is delimited, and its length (RFC 9112 §6.3); shared with `BodyDecoder`.
    public static func requestFraming(_ head: HTTPHead) -> (Mode, Int64) {
        if head.chunked { return (.chunked, 0) }
        if head.contentLength > 0 { return (.length, head.contentLength) }
        return (.none, 0)
    }

    /// How a response body is delimited, given the request method it answers; shared with `BodyDecoder`.
    public static func responseFraming(_ head: HTTPHead, requestMethod: HTTPMethod) -> (Mode, Int64) {
        let s = head.status
        if requestMethod == .head || s == 204 || s == 304 || (s >= 100 && s < 200) { return (.none, 0) }
        if head.chunked { return (.chunked, 0) }
        if head.contentLength > 0 { return (.length, head.contentLength) }
        if head.contentLength == 0 { return (.none, 0) }
        return (.untilClose, 0)
    }

    /// Raw bytes in both directions until either side closes (after 101 Switching Protocols).
    public mutating func startTunnel() { mode = .untilClose; isDone = false }

    public struct Advance: Sendable { public var forward: Int; public var done: Bool; public var error: StaticString? }

    /// Consumes body bytes from `p[0..<n]`.
    public mutating func advance(_ p: UnsafePointer<UInt8>, _ n: Int) -> Advance {
        switch mode {
        case .none:
            return Advance(forward: 0, done: true, error: nil)
        case .length:
            let take = Int(min(Int64(n), remaining))
            remaining -= Int64(take)
            if remaining == 0 { isDone = true }
            return Advance(forward: take, done: isDone, error: nil)
        case .untilClose:
            return Advance(forward: n, done: false, error: nil)
        case .chunked:
            var used = 0
            while used < n {
                switch chunked.next(p + used, n - used) {
                case .data(let k), .framing(let k): used += k
                case .needMore(let k): used += k; return Advance(forward: used, done: false, error: nil)
                case .end(let k): used += k; isDone = true; return Advance(forward: used, done: true, error: nil)
                case .error(let e): return Advance(forward: used, done: false, error: e)
                }
            }
            return Advance(forward: used, done: false, error: nil)
        }
    }

    /// The peer closed: a body delimited by close ends here; any other body is truncated.
    public mutating func finishAtClose() -> Bool {
        if mode == .untilClose { isDone = true; return true }
        return isDone
    }
}
