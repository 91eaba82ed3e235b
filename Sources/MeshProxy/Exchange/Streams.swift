import MeshCore
import MeshHTTP
import MeshTLS

/// The client side of one exchange, whatever its protocol: an HTTP/1.1 connection (one exchange
/// at a time, `DownstreamConnection`) or one HTTP/2 stream (`H2ServerStream`). The exchange
/// hands it response heads and bytes; it hands the exchange the request.
protocol DownstreamStream: AnyObject {
    /// The caller's TLS session (mTLS from another sidecar), nil for a plaintext caller.
    var callerTLS: TLSSession? { get }
    /// The caller's identity in the worker's peer table (0: unknown).
    var callerPeer: Int { get }
    /// A captured connection: where the app was going (a mesh service's VIP and port, whose
    /// service routes a request whose Host names none); nil otherwise.
    var capturedDestination: IPEndpoint? { get }
    /// A gateway server with `tls.httpsRedirect`: requests get 301 to https (Gateway/).
    var redirectsToHTTPS: Bool { get }
    /// The gateway port the request came on (0: not a gateway port).
    var gatewayPort: Int { get }
    /// A 1xx head (100 Continue, 103 Early Hints).
    func sendInformational(_ head: MessageHead)
    /// The final response head; `close`: no other request may follow on this connection.
    /// Returns the bytes it took, for the response-size metric.
    func sendResponseHead(_ head: MessageHead, endStream: Bool, close: Bool) -> Int
    func sendResponseBody(_ p: UnsafePointer<UInt8>, _ n: Int)
    func endResponse(trailers: MessageHead?)
    /// True while the client has not taken what was sent (the upstream stops reading).
    var responseCongested: Bool { get }
    /// The exchange takes request body again (its upstream has room).
    func resumeRequestBody()
    /// Bytes moved on the exchange: the stream idle timeout starts again.
    func noteActivity()
    /// The response started and cannot be completed: reset the stream with `h2Error` (an
    /// `H2Error` code), or close the connection.
    func abortResponse(h2Error: UInt32)
    /// The exchange is over and recorded; the stream may take its next request or end.
    func exchangeFinished()
    /// Takes over `up` as a raw tunnel after 101 Switching Protocols (HTTP/1.1 only);
    /// `tcpKey` labels its TCP metrics. False when this stream cannot tunnel.
    func startTunnel(_ up: UpstreamConnection, tcpKey: UInt64) -> Bool
}

/// The server side of one exchange attempt: a pooled HTTP/1.1 connection (`H1UpstreamStream`)
/// or a stream on a shared HTTP/2 connection (`H2UpstreamStream`). It writes the exchange's
/// request and reports the response back to it (`Exchange.responseHead`, `responseData`,
/// `responseEnd`, `upstreamFailed`).
protocol UpstreamStream: AnyObject {
    /// Takes a connection or stream to `pool` for this attempt; the request goes out once it is
    /// ready (at once for a pooled connection).
    func open(_ pool: EndpointPool, _ cluster: ProxySnapshot.Cluster, _ snapshot: ProxySnapshot, fresh: Bool) -> UpstreamOpen
    func sendBody(_ p: UnsafePointer<UInt8>, _ n: Int)
    func endBody(trailers: MessageHead?)
    /// True while the upstream has no room for more request body (it calls
    /// `Exchange.upstreamWritable` when it has).
    var bodyCongested: Bool { get }
    /// The client took what was sent: read more of the response.
    func resumeResponse()
    /// The TLS session of the connection in use (its peer's identity), nil for plaintext.
    var tlsSession: TLSSession? { get }
    /// Gives the attempt up (closes the connection, or resets the stream).
    func cancel()
    /// The response is complete: the connection goes back to its pool when it can carry another.
    func release()
}

/// How opening an upstream attempt went.
enum UpstreamOpen { case opened, overflow, failed }

/// HTTP/2 error codes the exchange resets a client's stream with (RFC 9113 §7).
enum H2Error {
    static let internalError: UInt32 = 0x2
    static let cancel: UInt32 = 0x8
}
