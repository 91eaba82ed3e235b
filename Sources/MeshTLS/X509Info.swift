import COpenSSL
import CMeshShims

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
