/// The server name (SNI) of a TLS ClientHello, read from the first bytes a client sends (RFC 8446
/// §4.1.2, RFC 6066 §3) without terminating TLS: what a gateway's PASSTHROUGH server routes by.
/// The input is hostile: every length is checked against what encloses it, nothing is read past
/// `n`, and the whole ClientHello must sit in the first record and within `limit` bytes (a larger
/// one is refused, not waited for). No allocation; the answer is a range into the input.
enum TLSClientHello {
    enum Result {
        /// Not all of the ClientHello yet: peek again when more has arrived.
        case needMore
        /// The host_name of the server_name extension: `p[offset..<offset+length]`.
        case serverName(offset: Int, length: Int)
        /// A well-formed ClientHello without a server name.
        case noServerName
        /// Not a TLS ClientHello, or malformed: the reason, for the log.
        case invalid(StaticString)
    }

    /// The largest ClientHello record accepted (header included): 8 KiB + 5 by default.
    static let defaultLimit = 8 * 1024 + 5

    static func parse(_ p: UnsafeRawBufferPointer, limit: Int = defaultLimit) -> Result {
        let n = p.count
        if n < 5 { return n > 0 && p[0] != 0x16 ? .invalid("not a TLS handshake record") : .needMore }
        guard p[0] == 0x16 else { return .invalid("not a TLS handshake record") }
        guard p[1] == 3 else { return .invalid("not a TLS record version") }
        let recordLength = Int(p[3]) << 8 | Int(p[4])
        guard recordLength >= 4 else { return .invalid("record too short for a handshake message") }
        guard recordLength <= 16384 else { return .invalid("record longer than TLS allows") }
        guard 5 + recordLength <= limit else { return .invalid("ClientHello larger than the limit") }
        if n < 5 + recordLength { return .needMore }
        var r = Reader(p: p, at: 5, end: 5 + recordLength)
        guard let type = r.u8(), type == 1 else { return .invalid("first handshake message is not a ClientHello") }
        guard let bodyLength = r.u24() else { return .invalid("truncated handshake header") }
        guard bodyLength <= r.left else { return .invalid("ClientHello split over records") }
        r.end = r.at + bodyLength
        guard r.skip(2 + 32) else { return .invalid("truncated ClientHello version or random") }
        guard let sid = r.u8(), sid <= 32, r.skip(sid) else { return .invalid("bad session id") }
        guard let cs = r.u16(), cs >= 2, cs % 2 == 0, r.skip(cs) else { return .invalid("bad cipher suites") }
        guard let comp = r.u8(), comp >= 1, r.skip(comp) else { return .invalid("bad compression methods") }
        if r.left == 0 { return .noServerName }   // no extensions at all
        guard let extLength = r.u16(), extLength == r.left else { return .invalid("bad extensions length") }
        var found: Result = .noServerName
        var sawSNI = false
        while r.left > 0 {
            guard let t = r.u16(), let len = r.u16(), len <= r.left else { return .invalid("truncated extension") }
            let start = r.at
            if t == 0 {
                if sawSNI { return .invalid("server_name extension given twice") }
                sawSNI = true
                var e = Reader(p: p, at: start, end: start + len)
                guard let listLength = e.u16(), listLength == e.left, listLength > 0 else { return .invalid("bad server_name list") }
                while e.left > 0 {
                    guard let nameType = e.u8(), let nameLength = e.u16(), nameLength <= e.left else { return .invalid("truncated server name") }
                    if nameType == 0 {
                        if case .serverName = found { return .invalid("two host names in server_name") }
                        guard nameLength > 0, nameLength <= 255 else { return .invalid("bad host name length") }
                        for i in e.at..<(e.at + nameLength) {
                            let c = p[i]
                            // RFC 6066: a DNS host name in ASCII, no trailing dot.
                            let ok = (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c == 0x2d || c == 0x2e || c == 0x5f
                            if !ok { return .invalid("host name with a byte a DNS name cannot hold") }
                        }
                        found = .serverName(offset: e.at, length: nameLength)
                    }
                    _ = e.skip(nameLength)
                }
            }
            _ = r.skip(len)
        }
        return found
    }

    /// A cursor over `p[at..<end]`; every read checks what is left.
    private struct Reader {
        let p: UnsafeRawBufferPointer
        var at: Int
        var end: Int
        var left: Int { end - at }
        mutating func u8() -> Int? { guard left >= 1 else { return nil }; defer { at += 1 }; return Int(p[at]) }
        mutating func u16() -> Int? { guard left >= 2 else { return nil }; defer { at += 2 }; return Int(p[at]) << 8 | Int(p[at + 1]) }
        mutating func u24() -> Int? {
            guard left >= 3 else { return nil }
            defer { at += 3 }
            return Int(p[at]) << 16 | Int(p[at + 1]) << 8 | Int(p[at + 2])
        }
        mutating func skip(_ k: Int) -> Bool { guard k >= 0, left >= k else { return false }; at += k; return true }
    }
}
