import CMeshShims
import MeshCore
import MeshDNS
import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// The sidecar's DNS port (DESIGN §10 "DNS"): UDP and TCP (RFC 1035 §4.2.2 length-prefixed,
/// several queries per connection) on 127.0.0.1 and ::1. A mesh name is answered from the
/// `DNSTable` in force (A/AAAA with the VIPs, TTL 30; NODATA for another type or a family
/// without an address); every other name is forwarded over UDP from this sidecar's own sockets
/// to the resolv.conf nameservers, 2 s each in order, SERVFAIL when all fail, the answer relayed
/// with the client's ID. It runs on its own thread and `EventLoop`, never on a worker: every
/// socket is non-blocking, the outstanding forwards are a fixed table (1024; a full table
/// answers SERVFAIL at once) under IDs chosen at random per try (two clients' equal IDs never
/// meet upstream), every wait has a deadline, and a malformed query gets FORMERR or is dropped.
public final class DNSServer: @unchecked Sendable {
    public let loop = EventLoop(name: "dns")
    /// The port bound (the one asked for, or the kernel's choice for 0).
    public let port: Int
    public let nameservers: [SocketAddress]
    /// How long one nameserver gets before the next is asked.
    public let perServerTimeout: UInt64
    public static let ttl: UInt32 = 30
    public static let maxOutstanding = 1024
    static let maxTCPConnections = 256
    /// Forwards one TCP connection may have outstanding before it is read no further.
    static let maxPerConnection = 32
    static let tcpIdleTimeout: UInt64 = 30_000_000_000

    /// The names in force; replaced only on the loop's thread (`publish`).
    private(set) var table: DNSTable
    private var udp: [DNSSocket] = []
    private var listeners: [Listener] = []
    /// Upstream sockets: [0] IPv4, [1] IPv6 (nil when the family is not needed or unavailable).
    private var upstream: [DNSSocket?] = [nil, nil]
    private var pending: [DNSPending]
    private var freeSlots: [Int]
    /// Upstream ID -> slot in `pending`, -1 when unused.
    private var byID: [Int16]
    private var timer: DNSTimer!
    private var rng = FastRandom()
    private var nameBuf: [UInt8] = []
    private var out: [UInt8] = []
    private let rbuf = UnsafeMutableRawBufferPointer.allocate(byteCount: 65_536, alignment: 8)
    var tcpOpen = 0
    private var thread: pthread_t?

    /// What the server did, for the exit log (touched on the loop's thread; read after `stop`).
    public struct Counts: Sendable { public var answered = 0, forwarded = 0, relayed = 0, servfail = 0, formerr = 0, dropped = 0 }
    public private(set) var counts = Counts()

    private init(port: Int, nameservers: [SocketAddress], timeout: UInt64, table: DNSTable) {
        self.port = port
        self.nameservers = nameservers
        self.perServerTimeout = timeout
        self.table = table
        pending = (0..<DNSServer.maxOutstanding).map { _ in DNSPending() }
        freeSlots = Array((0..<DNSServer.maxOutstanding).reversed())
        byID = [Int16](repeating: -1, count: 65_536)
        nameBuf.reserveCapacity(256)
        out.reserveCapacity(1_500)
    }

    deinit { rbuf.deallocate() }

    /// Binds UDP and TCP on 127.0.0.1:`port` and [::1]:`port` (an unavailable ::1 is logged
    /// and skipped), and starts the thread. `resolvConf`: the nameservers' file.
    public static func start(port: Int, resolvConf: String, table: DNSTable = DNSTable(clusters: [], namespace: ""),
                             timeout: UInt64 = 2_000_000_000) throws(ProxyStartError) -> DNSServer {
        try start(port: port, resolvConf: resolvConf, table: table, timeout: timeout, upstreamPort: 53)
    }

    /// `upstreamPort`: the nameservers' port (53; the in-process tests run theirs elsewhere).
    static func start(port: Int, resolvConf: String, table: DNSTable, timeout: UInt64, upstreamPort: Int) throws(ProxyStartError) -> DNSServer {
        guard let text = DNSServer.readText(resolvConf) else {
            throw ProxyStartError(description: "--resolv-conf \(resolvConf): cannot read it: \(Socket.errorText(mesh_errno()))")
        }
        var rc = ResolvConf.parse(text)
        if upstreamPort != 53 { rc.servers = rc.servers.map { SocketAddress(host: String($0.text[..<$0.text.lastIndex(of: ":")!]), port: upstreamPort)! } }
        for n in rc.notes { Log.warn("dns", "\(resolvConf): \(n)") }
        var fds: [Int32] = []
        func fail(_ what: String, _ e: Int32) -> ProxyStartError {
            for f in fds { Glibc.close(f) }
            if e == EADDRINUSE { return ProxyStartError(description: "cannot listen on \(what) (dns): the port is already in use by another process") }
            return ProxyStartError(description: "cannot listen on \(what) (dns): \(Socket.errorText(e))")
        }
        let v4 = SocketAddress(host: "127.0.0.1", port: port)!
        var u4: Int32 = -1, t4: Int32 = -1, bound = port
        // Port 0 (tests): the kernel picks the UDP port; another try when TCP has it taken.
        for _ in 0..<(port == 0 ? 20 : 1) {
            u4 = DNSServer.udpSocket(bindTo: v4)
            if u4 < 0 { throw fail(v4.text, -u4) }
            bound = Socket.localPort(u4)
            t4 = Socket.listen(SocketAddress(host: "127.0.0.1", port: bound)!, reusePort: false, backlog: 128)
            if t4 >= 0 { break }
            Glibc.close(u4)
        }
        fds.append(u4)
        if t4 < 0 { throw fail("127.0.0.1:\(bound)/tcp", -t4) }
        fds.append(t4)
        var u6: Int32 = -1, t6: Int32 = -1
        let v6 = SocketAddress(host: "::1", port: bound)!
        u6 = DNSServer.udpSocket(bindTo: v6)
        if u6 >= 0 {
            fds.append(u6)
            t6 = Socket.listen(v6, reusePort: false, backlog: 128)
            if t6 < 0 { throw fail("[::1]:\(bound)/tcp", -t6) }
            fds.append(t6)
        } else if -u6 == EADDRINUSE {
            throw fail(v6.text, -u6)
        } else {
            Log.warn("dns", "[::1]:\(bound): not bound (\(Socket.errorText(-u6))); DNS answers on 127.0.0.1 only")
        }
        let s = DNSServer(port: bound, nameservers: rc.servers, timeout: timeout, table: table)
        s.timer = DNSTimer(server: s)
        s.loop.registerTimerOnly(s.timer)
        for fd in [u4, u6] where fd >= 0 {
            let sock = DNSSocket(fd: fd, server: s, upstream: false)
            _ = s.loop.register(sock, events: EPOLLIN.rawValue)
            s.udp.append(sock)
        }
        for fd in [t4, t6] where fd >= 0 {
            let l = Listener(loop: s.loop, fd: fd, name: "dns") { [unowned s] cfd in s.accepted(cfd) }
            _ = l.start()
            s.listeners.append(l)
        }
        for (i, fam) in [AF_INET, AF_INET6].enumerated() where rc.servers.contains(where: { $0.family == fam }) {
            let fd = socket(fam, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            if fd < 0 { Log.warn("dns", "no \(fam == AF_INET ? "IPv4" : "IPv6") socket for forwarding: \(Socket.errorText(mesh_errno()))"); continue }
            let sock = DNSSocket(fd: fd, server: s, upstream: true)
            _ = s.loop.register(sock, events: EPOLLIN.rawValue)
            s.upstream[i] = sock
        }
        s.thread = Threads.spawn(name: "dns") { [s] in s.loop.run() }
        Log.info("dns", "answering on 127.0.0.1:\(bound)\(u6 >= 0 ? " and [::1]:\(bound)" : "") (UDP and TCP); forwarding to \(rc.servers.map(\.text).joined(separator: ", "))")
        return s
    }

    /// Puts a new table in force: taken by the DNS thread from its loop, like a worker takes a
    /// snapshot (`ProxyServer.replace`). Any thread.
    public func publish(_ t: DNSTable) {
        loop.post { [self] in self.table = t }
    }

    /// Stops the thread and closes every socket. Blocks until the thread is gone.
    public func stop() {
        loop.stop()
        if let t = thread {
            Threads.join(t)
            thread = nil
            let c = counts
            Log.info("dns", "stopped: \(c.answered) answered, \(c.forwarded) forwarded (\(c.relayed) relayed, \(c.servfail) SERVFAIL), \(c.formerr) FORMERR/NOTIMP, \(c.dropped) dropped")
        }
        for s in udp { loop.deregister(s); Glibc.close(s.fd) }
        for case let s? in upstream { loop.deregister(s); Glibc.close(s.fd) }
        for l in listeners { l.close() }
        udp = []; upstream = [nil, nil]; listeners = []
    }

    // MARK: queries

    /// One query from a client (a datagram, or a TCP message without its length).
    func handle(_ m: UnsafeRawBufferPointer, from client: DNSClient) {
        switch DNSMessage.parseQuery(m, name: &nameBuf) {
        case .failure(let e):
            guard let rc = e.rcode else { counts.dropped += 1; return }
            counts.formerr += 1
            DNSMessage.writeHeaderOnly(id: UInt16(m[0]) << 8 | UInt16(m[1]), flags: UInt16(m[2]) << 8 | UInt16(m[3]), rcode: rc, into: &out)
            out.withUnsafeBytes { reply($0, to: client) }
        case .success(let q):
            if let e = q.edns, e.version > 0 {
                writeLocal(q, m, rcode: DNSRcode.badVers, type: 0, addresses: [], size: 0)
                out.withUnsafeBytes { reply($0, to: client) }
                return
            }
            if q.plainName && q.qclass == DNSType.classIN, let found = table.lookup(nameBuf, q.nameLength) {
                counts.answered += 1
                switch q.qtype {
                case DNSType.a: writeLocal(q, m, rcode: 0, type: DNSType.a, addresses: found.v4, size: 4)
                case DNSType.aaaa: writeLocal(q, m, rcode: 0, type: DNSType.aaaa, addresses: found.v6, size: 16)
                default: writeLocal(q, m, rcode: 0, type: 0, addresses: [], size: 0)
                }
                out.withUnsafeBytes { reply($0, to: client) }
                return
            }
            forward(m, q, client)
        }
    }

    private func writeLocal(_ q: DNSQuery, _ m: UnsafeRawBufferPointer, rcode: UInt16, type: UInt16, addresses: [UInt8], size: Int) {
        addresses.withUnsafeBytes { a in
            DNSMessage.writeAnswer(q, query: m, rcode: rcode, type: type, addresses: a, size: size, ttl: DNSServer.ttl, into: &out)
        }
    }

    private func reply(_ r: UnsafeRawBufferPointer, to client: DNSClient) {
        switch client {
        case .udp(let fd, var addr, let len):
            _ = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, r.baseAddress, r.count, Int32(MSG_DONTWAIT), $0, len) }
            }
        case .tcp(let c):
            c.send(r)
        }
    }

    private func forward(_ m: UnsafeRawBufferPointer, _ q: DNSQuery, _ client: DNSClient) {
        guard let i = freeSlots.popLast() else {
            // The table is full: an answer now, not a wait that could only time out.
            counts.servfail += 1
            writeLocal(q, m, rcode: UInt16(DNSRcode.servFail), type: 0, addresses: [], size: 0)
            out.withUnsafeBytes { reply($0, to: client) }
            return
        }
        counts.forwarded += 1
        pending[i].inUse = true
        pending[i].query.removeAll(keepingCapacity: true)
        pending[i].query.append(contentsOf: m)
        pending[i].q = q
        pending[i].client = client
        pending[i].server = 0
        if case .tcp(let c) = client { c.outstanding += 1 }
        sendUpstream(i)
    }

    /// Sends slot `i`'s query to its current nameserver, or the next that takes it; SERVFAIL
    /// when none is left.
    private func sendUpstream(_ i: Int) {
        while pending[i].server < nameservers.count {
            let ns = nameservers[pending[i].server]
            guard let sock = upstream[ns.family == AF_INET ? 0 : 1] else { pending[i].server += 1; continue }
            var id = UInt16(truncatingIfNeeded: rng.next())
            while byID[Int(id)] >= 0 { id = UInt16(truncatingIfNeeded: rng.next()) }
            pending[i].query[0] = UInt8(id >> 8)
            pending[i].query[1] = UInt8(id & 0xFF)
            var a = ns
            let n = pending[i].query.withUnsafeBytes { q in
                withUnsafePointer(to: &a.storage) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(sock.fd, q.baseAddress, q.count, Int32(MSG_DONTWAIT), $0, a.length) }
                }
            }
            if n < 0 {
                Log.debug("dns", "send to \(ns.text): \(Socket.errorText(mesh_errno()))")
                pending[i].server += 1
                continue
            }
            byID[Int(id)] = Int16(i)
            pending[i].upstreamID = Int(id)
            pending[i].deadline = Clock.monotonicNanos() + perServerTimeout
            timer.arm(pending[i].deadline)
            return
        }
        counts.servfail += 1
        let client = pending[i].client!
        pending[i].query.withUnsafeBytes { writeLocal(pending[i].q, $0, rcode: UInt16(DNSRcode.servFail), type: 0, addresses: [], size: 0) }
        out.withUnsafeBytes { reply($0, to: client) }
        free(i)
    }

    private func free(_ i: Int) {
        if pending[i].upstreamID >= 0 { byID[pending[i].upstreamID] = -1 }
        if case .tcp(let c)? = pending[i].client { c.outstanding -= 1; c.resumeIfBelowLimit() }
        pending[i].upstreamID = -1
        pending[i].inUse = false
        pending[i].client = nil
        freeSlots.append(i)
    }

    /// Answers arriving on an upstream socket: relayed only when they come from the nameserver
    /// asked, carry an ID in use and answer the question sent.
    func readUpstream(_ sock: DNSSocket) {
        for _ in 0..<64 {
            var from = sockaddr_storage()
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let n = withUnsafeMutablePointer(to: &from) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(sock.fd, rbuf.baseAddress, rbuf.count, 0, $0, &len) }
            }
            if n < 0 { return }
            guard n >= 12 else { counts.dropped += 1; continue }
            let id = Int(rbuf[0]) << 8 | Int(rbuf[1])
            let i = Int(byID[id])
            guard i >= 0, DNSServer.same(from, nameservers[pending[i].server]) else { counts.dropped += 1; continue }
            let r = UnsafeRawBufferPointer(start: rbuf.baseAddress, count: n)
            let ok = pending[i].query.withUnsafeBytes { DNSMessage.isAnswer(r, to: $0, questionEnd: pending[i].q.questionEnd) }
            guard ok else { counts.dropped += 1; continue }
            rbuf[0] = UInt8(pending[i].q.id >> 8)
            rbuf[1] = UInt8(pending[i].q.id & 0xFF)
            counts.relayed += 1
            reply(r, to: pending[i].client!)
            free(i)
        }
    }

    /// Datagrams on a client-facing UDP socket.
    func readClients(_ sock: DNSSocket) {
        for _ in 0..<64 {
            var from = sockaddr_storage()
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let n = withUnsafeMutablePointer(to: &from) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(sock.fd, rbuf.baseAddress, rbuf.count, 0, $0, &len) }
            }
            if n < 0 { return }
            handle(UnsafeRawBufferPointer(start: rbuf.baseAddress, count: n), from: .udp(fd: sock.fd, addr: from, len: len))
        }
    }

    /// Forwards whose nameserver did not answer in time move to the next one.
    func expire(now: UInt64) {
        var next: UInt64 = 0
        for i in 0..<pending.count where pending[i].inUse {
            if pending[i].deadline <= now {
                byID[pending[i].upstreamID] = -1
                pending[i].upstreamID = -1
                pending[i].server += 1
                sendUpstream(i)
            }
            if pending[i].inUse && (next == 0 || pending[i].deadline < next) { next = pending[i].deadline }
        }
        if next != 0 { loop.setDeadline(timer, next) }
    }

    func accepted(_ fd: Int32) {
        guard tcpOpen < DNSServer.maxTCPConnections else { Glibc.close(fd); counts.dropped += 1; return }
        let c = DNSTCPConnection(fd: fd, server: self)
        guard loop.register(c, events: EPOLLIN.rawValue | EPOLLRDHUP.rawValue) else { Glibc.close(fd); return }
        tcpOpen += 1
        loop.setDeadline(c, loop.now + DNSServer.tcpIdleTimeout)
    }

    static func same(_ a: sockaddr_storage, _ b: SocketAddress) -> Bool {
        var x = a, y = b.storage
        guard x.ss_family == y.ss_family else { return false }
        if Int32(x.ss_family) == AF_INET {
            return withUnsafeBytes(of: &x) { p in withUnsafeBytes(of: &y) { q in
                let s = p.load(as: sockaddr_in.self), t = q.load(as: sockaddr_in.self)
                return s.sin_port == t.sin_port && s.sin_addr.s_addr == t.sin_addr.s_addr
            } }
        }
        return withUnsafeBytes(of: &x) { p in withUnsafeBytes(of: &y) { q in
            p.load(as: sockaddr_in6.self).sin6_port == q.load(as: sockaddr_in6.self).sin6_port
                && p[8..<24].elementsEqual(q[8..<24])   // sin6_addr
        } }
    }

    static func udpSocket(bindTo addr: SocketAddress) -> Int32 {
        let fd = socket(addr.family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { return -mesh_errno() }
        var a = addr
        let rc = withUnsafePointer(to: &a.storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, a.length) } }
        if rc != 0 { let e = mesh_errno(); Glibc.close(fd); return -e }
        return fd
    }

    /// A small text file read whole (resolv.conf), nil when it cannot be read.
    static func readText(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { return nil }
        defer { Glibc.close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < 1 << 20 {
            let n = read(fd, &chunk, chunk.count)
            if n < 0 { return nil }
            if n == 0 { break }
            bytes += chunk[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Who asked: a UDP client (the socket it wrote to and its address) or a TCP connection.
enum DNSClient {
    case udp(fd: Int32, addr: sockaddr_storage, len: socklen_t)
    case tcp(DNSTCPConnection)
}

/// One outstanding forward: the query as sent upstream (the ID rewritten), the client's query.
struct DNSPending {
    var inUse = false
    var query: [UInt8] = []
    var q = DNSQuery()
    var client: DNSClient? = nil
    var server = 0
    var upstreamID = -1
    var deadline: UInt64 = 0
}

/// A UDP socket of the DNS server: client-facing, or one it forwards from.
final class DNSSocket: Pollable {
    unowned let server: DNSServer
    let upstream: Bool
    init(fd: Int32, server: DNSServer, upstream: Bool) { self.server = server; self.upstream = upstream; super.init(fd: fd) }
    override func onEvents(_ events: UInt32) {
        if upstream { server.readUpstream(self) } else { server.readClients(self) }
    }
}

/// The deadline of the earliest outstanding forward.
final class DNSTimer: Pollable {
    unowned let server: DNSServer
    init(server: DNSServer) { self.server = server; super.init(fd: -1) }
    func arm(_ d: UInt64) { if deadline == 0 || d < deadline { server.loop.setDeadline(self, d) } }
    override func onTimer(now: UInt64) { server.expire(now: now) }
}

/// A TCP client of the DNS port: length-prefixed queries in, answers out in the order they
/// are ready. Reading pauses while it has `maxPerConnection` forwards outstanding; a client
/// that reads nothing while 256 KiB of answers wait, or stays idle 30 s, is closed.
final class DNSTCPConnection: Pollable {
    unowned let server: DNSServer
    private var input: [UInt8] = []
    private var output: [UInt8] = []
    private var written = 0
    var outstanding = 0
    private var peerDone = false
    private var paused = false
    private(set) var closed = false

    init(fd: Int32, server: DNSServer) {
        self.server = server
        super.init(fd: fd)
        input.reserveCapacity(1_024)
    }

    override func onEvents(_ events: UInt32) {
        if closed { return }
        // A reset or hang-up ends the connection even while reading is paused: level-triggered,
        // it would otherwise be reported again on every loop iteration (a spinning thread).
        if events & (EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 { close(); return }
        if events & EPOLLOUT.rawValue != 0 { flush() }
        if events & (EPOLLIN.rawValue | EPOLLRDHUP.rawValue) != 0 && !paused { readInput() }
    }

    private func readInput() {
        var buf = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        while !closed && !paused {
            let n = withUnsafeMutableBytes(of: &buf) { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n == 0 {
                // The client is done asking: answer what is outstanding, then close.
                peerDone = true
                server.loop.modify(self, events: output.isEmpty ? 0 : EPOLLOUT.rawValue)
                break
            }
            if n < 0 {
                let e = mesh_errno()
                if e == EAGAIN || e == EWOULDBLOCK || e == EINTR { break }
                close(); return
            }
            withUnsafeBytes(of: &buf) { input.append(contentsOf: $0[0..<n]) }
            server.loop.setDeadline(self, server.loop.now + DNSServer.tcpIdleTimeout)
            processFrames()
        }
        finishIfDone()
    }

    private var inFrames = false

    private func processFrames() {
        if inFrames { return }
        inFrames = true
        defer { inFrames = false }
        var at = 0
        while !closed && outstanding < DNSServer.maxPerConnection && input.count - at >= 2 {
            let len = Int(input[at]) << 8 | Int(input[at + 1])
            guard input.count - at - 2 >= len else { break }
            input.withUnsafeBytes { server.handle(UnsafeRawBufferPointer(rebasing: $0[(at + 2)..<(at + 2 + len)]), from: .tcp(self)) }
            at += 2 + len
        }
        if at > 0 { input.removeFirst(at) }
        if outstanding >= DNSServer.maxPerConnection && !paused {
            paused = true
            server.loop.modify(self, events: output.count > written ? EPOLLOUT.rawValue : 0)
        }
    }

    /// A forward finished: read again if reading was paused for it.
    func resumeIfBelowLimit() {
        if closed { return }
        if paused && outstanding < DNSServer.maxPerConnection {
            paused = false
            server.loop.modify(self, events: (peerDone ? 0 : EPOLLIN.rawValue | EPOLLRDHUP.rawValue) | (output.count > written ? EPOLLOUT.rawValue : 0))
            processFrames()
        }
        finishIfDone()
    }

    /// Queues one answer with its length prefix and writes what the socket takes.
    func send(_ r: UnsafeRawBufferPointer) {
        if closed { return }
        output.append(UInt8(r.count >> 8))
        output.append(UInt8(r.count & 0xFF))
        output.append(contentsOf: r)
        if output.count - written > 256 * 1024 { close(); return }
        flush()
    }

    private func flush() {
        while written < output.count {
            let n = output.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + written, $0.count - written, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
            if n < 0 {
                let e = mesh_errno()
                if e == EAGAIN || e == EWOULDBLOCK || e == EINTR { break }
                close(); return
            }
            written += n
        }
        if written == output.count {
            output.removeAll(keepingCapacity: true)
            written = 0
        }
        let want = (paused || peerDone ? 0 : EPOLLIN.rawValue | EPOLLRDHUP.rawValue) | (output.isEmpty ? 0 : EPOLLOUT.rawValue)
        server.loop.modify(self, events: want)
        finishIfDone()
    }

    private func finishIfDone() {
        if peerDone && outstanding == 0 && output.isEmpty && !closed { close() }
    }

    override func onTimer(now: UInt64) {
        if outstanding > 0 { server.loop.setDeadline(self, now + DNSServer.tcpIdleTimeout); return }
        close()
    }

    func close() {
        guard !closed else { return }
        closed = true
        server.loop.deregister(self)
        Glibc.close(fd)
        server.tcpOpen -= 1
    }
}
