import XCTest
@testable import MeshDNS

/// Builds DNS messages for the tests (and the hostile cases the e2e test sends as UDP).
enum Msg {
    static func header(id: UInt16 = 0x1234, flags: UInt16 = 0x0100, qd: UInt16 = 1, an: UInt16 = 0, ns: UInt16 = 0, ar: UInt16 = 0) -> [UInt8] {
        [id, flags, qd, an, ns, ar].flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }
    }
    static func name(_ n: String) -> [UInt8] {
        var o: [UInt8] = []
        for l in n.split(separator: ".") { o.append(UInt8(l.utf8.count)); o += Array(l.utf8) }
        return o + [0]
    }
    static func question(_ n: String, type: UInt16 = 1, cls: UInt16 = 1) -> [UInt8] {
        name(n) + [UInt8(type >> 8), UInt8(type & 0xFF), UInt8(cls >> 8), UInt8(cls & 0xFF)]
    }
    static func opt(size: UInt16 = 4096, version: UInt8 = 0, options: [UInt8] = []) -> [UInt8] {
        [0, 0, 41, UInt8(size >> 8), UInt8(size & 0xFF), 0, version, 0x80, 0, UInt8(options.count >> 8), UInt8(options.count & 0xFF)] + options
    }
    static func query(_ n: String, type: UInt16 = 1, id: UInt16 = 0x1234) -> [UInt8] { header(id: id) + question(n, type: type) }
}

/// The codec's negative cases first: every malformed query is refused with the reason (and
/// the answer it gets: FORMERR, NOTIMP, or dropped), before the well-formed ones are read.
final class DNSMessageTests: XCTestCase {
    var nameBuf: [UInt8] = []

    func parse(_ b: [UInt8]) -> Result<DNSQuery, DNSQueryError> {
        b.withUnsafeBytes { DNSMessage.parseQuery($0, name: &nameBuf) }
    }
    func refused(_ b: [UInt8], _ e: DNSQueryError, line: UInt = #line) {
        guard case .failure(let got) = parse(b) else { return XCTFail("accepted", line: line) }
        XCTAssertEqual(got, e, line: line)
    }

    func testTruncatedHeaderIsDroppedUnanswered() {
        for n in 0..<12 { refused(Array(Msg.query("a.b").prefix(n)), .tooShort) }
        XCTAssertNil(DNSQueryError.tooShort.rcode)
    }

    func testAResponseIsNeverAnswered() {
        refused(Msg.header(flags: 0x8100) + Msg.question("a.b"), .notAQuery)
        XCTAssertNil(DNSQueryError.notAQuery.rcode)
    }

    func testOtherOpcodesAreNotImplemented() {
        refused(Msg.header(flags: 0x2800) + Msg.question("a.b"), .opcode(5))   // UPDATE
        XCTAssertEqual(DNSQueryError.opcode(5).rcode, DNSRcode.notImp)
    }

    func testQuestionCountOtherThanOneIsFormErr() {
        refused(Msg.header(qd: 0), .questionCount(0))
        refused(Msg.header(qd: 2) + Msg.question("a.b") + Msg.question("c.d"), .questionCount(2))
        refused(Msg.header(qd: 0xFFFF) + Msg.question("a.b"), .questionCount(65535))
        XCTAssertEqual(DNSQueryError.questionCount(2).rcode, DNSRcode.formErr)
    }

    func testAnswerOrAuthorityRecordsInAQueryAreFormErr() {
        refused(Msg.header(an: 1) + Msg.question("a.b"), .answerOrAuthority)
        refused(Msg.header(ns: 1) + Msg.question("a.b"), .answerOrAuthority)
    }

    func testLabelLongerThan63IsRefused() {
        let l64 = String(repeating: "a", count: 64)
        refused(Msg.header() + [64] + Array(l64.utf8) + [0, 0, 1, 0, 1], .labelTooLong)
        // 63 is fine.
        guard case .success = parse(Msg.query(String(repeating: "a", count: 63) + ".b")) else { return XCTFail() }
    }

    func testReservedLabelTypesAreRefusedAsOverlongLabels() {
        refused(Msg.header() + [0x41, 0x00], .labelTooLong)   // 01xxxxxx: EDNS0 extended label
        refused(Msg.header() + [0xBF] + [UInt8](repeating: 0x61, count: 191) + [0, 0, 1, 0, 1], .labelTooLong)
    }

    func testNameLongerThan255IsRefused() {
        let l = String(repeating: "a", count: 63)
        // 4 x (1 + 63) + 1 = 257 bytes on the wire.
        refused(Msg.query([l, l, l, l].joined(separator: ".")), .nameTooLong)
        // 3 x 64 + (1 + 61) + 1 = 255: the longest name is fine.
        guard case .success(let q) = parse(Msg.query([l, l, l, String(repeating: "b", count: 61)].joined(separator: "."))) else { return XCTFail() }
        XCTAssertEqual(q.nameLength, 253)
    }

    func testCompressionPointerInTheQuestionIsRefused() {
        refused(Msg.header() + [0xC0, 0x0C, 0, 1, 0, 1], .pointerInQuestion)
        refused(Msg.header() + [1, 0x61, 0xC0, 0x00, 0, 1, 0, 1], .pointerInQuestion)
    }

    func testPointerLoopsEndInAnError() {
        // In the OPT record's owner name (where pointers are read): to itself, and two that
        // point at each other.
        let q = Msg.header(ar: 1) + Msg.question("a.b")
        let at = q.count
        refused(q + [0xC0 | UInt8(at >> 8), UInt8(at & 0xFF)] + Array(Msg.opt().dropFirst()), .pointerLoop)
        var m = [UInt8](repeating: 0, count: 16)
        m[12] = 0xC0; m[13] = 14; m[14] = 0xC0; m[15] = 12
        var p = true
        let r = m.withUnsafeBytes { DNSMessage.readName($0, at: 12, allowPointers: true, into: &nameBuf, plain: &p) }
        XCTAssertEqual(r, .failure(.pointerLoop))
        // A forward pointer is refused too: every pointer must go back.
        m[12] = 0xC0; m[13] = 14; m[14] = 0
        let f = m.withUnsafeBytes { DNSMessage.readName($0, at: 12, allowPointers: true, into: &nameBuf, plain: &p) }
        XCTAssertEqual(f, .failure(.pointerLoop))
        // A long backward chain stops at 127 hops.
        var chain = [UInt8](repeating: 0, count: 12)
        chain += [1, 0x61, 0]
        for k in 0..<200 { let target = k == 0 ? 12 : 15 + (k - 1) * 2; chain += [0xC0 | UInt8(target >> 8), UInt8(target & 0xFF)] }
        let c = chain.withUnsafeBytes { DNSMessage.readName($0, at: chain.count - 2, allowPointers: true, into: &nameBuf, plain: &p) }
        XCTAssertEqual(c, .failure(.pointerLoop))
    }

    func testTruncatedQuestionIsRefused() {
        let full = Msg.query("reviews.default")
        for n in 12..<full.count { refused(Array(full.prefix(n)), .truncated) }
    }

    func testTrailingGarbageIsRefused() {
        refused(Msg.query("a.b") + [0], .trailingBytes)
        refused(Msg.header(ar: 1) + Msg.question("a.b") + Msg.opt() + [1, 2, 3], .trailingBytes)
    }

    func testAdditionalRecordsOtherThanOneOPTAreRefused() {
        refused(Msg.header(ar: 2) + Msg.question("a.b") + Msg.opt() + Msg.opt(), .unexpectedAdditional)
        // An A record in the additional section.
        refused(Msg.header(ar: 1) + Msg.question("a.b") + [0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4], .unexpectedAdditional)
        // An OPT whose owner is not the root.
        refused(Msg.header(ar: 1) + Msg.question("a.b") + [1, 0x61] + Msg.opt(), .badOPT)
        // Options that do not fill RDATA exactly.
        refused(Msg.header(ar: 1) + Msg.question("a.b") + Msg.opt(options: [0, 10, 0, 8, 1, 2]), .badOPT)
        // RDATA past the end.
        refused(Msg.header(ar: 1) + Msg.question("a.b") + [0, 0, 41, 16, 0, 0, 0, 0, 0, 0, 9], .truncated)
    }

    // MARK: well-formed queries

    func testAQueryIsReadLowercasedWithItsEDNS() throws {
        let m = Msg.header(id: 0xBEEF, ar: 1) + Msg.question("ReViews.Default.SVC.cluster.local", type: 28) + Msg.opt(size: 1400, options: [0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8])
        let q = try parse(m).get()
        XCTAssertEqual(q.id, 0xBEEF)
        XCTAssertEqual(q.qtype, 28)
        XCTAssertEqual(q.qclass, 1)
        XCTAssertTrue(q.recursionDesired)
        XCTAssertTrue(q.plainName)
        XCTAssertEqual(String(decoding: nameBuf.prefix(q.nameLength), as: UTF8.self), "reviews.default.svc.cluster.local")
        XCTAssertEqual(q.edns, DNSEDNS(udpSize: 1400, version: 0, dnssecOK: true))
        XCTAssertEqual(q.questionEnd, 12 + Msg.question("ReViews.Default.SVC.cluster.local").count)
        // The root name, and a small UDP size read as 512.
        let r = try parse(Msg.header(ar: 1) + Msg.question("") + Msg.opt(size: 100)).get()
        XCTAssertEqual(r.nameLength, 0)
        XCTAssertEqual(r.edns?.udpSize, 512)
    }

    func testALabelWithADotIsNotAPlainName() throws {
        let m = Msg.header() + [3, 0x61, 0x2E, 0x62, 1, 0x63, 0, 0, 1, 0, 1]   // "a.b" as one label, then "c"
        let q = try parse(m).get()
        XCTAssertFalse(q.plainName)
        XCTAssertFalse(try parse(Msg.header() + [1, 0x00, 0, 0, 1, 0, 1]).get().plainName)
    }

    func testAnAnswerEchoesTheQuestionAndCarriesEachAddress() throws {
        let m = Msg.header(id: 7, ar: 1) + Msg.question("Reviews.default", type: 1) + Msg.opt()
        let q = try parse(m).get()
        var out: [UInt8] = []
        let addrs: [UInt8] = [240, 240, 1, 2, 10, 0, 0, 1]
        m.withUnsafeBytes { mq in addrs.withUnsafeBytes { a in
            DNSMessage.writeAnswer(q, query: mq, rcode: 0, type: DNSType.a, addresses: a, size: 4, ttl: 30, into: &out)
        } }
        XCTAssertEqual(Array(out[0..<12]), Msg.header(id: 7, flags: 0x8580, qd: 1, an: 2, ar: 1))
        XCTAssertEqual(Array(out[12..<q.questionEnd]), Array(m[12..<q.questionEnd]))   // the client's case kept
        var at = q.questionEnd
        for k in 0..<2 {
            XCTAssertEqual(Array(out[at..<at + 12]), [0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4])
            XCTAssertEqual(Array(out[at + 12..<at + 16]), Array(addrs[k * 4..<k * 4 + 4]))
            at += 16
        }
        XCTAssertEqual(Array(out[at...]), [0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0, 0, 0])
        // Read back by the codec's own answer check.
        XCTAssertTrue(out.withUnsafeBytes { r in m.withUnsafeBytes { DNSMessage.isAnswer(r, to: $0, questionEnd: q.questionEnd) } })
    }

    func testNoDataAndBadVersAnswers() throws {
        let m = Msg.header(id: 9, ar: 1) + Msg.question("a.b", type: 15) + Msg.opt(version: 1)
        let q = try parse(m).get()
        XCTAssertEqual(q.edns?.version, 1)
        var out: [UInt8] = []
        m.withUnsafeBytes { mq in
            DNSMessage.writeAnswer(q, query: mq, rcode: DNSRcode.badVers, type: 0, addresses: UnsafeRawBufferPointer(start: nil, count: 0), size: 0, ttl: 0, into: &out)
        }
        XCTAssertEqual(Array(out[0..<12]), Msg.header(id: 9, flags: 0x8580, qd: 1, an: 0, ar: 1))
        XCTAssertEqual(out[q.questionEnd + 5], 1)   // extended rcode 1 << 4 = 16 = BADVERS
        DNSMessage.writeHeaderOnly(id: 0x4242, flags: 0x0100, rcode: DNSRcode.formErr, into: &out)
        XCTAssertEqual(out, Msg.header(id: 0x4242, flags: 0x8181, qd: 0))
    }

    func testOnlyTheAnswerToTheQuestionSentIsRelayed() {
        let sent = Msg.query("example.test", id: 0x5151)
        let qe = sent.count
        func ok(_ r: [UInt8]) -> Bool { r.withUnsafeBytes { rr in sent.withUnsafeBytes { DNSMessage.isAnswer(rr, to: $0, questionEnd: qe) } } }
        var good = sent
        good[2] |= 0x80
        XCTAssertTrue(ok(good + [0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 192, 0, 2, 7]))
        var upper = good
        upper[13] = 0x45   // 'E': the 0x20 trick
        XCTAssertTrue(ok(upper))
        var otherID = good; otherID[1] ^= 1
        XCTAssertFalse(ok(otherID))
        XCTAssertFalse(ok(sent))                     // not a response
        var otherName = good; otherName[14] = 0x7A
        XCTAssertFalse(ok(otherName))
        var otherType = good; otherType[qe - 3] = 28
        XCTAssertFalse(ok(otherType))
        XCTAssertFalse(ok(Array(good.prefix(qe - 1))))
        XCTAssertFalse(ok(Array(good.prefix(11))))
        // No question: only an error is relayed.
        XCTAssertTrue(ok(Msg.header(id: 0x5151, flags: 0x8182, qd: 0)))
        XCTAssertFalse(ok(Msg.header(id: 0x5151, flags: 0x8180, qd: 0)))
    }
}
