import COpenSSL
import CMeshShims
import MeshCore

/// An error while building TLS state from files (bad path, bad PEM, key not matching the cert).
public struct TLSConfigError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ d: String) { description = d }
}

/// The mesh's TLS policy (DESIGN §4): TLS 1.3 between sidecars, ECDHE + AEAD only where TLS 1.2 is
/// accepted, secure groups, no compression, no renegotiation, peers verified against the trust
/// bundle. One `TLSContext` wraps one `SSL_CTX`, shared read-only by every worker; new
/// credentials mean a new context (swapped by the owner), never mutation of this one.
public final class TLSContext: @unchecked Sendable {
    public enum Role: Sendable { case server, client }
    public let ctx: OpaquePointer
    public let role: Role
    /// The trust domain a peer's SPIFFE ID must belong to ("cluster.local").
    public let trustDomain: String
    /// This workload's SPIFFE ID, read from its own certificate (empty if it has none).
    public let localIdentity: String
    /// Whether a peer's certificate must carry a SPIFFE ID in the trust domain (false: a
    /// gateway's MUTUAL server, whose clients chain to the secret's CA and are not workloads).
    public let spiffePeers: Bool
    /// ALPN wire format list (length-prefixed names) that a server selects from.
    let alpnWire: UnsafeMutableBufferPointer<UInt8>
    /// The same list behind a 2-byte length, for the server's ALPN callback (freed with the context).
    private var alpnSelect: UnsafeMutablePointer<UInt8>?

    public struct Options: Sendable {
        public var certChainFile: String
        public var privateKeyFile: String
        public var trustBundleFile: String
        public var trustDomain: String = "cluster.local"
        /// ALPN protocols in preference order ("h2", "http/1.1").
        public var alpn: [String] = ["http/1.1"]
        /// Lowest version accepted: TLS 1.3 between sidecars; 1.2 only where a peer needs it.
        public var minVersion13: Bool = true
        /// Server: demand a client certificate.
        public var requireClientCert: Bool = true
        /// Credentials held in memory (mesh mode: the key never touches a disk); when set they
        /// are used instead of the files above.
        public var certChainPEM: String? = nil
        public var privateKeyPEM: String? = nil
        public var trustBundlePEM: String? = nil
        /// Client only: present no certificate (a workload joining with a token).
        public var withoutCertificate = false
        /// Server only: no session tickets or cache (every handshake verifies the client anew).
        public var noResumption = false
        /// A private key already read (an `EVP_PKEY`, the caller frees it): used instead of the
        /// PEM or file above (a gateway's secret, read from bytes it zeroes; PEMContext.swift).
        nonisolated(unsafe) public var privateKey: OpaquePointer? = nil
        /// Peers must present SPIFFE IDs in the trust domain (false: any certificate chaining to the trust bundle).
        public var spiffePeers = true
        /// Server only: ask for a client certificate at all (false: a gateway's SIMPLE server; then
        /// no trust bundle is needed).
        public var askClientCert = true
        public init(certChainFile: String, privateKeyFile: String, trustBundleFile: String) {
            self.certChainFile = certChainFile
            self.privateKeyFile = privateKeyFile
            self.trustBundleFile = trustBundleFile
        }
    }

    public init(role: Role, options o: Options) throws {
        self.role = role
        self.trustDomain = o.trustDomain
        self.spiffePeers = o.spiffePeers
        guard let ctx = SSL_CTX_new(role == .server ? TLS_server_method() : TLS_client_method()) else {
            throw TLSConfigError("SSL_CTX_new failed: \(OpenSSLErrors.drain())")
        }
        self.ctx = ctx
        var wire: [UInt8] = []
        for p in o.alpn { wire.append(UInt8(p.utf8.count)); wire.append(contentsOf: p.utf8) }
        alpnWire = .allocate(capacity: max(wire.count, 1))
        _ = alpnWire.initialize(from: wire)
        let alpnCount = wire.count

        _ = mesh_SSL_CTX_set_min_proto_version(ctx, o.minVersion13 ? TLS1_3_VERSION : TLS1_2_VERSION)
        _ = mesh_SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION)
        let opts = mesh_ssl_secure_options()
        _ = SSL_CTX_set_options(ctx, opts)
        let tls12 = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
        guard SSL_CTX_set_cipher_list(ctx, tls12) == 1 else { throw TLSConfigError("cipher list refused: \(OpenSSLErrors.drain())") }
        guard mesh_SSL_CTX_set1_groups_list(ctx, "X25519:P-256:P-384") == 1 else {
            throw TLSConfigError("groups refused: \(OpenSSLErrors.drain())")
        }
        _ = mesh_SSL_CTX_set_mode(ctx, Int(SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER))

        if o.withoutCertificate && role == .client {
            // Nothing to present: the server authenticates this client some other way.
        } else if let chain = o.certChainPEM {
            let certs = TLSContext.certificates(pem: chain)
            defer { for c in certs { X509_free(c) } }
            guard let leaf = certs.first, SSL_CTX_use_certificate(ctx, leaf) == 1 else {
                throw TLSConfigError("cannot use the certificate chain held in memory: \(OpenSSLErrors.drain())")
            }
            for c in certs.dropFirst() where mesh_SSL_CTX_add1_chain_cert(ctx, c) != 1 {
                throw TLSConfigError("cannot add an intermediate certificate: \(OpenSSLErrors.drain())")
            }
        } else if SSL_CTX_use_certificate_chain_file(ctx, o.certChainFile) != 1 {
            throw TLSConfigError("cannot load certificate chain \(o.certChainFile): \(OpenSSLErrors.drain())")
        }
        if o.withoutCertificate && role == .client {
            // No key either.
        } else if let key = o.privateKey {
            guard SSL_CTX_use_PrivateKey(ctx, key) == 1 else {
                throw TLSConfigError("cannot use the private key held in memory: \(OpenSSLErrors.drain())")
            }
        } else if let keyPEM = o.privateKeyPEM {
            var bytes = Array(keyPEM.utf8)
            let key: OpaquePointer? = bytes.withUnsafeMutableBytes { b in
                guard let bio = BIO_new_mem_buf(b.baseAddress, Int32(b.count)) else { return nil }
                defer { BIO_free(bio) }
                return PEM_read_bio_PrivateKey(bio, nil, nil, nil)
            }
            guard let key, SSL_CTX_use_PrivateKey(ctx, key) == 1 else {
                throw TLSConfigError("cannot use the private key held in memory: \(OpenSSLErrors.drain())")
            }
            EVP_PKEY_free(key)
        } else if SSL_CTX_use_PrivateKey_file(ctx, o.privateKeyFile, SSL_FILETYPE_PEM) != 1 {
            throw TLSConfigError("cannot load private key \(o.privateKeyFile): \(OpenSSLErrors.drain())")
        }
        guard (o.withoutCertificate && role == .client) || SSL_CTX_check_private_key(ctx) == 1 else {
            throw TLSConfigError("private key \(o.privateKeyFile) does not match certificate \(o.certChainFile)")
        }
        if role == .server && !o.askClientCert && o.trustBundlePEM == nil && o.trustBundleFile.isEmpty {
            // A server that asks no client for a certificate verifies none.
        } else if let bundle = o.trustBundlePEM {
            let roots = TLSContext.certificates(pem: bundle)
            defer { for c in roots { X509_free(c) } }
            guard !roots.isEmpty, let store = SSL_CTX_get_cert_store(ctx) else { throw TLSConfigError("the trust bundle held in memory has no certificate") }
            for r in roots where X509_STORE_add_cert(store, r) != 1 {
                throw TLSConfigError("cannot add a trust anchor: \(OpenSSLErrors.drain())")
            }
        } else if SSL_CTX_load_verify_locations(ctx, o.trustBundleFile, nil) != 1 {
            throw TLSConfigError("cannot load trust bundle \(o.trustBundleFile): \(OpenSSLErrors.drain())")
        }
        if let leaf = SSL_CTX_get0_certificate(ctx) {
            localIdentity = X509Info.spiffeID(leaf) ?? ""
        } else {
            localIdentity = ""
        }

        switch role {
        case .server:
            let mode = !o.askClientCert ? SSL_VERIFY_NONE : o.requireClientCert ? (SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT) : SSL_VERIFY_PEER
            SSL_CTX_set_verify(ctx, mode, nil)
            let sid: StaticString = "swift-mesh"
            _ = SSL_CTX_set_session_id_context(ctx, sid.utf8Start, UInt32(sid.utf8CodeUnitCount))
            if o.noResumption {
                _ = SSL_CTX_set_options(ctx, mesh_SSL_OP_NO_TICKET())
                _ = mesh_SSL_CTX_set_session_cache_mode(ctx, Int(SSL_SESS_CACHE_OFF))
            }
            if alpnCount > 0 {
                SSL_CTX_set_alpn_select_cb(ctx, { ssl, out, outlen, inp, inlen, arg in
                    guard let arg = arg, let inp = inp else { return SSL_TLSEXT_ERR_NOACK }
                    let wire = arg.assumingMemoryBound(to: UInt8.self)
                    // First byte pair: our list length is stored before the list.
                    let len = UInt32(wire[0]) | (UInt32(wire[1]) << 8)
                    var sel: UnsafeMutablePointer<UInt8>? = nil
                    var selLen: UInt8 = 0
                    let r = SSL_select_next_proto(&sel, &selLen, wire + 2, len, inp, inlen)
                    if r != OPENSSL_NPN_NEGOTIATED { return SSL_TLSEXT_ERR_NOACK }
                    out?.pointee = UnsafePointer(sel)
                    outlen?.pointee = selLen
                    return SSL_TLSEXT_ERR_OK
                }, UnsafeMutableRawPointer({ () -> UnsafeMutablePointer<UInt8> in
                    let p = TLSContext.lengthPrefixed(alpnWire, alpnCount)
                    alpnSelect = p
                    return p
                }()))
            }
        case .client:
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
            if alpnCount > 0 { _ = SSL_CTX_set_alpn_protos(ctx, alpnWire.baseAddress, UInt32(alpnCount)) }
            _ = mesh_SSL_CTX_set_session_cache_mode(ctx, Int(SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE))
            SSL_CTX_sess_set_new_cb(ctx, { ssl, session in
                guard let ssl = ssl, let session = session, let p = mesh_SSL_get_app_data(ssl) else { return 0 }
                let s = Unmanaged<TLSSession>.fromOpaque(p).takeUnretainedValue()
                guard let cache = s.sessionCache else { return 0 }
                cache.store(session)
                return 1
            })
        }
    }

    /// Copies the ALPN wire list behind a 2-byte little-endian length, for the select callback.
    private static func lengthPrefixed(_ wire: UnsafeMutableBufferPointer<UInt8>, _ count: Int) -> UnsafeMutablePointer<UInt8> {
        let p = UnsafeMutablePointer<UInt8>.allocate(capacity: count + 2)
        p[0] = UInt8(count & 0xff)
        p[1] = UInt8(count >> 8)
        for i in 0..<count { p[i + 2] = wire[i] }
        return p
    }

    deinit {
        SSL_CTX_free(ctx)
        alpnWire.deallocate()
        alpnSelect?.deallocate()
    }

    /// Every certificate of a PEM text (the caller frees them).
    public static func certificates(pem: String) -> [OpaquePointer] {
        var bytes = Array(pem.utf8)
        return bytes.withUnsafeMutableBytes { b -> [OpaquePointer] in
            guard let bio = BIO_new_mem_buf(b.baseAddress, Int32(b.count)) else { return [] }
            defer { BIO_free(bio) }
            var out: [OpaquePointer] = []
            while let c = PEM_read_bio_X509(bio, nil, nil, nil) { out.append(c) }
            ERR_clear_error()
            return out
        }
    }
}

/// The client side's resumable session for one upstream endpoint (per worker, so no lock): each
/// new ticket replaces the previous one, and the next connection to that endpoint offers it.
public final class TLSSessionCache {
    public private(set) var session: OpaquePointer?
    public private(set) var stored: UInt64 = 0
    public init() {}
    func store(_ s: OpaquePointer) {
        if let old = session { SSL_SESSION_free(old) }
        session = s
        stored &+= 1
    }
    deinit { if let s = session { SSL_SESSION_free(s) } }

    /// Forgets the stored session (new credentials: the next handshake is a full one).
    public func clear() {
        if let s = session { SSL_SESSION_free(s) }
        session = nil
    }
}

/// Reads OpenSSL's thread-local error queue into one line, clearing it.
public enum OpenSSLErrors {
    public static func drain() -> String {
        var parts: [String] = []
        var buf = [UInt8](repeating: 0, count: 256)
        while true {
            let e = ERR_get_error()
            if e == 0 { break }
            buf.withUnsafeMutableBufferPointer { b in
                b.baseAddress!.withMemoryRebound(to: CChar.self, capacity: 256) { ERR_error_string_n(e, $0, 256) }
            }
            let len = buf.firstIndex(of: 0) ?? buf.count
            parts.append(String(decoding: buf[..<len], as: UTF8.self))
        }
        return parts.isEmpty ? "unknown error" : parts.joined(separator: "; ")
    }
}
