import MeshPKI
import COpenSSL
import CMeshShims
import MeshCore
import MeshTLS

/// Join tokens (DESIGN §4): minted by meshd for `meshctl token create`, scoped to one identity
/// (namespace + service account) with an expiry, signed with HMAC-SHA256 under a key that only
/// meshd holds (STATE-DIR/token-key, 0600). Text form: `mesh1.<payload>.<mac>` (base64url),
/// payload `ns=<ns>&sa=<sa>&exp=<unix seconds>&id=<random>`.
public struct JoinToken: Sendable, Equatable {
    public let namespace: String
    public let serviceAccount: String
    public let expires: Int64
    public let id: String

    public init(namespace: String, serviceAccount: String, expires: Int64, id: String) {
        self.namespace = namespace; self.serviceAccount = serviceAccount; self.expires = expires; self.id = id
    }

    static let prefix = "mesh1"

    /// The signed text of this token.
    public func encode(key: [UInt8]) -> String {
        let payload = Base64URL.encode(Array("ns=\(namespace)&sa=\(serviceAccount)&exp=\(expires)&id=\(id)".utf8))
        let signed = "\(JoinToken.prefix).\(payload)"
        return "\(signed).\(Base64URL.encode(JoinToken.mac(key, Array(signed.utf8))))"
    }

    /// Checks the signature, then the expiry (`now` in Unix seconds); the error says which failed.
    public static func verify(_ text: String, key: [UInt8], now: Int64) throws(CAError) -> JoinToken {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == prefix, let payload = Base64URL.decode(String(parts[1])),
              let mac = Base64URL.decode(String(parts[2])) else {
            throw CAError("malformed join token (expected mesh1.<payload>.<signature>, as `meshctl token create` prints)")
        }
        let expected = JoinToken.mac(key, Array("\(parts[0]).\(parts[1])".utf8))
        guard mac.count == expected.count, CRYPTO_memcmp(mac, expected, mac.count) == 0 else {
            throw CAError("join token signature does not verify (tampered, or minted by another meshd)")
        }
        var fields: [String: String] = [:]
        // Split on bytes, not Characters: "=" or "&" followed by a combining mark is one
        // Character, and a String split would not see the separator.
        for kv in payload.split(separator: UInt8(ascii: "&")) {
            let p = kv.split(separator: UInt8(ascii: "="), maxSplits: 1)
            guard p.count == 2 else { continue }
            let name = String(decoding: p[0], as: UTF8.self)
            // meshd writes each field once: a repeated one means a value carried "&sa=..." or
            // "&ns=..." (a name nobody checked), and the last one would silently win.
            if fields.updateValue(String(decoding: p[1], as: UTF8.self), forKey: name) != nil {
                throw CAError("malformed join token payload (field \(name) repeated)")
            }
        }
        guard let ns = fields["ns"], let sa = fields["sa"], let exp = fields["exp"].flatMap({ Int64($0) }), let id = fields["id"] else {
            throw CAError("malformed join token payload")
        }
        let t = JoinToken(namespace: ns, serviceAccount: sa, expires: exp, id: id)
        if exp <= now {
            throw CAError("join token for \(ns)/\(sa) expired at \(X509Info.rfc3339(exp)); mint a new one with `meshctl token create`")
        }
        return t
    }

    static func mac(_ key: [UInt8], _ data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var len: UInt32 = 32
        _ = HMAC(EVP_sha256(), key, Int32(key.count), data, data.count, &out, &len)
        return Array(out.prefix(Int(len)))
    }

}

/// RFC 4648 base64url without padding.
public enum Base64URL {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    public static func encode(_ data: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((data.count + 2) / 3 * 4)
        var i = 0
        while i + 3 <= data.count {
            let v = UInt32(data[i]) << 16 | UInt32(data[i + 1]) << 8 | UInt32(data[i + 2])
            for s in [18, 12, 6, 0] { out.append(alphabet[Int((v >> UInt32(s)) & 63)]) }
            i += 3
        }
        let rest = data.count - i
        if rest == 1 {
            let v = UInt32(data[i]) << 16
            out.append(alphabet[Int((v >> 18) & 63)]); out.append(alphabet[Int((v >> 12) & 63)])
        } else if rest == 2 {
            let v = UInt32(data[i]) << 16 | UInt32(data[i + 1]) << 8
            out.append(alphabet[Int((v >> 18) & 63)]); out.append(alphabet[Int((v >> 12) & 63)]); out.append(alphabet[Int((v >> 6) & 63)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func decode(_ s: String) -> [UInt8]? {
        var table = [Int8](repeating: -1, count: 256)
        for (i, c) in alphabet.enumerated() { table[Int(c)] = Int8(i) }
        var out: [UInt8] = []
        var acc: UInt32 = 0
        var bits = 0
        for c in s.utf8 {
            let v = table[Int(c)]
            if v < 0 { return nil }
            acc = acc << 6 | UInt32(v)
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8((acc >> UInt32(bits)) & 0xff))
            }
        }
        if bits >= 6 { return nil }   // a length no encoder produces
        // The bits left over must be zero, as the encoder writes them: otherwise one byte string
        // has several spellings (four for a join token's signature) that all verify.
        if acc & ((1 << UInt32(bits)) - 1) != 0 { return nil }
        return out
    }
}

