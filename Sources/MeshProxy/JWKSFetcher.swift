#if canImport(Glibc)
import Glibc
#endif
import CMeshShims
import COpenSSL
import MeshConfig
import MeshCore
import MeshIO

/// RequestAuthentication `jwksUri`: key sets fetched over http:// or https:// on one background
/// thread of their own (never a worker loop), kept in a process-wide cache, and refreshed every
/// `refreshSeconds` (5 minutes, Envoy's default cache duration; `MESH_JWKS_REFRESH_SECONDS`
/// overrides it), 5 seconds after a failed fetch. When a set arrives or changes, the snapshot
/// in force is compiled again with it (the keys live in the snapshot's `JWTTable`, as inline
/// ones do); a set that fails to fetch or to parse leaves the last good one in force. Until a
/// URI's first fetch succeeds, tokens of its issuer are refused (401), as Envoy does.
///
/// https: the server's certificate is verified against the system trust store and the URI's
/// host name; a private CA is trusted through OpenSSL's `SSL_CERT_FILE` / `SSL_CERT_DIR`
/// environment variables in the sidecar's environment.
public final class JWKSFetcher: @unchecked Sendable {
    public static let shared = JWKSFetcher()

    private let lock = PlainLock()
    private var sets: [String: JSONWebKeySet] = [:]
    /// Bumped whenever `sets` changes; a snapshot compiled with an older one is compiled again.
    private var generation = 0
    private var due: [String: UInt64] = [:]
    private weak var server: ProxyServer?
    private var latest: ProxySnapshot?
    private var started = false
    let refreshSeconds: UInt64
    /// When the snapshot may be compiled again after a failed compile (run's thread only).
    private var backoff = RecompileBackoff()

    /// A failed recompile (a certificate file gone, say) is tried again after 1 s, then 2 s,
    /// 4 s ... at most 30 s apart, not every pass of the loop; a success starts over. It holds
    /// back only these recompiles: DNS changes and config pushes compile on their own (and a
    /// snapshot they put in force carries the key sets too).
    struct RecompileBackoff {
        static let first: UInt64 = 1_000_000_000
        static let limit: UInt64 = 30_000_000_000
        private(set) var delay: UInt64 = 0
        private(set) var notBefore: UInt64 = 0

        func due(_ now: UInt64) -> Bool { now >= notBefore }
        mutating func failed(_ now: UInt64) {
            delay = delay == 0 ? Self.first : min(delay * 2, Self.limit)
            notBefore = now + delay
        }
        mutating func succeeded() { delay = 0; notBefore = 0 }
    }

    init() {
        if let v = getenv("MESH_JWKS_REFRESH_SECONDS"), let n = UInt64(String(cString: v)), n > 0 { refreshSeconds = n } else { refreshSeconds = 300 }
    }

    /// The key sets fetched so far, by URI (snapshot compilation).
    func current() -> (sets: [String: JSONWebKeySet], generation: Int) {
        lock.lock(); defer { lock.unlock() }
        return (sets, generation)
    }

    /// `server` puts `snapshot` in force: its URIs are fetched from now on. Called under
    /// the server's snapshot lock (so a recompiled snapshot never replaces a newer one).
    func track(_ server: ProxyServer, _ snapshot: ProxySnapshot) {
        lock.lock()
        self.server = server
        latest = snapshot
        let uris = snapshot.jwt?.uris ?? []
        let start = !uris.isEmpty && !started
        if start { started = true }
        lock.unlock()
        if start { Threads.spawnDetached { [self] in run() } }
    }

    private func run() {
        while true {
            lock.lock()
            let uris = latest?.jwt?.uris ?? []
            let now = Clock.monotonicNanos()
            let todo = uris.filter { (due[$0] ?? 0) <= now }
            lock.unlock()
            var changed = false
            for u in todo {
                var next = now + refreshSeconds * 1_000_000_000
                switch JWKSFetcher.fetch(u) {
                case .success(let text):
                    do throws(JSONWebKeySet.ParseError) {
                        let set = try JSONWebKeySet.parse(text)
                        lock.lock()
                        if sets[u]?.text != set.text { sets[u] = set; generation += 1; changed = true }
                        lock.unlock()
                        if changed { Log.info("jwks", "\(u): \(set.keys.count) key(s) in force") }
                    } catch {
                        Log.error("jwks", "\(u): refused, the keys in force stay: \(error.message)")
                        next = now + 5_000_000_000
                    }
                case .failure(let why):
                    Log.error("jwks", "\(u): fetch failed, the keys in force stay: \(why.text)")
                    next = now + 5_000_000_000
                }
                lock.lock(); due[u] = next; lock.unlock()
            }
            // Also when a snapshot put in force meanwhile was compiled before the last change.
            lock.lock()
            let stale = (latest?.jwt).map { !$0.uris.isEmpty && $0.generation != generation } ?? false
            lock.unlock()
            if (changed || stale) && backoff.due(now) {
                if recompile() { backoff.succeeded() } else {
                    backoff.failed(Clock.monotonicNanos())
                    Log.warn("jwks", "compiling the config with new key sets failed: next try in \(backoff.delay / 1_000_000_000) s")
                }
            }
            usleep(500_000)
        }
    }

    /// The snapshot in force compiled again with the key sets now cached (through the server,
    /// under the lock every snapshot goes out under).
    private func recompile() -> Bool {
        lock.lock()
        let srv = server
        lock.unlock()
        return srv?.keysChanged() ?? true
    }

    /// Why a fetch failed, for the log.
    struct FetchError: Error { let text: String }

    /// One GET (HTTP/1.0, so the body ends with the connection), 5 s per step, the body bounded.
    static func fetch(_ uri: String) -> Result<String, FetchError> {
        guard let loc = JWKSLocation(uri) else { return .failure(FetchError(text: "not a URL")) }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>? = nil
        let rc = getaddrinfo(loc.host, String(loc.port), &hints, &res)
        guard rc == 0, let first = res else { return .failure(FetchError(text: "cannot resolve \(loc.host)")) }
        defer { freeaddrinfo(res) }
        var fd: Int32 = -1
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            let s = socket(a.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            if s >= 0 {
                var tv = timeval(tv_sec: 5, tv_usec: 0)
                setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                if connect(s, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 { fd = s; break }
                close(s)
            }
            ai = a.pointee.ai_next
        }
        guard fd >= 0 else { return .failure(FetchError(text: "cannot connect to \(loc.host):\(loc.port)")) }
        defer { close(fd) }
        var ssl: OpaquePointer? = nil
        var ctx: OpaquePointer? = nil
        defer { if let ssl { SSL_free(ssl) }; if let ctx { SSL_CTX_free(ctx) } }
        if loc.tls {
            ctx = SSL_CTX_new(TLS_client_method())
            guard let ctx, SSL_CTX_set_default_verify_paths(ctx) == 1 else { return .failure(FetchError(text: "no TLS context")) }
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
            ssl = SSL_new(ctx)
            guard let ssl else { return .failure(FetchError(text: "SSL_new failed")) }
            SSL_set_fd(ssl, fd)
            // SNI (SSL_set_tlsext_host_name is a macro) and the name the certificate must carry.
            _ = SSL_ctrl(ssl, 55 /* SSL_CTRL_SET_TLSEXT_HOSTNAME */, 0 /* TLSEXT_NAMETYPE_host_name */, UnsafeMutableRawPointer(mutating: loc.host))
            var v4 = in_addr(), v6 = in6_addr()
            if inet_pton(AF_INET, loc.host, &v4) == 1 || inet_pton(AF_INET6, loc.host, &v6) == 1 {
                _ = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), loc.host)
            } else {
                _ = SSL_set1_host(ssl, loc.host)
            }
            if SSL_connect(ssl) != 1 {
                let v = SSL_get_verify_result(ssl)
                let why = v != X509_V_OK ? String(cString: X509_verify_cert_error_string(v)) : "handshake failed"
                ERR_clear_error()
                return .failure(FetchError(text: "TLS with \(loc.host): \(why)"))
            }
        }
        let hostHeader = loc.host.contains(":") ? "[\(loc.host)]" : loc.host
        let req = Array("GET \(loc.path) HTTP/1.0\r\nHost: \(hostHeader)\r\nAccept: application/json\r\nUser-Agent: mesh-sidecar\r\n\r\n".utf8)
        let sent = req.withUnsafeBytes { b -> Bool in
            var off = 0
            while off < b.count {
                let n = ssl.map { Int(SSL_write($0, b.baseAddress! + off, Int32(b.count - off))) } ?? write(fd, b.baseAddress! + off, b.count - off)
                if n <= 0 { return false }
                off += n
            }
            return true
        }
        guard sent else { return .failure(FetchError(text: "write failed")) }
        let limit = JSONWebKeySet.maxBytes + 16 * 1024
        var data: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 16 * 1024)
        while data.count <= limit {
            let n = buf.withUnsafeMutableBytes { b in ssl.map { Int(SSL_read($0, b.baseAddress!, Int32(b.count))) } ?? read(fd, b.baseAddress!, b.count) }
            if n <= 0 { break }
            data.append(contentsOf: buf[0..<n])
        }
        ERR_clear_error()
        guard data.count <= limit else { return .failure(FetchError(text: "the answer is over \(limit) bytes")) }
        // Status line, headers, body.
        guard let end = JWKSFetcher.headEnd(data) else { return .failure(FetchError(text: "no complete HTTP answer")) }
        let head = String(decoding: data[0..<end], as: UTF8.self)
        let statusLine = head.split(separator: "\r\n", maxSplits: 1).first ?? ""
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]) else {
            return .failure(FetchError(text: "not an HTTP answer"))
        }
        guard status == 200 else { return .failure(FetchError(text: "status \(status)")) }
        if head.lowercased().contains("\r\ntransfer-encoding:") { return .failure(FetchError(text: "a framed (chunked) body to an HTTP/1.0 request")) }
        var body = Array(data[(end + 4)...])
        if let cl = head.lowercased().split(separator: "\r\n").first(where: { $0.hasPrefix("content-length:") }),
           let n = Int(cl.dropFirst(15).trimmingCharacters(in: " \t")) {
            guard body.count >= n else { return .failure(FetchError(text: "the body ended early")) }
            body = Array(body[0..<n])
        }
        return .success(String(decoding: body, as: UTF8.self))
    }

    static func headEnd(_ d: [UInt8]) -> Int? {
        guard d.count >= 4 else { return nil }
        for i in 0...(d.count - 4) where d[i] == 13 && d[i + 1] == 10 && d[i + 2] == 13 && d[i + 3] == 10 { return i }
        return nil
    }
}

private extension Substring {
    func trimmingCharacters(in set: String) -> String {
        var s = self
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return String(s)
    }
}
