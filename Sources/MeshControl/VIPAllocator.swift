/// meshd's virtual IPs for mesh hosts (DESIGN §10 "DNS"): every registered service
/// (`name.namespace`), every host a VirtualService or DestinationRule names, and every
/// ServiceEntry host without `addresses` gets one IPv4 address from 240.240.0.0/16 (Istio's
/// auto-allocation range) and the IPv6 address derived from it. Pure: no files, no clock.
///
/// - Deterministic start: the slot is FNV-1a (32 bit) of the host folded into 1...65534, so
///   240.240.0.0 and 240.240.255.255 are never given; on a collision the next free slot is
///   probed (wrapping), skipping slots held by another host or reserved (an address a
///   ServiceEntry names in the range).
/// - Stable: a host keeps its slot for good, also when it leaves the config for a while; a
///   slot is never given to a second host. meshd persists the table (`vips.txt` in the state
///   directory) and pushes the addresses, so every sidecar answers the same.
///
/// The IPv6 form follows Istio's `setAutoAllocatedIPs` (istio/istio,
/// pilot/pkg/serviceregistry/serviceentry/auto_allocation.go): 240.240.A.B -> 2001:2::f0f0:AB
/// in the benchmarking range of RFC 5180. Istio prints `%x%x` without padding, which maps
/// 240.240.1.35 and 240.240.18.3 both to 2001:2::f0f0:123; here each octet is two hex digits
/// (2001:2::f0f0:XXYY), so each IPv4 address has exactly one IPv6 partner.
public struct VIPAllocator: Sendable, Equatable {
    /// The low 16 bits of 240.240.XX.YY per host.
    public private(set) var slots: [String: UInt16] = [:]
    private var owners: [UInt16: String] = [:]

    public init() {}

    /// Slots never given: 240.240.0.0 (the network) and 240.240.255.255 (the broadcast).
    public static func usable(_ slot: UInt16) -> Bool { slot != 0 && slot != 0xFFFF }

    /// The first slot tried for a host: FNV-1a of its bytes, folded into 1...65534.
    public static func startSlot(_ host: String) -> UInt16 {
        var h: UInt32 = 2_166_136_261
        for b in host.utf8 { h = (h ^ UInt32(b)) &* 16_777_619 }
        return UInt16(h % 65_534) + 1
    }

    /// The host's slot, allocating one when it has none: the start slot, then the next free
    /// one. `reserved`: slots that may not be given now (ServiceEntry addresses in the range).
    /// Nil when every usable slot is taken.
    public mutating func allocate(_ host: String, reserved: Set<UInt16> = []) -> UInt16? {
        if let s = slots[host] { return s }
        var s = VIPAllocator.startSlot(host)
        for _ in 0..<65_534 {
            if owners[s] == nil && !reserved.contains(s) {
                slots[host] = s
                owners[s] = host
                return s
            }
            s = s >= 65_534 ? 1 : s + 1
        }
        return nil
    }

    /// The host holding a slot.
    public func owner(of slot: UInt16) -> String? { owners[slot] }

    /// 240.240.XX.YY.
    public static func ipv4(_ slot: UInt16) -> String { "240.240.\(slot >> 8).\(slot & 0xFF)" }

    /// 2001:2::f0f0:XXYY (four hex digits, see the type's comment).
    public static func ipv6(_ slot: UInt16) -> String {
        let hex = Array("0123456789abcdef".utf8)
        var d = ""
        for shift in stride(from: 12, through: 0, by: -4) { d.unicodeScalars.append(Unicode.Scalar(hex[Int((slot >> UInt16(shift)) & 0xF)])) }
        return "2001:2::f0f0:\(d)"
    }

    /// The slot of an address inside 240.240.0.0/16 (dotted quad), nil for any other text.
    public static func slot(ofIPv4 text: String) -> UInt16? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var v: [Int] = []
        for p in parts {
            guard !p.isEmpty, p.count <= 3, p.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }), let n = Int(p), n <= 255 else { return nil }
            v.append(n)
        }
        guard v[0] == 240 && v[1] == 240 else { return nil }
        return UInt16(v[2] << 8 | v[3])
    }

    static let header = "# meshd: virtual IPs, hosts: "

    /// The table as text: a header line counting the hosts, then one `HOST<tab>240.240.XX.YY`
    /// line per host, sorted by host.
    public func serialized() -> String {
        "\(VIPAllocator.header)\(slots.count)\n" + slots.keys.sorted().map { "\($0)\t\(VIPAllocator.ipv4(slots[$0]!))\n" }.joined()
    }

    /// A table read back from `serialized()` text. Every line is checked (a host name, an
    /// address in the range that is not .0.0 or .255.255, no host or address twice): a damaged
    /// file is an error naming its line, never a silently smaller table; the header's count
    /// catches a file cut short between lines.
    public static func parse(_ text: String, file: String) throws(VIPFileError) -> VIPAllocator {
        var a = VIPAllocator()
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard let first = lines.first, first.hasPrefix(header), let count = Int(first.dropFirst(header.count)), count >= 0 else {
            throw VIPFileError("\(file):1: expected the header line \"\(header)N\"")
        }
        for (i, line) in lines.enumerated().dropFirst() {
            if line.isEmpty { continue }
            let f = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            let at = "\(file):\(i + 1)"
            guard f.count == 2 else { throw VIPFileError("\(at): expected HOST<tab>240.240.X.Y, got \(f.count) field(s)") }
            guard isHostName(f[0]) else { throw VIPFileError("\(at): expected a host name, got \"\(f[0])\"") }
            guard let s = slot(ofIPv4: f[1]), usable(s) else {
                throw VIPFileError("\(at): expected an address in 240.240.0.0/16 (not .0.0 or .255.255), got \"\(f[1])\"")
            }
            if a.slots[f[0]] != nil { throw VIPFileError("\(at): \(f[0]) is listed twice") }
            if let o = a.owners[s] { throw VIPFileError("\(at): \(f[1]) is given to \(o) and \(f[0])") }
            a.slots[f[0]] = s
            a.owners[s] = f[0]
        }
        guard a.slots.count == count else { throw VIPFileError("\(file): the header counts \(count) host(s) but \(a.slots.count) were read") }
        return a
    }

    /// Lowercase DNS name: labels of letters, digits and '-', 1...63 bytes, 253 in all.
    static func isHostName(_ h: String) -> Bool {
        guard !h.isEmpty, h.utf8.count <= 253 else { return false }
        for label in h.split(separator: ".", omittingEmptySubsequences: false) {
            guard !label.isEmpty, label.utf8.count <= 63,
                  label.utf8.allSatisfy({ ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 }) else { return false }
        }
        return true
    }
}

/// A `vips.txt` that cannot be read back, named with its line.
public struct VIPFileError: Error, CustomStringConvertible {
    public let description: String
    init(_ d: String) { description = d }
}
