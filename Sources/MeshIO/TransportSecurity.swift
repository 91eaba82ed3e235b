import MeshCore

/// The seam between a connection and its transport security (TLS), in the spirit of Envoy's
/// transport socket: the connection does all socket I/O and hands ciphertext to this object, which
/// turns it into plaintext and back. MeshTLS provides the OpenSSL implementation; a connection with
/// no `TransportSecurity` is plain TCP.
open class TransportSecurity {
    public enum Progress {
        /// Keep going: plaintext may have been added to `input`, protocol bytes to `output`.
        case ok
        /// The handshake completed in this call (plaintext may follow in the same call).
        case handshakeDone
        /// The peer sent close_notify.
        case closed
        /// The handshake or a record failed; `failureReason` says why.
        case failed
    }

    public init() {}

    /// True once the handshake has completed.
    open var isEstablished: Bool { false }
    /// Why the last `.failed` happened, for logs and counters.
    open var failureReason: String { "" }

    /// Client side: writes the first handshake flight into `output`.
    open func startHandshake(output: ByteBuffer) -> Progress { .failed }

    /// Consumes ciphertext from `raw`; appends plaintext to `input` while `input` holds less than
    /// `limit` bytes; appends handshake and alert bytes to `output`.
    open func decrypt(raw: ByteBuffer, input: ByteBuffer, output: ByteBuffer, limit: Int) -> Progress { .failed }

    /// Encrypts `n` plaintext bytes into `output`.
    open func encrypt(_ p: UnsafeRawPointer, _ n: Int, output: ByteBuffer) -> Bool { false }

    /// Writes close_notify into `output`.
    open func shutdown(output: ByteBuffer) {}

    /// Called once when the connection is closed, to free native state.
    open func dispose() {}

    /// The connection went idle: free record buffers that hold nothing (they come back on use).
    open func releaseBuffers() {}
}
