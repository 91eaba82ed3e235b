import COpenSSL
import MeshCore

/// The JWS signature algorithms a JWT may name. `none` and the HMAC family (HS*) are refused:
/// an HMAC "key" would be the public key's bytes (the classic algorithm-confusion attack).
public enum JWSAlgorithm: UInt8, Sendable, CaseIterable {
    case rs256, rs384, rs512, ps256, ps384, ps512, es256, es384

    /// From the `alg` header value's bytes; nil for anything else (`none`, `HS256`, ...).
    public static func from(_ p: UnsafePointer<UInt8>, _ n: Int) -> JWSAlgorithm? {
        guard n == 5 else { return nil }
        let fam: UInt8 = p[0], s: UInt8 = p[1]
        let bits: Int
        switch (p[2], p[3], p[4]) {
        case (50, 53, 54): bits = 256
        case (51, 56, 52): bits = 384
        case (53, 49, 50): bits = 512
        default: return nil
        }
        switch (fam, s, bits) {
        case (82, 83, 256): return .rs256
        case (82, 83, 384): return .rs384
        case (82, 83, 512): return .rs512
        case (80, 83, 256): return .ps256
        case (80, 83, 384): return .ps384
        case (80, 83, 512): return .ps512
        case (69, 83, 256): return .es256
        case (69, 83, 384): return .es384
        default: return nil
        }
    }

    public static func from(_ s: String) -> JWSAlgorithm? {
        var a = Array(s.utf8)
        return a.withUnsafeMutableBufferPointer { b in b.count == 0 ? nil : from(UnsafePointer(b.baseAddress!), b.count) }
    }

    public var name: String {
        switch self {
        case .rs256: return "RS256"
        case .rs384: return "RS384"
        case .rs512: return "RS512"
        case .ps256: return "PS256"
        case .ps384: return "PS384"
        case .ps512: return "PS512"
        case .es256: return "ES256"
        case .es384: return "ES384"
        }
    }

    /// The key type the algorithm needs.
    public var keyType: JSONWebKey.KeyType {
        switch self {
        case .rs256, .rs384, .rs512, .ps256, .ps384, .ps512: return .rsa
        case .es256: return .p256
        case .es384: return .p384
        }
    }

    /// The digest (OpenSSL's EVP_MD, static: never freed).
    public var digest: OpaquePointer {
        switch self {
        case .rs256, .ps256, .es256: return EVP_sha256()
        case .rs384, .ps384, .es384: return EVP_sha384()
        case .rs512, .ps512: return EVP_sha512()
        }
    }

    public var isPSS: Bool { self == .ps256 || self == .ps384 || self == .ps512 }
}

/// One public key of a JSON Web Key Set (RFC 7517): an RSA key (at least 2048 bits) or an EC key
/// on P-256 or P-384, held as an OpenSSL EVP_PKEY for the life of the config that holds it.
public final class JSONWebKey: @unchecked Sendable {
    /// RSA, or EC on P-256 or P-384 (the curve is part of the type: ES256 needs P-256).
    public enum KeyType: Sendable { case rsa, p256, p384 }
    public let type: KeyType
    /// `kid`, empty when the key has none.
    public let kid: [UInt8]
    /// `alg` when the key names one (a token must then use exactly it).
    public let alg: JWSAlgorithm?
    /// The EVP_PKEY (immutable once built; OpenSSL allows concurrent verifies with one key).
    public let pkey: OpaquePointer

    init(type: KeyType, kid: [UInt8], alg: JWSAlgorithm?, pkey: OpaquePointer) {
        self.type = type; self.kid = kid; self.alg = alg; self.pkey = pkey
    }

    deinit { EVP_PKEY_free(pkey) }

    /// Whether this key may verify a token signed with `a` (type, curve and the key's own `alg`).
    public func accepts(_ a: JWSAlgorithm) -> Bool { a.keyType == type && (alg == nil || alg == a) }
}

/// A JSON Web Key Set (`jwks`, inline or fetched from `jwksUri`), parsed strictly: the JSON
/// itself, base64url fields, key types, curves and sizes. A key of a type this mesh cannot use
/// (`oct`, `OKP`, an unknown curve) or a key marked for encryption is refused by name.
public final class JSONWebKeySet: @unchecked Sendable {
    public let keys: [JSONWebKey]
    /// The text as given (config dumps and equality).
    public let text: String

    init(keys: [JSONWebKey], text: String) { self.keys = keys; self.text = text }

    /// The largest JWKS accepted (inline or fetched).
    public static let maxBytes = 256 * 1024
    public static let maxKeys = 64

    /// The error text is a sentence naming the key (`keys[i]`) and the field at fault.
    public struct ParseError: Error, Sendable { public let message: String }

    public static func parse(_ text: String) throws(ParseError) -> JSONWebKeySet {
        let bytes = Array(text.utf8)
        guard bytes.count <= maxBytes else { throw ParseError(message: "the key set is over \(maxBytes) bytes") }
        var keys: [JSONWebKey] = []
        var failure: String? = nil
        bytes.withUnsafeBufferPointer { b in
            guard let p = b.baseAddress, JSONScan.validate(p, b.count, maxDepth: 8), let root = JSONScan.root(p, b.count),
                  JSONScan.kind(p, root) == .object else {
                failure = "not a JSON object"
                return
            }
            guard let list = JSONScan.member(p, root, "keys"), JSONScan.kind(p, list) == .array else {
                failure = "no \"keys\" list"
                return
            }
            var i = 0
            JSONScan.forEachElement(p, list) { v in
                if i >= maxKeys { failure = "more than \(maxKeys) keys"; return false }
                do throws(ParseError) { keys.append(try key(p, v)) } catch {
                    failure = "keys[\(i)]: \(error.message)"
                    return false
                }
                i += 1
                return true
            }
        }
        if let failure { throw ParseError(message: failure) }
        if keys.isEmpty { throw ParseError(message: "the key set has no keys") }
        return JSONWebKeySet(keys: keys, text: text)
    }

    private static func string(_ p: UnsafePointer<UInt8>, _ o: JSONScan.Value, _ k: StaticString) throws(ParseError) -> String? {
        guard let v = JSONScan.member(p, o, k) else { return nil }
        guard JSONScan.kind(p, v) == .string else { throw ParseError(message: "\(k) is not a string") }
        let out = ByteBuffer(capacity: v.end - v.start)
        _ = JSONScan.appendString(p, v, to: out)
        return String(decoding: out.readableArray, as: UTF8.self)
    }

    private static func b64(_ p: UnsafePointer<UInt8>, _ o: JSONScan.Value, _ k: StaticString) throws(ParseError) -> [UInt8] {
        guard let s = try string(p, o, k) else { throw ParseError(message: "\(k) is missing") }
        guard let d = Base64URLStrict.decode(s), !d.isEmpty else { throw ParseError(message: "\(k) is not base64url") }
        return d
    }

    private static func key(_ p: UnsafePointer<UInt8>, _ o: JSONScan.Value) throws(ParseError) -> JSONWebKey {
        guard JSONScan.kind(p, o) == .object else { throw ParseError(message: "not a JSON object") }
        guard let kty = try string(p, o, "kty") else { throw ParseError(message: "kty is missing") }
        let kid = Array((try string(p, o, "kid") ?? "").utf8)
        if let use = try string(p, o, "use"), use != "sig" { throw ParseError(message: "use is \"\(use)\", not \"sig\"") }
        var alg: JWSAlgorithm? = nil
        if let a = try string(p, o, "alg") {
            guard let v = JWSAlgorithm.from(a) else {
                throw ParseError(message: "alg \"\(a)\" is not supported (RS256/384/512, PS256/384/512, ES256, ES384; none and HS* are refused)")
            }
            alg = v
        }
        switch kty {
        case "RSA":
            let n = try b64(p, o, "n"), e = try b64(p, o, "e")
            let nb = n.drop { $0 == 0 }
            guard nb.count * 8 >= 2048, nb.count <= 2048 else { throw ParseError(message: "n: an RSA key must have 2048 to 16384 bits") }
            guard e.count <= 8 else { throw ParseError(message: "e is too large") }
            if let a = alg, a.keyType != .rsa { throw ParseError(message: "alg \(a.name) does not fit an RSA key") }
            guard let k = rsaKey(n: Array(nb), e: e) else { throw ParseError(message: "OpenSSL refused the RSA key") }
            return JSONWebKey(type: .rsa, kid: kid, alg: alg, pkey: k)
        case "EC":
            guard let crv = try string(p, o, "crv") else { throw ParseError(message: "crv is missing") }
            let type: JSONWebKey.KeyType, group: StaticString, size: Int
            switch crv {
            case "P-256": type = .p256; group = "prime256v1"; size = 32
            case "P-384": type = .p384; group = "secp384r1"; size = 48
            default: throw ParseError(message: "crv \"\(crv)\" is not supported (P-256, P-384)")
            }
            let x = try b64(p, o, "x"), y = try b64(p, o, "y")
            guard x.count == size, y.count == size else { throw ParseError(message: "x and y must be \(size) bytes each for \(crv)") }
            if let a = alg, a.keyType != type { throw ParseError(message: "alg \(a.name) does not fit a \(crv) key") }
            guard let k = ecKey(group: group, point: [4] + x + y) else { throw ParseError(message: "the point is not on \(crv)") }
            return JSONWebKey(type: type, kid: kid, alg: alg, pkey: k)
        case "oct":
            throw ParseError(message: "kty oct (a shared HMAC secret) is not supported: HS* tokens are refused")
        default:
            throw ParseError(message: "kty \"\(kty)\" is not supported (RSA, EC)")
        }
    }

    /// A public key from OpenSSL parameters that `build` pushes onto a builder and turns into
    /// an OSSL_PARAM array (inside its own scope, so what it pushed is still alive), checked.
    private static func fromData(_ type: String, _ build: (OpaquePointer) -> UnsafeMutablePointer<OSSL_PARAM>?) -> OpaquePointer? {
        guard let bld = OSSL_PARAM_BLD_new() else { return nil }
        defer { OSSL_PARAM_BLD_free(bld) }
        guard let params = build(bld) else { return nil }
        defer { OSSL_PARAM_free(params) }
        guard let ctx = EVP_PKEY_CTX_new_from_name(nil, type, nil) else { return nil }
        defer { EVP_PKEY_CTX_free(ctx) }
        guard EVP_PKEY_fromdata_init(ctx) == 1 else { return nil }
        var pkey: OpaquePointer? = nil
        guard EVP_PKEY_fromdata(ctx, &pkey, 0x86 /* EVP_PKEY_PUBLIC_KEY: all parameters and the public key */, params) == 1, let k = pkey else { return nil }
        // The point on the curve, the modulus sane.
        guard let check = EVP_PKEY_CTX_new_from_pkey(nil, k, nil) else { EVP_PKEY_free(k); return nil }
        defer { EVP_PKEY_CTX_free(check) }
        if EVP_PKEY_public_check(check) != 1 { EVP_PKEY_free(k); return nil }
        return k
    }

    private static func rsaKey(n: [UInt8], e: [UInt8]) -> OpaquePointer? {
        fromData("RSA") { bld in
            let bn = BN_bin2bn(n, Int32(n.count), nil), be = BN_bin2bn(e, Int32(e.count), nil)
            defer { BN_free(bn); BN_free(be) }
            // The builder keeps the key names' pointers until to_param: static strings only.
            guard let bn, let be, OSSL_PARAM_BLD_push_BN(bld, JSONWebKeySet.cstr("n"), bn) == 1,
                  OSSL_PARAM_BLD_push_BN(bld, JSONWebKeySet.cstr("e"), be) == 1 else { return nil }
            return OSSL_PARAM_BLD_to_param(bld)
        }
    }

    @inline(__always) static func cstr(_ s: StaticString) -> UnsafePointer<CChar> {
        UnsafeRawPointer(s.utf8Start).assumingMemoryBound(to: CChar.self)
    }

    private static func ecKey(group: StaticString, point: [UInt8]) -> OpaquePointer? {
        fromData("EC") { bld in
            point.withUnsafeBytes { pb in
                guard OSSL_PARAM_BLD_push_utf8_string(bld, cstr("group"), cstr(group), 0) == 1,
                      OSSL_PARAM_BLD_push_octet_string(bld, cstr("pub"), pb.baseAddress, pb.count) == 1 else { return nil }
                return OSSL_PARAM_BLD_to_param(bld)
            }
        }
    }
}
