import COpenSSL
import CMeshShims
import MeshCore
import MeshTLS

/// Why a certificate operation failed, in words for the log or the API caller.
public struct CAError: Error, CustomStringConvertible, Sendable {
    public let description: String
    /// The HTTP status when meshd refused the request (401 token, 403 identity, 400 CSR).
    public let refusal: Int?
    /// The request was sent whole but no answer came: it may have been carried out.
    public var afterSend = false
    public init(_ d: String, refusal: Int? = nil) { description = d; self.refusal = refusal }
}

/// The certificate operations of the mesh, on OpenSSL 3, with PEM text at the edges: EC P-256
/// keys, certificate signing requests with a SPIFFE URI SAN, a self-signed root, and workload
/// certificates issued from a CA. Control path only.
public enum MeshCrypto {
    // MARK: PEM and BIO plumbing

    static func bioText(_ bio: OpaquePointer) -> String {
        var p: UnsafeMutablePointer<CChar>? = nil
        let n = mesh_BIO_get_mem_data(bio, &p)
        guard let p, n > 0 else { return "" }
        return p.withMemoryRebound(to: UInt8.self, capacity: n) { String(decoding: UnsafeBufferPointer(start: $0, count: n), as: UTF8.self) }
    }

    static func withReadBIO<R>(_ pem: String, _ body: (OpaquePointer) throws(CAError) -> R) throws(CAError) -> R {
        var bytes = Array(pem.utf8)
        guard let bio = bytes.withUnsafeMutableBytes({ BIO_new_mem_buf($0.baseAddress, Int32($0.count)) }) else {
            throw CAError("out of memory")
        }
        defer { BIO_free(bio) }
        // BIO_new_mem_buf reads the bytes in place: keep them alive for the body.
        return try withExtendedLifetime(bytes) { () throws(CAError) -> R in try body(bio) }
    }

    static func writeBIO(_ body: (OpaquePointer) -> Int32) throws(CAError) -> String {
        guard let bio = BIO_new(BIO_s_mem()) else { throw CAError("out of memory") }
        defer { BIO_free(bio) }
        guard body(bio) == 1 else { throw CAError("PEM encoding failed: \(OpenSSLErrors.drain())") }
        return bioText(bio)
    }

    /// An owned EVP_PKEY.
    public final class PrivateKey: @unchecked Sendable {
        let pkey: OpaquePointer
        init(_ p: OpaquePointer) { pkey = p }
        deinit { EVP_PKEY_free(pkey) }

        /// A new EC P-256 key, generated in memory.
        public static func generate() throws(CAError) -> PrivateKey {
            guard let ctx = EVP_PKEY_CTX_new_from_name(nil, "EC", nil) else { throw CAError("EC unavailable: \(OpenSSLErrors.drain())") }
            defer { EVP_PKEY_CTX_free(ctx) }
            var key: OpaquePointer? = nil
            guard EVP_PKEY_keygen_init(ctx) == 1, EVP_PKEY_CTX_set_group_name(ctx, "P-256") == 1,
                  EVP_PKEY_generate(ctx, &key) == 1, let k = key else {
                throw CAError("key generation failed: \(OpenSSLErrors.drain())")
            }
            return PrivateKey(k)
        }

        public static func load(pem: String) throws(CAError) -> PrivateKey {
            try withReadBIO(pem) { (bio) throws(CAError) -> PrivateKey in
                guard let k = PEM_read_bio_PrivateKey(bio, nil, nil, nil) else { throw CAError("not a PEM private key: \(OpenSSLErrors.drain())") }
                return PrivateKey(k)
            }
        }

        /// PKCS#8 PEM (unencrypted: files holding it are mode 0600; workload keys never leave memory).
        public func pem() throws(CAError) -> String {
            try writeBIO { PEM_write_bio_PrivateKey($0, pkey, nil, nil, 0, nil, nil) }
        }
    }

    /// An owned X509.
    public final class Certificate: @unchecked Sendable {
        let x509: OpaquePointer
        init(_ x: OpaquePointer) { x509 = x }
        deinit { X509_free(x509) }

        /// Every certificate of a PEM text, in order. Text around the PEM blocks is ignored, but a
        /// block that does not parse (a file cut short, a damaged line) is an error, not the end.
        public static func loadAll(pem: String) throws(CAError) -> [Certificate] {
            try withReadBIO(pem) { (bio) throws(CAError) -> [Certificate] in
                var out: [Certificate] = []
                while let c = PEM_read_bio_X509(bio, nil, nil, nil) { out.append(Certificate(c)) }
                // The reader stops at the end of the text ("no start line") or at a bad block.
                let last = ERR_peek_last_error()
                let atEnd = ERR_GET_LIB(last) == ERR_LIB_PEM && ERR_GET_REASON(last) == PEM_R_NO_START_LINE
                let reason = OpenSSLErrors.drain()
                if !atEnd {
                    throw CAError("PEM certificate \(out.count + 1) is malformed or cut short (\(reason))")
                }
                if out.isEmpty { throw CAError("no PEM certificate found") }
                return out
            }
        }

        public func pem() throws(CAError) -> String { try writeBIO { PEM_write_bio_X509($0, x509) } }
        public var info: CertificateInfo { X509Info.info(x509) }

        /// Whether `key` is this certificate's key.
        public func matches(_ key: PrivateKey) -> Bool { X509_check_private_key(x509, key.pkey) == 1 }
    }

    /// Whether the first certificate of `chainPEM` verifies up to one of `rootsPEM`, with the
    /// rest of the chain as intermediates (as a peer trusting only those roots would check it).
    public static func verify(chainPEM: String, rootsPEM: String) -> Bool {
        verifyFailure(chainPEM: chainPEM, rootsPEM: rootsPEM) == nil
    }

    /// Why the first certificate of `chainPEM` does not verify up to one of `rootsPEM` (OpenSSL's
    /// reason, such as "certificate has expired"), or nil when it does.
    public static func verifyFailure(chainPEM: String, rootsPEM: String) -> String? {
        let chain = TLSContext.certificates(pem: chainPEM), roots = TLSContext.certificates(pem: rootsPEM)
        defer { for c in chain + roots { X509_free(c) } }
        return CertificateCheck.chainFailure(chain, roots: roots, now: nil)?.reason
    }

    // MARK: names, serials, extensions

    static func name(_ entries: [(String, String)]) -> OpaquePointer? {
        guard let n = X509_NAME_new() else { return nil }
        for (k, v) in entries {
            var bytes = Array(v.utf8)
            _ = bytes.withUnsafeMutableBufferPointer { X509_NAME_add_entry_by_txt(n, k, mesh_MBSTRING_ASC(), $0.baseAddress, Int32($0.count), -1, 0) }
        }
        return n
    }

    static func randomSerial(_ x: OpaquePointer) -> Bool {
        guard let bn = BN_new() else { return false }
        defer { BN_free(bn) }
        guard BN_rand(bn, 127, -1, 0) == 1 else { return false }
        return BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != nil
    }

    static func addExtension(_ x: OpaquePointer, issuer: OpaquePointer, _ nid: Int32, _ value: String) -> Bool {
        var ctx = X509V3_CTX()
        X509V3_set_ctx(&ctx, issuer, x, nil, nil, 0)
        guard let ext = X509V3_EXT_conf_nid(nil, &ctx, nid, value) else { return false }
        defer { X509_EXTENSION_free(ext) }
        return X509_add_ext(x, ext, -1) == 1
    }

    // MARK: CSR

    /// A PEM CSR for `key` asking for the URI SAN `identity` (a SPIFFE ID).
    public static func csr(key: PrivateKey, identity: String) throws(CAError) -> String {
        guard let req = X509_REQ_new() else { throw CAError("out of memory") }
        defer { X509_REQ_free(req) }
        _ = X509_REQ_set_version(req, 0)
        if let n = name([("O", "swift-mesh")]) { _ = X509_REQ_set_subject_name(req, n); X509_NAME_free(n) }
        guard X509_REQ_set_pubkey(req, key.pkey) == 1 else { throw CAError("CSR: \(OpenSSLErrors.drain())") }
        guard let exts = mesh_sk_X509_EXTENSION_new() else { throw CAError("out of memory") }
        defer { mesh_sk_X509_EXTENSION_free_all(exts) }
        guard let san = X509V3_EXT_conf_nid(nil, nil, NID_subject_alt_name, "URI:\(identity)") else {
            throw CAError("CSR: bad identity \"\(identity)\": \(OpenSSLErrors.drain())")
        }
        _ = mesh_sk_X509_EXTENSION_push(exts, san)
        guard X509_REQ_add_extensions(req, exts) == 1, X509_REQ_sign(req, key.pkey, EVP_sha256()) > 0 else {
            throw CAError("CSR: \(OpenSSLErrors.drain())")
        }
        return try writeBIO { PEM_write_bio_X509_REQ($0, req) }
    }

    /// A parsed CSR whose signature checked out: its public key and the URI SANs it asks for.
    public struct VerifiedCSR {
        let req: ReqBox
        public let uris: [String]
    }

    final class ReqBox {
        let req: OpaquePointer
        init(_ r: OpaquePointer) { req = r }
        deinit { X509_REQ_free(req) }
    }

    /// Parses a PEM CSR and checks its self-signature (proof that the caller holds the key).
    public static func verifyCSR(_ pem: String) throws(CAError) -> VerifiedCSR {
        let box = try withReadBIO(pem) { (bio) throws(CAError) -> ReqBox in
            guard let r = PEM_read_bio_X509_REQ(bio, nil, nil, nil) else { throw CAError("not a PEM certificate signing request") }
            return ReqBox(r)
        }
        guard let pub = X509_REQ_get0_pubkey(box.req), X509_REQ_verify(box.req, pub) == 1 else {
            ERR_clear_error()
            throw CAError("the CSR's signature does not verify")
        }
        guard EVP_PKEY_get_base_id(pub) == EVP_PKEY_EC, EVP_PKEY_get_bits(pub) >= 256 else {
            throw CAError("the CSR's key must be EC P-256 (or stronger)")
        }
        var uris: [String] = []
        if let exts = X509_REQ_get_extensions(box.req) {
            defer { mesh_sk_X509_EXTENSION_free_all(exts) }
            for i in 0..<mesh_sk_X509_EXTENSION_num(exts) {
                guard let e = mesh_sk_X509_EXTENSION_value(exts, i),
                      OBJ_obj2nid(X509_EXTENSION_get_object(e)) == NID_subject_alt_name,
                      let raw = X509V3_EXT_d2i(e) else { continue }
                let names = OpaquePointer(raw)
                defer { mesh_GENERAL_NAMES_free(names) }
                for k in 0..<mesh_sk_GENERAL_NAME_num(names) {
                    guard let gn = mesh_sk_GENERAL_NAME_value(names, k) else { continue }
                    if gn.pointee.type == GEN_URI, let ia5 = gn.pointee.d.uniformResourceIdentifier,
                       let d = ASN1_STRING_get0_data(ia5) {
                        uris.append(String(decoding: UnsafeBufferPointer(start: d, count: Int(ASN1_STRING_length(ia5))), as: UTF8.self))
                    } else {
                        uris.append("(a SAN that is not a URI)")
                    }
                }
            }
        }
        return VerifiedCSR(req: box, uris: uris)
    }

    // MARK: issuing

    /// A self-signed root CA certificate for `key`, valid `seconds` from now.
    public static func selfSignedRoot(key: PrivateKey, commonName: String, seconds: Int) throws(CAError) -> Certificate {
        guard let x = X509_new() else { throw CAError("out of memory") }
        let cert = Certificate(x)
        guard let n = name([("O", "swift-mesh"), ("CN", commonName)]) else { throw CAError("out of memory") }
        defer { X509_NAME_free(n) }
        guard X509_set_version(x, 2) == 1, randomSerial(x), X509_set_subject_name(x, n) == 1, X509_set_issuer_name(x, n) == 1,
              X509_gmtime_adj(X509_getm_notBefore(x), -60) != nil, X509_gmtime_adj(X509_getm_notAfter(x), seconds) != nil,
              X509_set_pubkey(x, key.pkey) == 1,
              addExtension(x, issuer: x, NID_basic_constraints, "critical,CA:TRUE"),
              addExtension(x, issuer: x, NID_key_usage, "critical,keyCertSign,cRLSign"),
              addExtension(x, issuer: x, NID_subject_key_identifier, "hash"),
              X509_sign(x, key.pkey, EVP_sha256()) > 0 else {
            throw CAError("root certificate: \(OpenSSLErrors.drain())")
        }
        return cert
    }

    /// A workload (or server) certificate for the CSR's key, signed by `caCert`/`caKey`, with the
    /// URI SAN `identity` (plus `extraSANs` such as `DNS:meshd` or `IP:127.0.0.1`), valid `seconds` from now.
    public static func issue(csr: VerifiedCSR, identity: String, extraSANs: [String] = [], seconds: Int,
                             caCert: Certificate, caKey: PrivateKey) throws(CAError) -> Certificate {
        guard let x = X509_new() else { throw CAError("out of memory") }
        let cert = Certificate(x)
        guard let pub = X509_REQ_get0_pubkey(csr.req.req) else { throw CAError("CSR without a key") }
        guard let n = name([("O", "swift-mesh")]) else { throw CAError("out of memory") }
        defer { X509_NAME_free(n) }
        let san = (["URI:\(identity)"] + extraSANs).joined(separator: ",")
        guard X509_set_version(x, 2) == 1, randomSerial(x), X509_set_subject_name(x, n) == 1,
              X509_set_issuer_name(x, X509_get_subject_name(caCert.x509)) == 1,
              X509_gmtime_adj(X509_getm_notBefore(x), 0) != nil, X509_gmtime_adj(X509_getm_notAfter(x), seconds) != nil,
              X509_set_pubkey(x, pub) == 1,
              addExtension(x, issuer: caCert.x509, NID_basic_constraints, "critical,CA:FALSE"),
              addExtension(x, issuer: caCert.x509, NID_key_usage, "critical,digitalSignature,keyEncipherment"),
              addExtension(x, issuer: caCert.x509, NID_ext_key_usage, "serverAuth,clientAuth"),
              addExtension(x, issuer: caCert.x509, NID_subject_alt_name, san),
              addExtension(x, issuer: caCert.x509, NID_authority_key_identifier, "keyid:always"),
              X509_sign(x, caKey.pkey, EVP_sha256()) > 0 else {
            throw CAError("issuing for \(identity): \(OpenSSLErrors.drain())")
        }
        return cert
    }
}
