import MeshCore

/// A strict incremental decoder of the chunked transfer coding (RFC 9112 §7.1). It does not copy:
/// each step says how many of the next bytes are chunk data and how many are framing (sizes,
/// extensions, CRLFs, trailers), so an HTTP/1.1 hop forwards them verbatim and an HTTP/2 hop takes
/// only the data. Refused: non-hex or over-long sizes, whitespace in the size line, bare CR or LF,
/// control bytes in extensions, chunk extensions over 4 KiB, and trailer sections over 64 KiB.
public struct ChunkedDecoder {
    public enum Step: Sendable {
        /// The next `n` bytes are chunk data.
        case data(Int)
        /// The next `n` bytes are framing.
        case framing(Int)
        /// The next `n` bytes end the message (last chunk and trailers complete).
        case end(Int)
        /// All bytes given were consumed as framing; more are needed.
        case needMore(Int)
        case error(StaticString)
    }

    private enum State: UInt8 { case size, ext, sizeLF, data, dataCR, dataLF, trailerStart, trailerLine, trailerLF, finalLF, done }
    private var state: State = .size
    private var size: UInt64 = 0
    private var sizeDigits = 0
    private var remaining: UInt64 = 0
    private var trailerBytes = 0
    /// Bytes of the current chunk's extensions; bounded so a size line cannot go on forever.
    private var extBytes = 0
    public static let maxExtensionBytes = 4096
    public private(set) var sawTrailers = false
    /// When set, trailer lines are copied here (`name: value` CRLF each), for hops that carry
    /// trailers as something other than chunked framing (HTTP/2).
    public var trailerSink: ByteBuffer? = nil

    public init() {}
    /// Starts a new body, keeping the trailer sink (cleared).
    public mutating func reset() {
        let sink = trailerSink
        sink?.clear()
        self = ChunkedDecoder()
        trailerSink = sink
    }
    public var isDone: Bool { state == .done }

    /// Decodes from `p[0..<n]` and returns the kind and length of the next run of bytes.
    public mutating func next(_ p: UnsafePointer<UInt8>, _ n: Int) -> Step {
        var i = 0
        while i < n {
            switch state {
            case .data:
                if i > 0 { return .framing(i) }
                let take = Int(min(UInt64(n), remaining))
                remaining -= UInt64(take)
                if remaining == 0 { state = .dataCR }
                return .data(take)
            case .size:
                let c = p[i]
                if let d = hexValue(c) {
                    sizeDigits += 1
                    if sizeDigits > 15 { return .error("chunk size too large") }
                    size = size << 4 | UInt64(d)
                    i += 1
                } else if sizeDigits == 0 {
                    return .error("invalid chunk size")
                } else if c == 59 { // ';'
                    state = .ext; i += 1
                } else if c == 13 {
                    state = .sizeLF; i += 1
                } else {
                    return .error("invalid chunk size line")
                }
            case .ext:
                let c = p[i]
                if c == 13 { state = .sizeLF; extBytes = 0 }
                else if c == 10 || (c < 32 && c != 9) || c == 127 { return .error("invalid chunk extension") }
                else {
                    extBytes += 1
                    if extBytes > ChunkedDecoder.maxExtensionBytes { return .error("chunk extension too long") }
                }
                i += 1
            case .sizeLF:
                if p[i] != 10 { return .error("bare CR in chunk size line") }
                i += 1
                if size == 0 {
                    state = .trailerStart
                } else {
                    remaining = size
                    state = .data
                }
                size = 0
                sizeDigits = 0
            case .dataCR:
                if p[i] != 13 { return .error("chunk data longer than its size") }
                state = .dataLF; i += 1
            case .dataLF:
                if p[i] != 10 { return .error("bare CR after chunk data") }
                state = .size; i += 1
            case .trailerStart:
                let c = p[i]
                if c == 13 { state = .finalLF; i += 1 }
                else if c == 32 || c == 9 { return .error("obs-fold in trailer") }
                else { sawTrailers = true; state = .trailerLine }
            case .trailerLine:
                let c = p[i]
                trailerBytes += 1
                if trailerBytes > 64 * 1024 { return .error("trailer section too large") }
                if c == 13 { state = .trailerLF }
                else if c == 10 { return .error("bare LF in trailer") }
                else if c == 0 { return .error("NUL in trailer") }
                if let sink = trailerSink { sink.append(c) }
                i += 1
            case .trailerLF:
                if p[i] != 10 { return .error("bare CR in trailer") }
                if let sink = trailerSink { sink.append(10) }
                state = .trailerStart; i += 1
            case .finalLF:
                if p[i] != 10 { return .error("bare CR after last chunk") }
                state = .done
                return .end(i + 1)
            case .done:
                return .end(i)
            }
        }
        return i > 0 ? .needMore(i) : .needMore(0)
    }

    @inline(__always) private func hexValue(_ c: UInt8) -> UInt8? {
        if c >= 48 && c <= 57 { return c - 48 }
        if c >= 97 && c <= 102 { return c - 87 }
        if c >= 65 && c <= 70 { return c - 55 }
        return nil
    }
}

/// Trailer lines captured by `ChunkedDecoder.trailerSink`, as (name, value) byte ranges; lines
/// without a token name and a colon are skipped (they were already refused as framing errors if
/// they broke the syntax).
public enum TrailerLines {
    public static func forEach(_ b: ByteBuffer, _ body: (UnsafePointer<UInt8>, Int, UnsafePointer<UInt8>, Int) -> Void) {
        var i = b.readIndex
        let end = b.writeIndex
        let base = UnsafePointer(b.base)
        while i < end {
            var j = i
            while j < end && base[j] != 13 && base[j] != 10 { j += 1 }
            // [i, j) is one line: name ":" OWS value OWS
            var c = i
            while c < j && base[c] != 58 { c += 1 }
            if c < j && c > i {
                var vs = c + 1
                while vs < j && (base[vs] == 32 || base[vs] == 9) { vs += 1 }
                var ve = j
                while ve > vs && (base[ve - 1] == 32 || base[ve - 1] == 9) { ve -= 1 }
                body(base + i, c - i, base + vs, ve - vs)
            }
            i = j
            while i < end && (base[i] == 13 || base[i] == 10) { i += 1 }
        }
    }
}
