/// The client side of the codec, for the sidecar's own lookups (ServiceEntry `resolution: DNS`,
/// MeshProxy's EndpointResolver): an A or AAAA query, and the addresses and TTL of its answer.
/// Control path only (a resolver thread), never a worker loop.
public enum DNSLookup {
    /// Why an answer gives no addresses: the server's error code, or a message that is not an
    /// answer to the query or cannot be read.
    public enum Failure: Error, Equatable, Sendable {
        case rcode(UInt8)
        case notAnAnswer
        case malformed(DNSQueryError)
        case truncated
    }

    /// A query for `name` (dotted, no trailing dot) of `type` with `id`, recursion desired.
    /// nil when the name cannot be written (a label over 63 bytes, the whole over 255).
    public static func query(name: String, type: UInt16, id: UInt16) -> [UInt8]? {
        var out: [UInt8] = []
        DNSMessage.put16(&out, id)
        DNSMessage.put16(&out, 0x0100)           // RD
        DNSMessage.put16(&out, 1)
        for _ in 0..<3 { DNSMessage.put16(&out, 0) }
        var wire = 1
        for label in name.utf8.split(separator: 0x2E, omittingEmptySubsequences: false) {
            guard !label.isEmpty, label.count <= 63 else { return nil }
            wire += 1 + label.count
            out.append(UInt8(label.count))
            out.append(contentsOf: label)
        }
        guard wire <= DNSMessage.maxNameWire else { return nil }
        out.append(0)
        DNSMessage.put16(&out, type)
        DNSMessage.put16(&out, DNSType.classIN)
        return out
    }

    /// The addresses (4 bytes for A, 16 for AAAA, in answer order) of `type` in the answer
    /// section of `r`, the answer to `query`, and the lowest TTL among them. Records of other
    /// types (a CNAME chain) are skipped; NOERROR with none is an empty list.
    public static func addresses(_ r: UnsafeRawBufferPointer, query: UnsafeRawBufferPointer, type: UInt16) -> Result<(addresses: [[UInt8]], ttl: UInt32), Failure> {
        let questionEnd = query.count
        guard DNSMessage.isAnswer(r, to: query, questionEnd: questionEnd) else { return .failure(.notAnAnswer) }
        if r[2] & 0x02 != 0 { return .failure(.truncated) }
        let rcode = r[3] & 0x0F
        if rcode != DNSRcode.noError { return .failure(.rcode(rcode)) }
        guard DNSMessage.u16(r, 4) == 1 else { return .failure(.notAnAnswer) }
        let an = Int(DNSMessage.u16(r, 6))
        var at = questionEnd
        var name: [UInt8] = []
        var plain = true
        var out: [[UInt8]] = []
        var ttl = UInt32.max
        let size = type == DNSType.aaaa ? 16 : 4
        for _ in 0..<an {
            switch DNSMessage.readName(r, at: at, allowPointers: true, into: &name, plain: &plain) {
            case .failure(let e): return .failure(.malformed(e))
            case .success(let next): at = next
            }
            guard at + 10 <= r.count else { return .failure(.malformed(.truncated)) }
            let rtype = DNSMessage.u16(r, at), rclass = DNSMessage.u16(r, at + 2)
            let rttl = UInt32(DNSMessage.u16(r, at + 4)) << 16 | UInt32(DNSMessage.u16(r, at + 6))
            let rdlen = Int(DNSMessage.u16(r, at + 8))
            at += 10
            guard at + rdlen <= r.count else { return .failure(.malformed(.truncated)) }
            if rtype == type && rclass == DNSType.classIN {
                guard rdlen == size else { return .failure(.malformed(.truncated)) }
                out.append(Array(r[at..<(at + rdlen)]))
                // RFC 2181 §8: a TTL with the top bit set is read as zero.
                ttl = min(ttl, rttl & 0x8000_0000 != 0 ? 0 : rttl)
            }
            at += rdlen
        }
        return .success((out, out.isEmpty ? 0 : ttl))
    }
}
