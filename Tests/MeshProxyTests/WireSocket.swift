import Foundation
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// Why a test socket gave up: a deadline, the peer closing mid-message, a failed system call, or
/// bytes that are not HTTP/1.1.
enum WireError: Error, CustomStringConvertible, Equatable {
    case timeout(String)
    case closed(String)
    case system(String, Int32)
    case malformed(String)

    var description: String {
        switch self {
        case .timeout(let w): return "timed out: \(w)"
        case .closed(let w): return "peer closed: \(w)"
        case .system(let w, let e): return "\(w): \(String(cString: strerror(e)))"
        case .malformed(let w): return "malformed: \(w)"
        }
    }
}

/// One HTTP/1.1 message as it crossed the wire: every byte of it (`raw`, head and body framing
/// exactly as received), its start line, its header fields in order, and its body with any
/// chunked framing removed.
struct WireMessage {
    var raw: [UInt8]
    var headLength: Int
    var startLine: String
    var headers: [(name: String, value: String)]
    var body: [UInt8]

    /// The head (start line, fields and the blank line) as text.
    var head: String { String(decoding: raw[0..<headLength], as: UTF8.self) }
    /// The framed body bytes as received (chunk sizes included).
    var rawBody: [UInt8] { Array(raw[headLength...]) }
    var bodyText: String { String(decoding: body, as: UTF8.self) }

    /// Every value of the field `name` (case-insensitive), in order.
    func values(_ name: String) -> [String] {
        headers.filter { $0.name.lowercased() == name.lowercased() }.map(\.value)
    }

    /// The first value of the field `name`, if any.
    func value(_ name: String) -> String? { values(name).first }

    /// A response's status code (0 when the start line has none).
    var status: Int {
        let parts = startLine.split(separator: " ", maxSplits: 2)
        return parts.count >= 2 ? Int(parts[1]) ?? 0 : 0
    }

    /// A request's target.
    var target: String {
        let parts = startLine.split(separator: " ", maxSplits: 2)
        return parts.count >= 2 ? String(parts[1]) : ""
    }
}

/// A blocking TCP socket for tests (the raw client, and each connection of the fake upstream)
/// that reads whole HTTP/1.1 messages: every wait is bounded by a deadline, and `stop` lets a
/// server thread give up between polls. Closed on deinit.
final class WireSocket {
    private(set) var fd: Int32
    private var buffer: [UInt8] = []
    /// Polls are cut into slices this long so `stop` is checked regularly.
    private let sliceMillis: Int32 = 20

    init(fd: Int32) { self.fd = fd }

    /// A blocking connection to 127.0.0.1:`port`.
    static func connect(port: Int) throws -> WireSocket {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw WireError.system("socket", errno) }
        var a = SocketAddress(host: "127.0.0.1", port: port)!
        let rc = withUnsafePointer(to: &a.storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, a.length) }
        }
        if rc != 0 { let e = errno; Glibc.close(fd); throw WireError.system("connect to 127.0.0.1:\(port)", e) }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        return WireSocket(fd: fd)
    }

    deinit { close() }

    func close() {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
    }

    /// Writes every byte (blocking).
    func write(_ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw WireError.system("write", errno)
            }
            off += n
        }
    }

    func write(_ text: String) throws { try write(Array(text.utf8)) }

    /// Reads more bytes into the buffer; false at end of stream.
    private func fill(deadline: UInt64, stop: () -> Bool, what: String) throws -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while true {
            if stop() { throw WireError.closed("stopped while waiting for \(what)") }
            let now = Clock.monotonicNanos()
            if now >= deadline { throw WireError.timeout(what) }
            let left = Int32(min(UInt64(sliceMillis), (deadline - now) / 1_000_000 + 1))
            let rc = poll(&p, 1, left)
            if rc < 0 && errno == EINTR { continue }
            if rc < 0 { throw WireError.system("poll", errno) }
            if rc > 0 { break }
        }
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw WireError.system("read (\(what))", errno) }
            if n == 0 { return false }
            buffer += chunk[0..<n]
            return true
        }
    }

    /// Index just past the first CRLF at or after `from` in the buffer, if any.
    private func lineEnd(from: Int) -> Int? {
        var i = from
        while i + 1 < buffer.count {
            if buffer[i] == 13 && buffer[i + 1] == 10 { return i + 2 }
            i += 1
        }
        return nil
    }

    /// Reads one message. `request`: framing by Content-Length or chunked, none otherwise;
    /// a response: no body for 1xx, 204, 304 or an answer to HEAD, else Content-Length, chunked,
    /// or everything until the peer closes. Nil when the peer closed before the first byte.
    func readMessage(request: Bool, answersHEAD: Bool = false, timeoutMillis: Int = 5_000,
                     stop: () -> Bool = { false }) throws -> WireMessage? {
        let deadline = Clock.monotonicNanos() + UInt64(timeoutMillis) * 1_000_000
        let what = request ? "a request" : "a response"
        // Head.
        var headEnd = 0
        var scanned = 0
        while true {
            if let end = findHeadEnd(from: scanned) { headEnd = end; break }
            scanned = max(0, buffer.count - 3)
            if !(try fill(deadline: deadline, stop: stop, what: what)) {
                if buffer.isEmpty { return nil }
                throw WireError.closed("in the head of \(what): \(String(decoding: buffer, as: UTF8.self))")
            }
        }
        let headText = String(decoding: buffer[0..<headEnd], as: UTF8.self)
        var lines = headText.components(separatedBy: "\r\n")
        lines.removeLast(2)   // the blank line
        let startLine = lines.removeFirst()
        var headers: [(name: String, value: String)] = []
        for l in lines {
            guard let colon = l.firstIndex(of: ":") else { throw WireError.malformed("header line \(l)") }
            headers.append((String(l[..<colon]), l[l.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
        }
        var msg = WireMessage(raw: [], headLength: headEnd, startLine: startLine, headers: headers, body: [])
        // Body.
        var end = headEnd
        let status = request ? 0 : msg.status
        let te = msg.values("transfer-encoding").joined(separator: ",").lowercased()
        if !request && (status / 100 == 1 || status == 204 || status == 304 || answersHEAD) {
            // no body
        } else if te.contains("chunked") {
            while true {
                var le = lineEnd(from: end)
                while le == nil {
                    guard try fill(deadline: deadline, stop: stop, what: "a chunk size") else { throw WireError.closed("in a chunk size") }
                    le = lineEnd(from: end)
                }
                let sizeText = String(decoding: buffer[end..<(le! - 2)], as: UTF8.self).split(separator: ";").first.map(String.init) ?? ""
                guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16) else { throw WireError.malformed("chunk size \(sizeText)") }
                end = le!
                if size == 0 {
                    // Trailers, then the blank line.
                    while true {
                        var tl = lineEnd(from: end)
                        while tl == nil {
                            guard try fill(deadline: deadline, stop: stop, what: "the trailers") else { throw WireError.closed("in the trailers") }
                            tl = lineEnd(from: end)
                        }
                        let blank = tl! - end == 2
                        end = tl!
                        if blank { break }
                    }
                    break
                }
                while buffer.count < end + size + 2 {
                    guard try fill(deadline: deadline, stop: stop, what: "chunk data") else { throw WireError.closed("in chunk data") }
                }
                msg.body += buffer[end..<(end + size)]
                guard buffer[end + size] == 13 && buffer[end + size + 1] == 10 else { throw WireError.malformed("no CRLF after chunk data") }
                end += size + 2
            }
        } else if let cl = msg.value("content-length") {
            guard let n = Int(cl) else { throw WireError.malformed("content-length \(cl)") }
            while buffer.count < headEnd + n {
                guard try fill(deadline: deadline, stop: stop, what: "a body of \(n) bytes") else { throw WireError.closed("after \(buffer.count - headEnd) of \(n) body bytes") }
            }
            end = headEnd + n
            msg.body = Array(buffer[headEnd..<end])
        } else if !request {
            while try fill(deadline: deadline, stop: stop, what: "a body that ends at close") {}
            end = buffer.count
            msg.body = Array(buffer[headEnd..<end])
        }
        msg.raw = Array(buffer[0..<end])
        buffer.removeFirst(end)
        return msg
    }

    private func findHeadEnd(from: Int) -> Int? {
        var i = from
        while i + 3 < buffer.count {
            if buffer[i] == 13 && buffer[i + 1] == 10 && buffer[i + 2] == 13 && buffer[i + 3] == 10 { return i + 4 }
            i += 1
        }
        return nil
    }

    /// A response that must come: throws when the peer closes first.
    func readResponse(answersHEAD: Bool = false, timeoutMillis: Int = 5_000) throws -> WireMessage {
        guard let m = try readMessage(request: false, answersHEAD: answersHEAD, timeoutMillis: timeoutMillis) else {
            throw WireError.closed("before a response")
        }
        return m
    }

    /// True when the peer closes within `timeoutMillis` with nothing more sent; throws when
    /// bytes arrive instead.
    func closedByPeer(timeoutMillis: Int = 2_000) throws -> Bool {
        if !buffer.isEmpty { throw WireError.malformed("unexpected bytes: \(String(decoding: buffer, as: UTF8.self))") }
        let deadline = Clock.monotonicNanos() + UInt64(timeoutMillis) * 1_000_000
        do {
            if try fill(deadline: deadline, stop: { false }, what: "the close") {
                throw WireError.malformed("unexpected bytes: \(String(decoding: buffer, as: UTF8.self))")
            }
            return true
        } catch WireError.timeout {
            return false
        }
    }
}
