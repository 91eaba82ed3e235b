import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// Why a request on one connection failed (the client decides from it whether to try another
/// endpoint).
enum WireFailure: Error {
    /// connect refused, reset, broken pipe, and the like (errno).
    case io(Int32, String)
    /// The peer closed the connection; `sawResponse`: some of the answer had arrived.
    case closed(sawResponse: Bool)
    case timeout
    /// The answer broke HTTP/1.1 (a bad status line, header, chunk or length).
    case malformed(String)
    /// The caller's interrupt check said stop.
    case interrupted

    var text: String {
        switch self {
        case .io(_, let what): return what
        case .closed(let saw): return saw ? "connection closed in the middle of the answer" : "connection closed"
        case .timeout: return "timed out"
        case .malformed(let why): return "malformed HTTP answer: \(why)"
        case .interrupted: return "stopped"
        }
    }
}

/// The head of an HTTP/1.1 answer.
struct HTTPAnswerHead {
    var status: Int
    var contentLength: Int?
    var chunked: Bool
    var close: Bool
}

/// A blocking-style HTTP/1.1 connection to one etcd member (plain TCP, non-blocking socket
/// driven by poll so that every wait has a deadline). It sends requests and decodes the answer's
/// body, Content-Length or chunked (trailers skipped), either whole or line by line for
/// streaming answers (watch, lease keepalive). TCP keepalive is short (idle 2 s, 1 s interval, 3
/// probes) and unacknowledged data times out after 5 s, so a member that vanished without a
/// FIN is noticed within seconds even on a quiet watch.
final class EtcdHTTPConnection {
    static let maxHead = 64 << 10
    static let maxBody = 256 << 20

    let fd: Int32
    let endpoint: EtcdEndpoint
    private var buf: [UInt8] = []
    private var start = 0
    /// Decoded body state of the answer being read.
    private var bodyLeft = 0
    private var chunkPhase = ChunkPhase.size
    private var mode = BodyMode.none
    private(set) var responseStarted = false
    /// Whether the last answer allows reuse.
    private(set) var reusable = false

    private enum BodyMode { case none, length, chunked, untilClose, done }
    private enum ChunkPhase { case size, data, dataEnd, trailers }

    private init(fd: Int32, endpoint: EtcdEndpoint) { self.fd = fd; self.endpoint = endpoint }
    deinit { Glibc.close(fd) }

    /// Connects to one of the endpoint's addresses before `deadline` (monotonic ns).
    static func connect(_ endpoint: EtcdEndpoint, deadline: UInt64) throws(WireFailure) -> EtcdHTTPConnection {
        let addresses: [SocketAddress]
        do { addresses = try endpoint.resolve() } catch { throw .io(0, error.message) }
        var last = WireFailure.timeout
        for a in addresses {
            let fd = socket(a.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            if fd < 0 { throw .io(errno, "socket: \(String(cString: strerror(errno)))") }
            let c = EtcdHTTPConnection(fd: fd, endpoint: endpoint)
            setOptions(fd)
            var addr = a
            let rc = withUnsafePointer(to: &addr.storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, addr.length) }
            }
            if rc == 0 { return c }
            let e = errno
            if e != EINPROGRESS { last = .io(e, "connect to \(a): \(String(cString: strerror(e)))"); continue }
            do {
                try c.waitFor(Int16(POLLOUT), deadline: deadline, interrupt: nil)
            } catch {
                last = error
                continue
            }
            var err: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
            if err == 0 { return c }
            last = .io(err, "connect to \(a): \(String(cString: strerror(err)))")
        }
        throw last
    }

    private static func setOptions(_ fd: Int32) {
        func set(_ level: Int32, _ name: Int32, _ v: Int32) {
            var value = v
            setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<Int32>.size))
        }
        set(Int32(IPPROTO_TCP), TCP_NODELAY, 1)
        set(SOL_SOCKET, SO_KEEPALIVE, 1)
        set(Int32(IPPROTO_TCP), TCP_KEEPIDLE, 2)
        set(Int32(IPPROTO_TCP), TCP_KEEPINTVL, 1)
        set(Int32(IPPROTO_TCP), TCP_KEEPCNT, 3)
        set(Int32(IPPROTO_TCP), 18 /* TCP_USER_TIMEOUT */, 5000)
    }

    /// Waits until the socket is ready for `events`, in slices of at most 200 ms so that
    /// `interrupt` is asked at least that often.
    private func waitFor(_ events: Int16, deadline: UInt64, interrupt: (() -> Bool)?) throws(WireFailure) {
        while true {
            if let stop = interrupt, stop() { throw .interrupted }
            let now = Clock.monotonicNanos()
            if deadline != 0 && now >= deadline { throw .timeout }
            var ms: Int32 = 200
            if deadline != 0 { ms = Int32(min(UInt64(200), (deadline - now) / 1_000_000 + 1)) }
            var p = pollfd(fd: fd, events: events, revents: 0)
            let rc = poll(&p, 1, ms)
            if rc > 0 { return }
            if rc < 0 && errno != EINTR { throw .io(errno, "poll: \(String(cString: strerror(errno)))") }
        }
    }

    /// Sends one POST with a JSON body.
    func send(path: String, body: String, extraHeaders: String = "", deadline: UInt64) throws(WireFailure) {
        let hostHeader = endpoint.literal.map { $0.text } ?? endpoint.text
        let head = "POST \(path) HTTP/1.1\r\nHost: \(hostHeader)\r\nContent-Type: application/json\r\nAccept: application/json\r\n\(extraHeaders)Content-Length: \(body.utf8.count)\r\n\r\n"
        var bytes = Array(head.utf8)
        bytes.append(contentsOf: body.utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            if n > 0 { off += n; continue }
            let e = errno
            if n < 0 && (e == EAGAIN || e == EWOULDBLOCK) { try waitFor(Int16(POLLOUT), deadline: deadline, interrupt: nil); continue }
            if n < 0 && e == EINTR { continue }
            throw .io(e, "send: \(String(cString: strerror(e)))")
        }
        responseStarted = false
        reusable = false
        mode = .none
    }

    /// Reads more bytes into the buffer; false at end of stream.
    private func fill(deadline: UInt64, interrupt: (() -> Bool)?) throws(WireFailure) -> Bool {
        if start > 0 && start == buf.count { buf.removeAll(keepingCapacity: true); start = 0 }
        else if start > 65536 { buf.removeFirst(start); start = 0 }
        while true {
            var chunk = [UInt8](repeating: 0, count: 16384)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n > 0 { buf.append(contentsOf: chunk[0..<n]); responseStarted = true; return true }
            if n == 0 { return false }
            let e = errno
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK { try waitFor(Int16(POLLIN), deadline: deadline, interrupt: interrupt); continue }
            throw .io(e, "receive: \(String(cString: strerror(e)))")
        }
    }

    private func closedFailure() -> WireFailure { .closed(sawResponse: responseStarted) }

    /// Reads the answer's head.
    func readHead(deadline: UInt64, interrupt: (() -> Bool)? = nil) throws(WireFailure) -> HTTPAnswerHead {
        while true {
            if let end = findHeadEnd() {
                if end - start > EtcdHTTPConnection.maxHead { throw .malformed("head longer than \(EtcdHTTPConnection.maxHead) bytes") }
                let head = try parseHead(Array(buf[start..<end]))
                start = end + 4
                return head
            }
            if buf.count - start > EtcdHTTPConnection.maxHead { throw .malformed("head longer than \(EtcdHTTPConnection.maxHead) bytes") }
            if try !fill(deadline: deadline, interrupt: interrupt) { throw closedFailure() }
        }
    }

    private func findHeadEnd() -> Int? {
        var k = start
        while k + 3 < buf.count {
            if buf[k] == 13 && buf[k + 1] == 10 && buf[k + 2] == 13 && buf[k + 3] == 10 { return k }
            k += 1
        }
        return nil
    }

    private func parseHead(_ bytes: [UInt8]) throws(WireFailure) -> HTTPAnswerHead {
        let lines = bytes.split(separator: 10, omittingEmptySubsequences: false).map { line -> ArraySlice<UInt8> in
            line.last == 13 ? line.dropLast() : line
        }
        guard let first = lines.first else { throw .malformed("empty head") }
        let statusLine = String(decoding: first, as: UTF8.self)
        let parts = statusLine.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count >= 2, parts[0] == "HTTP/1.1" || parts[0] == "HTTP/1.0", parts[1].utf8.count == 3,
              let status = Int(parts[1]), status >= 100, status <= 599 else {
            throw .malformed("status line \(JSONWriter.quote(String(statusLine.prefix(80))))")
        }
        var head = HTTPAnswerHead(status: status, contentLength: nil, chunked: false, close: parts[0] == "HTTP/1.0")
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { throw .malformed("header line without ':'") }
            let name = String(decoding: line[line.startIndex..<colon], as: UTF8.self).lowercased()
            let value = String(decoding: line[(colon + 1)...], as: UTF8.self).trimmingSpaces
            switch name {
            case "content-length":
                guard !value.isEmpty, value.utf8.count <= 12, value.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }), let n = Int(value) else {
                    throw .malformed("Content-Length \(JSONWriter.quote(value))")
                }
                if let old = head.contentLength, old != n { throw .malformed("two different Content-Length values") }
                head.contentLength = n
            case "transfer-encoding":
                guard value.lowercased() == "chunked" else { throw .malformed("Transfer-Encoding \(JSONWriter.quote(value))") }
                head.chunked = true
            case "connection":
                if value.lowercased().contains("close") { head.close = true }
            default: break
            }
        }
        if head.chunked && head.contentLength != nil { throw .malformed("both Content-Length and chunked") }
        if let n = head.contentLength, n > EtcdHTTPConnection.maxBody { throw .malformed("body of \(n) bytes is over the limit") }
        if head.chunked { mode = .chunked; chunkPhase = .size }
        else if let n = head.contentLength { mode = n == 0 ? .done : .length; bodyLeft = n }
        else { mode = .untilClose }
        reusable = !head.close && mode != .untilClose
        return head
    }

    /// Moves decoded body bytes from the buffer to `out`; true once the body is complete.
    private func decode(into out: inout [UInt8]) throws(WireFailure) -> Bool {
        while true {
            switch mode {
            case .none, .done: return true
            case .untilClose:
                out.append(contentsOf: buf[start...]); start = buf.count
                return false
            case .length:
                let n = min(bodyLeft, buf.count - start)
                out.append(contentsOf: buf[start..<(start + n)]); start += n; bodyLeft -= n
                if bodyLeft == 0 { mode = .done; return true }
                return false
            case .chunked:
                switch chunkPhase {
                case .size:
                    guard let eol = lineEnd() else {
                        if buf.count - start > 1024 { throw .malformed("chunk size line too long") }
                        return false
                    }
                    var size = 0
                    var k = start
                    var digits = 0
                    while k < eol, let h = hexValue(buf[k]) {
                        size = size * 16 + h; digits += 1; k += 1
                        if digits > 8 { throw .malformed("chunk size too large") }
                    }
                    if digits == 0 || (k < eol && buf[k] != UInt8(ascii: ";") && buf[k] != 13) { throw .malformed("bad chunk size") }
                    start = eol + 1
                    if size == 0 { chunkPhase = .trailers }
                    else {
                        if out.count + size > EtcdHTTPConnection.maxBody { throw .malformed("body over \(EtcdHTTPConnection.maxBody) bytes") }
                        bodyLeft = size; chunkPhase = .data
                    }
                case .data:
                    let n = min(bodyLeft, buf.count - start)
                    if n == 0 { return false }
                    out.append(contentsOf: buf[start..<(start + n)]); start += n; bodyLeft -= n
                    if bodyLeft == 0 { chunkPhase = .dataEnd }
                case .dataEnd:
                    if buf.count - start < 2 { return false }
                    guard buf[start] == 13, buf[start + 1] == 10 else { throw .malformed("chunk not followed by CRLF") }
                    start += 2
                    chunkPhase = .size
                case .trailers:
                    guard let eol = lineEnd() else {
                        if buf.count - start > EtcdHTTPConnection.maxHead { throw .malformed("trailers too long") }
                        return false
                    }
                    let empty = eol == start || (eol == start + 1 && buf[start] == 13)
                    start = eol + 1
                    if empty { mode = .done; return true }
                }
            }
        }
    }

    private func lineEnd() -> Int? {
        var k = start
        while k < buf.count { if buf[k] == 10 { return k }; k += 1 }
        return nil
    }

    private func hexValue(_ c: UInt8) -> Int? {
        switch c {
        case 48...57: return Int(c - 48)
        case 65...70: return Int(c - 55)
        case 97...102: return Int(c - 87)
        default: return nil
        }
    }

    /// Reads the whole body of the answer whose head was read.
    func readBody(deadline: UInt64) throws(WireFailure) -> [UInt8] {
        var out: [UInt8] = []
        while true {
            if try decode(into: &out) { break }
            if out.count > EtcdHTTPConnection.maxBody { throw .malformed("body over \(EtcdHTTPConnection.maxBody) bytes") }
            if try !fill(deadline: deadline, interrupt: nil) {
                if mode == .untilClose { mode = .done; break }
                throw closedFailure()
            }
        }
        return out
    }

    /// Decoded body bytes of a streaming answer not yet returned as lines.
    private var pending: [UInt8] = []

    /// The next line of a streaming answer (without its newline), or nil at the end of the
    /// body. `deadline` 0: none (a watch waits as long as the connection lives).
    func nextLine(deadline: UInt64, interrupt: (() -> Bool)?) throws(WireFailure) -> [UInt8]? {
        while true {
            if let nl = pending.firstIndex(of: 10) {
                let line = Array(pending[0..<nl])
                pending.removeFirst(nl + 1)
                return line
            }
            if pending.count > EtcdHTTPConnection.maxBody { throw .malformed("a streamed line over \(EtcdHTTPConnection.maxBody) bytes") }
            if try decode(into: &pending) {
                if pending.isEmpty { return nil }
                let line = pending
                pending.removeAll()
                return line
            }
            // A whole line may have just been decoded: return it before waiting for more.
            if pending.contains(10) { continue }
            if try !fill(deadline: deadline, interrupt: interrupt) {
                if mode == .untilClose {
                    mode = .done
                    if pending.isEmpty { return nil }
                    let line = pending
                    pending.removeAll()
                    return line
                }
                throw closedFailure()
            }
        }
    }
}

extension String {
    /// Without leading and trailing spaces and tabs.
    var trimmingSpaces: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}
