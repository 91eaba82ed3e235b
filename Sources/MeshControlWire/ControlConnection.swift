import COpenSSL
import MeshCore
import MeshTLS
import MeshIO
import MeshPKI
#if canImport(Glibc)
import Glibc
#endif

/// One kept-alive client connection to a control server: requests go one after another over
/// the same (TLS) connection until the server answers with `connection: close` or an error
/// ends it. The sidecar's config stream runs on one (GET, ACK, GET, ...), so a long poll costs
/// no handshake. Not thread-safe: one owner.
public final class ControlConnection {
    public let address: SocketAddress
    let stream: ControlStream
    /// The server said `connection: close` on its last answer, or a request failed: open another.
    public private(set) var isClosed = false

    init(address: SocketAddress, stream: ControlStream) {
        self.address = address
        self.stream = stream
    }

    /// Connects to `address` over TLS with `context`; `expectPeer`: the SPIFFE ID the server must
    /// present (checked before anything is sent). Errors name the address.
    public static func open(_ address: SocketAddress, context: TLSContext, expectPeer: String?,
                            timeoutSeconds: Int = 10) throws(CAError) -> ControlConnection {
        let s = try ControlStream.connect(address, context: context, timeoutSeconds: timeoutSeconds)
        if let want = expectPeer {
            guard let cert = s.peerCertificate else { throw CAError("\(address) presented no certificate") }
            let got = X509Info.spiffeID(cert) ?? "(no SPIFFE ID)"
            X509_free(cert)
            guard got == want else { throw CAError("\(address) is \(got), not meshd (\(want)); refusing to send it a token or a CSR") }
        }
        return ControlConnection(address: address, stream: s)
    }

    /// One request on this connection, waiting at most `timeoutSeconds` for each read and write.
    /// `close` in the answer: the server ends the connection after it (the answer itself is good).
    public func request(method: String, path: String, body: String = "",
                        timeoutSeconds: Int = 10) throws(CAError) -> (status: Int, body: String, close: Bool) {
        guard !isClosed else { throw CAError("\(address): the connection is closed") }
        ControlStream.setTimeouts(stream.fd, seconds: timeoutSeconds)
        let text = "\(method) \(path) HTTP/1.1\r\nhost: \(address)\r\ncontent-length: \(body.utf8.count)\r\n\r\n" + body
        guard stream.write(Array(text.utf8)) else {
            isClosed = true
            throw CAError("\(address): the connection failed while sending (\(ControlConnection.lastError()))")
        }
        guard case .message(let head, _, let rbody) = stream.readMessage(request: false, maxBody: 64 << 20) else {
            isClosed = true
            throw CAError("\(address): no answer (the connection closed or timed out after \(timeoutSeconds)s)")
        }
        if !head.keepAlive { isClosed = true }
        return (head.status, String(decoding: rbody, as: UTF8.self), !head.keepAlive)
    }

    static func lastError() -> String {
        let e = errno
        return e == 0 ? "closed" : Socket.errorText(e)
    }
}
