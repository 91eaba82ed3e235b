// Fuzz target: the DNS message codec (MeshDNS/DNSMessage.swift), as the sidecar's DNS port reads
// queries from any local process and answers from upstream nameservers.
//
// Input layout: byte 0 is a mode.
//   - mode even: the rest is a query (a UDP datagram, or one TCP message) given to
//     `DNSMessage.parseQuery`. An accepted query must be one question whose name is within the
//     limits and reads back the same when written again; the answer the sidecar would write
//     (two addresses, with the query's EDNS) must have the exact expected length, pass the
//     forwarder's own answer check, and echo the question byte for byte. A refusal must be
//     answerable (FORMERR, NOTIMP) exactly when the header was there and was a query's.
//   - mode odd: byte 1 picks an offset and the rest is a message: `readName` with compression
//     pointers from that offset must end (no loop), stay within 255 wire bytes, and only ever
//     return an offset inside the message; `isAnswer` against a fixed query must never accept a
//     message without the query's ID.
import CFuzzDriver
import MeshDNS

/// Stops the process the way libFuzzer notices (a crash), naming the broken invariant.
func check(_ ok: @autoclosure () -> Bool, _ what: String) {
    if !ok() { fatalError("FuzzDNS invariant: \(what)") }
}

/// Reused buffers (libFuzzer calls the target on one thread).
nonisolated(unsafe) var name: [UInt8] = []
nonisolated(unsafe) var again: [UInt8] = []
nonisolated(unsafe) var out: [UInt8] = []
let fixedQuery: [UInt8] = [0xAB, 0xCD, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7] + Array("example".utf8) + [4] + Array("test".utf8) + [0, 0, 1, 0, 1]

/// The wire form of a dotted lowercase name (what the parser gave back).
func wire(_ n: ArraySlice<UInt8>) -> [UInt8] {
    if n.isEmpty { return [0] }
    var o: [UInt8] = []
    for l in n.split(separator: 0x2E, omittingEmptySubsequences: false) { o.append(UInt8(l.count)); o += l }
    return o + [0]
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDNS(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size >= 1 else { return 0 }
    if data[0] & 1 == 0 {
        let m = UnsafeRawBufferPointer(start: data + 1, count: size - 1)
        switch DNSMessage.parseQuery(m, name: &name) {
        case .failure(let e):
            switch e {
            case .tooShort: check(m.count < 12, "tooShort with a whole header")
            case .notAQuery: check(m[2] & 0x80 != 0, "notAQuery without QR")
            default: check(m.count >= 12 && e.rcode != nil, "a refusal with a header and no answer")
            }
        case .success(let q):
            check(m.count >= 12 && m[2] & 0x80 == 0 && (m[2] >> 3) & 0xF == 0, "accepted a non-query")
            check(m[4] == 0 && m[5] == 1, "accepted qdcount != 1")
            check(q.nameLength == name.count && q.nameLength <= 253, "name length \(q.nameLength)")
            check(q.questionEnd <= m.count, "question past the end")
            check(!name.contains { $0 >= 0x41 && $0 <= 0x5A }, "name not lowercased")
            if q.plainName {
                // The name read back from its own wire form is the same name.
                let w = wire(name[...])
                check(w.count + 4 + 12 == q.questionEnd, "wire length \(w.count) vs question end \(q.questionEnd)")
                var plain = true
                let r = w.withUnsafeBytes { DNSMessage.readName($0, at: 0, allowPointers: false, into: &again, plain: &plain) }
                check(r == .success(w.count) && again == name && plain, "name does not read back")
            }
            let addrs: [UInt8] = [240, 240, 1, 2, 192, 0, 2, 7]
            addrs.withUnsafeBytes { a in
                DNSMessage.writeAnswer(q, query: m, rcode: 0, type: DNSType.a, addresses: a, size: 4, ttl: 30, into: &out)
            }
            check(out.count == q.questionEnd + 2 * 16 + (q.edns != nil ? 11 : 0), "answer length \(out.count)")
            check(Array(out[12..<q.questionEnd]) == Array(m[12..<q.questionEnd]), "question not echoed")
            check(out.withUnsafeBytes { DNSMessage.isAnswer($0, to: m, questionEnd: q.questionEnd) }, "own answer refused")
        }
    } else {
        guard size >= 2 else { return 0 }
        let m = UnsafeRawBufferPointer(start: data + 2, count: size - 2)
        let at = Int(data[1]) % max(1, m.count)
        var plain = true
        if case .success(let end) = DNSMessage.readName(m, at: at, allowPointers: true, into: &name, plain: &plain) {
            check(end > at && end <= m.count, "name end \(end) outside the message")
            check(name.count <= 254, "name of \(name.count) bytes")
        }
        let ok = fixedQuery.withUnsafeBytes { DNSMessage.isAnswer(m, to: $0, questionEnd: fixedQuery.count) }
        if ok { check(m.count >= 12 && m[0] == 0xAB && m[1] == 0xCD && m[2] & 0x80 != 0, "an answer without the query's ID accepted") }
    }
    return 0
}

@_cdecl("FuzzDNS_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> Int32 {
    mesh_fuzz_main(argc, argv)
}
