import MeshCore
import MeshIO

/// The inbound transport for PeerAuthentication PERMISSIVE and DISABLE: it looks at the first
/// byte a caller sends (a TLS record starts with 0x16, a handshake) and then either runs the
/// mutual-TLS session or passes bytes through as plaintext, on the same port. STRICT listeners
/// use a `TLSSession` directly and never pay for this.
public final class PermissiveSecurity: TransportSecurity {
    enum Mode { case undecided, tls, plain }
    private var mode = Mode.undecided
    private let tls: TLSSession?
    private let allowPlain: Bool
    private var reason = ""

    /// `tls` nil: DISABLE (plaintext only); `allowPlain` false would be STRICT.
    public init(tls: TLSSession?, allowPlain: Bool = true) {
        self.tls = tls
        self.allowPlain = allowPlain
    }

    /// The TLS session when the caller chose TLS.
    public var session: TLSSession? { mode == .tls ? tls : nil }

    public override var isEstablished: Bool {
        switch mode {
        case .undecided: return false
        case .plain: return true
        case .tls: return tls?.isEstablished ?? false
        }
    }

    public override var failureReason: String { mode == .tls ? (tls?.failureReason ?? "") : reason }

    public override func decrypt(raw: ByteBuffer, input: ByteBuffer, output: ByteBuffer, limit: Int) -> Progress {
        if mode == .undecided {
            if raw.isEmpty { return .ok }
            if raw[raw.readIndex] == 0x16 {
                guard tls != nil else { reason = "a TLS client on a plaintext-only port (PeerAuthentication DISABLE)"; return .failed }
                mode = .tls
            } else {
                guard allowPlain else { reason = "plaintext refused (PeerAuthentication STRICT)"; return .failed }
                mode = .plain
                move(raw, input, limit)
                return .handshakeDone
            }
        }
        if mode == .tls { return tls!.decrypt(raw: raw, input: input, output: output, limit: limit) }
        move(raw, input, limit)
        return .ok
    }

    private func move(_ raw: ByteBuffer, _ input: ByteBuffer, _ limit: Int) {
        let n = min(raw.readableBytes, max(0, limit - input.readableBytes))
        if n > 0 {
            input.append(raw.readPointer, n)
            raw.consume(n)
        }
    }

    public override func encrypt(_ p: UnsafeRawPointer, _ n: Int, output: ByteBuffer) -> Bool {
        switch mode {
        case .tls: return tls!.encrypt(p, n, output: output)
        case .plain: output.append(p, n); return true
        case .undecided: return false
        }
    }

    public override func shutdown(output: ByteBuffer) { if mode == .tls { tls?.shutdown(output: output) } }

    public override func dispose() { tls?.dispose() }
    public override func releaseBuffers() { if mode == .tls { tls?.releaseBuffers() } }
}
