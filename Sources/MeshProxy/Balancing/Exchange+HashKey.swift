import MeshCore
import MeshHTTP

/// The consistent-hash key of an outbound request (Istio's `consistentHash`), read in place from
/// the request head, and the affinity cookie Envoy sets when `httpCookie` has a ttl and the
/// request lacks the cookie. No allocation: bytes are hashed where they lie.
extension Exchange {
    /// Sets `lbHash` (nil: the key is absent, the table is entered at random, as Envoy does) and
    /// `lbCookie` for the request's target.
    func computeLBHash() {
        lbHash = nil
        lbCookie = 0
        guard !target.isNone, let key = snapshot.targets[target.index].balancing?.hashKey else { return }
        let r = request
        switch key {
        case .header(let name):
            if name.count == 4 && name.elementsEqual("host".utf8) || name.elementsEqual(":authority".utf8) {
                lbHash = LBHash.bytes(r.pointer(r.authority), Int(r.authority.length))
                return
            }
            lbHash = name.withUnsafeBufferPointer { n in r.withValue(n.baseAddress!, n.count) { LBHash.bytes($0, $1) } }
        case .cookie(let name, _):
            lbHash = name.withUnsafeBufferPointer { n in Self.cookieHash(r, n.baseAddress!, n.count) }
            if lbHash == nil {
                // Envoy: no cookie but a ttl: generate one, hash it for this request, and set it
                // on the response so the next request carries it.
                lbCookie = worker.rng.next() | 1
                lbHash = LBHash.finish(Self.hexHash(lbCookie))
            }
        case .sourceIP:
            lbHash = down?.sourceAddressHash
        case .queryParameter(let name):
            lbHash = name.withUnsafeBufferPointer { n in Self.queryHash(r.pointer(r.path), Int(r.path.length), n.baseAddress!, n.count) }
        }
    }

    /// Adds `set-cookie: NAME="VALUE"; Max-Age=TTL; Path=PATH; HttpOnly` for a generated cookie.
    func addAffinityCookie(_ r: MessageHead) {
        guard lbCookie != 0, !target.isNone, case .cookie(let name, let suffix)? = snapshot.targets[target.index].balancing?.hashKey else { return }
        r.beginField("set-cookie")
        r.bytes.append(name)
        r.bytes.append(UInt8(ascii: "="))
        r.bytes.append(UInt8(ascii: "\""))
        let hex: StaticString = "0123456789abcdef"
        for i in stride(from: 60, through: 0, by: -4) { r.bytes.append(hex.utf8Start[Int((lbCookie >> UInt64(i)) & 15)]) }
        r.bytes.append(UInt8(ascii: "\""))
        r.bytes.append(suffix)
        r.endField()
    }

    /// The hash of `v`'s 16 lowercase hex digits, as the cookie's value hashes when it comes back.
    static func hexHash(_ v: UInt64) -> UInt64 {
        let hex: StaticString = "0123456789abcdef"
        var h = LBHash.seed
        for i in stride(from: 60, through: 0, by: -4) {
            var d = hex.utf8Start[Int((v >> UInt64(i)) & 15)]
            h = LBHash.add(h, &d, 1)
        }
        return h
    }

    /// The hash of cookie `name`'s value (surrounding quotes removed) in the request's `cookie`
    /// fields (HTTP/2 may split them), nil when no field carries it.
    static func cookieHash(_ r: MessageHead, _ name: UnsafePointer<UInt8>, _ nl: Int) -> UInt64? {
        let cookie: StaticString = "cookie"
        for f in r.fields where f.name.length == 6 && ASCII.equalsLowerBytes(r.pointer(f.name), 6, cookie.utf8Start) {
            let v = r.pointer(f.value)
            let n = Int(f.value.length)
            var i = 0
            while i < n {
                while i < n && (v[i] == UInt8(ascii: " ") || v[i] == UInt8(ascii: ";")) { i += 1 }
                let start = i
                while i < n && v[i] != UInt8(ascii: ";") { i += 1 }
                // One pair: start..<i, "name=value".
                let pairLen = i - start
                if pairLen > nl && v[start + nl] == UInt8(ascii: "=") && memcmpBytes(v + start, name, nl) {
                    var vs = start + nl + 1
                    var ve = i
                    while ve > vs && v[ve - 1] == UInt8(ascii: " ") { ve -= 1 }
                    if ve - vs >= 2 && v[vs] == UInt8(ascii: "\"") && v[ve - 1] == UInt8(ascii: "\"") { vs += 1; ve -= 1 }
                    return LBHash.bytes(v + vs, ve - vs)
                }
            }
        }
        return nil
    }

    /// The hash of query parameter `name`'s value (the first one; not percent-decoded, as
    /// Envoy), nil when the path has none.
    static func queryHash(_ p: UnsafePointer<UInt8>, _ n: Int, _ name: UnsafePointer<UInt8>, _ nl: Int) -> UInt64? {
        var i = 0
        while i < n && p[i] != UInt8(ascii: "?") { i += 1 }
        i += 1
        while i < n {
            let start = i
            while i < n && p[i] != UInt8(ascii: "&") && p[i] != UInt8(ascii: "#") { i += 1 }
            let len = i - start
            if len >= nl && memcmpBytes(p + start, name, nl) && (len == nl || p[start + nl] == UInt8(ascii: "=")) {
                let vs = len == nl ? start + nl : start + nl + 1
                return LBHash.bytes(p + vs, i - vs)
            }
            if i < n && p[i] == UInt8(ascii: "#") { break }
            i += 1
        }
        return nil
    }

    @inline(__always) static func memcmpBytes(_ a: UnsafePointer<UInt8>, _ b: UnsafePointer<UInt8>, _ n: Int) -> Bool {
        for k in 0..<n where a[k] != b[k] { return false }
        return true
    }
}
