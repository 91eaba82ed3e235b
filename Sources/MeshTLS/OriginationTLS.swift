import COpenSSL
import CMeshShims
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// What an originated TLS connection (DestinationRule `tls.mode` SIMPLE or MUTUAL) checks of the
/// server once its chain verified: the SNI it sends, and the names the certificate must carry.
/// With `subjectAltNames`, one of them must be a DNS SAN (wildcards as RFC 6125) or a URI SAN
/// of the certificate; without, the certificate must be valid for the SNI (Envoy's auto SAN
/// validation, Istio's default). Built at snapshot time; run once per full handshake.
public final class OriginationPeerCheck: Sendable {
    public let sni: String
    public let subjectAltNames: [String]
    /// false: `insecureSkipVerify` (neither the chain nor the names are checked).
    public let verify: Bool

    public init(sni: String, subjectAltNames: [String], verify: Bool) {
        self.sni = sni; self.subjectAltNames = subjectAltNames; self.verify = verify
    }

    /// nil when `cert` may serve this connection, else the reason (for the log line).
    public func refusal(_ cert: OpaquePointer?) -> String? {
        guard verify else { return nil }
        guard let cert else { return "server presented no certificate" }
        if subjectAltNames.isEmpty {
            return Self.dnsMatch(cert, sni) ? nil : "server certificate is not valid for \(sni) (DNS SANs: \(Self.dnsSANs(cert)))"
        }
        let uris = X509Info.uriSANs(cert)
        for want in subjectAltNames {
            if want.contains("://") ? uris.contains(want) : Self.dnsMatch(cert, want) { return nil }
        }
        return "server certificate SANs (DNS: \(Self.dnsSANs(cert)), URI: \(uris)) match none of subjectAltNames \(subjectAltNames)"
    }

    /// The DNS SANs of `cert` only (never the subject CN), a leftmost wildcard allowed.
    static func dnsMatch(_ cert: OpaquePointer, _ name: String) -> Bool {
        let neverSubject: UInt32 = 0x20, noPartialWildcards: UInt32 = 0x4
        return name.withCString { X509_check_host(cert, $0, name.utf8.count, neverSubject | noPartialWildcards, nil) } == 1
    }

    /// The DNS SANs, for error messages.
    static func dnsSANs(_ cert: OpaquePointer) -> [String] {
        guard let raw = X509_get_ext_d2i(cert, NID_subject_alt_name, nil, nil) else { return [] }
        let names = OpaquePointer(raw)
        defer { mesh_GENERAL_NAMES_free(names) }
        var out: [String] = []
        for i in 0..<mesh_sk_GENERAL_NAME_num(names) {
            guard let gn = mesh_sk_GENERAL_NAME_value(names, i), gn.pointee.type == GEN_DNS, let ia5 = gn.pointee.d.dNSName,
                  let data = ASN1_STRING_get0_data(ia5) else { continue }
            out.append(String(decoding: UnsafeBufferPointer(start: data, count: Int(ASN1_STRING_length(ia5))), as: UTF8.self))
        }
        return out
    }
}

/// The client context of a TLS origination: the server verified against `caFile` (PEM roots;
/// the system trust store when none is given), a client certificate for MUTUAL, TLS 1.2 or 1.3
/// (external servers), ALPN as the cluster speaks. The files are read here, at snapshot time.
public enum OriginationContext {
    /// Throws a one-line reason naming the file at fault.
    public static func make(caFile: String, certFile: String?, keyFile: String?, alpn: [String], insecure: Bool) throws(TLSConfigError) -> TLSContext {
        if !insecure {
            let n = pemCertificateCount(caFile)
            if n < 0 { throw TLSConfigError("cannot read \(caFile): \(String(cString: strerror(Int32(-n))))") }
            if n == 0 { throw TLSConfigError("\(caFile) holds no PEM certificate") }
        }
        for f in [certFile, keyFile].compactMap({ $0 }) where access(f, R_OK) != 0 {
            throw TLSConfigError("cannot read \(f): \(String(cString: strerror(errno)))")
        }
        if let c = certFile, pemCertificateCount(c) <= 0 { throw TLSConfigError("\(c) holds no PEM certificate") }
        var o = TLSContext.Options(certChainFile: certFile ?? "", privateKeyFile: keyFile ?? "", trustBundleFile: caFile)
        o.withoutCertificate = certFile == nil
        o.minVersion13 = false
        o.alpn = alpn
        let ctx: TLSContext
        do { ctx = try TLSContext(role: .client, options: o) } catch let e as TLSConfigError { throw e } catch {
            throw TLSConfigError("\(error)")
        }
        if insecure { SSL_CTX_set_verify(ctx.ctx, SSL_VERIFY_NONE, nil) }
        return ctx
    }

    /// Certificates in a PEM file; -errno when it cannot be opened.
    static func pemCertificateCount(_ path: String) -> Int {
        guard let bio = BIO_new_file(path, "r") else {
            let e = errno
            ERR_clear_error()
            return -Int(e == 0 ? ENOENT : e)
        }
        defer { BIO_free(bio) }
        var n = 0
        while let c = PEM_read_bio_X509(bio, nil, nil, nil) { X509_free(c); n += 1 }
        ERR_clear_error()
        return n
    }
}
