import MeshConfig
import MeshCore
import MeshDNS
import MeshIO
import CMeshShims
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Resolves the names of DNS clusters (ServiceEntry `resolution: DNS` / `DNS_ROUND_ROBIN`) on
/// a thread of its own, never a worker loop: A and AAAA queries over UDP (MeshDNS's codec) to
/// `--dns-resolver IP:PORT` or the first nameserver of /etc/resolv.conf, so the answer's TTL is
/// known. Each name is asked again when its TTL runs out (at least 1 s, at most 5 minutes); a
/// failed or empty answer keeps the last good addresses and is retried in 2 s. A changed
/// address set calls the listeners (ProxyServer builds a new snapshot from the config in force:
/// requests in flight finish on the old one). One per process.
public final class EndpointResolver: Sendable {
    public static let shared = EndpointResolver()
    static let minRefresh: UInt64 = 1_000_000_000
    static let maxRefresh: UInt64 = 300_000_000_000
    static let retryAfterFailure: UInt64 = 2_000_000_000
    static let queryTimeoutMs: Int32 = 1500

    struct Entry {
        /// Last good addresses in answer order (IPv4 first, then IPv6), nil before any.
        var addresses: [String]?
        var due: UInt64 = 0
        var failing = false
        /// A DNS_ROUND_ROBIN cluster uses the name: its first address matters, not only the set.
        var roundRobin = false
    }

    struct State {
        var entries: [String: Entry] = [:]
        var nameserver: SocketAddress?
        /// Bumped whenever some name's addresses change.
        var generation: UInt64 = 0
        var started = false
        var listeners: [@Sendable () -> Void] = []
    }

    private let state = Mutex(State())

    /// `--dns-resolver IP:PORT` (call before any config is built).
    public func setNameserver(_ a: SocketAddress) { state.withLock { $0.nameserver = a } }

    /// Called (on the resolver thread) after any name's addresses changed.
    public func addListener(_ f: @escaping @Sendable () -> Void) { state.withLock { $0.listeners.append(f) } }

    /// Stops asking for names the config in force no longer has (a deleted ServiceEntry); a
    /// name asked for again later starts afresh.
    public func retain(_ names: Set<String>) {
        state.withLock { s in s.entries = s.entries.filter { names.contains($0.key) } }
    }

    /// Bumped on every change of any name's addresses.
    public var generation: UInt64 { state.withLock { $0.generation } }

    /// The last good addresses of `name` (empty before the first answer). A name not asked
    /// before is registered, and the caller waits up to `wait` nanoseconds for its first answer
    /// (a new config: the cluster is usable when it is put in force, as Envoy warms it).
    public func addresses(_ name: String, wait: UInt64) -> [String] {
        let (known, start) = state.withLock { s -> ([String]?, Bool) in
            if let a = s.entries[name]?.addresses { return (a, false) }
            if s.entries[name] == nil { s.entries[name] = Entry() }
            let start = !s.started
            s.started = true
            return (nil, start)
        }
        if start { Threads.spawnDetached { [self] in run() } }
        if let known { return known }
        let until = Clock.monotonicNanos() &+ wait
        while Clock.monotonicNanos() < until {
            if let a = state.withLock({ $0.entries[name]?.addresses }) { return a }
            usleep(10_000)
        }
        return []
    }

    /// A copy of `b` whose DNS clusters carry the addresses their names resolve to as
    /// endpoints (with the port and labels of their name), and the generation they are from.
    public func withResolvedEndpoints(_ b: Bootstrap, wait: UInt64 = 2_000_000_000) -> (Bootstrap, UInt64) {
        let gen = generation
        guard b.clusters.contains(where: { $0.resolution != .static }) else { return (b, gen) }
        // Every new name is asked at once; the wait for first answers is one deadline for all.
        let names = Set(b.clusters.flatMap { $0.dnsEndpoints.map(\.host) })
        for n in names { _ = addresses(n, wait: 0) }
        let until = Clock.monotonicNanos() &+ wait
        while Clock.monotonicNanos() < until, state.withLock({ s in names.contains { s.entries[$0]?.addresses == nil } }) {
            usleep(10_000)
        }
        var out = b
        for (ci, c) in b.clusters.enumerated() where c.resolution != .static {
            for d in c.dnsEndpoints {
                if c.resolution == .dnsRoundRobin { state.withLock { $0.entries[d.host, default: Entry()].roundRobin = true } }
                var addrs = addresses(d.host, wait: 0)
                // DNS_ROUND_ROBIN (Envoy's LOGICAL_DNS): one address at a time, the first of
                // the latest answer, for new connections.
                if c.resolution == .dnsRoundRobin { addrs = Array(addrs.prefix(1)) }
                for a in addrs {
                    guard let sa = SocketAddress(host: a, port: d.port) else { continue }
                    out.clusters[ci].endpoints.append(sa)
                    out.clusters[ci].endpointLabels.append(d.labelPairs)
                }
            }
        }
        return (out, gen)
    }

    // MARK: the resolver thread

    private func run() {
        while true {
            let now = Clock.monotonicNanos()
            let (due, server) = state.withLock { s -> ([String], SocketAddress?) in
                (s.entries.filter { $0.value.due <= now }.map(\.key).sorted(), s.nameserver)
            }
            if due.isEmpty { usleep(20_000); continue }
            let ns = server ?? EndpointResolver.systemNameserver()
            var changed = false
            for name in due {
                let r = EndpointResolver.resolve(name, nameserver: ns)
                let after = Clock.monotonicNanos()
                state.withLock { s in
                    var e = s.entries[name] ?? Entry()
                    switch r {
                    case .success(let (addrs, ttl)):
                        // DNS: the set of addresses (a server rotating its answers changes nothing);
                        // DNS_ROUND_ROBIN: also which one comes first.
                        if e.addresses == nil || Set(e.addresses!) != Set(addrs) || (e.roundRobin && e.addresses!.first != addrs.first) {
                            if e.addresses != nil && Set(e.addresses!) != Set(addrs) { Log.info("dns", "\(name): \(addrs.joined(separator: ", ")) (was \(e.addresses!.joined(separator: ", ")))") }
                            e.addresses = addrs
                            s.generation &+= 1
                            changed = true
                        }
                        e.failing = false
                        let ttlNanos = UInt64(ttl) &* 1_000_000_000
                        e.due = after &+ min(max(ttlNanos, EndpointResolver.minRefresh), EndpointResolver.maxRefresh)
                    case .failure(let why):
                        if !e.failing {
                            Log.warn("dns", "\(name): \(why) (asking \(ns)); \(e.addresses.map { "keeping \($0.joined(separator: ", "))" } ?? "no address yet")")
                        }
                        e.failing = true
                        if e.addresses == nil { e.addresses = []; s.generation &+= 1; changed = true }
                        e.due = after &+ EndpointResolver.retryAfterFailure
                    }
                    s.entries[name] = e
                }
            }
            if changed {
                for f in state.withLock({ $0.listeners }) { f() }
            }
        }
    }

    /// The first nameserver of /etc/resolv.conf (127.0.0.1:53 when there is none).
    static func systemNameserver() -> SocketAddress {
        ResolvConf.parse(DNSServer.readText("/etc/resolv.conf") ?? "").servers[0]
    }

    /// A and AAAA for `name`: the addresses (IPv4 first) and the lowest TTL, or why not.
    static func resolve(_ name: String, nameserver ns: SocketAddress) -> Result<([String], UInt32), ResolveError> {
        let fd = socket(ns.family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { return .failure("no UDP socket: \(Socket.errorText(mesh_errno()))") }
        defer { close(fd) }
        var a = ns
        let rc = withUnsafePointer(to: &a.storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, a.length) } }
        if rc != 0 { return .failure("cannot reach \(ns): \(Socket.errorText(mesh_errno()))") }
        var results: [UInt16: Result<(addresses: [[UInt8]], ttl: UInt32), DNSLookup.Failure>] = [:]
        var queries: [UInt16: [UInt8]] = [:]
        for type in [DNSType.a, DNSType.aaaa] {
            guard let q = DNSLookup.query(name: name, type: type, id: UInt16.random(in: 0...UInt16.max)) else { return .failure("not a name DNS can carry") }
            queries[type] = q
        }
        for _ in 0..<2 where results.count < 2 {
            for (type, q) in queries where results[type] == nil { _ = send(fd, q, q.count, Int32(MSG_NOSIGNAL)) }
            var buf = [UInt8](repeating: 0, count: 4096)
            let deadline = Clock.monotonicNanos() &+ UInt64(queryTimeoutMs) * 1_000_000
            while results.count < 2 {
                let left = Int64(deadline) - Int64(Clock.monotonicNanos())
                if left <= 0 { break }
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                if poll(&p, 1, Int32(left / 1_000_000) + 1) <= 0 { continue }
                let n = recv(fd, &buf, buf.count, 0)
                if n <= 0 { continue }
                for (type, q) in queries where results[type] == nil {
                    let r = buf.withUnsafeBytes { rb in q.withUnsafeBytes { qb in DNSLookup.addresses(UnsafeRawBufferPointer(rebasing: rb[0..<n]), query: qb, type: type) } }
                    if case .failure(.notAnAnswer) = r { continue }
                    results[type] = r
                }
            }
        }
        var v4: [String] = [], v6: [String] = []
        var ttl = UInt32.max
        var errors: [String] = []
        for type in [DNSType.a, DNSType.aaaa] {
            switch results[type] {
            case .success(let (addrs, t))?:
                if !addrs.isEmpty { ttl = min(ttl, t) }
                for b in addrs { if type == DNSType.a { v4.append(text(b)) } else { v6.append(text(b)) } }
            case .failure(let f)?:
                errors.append("\(type == DNSType.a ? "A" : "AAAA"): \(f)")
            case nil:
                errors.append("\(type == DNSType.a ? "A" : "AAAA"): no answer in \(2 * Int(queryTimeoutMs)) ms")
            }
        }
        if v4.isEmpty && v6.isEmpty {
            return .failure(ResolveError(errors.isEmpty ? "no address in the answer" : errors.joined(separator: "; ")))
        }
        return .success((v4 + v6, ttl))
    }

    /// Why a name gave no address (for the log line).
    struct ResolveError: Error, CustomStringConvertible, ExpressibleByStringInterpolation {
        let description: String
        init(_ d: String) { description = d }
        init(stringLiteral d: String) { description = d }
        init(stringInterpolation i: DefaultStringInterpolation) { description = String(stringInterpolation: i) }
    }

    /// An address's text (dotted quad, or RFC 5952 IPv6).
    static func text(_ b: [UInt8]) -> String {
        if b.count == 4 { return "\(b[0]).\(b[1]).\(b[2]).\(b[3])" }
        var out = [CChar](repeating: 0, count: 64)
        _ = b.withUnsafeBytes { inet_ntop(AF_INET6, $0.baseAddress, &out, 64) }
        return String(cString: out)
    }
}
