import XCTest
@testable import MeshDNS

/// The client side of the codec (ServiceEntry `resolution: DNS`): answers that must not give
/// addresses first (another query's, an error, truncated, malformed), then the addresses and
/// the TTL of good ones.
final class DNSLookupTests: XCTestCase {
    func answer(to q: [UInt8], id: UInt16? = nil, flags: UInt16 = 0x8180, records: [[UInt8]]) -> [UInt8] {
        var h = Msg.header(id: id ?? (UInt16(q[0]) << 8 | UInt16(q[1])), flags: flags, an: UInt16(records.count))
        h += q[12...]
        return h + records.flatMap { $0 }
    }

    func record(type: UInt16, ttl: UInt32, data: [UInt8], name: [UInt8] = [0xC0, 0x0C]) -> [UInt8] {
        name + [UInt8(type >> 8), UInt8(type & 0xFF), 0, 1,
                UInt8(ttl >> 24), UInt8((ttl >> 16) & 0xFF), UInt8((ttl >> 8) & 0xFF), UInt8(ttl & 0xFF),
                UInt8(data.count >> 8), UInt8(data.count & 0xFF)] + data
    }

    func read(_ r: [UInt8], _ q: [UInt8], _ type: UInt16 = DNSType.a) -> Result<(addresses: [[UInt8]], ttl: UInt32), DNSLookup.Failure> {
        r.withUnsafeBytes { rb in q.withUnsafeBytes { qb in DNSLookup.addresses(rb, query: qb, type: type) } }
    }

    func failure(_ r: Result<(addresses: [[UInt8]], ttl: UInt32), DNSLookup.Failure>) -> DNSLookup.Failure? {
        if case .failure(let f) = r { return f }
        return nil
    }

    func testAnswersThatGiveNoAddresses() {
        let q = DNSLookup.query(name: "api.example.com", type: DNSType.a, id: 0x4242)!
        let a = record(type: DNSType.a, ttl: 30, data: [10, 0, 0, 1])
        // Another query's answer (ID), a query rather than an answer, another name.
        XCTAssertEqual(failure(read(answer(to: q, id: 0x4243, records: [a]), q)), .notAnAnswer)
        XCTAssertEqual(failure(read(answer(to: q, flags: 0x0100, records: [a]), q)), .notAnAnswer)
        let other = DNSLookup.query(name: "api.example.org", type: DNSType.a, id: 0x4242)!
        XCTAssertEqual(failure(read(answer(to: other, records: [a]), q)), .notAnAnswer)
        // The server's errors, and a truncated answer (TC) are not an empty address set.
        XCTAssertEqual(failure(read(answer(to: q, flags: 0x8183, records: []), q)), .rcode(3))
        XCTAssertEqual(failure(read(answer(to: q, flags: 0x8182, records: []), q)), .rcode(2))
        XCTAssertEqual(failure(read(answer(to: q, flags: 0x8380, records: [a]), q)), .truncated)
        // Malformed: an A record of 5 bytes, an rdlength past the end, a pointer forward, a record cut short.
        XCTAssertEqual(failure(read(answer(to: q, records: [record(type: DNSType.a, ttl: 30, data: [1, 2, 3, 4, 5])]), q)), .malformed(.truncated))
        var long = answer(to: q, records: [a])
        long[long.count - 5] = 0x40
        XCTAssertEqual(failure(read(long, q)), .malformed(.truncated))
        XCTAssertEqual(failure(read(answer(to: q, records: [record(type: DNSType.a, ttl: 30, data: [1, 2, 3, 4], name: [0xC0, 0xFF])]), q)), .malformed(.pointerLoop))
        XCTAssertEqual(failure(read(Array(answer(to: q, records: [a]).dropLast(6)), q)), .malformed(.truncated))
        // A name DNS cannot carry is never sent.
        XCTAssertNil(DNSLookup.query(name: String(repeating: "a", count: 64) + ".example.com", type: DNSType.a, id: 1))
        XCTAssertNil(DNSLookup.query(name: "a..example.com", type: DNSType.a, id: 1))
    }

    func testQueryAndAddresses() throws {
        let q = DNSLookup.query(name: "api.example.com", type: DNSType.a, id: 0x4242)!
        XCTAssertEqual(q, Msg.header(id: 0x4242) + Msg.question("api.example.com"))
        // A CNAME first (skipped), two addresses in answer order, the lowest TTL.
        let cname = record(type: 5, ttl: 300, data: Msg.name("lb.example.com"))
        let r = answer(to: q, records: [cname, record(type: DNSType.a, ttl: 30, data: [10, 0, 0, 2]),
                                        record(type: DNSType.a, ttl: 7, data: [10, 0, 0, 1])])
        let got = try read(r, q).get()
        XCTAssertEqual(got.addresses, [[10, 0, 0, 2], [10, 0, 0, 1]])
        XCTAssertEqual(got.ttl, 7)
        // NOERROR without records: no address (NODATA), not a failure.
        XCTAssertEqual(try read(answer(to: q, records: []), q).get().addresses, [])
        // AAAA, and a TTL with the top bit set read as 0 (RFC 2181).
        let q6 = DNSLookup.query(name: "api.example.com", type: DNSType.aaaa, id: 7)!
        let v6 = [UInt8](repeating: 0, count: 15) + [1]
        let got6 = try read(answer(to: q6, records: [record(type: DNSType.aaaa, ttl: 0x8000_0001, data: v6)]), q6, DNSType.aaaa).get()
        XCTAssertEqual(got6.addresses, [v6])
        XCTAssertEqual(got6.ttl, 0)
    }
}
