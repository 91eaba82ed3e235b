import COpenSSL
import CMeshShims
import MeshCore
import MeshIO

/// One TLS connection's OpenSSL state, driven through a custom BIO that reads ciphertext straight
/// from the connection's raw buffer and writes records straight into its output buffer, so the
/// connection does the socket I/O and no memory BIO copies are made. After the handshake it
/// checks the peer's SPIFFE ID (trust domain, and the expected identities on the client side) and
/// keeps it for the request path.
public final class TLSSession: TransportSecurity {
    private let ssl: OpaquePointer
    private let context: TLSContext
    /// The buffers of the call in progress, unretained: they are owned by the connection for the
    /// whole call, and retaining them on every BIO callback showed up in profiles.
    fileprivate var curIn: Unmanaged<ByteBuffer>?
    fileprivate var curOut: Unmanaged<ByteBuffer>?
    private var established = false
    private var reason = ""
    /// The client side's ticket cache for this endpoint (nil on servers).
    public let sessionCache: TLSSessionCache?
    /// Identities the peer must present one of (client side; empty = any in the trust domain).
    private let expectedPeers: [String]
    /// Client side of a TLS origination (OriginationTLS.swift): SNI and the server's names
    /// instead of a SPIFFE ID; nil between sidecars.
    private let origination: OriginationPeerCheck?

    /// The peer's SPIFFE ID, set when the handshake completes.
    public private(set) var peerIdentity: String = ""
    /// The peer's SPIFFE ID as bytes (for headers).
    public private(set) var peerIdentityBytes: [UInt8] = []
    /// The negotiated ALPN protocol ("" if none).
    public private(set) var alpn: String = ""
    /// True if this connection resumed an earlier session.
    public private(set) var resumed = false
    private var peerHashCache: [UInt8]? = nil

    public init(context: TLSContext, sessionCache: TLSSessionCache? = nil, expectedPeers: [String] = [],
                origination: OriginationPeerCheck? = nil) {
        self.context = context
        self.sessionCache = sessionCache
        self.expectedPeers = expectedPeers
        self.origination = origination
        self.ssl = SSL_new(context.ctx)!
        super.init()
        let bio = BIO_new(TLSSession.bioMethod)!
        BIO_set_data(bio, Unmanaged.passUnretained(self).toOpaque())
        BIO_set_init(bio, 1)
        SSL_set_bio(ssl, bio, bio)
        _ = mesh_SSL_set_app_data(ssl, Unmanaged.passUnretained(self).toOpaque())
        if context.role == .server {
            SSL_set_accept_state(ssl)
        } else {
            SSL_set_connect_state(ssl)
            if let o = origination { _ = mesh_SSL_set_tlsext_host_name(ssl, o.sni) }
            if let s = sessionCache?.session, SSL_SESSION_is_resumable(s) == 1 { _ = SSL_set_session(ssl, s) }
        }
    }

    deinit { SSL_free(ssl) }

    public override var isEstablished: Bool { established }
    public override var failureReason: String { reason }

    /// SHA-256 of the peer certificate (lowercase hex), computed once.
    public var peerCertHash: [UInt8] {
        if let h = peerHashCache { return h }
        var h: [UInt8] = []
        if let cert = SSL_get0_peer_certificate(ssl) { h = X509Info.sha256Hex(cert) }
        peerHashCache = h
        return h
    }

    /// The peer's certificate as the control plane reads it (identity, expiry, issuer); nil when
    /// the peer sent none. Not for the request path: it decodes the certificate on every call.
    public var peerCertificateInfo: CertificateInfo? {
        guard let cert = SSL_get0_peer_certificate(ssl) else { return nil }
        return X509Info.info(cert)
    }

    public override func startHandshake(output: ByteBuffer) -> Progress {
        curOut = Unmanaged.passUnretained(output)
        defer { curOut = nil }
        let r = SSL_do_handshake(ssl)
        if r == 1 { return finishHandshake() }
        let e = SSL_get_error(ssl, r)
        if e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE { return .ok }
        recordFailure(e)
        return .failed
    }

    public override func decrypt(raw: ByteBuffer, input: ByteBuffer, output: ByteBuffer, limit: Int) -> Progress {
        curIn = Unmanaged.passUnretained(raw)
        curOut = Unmanaged.passUnretained(output)
        defer { curIn = nil; curOut = nil }
        var result: Progress = .ok
        if !established {
            let r = SSL_do_handshake(ssl)
            if r != 1 {
                let e = SSL_get_error(ssl, r)
                if e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE { return .ok }
                recordFailure(e)
                return .failed
            }
            result = finishHandshake()
            if result == .failed { return .failed }
        }
        while input.readableBytes < limit {
            input.reserve(4 * 1024)
            let n = SSL_read(ssl, input.writePointer, Int32(min(input.writableBytes, Int(Int32.max))))
            if n > 0 {
                input.commit(Int(n))
                // No ciphertext left and nothing buffered inside OpenSSL (processed or not): the
                // next SSL_read could only report WANT_READ, at the price of a record-layer pass
                // and SSL_get_error's look at the error queue, once per read. Stop here instead.
                if raw.isEmpty && SSL_has_pending(ssl) == 0 { break }
                continue
            }
            let e = SSL_get_error(ssl, n)
            if e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE { break }
            if e == SSL_ERROR_ZERO_RETURN { return .closed }
            recordFailure(e)
            return .failed
        }
        return result
    }

    public override func encrypt(_ p: UnsafeRawPointer, _ n: Int, output: ByteBuffer) -> Bool {
        guard established else { reason = "write before handshake"; return false }
        curOut = Unmanaged.passUnretained(output)
        defer { curOut = nil }
        let r = SSL_write(ssl, p, Int32(n))
        if r == Int32(n) { return true }
        recordFailure(SSL_get_error(ssl, r))
        return false
    }

    public override func shutdown(output: ByteBuffer) {
        guard established else { return }
        curOut = Unmanaged.passUnretained(output)
        _ = SSL_shutdown(ssl)
        curOut = nil
        ERR_clear_error()
    }

    /// A connection closed without close_notify would make OpenSSL mark its session as not
    /// resumable; a healthy connection that we close ourselves (pool idle timeout, drain) keeps
    /// its ticket usable for the next connection to the same endpoint.
    public override func dispose() {
        if established && reason.isEmpty {
            SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN)
        }
    }

    /// Frees OpenSSL's record buffers while the connection is idle (OpenSSL refuses while they
    /// hold data, and allocates them again on the next read or write).
    public override func releaseBuffers() {
        if established { _ = SSL_free_buffers(ssl) }
    }

    private func finishHandshake() -> Progress {
        established = true
        resumed = SSL_session_reused(ssl) == 1
        var proto: UnsafePointer<UInt8>? = nil
        var plen: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &proto, &plen)
        if let proto = proto, plen > 0 {
            alpn = String(decoding: UnsafeBufferPointer(start: proto, count: Int(plen)), as: UTF8.self)
        }
        if let o = origination {
            if let why = o.refusal(SSL_get0_peer_certificate(ssl)) { reason = why; return .failed }
            return .handshakeDone
        }
        guard let cert = SSL_get0_peer_certificate(ssl) else {
            if context.role == .server && SSL_get_verify_mode(ssl) & SSL_VERIFY_FAIL_IF_NO_PEER_CERT == 0 {
                return .handshakeDone
            }
            reason = "peer presented no certificate"
            return .failed
        }
        // A gateway's MUTUAL server: the chain was verified against the secret's CA; no SPIFFE ID.
        if !context.spiffePeers { return .handshakeDone }
        guard let id = X509Info.spiffeID(cert), X509Info.isSPIFFE(id, inTrustDomain: context.trustDomain) else {
            reason = "peer certificate has no SPIFFE ID in trust domain \(context.trustDomain) (URI SANs: \(X509Info.uriSANs(cert)))"
            return .failed
        }
        if !expectedPeers.isEmpty && !expectedPeers.contains(id) {
            reason = "peer identity \(id) is not one of \(expectedPeers)"
            return .failed
        }
        peerIdentity = id
        peerIdentityBytes = Array(id.utf8)
        return .handshakeDone
    }

    private func recordFailure(_ sslError: Int32) {
        let v = SSL_get_verify_result(ssl)
        if v != Int(X509_V_OK) {
            reason = "certificate verification failed: " + String(cString: X509_verify_cert_error_string(v))
            ERR_clear_error()
        } else if sslError == SSL_ERROR_SYSCALL || sslError == SSL_ERROR_SSL {
            reason = OpenSSLErrors.drain()
        } else {
            reason = "TLS error \(sslError)"
            ERR_clear_error()
        }
    }

    // MARK: the BIO that connects OpenSSL to the connection's buffers

    nonisolated(unsafe) static let bioMethod: OpaquePointer = {
        let m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "swift-mesh")!
        _ = BIO_meth_set_write(m) { bio, data, len in
            guard let bio = bio, let data = data else { return -1 }
            return Unmanaged<TLSSession>.fromOpaque(BIO_get_data(bio))._withUnsafeGuaranteedRef { s -> Int32 in
                guard let out = s.curOut else { mesh_BIO_set_retry_write(bio); return -1 }
                mesh_BIO_clear_retry_flags(bio)
                out._withUnsafeGuaranteedRef { $0.append(data, Int(len)) }
                return len
            }
        }
        _ = BIO_meth_set_read(m) { bio, data, len in
            guard let bio = bio, let data = data else { return -1 }
            return Unmanaged<TLSSession>.fromOpaque(BIO_get_data(bio))._withUnsafeGuaranteedRef { s -> Int32 in
                mesh_BIO_clear_retry_flags(bio)
                guard let u = s.curIn else { mesh_BIO_set_retry_read(bio); return -1 }
                return u._withUnsafeGuaranteedRef { inb -> Int32 in
                    if inb.readableBytes == 0 { mesh_BIO_set_retry_read(bio); return -1 }
                    let n = min(Int(len), inb.readableBytes)
                    UnsafeMutableRawPointer(data).copyMemory(from: inb.readPointer, byteCount: n)
                    inb.consume(n)
                    return Int32(n)
                }
            }
        }
        _ = BIO_meth_set_ctrl(m) { _, cmd, _, _ in
            switch cmd {
            case BIO_CTRL_FLUSH, BIO_CTRL_PUSH, BIO_CTRL_POP: return 1
            default: return 0
            }
        }
        _ = BIO_meth_set_create(m) { _ in 1 }
        _ = BIO_meth_set_destroy(m) { _ in 1 }
        return m
    }()
}
