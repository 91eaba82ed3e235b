import MeshConfig
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// The mesh names the sidecar's DNS answers, compiled from a snapshot's clusters (their
/// `addresses`, pushed by meshd): for a cluster named `svc.ns` the names `svc.ns`, `svc.ns.svc`,
/// `svc.ns.svc.cluster.local`, and `svc` alone when `ns` is this sidecar's namespace; any other
/// cluster name (a ServiceEntry host) as written. Immutable: a push builds a new table that the
/// DNS thread takes from its loop (as workers take snapshots), so lookups need no lock. A
/// lookup hashes the query's name bytes and compares them; it allocates nothing.
public final class DNSTable: Sendable {
    struct Entry: Sendable {
        /// IPv4 addresses, 4 bytes each; IPv6 ones, 16 bytes each.
        let v4: [UInt8]
        let v6: [UInt8]
    }
    private let entries: [Entry]
    private let names: [[UInt8]]
    private let entryOfName: [Int]
    private let byHash: [UInt64: [Int]]

    /// The number of names answered.
    public var count: Int { names.count }

    /// Clusters as (name, addresses); the first cluster to claim a name keeps it.
    public init(clusters: [(name: String, addresses: [String])], namespace: String) {
        var entries: [Entry] = []
        var names: [[UInt8]] = []
        var entryOfName: [Int] = []
        var byHash: [UInt64: [Int]] = [:]
        for c in clusters where !c.addresses.isEmpty {
            var v4: [UInt8] = [], v6: [UInt8] = []
            for a in c.addresses {
                var b4 = in_addr()
                var b6 = in6_addr()
                if inet_pton(AF_INET, a, &b4) == 1 {
                    withUnsafeBytes(of: &b4) { v4 += $0 }
                } else if inet_pton(AF_INET6, a, &b6) == 1 {
                    withUnsafeBytes(of: &b6) { v6 += $0 }
                }
            }
            let e = entries.count
            entries.append(Entry(v4: v4, v6: v6))
            let lower = String(decoding: c.name.utf8.map { $0 >= 65 && $0 <= 90 ? $0 | 0x20 : $0 }, as: UTF8.self)
            var forms = [lower]
            let parts = lower.split(separator: ".", omittingEmptySubsequences: false)
            if parts.count == 2, parts.allSatisfy({ Names.isDNSLabel(String($0)) }) {
                forms += ["\(lower).svc", "\(lower).svc.cluster.local"]
                if parts[1] == Substring(namespace) { forms.append(String(parts[0])) }
            }
            for f in forms {
                let bytes = Array(f.utf8)
                let h = bytes.withUnsafeBufferPointer { DNSTable.hash($0, bytes.count) }
                if byHash[h]?.contains(where: { names[$0] == bytes }) == true { continue }
                byHash[h, default: []].append(names.count)
                names.append(bytes)
                entryOfName.append(e)
            }
        }
        self.entries = entries
        self.names = names
        self.entryOfName = entryOfName
        self.byHash = byHash
    }

    /// FNV-1a (64 bit) of the first `n` bytes.
    @inline(__always) static func hash(_ p: UnsafeBufferPointer<UInt8>, _ n: Int) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for i in 0..<n { h = (h ^ UInt64(p[i])) &* 0x100_0000_01b3 }
        return h
    }

    /// The addresses for a name (lowercase, dotted, no trailing dot: the first `n` bytes of
    /// `name`), nil when it is not a mesh name. `v4`/`v6` may be empty (NODATA for that family).
    public func lookup(_ name: [UInt8], _ n: Int) -> (v4: [UInt8], v6: [UInt8])? {
        name.withUnsafeBufferPointer { p -> (v4: [UInt8], v6: [UInt8])? in
            guard let cands = byHash[DNSTable.hash(p, n)] else { return nil }
            for i in cands where names[i].count == n {
                var same = true
                names[i].withUnsafeBufferPointer { q in
                    for k in 0..<n where q[k] != p[k] { same = false; break }
                }
                if same { let e = entries[entryOfName[i]]; return (e.v4, e.v6) }
            }
            return nil
        }
    }
}

/// The nameservers the sidecar forwards other names to: the `nameserver` lines of
/// resolv.conf(5) (`/etc/resolv.conf`, or `--resolv-conf FILE`), port 53, at most three in the
/// file's order as glibc takes them; none: 127.0.0.1, as glibc defaults. `search`, `domain`
/// and `options` are for the application's resolver, which expands names before it asks: the
/// sidecar only sees the names it sends.
public enum ResolvConf {
    /// The nameservers of a resolv.conf text, and a note for each line not taken (a scoped
    /// link-local address, a fourth nameserver, a value that is no address).
    public static func parse(_ text: String) -> (servers: [SocketAddress], notes: [String]) {
        var out: [SocketAddress] = []
        var notes: [String] = []
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })
            guard line.count >= 2, line[0] == "nameserver" else { continue }
            let a = String(line[1])
            guard !a.contains("%"), let addr = SocketAddress(host: a, port: 53), !a.hasPrefix("[") else {
                notes.append("line \(i + 1): nameserver \"\(a)\" is not an IPv4 or IPv6 address the sidecar can use; skipped")
                continue
            }
            if out.count == 3 { notes.append("line \(i + 1): nameserver \(a) skipped: at most 3 are used, as glibc does"); continue }
            out.append(addr)
        }
        if out.isEmpty { out.append(SocketAddress(host: "127.0.0.1", port: 53)!) }
        return (out, notes)
    }
}
