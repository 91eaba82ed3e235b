/// A config text sent as the change from a text the sidecar already has (DESIGN §12: "sends
/// changes, not whole snapshots, where that is cheaper"). Pure and Foundation-free; one type for
/// both ends: meshd makes and encodes a delta, the sidecar decodes and applies it.
///
/// A text is cut into blocks at the boundaries meshd's renderer produces: a block starts at
/// every line at indentation 0 (a top-level key, a `---` document separator) or 2 (a cluster or
/// route item `  - name: ...`, `  routes:`, a document's `  hosts:`), and at every endpoint item
/// (`      - {address: ...}`); an empty line or any deeper line stays with the block before it.
/// The cut is deterministic and lossless: the blocks joined give the text back byte for byte.
/// A delta is a list of operations that build the new text: copy a run of the base's blocks, or
/// insert literal bytes. Blocks are matched by content (a hash map from block to its first index
/// in the base, and a run extended while the next base block matches): no LCS needed, since one
/// change to the mesh moves or edits a few blocks and leaves the rest in order.
///
/// The encoding (ASCII lines, then raw bytes for literals; every number decimal without sign or
/// leading zero, at most 10 digits):
///
///     ops N B S\n           N operations, against a base of B blocks, making S bytes
///     c START COUNT\n       copy base blocks START ..< START+COUNT (COUNT >= 1)
///     l LEN\n<LEN bytes>    insert LEN (>= 1) bytes
///
/// It is self-delimiting (a push reads exactly the delta and then its bundle section). Decoding
/// treats the input as hostile: a bad header, a count out of its bound, an operation that copies
/// out of the base, a literal cut short or past the declared size is refused (`ConfigDeltaError`),
/// never a crash; applying refuses a base with another block count, a result of another size,
/// and one that is not UTF-8.
public struct ConfigDelta: Sendable, Equatable {
    /// One step of building the new text.
    public enum Op: Sendable, Equatable {
        /// Base blocks `start ..< start + count`.
        case copy(start: Int, count: Int)
        /// Bytes of the new text that the base does not have (whole blocks, so valid UTF-8 when
        /// meshd made them).
        case literal([UInt8])
    }

    /// How many blocks the base it was made against has (applying checks it).
    public var baseBlocks: Int
    /// The new text's size in bytes.
    public var size: Int
    public var ops: [Op]

    public init(baseBlocks: Int, size: Int, ops: [Op]) {
        self.baseBlocks = baseBlocks; self.size = size; self.ops = ops
    }

    /// The largest text a delta makes or is applied to (meshd's pushes are read up to 64 MiB).
    public static let maxTextBytes = 64 << 20
    /// The most operations one delta may have.
    public static let maxOps = 1 << 20

    // MARK: blocks

    /// The blocks of `text` as byte ranges, in order, covering it exactly (none for "").
    public static func blocks(_ text: [UInt8]) -> [Range<Int>] {
        var out: [Range<Int>] = []
        var start = 0
        var line = 0
        let n = text.count
        while line < n {
            if line > start && startsBlock(text, line) {
                out.append(start..<line)
                start = line
            }
            var i = line
            while i < n && text[i] != 10 { i += 1 }
            line = i + 1
        }
        if start < n { out.append(start..<n) }
        return out
    }

    /// Whether the line starting at `i` opens a block: indentation 0 (not an empty line),
    /// indentation 2, or an endpoint item at indentation 6.
    static func startsBlock(_ t: [UInt8], _ i: Int) -> Bool {
        let n = t.count
        func at(_ k: Int) -> UInt8 { i + k < n ? t[i + k] : 10 }
        if at(0) != 32 { return at(0) != 10 }
        if at(1) == 32 && at(2) != 32 && at(2) != 10 { return true }
        for k in 0..<6 where at(k) != 32 { return false }
        return at(6) == 45 && at(7) == 32   // "      - "
    }

    // MARK: making

    /// The delta that turns `base` into `new`.
    public static func make(from base: String, to new: String) -> ConfigDelta {
        let b = Array(base.utf8), t = Array(new.utf8)
        let bb = blocks(b), tb = blocks(t)
        var first: [ArraySlice<UInt8>: Int] = [:]
        first.reserveCapacity(bb.count)
        for (i, r) in bb.enumerated() where first[b[r]] == nil { first[b[r]] = i }
        var ops: [Op] = []
        var run: (start: Int, count: Int)? = nil
        var literal: [UInt8] = []
        func flush() {
            if let r = run { ops.append(.copy(start: r.start, count: r.count)); run = nil }
            if !literal.isEmpty { ops.append(.literal(literal)); literal = [] }
        }
        for r in tb {
            let block = t[r]
            // The base's next block first: unchanged stretches stay one copy, even where
            // blocks repeat elsewhere.
            if let cur = run, cur.start + cur.count < bb.count, b[bb[cur.start + cur.count]] == block {
                run = (cur.start, cur.count + 1)
            } else if let j = first[block] {
                flush()
                run = (j, 1)
            } else {
                if let cur = run { ops.append(.copy(start: cur.start, count: cur.count)); run = nil }
                literal += block
            }
        }
        flush()
        return ConfigDelta(baseBlocks: bb.count, size: t.count, ops: ops)
    }

    // MARK: encoding

    /// The delta in its wire form (see the type's comment).
    public var encoded: String {
        var out = "ops \(ops.count) \(baseBlocks) \(size)\n"
        for op in ops {
            switch op {
            case .copy(let s, let c): out += "c \(s) \(c)\n"
            case .literal(let bytes): out += "l \(bytes.count)\n" + String(decoding: bytes, as: UTF8.self)
            }
        }
        return out
    }

    /// Reads a delta from the start of `bytes`; returns it and how many bytes it took (what
    /// follows is the caller's). Throws on anything malformed or out of bounds.
    public static func decode(_ bytes: ArraySlice<UInt8>) throws(ConfigDeltaError) -> (delta: ConfigDelta, consumed: Int) {
        var r = Reader(bytes: bytes)
        try r.word("ops")
        let n = try r.number(then: 32, "the operation count")
        let blocks = try r.number(then: 32, "the base's block count")
        let size = try r.number(then: 10, "the size")
        guard n <= maxOps else { throw ConfigDeltaError("\(n) operations (at most \(maxOps))") }
        guard size <= maxTextBytes else { throw ConfigDeltaError("a text of \(size) bytes (at most \(maxTextBytes))") }
        guard blocks <= maxTextBytes else { throw ConfigDeltaError("a base of \(blocks) blocks (at most \(maxTextBytes))") }
        var ops: [Op] = []
        ops.reserveCapacity(min(n, 4096))
        var literalBytes = 0
        for i in 0..<n {
            guard let kind = r.next() else { throw ConfigDeltaError("cut short: \(i) of \(n) operations") }
            switch kind {
            case 99:   // c
                try r.expect(32, "after c")
                let start = try r.number(then: 32, "a copy's start")
                let count = try r.number(then: 10, "a copy's count")
                guard count >= 1 else { throw ConfigDeltaError("operation \(i): a copy of no blocks") }
                guard start <= blocks && count <= blocks - start else {
                    throw ConfigDeltaError("operation \(i): copies blocks \(start)..<\(start + count) of a base of \(blocks)")
                }
                ops.append(.copy(start: start, count: count))
            case 108:  // l
                try r.expect(32, "after l")
                let len = try r.number(then: 10, "a literal's length")
                guard len >= 1 else { throw ConfigDeltaError("operation \(i): an empty literal") }
                guard len <= size - literalBytes else {
                    throw ConfigDeltaError("operation \(i): literals longer than the declared size \(size)")
                }
                guard let lit = r.take(len) else { throw ConfigDeltaError("operation \(i): a literal of \(len) bytes cut short") }
                literalBytes += len
                ops.append(.literal(Array(lit)))
            default:
                throw ConfigDeltaError("operation \(i): expected c or l")
            }
        }
        return (ConfigDelta(baseBlocks: blocks, size: size, ops: ops), r.offset)
    }

    /// A whole text that is exactly one delta (nothing after it).
    public init(decoding text: String) throws(ConfigDeltaError) {
        let bytes = Array(text.utf8)
        let (d, used) = try ConfigDelta.decode(bytes[...])
        guard used == bytes.count else { throw ConfigDeltaError("\(bytes.count - used) bytes after the last operation") }
        self = d
    }

    // MARK: applying

    /// The new text: the operations applied to `base`. Throws when `base` does not have the
    /// block count the delta was made against, or the result would not have the declared size.
    public func apply(to base: String) throws(ConfigDeltaError) -> String {
        let b = Array(base.utf8)
        let bb = ConfigDelta.blocks(b)
        guard bb.count == baseBlocks else {
            throw ConfigDeltaError("made against a base of \(baseBlocks) blocks, the text held has \(bb.count)")
        }
        guard size <= ConfigDelta.maxTextBytes else { throw ConfigDeltaError("a text of \(size) bytes (at most \(ConfigDelta.maxTextBytes))") }
        var out: [UInt8] = []
        out.reserveCapacity(size)
        for (i, op) in ops.enumerated() {
            switch op {
            case .copy(let s, let c):
                guard s >= 0, c >= 1, s <= bb.count, c <= bb.count - s else {
                    throw ConfigDeltaError("operation \(i): copies blocks \(s)..<\(s + c) of a base of \(bb.count)")
                }
                let from = bb[s].lowerBound, to = bb[s + c - 1].upperBound
                guard to - from <= size - out.count else { throw ConfigDeltaError("operation \(i): past the declared size \(size)") }
                out += b[from..<to]
            case .literal(let bytes):
                guard !bytes.isEmpty, bytes.count <= size - out.count else {
                    throw ConfigDeltaError("operation \(i): past the declared size \(size)")
                }
                out += bytes
            }
        }
        guard out.count == size else { throw ConfigDeltaError("makes \(out.count) bytes, not the declared \(size)") }
        guard let text = String(validating: out, as: UTF8.self) else { throw ConfigDeltaError("makes a text that is not UTF-8") }
        return text
    }
}

/// Why a delta was refused (malformed, out of bounds, or not for the base held).
public struct ConfigDeltaError: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { "config delta: \(message)" }
}

/// A cursor over a delta's bytes.
private struct Reader {
    let bytes: ArraySlice<UInt8>
    var index: Int
    init(bytes: ArraySlice<UInt8>) { self.bytes = bytes; index = bytes.startIndex }

    var offset: Int { index - bytes.startIndex }

    mutating func next() -> UInt8? {
        guard index < bytes.endIndex else { return nil }
        defer { index += 1 }
        return bytes[index]
    }

    mutating func expect(_ b: UInt8, _ what: String) throws(ConfigDeltaError) {
        guard let c = next() else { throw ConfigDeltaError("cut short \(what)") }
        guard c == b else { throw ConfigDeltaError("unexpected byte \(c) \(what)") }
    }

    mutating func word(_ w: String) throws(ConfigDeltaError) {
        for ch in w.utf8 { try expect(ch, "in the header (expected \"\(w) \")") }
        try expect(32, "in the header (expected \"\(w) \")")
    }

    /// A decimal number (1 to 10 digits, no leading zero) followed by `then`.
    mutating func number(then end: UInt8, _ what: String) throws(ConfigDeltaError) -> Int {
        var v = 0, digits = 0, leadingZero = false
        while true {
            guard let c = next() else { throw ConfigDeltaError("cut short in \(what)") }
            if c == end && digits > 0 { return v }
            guard c >= 48 && c <= 57 else { throw ConfigDeltaError("\(what): expected a decimal number") }
            if digits == 1 && leadingZero { throw ConfigDeltaError("\(what): a leading zero") }
            if digits == 0 && c == 48 { leadingZero = true }
            digits += 1
            guard digits <= 10 else { throw ConfigDeltaError("\(what): more than 10 digits") }
            v = v * 10 + Int(c - 48)
        }
    }

    /// The next `n` bytes, nil when fewer are left.
    mutating func take(_ n: Int) -> ArraySlice<UInt8>? {
        guard n <= bytes.endIndex - index else { return nil }
        defer { index += n }
        return bytes[index..<(index + n)]
    }
}
