import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// A strict HTTP/1.1 head parser over bytes (RFC 9112), built to refuse everything a request
/// smuggler relies on: bare CR or LF, obs-fold, whitespace before the colon, invalid or repeated
/// Content-Length, Transfer-Encoding together with Content-Length or with any coding other than a
/// single `chunked`, and over-long lines. It finds the end of the head incrementally (so a head
/// that arrives in pieces is scanned once) and then parses it in one pass, recording byte ranges.
public struct HTTP1Parser: Sendable {
    /// Limits (DESIGN §2): request line 8 KiB (414), header section 64 KiB or 100 fields (431).
    public var maxStartLine = 8 * 1024
    public var maxHeadBytes = 64 * 1024
    public var maxFields = 100

    /// Where the next scan for the end of the head resumes (offset from the head's first byte: the
    /// start of the first incomplete line), and complete lines seen so far.
    private var scanOffset = -1
    private var lines = 0

    public init() {}

    public enum Result: Sendable, Equatable {
        case incomplete
        case complete
        case error(HTTPParseError)
    }

    /// Forgets a partial scan (call after a complete head was consumed).
    public mutating func resetScan() { scanOffset = -1; lines = 0 }

    /// Parses a request head starting at `start` in `buf[start..<end]`.
    public mutating func parseRequest(_ buf: UnsafePointer<UInt8>, start: Int, end: Int, into head: inout HTTPHead) -> Result {
        parse(buf, start: start, end: end, into: &head, request: true)
    }

    /// Parses a response head (errors map to 502 by the caller).
    public mutating func parseResponse(_ buf: UnsafePointer<UInt8>, start: Int, end: Int, into head: inout HTTPHead) -> Result {
        parse(buf, start: start, end: end, into: &head, request: false)
    }

    private mutating func parse(_ buf: UnsafePointer<UInt8>, start: Int, end: Int, into head: inout HTTPHead, request: Bool) -> Result {
        let bad: Int = request ? 400 : 502
        // `scanOffset` is the start of the first line not yet known to be complete, relative to
        // `start`, so it survives the buffer being compacted between calls.
        if scanOffset < 0 || start + scanOffset > end { scanOffset = 0; lines = 0 }
        // Phase 1: find the empty line that ends the head, checking line endings and sizes.
        var pos = start + scanOffset
        var headEnd = -1
        while pos < end {
            guard let r = memchr(buf + pos, 10, end - pos) else { break }
            let lineEndIdx = pos + (UnsafeRawPointer(r) - UnsafeRawPointer(buf + pos))   // index of LF
            if lineEndIdx == pos || buf[lineEndIdx - 1] != 13 { return .error(.init(bad, "bare LF in head")) }
            let lineLen = lineEndIdx - 1 - pos
            // A bare CR inside the line is caught in phase 2.
            if lines == 0 && lineLen > maxStartLine { return .error(request ? .init(414, "request line too long") : .init(502, "status line too long")) }
            if lineLen == 0 {
                if lines == 0 { return .error(request ? .init(400, "empty request line") : .init(502, "empty status line")) }
                headEnd = lineEndIdx + 1
                break
            }
            lines += 1
            if lines - 1 > maxFields { return .error(request ? .init(431, "too many header fields") : .init(502, "too many response header fields")) }
            pos = lineEndIdx + 1
            if pos - start > maxHeadBytes { return .error(request ? .init(431, "header section too large") : .init(502, "response header section too large")) }
        }
        if headEnd < 0 {
            scanOffset = pos - start
            if end - start > maxHeadBytes + 2 { return .error(request ? .init(431, "header section too large") : .init(502, "response header section too large")) }
            if lines == 0 && end - start > maxStartLine + 2 { return .error(request ? .init(414, "request line too long") : .init(502, "status line too long")) }
            return .incomplete
        }
        scanOffset = -1
        lines = 0
        if headEnd - start > maxHeadBytes + 2 { return .error(request ? .init(431, "header section too large") : .init(502, "response header section too large")) }

        // Phase 2: parse the start line and each field.
        head.reset(isRequest: request)
        head.headStart = start
        head.headEnd = headEnd
        var p = start
        let lineEnd1 = firstCRLF(buf, p, headEnd)
        if request {
            if let e = parseRequestLine(buf, p, lineEnd1, &head) { return .error(e) }
        } else {
            if let e = parseStatusLine(buf, p, lineEnd1, &head) { return .error(e) }
        }
        p = lineEnd1 + 2
        let table = CharClass.table
        var clSeen = false
        var teSeen = false
        while p < headEnd - 2 {
            let ls = p
            let c0 = buf[p]
            if c0 == 32 || c0 == 9 { return .error(.init(request ? 400 : 502, "obs-fold in header")) }
            // name
            while table[Int(buf[p])] & CharClass.token != 0 { p += 1 }
            if p == ls { return .error(.init(request ? 400 : 502, "invalid header name")) }
            if buf[p] != 58 { return .error(.init(request ? 400 : 502, buf[p] == 32 || buf[p] == 9 ? "whitespace before colon" : "invalid header name")) }
            let nameEnd = p
            p += 1
            while buf[p] == 32 || buf[p] == 9 { p += 1 }
            let vs = p
            while table[Int(buf[p])] & CharClass.value != 0 { p += 1 }
            if buf[p] != 13 || buf[p + 1] != 10 { return .error(.init(request ? 400 : 502, buf[p] == 0 ? "NUL in header value" : "bare CR or control byte in header value")) }
            var ve = p
            while ve > vs && (buf[ve - 1] == 32 || buf[ve - 1] == 9) { ve -= 1 }
            p += 2
            let kind = KnownHeader.classify(buf + ls, nameEnd - ls)
            let idx = head.fields.count
            head.fields.append(HeaderField(lineStart: Int32(ls), nameEnd: Int32(nameEnd), valueStart: Int32(vs), valueEnd: Int32(ve), lineEnd: Int32(p), kind: kind))
            switch kind {
            case .contentLength:
                if clSeen { return .error(.init(request ? 400 : 502, "repeated Content-Length")) }
                clSeen = true
                guard let v = parseDecimal(buf, vs, ve) else { return .error(.init(request ? 400 : 502, "invalid Content-Length")) }
                head.contentLength = v
            case .transferEncoding:
                if teSeen { return .error(.init(request ? 400 : 502, "repeated Transfer-Encoding")) }
                teSeen = true
                if !ASCII.equalsLower(buf + vs, ve - vs, "chunked") {
                    return .error(.init(request ? 501 : 502, "unsupported Transfer-Encoding"))
                }
                head.chunked = true
            case .host:
                if !request { break }
                if head.hostIndex >= 0 { return .error(.init(400, "repeated Host")) }
                head.hostIndex = idx
                for i in vs..<ve where table[Int(buf[i])] & CharClass.host == 0 { return .error(.init(400, "invalid Host")) }
            case .connection:
                scanConnection(buf, vs, ve, &head)
            case .upgrade:
                head.upgradeIndex = idx
            case .expect:
                if ASCII.equalsLower(buf + vs, ve - vs, "100-continue") { head.expectContinue = true }
            case .te:
                if ASCII.equalsLower(buf + vs, ve - vs, "trailers") { head.teTrailers = true }
            case .xRequestID:
                head.requestIDIndex = idx
            default:
                break
            }
        }
        if teSeen && clSeen { return .error(.init(request ? 400 : 502, "both Content-Length and Transfer-Encoding")) }
        if request {
            if head.chunked && head.minorVersion == 0 { return .error(.init(400, "Transfer-Encoding in HTTP/1.0")) }
            if head.minorVersion == 1 && head.hostIndex < 0 && !head.isAbsoluteForm { return .error(.init(400, "missing Host")) }
        }
        return .complete
    }

    // MARK: start lines

    private func parseRequestLine(_ buf: UnsafePointer<UInt8>, _ s: Int, _ e: Int, _ head: inout HTTPHead) -> HTTPParseError? {
        let table = CharClass.table
        var p = s
        while p < e && table[Int(buf[p])] & CharClass.token != 0 { p += 1 }
        if p == s || p >= e || buf[p] != 32 { return .init(400, "invalid method") }
        head.methodStart = s
        head.methodEnd = p
        head.method = HTTPMethod.classify(buf + s, p - s)
        p += 1
        let ts = p
        while p < e && table[Int(buf[p])] & CharClass.target != 0 { p += 1 }
        if p == ts || p >= e || buf[p] != 32 { return .init(400, "invalid request target") }
        head.targetStart = ts
        head.targetEnd = p
        p += 1
        // "HTTP/1.1" exactly.
        if e - p != 8 || buf[p] != 72 || buf[p + 1] != 84 || buf[p + 2] != 84 || buf[p + 3] != 80 || buf[p + 4] != 47
            || buf[p + 6] != 46 {
            return .init(400, "invalid HTTP version")
        }
        // HTTP-version is "HTTP/" DIGIT "." DIGIT: anything else is malformed (400); a well-formed
        // version other than 1.0 or 1.1 is one we do not speak (505).
        if buf[p + 5] < 48 || buf[p + 5] > 57 || buf[p + 7] < 48 || buf[p + 7] > 57 { return .init(400, "invalid HTTP version") }
        if buf[p + 5] != 49 || (buf[p + 7] != 49 && buf[p + 7] != 48) { return .init(505, "unsupported HTTP version") }
        head.minorVersion = Int(buf[p + 7] - 48)
        // Target forms.
        if buf[ts] == 47 {
            head.pathStart = ts; head.pathEnd = head.targetEnd
        } else if head.method == .connect {
            head.authorityStart = ts; head.authorityEnd = head.targetEnd
        } else if head.targetEnd - ts == 1 && buf[ts] == 42 {
            if head.method != .options { return .init(400, "asterisk target outside OPTIONS") }
            head.pathStart = ts; head.pathEnd = head.targetEnd
        } else {
            // absolute-form: http://authority[/path]
            let n = head.targetEnd - ts
            guard n > 7, ASCII.equalsLower(buf + ts, 7, "http://") else { return .init(400, "invalid request target") }
            var a = ts + 7
            let as_ = a
            while a < head.targetEnd && buf[a] != 47 && buf[a] != 63 {
                if table[Int(buf[a])] & CharClass.host == 0 { return .init(400, "invalid authority") }
                a += 1
            }
            if a == as_ { return .init(400, "empty authority") }
            head.authorityStart = as_; head.authorityEnd = a
            head.pathStart = a; head.pathEnd = head.targetEnd
            head.isAbsoluteForm = true
        }
        return nil
    }

    private func parseStatusLine(_ buf: UnsafePointer<UInt8>, _ s: Int, _ e: Int, _ head: inout HTTPHead) -> HTTPParseError? {
        // HTTP/1.x SP 3DIGIT [SP reason]
        if e - s < 12 || buf[s] != 72 || buf[s + 1] != 84 || buf[s + 2] != 84 || buf[s + 3] != 80 || buf[s + 4] != 47
            || buf[s + 5] != 49 || buf[s + 6] != 46 || (buf[s + 7] != 49 && buf[s + 7] != 48) || buf[s + 8] != 32 {
            return .init(502, "invalid status line")
        }
        head.minorVersion = Int(buf[s + 7] - 48)
        var st = 0
        for i in 9..<12 {
            let c = buf[s + i]
            if c < 48 || c > 57 { return .init(502, "invalid status code") }
            st = st * 10 + Int(c - 48)
        }
        if st < 100 { return .init(502, "invalid status code") }
        head.status = st
        if e - s > 12 {
            if buf[s + 12] != 32 { return .init(502, "invalid status line") }
            for i in (s + 13)..<e where CharClass.table[Int(buf[i])] & CharClass.value == 0 { return .init(502, "invalid reason phrase") }
            head.reasonStart = s + 13
        } else {
            head.reasonStart = e
        }
        head.reasonEnd = e
        return nil
    }

    // MARK: helpers

    private func firstCRLF(_ buf: UnsafePointer<UInt8>, _ from: Int, _ to: Int) -> Int {
        // `&+`: i < to - 1 inside the loop, so i + 1 cannot overflow (a hot scan over every head byte).
        var i = from
        while i &+ 1 < to { if buf[i] == 13 && buf[i &+ 1] == 10 { return i }; i &+= 1 }
        return to
    }

    private func parseDecimal(_ buf: UnsafePointer<UInt8>, _ s: Int, _ e: Int) -> Int64? {
        if e <= s || e - s > 18 { return nil }
        var v: Int64 = 0
        for i in s..<e {
            let c = buf[i]
            if c < 48 || c > 57 { return nil }
            v = v * 10 + Int64(c - 48)
        }
        return v
    }

    private func scanConnection(_ buf: UnsafePointer<UInt8>, _ s: Int, _ e: Int, _ head: inout HTTPHead) {
        var i = s
        while i < e {
            while i < e && (buf[i] == 32 || buf[i] == 9 || buf[i] == 44) { i += 1 }
            let ts = i
            while i < e && buf[i] != 44 && buf[i] != 32 && buf[i] != 9 { i += 1 }
            let n = i - ts
            if n == 5 && ASCII.equalsLower(buf + ts, 5, "close") { head.connectionClose = true }
            else if n == 10 && ASCII.equalsLower(buf + ts, 10, "keep-alive") { head.connectionKeepAlive = true }
            else if n == 7 && ASCII.equalsLower(buf + ts, 7, "upgrade") { head.connectionUpgrade = true }
            else if n > 0 && head.connectionListed.count < 16 { head.connectionListed.append((Int32(ts), Int32(i))) }
        }
    }

}
