/// What a captured connection speaks, told from the first bytes its client sends (Envoy's
/// http_inspector does the same for Istio): the HTTP/2 connection preface means h2c, a request
/// line `METHOD SP target SP HTTP/1.x CRLF` means HTTP/1.1, and anything else is opaque TCP. The
/// decision is taken as early as the bytes allow (a TLS ClientHello or a Redis command is TCP at
/// its first byte); a client that sends nothing (a server-first protocol: SMTP, MySQL) is TCP
/// once the detection timeout passes, which the caller owns. Pure: no I/O, no allocation.
public enum ProtocolSniffer {
    public enum Verdict: Equatable, Sendable { case http1, h2c, tcp, needMore }

    /// The longest request line looked at; a client still inside one past this is TCP (the
    /// HTTP/1.1 path refuses request lines above 8 KiB anyway).
    public static let maxRequestLine = 8 * 1024

    static let preface: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    /// The verdict on `bytes`, the first bytes of the connection (all of them so far).
    public static func classify(_ bytes: UnsafeRawBufferPointer) -> Verdict {
        let n = bytes.count
        if n == 0 { return .needMore }
        // The h2c preface; its first line also looks like an HTTP/1 request line with method PRI,
        // so it is checked first.
        let m = min(n, preface.count)
        var prefaceSoFar = true
        for i in 0..<m where bytes[i] != preface[i] { prefaceSoFar = false; break }
        if prefaceSoFar { return m == preface.count ? .h2c : .needMore }
        return requestLine(bytes)
    }

    /// `METHOD SP request-target SP HTTP/1.D CRLF`, with a method of 1 to 20 uppercase letters
    /// (or '-', '_': every registered method), a target of visible ASCII.
    static func requestLine(_ b: UnsafeRawBufferPointer) -> Verdict {
        let n = b.count
        var i = 0
        while i < n, i <= 20 {
            let c = b[i]
            if c == 0x20 { break }
            guard (c >= 0x41 && c <= 0x5A) || c == 0x2D || c == 0x5F else { return .tcp }
            i += 1
        }
        if i == n { return .needMore }
        if i == 0 || i > 20 { return .tcp }
        i += 1   // SP
        let targetStart = i
        while i < n {
            let c = b[i]
            if c == 0x20 { break }
            guard c > 0x20 && c < 0x7F else { return .tcp }
            i += 1
            if i > maxRequestLine { return .tcp }
        }
        if i == n { return .needMore }
        if i == targetStart { return .tcp }
        i += 1   // SP
        let version: [UInt8] = [0x48, 0x54, 0x54, 0x50, 0x2F, 0x31, 0x2E]   // "HTTP/1."
        for v in version {
            if i == n { return .needMore }
            if b[i] != v { return .tcp }
            i += 1
        }
        if i == n { return .needMore }
        guard b[i] == 0x30 || b[i] == 0x31 else { return .tcp }
        i += 1
        if i == n { return .needMore }
        if b[i] == 0x0A { return .http1 }   // a bare LF, as the HTTP/1.1 parser tolerates
        guard b[i] == 0x0D else { return .tcp }
        i += 1
        if i == n { return .needMore }
        return b[i] == 0x0A ? .http1 : .tcp
    }
}
