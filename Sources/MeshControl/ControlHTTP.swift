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

/// A blocking byte stream for the control plane (a thread per connection): plain TCP or TLS.
public final class ControlStream {
    let fd: Int32
    let ssl: OpaquePointer?

    init(fd: Int32, ssl: OpaquePointer?) { self.fd = fd; self.ssl = ssl }

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

    /// A server-side stream on an accepted socket (TLS handshake done when `context` is given).
    static func accepted(fd: Int32, context: TLSContext?) -> ControlStream? {
        setTimeouts(fd, seconds: 10)
        guard let ctx = context else { return ControlStream(fd: fd, ssl: nil) }
        guard let ssl = SSL_new(ctx.ctx) else { Glibc.close(fd); return nil }
        SSL_set_fd(ssl, fd)
        if SSL_accept(ssl) != 1 {
            ERR_clear_error()
            SSL_free(ssl)
            Glibc.close(fd)
            return nil
        }
        return ControlStream(fd: fd, ssl: ssl)
    }

    /// Connects (blocking, with a timeout) to `address`, over TLS when `context` is given.
    public static func connect(_ address: SocketAddress, context: TLSContext?, timeoutSeconds: Int = 10) throws(CAError) -> ControlStream {
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
        if SSL_connect(ssl) != 1 {
            let why = OpenSSLErrors.drain()
            var reason = why
            let v = SSL_get_verify_result(ssl)
            if v != X509_V_OK, let s = X509_verify_cert_error_string(v) { reason = String(cString: s) }
            SSL_free(ssl)
            Glibc.close(fd)
            throw CAError("TLS with \(address) failed: \(reason)")
        }
        return ControlStream(fd: fd, ssl: ssl)
    }

    /// The peer's certificate (TLS, when it sent one), owned by the caller.
    var peerCertificate: OpaquePointer? {
        guard let s = ssl else { return nil }
        return SSL_get1_peer_certificate(s)
    }

    func read(_ buf: UnsafeMutableRawPointer, _ n: Int) -> Int {
        if let s = ssl {
            let r = SSL_read(s, buf, Int32(n))
            return r > 0 ? Int(r) : (SSL_get_error(s, r) == SSL_ERROR_ZERO_RETURN ? 0 : -1)
        }
        return Glibc.read(fd, buf, n)
    }

    func write(_ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { b -> Int in
                if let s = ssl { let r = SSL_write(s, b.baseAddress! + off, Int32(b.count - off)); return r > 0 ? Int(r) : -1 }
                return Glibc.write(fd, b.baseAddress! + off, b.count - off)
            }
            if n <= 0 { return false }
            off += n
        }
        return true
    }

    /// Reads one HTTP/1.1 message (request or response) with a Content-Length body (max 1 MiB).
    func readMessage(request: Bool) -> (head: HTTPHead, buffer: ByteBuffer, body: [UInt8])? {
        let buf = ByteBuffer(capacity: 8192)
        var parser = HTTP1Parser()
        var head = HTTPHead()
        while true {
            buf.reserve(4096)
            let n = read(buf.writePointer, buf.writableBytes)
            if n <= 0 { return nil }
            buf.commit(n)
            let r = request ? parser.parseRequest(buf.base, start: 0, end: buf.writeIndex, into: &head)
                            : parser.parseResponse(buf.base, start: 0, end: buf.writeIndex, into: &head)
            if case .complete = r { break }
            if case .error = r { return nil }
            if buf.readableBytes > 65536 { return nil }
        }
        let length = max(0, Int(head.contentLength))
        if length > 1 << 20 { return nil }
        while buf.writeIndex - head.headEnd < length {
            buf.reserve(length)
            let n = read(buf.writePointer, buf.writableBytes)
            if n <= 0 { return nil }
            buf.commit(n)
        }
        let body = Array(UnsafeBufferPointer(start: buf.base + head.headEnd, count: length))
        return (head, buf, body)
    }
}

/// A request to a control-plane server, as its handler sees it.
public struct ControlRequest {
    public let method: String
    public let path: String
    public let query: [String: String]
    public let headers: [String: String]
    public let body: [UInt8]
    /// The caller's SPIFFE ID when it presented a certificate that the server's trust bundle verified.
    public let peerIdentity: String?
    public var bodyText: String { String(decoding: body, as: UTF8.self) }
}

/// A response from a handler.
public struct ControlResponse {
    public var status: Int
    public var body: String
    public var contentType = "text/plain"
    public init(_ status: Int, _ body: String, contentType: String = "text/plain") {
        self.status = status; self.body = body; self.contentType = contentType
    }
}

/// A small blocking HTTP/1.1 server for the control plane: one request per connection, a thread
/// per connection (bounded), plain or TLS. Not the data path; simplicity over throughput.
public final class ControlServer: @unchecked Sendable {
    let fd: Int32
    let name: String
    /// Read for each new connection, so credentials can be swapped while serving.
    private let contextProvider: @Sendable () -> TLSContext?
    private let handler: @Sendable (ControlRequest) -> ControlResponse
    private let active = Atomic<Int>(0)
    static let maxConnections = 256
    public let port: Int

    public init(address: SocketAddress, name: String, context: @escaping @Sendable () -> TLSContext?,
                handler: @escaping @Sendable (ControlRequest) -> ControlResponse) throws(CAError) {
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
            let c = mesh_accept4(fd)
            if c >= 0 { _ = fcntl(c, F_SETFL, fcntl(c, F_GETFL) & ~Int32(O_NONBLOCK)) }
            if stopped.load(ordering: .relaxed) { if c >= 0 { Glibc.close(c) }; return }
            if c < 0 {
                if mesh_errno() == EINTR || mesh_errno() == ECONNABORTED { continue }
                if mesh_errno() == EMFILE || mesh_errno() == ENFILE { usleep(100_000); continue }
                Log.error("control", "\(name): accept failed: \(Socket.errorText(mesh_errno()))")
                usleep(100_000)
                continue
            }
            if active.load(ordering: .relaxed) >= ControlServer.maxConnections {
                Glibc.close(c)   // overload: refuse rather than queue without bound
                continue
            }
            active.add(1, ordering: .relaxed)
            let ctx = contextProvider()
            Threads.spawnDetached { [self] in
                defer { active.subtract(1, ordering: .relaxed) }
                serve(c, ctx)
            }
        }
    }

    /// Serves requests on one connection (keep-alive, at most 100,000) until the client closes.
    private func serve(_ fd: Int32, _ ctx: TLSContext?) {
        guard let s = ControlStream.accepted(fd: fd, context: ctx) else { return }
        var peer: String? = nil
        if let cert = s.peerCertificate {
            if let ssl = s.ssl, SSL_get_verify_result(ssl) == X509_V_OK { peer = X509Info.spiffeID(cert) }
            X509_free(cert)
        }
        for _ in 0..<100_000 {
            guard let (head, buf, body) = s.readMessage(request: true) else { return }
            let b = buf.base
            let method = String(decoding: UnsafeBufferPointer(start: b + head.methodStart, count: head.methodEnd - head.methodStart), as: UTF8.self)
            let target = String(decoding: UnsafeBufferPointer(start: b + head.targetStart, count: head.targetEnd - head.targetStart), as: UTF8.self)
            var path = target
            var query: [String: String] = [:]
            if let q = target.firstIndex(of: "?") {
                path = String(target[..<q])
                for kv in target[target.index(after: q)...].split(separator: "&") {
                    let p = kv.split(separator: "=", maxSplits: 1)
                    query[ControlServer.percentDecode(String(p[0]))] = p.count > 1 ? ControlServer.percentDecode(String(p[1])) : ""
                }
            }
            var headers: [String: String] = [:]
            for f in head.fields {
                let n = String(decoding: UnsafeBufferPointer(start: b + Int(f.lineStart), count: Int(f.nameEnd - f.lineStart)), as: UTF8.self).lowercased()
                headers[n] = String(decoding: UnsafeBufferPointer(start: b + Int(f.valueStart), count: Int(f.valueEnd - f.valueStart)), as: UTF8.self)
            }
            let close = !head.keepAlive
            let response = handler(ControlRequest(method: method, path: path, query: query, headers: headers, body: body, peerIdentity: peer))
            guard s.write(ControlServer.encode(response, close: close)), !close else { return }
        }
    }

    static func encode(_ r: ControlResponse, close: Bool = true) -> [UInt8] {
        let body = Array(r.body.utf8)
        let reason = r.status < 300 ? "OK" : r.status < 500 ? "Client Error" : "Server Error"
        let conn = close ? "connection: close\r\n" : ""
        return Array("HTTP/1.1 \(r.status) \(reason)\r\ncontent-type: \(r.contentType)\r\ncontent-length: \(body.count)\r\n\(conn)\r\n".utf8) + body
    }

    static func percentDecode(_ s: String) -> String {
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
    public static func request(_ address: SocketAddress, context: TLSContext?, method: String, path: String,
                               headers: [(String, String)] = [], body: String = "", timeoutSeconds: Int = 10) throws(CAError) -> (status: Int, body: String) {
        let s = try ControlStream.connect(address, context: context, timeoutSeconds: timeoutSeconds)
        var text = "\(method) \(path) HTTP/1.1\r\nhost: \(address)\r\ncontent-length: \(body.utf8.count)\r\nconnection: close\r\n"
        for (k, v) in headers { text += "\(k): \(v)\r\n" }
        text += "\r\n" + body
        guard s.write(Array(text.utf8)) else { throw CAError("\(address): write failed") }
        guard let (head, _, rbody) = s.readMessage(request: false) else { throw CAError("\(address): no valid HTTP response") }
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
