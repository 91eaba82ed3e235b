import MeshPKI
import COpenSSL
import CMeshShims
import MeshCore
import MeshHTTP
import MeshIO
import MeshTLS
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A byte stream for the control plane (a thread per connection): plain TCP or TLS. Server-side
/// streams are non-blocking with an absolute deadline (a peer trickling bytes cannot hold a
/// thread beyond it); client streams block with per-call timeouts.
public final class ControlStream {
    let fd: Int32
    let ssl: OpaquePointer?
    /// The context the SSL object was made from, kept alive as long as it is (its callbacks
    /// use memory the context owns).
    let context: TLSContext?
    /// Monotonic nanoseconds after which every operation fails (0: none, blocking socket).
    var deadline: UInt64 = 0

    init(fd: Int32, ssl: OpaquePointer?, context: TLSContext? = nil) { self.fd = fd; self.ssl = ssl; self.context = context }

    deinit {
        if let s = ssl { SSL_free(s) }
        Glibc.close(fd)
    }

    /// Sets send and receive timeouts so a silent peer cannot hold a thread for ever.
    static func setTimeouts(_ fd: Int32, seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// False once the peer has closed or reset the connection (it never sends while waiting).
    static func peerConnected(_ fd: Int32) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        if poll(&p, 1, 0) <= 0 { return true }
        if p.revents & Int16(POLLERR | POLLHUP) != 0 { return false }
        var b: UInt8 = 0
        let n = recv(fd, &b, 1, Int32(MSG_PEEK) | Int32(MSG_DONTWAIT))
        return n > 0 || (n < 0 && (mesh_errno() == EAGAIN || mesh_errno() == EWOULDBLOCK))
    }

    /// Waits until the socket is ready for `events` or the deadline passes.
    func wait(_ events: Int16) -> Bool {
        if deadline == 0 { return true }
        let now = Clock.monotonicNanos()
        if now >= deadline { return false }
        var p = pollfd(fd: fd, events: events, revents: 0)
        let ms = Int32(min((deadline - now) / 1_000_000 + 1, 60_000))
        return poll(&p, 1, ms) > 0
    }

    /// Runs an OpenSSL call until it completes, waiting for the socket as it asks (deadline bound).
    private func sslRetry(_ call: () -> Int32) -> Int32 {
        while true {
            let r = call()
            if r > 0 { return r }
            guard let s = ssl else { return r }
            switch SSL_get_error(s, r) {
            case SSL_ERROR_WANT_READ: if !wait(Int16(POLLIN)) { return -1 }
            case SSL_ERROR_WANT_WRITE: if !wait(Int16(POLLOUT)) { return -1 }
            case SSL_ERROR_ZERO_RETURN: return 0
            default: return -1
            }
        }
    }

    /// A server-side stream on an accepted non-blocking socket; the TLS handshake (when
    /// `context` is given) must finish before `deadline`.
    static func accepted(fd: Int32, context: TLSContext?, deadline: UInt64) -> ControlStream? {
        guard let ctx = context else {
            let s = ControlStream(fd: fd, ssl: nil)
            s.deadline = deadline
            return s
        }
        guard let ssl = SSL_new(ctx.ctx) else { Glibc.close(fd); return nil }
        SSL_set_fd(ssl, fd)
        let s = ControlStream(fd: fd, ssl: ssl, context: ctx)
        s.deadline = deadline
        if s.sslRetry({ SSL_accept(ssl) }) != 1 {
            ERR_clear_error()
            return nil
        }
        return s
    }

    /// Connects (blocking, with a timeout) to `address`, over TLS when `context` is given;
    /// `verifyIP`: the server's certificate must name this IP address (an IP SAN), checked in
    /// the handshake.
    public static func connect(_ address: SocketAddress, context: TLSContext?, timeoutSeconds: Int = 10,
                               verifyIP: String? = nil) throws(CAError) -> ControlStream {
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw CAError("socket: \(Socket.errorText(mesh_errno()))") }
        setTimeouts(fd, seconds: timeoutSeconds)
        var a = address
        let rc = withUnsafePointer(to: &a.storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, a.length) } }
        if rc != 0 {
            let e = mesh_errno()
            Glibc.close(fd)
            throw CAError("cannot connect to \(address): \(Socket.errorText(e))")
        }
        guard let ctx = context else { return ControlStream(fd: fd, ssl: nil) }
        guard let ssl = SSL_new(ctx.ctx) else { Glibc.close(fd); throw CAError("SSL_new failed") }
        SSL_set_fd(ssl, fd)
        if let ip = verifyIP, X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), ip) != 1 {
            SSL_free(ssl)
            Glibc.close(fd)
            throw CAError("\(ip): not an IP address to verify a certificate against")
        }
        if SSL_connect(ssl) != 1 {
            let why = OpenSSLErrors.drain()
            var reason = why
            let v = SSL_get_verify_result(ssl)
            if v != X509_V_OK, let s = X509_verify_cert_error_string(v) { reason = String(cString: s) }
            SSL_free(ssl)
            Glibc.close(fd)
            throw CAError("TLS with \(address) failed: \(reason)")
        }
        return ControlStream(fd: fd, ssl: ssl, context: ctx)
    }

    /// The peer's certificate (TLS, when it sent one), owned by the caller.
    var peerCertificate: OpaquePointer? {
        guard let s = ssl else { return nil }
        return SSL_get1_peer_certificate(s)
    }

    func read(_ buf: UnsafeMutableRawPointer, _ n: Int) -> Int {
        if let s = ssl {
            let r = sslRetry { SSL_read(s, buf, Int32(n)) }
            return r > 0 ? Int(r) : Int(r)
        }
        while true {
            let r = Glibc.read(fd, buf, n)
            if r >= 0 { return r }
            let e = mesh_errno()
            if e == EINTR { continue }
            if (e == EAGAIN || e == EWOULDBLOCK) && deadline != 0 && wait(Int16(POLLIN)) { continue }
            return -1
        }
    }

    func write(_ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { b -> Int in
                if let s = ssl { let r = sslRetry { SSL_write(s, b.baseAddress! + off, Int32(b.count - off)) }; return r > 0 ? Int(r) : -1 }
                while true {
                    let r = Glibc.write(fd, b.baseAddress! + off, b.count - off)
                    if r >= 0 { return r }
                    let e = mesh_errno()
                    if e == EINTR { continue }
                    if (e == EAGAIN || e == EWOULDBLOCK) && deadline != 0 && wait(Int16(POLLOUT)) { continue }
                    return -1
                }
            }
            if n <= 0 { return false }
            off += n
        }
        return true
    }

    /// What reading one message gave.
    enum Read {
        case message(head: HTTPHead, buffer: ByteBuffer, body: [UInt8])
        /// The head was read; its Content-Length is over `maxBody` (the body was read and dropped
        /// when it was no longer than 64 MiB, so that an answer can still reach the sender).
        case tooLarge(length: Int, drained: Bool)
        case failed
    }

    /// Reads one HTTP/1.1 message (request or response) with a Content-Length body of at most `maxBody` bytes.
    func readMessage(request: Bool, maxBody: Int) -> Read {
        let buf = ByteBuffer(capacity: 8192)
        var parser = HTTP1Parser()
        var head = HTTPHead()
        while true {
            buf.reserve(4096)
            let n = read(buf.writePointer, buf.writableBytes)
            if n <= 0 { return .failed }
            buf.commit(n)
            let r = request ? parser.parseRequest(buf.base, start: 0, end: buf.writeIndex, into: &head)
                            : parser.parseResponse(buf.base, start: 0, end: buf.writeIndex, into: &head)
            if case .complete = r { break }
            if case .error = r { return .failed }
            if buf.readableBytes > 65536 { return .failed }
        }
        let length = max(0, Int(head.contentLength))
        if length > maxBody {
            guard length <= 64 << 20 else { return .tooLarge(length: length, drained: false) }
            var left = length - (buf.writeIndex - head.headEnd)
            var scratch = [UInt8](repeating: 0, count: 65536)
            while left > 0 {
                let n = scratch.withUnsafeMutableBytes { read($0.baseAddress!, min($0.count, left)) }
                if n <= 0 { return .tooLarge(length: length, drained: false) }
                left -= n
            }
            return .tooLarge(length: length, drained: true)
        }
        while buf.writeIndex - head.headEnd < length {
            buf.reserve(length)
            let n = read(buf.writePointer, buf.writableBytes)
            if n <= 0 { return .failed }
            buf.commit(n)
        }
        let body = Array(UnsafeBufferPointer(start: buf.base + head.headEnd, count: length))
        return .message(head: head, buffer: buf, body: body)
    }
}

/// A request to a control-plane server, as its handler sees it.
public struct ControlRequest: Sendable {
    public let method: String
    public let path: String
    public let query: [String: String]
    public let headers: [String: String]
    public let body: [UInt8]
    /// The caller's SPIFFE ID when it presented a certificate that the server's trust bundle verified.
    public let peerIdentity: String?
    /// That certificate's expiry (Unix seconds) and issuer name.
    public var peerNotAfter: Int64 = 0
    public var peerIssuer = ""
    /// Whether the client is still connected (for handlers that wait).
    public var clientConnected: @Sendable () -> Bool = { true }
    public var bodyText: String { String(decoding: body, as: UTF8.self) }

    /// A request from a parsed head (`head`'s ranges index `base`) and its body: the method, the
    /// path and its percent-decoded query, and the header fields (names lowercase; a repeated
    /// name keeps its last value).
    public init(head: HTTPHead, base b: UnsafePointer<UInt8>, body: [UInt8], peerIdentity: String?) {
        let target = String(decoding: UnsafeBufferPointer(start: b + head.targetStart, count: head.targetEnd - head.targetStart), as: UTF8.self)
        var path = target
        var query: [String: String] = [:]
        if let q = target.firstIndex(of: "?") {
            path = String(target[..<q])
            for kv in target[target.index(after: q)...].split(separator: "&") {
                let p = kv.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                guard let k = p.first, !k.isEmpty else { continue }
                query[ControlServer.percentDecode(String(k))] = p.count > 1 ? ControlServer.percentDecode(String(p[1])) : ""
            }
        }
        var headers: [String: String] = [:]
        for f in head.fields {
            let n = String(decoding: UnsafeBufferPointer(start: b + Int(f.lineStart), count: Int(f.nameEnd - f.lineStart)), as: UTF8.self).lowercased()
            headers[n] = String(decoding: UnsafeBufferPointer(start: b + Int(f.valueStart), count: Int(f.valueEnd - f.valueStart)), as: UTF8.self)
        }
        self.init(method: String(decoding: UnsafeBufferPointer(start: b + head.methodStart, count: head.methodEnd - head.methodStart), as: UTF8.self),
                  path: path, query: query, headers: headers, body: body, peerIdentity: peerIdentity)
    }

    public init(method: String, path: String, query: [String: String], headers: [String: String], body: [UInt8], peerIdentity: String?) {
        self.method = method; self.path = path; self.query = query; self.headers = headers; self.body = body; self.peerIdentity = peerIdentity
    }
}

/// A response from a handler.
public struct ControlResponse: Sendable {
    public var status: Int
    public var body: String
    public var contentType = "text/plain"
    /// More header fields (name lowercase, value), written after content-type.
    public var headers: [(String, String)] = []
    public init(_ status: Int, _ body: String, contentType: String = "text/plain") {
        self.status = status; self.body = body; self.contentType = contentType
    }
}

/// A small HTTP/1.1 server for the control plane's few connections (meshd's admin port, the
/// sidecar's admin port while it waits for its certificate): a thread per connection (bounded
/// overall and per client address), keep-alive, plain or TLS, an absolute deadline for the
/// handshake and each request. Not the data path; simplicity over throughput. meshd's API port,
/// with a config stream per sidecar, runs on event loops instead (MeshControl's `APIStreamServer`).
public final class ControlServer: @unchecked Sendable {
    let fd: Int32
    let name: String
    /// Read for each new connection, so credentials can be swapped while serving.
    private let contextProvider: @Sendable () -> TLSContext?
    private let handler: @Sendable (ControlRequest) -> ControlResponse
    private let active = Atomic<Int>(0)
    private let perIP = Locked<[String: Int]>([:])
    /// Bounds on threads (every connection also has its deadlines).
    static let maxConnections = 4096
    /// Connections one client address may hold at once (a node may run many sidecars).
    static let maxPerClient = 1024
    /// Time for the TLS handshake plus a whole request, and for each later keep-alive request.
    static let requestDeadline: UInt64 = 10_000_000_000

    private func leave(_ ip: String) {
        active.subtract(1, ordering: .relaxed)
        perIP.withLock { m in
            let n = m[ip, default: 1] - 1
            if n <= 0 { m.removeValue(forKey: ip) } else { m[ip] = n }
        }
    }

    /// The numeric address of a socket's peer ("?" when it has none).
    public static func peerIP(_ fd: Int32) -> String {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) } }
        if rc != 0 { return "?" }
        var host = [CChar](repeating: 0, count: 64)
        _ = withUnsafePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            getnameinfo($0, len, &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST)
        } }
        return String(cString: host)
    }
    public let port: Int

    /// The largest request body this server reads (a larger one is answered 413), and the
    /// setting that raises it, named in that answer.
    let maxBody: Int
    let maxBodyHint: String

    public init(address: SocketAddress, name: String, context: @escaping @Sendable () -> TLSContext?,
                maxBody: Int = 1 << 20, maxBodyHint: String = "",
                handler: @escaping @Sendable (ControlRequest) -> ControlResponse) throws(CAError) {
        self.maxBody = maxBody
        self.maxBodyHint = maxBodyHint
        let fd = Socket.listen(address, reusePort: false)
        if fd < 0 { throw CAError("cannot listen on \(address) (\(name)): \(Socket.errorText(-fd))") }
        // Blocking accept on this listener.
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags & ~Int32(O_NONBLOCK))
        self.fd = fd
        self.name = name
        self.contextProvider = context
        self.handler = handler
        self.port = Socket.localPort(fd)
    }

    private let stopped = Atomic<Bool>(false)

    /// Stops accepting (the listening socket is closed; `run` returns).
    public func stop() {
        stopped.store(true, ordering: .relaxed)
        shutdown(fd, Int32(SHUT_RDWR))
    }

    /// Accepts connections until `stop` (runs on its own thread).
    public func run() {
        defer { Glibc.close(fd) }
        while !stopped.load(ordering: .relaxed) {
            let c = mesh_accept4(fd)   // non-blocking: every wait below has a deadline
            if stopped.load(ordering: .relaxed) { if c >= 0 { Glibc.close(c) }; return }
            if c < 0 {
                if mesh_errno() == EINTR || mesh_errno() == ECONNABORTED { continue }
                if mesh_errno() == EMFILE || mesh_errno() == ENFILE { usleep(100_000); continue }
                Log.error("control", "\(name): accept failed: \(Socket.errorText(mesh_errno()))")
                usleep(100_000)
                continue
            }
            // Overload: refuse rather than queue without bound, overall and per client address.
            let ip = ControlServer.peerIP(c)
            let admitted = perIP.withLock { m -> Bool in
                if active.load(ordering: .relaxed) >= ControlServer.maxConnections || m[ip, default: 0] >= ControlServer.maxPerClient { return false }
                m[ip, default: 0] += 1
                return true
            }
            if !admitted { Glibc.close(c); continue }
            active.add(1, ordering: .relaxed)
            let ctx = contextProvider()
            let started = Threads.trySpawnDetached { [self] in
                defer { leave(ip) }
                serve(c, ctx)
            }
            if !started { Glibc.close(c); leave(ip) }
        }
    }

    /// Serves requests on one connection (keep-alive, at most 100,000; each within the request
    /// deadline) until the client closes.
    private func serve(_ fd: Int32, _ ctx: TLSContext?) {
        guard let s = ControlStream.accepted(fd: fd, context: ctx, deadline: Clock.monotonicNanos() + ControlServer.requestDeadline) else { return }
        var peer: String? = nil
        var peerInfo: CertificateInfo? = nil
        if let cert = s.peerCertificate {
            if let ssl = s.ssl, SSL_get_verify_result(ssl) == X509_V_OK {
                peer = X509Info.spiffeID(cert)
                peerInfo = X509Info.info(cert)
            }
            X509_free(cert)
        }
        for i in 0..<100_000 {
            if i > 0 { s.deadline = Clock.monotonicNanos() + ControlServer.requestDeadline }
            let head: HTTPHead, buf: ByteBuffer, body: [UInt8]
            switch s.readMessage(request: true, maxBody: maxBody) {
            case .message(let h, let b, let bd): (head, buf, body) = (h, b, bd)
            case .failed: return
            case .tooLarge(let length, let drained):
                let r = ControlResponse(413, "request body of \(length) bytes is over this server's limit of \(maxBody) bytes\(maxBodyHint)\n")
                if drained { _ = s.write(ControlServer.encode(r, close: true)) }
                return
            }
            var request = ControlRequest(head: head, base: buf.base, body: body, peerIdentity: peer)
            let close = !head.keepAlive
            if let i = peerInfo { request.peerNotAfter = i.notAfter; request.peerIssuer = i.issuer }
            request.clientConnected = { [fd = s.fd] in ControlStream.peerConnected(fd) }
            let response = handler(request)
            // A handler may wait (a config stream); the answer gets its own deadline.
            s.deadline = Clock.monotonicNanos() + ControlServer.requestDeadline
            guard s.write(ControlServer.encode(response, close: close)), !close else { return }
        }
    }

    /// A response as bytes on the wire (`close`: with `connection: close`, the last on its connection).
    public static func encode(_ r: ControlResponse, close: Bool = true) -> [UInt8] {
        let body = Array(r.body.utf8)
        let reason = r.status < 300 ? "OK" : r.status < 500 ? "Client Error" : "Server Error"
        let conn = close ? "connection: close\r\n" : ""
        let extra = r.headers.map { "\($0.0): \($0.1)\r\n" }.joined()
        return Array("HTTP/1.1 \(r.status) \(reason)\r\ncontent-type: \(r.contentType)\r\n\(extra)content-length: \(body.count)\r\n\(conn)\r\n".utf8) + body
    }

    public static func percentDecode(_ s: String) -> String {
        var out: [UInt8] = []
        var it = Array(s.utf8).makeIterator()
        while let c = it.next() {
            if c == UInt8(ascii: "%"), let h = it.next(), let l = it.next(), let v = UInt8(String(decoding: [h, l], as: UTF8.self), radix: 16) {
                out.append(v)
            } else if c == UInt8(ascii: "+") {
                out.append(32)
            } else {
                out.append(c)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// One blocking request to a control-plane server (meshctl, and the sidecar asking for certificates).
public enum ControlClient {
    /// `expectPeer`: over TLS, the SPIFFE ID the server must present (checked before anything is sent).
    /// `verifyIP`: over TLS, the IP address the server's certificate must name.
    public static func request(_ address: SocketAddress, context: TLSContext?, method: String, path: String,
                               headers: [(String, String)] = [], body: String = "", timeoutSeconds: Int = 10,
                               expectPeer: String? = nil, verifyIP: String? = nil) throws(CAError) -> (status: Int, body: String) {
        let s = try ControlStream.connect(address, context: context, timeoutSeconds: timeoutSeconds, verifyIP: verifyIP)
        if let want = expectPeer {
            guard let cert = s.peerCertificate else { throw CAError("\(address) presented no certificate") }
            let got = X509Info.spiffeID(cert) ?? "(no SPIFFE ID)"
            X509_free(cert)
            guard got == want else { throw CAError("\(address) is \(got), not meshd (\(want)); refusing to send it a token or a CSR") }
        }
        var text = "\(method) \(path) HTTP/1.1\r\ncontent-length: \(body.utf8.count)\r\nconnection: close\r\n"
        if !headers.contains(where: { $0.0.lowercased() == "host" }) { text += "host: \(address)\r\n" }
        for (k, v) in headers { text += "\(k): \(v)\r\n" }
        text += "\r\n" + body
        // A server that refuses the request early (413) may still answer: read before giving up.
        let sent = s.write(Array(text.utf8))
        if !sent, case .message(let head, _, let rbody) = s.readMessage(request: false, maxBody: 256 << 20) {
            return (head.status, String(decoding: rbody, as: UTF8.self))
        }
        guard sent else { throw CAError("\(address): write failed") }
        guard case .message(let head, _, let rbody) = s.readMessage(request: false, maxBody: 256 << 20) else {
            var e = CAError("\(address): no valid HTTP response")
            e.afterSend = true
            throw e
        }
        return (head.status, String(decoding: rbody, as: UTF8.self))
    }

    public static func percentEncode(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            if (b >= 48 && b <= 57) || (b >= 65 && b <= 90) || (b >= 97 && b <= 122) || b == 45 || b == 46 || b == 95 || b == 126 {
                out.unicodeScalars.append(Unicode.Scalar(b))
            } else {
                out += "%" + (b < 16 ? "0" : "") + String(b, radix: 16, uppercase: true)
            }
        }
        return out
    }
}

/// Where a client such as meshctl reaches a control server: plain HTTP, or TLS whose server
/// certificate must chain to a given root and name the dialed IP as an IP SAN (meshd's admin
/// port off loopback, DESIGN §10). The client presents no certificate.
public struct ControlEndpoint: Sendable {
    public let address: SocketAddress
    let context: TLSContext?
    let verifyIP: String?

    /// Plain HTTP.
    public init(plain address: SocketAddress) {
        self.address = address
        context = nil
        verifyIP = nil
    }

    /// TLS to `host` (an IP, brackets allowed) and `port`, trusting only the roots in `rootPEM`
    /// (read from `rootFile`, named in errors).
    public init(tls host: String, port: Int, rootPEM: String, rootFile: String) throws(CAError) {
        let ip = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        guard let a = SocketAddress(host: ip, port: port) else { throw CAError("\(host): expected an IP address") }
        guard rootPEM.contains("BEGIN CERTIFICATE") else { throw CAError("\(rootFile): no PEM certificate there") }
        var o = TLSContext.Options(certChainFile: "(none)", privateKeyFile: "(none)", trustBundleFile: rootFile)
        o.withoutCertificate = true
        o.trustBundlePEM = rootPEM
        o.alpn = ["http/1.1"]
        do { context = try TLSContext(role: .client, options: o) } catch { throw CAError("\(rootFile): \(error)") }
        address = a
        verifyIP = ip
    }

    public var isTLS: Bool { context != nil }

    /// One request (see `ControlClient.request`).
    public func request(method: String, path: String, headers: [(String, String)] = [], body: String = "",
                        timeoutSeconds: Int = 10) throws(CAError) -> (status: Int, body: String) {
        try ControlClient.request(address, context: context, method: method, path: path, headers: headers, body: body,
                                  timeoutSeconds: timeoutSeconds, verifyIP: verifyIP)
    }
}
