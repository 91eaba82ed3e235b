#if canImport(Glibc)
import Glibc
#endif
import MeshCore
import MeshHTTP

/// RequestAuthentication on the inbound path (Istio's semantics, Envoy jwt_authn's replies): a
/// token found where a rule looks (`fromHeaders`, default `Authorization: Bearer`; `fromParams`,
/// default `access_token`) must verify against the rule of its issuer, else 401; no token at
/// all passes (an AuthorizationPolicy decides). On success the token's header is removed unless
/// `forwardOriginalToken`, and `outputPayloadToHeader` / `outputClaimToHeaders` are set.
extension Exchange {
    /// False when the request was answered here (401).
    func runRequestAuthentication() -> Bool {
        let jwt = worker.jwt
        jwt.reset()
        guard let t = snapshot!.jwt else { return true }
        let r = request
        let b = UnsafePointer(r.bytes.base)
        // Output headers are ours alone: a caller's copies are never forwarded.
        for i in 0..<r.fields.count {
            let f = r.fields[i]
            for h in t.outputHeaders where Int(f.name.length) == h.count
                && h.withUnsafeBufferPointer({ memcmp($0.baseAddress!, b + Int(f.name.start), h.count) == 0 }) {
                r.drop(i)
            }
        }
        // The token: the first location of any rule that holds one.
        var tokStart = -1, tokLen = 0, field = -1
        var inHeader: [UInt8]? = nil, inParam: [UInt8]? = nil
        search: for rule in t.rules {
            for loc in rule.headers {
                for i in 0..<r.fields.count {
                    let f = r.fields[i]
                    guard Int(f.name.length) == loc.name.count,
                          loc.name.withUnsafeBufferPointer({ memcmp($0.baseAddress!, b + Int(f.name.start), loc.name.count) == 0 }) else { continue }
                    var s = Int(f.value.start), n = Int(f.value.length)
                    let pl = loc.prefix.count
                    if pl > 0 {
                        guard n >= pl, loc.prefix.withUnsafeBufferPointer({ Exchange.sameIgnoringCase(b + s, $0.baseAddress!, pl) }) else { continue }
                        s += pl; n -= pl
                    }
                    while n > 0 && b[s] == 32 { s += 1; n -= 1 }
                    guard n > 0 else { continue }
                    tokStart = s; tokLen = n; field = i; inHeader = loc.name
                    break search
                }
            }
            if !rule.params.isEmpty, let q = Exchange.queryParameter(r, rule.params) {
                tokStart = q.start; tokLen = q.length; inParam = rule.params[q.index]
                break search
            }
        }
        guard tokStart >= 0 else { return true }
        let now = Int64(Clock.wallNanos() / 1_000_000_000)
        // Every other token a rule's location holds (a second header, another field a rule reads,
        // an `access_token` besides): each must verify too, from its own issuer's location, or
        // the request is refused, so none reaches the app unverified (Envoy verifies every
        // token it extracts). Checked before the first, whose claims the scratch keeps.
        for i in 0..<r.fields.count where i != field {
            let f = r.fields[i]
            var found = false
            var s = 0, n = 0, name: [UInt8] = []
            rules: for rule in t.rules {
                for loc in rule.headers {
                    guard Int(f.name.length) == loc.name.count,
                          loc.name.withUnsafeBufferPointer({ memcmp($0.baseAddress!, b + Int(f.name.start), loc.name.count) == 0 }) else { continue }
                    s = Int(f.value.start); n = Int(f.value.length)
                    let pl = loc.prefix.count
                    if pl > 0 {
                        guard n >= pl, loc.prefix.withUnsafeBufferPointer({ Exchange.sameIgnoringCase(b + s, $0.baseAddress!, pl) }) else { continue }
                        s += pl; n -= pl
                    }
                    while n > 0 && b[s] == 32 { s += 1; n -= 1 }
                    guard n > 0 else { continue }
                    found = true; name = loc.name
                    break rules
                }
            }
            guard found else { continue }
            do throws(JWTFailure) { try jwt.verify(b + s, n, table: t, nowSeconds: now) } catch { return refuseToken(error) }
            let own = t.rules[jwt.rule]
            guard own.headers.contains(where: { $0.name == name }) else { jwt.reset(); return refuseToken(.wrongLocation) }
            if !own.forward { r.drop(i) }
        }
        for (k, rule) in t.rules.enumerated() where !rule.params.isEmpty {
            var from = 0
            while let q = Exchange.queryParameter(r, rule.params, from: from) {
                from = q.next
                let pname = rule.params[q.index]
                // A name an earlier rule also reads was checked with that rule; the first token is checked below.
                if q.start == tokStart && inParam != nil { continue }
                if t.rules[0..<k].contains(where: { $0.params.contains(pname) }) { continue }
                do throws(JWTFailure) { try jwt.verify(b + q.start, q.length, table: t, nowSeconds: now) } catch { return refuseToken(error) }
                guard t.rules[jwt.rule].params.contains(pname) else { jwt.reset(); return refuseToken(.wrongLocation) }
            }
        }
        do throws(JWTFailure) {
            try jwt.verify(b + tokStart, tokLen, table: t, nowSeconds: now)
        } catch {
            return refuseToken(error)
        }
        let rule = t.rules[jwt.rule]
        // The token must have come from a location of its own issuer's rule.
        let fromOwn = inHeader.map { h in rule.headers.contains { $0.name == h } } ?? inParam.map { p in rule.params.contains(p) } ?? false
        guard fromOwn else { jwt.reset(); return refuseToken(.wrongLocation) }
        if field >= 0 && !rule.forward { r.drop(field) }
        // Outputs: copied to a worker buffer first (a field added to the head may move its bytes).
        let out = jwt.text
        if let h = rule.payloadHeader {
            // Envoy's forward_payload_header: the payload segment, base64url as in the token.
            var d1 = tokStart
            while b[d1] != 46 { d1 += 1 }
            var d2 = d1 + 1
            while b[d2] != 46 { d2 += 1 }
            out.clear()
            out.append(b + d1 + 1, d2 - d1 - 1)
            h.withUnsafeBufferPointer { hb in _ = r.addField(hb.baseAddress!, hb.count, UnsafePointer(out.readPointer), out.readableBytes) }
        }
        if !rule.claimHeaders.isEmpty, let root = jwt.claims {
            let pp = UnsafePointer(jwt.payload.readPointer)
            for c in rule.claimHeaders {
                guard let v = JSONScan.member(pp, root, c.claim) else { continue }
                out.clear()
                switch JSONScan.kind(pp, v) {
                case .string: _ = JSONScan.appendString(pp, v, to: out)
                case .number, .bool: out.append(pp + v.start, v.end - v.start)
                default: continue   // objects, arrays and null are not copied (Envoy: string, integer, bool)
                }
                var clean = out.readableBytes > 0
                for i in 0..<out.readableBytes where out.readPointer[i] < 32 || out.readPointer[i] == 127 { clean = false }
                guard clean else { continue }
                c.header.withUnsafeBufferPointer { hb in _ = r.addField(hb.baseAddress!, hb.count, UnsafePointer(out.readPointer), out.readableBytes) }
            }
        }
        return true
    }

    /// 401 (403 for a wrong audience, as Envoy jwt_authn) with its `www-authenticate` (realm:
    /// this request's URL without query).
    private func refuseToken(_ why: JWTFailure) -> Bool {
        worker.stats.inc(.jwtRejected)
        let r = request
        localReply(why == .audience ? 403 : 401, why.text, flag: .none) { h in
            h.beginField("www-authenticate")
            h.bytes.append("Bearer realm=\"http://")
            if !r.authority.isEmpty { h.bytes.append(r.pointer(r.authority), Int(r.authority.length)) }
            var n = Int(r.path.length)
            let p = r.pointer(r.path)
            var i = 0
            while i < n && p[i] != 63 { i += 1 }
            n = i
            // Only bytes that cannot end the quoted string.
            for k in 0..<n where p[k] > 32 && p[k] < 127 && p[k] != 34 && p[k] != 92 { h.bytes.append(p[k]) }
            h.bytes.append("\", error=\"invalid_token\"")
            h.endField()
        }
        return false
    }

    static func sameIgnoringCase(_ a: UnsafePointer<UInt8>, _ b: UnsafePointer<UInt8>, _ n: Int) -> Bool {
        for i in 0..<n where ASCII.lower(a[i]) != ASCII.lower(b[i]) { return false }
        return true
    }

    /// The first query parameter of the request path named one of `names` (raw value, not
    /// percent-decoded: a JWT uses only URL-safe characters).
    static func queryParameter(_ r: MessageHead, _ names: [[UInt8]]) -> (start: Int, length: Int, index: Int)? {
        guard let q = queryParameter(r, names, from: 0) else { return nil }
        return (q.start, q.length, q.index)
    }

    /// The next such parameter at or after path offset `from` (0: the query's start); `next` is
    /// where to look for the one after it.
    static func queryParameter(_ r: MessageHead, _ names: [[UInt8]], from: Int) -> (start: Int, length: Int, index: Int, next: Int)? {
        let p = r.pointer(r.path)
        let n = Int(r.path.length)
        var i = from
        if i == 0 {
            while i < n && p[i] != 63 { i += 1 }
            i += 1
        }
        while i < n {
            var e = i
            while e < n && p[e] != 38 && p[e] != 35 { e += 1 }
            var eq = i
            while eq < e && p[eq] != 61 { eq += 1 }
            if eq < e {
                for (k, name) in names.enumerated() where name.count == eq - i
                    && name.withUnsafeBufferPointer({ memcmp($0.baseAddress!, p + i, name.count) == 0 }) && e > eq + 1 {
                    return (Int(r.path.start) + eq + 1, e - eq - 1, k, e < n && p[e] == 35 ? n : e + 1)
                }
            }
            if e < n && p[e] == 35 { break }
            i = e + 1
        }
        return nil
    }
}
