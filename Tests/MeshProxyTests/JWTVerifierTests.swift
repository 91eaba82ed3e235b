import COpenSSL
import XCTest
@testable import MeshConfig
@testable import MeshProxy
import MeshCore

/// JWKS parsing and JWT verification, refusals first: every key is generated here at run time.
final class JWTVerifierTests: XCTestCase {
    // MARK: keys and tokens made here

    final class Key: @unchecked Sendable {
        let pkey: OpaquePointer
        let jwk: String
        init(rsaBits: Int32 = 2048, kid: String = "r1", alg: String? = "RS256") {
            let ctx = EVP_PKEY_CTX_new_from_name(nil, "RSA", nil)!
            defer { EVP_PKEY_CTX_free(ctx) }
            precondition(EVP_PKEY_keygen_init(ctx) == 1 && EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, rsaBits) == 1)
            var k: OpaquePointer? = nil
            precondition(EVP_PKEY_generate(ctx, &k) == 1)
            pkey = k!
            let a = alg.map { "\"alg\":\"\($0)\"," } ?? ""
            jwk = "{\"kty\":\"RSA\",\"kid\":\"\(kid)\",\(a)\"n\":\"\(Key.bn(pkey, "n", 0))\",\"e\":\"\(Key.bn(pkey, "e", 0))\"}"
        }
        init(ecKid kid: String, curve: String = "P-256") {
            let ctx = EVP_PKEY_CTX_new_from_name(nil, "EC", nil)!
            defer { EVP_PKEY_CTX_free(ctx) }
            precondition(EVP_PKEY_keygen_init(ctx) == 1 && EVP_PKEY_CTX_set_group_name(ctx, curve) == 1)
            var k: OpaquePointer? = nil
            precondition(EVP_PKEY_generate(ctx, &k) == 1)
            pkey = k!
            let size = curve == "P-256" ? 32 : 48
            jwk = "{\"kty\":\"EC\",\"kid\":\"\(kid)\",\"crv\":\"\(curve)\",\"x\":\"\(Key.bn(pkey, "qx", size))\",\"y\":\"\(Key.bn(pkey, "qy", size))\"}"
        }
        deinit { EVP_PKEY_free(pkey) }

        static func bn(_ k: OpaquePointer, _ name: String, _ pad: Int) -> String {
            var b: OpaquePointer? = nil
            precondition(EVP_PKEY_get_bn_param(k, name, &b) == 1)
            defer { BN_free(b) }
            let n = Int((BN_num_bits(b) + 7) / 8)
            var out = [UInt8](repeating: 0, count: max(n, pad))
            _ = BN_bn2binpad(b, &out, Int32(out.count))
            return b64u(out)
        }

        /// Signs `input` (RS256, PS256 or ES256 as r||s).
        func sign(_ input: [UInt8], pss: Bool = false, ec: Bool = false, digest: OpaquePointer = EVP_sha256(), size: Int = 32) -> [UInt8] {
            let md = EVP_MD_CTX_new()!
            defer { EVP_MD_CTX_free(md) }
            var pctx: OpaquePointer? = nil
            precondition(EVP_DigestSignInit(md, &pctx, digest, nil, pkey) == 1)
            if pss { precondition(EVP_PKEY_CTX_set_rsa_padding(pctx, 6) == 1 && EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, -1) == 1) }
            var len = 0
            precondition(EVP_DigestSign(md, nil, &len, input, input.count) == 1)
            var sig = [UInt8](repeating: 0, count: len)
            precondition(EVP_DigestSign(md, &sig, &len, input, input.count) == 1)
            sig = Array(sig[0..<len])
            guard ec else { return sig }
            // DER ECDSA-Sig-Value -> r || s
            var p: UnsafePointer<UInt8>? = sig.withUnsafeBufferPointer { $0.baseAddress }
            let s = sig.withUnsafeBufferPointer { b -> OpaquePointer? in p = b.baseAddress; return d2i_ECDSA_SIG(nil, &p, b.count) }!
            defer { ECDSA_SIG_free(s) }
            var rr: OpaquePointer? = nil, sv: OpaquePointer? = nil
            ECDSA_SIG_get0(s, &rr, &sv)
            var out = [UInt8](repeating: 0, count: 2 * size)
            out.withUnsafeMutableBufferPointer { o in
                _ = BN_bn2binpad(rr, o.baseAddress!, Int32(size))
                _ = BN_bn2binpad(sv, o.baseAddress! + size, Int32(size))
            }
            return out
        }
    }

    static func b64u(_ b: [UInt8]) -> String {
        let t = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
        var out: [UInt8] = []
        var i = 0
        while i + 3 <= b.count {
            let v = Int(b[i]) << 16 | Int(b[i + 1]) << 8 | Int(b[i + 2])
            out += [t[v >> 18], t[(v >> 12) & 63], t[(v >> 6) & 63], t[v & 63]]
            i += 3
        }
        if b.count - i == 1 { let v = Int(b[i]) << 16; out += [t[v >> 18], t[(v >> 12) & 63]] }
        if b.count - i == 2 { let v = Int(b[i]) << 16 | Int(b[i + 1]) << 8; out += [t[v >> 18], t[(v >> 12) & 63], t[(v >> 6) & 63]] }
        return String(decoding: out, as: UTF8.self)
    }

    static let rsa = Key()
    static let ec = Key(ecKid: "e1")
    static let now: Int64 = 1_800_000_000

    func token(alg: String = "RS256", kid: String? = "r1", header: String? = nil, payload: String? = nil, key: Key? = nil) -> String {
        let h = header ?? "{\"alg\":\"\(alg)\"\(kid.map { ",\"kid\":\"\($0)\"" } ?? "")}"
        let p = payload ?? "{\"iss\":\"https://issuer\",\"sub\":\"alice\",\"aud\":\"bookinfo\",\"exp\":\(Self.now + 600)}"
        let input = Self.b64u(Array(h.utf8)) + "." + Self.b64u(Array(p.utf8))
        let k = key ?? (alg == "ES256" ? Self.ec : Self.rsa)
        let digest: OpaquePointer = alg.hasSuffix("512") ? EVP_sha512() : alg.hasSuffix("384") ? EVP_sha384() : EVP_sha256()
        let sig = k.sign(Array(input.utf8), pss: alg.hasPrefix("PS"), ec: alg.hasPrefix("ES"), digest: digest, size: alg == "ES384" ? 48 : 32)
        return input + "." + Self.b64u(sig)
    }

    func table(jwks: String? = nil, audiences: [String] = ["bookinfo"]) throws -> JWTTable {
        var rule = RequestAuthentication.JWTRule(issuer: "https://issuer")
        rule.audiences = audiences
        rule.jwks = try JSONWebKeySet.parse(jwks ?? "{\"keys\":[\(Self.rsa.jwk),\(Self.ec.jwk)]}")
        rule.fromHeaders = [.init(name: "authorization", prefix: "Bearer ")]
        let ra = RequestAuthentication(name: "r", namespace: "default", selector: nil, jwtRules: [rule])
        return try XCTUnwrap(JWTTable([ra], namespace: "default", labels: []))
    }

    func verify(_ t: JWTTable, _ tok: String, now: Int64 = JWTVerifierTests.now) -> JWTFailure? {
        let s = JWTScratch()
        let b = Array(tok.utf8)
        do throws(JWTFailure) {
            try b.withUnsafeBufferPointer { p throws(JWTFailure) in try s.verify(p.baseAddress!, p.count, table: t, nowSeconds: now) }
            return nil
        } catch { return error }
    }

    func jwksError(_ text: String) -> String? {
        do { _ = try JSONWebKeySet.parse(text); return nil } catch { return error.message }
    }

    // MARK: JWKS refusals

    func testJWKSRefusals() {
        let r = Self.rsa.jwk
        XCTAssertEqual(jwksError("not json"), "not a JSON object")
        XCTAssertEqual(jwksError("{\"keys\": 1}"), "no \"keys\" list")
        XCTAssertEqual(jwksError("{\"keys\": []}"), "the key set has no keys")
        XCTAssertEqual(jwksError("{\"keys\":[\(r)]} x"), "not a JSON object", "trailing bytes")
        XCTAssertTrue(jwksError("{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"}]}")!.contains("kty oct"))
        XCTAssertTrue(jwksError("{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"AA\"}]}")!.contains("kty \"OKP\""))
        XCTAssertTrue(jwksError(r.replacingOccurrences(of: "\"RS256\"", with: "\"HS256\"").wrapKeys)!.contains("alg \"HS256\""))
        XCTAssertTrue(jwksError(r.replacingOccurrences(of: "\"RS256\"", with: "\"ES256\"").wrapKeys)!.contains("does not fit an RSA key"))
        XCTAssertTrue(jwksError(r.replacingOccurrences(of: "\"n\":\"", with: "\"n\":\"*").wrapKeys)!.contains("n is not base64url"))
        XCTAssertTrue(jwksError(r.replacingOccurrences(of: "\"kid\"", with: "\"use\":\"enc\",\"kid\"").wrapKeys)!.contains("use is \"enc\""))
        XCTAssertTrue(jwksError(Key(rsaBits: 1024).jwk.wrapKeys)!.contains("2048"), "a small RSA key")
        let e = Self.ec.jwk
        XCTAssertTrue(jwksError(e.replacingOccurrences(of: "P-256", with: "P-521").wrapKeys)!.contains("crv \"P-521\""))
        // A point off the curve: y replaced by x.
        let xv = e.components(separatedBy: "\"x\":\"")[1].components(separatedBy: "\"")[0]
        let yv = e.components(separatedBy: "\"y\":\"")[1].components(separatedBy: "\"")[0]
        XCTAssertEqual(jwksError(e.replacingOccurrences(of: yv, with: xv).wrapKeys), "keys[0]: the point is not on P-256")
        XCTAssertTrue(jwksError(e.replacingOccurrences(of: yv, with: "AAAA").wrapKeys)!.contains("32 bytes"))
        XCTAssertTrue(jwksError("{\"keys\":[" + Array(repeating: r, count: 65).joined(separator: ",") + "]}")!.contains("more than 64"))
        XCTAssertTrue(jwksError(String(repeating: "[", count: 100) + String(repeating: "]", count: 100)) != nil, "deep nesting")
        XCTAssertNil(jwksError("{\"keys\":[\(r),\(e)]}"))
    }

    // MARK: JWT refusals

    func testMalformedTokensRefused() throws {
        let t = try table()
        let good = token()
        let parts = good.split(separator: ".").map(String.init)
        XCTAssertEqual(verify(t, parts[0] + "." + parts[1]), .malformed, "two segments")
        XCTAssertEqual(verify(t, good + ".x"), .malformed, "four segments")
        XCTAssertEqual(verify(t, parts[0] + ".." + parts[2]), .malformed, "empty payload")
        XCTAssertEqual(verify(t, parts[0] + "." + parts[1] + "."), .malformed, "empty signature")
        XCTAssertEqual(verify(t, parts[0] + "." + parts[1] + "=." + parts[2]), .malformed, "padding")
        XCTAssertEqual(verify(t, parts[0] + "." + parts[1] + "." + parts[2] + "+"), .malformed, "base64 (not url) alphabet")
        XCTAssertEqual(verify(t, String(repeating: "a", count: JWTScratch.maxTokenBytes + 1)), .tooLarge)
        XCTAssertEqual(verify(t, token(header: "{\"alg\":\"RS256\"")), .badHeader, "header not JSON")
        XCTAssertEqual(verify(t, token(payload: "[1,2]")), .badPayload, "payload not an object")
        XCTAssertEqual(verify(t, token(header: "{\"alg\":\"RS256\",\"crit\":[\"b64\"]}")), .badHeader, "crit not understood")
    }

    func testAlgorithmsRefused() throws {
        let t = try table()
        let good = token().split(separator: ".").map(String.init)
        let noneHead = Self.b64u(Array("{\"alg\":\"none\"}".utf8))
        XCTAssertEqual(verify(t, noneHead + "." + good[1] + ".AA"), .algorithm, "alg none")
        // HS256 keyed with the RSA public key's bytes: refused before any key is looked at.
        let hsHead = Self.b64u(Array("{\"alg\":\"HS256\",\"kid\":\"r1\"}".utf8))
        XCTAssertEqual(verify(t, hsHead + "." + good[1] + "." + good[2]), .algorithm, "HS256")
        XCTAssertEqual(verify(t, token(header: "{\"alg\":\"rs256\"}")), .algorithm, "case matters")
        // An RS256 token naming the EC key's kid: no key fits (type), never verified against it.
        XCTAssertEqual(verify(t, token(kid: "e1")), .noKey)
        XCTAssertEqual(verify(t, token(alg: "ES256", kid: "r1")), .noKey)
        XCTAssertEqual(verify(t, token(kid: "nope")), .noKey, "kid selection")
        // The RSA key's JWK names RS256: a PS256 token cannot use it.
        XCTAssertEqual(verify(t, token(alg: "PS256")), .noKey)
    }

    func testClaimsChecked() throws {
        let t = try table()
        func p(_ extra: String, iss: String = "https://issuer") -> String {
            "{\"iss\":\"\(iss)\",\"sub\":\"alice\",\"aud\":\"bookinfo\"\(extra)}"
        }
        XCTAssertEqual(verify(t, token(payload: p(",\"exp\":\(Self.now - 61)"))), .expired)
        XCTAssertNil(verify(t, token(payload: p(",\"exp\":\(Self.now - 59)"))), "within the 60 s skew")
        XCTAssertEqual(verify(t, token(payload: p(",\"nbf\":\(Self.now + 61)"))), .notYetValid)
        XCTAssertNil(verify(t, token(payload: p(",\"nbf\":\(Self.now + 59)"))))
        XCTAssertEqual(verify(t, token(payload: p(",\"exp\":\"soon\""))), .badPayload, "exp not a number")
        XCTAssertEqual(verify(t, token(payload: p("", iss: "https://other"))), .unknownIssuer)
        XCTAssertEqual(verify(t, token(payload: "{\"sub\":\"alice\"}")), .unknownIssuer, "no iss")
        XCTAssertEqual(verify(t, token(payload: "{\"iss\":\"https://issuer\",\"aud\":\"x\"}")), .audience)
        XCTAssertEqual(verify(t, token(payload: "{\"iss\":\"https://issuer\"}")), .audience, "no aud")
        XCTAssertNil(verify(t, token(payload: "{\"iss\":\"https://issuer\",\"aud\":[\"x\",\"bookinfo\"]}")))
        XCTAssertNil(verify(try table(audiences: []), token(payload: "{\"iss\":\"https://issuer\"}")), "no audiences configured")
    }

    func testSignatures() throws {
        let t = try table()
        XCTAssertNil(verify(t, token()))
        XCTAssertNil(verify(t, token(alg: "ES256", kid: "e1")))
        XCTAssertNil(verify(t, token(alg: "ES256", kid: nil)), "no kid: every key that fits is tried")
        // Payload changed after signing.
        let parts = token().split(separator: ".").map(String.init)
        let forged = Self.b64u(Array("{\"iss\":\"https://issuer\",\"sub\":\"root\",\"aud\":\"bookinfo\"}".utf8))
        XCTAssertEqual(verify(t, parts[0] + "." + forged + "." + parts[2]), .signature)
        // Signed by another key with the same kid.
        XCTAssertEqual(verify(t, token(key: Key())), .signature)
        // An ES256 signature of the wrong length.
        let ep = token(alg: "ES256", kid: "e1").split(separator: ".").map(String.init)
        XCTAssertEqual(verify(t, ep[0] + "." + ep[1] + "." + Self.b64u([UInt8](repeating: 1, count: 63))), .signature)
        // PS256 with a key that allows it.
        let pssKey = Key(kid: "p1", alg: nil)
        let tp = try table(jwks: "{\"keys\":[\(pssKey.jwk)]}")
        XCTAssertNil(verify(tp, token(alg: "PS256", kid: "p1", key: pssKey)))
        XCTAssertNil(verify(tp, token(alg: "RS256", kid: "p1", key: pssKey)), "a key without alg takes RS256 too")
        // RS512, PS384 and ES384 with keys that allow them; ES384 refuses a P-256 key and the reverse.
        let rsaAny = Key(kid: "a1", alg: nil), p384 = Key(ecKid: "e3", curve: "P-384")
        let more = try table(jwks: "{\"keys\":[\(rsaAny.jwk),\(p384.jwk),\(Self.ec.jwk)]}")
        XCTAssertNil(verify(more, token(alg: "RS512", kid: "a1", key: rsaAny)))
        XCTAssertNil(verify(more, token(alg: "PS384", kid: "a1", key: rsaAny)))
        XCTAssertNil(verify(more, token(alg: "ES384", kid: "e3", key: p384)))
        XCTAssertEqual(verify(more, token(alg: "ES384", kid: "e1", key: p384)), .noKey, "ES384 names a P-256 key")
        XCTAssertEqual(verify(more, token(alg: "ES256", kid: "e3", key: Self.ec)), .noKey, "ES256 names a P-384 key")
        XCTAssertEqual(verify(more, token(alg: "RS512", kid: "a1", key: Key())), .signature)
        // The request principal is iss/sub.
        let s = JWTScratch()
        let b = Array(token().utf8)
        try b.withUnsafeBufferPointer { p in try s.verify(p.baseAddress!, p.count, table: t, nowSeconds: Self.now) }
        XCTAssertEqual(String(decoding: s.principal.readableArray, as: UTF8.self), "https://issuer/alice")
    }

    // MARK: JSON scanner

    func scan(_ s: String) -> Bool { let b = Array(s.utf8); return b.withUnsafeBufferPointer { JSONScan.validate($0.baseAddress!, $0.count) } }

    func testJSONScanRefusals() {
        for bad in ["", "{", "{\"a\":}", "{\"a\" 1}", "{\"a\":1,}", "[1,]", "\"\u{01}\"", "\"\\x\"", "\"\\u12\"", "01", "1.", "-", "tru",
                    "{\"a\":1} {}", "{a:1}", String(repeating: "[", count: 40) + String(repeating: "]", count: 40)] {
            XCTAssertFalse(scan(bad), bad)
        }
        for good in ["{}", "[]", "{\"a\":[1,2.5e3,-0,true,false,null,\"x\\u00e9\\n\"]}", " 1 "] { XCTAssertTrue(scan(good), good) }
        let b = Array("{\"a\":{\"b\":\"c\\u0041\"},\"a\":2}".utf8)
        b.withUnsafeBufferPointer { p in
            let root = JSONScan.root(p.baseAddress!, p.count)!
            let a = JSONScan.member(p.baseAddress!, root, "a")!
            let inner = JSONScan.member(p.baseAddress!, a, "b")!
            XCTAssertNil(JSONScan.plainString(p.baseAddress!, inner), "escaped")
            let out = ByteBuffer(capacity: 16)
            XCTAssertTrue(JSONScan.appendString(p.baseAddress!, inner, to: out))
            XCTAssertEqual(String(decoding: out.readableArray, as: UTF8.self), "cA")
        }
    }

    // MARK: conditions

    func testConditionKeys() {
        typealias P = AuthorizationPolicy
        XCTAssertEqual(P.parseConditionKey("request.auth.claims[a][b]"), .claim(["a", "b"]))
        XCTAssertEqual(P.parseConditionKey("request.auth.claims[groups]"), .claim(["groups"]))
        XCTAssertNil(P.parseConditionKey("request.auth.claims[]"))
        XCTAssertNil(P.parseConditionKey("request.auth.claims[a]b"))
        XCTAssertNil(P.parseConditionKey("request.auth.claims[a[b]]"))
        XCTAssertNil(P.parseConditionKey("request.headers[bad header]"))
        XCTAssertEqual(P.parseConditionKey("request.headers[X-Env]"), .header("x-env"))
        XCTAssertEqual(P.parseConditionKey("remote.ip"), .sourceIP, "no trusted proxies: the caller's address")
        XCTAssertNil(P.parseConditionKey("destination.ip"), "refused by name in parseConditions")
    }
}

private extension String {
    var wrapKeys: String { "{\"keys\":[\(self)]}" }
}
