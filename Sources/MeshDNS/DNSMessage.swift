// The DNS messages the sidecar's DNS port reads and writes (RFC 1035 §4, RFC 6891 for EDNS).
// Input is hostile: every length is checked against the message before it is used, names are
// bounded (63-byte labels, 255 bytes on the wire), and a query has exactly the shape a stub
// resolver sends: one question, no answer or authority records, at most one OPT record.
// Pure: no sockets, no Foundation; the caller owns the buffers (reused between queries).

/// Record types and classes the mesh's DNS deals with.
public enum DNSType {
    public static let a: UInt16 = 1
    public static let aaaa: UInt16 = 28
    public static let opt: UInt16 = 41
    public static let classIN: UInt16 = 1
}

/// Response codes (RFC 1035 §4.1.1; BADVERS is the extended code 16 of RFC 6891).
public enum DNSRcode {
    public static let noError: UInt8 = 0
    public static let formErr: UInt8 = 1
    public static let servFail: UInt8 = 2
    public static let nxDomain: UInt8 = 3
    public static let notImp: UInt8 = 4
    public static let badVers: UInt16 = 16
}

/// Why a message is not a query the sidecar answers. `rcode` says how to answer it: FORMERR
/// or NOTIMP when the header could be read, nil (drop it) when there is no header to answer
/// or the message is itself a response (answering responses would let two servers bounce
/// packets between them forever).
public enum DNSQueryError: Error, Equatable, Sendable {
    case tooShort
    case notAQuery
    case opcode(UInt8)
    case questionCount(Int)
    case answerOrAuthority
    case labelTooLong
    case nameTooLong
    case pointerInQuestion
    case pointerLoop
    case truncated
    case trailingBytes
    case unexpectedAdditional
    case badOPT

    public var rcode: UInt8? {
        switch self {
        case .tooShort, .notAQuery: return nil
        case .opcode: return DNSRcode.notImp
        default: return DNSRcode.formErr
        }
    }
}

/// EDNS as a query's OPT record states it (RFC 6891 §6.1.2-6.1.3).
public struct DNSEDNS: Equatable, Sendable {
    /// The requestor's UDP payload size (values below 512 mean 512).
    public var udpSize: UInt16
    public var version: UInt8
    public var dnssecOK: Bool
}

/// A parsed query. The name is in the caller's buffer: lowercase ASCII labels joined by dots,
/// no trailing dot (empty for the root).
public struct DNSQuery: Equatable, Sendable {
    public var id: UInt16
    /// The header's flag word as received (RD is bit 8).
    public var flags: UInt16
    public var qtype: UInt16
    public var qclass: UInt16
    /// Bytes of the name in the caller's buffer.
    public var nameLength: Int
    /// False when a label holds a byte that would make the dotted form ambiguous (a dot, a
    /// control or non-ASCII byte): such a name is never a mesh name, it is only forwarded.
    public var plainName: Bool
    /// The offset just past the question (where the answer section starts).
    public var questionEnd: Int
    public var edns: DNSEDNS?

    public var recursionDesired: Bool { flags & 0x0100 != 0 }

    public init(id: UInt16 = 0, flags: UInt16 = 0, qtype: UInt16 = 0, qclass: UInt16 = 0, nameLength: Int = 0, plainName: Bool = false,
                questionEnd: Int = 12, edns: DNSEDNS? = nil) {
        self.id = id; self.flags = flags; self.qtype = qtype; self.qclass = qclass; self.nameLength = nameLength
        self.plainName = plainName; self.questionEnd = questionEnd; self.edns = edns
    }
}

/// Reading and writing DNS messages.
public enum DNSMessage {
    /// The largest name on the wire (RFC 1035 §2.3.4).
    public static let maxNameWire = 255
    /// The UDP payload size this server states in its own OPT records (the DNS flag day 2020 value).
    public static let ourUDPSize: UInt16 = 1232

    @inline(__always) static func u16(_ m: UnsafeRawBufferPointer, _ i: Int) -> UInt16 { UInt16(m[i]) << 8 | UInt16(m[i + 1]) }

    /// Parses a query (a whole UDP datagram, or one TCP message without its length prefix).
    /// `name` receives the question's name (its old contents are replaced; capacity is kept).
    public static func parseQuery(_ m: UnsafeRawBufferPointer, name: inout [UInt8]) -> Result<DNSQuery, DNSQueryError> {
        guard m.count >= 12 else { return .failure(.tooShort) }
        let flags = u16(m, 2)
        if flags & 0x8000 != 0 { return .failure(.notAQuery) }
        let opcode = UInt8((flags >> 11) & 0xF)
        if opcode != 0 { return .failure(.opcode(opcode)) }
        let qd = Int(u16(m, 4)), an = u16(m, 6), ns = u16(m, 8), ar = Int(u16(m, 10))
        if qd != 1 { return .failure(.questionCount(qd)) }
        if an != 0 || ns != 0 { return .failure(.answerOrAuthority) }
        var plain = true
        let end: Int
        switch readName(m, at: 12, allowPointers: false, into: &name, plain: &plain) {
        case .failure(let e): return .failure(e)
        case .success(let e): end = e
        }
        guard end + 4 <= m.count else { return .failure(.truncated) }
        var q = DNSQuery(id: u16(m, 0), flags: flags, qtype: u16(m, end), qclass: u16(m, end + 2), nameLength: name.count,
                         plainName: plain, questionEnd: end + 4, edns: nil)
        var at = end + 4
        if ar > 1 { return .failure(.unexpectedAdditional) }
        if ar == 1 {
            // The OPT pseudo-record: root owner name, type 41, CLASS = UDP size, TTL = extended
            // rcode, version and flags, RDATA = options (skipped, bounded by RDLENGTH).
            var scratch: [UInt8] = []
            var p = true
            switch readName(m, at: at, allowPointers: true, into: &scratch, plain: &p) {
            case .failure(let e): return .failure(e)
            case .success(let e): at = e
            }
            guard at + 10 <= m.count else { return .failure(.truncated) }
            guard u16(m, at) == DNSType.opt else { return .failure(.unexpectedAdditional) }
            guard scratch.isEmpty else { return .failure(.badOPT) }
            let rdlen = Int(u16(m, at + 8))
            guard at + 10 + rdlen <= m.count else { return .failure(.truncated) }
            // Options are TLVs that must fill RDATA exactly.
            var o = at + 10
            while o < at + 10 + rdlen {
                guard o + 4 <= at + 10 + rdlen else { return .failure(.badOPT) }
                o += 4 + Int(u16(m, o + 2))
                guard o <= at + 10 + rdlen else { return .failure(.badOPT) }
            }
            q.edns = DNSEDNS(udpSize: max(512, u16(m, at + 2)), version: m[at + 5], dnssecOK: m[at + 6] & 0x80 != 0)
            at += 10 + rdlen
        }
        if at != m.count { return .failure(.trailingBytes) }
        return .success(q)
    }

    /// Reads a name at `at` into `name` (lowercase, dotted, no trailing dot); returns the offset
    /// just past it in the message. With `allowPointers`, a compression pointer must point to an
    /// earlier offset than the one it is read at (so a chain always ends) and at most 127 are
    /// followed; without, any pointer is an error (the question of a query has nothing before it
    /// to point to). A length byte above 63 is refused.
    public static func readName(_ m: UnsafeRawBufferPointer, at start: Int, allowPointers: Bool,
                                into name: inout [UInt8], plain: inout Bool) -> Result<Int, DNSQueryError> {
        name.removeAll(keepingCapacity: true)
        var i = start
        var end = -1          // where the name ends in the message (after the first pointer)
        var wire = 0          // bytes of the name as it would be written uncompressed
        var hops = 0
        var lowest = start    // a pointer must go below every place read so far
        while true {
            guard i < m.count else { return .failure(.truncated) }
            let len = Int(m[i])
            switch len & 0xC0 {
            case 0xC0:
                guard allowPointers else { return .failure(.pointerInQuestion) }
                guard i + 1 < m.count else { return .failure(.truncated) }
                let target = (len & 0x3F) << 8 | Int(m[i + 1])
                hops += 1
                guard target < lowest, hops <= 127 else { return .failure(.pointerLoop) }
                if end < 0 { end = i + 2 }
                lowest = target
                i = target
                continue
            case 0x40, 0x80:
                // A length byte of 64...191: no label is longer than 63 bytes, and the label
                // types 01 and 10 are reserved (RFC 6891 §5 retired the extended ones).
                return .failure(.labelTooLong)
            default:
                break
            }
            wire += 1 + len
            if wire > maxNameWire { return .failure(.nameTooLong) }
            if len == 0 {
                return .success(end < 0 ? i + 1 : end)
            }
            guard i + 1 + len <= m.count else { return .failure(.truncated) }
            if !name.isEmpty { name.append(0x2E) }
            for k in (i + 1)...(i + len) {
                var c = m[k]
                if c >= 0x41 && c <= 0x5A { c |= 0x20 }
                if c == 0x2E || c <= 0x20 || c >= 0x7F { plain = false }
                name.append(c)
            }
            i += 1 + len
        }
    }

    @inline(__always) static func put16(_ o: inout [UInt8], _ v: UInt16) { o.append(UInt8(v >> 8)); o.append(UInt8(v & 0xFF)) }

    /// An answer to `q` (read from `query`) into `out` (cleared first): the header with the
    /// query's ID, QR, AA and RA set and RD copied, the question exactly as asked (the client's
    /// letter case kept), one record of `type` per address in `addresses` (`size` bytes each:
    /// 4 for A, 16 for AAAA; none makes NODATA), and an OPT record when the query had one.
    /// `rcode` above 15 goes into the OPT record's extended bits (BADVERS).
    public static func writeAnswer(_ q: DNSQuery, query: UnsafeRawBufferPointer, rcode: UInt16, type: UInt16,
                                   addresses: UnsafeRawBufferPointer, size: Int, ttl: UInt32, into out: inout [UInt8]) {
        out.removeAll(keepingCapacity: true)
        let n = size > 0 ? addresses.count / size : 0
        put16(&out, q.id)
        put16(&out, 0x8000 | 0x0400 | (q.flags & 0x0100) | 0x0080 | (rcode & 0xF))
        put16(&out, 1)
        put16(&out, UInt16(n))
        put16(&out, 0)
        put16(&out, q.edns != nil ? 1 : 0)
        for k in 12..<q.questionEnd { out.append(query[k]) }
        for a in 0..<n {
            put16(&out, 0xC00C)          // the question's name
            put16(&out, type)
            put16(&out, DNSType.classIN)
            put16(&out, UInt16(ttl >> 16))
            put16(&out, UInt16(ttl & 0xFFFF))
            put16(&out, UInt16(size))
            for k in 0..<size { out.append(addresses[a * size + k]) }
        }
        if q.edns != nil {
            out.append(0)
            put16(&out, DNSType.opt)
            put16(&out, ourUDPSize)
            out.append(UInt8(truncatingIfNeeded: rcode >> 4))
            out.append(0)                // version 0
            put16(&out, 0)
            put16(&out, 0)
        }
    }

    /// A bare error answer (FORMERR, NOTIMP) to a message whose header could be read but whose
    /// question is not trusted: the header only, the question not echoed, RD copied.
    public static func writeHeaderOnly(id: UInt16, flags: UInt16, rcode: UInt8, into out: inout [UInt8]) {
        out.removeAll(keepingCapacity: true)
        put16(&out, id)
        put16(&out, 0x8000 | (flags & 0x7900) | 0x0080 | UInt16(rcode & 0xF))
        for _ in 0..<4 { put16(&out, 0) }
    }

    /// Whether `r` is the answer to `query` (as sent upstream, `questionEnd` bytes of it
    /// checked): a response with the same ID whose question is the same name (letter case
    /// aside), type and class. An answer without a question is accepted only when it is an
    /// error (some servers send FORMERR that way). Everything else is dropped, so a stray or
    /// forged datagram is never relayed to a client.
    public static func isAnswer(_ r: UnsafeRawBufferPointer, to query: UnsafeRawBufferPointer, questionEnd: Int) -> Bool {
        guard r.count >= 12, query.count >= questionEnd, questionEnd >= 12 else { return false }
        guard r[0] == query[0], r[1] == query[1], r[2] & 0x80 != 0 else { return false }
        let qd = u16(r, 4)
        if qd == 0 { return r[3] & 0x0F != 0 }
        guard qd == 1, r.count >= questionEnd else { return false }
        for k in 12..<questionEnd {
            var a = r[k], b = query[k]
            if a >= 0x41 && a <= 0x5A { a |= 0x20 }
            if b >= 0x41 && b <= 0x5A { b |= 0x20 }
            if a != b { return false }
        }
        return true
    }
}
