#if canImport(Glibc)
import Glibc
#endif
import MeshCore
import MeshHTTP

/// The route matches of every virtual host flattened into one contiguous table of plain records
/// (strings in one byte arena), so matching a request walks memory without reference counting:
/// a request that skips 999 routes costs a few nanoseconds per route. Built once per snapshot;
/// immutable, so every worker reads it without synchronisation.
final class MatchTable: @unchecked Sendable {
    /// One `match[]` entry of one route (or a route without entries, which matches everything).
    struct Entry {
        var route: Int32
        var entry: Int32          // index in the route's match list, -1 for "no entries"
        var uri: Cond
        var method: Cond
        var headerStart: Int32
        var headerCount: Int32
        /// Index into `extras` (MatchExtras.swift), -1 when the entry has none.
        var extras: Int32 = -1
    }

    /// A string condition: kind 0 none, 1 exact, 2 prefix, 3 regex; bytes at `offset` in the arena.
    struct Cond {
        var kind: UInt8 = 0
        var offset: Int32 = 0
        var length: Int32 = 0
        var regex: Int32 = -1
    }

    struct Header {
        var nameOffset: Int32
        var nameLength: Int32
        var cond: Cond
    }

    private let arena: UnsafeMutablePointer<UInt8>
    private let entries: UnsafeMutablePointer<Entry>
    private let headers: UnsafeMutablePointer<Header>
    private let ranges: UnsafeMutablePointer<(Int32, Int32)>
    private let counts: (arena: Int, entries: Int, headers: Int, vhosts: Int)
    private let regexes: [FullMatchRegex]
    private let extras: [MatchExtras]

    init(vhosts: [VirtualHost], routes: [ProxySnapshot.Route]) {
        var bytes: [UInt8] = []
        var es: [Entry] = []
        var hs: [Header] = []
        var rs: [(Int32, Int32)] = []
        var res: [FullMatchRegex] = []
        var xs: [MatchExtras] = []
        func cond(_ m: ByteMatch?) -> Cond {
            guard let m else { return Cond() }
            var c = Cond(kind: 0, offset: Int32(bytes.count), length: Int32(m.value.count), regex: -1)
            bytes += m.value
            switch m.kind {
            case .exact: c.kind = 1
            case .prefix: c.kind = 2
            case .regex:
                c.kind = 3
                if let r = m.regex { c.regex = Int32(res.count); res.append(r) } else { c.kind = 4 }   // 4: never matches
            }
            return c
        }
        for v in vhosts {
            let start = Int32(es.count)
            for r in v.routes {
                let ms = routes[r].matches
                if ms.isEmpty {
                    es.append(Entry(route: Int32(r), entry: -1, uri: Cond(), method: Cond(), headerStart: 0, headerCount: 0))
                    continue
                }
                for (i, m) in ms.enumerated() {
                    let hStart = Int32(hs.count)
                    for h in m.headers {
                        let off = Int32(bytes.count)
                        bytes += h.name
                        hs.append(Header(nameOffset: off, nameLength: Int32(h.name.count), cond: cond(h.match)))
                    }
                    var e = Entry(route: Int32(r), entry: Int32(i), uri: cond(m.uri), method: cond(m.method),
                                  headerStart: hStart, headerCount: Int32(m.headers.count))
                    if let x = m.extras {
                        if x.uriIgnoringCase != nil { e.uri = Cond() }   // matched case-insensitively by the extras
                        e.extras = Int32(xs.count)
                        xs.append(x)
                    }
                    es.append(e)
                }
            }
            rs.append((start, Int32(es.count)))
        }
        arena = .allocate(capacity: max(bytes.count, 1))
        arena.initialize(from: bytes, count: bytes.count)
        entries = .allocate(capacity: max(es.count, 1))
        entries.initialize(from: es, count: es.count)
        headers = .allocate(capacity: max(hs.count, 1))
        headers.initialize(from: hs, count: hs.count)
        ranges = .allocate(capacity: max(rs.count, 1))
        ranges.initialize(from: rs, count: rs.count)
        counts = (bytes.count, es.count, hs.count, rs.count)
        regexes = res
        extras = xs
    }

    deinit {
        arena.deallocate(); entries.deallocate(); headers.deallocate(); ranges.deallocate()
    }

    @inline(__always) private func test(_ c: Cond, _ p: UnsafePointer<UInt8>, _ n: Int) -> Bool {
        let len = Int(c.length)
        switch c.kind {
        case 0: return true
        case 1: return n == len && (len == 0 || memcmp(arena + Int(c.offset), p, len) == 0)
        case 2: return n >= len && (len == 0 || memcmp(arena + Int(c.offset), p, len) == 0)
        case 3: return regexes[Int(c.regex)].matches(p, n)
        default: return false
        }
    }

    /// The first route of virtual host `v` whose match entry accepts the request, and that entry.
    func route<R: RoutableRequest>(vhost v: Int, _ req: R) -> (route: Int, match: Int) {
        let (start, end) = ranges[v]
        return req.withMethod { mp, mn in
            req.withPath { pp, pn in
                var q = 0
                while q < pn && pp[q] != 63 { q += 1 }   // '?': exact and regex paths ignore the query (Envoy)
                var i = Int(start)
                while i < Int(end) {
                    let e = entries[i]
                    i += 1
                    if e.uri.kind != 0 && !test(e.uri, pp, e.uri.kind == 2 ? pn : q) { continue }
                    if e.method.kind != 0 && !test(e.method, mp, mn) { continue }
                    if e.headerCount > 0 && !headersMatch(e, req) { continue }
                    if e.extras >= 0 && !extras[Int(e.extras)].matches(req, path: pp, pn, query: q) { continue }
                    return (Int(e.route), Int(e.entry))
                }
                return (-1, -1)
            }
        }
    }

    private func headersMatch<R: RoutableRequest>(_ e: Entry, _ req: R) -> Bool {
        for k in Int(e.headerStart)..<Int(e.headerStart + e.headerCount) {
            let h = headers[k]
            guard let ok = req.withHeader(arena + Int(h.nameOffset), Int(h.nameLength), { test(h.cond, $0, $1) }), ok else { return false }
        }
        return true
    }
}
