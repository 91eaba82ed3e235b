import CMeshShims
import COpenSSL
import MeshCore
import MeshHTTP
import MeshTLS
#if canImport(Glibc)
import Glibc
#endif

/// One HTTPS POST to the Kubernetes API with an absolute deadline on every step (connect, TLS
/// handshake, request, answer): a non-blocking socket driven by poll, the server's certificate
/// verified against the given CA and checked to name the host dialed (an IP SAN for an address,
/// a DNS SAN for a name, sent as SNI too). The answer's head is read by the proxy's strict
/// HTTP/1.1 parser; its body, Content-Length or chunked, is bounded. Runs on a worker thread
/// (it blocks); never on an event loop.
struct KubeHTTPS {
    /// Why a request failed, for the refusal meshd logs and answers.
    struct Failure: Error, Equatable { let reason: String }

    let fd: Int32
    let ssl: OpaquePointer
    let deadline: UInt64

    /// The addresses of `host` (an IP address is its own; a name asks the resolver, which has
    /// no deadline of its own: the system's resolver timeouts apply).
    static func resolve(_ host: String, port: Int, isIP: Bool) throws(Failure) -> [SocketAddress] {
        if isIP {
            guard let a = SocketAddress(host: host, port: port) else { throw Failure(reason: "\(host) is not an IP address") }
            return [a]
        }
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>? = nil
        let rc = getaddrinfo(host, String(port), &hints, &res)
        guard rc == 0 else { throw Failure(reason: "cannot resolve \(host): \(String(cString: gai_strerror(rc)))") }
        defer { freeaddrinfo(res) }
        var out: [SocketAddress] = []
        var p = res
        while let ai = p {
            var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
            let family = ai.pointee.ai_family
            let ok: Bool = ai.pointee.ai_addr.withMemoryRebound(to: UInt8.self, capacity: 1) { raw in
                if family == AF_INET {
                    return raw.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { s in
                        var a = s.pointee.sin_addr
                        return inet_ntop(AF_INET, &a, &buf, socklen_t(buf.count)) != nil
                    }
                }
                if family == AF_INET6 {
                    return raw.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { s in
                        var a = s.pointee.sin6_addr
                        return inet_ntop(AF_INET6, &a, &buf, socklen_t(buf.count)) != nil
                    }
                }
                return false
            }
            if ok, let a = SocketAddress(host: String(decoding: buf.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self), port: port), !out.contains(a) { out.append(a) }
            p = ai.pointee.ai_next
        }
        if out.isEmpty { throw Failure(reason: "\(host) has no IPv4 or IPv6 address") }
        return out
    }

    /// Waits until `fd` is ready for `events` or the deadline passes.
    static func wait(_ fd: Int32, _ events: Int16, deadline: UInt64) throws(Failure) {
        while true {
            let now = Clock.monotonicNanos()
            if now >= deadline { throw Failure(reason: "timed out") }
            var p = pollfd(fd: fd, events: events, revents: 0)
            let rc = poll(&p, 1, Int32(min((deadline - now) / 1_000_000 + 1, 60_000)))
            if rc > 0 { return }
            if rc < 0 && errno != EINTR { throw Failure(reason: "poll: \(String(cString: strerror(errno)))") }
        }
    }

    /// Connects to `host:port` and completes the TLS handshake before `deadline`.
    static func open(host: String, port: Int, isIP: Bool, context: TLSContext, deadline: UInt64) throws(Failure) -> KubeHTTPS {
        var last = Failure(reason: "no address")
        for a in try resolve(host, port: port, isIP: isIP) {
            let fd = socket(a.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            if fd < 0 { throw Failure(reason: "socket: \(String(cString: strerror(errno)))") }
            var addr = a
            let rc = withUnsafePointer(to: &addr.storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, addr.length) } }
            if rc != 0 {
                let e = errno
                guard e == EINPROGRESS else { Glibc.close(fd); last = Failure(reason: "cannot connect to \(a): \(String(cString: strerror(e)))"); continue }
                do { try wait(fd, Int16(POLLOUT), deadline: deadline) } catch {
                    Glibc.close(fd)
                    last = Failure(reason: "cannot connect to \(a): timed out")
                    continue
                }
                var err: Int32 = 0
                var len = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
                if err != 0 { Glibc.close(fd); last = Failure(reason: "cannot connect to \(a): \(String(cString: strerror(err)))"); continue }
            }
            return try handshake(fd: fd, host: host, isIP: isIP, context: context, deadline: deadline)
        }
        throw last
    }

    private static func handshake(fd: Int32, host: String, isIP: Bool, context: TLSContext, deadline: UInt64) throws(Failure) -> KubeHTTPS {
        guard let ssl = SSL_new(context.ctx) else { Glibc.close(fd); throw Failure(reason: "SSL_new failed") }
        SSL_set_fd(ssl, fd)
        let param = SSL_get0_param(ssl)
        let checked = isIP ? X509_VERIFY_PARAM_set1_ip_asc(param, host) : X509_VERIFY_PARAM_set1_host(param, host, 0)
        if checked != 1 || (!isIP && mesh_SSL_set_tlsext_host_name(ssl, host) != 1) {
            SSL_free(ssl); Glibc.close(fd)
            throw Failure(reason: "cannot check a certificate against \(host)")
        }
        let c = KubeHTTPS(fd: fd, ssl: ssl, deadline: deadline)
        do {
            _ = try c.sslCall { SSL_connect(ssl) }
        } catch {
            var reason = error.reason
            let v = SSL_get_verify_result(ssl)
            if v != X509_V_OK, let s = X509_verify_cert_error_string(v) {
                reason = "the apiserver's certificate was refused: \(String(cString: s))"
                    + (v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH ? " (it does not name \(host))" : " (not from the --kube-ca CA?)")
            }
            c.close()
            throw Failure(reason: "TLS: \(reason)")
        }
        return c
    }

    /// Runs an OpenSSL call until it completes, waiting on the socket as it asks (deadline bound).
    private func sslCall(_ call: () -> Int32) throws(Failure) -> Int32 {
        while true {
            ERR_clear_error()
            let r = call()
            if r > 0 { return r }
            switch SSL_get_error(ssl, r) {
            case SSL_ERROR_WANT_READ: try KubeHTTPS.wait(fd, Int16(POLLIN), deadline: deadline)
            case SSL_ERROR_WANT_WRITE: try KubeHTTPS.wait(fd, Int16(POLLOUT), deadline: deadline)
            case SSL_ERROR_ZERO_RETURN: return 0
            case SSL_ERROR_SYSCALL where r == 0: return 0
            default:
                let why = OpenSSLErrors.drain()
                throw Failure(reason: why.isEmpty ? "connection failed" : why)
            }
        }
    }

    func close() {
        SSL_free(ssl)
        Glibc.close(fd)
    }

    /// Sends `request` (the whole HTTP/1.1 text) and reads one answer: (status, body).
    /// `maxBody`: a longer body is a failure, read no further.
    func exchange(_ request: [UInt8], maxBody: Int) throws(Failure) -> (status: Int, body: [UInt8]) {
        var off = 0
        while off < request.count {
            let at = off
            let n = try sslCall { request.withUnsafeBytes { SSL_write(ssl, $0.baseAddress! + at, Int32($0.count - at)) } }
            if n <= 0 { throw Failure(reason: "connection closed while sending") }
            off += Int(n)
        }
        let buf = ByteBuffer(capacity: 16384)
        var parser = HTTP1Parser()
        var head = HTTPHead()
        // The head (interim 1xx answers skipped).
        while true {
            if buf.readableBytes > 0 {
                switch parser.parseResponse(buf.base, start: buf.readIndex, end: buf.writeIndex, into: &head) {
                case .complete:
                    if head.status >= 100 && head.status < 200 {
                        buf.readIndex = head.headEnd
                        parser = HTTP1Parser(); head = HTTPHead()
                        continue
                    }
                case .error(let e): throw Failure(reason: "malformed HTTP answer (\(e.reason))")
                case .incomplete:
                    if buf.readableBytes > 65536 { throw Failure(reason: "answer head over 64 KiB") }
                    if try !fill(buf) { throw Failure(reason: buf.readableBytes == 0 ? "connection closed without an answer" : "connection closed in the answer's head") }
                    continue
                }
                break
            }
            if try !fill(buf) { throw Failure(reason: "connection closed without an answer") }
        }
        buf.readIndex = head.headEnd
        var body: [UInt8] = []
        func take(_ n: Int) throws(Failure) {
            if body.count + n > maxBody { throw Failure(reason: "answer body over \(maxBody) bytes") }
            body.append(contentsOf: UnsafeBufferPointer(start: buf.base + buf.readIndex, count: n))
        }
        if head.chunked {
            var dec = ChunkedDecoder()
            while !dec.isDone {
                if buf.readableBytes == 0 {
                    if try !fill(buf) { throw Failure(reason: "connection closed in the answer's body") }
                    continue
                }
                switch dec.next(buf.base + buf.readIndex, buf.readableBytes) {
                case .data(let n): try take(n); buf.readIndex += n
                case .framing(let n), .end(let n), .needMore(let n): buf.readIndex += n
                case .error(let e): throw Failure(reason: "malformed chunked body (\(e))")
                }
            }
        } else if head.contentLength >= 0 {
            let length = Int(head.contentLength)
            if length > maxBody { throw Failure(reason: "answer body of \(length) bytes is over \(maxBody) bytes") }
            while body.count < length {
                if buf.readableBytes == 0, try !fill(buf) { throw Failure(reason: "connection closed in the answer's body") }
                let n = min(buf.readableBytes, length - body.count)
                try take(n)
                buf.readIndex += n
            }
        } else {
            // No length: the body ends when the connection does.
            while true {
                if buf.readableBytes > 0 { let n = buf.readableBytes; try take(n); buf.readIndex += n }
                if try !fill(buf) { break }
            }
        }
        return (head.status, body)
    }

    /// Reads more bytes into `buf`; false at the end of the stream.
    private func fill(_ buf: ByteBuffer) throws(Failure) -> Bool {
        if buf.readIndex == buf.writeIndex { buf.clear() }
        buf.reserve(8192)
        let n = try sslCall { SSL_read(ssl, buf.writePointer, Int32(buf.writableBytes)) }
        if n <= 0 { return false }
        buf.commit(Int(n))
        return true
    }
}
