#if canImport(Glibc)
import Glibc
#endif
import COpenSSL
import MeshConfig
import MeshCore

/// The RequestAuthentication `jwtRules` that select this workload, compiled at snapshot time:
/// issuers, audiences and header names as bytes, keys as EVP_PKEYs (from inline `jwks`, or from
/// `jwksUri` as last fetched by `JWKSFetcher`, which rebuilds the snapshot when a set changes).
final class JWTTable: @unchecked Sendable {
    /// A `fromHeaders` entry: a lowercase header name and the prefix before the token.
    struct Location {
        let name: [UInt8]
        let prefix: [UInt8]
    }

    /// One `jwtRules` entry, compiled.
    struct Rule {
        let issuer: [UInt8]
        let audiences: [[UInt8]]
        /// Empty while a `jwksUri` has not been fetched yet: a token of this issuer then fails.
        let keys: [JSONWebKey]
        let headers: [Location]
        let params: [[UInt8]]
        let payloadHeader: [UInt8]?
        let forward: Bool
        let claimHeaders: [(header: [UInt8], claim: [UInt8])]
    }

    let rules: [Rule]
    /// Every header the table reads a token from or writes an output to (lowercase), so a
    /// caller-sent output header is dropped before ours is set.
    let outputHeaders: [[UInt8]]
    /// The `jwksUri`s the rules use (for the fetcher).
    let uris: [String]
    /// The fetcher's cache generation the keys were taken from.
    let generation: Int

    /// The policies of `policies` that select this workload; nil when none does.
    /// `fetched`: key sets by URI, as the fetcher has them.
    init?(_ policies: [RequestAuthentication], namespace: String, labels: [(String, String)],
          fetched: (sets: [String: JSONWebKeySet], generation: Int) = ([:], 0)) {
        let mine = policies.filter { $0.selects(namespace: namespace, labels: labels) }
        if mine.isEmpty { return nil }
        // A plain http:// jwksUri: warned once per process, at compile time, never per request.
        RequestAuthentication.warnPlaintextKeySets(mine)
        var rules: [Rule] = []
        var outs: [[UInt8]] = []
        var uris: [String] = []
        for p in mine {
            for r in p.jwtRules {
                var keys = r.jwks?.keys ?? []
                if let u = r.jwksUri {
                    if !uris.contains(u) { uris.append(u) }
                    keys = fetched.sets[u]?.keys ?? []
                }
                let payload = r.outputPayloadToHeader.map { Array($0.utf8) }
                let claims = r.outputClaimToHeaders.map { (header: Array($0.header.utf8), claim: Array($0.claim.utf8)) }
                if let payload { outs.append(payload) }
                outs.append(contentsOf: claims.map { $0.header })
                rules.append(Rule(issuer: Array(r.issuer.utf8), audiences: r.audiences.map { Array($0.utf8) }, keys: keys,
                                  headers: r.fromHeaders.map { Location(name: Array($0.name.utf8), prefix: Array($0.prefix.utf8)) },
                                  params: r.fromParams.map { Array($0.utf8) }, payloadHeader: payload, forward: r.forwardOriginalToken,
                                  claimHeaders: claims))
            }
        }
        if rules.isEmpty { return nil }
        self.rules = rules
        self.outputHeaders = outs
        self.uris = uris
        self.generation = fetched.generation
    }
}

/// Why a token was refused (the 401's body, Envoy jwt_authn's words).
enum JWTFailure: Error {
    case malformed, tooLarge, badHeader, algorithm, badPayload, unknownIssuer, wrongLocation, expired, notYetValid,
         audience, noKey, signature

    var text: StaticString {
        switch self {
        case .malformed: return "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
        case .tooLarge: return "Jwt is too large"
        case .badHeader: return "Jwt header is an invalid JSON"
        case .algorithm: return "Jwt algorithm is not supported"
        case .badPayload: return "Jwt payload is an invalid JSON"
        case .unknownIssuer: return "Jwt issuer is not configured"
        case .wrongLocation: return "Jwt is not in the location configured for its issuer"
        case .expired: return "Jwt is expired"
        case .notYetValid: return "Jwt not yet valid"
        case .audience: return "Audiences in Jwt are not allowed"
        case .noKey: return "Jwks doesn't have key to match kid or alg from Jwt"
        case .signature: return "Jwt verification fails"
        }
    }
}

/// One worker's reusable state for verifying tokens: decode buffers, the DER buffer for ECDSA
/// signatures and an EVP_MD_CTX, so a verification allocates nothing of its own. What the last
/// verified token said (its decoded payload, its rule, `iss/sub`) stays here for the rest of the
/// inbound step that verified it (authorization conditions, output headers); nothing is kept
/// per token beyond that.
final class JWTScratch {
    /// The largest token accepted (header value or query parameter), as Envoy bounds headers.
    static let maxTokenBytes = 16 * 1024
    /// Envoy jwt_authn's default clock skew for `exp` and `nbf`.
    static let clockSkewSeconds: Int64 = 60

    let header = ByteBuffer(capacity: 512)
    let payload = ByteBuffer(capacity: 2048)
    let signature = ByteBuffer(capacity: 600)
    let der = ByteBuffer(capacity: 128)
    /// `iss/sub` of the verified token (Istio's request principal).
    let principal = ByteBuffer(capacity: 256)
    /// Unescaped claim values for comparisons.
    let text = ByteBuffer(capacity: 256)
    private let md: OpaquePointer

    /// The payload's root object after a successful `verify`, nil when no token was verified.
    var claims: JSONScan.Value?
    var rule = -1

    init() { md = EVP_MD_CTX_new()! }
    deinit { EVP_MD_CTX_free(md) }

    /// Forgets the previous request's token.
    @inline(__always) func reset() { claims = nil; rule = -1; principal.clear() }

    /// Verifies the compact JWS `p[0..<n]` against `table`, found at location `found` of rule
    /// `foundRule`; on success `claims`, `rule` and `principal` describe it.
    func verify(_ p: UnsafePointer<UInt8>, _ n: Int, table: JWTTable, nowSeconds: Int64) throws(JWTFailure) {
        reset()
        guard n <= JWTScratch.maxTokenBytes else { throw .tooLarge }
        var d1 = -1, d2 = -1
        for i in 0..<n where p[i] == 46 {
            if d1 < 0 { d1 = i } else if d2 < 0 { d2 = i } else { throw .malformed }
        }
        guard d1 > 0, d2 > d1 + 1, d2 < n - 1 else { throw .malformed }
        header.clear(); payload.clear(); signature.clear()
        guard Base64URLStrict.decode(p, d1, into: header) else { throw .malformed }
        guard Base64URLStrict.decode(p + d1 + 1, d2 - d1 - 1, into: payload) else { throw .malformed }
        guard Base64URLStrict.decode(p + d2 + 1, n - d2 - 1, into: signature) else { throw .malformed }

        // Header: alg (a supported one), kid, and no `crit` extension we would have to understand.
        let hp = UnsafePointer(header.readPointer), hn = header.readableBytes
        guard JSONScan.validate(hp, hn, maxDepth: 4), let h = JSONScan.root(hp, hn), JSONScan.kind(hp, h) == .object else { throw .badHeader }
        guard let algV = JSONScan.member(hp, h, "alg"), let algR = JSONScan.plainString(hp, algV) else { throw .badHeader }
        guard let alg = JWSAlgorithm.from(hp + algR.start, algR.end - algR.start) else { throw .algorithm }
        if JSONScan.member(hp, h, "crit") != nil { throw .badHeader }
        var kid: (start: Int, end: Int)? = nil
        if let k = JSONScan.member(hp, h, "kid") {
            guard let r = JSONScan.plainString(hp, k) else { throw .badHeader }
            kid = r
        }

        // Payload: iss picks the rule; exp, nbf, aud.
        let pp = UnsafePointer(payload.readPointer), pn = payload.readableBytes
        guard JSONScan.validate(pp, pn, maxDepth: 16), let root = JSONScan.root(pp, pn), JSONScan.kind(pp, root) == .object else { throw .badPayload }
        guard let issV = JSONScan.member(pp, root, "iss"), let iss = JSONScan.plainString(pp, issV) else { throw .unknownIssuer }
        let issN = iss.end - iss.start
        var ri = -1
        for (i, r) in table.rules.enumerated() where r.issuer.count == issN {
            if r.issuer.withUnsafeBufferPointer({ memcmp($0.baseAddress!, pp + iss.start, issN) == 0 }) { ri = i; break }
        }
        guard ri >= 0 else { throw .unknownIssuer }
        let rule = table.rules[ri]
        if let e = JSONScan.member(pp, root, "exp") {
            guard JSONScan.kind(pp, e) == .number, let exp = JSONScan.int64(pp, e) else { throw .badPayload }
            if nowSeconds > exp &+ JWTScratch.clockSkewSeconds { throw .expired }
        }
        if let b = JSONScan.member(pp, root, "nbf") {
            guard JSONScan.kind(pp, b) == .number, let nbf = JSONScan.int64(pp, b) else { throw .badPayload }
            if nowSeconds &+ JWTScratch.clockSkewSeconds < nbf { throw .notYetValid }
        }
        if !rule.audiences.isEmpty {
            var ok = false
            if let a = JSONScan.member(pp, root, "aud") {
                JWTScratch.forEachString(pp, a) { s, e in
                    ok = rule.audiences.contains { aud in aud.count == e - s && aud.withUnsafeBufferPointer { memcmp($0.baseAddress!, pp + s, e - s) == 0 } }
                    return !ok
                }
            }
            if !ok { throw .audience }
        }

        // Signature: the keys that fit the algorithm (and the kid, when both have one).
        let signed = UnsafeRawPointer(p)
        var tried = false
        for key in rule.keys where key.accepts(alg) {
            if let kid, !key.kid.isEmpty {
                let kn = kid.end - kid.start
                if key.kid.count != kn || !key.kid.withUnsafeBufferPointer({ memcmp($0.baseAddress!, hp + kid.start, kn) == 0 }) { continue }
            }
            tried = true
            if check(key, alg, signed, d2) {
                claims = root
                self.rule = ri
                principal.append(pp + iss.start, issN)
                principal.append(47)
                if let s = JSONScan.member(pp, root, "sub") { _ = JSONScan.appendString(pp, s, to: principal) }
                return
            }
        }
        throw tried ? .signature : .noKey
    }

    /// Calls `body(start, end)` for a string value, or each string of an array (raw bytes,
    /// strings with escapes skipped); `body` returns false to stop.
    static func forEachString(_ p: UnsafePointer<UInt8>, _ v: JSONScan.Value, _ body: (Int, Int) -> Bool) {
        if let s = JSONScan.plainString(p, v) { _ = body(s.start, s.end); return }
        JSONScan.forEachElement(p, v) { e in
            guard let s = JSONScan.plainString(p, e) else { return true }
            return body(s.start, s.end)
        }
    }

    /// Whether `signature` is `key`'s signature over `data[0..<n]` with `alg`.
    private func check(_ key: JSONWebKey, _ alg: JWSAlgorithm, _ data: UnsafeRawPointer, _ n: Int) -> Bool {
        var sig = UnsafePointer(signature.readPointer)
        var sigLen = signature.readableBytes
        if alg.keyType != .rsa {
            // JWS carries r || s (RFC 7518 §3.4); OpenSSL wants an ECDSA-Sig-Value in DER.
            let size = alg.keyType == .p256 ? 32 : 48
            guard sigLen == 2 * size else { return false }
            der.clear()
            JWTScratch.ecdsaDER(sig, size, into: der)
            sig = UnsafePointer(der.readPointer)
            sigLen = der.readableBytes
        }
        guard EVP_MD_CTX_reset(md) == 1 else { return false }
        var pctx: OpaquePointer? = nil
        guard EVP_DigestVerifyInit(md, &pctx, alg.digest, nil, key.pkey) == 1 else { return false }
        if alg.isPSS {
            guard let pctx, EVP_PKEY_CTX_set_rsa_padding(pctx, 6 /* RSA_PKCS1_PSS_PADDING */) == 1,
                  EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, -1 /* RSA_PSS_SALTLEN_DIGEST */) == 1 else { return false }
        }
        let ok = EVP_DigestVerify(md, sig, sigLen, data.assumingMemoryBound(to: UInt8.self), n) == 1
        ERR_clear_error()
        return ok
    }

    /// r || s (each `size` bytes, big-endian) as DER SEQUENCE { INTEGER r, INTEGER s }.
    static func ecdsaDER(_ sig: UnsafePointer<UInt8>, _ size: Int, into out: ByteBuffer) {
        func intLen(_ p: UnsafePointer<UInt8>) -> (skip: Int, pad: Bool) {
            var i = 0
            while i < size - 1 && p[i] == 0 { i += 1 }
            return (i, p[i] & 0x80 != 0)
        }
        let r = intLen(sig), s = intLen(sig + size)
        let rl = size - r.skip + (r.pad ? 1 : 0), sl = size - s.skip + (s.pad ? 1 : 0)
        let body = 2 + rl + 2 + sl
        out.append(0x30)
        if body >= 128 { out.append(0x81) }
        out.append(UInt8(body))
        out.append(0x02); out.append(UInt8(rl)); if r.pad { out.append(0) }; out.append(sig + r.skip, size - r.skip)
        out.append(0x02); out.append(UInt8(sl)); if s.pad { out.append(0) }; out.append(sig + size + s.skip, size - s.skip)
    }
}
