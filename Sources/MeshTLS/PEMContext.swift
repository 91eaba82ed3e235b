import COpenSSL
import CMeshShims
#if canImport(Glibc)
import Glibc
#endif

/// TLS server contexts for a gateway built from a `TLSSecret` held in memory (DESIGN §15): the
/// chain and the key are read from memory BIOs (the key from its `SecretBytes`, never from a
/// file), and the context is what the gateway's SIMPLE (server certificate only) or MUTUAL
/// (client certificate required, chaining to the secret's CA) servers hand to new TLS sessions.
/// A replaced secret means new contexts; the old ones (and the key inside them, which OpenSSL
/// frees with its clearing free) go when the last connection using them closes.
///
/// `check` is the validation meshctl and meshd both run before a secret is stored.
public enum PEMContext {
    /// A server context: SIMPLE when `mutual` is false, MUTUAL (client certificate required,
    /// verified against the secret's `ca.crt`, no SPIFFE ID asked) when true. TLS 1.2 (ECDHE +
    /// AEAD) and 1.3, as Istio's gateways accept by default.
    public static func server(_ s: TLSSecret, mutual: Bool, alpn: [String] = ["h2", "http/1.1"]) throws -> TLSContext {
        if mutual && s.caCert.isEmpty {
            throw TLSConfigError("secret \(s.id) has no ca.crt (meshctl create secret tls --ca): a MUTUAL server needs it to verify clients")
        }
        guard let key = readKey(s.key) else {
            throw TLSConfigError("secret \(s.id): the private key cannot be read: \(OpenSSLErrors.drain())")
        }
        defer { EVP_PKEY_free(key) }
        var o = TLSContext.Options(certChainFile: "", privateKeyFile: "", trustBundleFile: "")
        o.certChainPEM = s.certChain
        o.privateKey = key
        o.alpn = alpn
        o.minVersion13 = false
        o.spiffePeers = false
        o.askClientCert = mutual
        o.requireClientCert = mutual
        if mutual { o.trustBundlePEM = s.caCert }
        return try TLSContext(role: .server, options: o)
    }

    /// The private key of `b` (PEM), or nil; never asks for a passphrase (an encrypted key is nil).
    static func readKey(_ b: SecretBytes) -> OpaquePointer? {
        b.withBytes { raw -> OpaquePointer? in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return PEM_read_bio_PrivateKey(bio, nil, { _, _, _, _ in -1 }, nil)
        }
    }

    /// The names of the files a secret came from, for messages (`--cert FILE`).
    public struct Sources: Sendable {
        public var cert: String
        public var key: String
        public var ca: String
        public init(cert: String, key: String, ca: String) { self.cert = cert; self.key = key; self.ca = ca }
    }

    /// Checks a secret before it is stored: sizes within bounds; the chain is PEM certificates
    /// only, leaf first, each signed by the next; the key is one unencrypted PEM private key that
    /// matches the leaf; no certificate expired or not yet valid at `now` (seconds); the CA, when
    /// given, is PEM certificates only; and a server context can be built from it (the TLS
    /// policy takes the key). Errors name the flag and the file. A leaf that expires within 7
    /// days is taken with a warning.
    public static func check(_ s: TLSSecret, from f: Sources, now: Int64) throws(TLSSecretError) -> TLSSecretInfo {
        try TLSSecret.checkNames(namespace: s.namespace, name: s.name)
        let certFlag = "--cert \(f.cert)", keyFlag = "--key \(f.key)", caFlag = "--ca \(f.ca)"
        guard s.certChain.utf8.count <= TLSSecret.maxCertBytes else {
            throw TLSSecretError("\(certFlag): \(s.certChain.utf8.count) bytes; a certificate chain may have at most \(TLSSecret.maxCertBytes)")
        }
        guard s.key.count <= TLSSecret.maxKeyBytes else {
            throw TLSSecretError("\(keyFlag): \(s.key.count) bytes; a private key may have at most \(TLSSecret.maxKeyBytes)")
        }
        guard s.caCert.utf8.count <= TLSSecret.maxCABytes else {
            throw TLSSecretError("\(caFlag): \(s.caCert.utf8.count) bytes; a CA bundle may have at most \(TLSSecret.maxCABytes)")
        }
        let chain = try certificatesOnly(s.certChain, flag: certFlag)
        defer { for c in chain { X509_free(c) } }
        // The key file: exactly one PEM private key block, nothing else (but the EC PARAMETERS
        // block `openssl ecparam -genkey` writes before the key, which Go's X509KeyPair skips too).
        let blocks = s.key.withBytes { pemLabels(Array($0)) }.filter { $0 != "EC PARAMETERS" }
        guard blocks.count == 1, ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"].contains(blocks[0]) else {
            if blocks.contains("ENCRYPTED PRIVATE KEY") || s.key.withBytes({ contains(Array($0), "Proc-Type: 4,ENCRYPTED") }) {
                throw TLSSecretError("\(keyFlag): the private key is encrypted; give it unencrypted (as kubectl create secret tls takes it)")
            }
            throw TLSSecretError("\(keyFlag): expected one PEM private key (BEGIN PRIVATE KEY), found \(blocks.isEmpty ? "no PEM block" : blocks.map { "BEGIN \($0)" }.joined(separator: ", "))")
        }
        guard let key = readKey(s.key) else {
            ERR_clear_error()
            throw TLSSecretError("\(keyFlag): the private key cannot be read (damaged or encrypted)")
        }
        defer { EVP_PKEY_free(key) }
        let leaf = chain[0]
        guard X509_check_private_key(leaf, key) == 1 else {
            ERR_clear_error()
            throw TLSSecretError("\(keyFlag): the private key does not match the certificate in \(f.cert) (its first certificate)")
        }
        for i in 0..<(chain.count - 1) {
            let ok = X509_check_issued(chain[i + 1], chain[i]) == X509_V_OK
                && X509_verify(chain[i], X509_get0_pubkey(chain[i + 1])) == 1
            ERR_clear_error()
            guard ok else {
                throw TLSSecretError("\(certFlag): certificate \(i + 2) did not issue certificate \(i + 1); the chain must be in order, leaf first, each followed by its issuer")
            }
        }
        for (i, c) in chain.enumerated() { try valid(c, at: now, what: "\(certFlag): certificate \(i + 1)") }
        if !s.caCert.isEmpty {
            let cas = try certificatesOnly(s.caCert, flag: caFlag)
            defer { for c in cas { X509_free(c) } }
            for (i, c) in cas.enumerated() { try valid(c, at: now, what: "\(caFlag): certificate \(i + 1)") }
        }
        do {
            _ = try server(s, mutual: false)
            if !s.caCert.isEmpty { _ = try server(s, mutual: true) }
        } catch {
            throw TLSSecretError("\(certFlag), \(keyFlag): refused by the gateway's TLS policy: \(error)")
        }
        let i = X509Info.info(leaf)
        var warning: String? = nil
        if i.notAfter - now < 7 * 86_400 {
            warning = "\(certFlag): the certificate expires at \(X509Info.rfc3339(i.notAfter)), in less than 7 days"
        }
        return TLSSecretInfo(subject: i.subject, sans: subjectAltNames(leaf), serialHex: i.serialHex, notBefore: i.notBefore, notAfter: i.notAfter,
                             fingerprint: String(decoding: X509Info.sha256Hex(leaf), as: UTF8.self), hasCA: !s.caCert.isEmpty, warning: warning)
    }

    /// What can be shown of a stored secret (no checks beyond reading the leaf).
    public static func info(_ s: TLSSecret) -> TLSSecretInfo? {
        let chain = TLSContext.certificates(pem: s.certChain)
        defer { for c in chain { X509_free(c) } }
        guard let leaf = chain.first else { return nil }
        let i = X509Info.info(leaf)
        return TLSSecretInfo(subject: i.subject, sans: subjectAltNames(leaf), serialHex: i.serialHex, notBefore: i.notBefore, notAfter: i.notAfter,
                             fingerprint: String(decoding: X509Info.sha256Hex(leaf), as: UTF8.self), hasCA: !s.caCert.isEmpty, warning: nil)
    }

    /// The certificates of a PEM text that must hold certificates and nothing else.
    private static func certificatesOnly(_ pem: String, flag: String) throws(TLSSecretError) -> [OpaquePointer] {
        let labels = pemLabels(Array(pem.utf8))
        guard !labels.isEmpty else { throw TLSSecretError("\(flag): no PEM certificate (BEGIN CERTIFICATE) in it") }
        if let other = labels.first(where: { $0 != "CERTIFICATE" }) {
            throw TLSSecretError("\(flag): holds a \(other) block; expected certificates only\(other.hasSuffix("PRIVATE KEY") ? " (give the key with --key)" : "")")
        }
        let certs = TLSContext.certificates(pem: pem)
        guard certs.count == labels.count else {
            for c in certs { X509_free(c) }
            throw TLSSecretError("\(flag): certificate \(certs.count + 1) of \(labels.count) cannot be read (damaged PEM)")
        }
        return certs
    }

    /// Refuses a certificate that expired or is not valid yet at `now`.
    private static func valid(_ c: OpaquePointer, at now: Int64, what: String) throws(TLSSecretError) {
        let i = X509Info.info(c)
        guard i.notAfter > now else { throw TLSSecretError("\(what) (\(i.subject)) expired at \(X509Info.rfc3339(i.notAfter))") }
        guard i.notBefore <= now else { throw TLSSecretError("\(what) (\(i.subject)) is not valid before \(X509Info.rfc3339(i.notBefore))") }
    }

    /// The labels of the PEM blocks in `b` (`CERTIFICATE`, `PRIVATE KEY`, ...), in order.
    static func pemLabels(_ b: [UInt8]) -> [String] {
        let begin = Array("-----BEGIN ".utf8)
        var out: [String] = []
        var i = 0
        while i + begin.count <= b.count {
            if b[i] == 45, b[i..<(i + begin.count)].elementsEqual(begin) {
                var j = i + begin.count
                while j < b.count && b[j] != 45 && b[j] != 10 { j += 1 }
                out.append(String(decoding: b[(i + begin.count)..<j], as: UTF8.self))
                i = j
            } else {
                i += 1
            }
        }
        return out
    }

    private static func contains(_ b: [UInt8], _ s: String) -> Bool {
        let n = Array(s.utf8)
        guard b.count >= n.count else { return false }
        for i in 0...(b.count - n.count) where b[i] == n[0] && b[i..<(i + n.count)].elementsEqual(n) { return true }
        return false
    }

    /// SHA-256 of `bytes`, lowercase hex.
    public static func sha256Hex(_ bytes: [UInt8]) -> String {
        var md = [UInt8](repeating: 0, count: 32)
        var len: UInt32 = 0
        _ = bytes.withUnsafeBytes { EVP_Digest($0.baseAddress, $0.count, &md, &len, EVP_sha256(), nil) }
        let hex = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for b in md.prefix(Int(len)) { out.append(hex[Int(b >> 4)]); out.append(hex[Int(b & 15)]) }
        return String(decoding: out, as: UTF8.self)
    }

    /// The DNS and URI subject alternative names of `cert`, in order.
    public static func subjectAltNames(_ cert: OpaquePointer) -> [String] {
        guard let raw = X509_get_ext_d2i(cert, NID_subject_alt_name, nil, nil) else { return [] }
        let names = OpaquePointer(raw)
        defer { mesh_GENERAL_NAMES_free(names) }
        var out: [String] = []
        for i in 0..<mesh_sk_GENERAL_NAME_num(names) {
            guard let gn = mesh_sk_GENERAL_NAME_value(names, i) else { continue }
            let s: UnsafeMutablePointer<ASN1_STRING>?
            switch gn.pointee.type {
            case GEN_DNS: s = gn.pointee.d.dNSName
            case GEN_URI: s = gn.pointee.d.uniformResourceIdentifier
            default: s = nil
            }
            guard let s, let data = ASN1_STRING_get0_data(s) else { continue }
            let len = Int(ASN1_STRING_length(s))
            out.append(String(decoding: UnsafeBufferPointer(start: data, count: len), as: UTF8.self))
        }
        return out
    }
}
