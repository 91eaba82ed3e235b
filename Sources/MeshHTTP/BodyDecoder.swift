import MeshCore

/// Reads an HTTP/1.1 message body (RFC 9112 §6.3) and yields its data without the framing, the
/// same steps whether the body is delimited by a length, by chunks or by the close: the exchange
/// sees bytes, never framing, so any hop can carry them. Chunked trailers go to `trailers`.
public struct BodyDecoder {
    public typealias Mode = BodyFramer.Mode
    public private(set) var mode: Mode = .none
    public private(set) var remaining: Int64 = 0
    private var chunked = ChunkedDecoder()
    public private(set) var isDone = true

    public init() {}

    /// Where chunked trailer lines are copied (`name: value\r\n`...).
    public var trailers: ByteBuffer? {
        get { chunked.trailerSink }
        set { chunked.trailerSink = newValue }
    }

    /// A request body: chunked, a length, or none (requests never run until close).
    public mutating func startRequest(_ head: HTTPHead) {
        chunked.reset()
        (mode, remaining) = BodyFramer.requestFraming(head)
        isDone = mode == .none
    }

    /// A response body, given the request method it answers.
    public mutating func startResponse(_ head: HTTPHead, requestMethod: HTTPMethod) {
        chunked.reset()
        (mode, remaining) = BodyFramer.responseFraming(head, requestMethod: requestMethod)
        isDone = mode == .none
    }

    /// The same step kinds as `ChunkedDecoder` (data to forward, framing to skip, the end).
    public typealias Step = ChunkedDecoder.Step

    /// Decodes from `p[0..<n]`: the kind and length of the next run of bytes.
    @inline(__always) public mutating func next(_ p: UnsafePointer<UInt8>, _ n: Int) -> Step {
        switch mode {
        case .none:
            isDone = true
            return .end(0)
        case .length:
            if remaining == 0 { isDone = true; return .end(0) }
            let take = Int(min(Int64(n), remaining))
            remaining -= Int64(take)
            if remaining == 0 { isDone = true }
            return .data(take)
        case .untilClose:
            return .data(n)
        case .chunked:
            let s = chunked.next(p, n)
            if case .end = s { isDone = true }
            return s
        }
    }

    /// A length-delimited body whose bytes have all been read ends without another read.
    @inline(__always) public var lengthComplete: Bool { mode == .length && remaining == 0 }

    /// The peer closed: a body delimited by the close ends here; any other body is truncated.
    public mutating func finishAtClose() -> Bool {
        if mode == .untilClose || mode == .none { isDone = true; return true }
        if mode == .length && remaining == 0 { isDone = true; return true }
        return isDone
    }
}
