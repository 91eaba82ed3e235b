// A small YAML-subset parser for Kubernetes / Istio style configuration files (pure Swift, no
// Foundation).
//
// Supported: block mappings and sequences (spaces only; Kubernetes-style `key:\n- item` at the
// key's indentation), comments, plain / 'single' / "double" quoted scalars (quoted keys too),
// flow collections `[...]` / `{...}` (nested, possibly spanning lines), block scalars `|` `>` with
// `-` / `+` chomping and an optional indentation digit, multi-line plain and quoted scalars
// (folded as YAML does), `---` / `...` document markers (`--- value` on one line is accepted).
// Refused with an error: anchors `&`, aliases `*`, tags `!`, complex keys `?`, directives `%`,
// tabs in indentation, duplicate keys, `key: value` pairs directly inside `[ ]`.
// Lenient like libyaml: lines inside a flow collection may sit at the parent's indentation, and
// `#` directly after a closing quote or bracket starts a comment.
//
// Scalars stay strings; typing (ints, bools, durations) is the caller's job.
// Null: there is no separate case. An empty value (`key:`, `- ` with nothing after it, `{a: }`)
// and the plain words `null`, `Null`, `NULL`, `~` become a scalar with value "" and quoted == false;
// `YAMLScalar.isNull` / `YAMLNode.isNull` test for that. `key: ""` is quoted, hence not null.
// Keys are kept verbatim (a key `null` is the string "null").
// `quoted` is true for every non-plain scalar: '...', "..." and block scalars (| and >).
//
// Lines are 1-based line numbers in the whole text; error columns are 1-based and count Unicode
// scalars. The parser never traps on malformed input: it either returns or throws YAMLError
// (nesting deeper than `YAML.maxDepth` collections is refused to bound the stack).

/// A parsed YAML node with the 1-based line it started on.
public indirect enum YAMLNode: Sendable {
    case scalar(YAMLScalar)
    case mapping(YAMLMapping)
    case sequence(YAMLSequence)
}

/// A scalar, kept as a string. Null is `value == "" && !quoted` (see `isNull`).
public struct YAMLScalar: Sendable {
    public var value: String
    public var line: Int
    /// True when written as '...', "..." or as a block scalar (| or >), i.e. not a plain scalar.
    public var quoted: Bool
    public init(value: String, line: Int, quoted: Bool = false) {
        self.value = value
        self.line = line
        self.quoted = quoted
    }
    /// An empty value, `~` or `null`.
    public var isNull: Bool { !quoted && value.isEmpty }
}

/// A mapping in source order. Duplicate keys are rejected by the parser.
public struct YAMLMapping: Sendable {
    public var entries: [(key: String, keyLine: Int, value: YAMLNode)]
    public var line: Int
    public init(entries: [(key: String, keyLine: Int, value: YAMLNode)], line: Int) {
        self.entries = entries
        self.line = line
    }
    /// The value for `key`, or nil when the key is absent.
    public subscript(key: String) -> YAMLNode? {
        for entry in entries where entry.key == key { return entry.value }
        return nil
    }
    public var keys: [String] { entries.map { $0.key } }
}

public struct YAMLSequence: Sendable {
    public var items: [YAMLNode]
    public var line: Int
    public init(items: [YAMLNode], line: Int) {
        self.items = items
        self.line = line
    }
}

public struct YAMLError: Error, Sendable, CustomStringConvertible {
    public var line: Int
    public var column: Int
    public var message: String
    public init(line: Int, column: Int, message: String) {
        self.line = line
        self.column = column
        self.message = message
    }
    /// "line L, column C: message"
    public var description: String { "line \(line), column \(column): \(message)" }
}

extension YAMLNode {
    /// The 1-based line the node started on.
    public var line: Int {
        switch self {
        case .scalar(let s): s.line
        case .mapping(let m): m.line
        case .sequence(let s): s.line
        }
    }
    public var isNull: Bool {
        if case .scalar(let s) = self { return s.isNull }
        return false
    }
    public var asScalar: YAMLScalar? {
        if case .scalar(let s) = self { return s }
        return nil
    }
    public var asMapping: YAMLMapping? {
        if case .mapping(let m) = self { return m }
        return nil
    }
    public var asSequence: YAMLSequence? {
        if case .sequence(let s) = self { return s }
        return nil
    }
}

public enum YAML {
    /// Deepest nesting of collections accepted (guards the stack against hostile input).
    public static let maxDepth = 128

    /// Splits on `---` document markers and parses each document. Empty documents (only
    /// comments/whitespace) are skipped. A `...` end marker is accepted. `line` is the first
    /// line of the document's content (its root node). Content may follow `--- ` on its line.
    public static func parseDocuments(_ text: String) throws(YAMLError) -> [(node: YAMLNode, line: Int)] {
        let split = splitLines(text)
        var lines = split.lines
        let unterminatedLastLine = split.unterminated
        var documents: [(node: YAMLNode, line: Int)] = []
        var start = 0
        var startsOnMarker = false
        var i = 0
        while i <= lines.count {
            let isBoundary = i == lines.count || isMarker(lines[i], "-") || isMarker(lines[i], ".")
            if isBoundary {
                var parser = Parser(lines: Array(lines[start..<i]), firstLine: start + 1,
                                    unterminatedLastLine: unterminatedLastLine && i == lines.count)
                if let doc = try parser.parseDocument(startsOnMarker: startsOnMarker) { documents.append(doc) }
                start = i + 1
                startsOnMarker = false
                if i < lines.count {
                    let line = lines[i]
                    var c = 3
                    while c < line.count, isSpace(line[c]) { c += 1 }
                    if c < line.count, line[c] != "#" {
                        if line[0] == "." {
                            throw YAMLError(line: i + 1, column: c + 1, message: "unexpected content after the '...' document end marker")
                        }
                        // `--- value`: the document starts on the marker line, after the marker.
                        lines[i].replaceSubrange(0..<c, with: Array(repeating: " ", count: c))
                        start = i
                        startsOnMarker = true
                    }
                }
            }
            i += 1
        }
        return documents
    }

    /// The lines without their line breaks, and whether the last one lacked a line break.
    fileprivate static func splitLines(_ text: String) -> (lines: [Line], unterminated: Bool) {
        var lines: [Line] = []
        var current: Line = []
        for s in text.unicodeScalars {
            if s == "\n" {
                if current.last == "\r" { current.removeLast() }
                lines.append(current)
                current = []
            } else {
                current.append(s)
            }
        }
        if current.last == "\r" { current.removeLast() }
        let unterminated = !current.isEmpty
        if unterminated { lines.append(current) }
        if lines.first?.first == "\u{FEFF}" { lines[0].removeFirst() }
        return (lines, unterminated)
    }

    fileprivate static func isMarker(_ line: Line, _ c: Unicode.Scalar) -> Bool {
        line.count >= 3 && line[0] == c && line[1] == c && line[2] == c && (line.count == 3 || isSpace(line[3]))
    }
}

// MARK: - Implementation

private typealias Line = [Unicode.Scalar]

private func isSpace(_ s: Unicode.Scalar?) -> Bool { s == " " || s == "\t" }
private func isFlowIndicator(_ s: Unicode.Scalar?) -> Bool {
    s == "," || s == "[" || s == "]" || s == "{" || s == "}"
}
private func makeString<S: Sequence>(_ scalars: S) -> String where S.Element == Unicode.Scalar {
    var view = String.UnicodeScalarView()
    view.append(contentsOf: scalars)
    return String(view)
}
private func isNullWord(_ s: String) -> Bool { s == "~" || s == "null" || s == "Null" || s == "NULL" }
private func describe(_ s: Unicode.Scalar?) -> String {
    guard let s else { return "end of line" }
    if s == "\t" { return "a tab" }
    return "'\(s)'"
}
private func hexValue(_ s: Unicode.Scalar) -> UInt32? {
    switch s {
    case "0"..."9": s.value - 48
    case "a"..."f": s.value - 87
    case "A"..."F": s.value - 55
    default: nil
    }
}

/// Parses one document. Positions are (row, col) indexes into `lines`; block-level functions
/// return with `row` at the first line they did not consume (col 0).
private struct Parser {
    let lines: [Line]
    let firstLine: Int
    /// The document ends the text and its last line has no line break (matters to `|` and `>`).
    let unterminatedLastLine: Bool
    var row = 0
    var col = 0
    var depth = 0
    /// Indentation of the block parent of the flow collection being parsed (-1: none), and the
    /// first line inside it that is not indented deeper (YAML wants deeper; like libyaml we accept
    /// it, but mention it when an error follows: it usually means a missing ']' or '}').
    var flowFloor = -1
    var floorBreach = -1

    init(lines: [Line], firstLine: Int, unterminatedLastLine: Bool) {
        self.lines = lines
        self.firstLine = firstLine
        self.unterminatedLastLine = unterminatedLastLine
    }

    enum Stop { case eol, colon, comment, indicator }
    struct Key { var text: String; var valueCol: Int }

    // MARK: Helpers

    func char(_ r: Int, _ c: Int) -> Unicode.Scalar? {
        guard r >= 0, r < lines.count, c >= 0, c < lines[r].count else { return nil }
        return lines[r][c]
    }
    var cur: Unicode.Scalar? { char(row, col) }
    func peek(_ k: Int) -> Unicode.Scalar? { char(row, col + k) }
    func lineNo(_ r: Int) -> Int { firstLine + r }

    func fail(_ message: String, _ r: Int, _ c: Int) -> YAMLError {
        var r = r, c = c
        if r >= lines.count, !lines.isEmpty { r = lines.count - 1; c = lines[r].count }
        return YAMLError(line: firstLine + max(r, 0), column: max(c, 0) + 1, message: message)
    }
    func fail(_ message: String) -> YAMLError { fail(message, row, col) }

    func null(_ r: Int) -> YAMLNode { .scalar(YAMLScalar(value: "", line: lineNo(r), quoted: false)) }

    mutating func skipSpaces() { while isSpace(cur) { col += 1 } }

    /// True when nothing but whitespace or a comment is left on the current line.
    func restIsBlank() -> Bool {
        var c = col
        while isSpace(char(row, c)) { c += 1 }
        guard let s = char(row, c) else { return true }
        return s == "#" && (c == 0 || isSpace(char(row, c - 1)))
    }

    func isSeqEntry(_ r: Int, _ c: Int) -> Bool {
        char(r, c) == "-" && (char(r, c + 1) == nil || isSpace(char(r, c + 1)))
    }

    mutating func enter() throws(YAMLError) {
        depth += 1
        if depth > YAML.maxDepth { throw fail("nesting is deeper than \(YAML.maxDepth) levels") }
    }

    /// Index of the first non-blank character of row `r`, nil for a blank line. A tab in the
    /// indentation of a line with content (other than a comment) is an error.
    func contentIndex(_ r: Int) throws(YAMLError) -> Int? {
        guard r >= 0, r < lines.count else { return nil }
        let line = lines[r]
        var i = 0
        var tab = -1
        while i < line.count, isSpace(line[i]) {
            if line[i] == "\t", tab < 0 { tab = i }
            i += 1
        }
        if i >= line.count { return nil }
        if tab >= 0, line[i] != "#" {
            throw fail("tab character in indentation; YAML indentation must use spaces", r, tab)
        }
        return i
    }

    /// The first line at or after `from` holding something other than blanks and comments.
    func nextContentLine(_ from: Int) throws(YAMLError) -> (row: Int, indent: Int)? {
        var r = max(from, 0)
        while r < lines.count {
            if let i = try contentIndex(r), lines[r][i] != "#" { return (r, i) }
            r += 1
        }
        return nil
    }

    /// Rejects the YAML features this parser does not support, at the start of a node.
    func checkNodeStart() throws(YAMLError) {
        guard let s = cur else { return }
        let separated = peek(1) == nil || isSpace(peek(1))
        switch s {
        case "&": throw fail("anchors ('&name') are not supported; repeat the value instead")
        case "*": throw fail("aliases ('*name') are not supported; repeat the value instead")
        case "!": throw fail("tags ('!tag') are not supported; remove the tag (quote the value if it starts with '!')")
        case "?" where separated: throw fail("complex mapping keys ('? ') are not supported")
        case ":" where separated: throw fail("missing key before ':'")
        case "%" where col == 0: throw fail("directives ('%YAML', '%TAG') are not supported")
        case "%", "@", "`", ",", "]", "}":
            throw fail("\(describe(s)) cannot start a plain value; put the value in quotes")
        default: return
        }
    }

    // MARK: Block structure

    mutating func parseDocument(startsOnMarker: Bool) throws(YAMLError) -> (node: YAMLNode, line: Int)? {
        guard let first = try nextContentLine(0) else { return nil }
        row = first.row
        col = first.indent
        let isKey = try probeKey(row, col) != nil
        if startsOnMarker, row == 0, isKey || isSeqEntry(row, col) {
            throw fail("a block mapping or sequence cannot start on the '---' line; start it on the next line")
        }
        let node = try parseBlockNode(parentIndent: -1)
        if let extra = try nextContentLine(row) {
            if extra.indent < first.indent {
                throw fail("bad indentation: this line is less indented than the start of the document on line \(lineNo(first.row))", extra.row, extra.indent)
            }
            throw fail("unexpected content after the end of the document's top-level value; check the indentation", extra.row, extra.indent)
        }
        return (node, lineNo(first.row))
    }

    /// Parses the node starting at (row, col). `p` is the indentation of the enclosing block
    /// collection (-1 at the document root).
    mutating func parseBlockNode(parentIndent p: Int) throws(YAMLError) -> YAMLNode {
        try enter()
        defer { depth -= 1 }
        if isSeqEntry(row, col) { return try parseBlockSequence(indent: col, sharesKeyIndent: false) }
        try checkNodeStart()
        if try probeKey(row, col) != nil { return try parseBlockMapping(indent: col) }
        return try parseInlineValue(parentIndent: p)
    }

    /// If (r, c) starts an implicit key (`key:`, `"key":`) returns it and where its value starts.
    func probeKey(_ r: Int, _ c: Int) throws(YAMLError) -> Key? {
        guard let s = char(r, c) else { return nil }
        if s == "\"" || s == "'" {
            var q = self
            q.row = r
            q.col = c
            guard let text = try q.scanQuoted(singleLine: true) else { return nil }
            q.skipSpaces()
            guard q.cur == ":", q.peek(1) == nil || isSpace(q.peek(1)) else { return nil }
            return Key(text: text, valueCol: q.col + 1)
        }
        if s == "[" || s == "{" || s == "|" || s == ">" { return nil }
        let scan = scanPlainLine(r, c, flow: false)
        guard scan.stop == .colon, !scan.text.isEmpty else { return nil }
        return Key(text: scan.text, valueCol: scan.stopCol + 1)
    }

    mutating func parseBlockMapping(indent m: Int) throws(YAMLError) -> YAMLNode {
        var entries: [(key: String, keyLine: Int, value: YAMLNode)] = []
        var seen: [String: Int] = [:]
        let startRow = row
        while true {
            let keyRow = row, keyCol = col
            if isSeqEntry(row, col) {
                throw fail("expected 'key: value' but found a sequence entry '- '; a list must be the value of a key (put 'key:' on the line above)")
            }
            try checkNodeStart()
            guard let key = try probeKey(row, col) else { throw notAKeyError(mappingRow: startRow) }
            if let first = seen[key.text] {
                throw fail("duplicate key '\(key.text)' (first defined on line \(first))", keyRow, keyCol)
            }
            seen[key.text] = lineNo(keyRow)
            col = key.valueCol
            let value = try parseMappingValue(keyIndent: m, keyRow: keyRow)
            entries.append((key.text, lineNo(keyRow), value))
            guard let next = try nextContentLine(row) else { row = lines.count; col = 0; break }
            if next.indent < m { row = next.row; col = 0; break }
            if next.indent > m {
                throw fail("bad indentation: this line is indented \(next.indent) spaces but the mapping it continues (line \(lineNo(startRow))) uses \(m)", next.row, next.indent)
            }
            row = next.row
            col = next.indent
        }
        return .mapping(YAMLMapping(entries: entries, line: lineNo(startRow)))
    }

    /// The error for a line at mapping-key indentation that is not `key: value`.
    func notAKeyError(mappingRow: Int) -> YAMLError {
        guard let s = cur else { return fail("expected 'key: value'") }
        if s == "\"" || s == "'" {
            var q = self
            do { _ = try q.scanQuoted(singleLine: false) } catch { return error }
            return fail("missing ':' after the quoted key", q.row, q.col)
        }
        if s == "[" || s == "{" {
            return fail("expected 'key: value'; a flow collection cannot be used as a key (complex keys are not supported)")
        }
        if s == "|" || s == ">" { return fail("expected 'key: value'; a key cannot start with \(describe(s)) (put it in quotes)") }
        let scan = scanPlainLine(row, col, flow: false)
        if scan.text.unicodeScalars.contains(":") {
            return fail("missing space after ':' in '\(scan.text)'; a mapping entry is written 'key: value'")
        }
        return fail("missing ':' after '\(scan.text)'; expected 'key: value' at the indentation of the mapping that starts on line \(lineNo(mappingRow))")
    }

    /// Parses what follows `key:` (col is just after the colon).
    mutating func parseMappingValue(keyIndent m: Int, keyRow: Int) throws(YAMLError) -> YAMLNode {
        skipSpaces()
        if restIsBlank() {
            guard let next = try nextContentLine(row + 1) else { row = lines.count; col = 0; return null(keyRow) }
            if next.indent > m {
                row = next.row
                col = next.indent
                return try parseBlockNode(parentIndent: m)
            }
            if next.indent == m && isSeqEntry(next.row, next.indent) {
                row = next.row
                col = next.indent
                return try parseBlockSequence(indent: m, sharesKeyIndent: true)
            }
            row = next.row
            col = 0
            return null(keyRow)
        }
        if isSeqEntry(row, col) {
            throw fail("a block sequence cannot start on the same line as its key; move '- ...' to the next line")
        }
        try checkNodeStart()
        if try probeKey(row, col) != nil {
            throw fail("a nested mapping cannot start on the same line as its key; move it to the next line and indent it (or quote the value if it contains ': ')")
        }
        return try parseInlineValue(parentIndent: m)
    }

    /// `sharesKeyIndent`: the Kubernetes style `key:\n- item`, where a line at the same
    /// indentation that is not `- ` ends the sequence and goes back to the mapping.
    mutating func parseBlockSequence(indent m: Int, sharesKeyIndent: Bool) throws(YAMLError) -> YAMLNode {
        var items: [YAMLNode] = []
        let startRow = row
        while true {
            let itemRow = row
            col += 1
            if cur == "\t" { throw fail("tab after '-'; use spaces") }
            skipSpaces()
            if restIsBlank() {
                if let next = try nextContentLine(row + 1), next.indent > m {
                    row = next.row
                    col = next.indent
                    items.append(try parseBlockNode(parentIndent: m))
                } else {
                    items.append(null(itemRow))
                    row += 1
                    col = 0
                }
            } else {
                items.append(try parseBlockNode(parentIndent: m))
            }
            guard let next = try nextContentLine(row) else { row = lines.count; col = 0; break }
            if next.indent < m { row = next.row; col = 0; break }
            if next.indent > m {
                throw fail("bad indentation: this line is indented \(next.indent) spaces but the sequence entries (line \(lineNo(startRow))) use \(m)", next.row, next.indent)
            }
            if !isSeqEntry(next.row, next.indent) {
                if sharesKeyIndent { row = next.row; col = 0; break }
                throw fail("expected a sequence entry '- ' at this indentation (the sequence starts on line \(lineNo(startRow)))", next.row, next.indent)
            }
            row = next.row
            col = next.indent
        }
        return .sequence(YAMLSequence(items: items, line: lineNo(startRow)))
    }

    /// A scalar or flow collection in block context; consumes through the end of its last line.
    mutating func parseInlineValue(parentIndent p: Int) throws(YAMLError) -> YAMLNode {
        try checkNodeStart()
        let startRow = row
        guard let s = cur else {
            row += 1
            col = 0
            return null(startRow)
        }
        switch s {
        case "|", ">":
            return try parseBlockScalar(parentIndent: p)
        case "\"", "'":
            let text = try scanQuoted(singleLine: false) ?? ""
            try finishLine(after: "the quoted string")
            return .scalar(YAMLScalar(value: text, line: lineNo(startRow), quoted: true))
        case "[", "{":
            flowFloor = p
            floorBreach = -1
            let node: YAMLNode
            do {
                node = try parseFlowNode(isKey: false)
            } catch {
                var e = error
                if floorBreach >= 0 && e.line >= lineNo(floorBreach) {
                    e.message += " (line \(lineNo(floorBreach)) is not indented more than its parent; is a ']' or '}' missing for the \(describe(s)) on line \(lineNo(startRow))?)"
                }
                throw e
            }
            flowFloor = -1
            try finishLine(after: s == "[" ? "']'" : "'}'")
            return node
        default:
            if isSeqEntry(row, col) { throw fail("unexpected sequence entry '- '") }
            return try parsePlainBlock(parentIndent: p)
        }
    }

    /// After a quoted scalar or flow collection only a comment may follow on the line.
    mutating func finishLine(after what: String) throws(YAMLError) {
        skipSpaces()
        if let s = cur, s != "#" {
            if s == ":" {
                throw fail("unexpected ':' after \(what); keys must be plain or quoted scalars on one line (complex keys are not supported)")
            }
            throw fail("unexpected \(describe(s)) after \(what)")
        }
        row += 1
        col = 0
    }

    // MARK: Scalars

    /// Scans a single-line plain scalar from (r, c). Returns the trimmed text, why it stopped and
    /// the column of the stop (the ':' / '#' / indicator, or the line length).
    func scanPlainLine(_ r: Int, _ c: Int, flow: Bool) -> (text: String, stop: Stop, stopCol: Int) {
        guard r >= 0, r < lines.count, c >= 0 else { return ("", .eol, c) }
        let line = lines[r]
        let start = min(c, line.count)
        var i = start, end = start
        while i < line.count {
            let s = line[i]
            if s == ":" {
                let n: Unicode.Scalar? = i + 1 < line.count ? line[i + 1] : nil
                if n == nil || isSpace(n) || (flow && isFlowIndicator(n)) {
                    return (makeString(line[start..<end]), .colon, i)
                }
            } else if s == "#", i > start, isSpace(line[i - 1]) {
                return (makeString(line[start..<end]), .comment, i)
            } else if flow, isFlowIndicator(s) {
                return (makeString(line[start..<end]), .indicator, i)
            }
            i += 1
            if !isSpace(s) { end = i }
        }
        return (makeString(line[start..<end]), .eol, i)
    }

    /// A plain scalar in block context, folded over continuation lines indented more than `p`.
    mutating func parsePlainBlock(parentIndent p: Int) throws(YAMLError) -> YAMLNode {
        let startRow = row
        let first = scanPlainLine(row, col, flow: false)
        if first.stop == .colon || first.text.isEmpty {
            throw fail("unexpected \(describe(char(row, first.stopCol)))", row, first.stopCol)
        }
        var value = first.text
        var multiline = false
        var r = row + 1
        if first.stop == .eol {
            var empties = 0
            while r < lines.count {
                guard let ci = try contentIndex(r) else { empties += 1; r += 1; continue }
                if lines[r][ci] == "#" || ci <= p { break }
                let next = scanPlainLine(r, ci, flow: false)
                if next.stop == .colon {
                    if try contentIndex(startRow) == col && ci == col {
                        throw fail("missing ':' after '\(first.text)' (the next line is a 'key: value' entry at the same indentation)", startRow, col)
                    }
                    throw fail("bad indentation: this line is indented deeper than line \(lineNo(startRow)), so it would continue that line's value; align it with its sibling keys (or quote the value if it is meant to contain ': ')", r, ci)
                }
                value += empties == 0 ? " " : String(repeating: "\n", count: empties)
                value += next.text
                multiline = true
                empties = 0
                r += 1
                if next.stop == .comment { break }
            }
        }
        row = r
        col = 0
        return .scalar(YAMLScalar(value: !multiline && isNullWord(value) ? "" : value, line: lineNo(startRow), quoted: false))
    }

    /// Scans a '...' or "..." scalar starting at the opening quote; on return col is just past the
    /// closing quote. With `singleLine`, returns nil if the string does not close on this line.
    mutating func scanQuoted(singleLine: Bool) throws(YAMLError) -> String? {
        guard let q = cur, q == "\"" || q == "'" else { return nil }
        let double = q == "\""
        let startRow = row, startCol = col
        let unterminated = double
            ? "unterminated double-quoted string (missing closing \")"
            : "unterminated single-quoted string (missing closing ')"
        var out: [Unicode.Scalar] = []
        var keep = 0 // out.count after the last character a line break must not trim
        col += 1
        while true {
            guard row < lines.count else { throw fail(unterminated, startRow, startCol) }
            let line = lines[row]
            if col >= line.count {
                if singleLine { return nil }
                out.removeLast(max(out.count - keep, 0))
                let empties = try nextQuotedLine(unterminated, startRow, startCol)
                out.append(contentsOf: empties == 0 ? [" "] : Array(repeating: "\n", count: empties))
                keep = out.count
                continue
            }
            let s = line[col]
            if s == q {
                if !double, col + 1 < line.count, line[col + 1] == "'" {
                    out.append("'")
                    col += 2
                    keep = out.count
                    continue
                }
                col += 1
                return makeString(out)
            }
            if double, s == "\\" {
                if col + 1 >= line.count { // escaped line break: join without a space
                    if singleLine { return nil }
                    let empties = try nextQuotedLine(unterminated, startRow, startCol)
                    out.append(contentsOf: Array(repeating: "\n", count: empties))
                } else {
                    out.append(try scanEscape())
                }
                keep = out.count
                continue
            }
            out.append(s)
            col += 1
            if !isSpace(s) { keep = out.count }
        }
    }

    /// Moves from the end of a line inside a quoted scalar to the first non-blank character of
    /// the next non-empty line; returns how many empty lines were skipped.
    mutating func nextQuotedLine(_ message: String, _ startRow: Int, _ startCol: Int) throws(YAMLError) -> Int {
        row += 1
        col = 0
        var empties = 0
        while row < lines.count, lines[row].allSatisfy({ isSpace($0) }) {
            empties += 1
            row += 1
        }
        guard row < lines.count else { throw fail(message, startRow, startCol) }
        skipSpaces()
        return empties
    }

    /// At a backslash inside a double-quoted scalar (not at the end of the line).
    mutating func scanEscape() throws(YAMLError) -> Unicode.Scalar {
        let escRow = row, escCol = col
        guard let e = peek(1) else { throw fail("invalid escape") }
        col += 2
        switch e {
        case "0": return "\u{0}"
        case "a": return "\u{7}"
        case "b": return "\u{8}"
        case "t", "\t": return "\t"
        case "n": return "\n"
        case "v": return "\u{B}"
        case "f": return "\u{C}"
        case "r": return "\r"
        case "e": return "\u{1B}"
        case " ", "\"", "/", "\\": return e
        case "N": return "\u{85}"
        case "_": return "\u{A0}"
        case "L": return "\u{2028}"
        case "P": return "\u{2029}"
        case "x", "u", "U":
            let digits = e == "x" ? 2 : e == "u" ? 4 : 8
            var v = try readHex(digits, escRow, escCol)
            if v >= 0xD800 && v <= 0xDBFF, cur == "\\", peek(1) == "u" {
                col += 2
                let low = try readHex(4, escRow, escCol)
                guard low >= 0xDC00 && low <= 0xDFFF else {
                    throw fail("invalid escape: a high surrogate must be followed by a low surrogate (\\uDC00-\\uDFFF)", escRow, escCol)
                }
                v = 0x10000 + ((v - 0xD800) << 10) + (low - 0xDC00)
            }
            guard let scalar = Unicode.Scalar(v) else {
                throw fail("invalid escape: not a Unicode scalar value (lone surrogate or out of range)", escRow, escCol)
            }
            return scalar
        default:
            throw fail("invalid escape '\\\(e)' in double-quoted string (supported: \\\" \\\\ \\/ \\n \\t \\r \\0 \\uXXXX ...)", escRow, escCol)
        }
    }

    mutating func readHex(_ count: Int, _ escRow: Int, _ escCol: Int) throws(YAMLError) -> UInt32 {
        var v: UInt32 = 0
        for _ in 0..<count {
            guard let s = cur, let d = hexValue(s) else {
                throw fail("invalid escape: expected \(count) hexadecimal digits", escRow, escCol)
            }
            v = v &* 16 &+ d
            col += 1
        }
        return v
    }

    /// `|` or `>` block scalar; (row, col) is at the indicator.
    mutating func parseBlockScalar(parentIndent p: Int) throws(YAMLError) -> YAMLNode {
        let startRow = row
        let literal = cur == "|"
        col += 1
        var chomp: Unicode.Scalar = " " // "-" strip, "+" keep, " " clip
        var explicit = 0
        for _ in 0..<2 {
            guard let s = cur else { break }
            if (s == "-" || s == "+") && chomp == " " {
                chomp = s
            } else if s >= "1" && s <= "9" && explicit == 0 {
                explicit = Int(s.value) - 48
            } else {
                break
            }
            col += 1
        }
        let headerEnd = col
        skipSpaces()
        if let s = cur, !(s == "#" && col > headerEnd) {
            throw fail("unexpected \(describe(s)) in block scalar header; write '|' or '>' optionally followed by '-', '+' or an indentation digit 1-9, then the text on the following lines")
        }
        row += 1
        col = 0
        // Content indentation: explicit, or that of the first non-empty line.
        var indent = p + 1
        if explicit > 0 {
            indent = max(p, 0) + explicit
        } else {
            var r = row
            while r < lines.count {
                let line = lines[r]
                var i = 0
                while i < line.count, line[i] == " " { i += 1 }
                if i < line.count, !line[i...].allSatisfy({ isSpace($0) }) {
                    if i > p { indent = i }
                    break
                }
                r += 1
            }
        }
        var body: [Line] = [] // lines without indentation; [] for an empty line
        while row < lines.count {
            let line = lines[row]
            var i = 0
            while i < line.count, line[i] == " " { i += 1 }
            if i >= indent {
                body.append(Array(line[indent...]))
            } else if line[i...].allSatisfy({ isSpace($0) }) {
                body.append([])
            } else {
                break
            }
            row += 1
        }
        var last = -1
        for (k, l) in body.enumerated() where !l.isEmpty { last = k }
        var out: [Unicode.Scalar] = []
        if last >= 0 {
            var empties = 0, started = false, previousNormal = false
            for k in 0...last {
                let l = body[k]
                if l.isEmpty { empties += 1; continue }
                let moreIndented = isSpace(l.first)
                if !started {
                    out.append(contentsOf: Array(repeating: "\n", count: empties))
                    started = true
                } else if literal {
                    out.append(contentsOf: Array(repeating: "\n", count: empties + 1))
                } else if previousNormal && !moreIndented {
                    out.append(contentsOf: empties == 0 ? [" "] : Array(repeating: "\n", count: empties))
                } else {
                    out.append(contentsOf: Array(repeating: "\n", count: empties + 1))
                }
                out.append(contentsOf: l)
                previousNormal = !moreIndented
                empties = 0
            }
        }
        // The final line break is part of the text; a last line without one contributes none.
        let noFinalBreak = unterminatedLastLine && row == lines.count
        let trailing = body.count - last - 1 - (noFinalBreak && last < body.count - 1 ? 1 : 0)
        if chomp != "-" && last >= 0 && !(noFinalBreak && last == body.count - 1) { out.append("\n") }
        if chomp == "+" { out.append(contentsOf: Array(repeating: "\n", count: max(trailing, 0))) }
        return .scalar(YAMLScalar(value: makeString(out), line: lineNo(startRow), quoted: true))
    }

    // MARK: Flow collections

    /// Skips blanks, line breaks and comments inside a flow collection; false at end of document.
    mutating func skipFlowSpace() -> Bool {
        var freshLine = false
        while row < lines.count {
            let line = lines[row]
            while col < line.count, isSpace(line[col]) { col += 1 }
            if col >= line.count || line[col] == "#" {
                row += 1
                col = 0
                freshLine = true
                continue
            }
            if freshLine, col <= flowFloor, floorBreach < 0, line[col] != "]", line[col] != "}" { floorBreach = row }
            return true
        }
        return false
    }

    func unterminated(_ what: String, _ openRow: Int, _ openCol: Int) -> YAMLError {
        fail("unterminated flow \(what) is never closed", openRow, openCol)
    }

    mutating func parseFlowNode(isKey: Bool) throws(YAMLError) -> YAMLNode {
        try enter()
        defer { depth -= 1 }
        guard let s = cur else { throw fail("expected a value") }
        let startRow = row
        switch s {
        case "[": return try parseFlowSequence()
        case "{": return try parseFlowMapping()
        case "\"", "'":
            let text = try scanQuoted(singleLine: false) ?? ""
            return .scalar(YAMLScalar(value: text, line: lineNo(startRow), quoted: true))
        case "|", ">":
            throw fail("block scalars ('|', '>') are not allowed inside [ ] or { }")
        default:
            if isSeqEntry(row, col) { throw fail("block sequence entries ('- ') are not allowed inside [ ] or { }") }
            try checkNodeStart()
            return try parsePlainFlow(isKey: isKey)
        }
    }

    /// A plain scalar inside a flow collection; may continue on following lines.
    mutating func parsePlainFlow(isKey: Bool) throws(YAMLError) -> YAMLNode {
        let startRow = row
        var scan = scanPlainLine(row, col, flow: true)
        if scan.text.isEmpty { throw fail("unexpected \(describe(cur))") }
        var value = scan.text
        var multiline = false
        col = scan.stopCol
        while scan.stop == .eol {
            var r = row + 1, empties = 0, found = -1
            while r < lines.count {
                let line = lines[r]
                var i = 0
                while i < line.count, isSpace(line[i]) { i += 1 }
                if i >= line.count { empties += 1; r += 1; continue }
                let n: Unicode.Scalar? = i + 1 < line.count ? line[i + 1] : nil
                let s = line[i]
                if !(s == "#" || isFlowIndicator(s) || (s == ":" && (n == nil || isSpace(n) || isFlowIndicator(n)))) {
                    found = i
                }
                break
            }
            guard found >= 0 else { break }
            if found <= flowFloor && floorBreach < 0 { floorBreach = r }
            scan = scanPlainLine(r, found, flow: true)
            value += empties == 0 ? " " : String(repeating: "\n", count: empties)
            value += scan.text
            row = r
            col = scan.stopCol
            multiline = true
        }
        let null = !isKey && !multiline && isNullWord(value)
        return .scalar(YAMLScalar(value: null ? "" : value, line: lineNo(startRow), quoted: false))
    }

    mutating func parseFlowSequence() throws(YAMLError) -> YAMLNode {
        let openRow = row, openCol = col
        col += 1
        var items: [YAMLNode] = []
        while true {
            guard skipFlowSpace(), let s = cur else { throw unterminated("sequence: '['", openRow, openCol) }
            if s == "]" { col += 1; break }
            if s == "," { throw fail("unexpected ',' in flow sequence (empty entry)") }
            items.append(try parseFlowNode(isKey: false))
            guard skipFlowSpace(), let t = cur else { throw unterminated("sequence: '['", openRow, openCol) }
            if t == "," { col += 1; continue }
            if t == "]" { col += 1; break }
            if t == ":" { throw fail("'key: value' pairs directly inside [ ] are not supported; wrap them in braces: [{key: value}]") }
            throw fail("expected ',' or ']' in flow sequence, found \(describe(t))")
        }
        return .sequence(YAMLSequence(items: items, line: lineNo(openRow)))
    }

    mutating func parseFlowMapping() throws(YAMLError) -> YAMLNode {
        let openRow = row, openCol = col
        col += 1
        var entries: [(key: String, keyLine: Int, value: YAMLNode)] = []
        var seen: [String: Int] = [:]
        while true {
            guard skipFlowSpace(), let s = cur else { throw unterminated("mapping: '{'", openRow, openCol) }
            if s == "}" { col += 1; break }
            if s == "," { throw fail("unexpected ',' in flow mapping (empty entry)") }
            if s == "[" || s == "{" { throw fail("a collection cannot be used as a key (complex keys are not supported)") }
            let keyRow = row, keyCol = col
            let key = try parseFlowNode(isKey: true).asScalar?.value ?? ""
            guard skipFlowSpace(), let t = cur else { throw unterminated("mapping: '{'", openRow, openCol) }
            let value: YAMLNode
            if t == ":" {
                col += 1
                guard skipFlowSpace(), let v = cur else { throw unterminated("mapping: '{'", openRow, openCol) }
                if v == "," || v == "}" { value = null(keyRow) } else { value = try parseFlowNode(isKey: false) }
            } else if t == "," || t == "}" {
                value = null(keyRow)
            } else {
                throw fail("expected ':' after key '\(key)' in flow mapping, found \(describe(t))")
            }
            if let first = seen[key] {
                throw fail("duplicate key '\(key)' (first defined on line \(first))", keyRow, keyCol)
            }
            seen[key] = lineNo(keyRow)
            entries.append((key, lineNo(keyRow), value))
            guard skipFlowSpace(), let e = cur else { throw unterminated("mapping: '{'", openRow, openCol) }
            if e == "," { col += 1; continue }
            if e == "}" { col += 1; break }
            throw fail("expected ',' or '}' in flow mapping, found \(describe(e))")
        }
        return .mapping(YAMLMapping(entries: entries, line: lineNo(openRow)))
    }
}
