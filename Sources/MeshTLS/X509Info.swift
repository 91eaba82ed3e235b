import COpenSSL
import CMeshShims
#if canImport(Glibc)
import Glibc
#endif

/// Facts read from an X.509 certificate: the SPIFFE ID in its URI SAN and the digest Envoy puts
/// in `x-forwarded-client-cert`. Called once per connection, never per request.
public enum X509Info {
    /// The URI SANs of `cert`.
    public static func uriSANs(_ cert: OpaquePointer) -> [String] {
        guard let raw = X509_get_ext_d2i(cert, NID_subject_alt_name, nil, nil) else { return [] }
        let names = OpaquePointer(raw)
        defer { mesh_GENERAL_NAMES_free(names) }
        var out: [String] = []
        let n = mesh_sk_GENERAL_NAME_num(names)
        for i in 0..<n {
            guard let gn = mesh_sk_GENERAL_NAME_value(names, i) else { continue }
            if gn.pointee.type == GEN_URI, let ia5 = gn.pointee.d.uniformResourceIdentifier {
                let len = Int(ASN1_STRING_length(ia5))
                guard let data = ASN1_STRING_get0_data(ia5), len > 0 else { continue }
                out.append(String(decoding: UnsafeBufferPointer(start: data, count: len), as: UTF8.self))
            }
        }
        return out
    }

    /// The first `spiffe://` URI SAN, if any.
    public static func spiffeID(_ cert: OpaquePointer) -> String? {
        uriSANs(cert).first { $0.hasPrefix("spiffe://") }
    }

    /// SHA-256 of the certificate's DER encoding as lowercase hex (64 bytes).
    public static func sha256Hex(_ cert: OpaquePointer) -> [UInt8] {
        var md = [UInt8](repeating: 0, count: 32)
        var len: UInt32 = 0
        guard X509_digest(cert, EVP_sha256(), &md, &len) == 1 else { return [] }
        let hex: [UInt8] = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(64)
        for b in md.prefix(Int(len)) { out.append(hex[Int(b >> 4)]); out.append(hex[Int(b & 15)]) }
        return out
    }

    /// True if `id` is a well-formed SPIFFE ID in `trustDomain` (`spiffe://TD/...`).
    public static func isSPIFFE(_ id: String, inTrustDomain trustDomain: String) -> Bool {
        let prefix = "spiffe://\(trustDomain)/"
        guard id.hasPrefix(prefix), id.utf8.count > prefix.utf8.count else { return false }
        for c in id.utf8 where c < 0x21 || c > 0x7e { return false }
        return true
    }
}

/// What `/certs` and the expiry metric show of one certificate.
public struct CertificateInfo: Sendable {
    public var identity: String
    public var serialHex: String
    public var notBefore: Int64     // seconds since the epoch
    public var notAfter: Int64
    public var issuer: String
    public var subject: String
}

extension X509Info {
    /// Every certificate in a PEM file, in order (leaf first for a chain file).
    public static func load(pemFile path: String) -> [CertificateInfo] {
        guard let bio = BIO_new_file(path, "r") else { ERR_clear_error(); return [] }
        defer { BIO_free(bio) }
        var out: [CertificateInfo] = []
        while let cert = PEM_read_bio_X509(bio, nil, nil, nil) {
            out.append(info(cert))
            X509_free(cert)
        }
        ERR_clear_error()
        return out
    }

    /// Every certificate of a PEM text, in order.
    public static func load(pem: String) -> [CertificateInfo] {
        let certs = TLSContext.certificates(pem: pem)
        defer { for c in certs { X509_free(c) } }
        return certs.map(info)
    }

    public static func info(_ cert: OpaquePointer) -> CertificateInfo {
        var serial = ""
        if let asn = X509_get_serialNumber(cert), let bn = ASN1_INTEGER_to_BN(asn, nil) {
            if let hex = BN_bn2hex(bn) {
                serial = String(cString: hex).lowercased()
                mesh_OPENSSL_free(hex)
            }
            BN_free(bn)
        }
        return CertificateInfo(identity: spiffeID(cert) ?? "", serialHex: serial,
                               notBefore: epoch(X509_get0_notBefore(cert)), notAfter: epoch(X509_get0_notAfter(cert)),
                               issuer: name(X509_get_issuer_name(cert)), subject: name(X509_get_subject_name(cert)))
    }

    private static func epoch(_ t: UnsafePointer<ASN1_TIME>?) -> Int64 {
        guard let t = t else { return 0 }
        var tm = tm()
        guard ASN1_TIME_to_tm(t, &tm) == 1 else { return 0 }
        return Int64(timegm(&tm))
    }

    private static func name(_ n: OpaquePointer?) -> String {
        guard let n = n, let bio = BIO_new(BIO_s_mem()) else { return "" }
        defer { BIO_free(bio) }
        guard X509_NAME_print_ex(bio, n, 0, mesh_xn_flag_rfc2253()) >= 0 else { return "" }
        var buf = [UInt8](repeating: 0, count: 1024)
        let len = BIO_read(bio, &buf, 1024)
        return len > 0 ? String(decoding: buf[0..<Int(len)], as: UTF8.self) : ""
    }

    /// RFC 3339 (UTC) for seconds since the epoch.
    public static func rfc3339(_ secs: Int64) -> String {
        var t = time_t(secs)
        var tm = tm()
        gmtime_r(&t, &tm)
        func p2(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(tm.tm_year + 1900)-\(p2(tm.tm_mon + 1))-\(p2(tm.tm_mday))T\(p2(tm.tm_hour)):\(p2(tm.tm_min)):\(p2(tm.tm_sec))Z"
    }
}
