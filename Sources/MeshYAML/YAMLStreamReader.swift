import CYAML

/// One pass of libyaml's event parser over a stream, building each document's tree and cutting the
/// input into the documents' exact texts. Refuses undefined aliases and the `YAML` limits.
final class YAMLStreamReader {
    /// A collection being read: its children so far and what the node will carry.
    private struct Frame {
        var isMapping: Bool
        var flow: Bool
        var tag: String?
        var anchor: String?
        var line: Int
        var column: Int
        var items: [YAMLNode] = []
        var pairs: [YAMLPair] = []
        var pendingKey: YAMLNode?
    }

    private let bytes: [UInt8]
    private var documents: [YAMLDocument] = []
    private var stack: [Frame] = []
    private var nodeCount = 0
    // the document being read
    private var documentIndex = 0
    private var inDocument = false
    private var root: YAMLNode?
    private var explicitStart = false
    private var hasDirectives = false
    private var documentLine = 0
    private var anchors = Set<String>()
    // segments: where the next document's source starts, and libyaml's character index -> byte offset
    private var segmentStart = 0
    private var cursorChars = 0
    private var cursorBytes = 0

    init(_ text: String) {
        bytes = Array(text.utf8)
    }

    func read() throws(YAMLError) -> (documents: [YAMLDocument], trailer: String) {
        // libyaml reads through its own pointer; a copy with a NUL after it keeps the input alive and non-empty.
        let input = UnsafeMutablePointer<UInt8>.allocate(capacity: bytes.count + 1)
        input.initialize(from: bytes, count: bytes.count)
        input[bytes.count] = 0
        defer { input.deallocate() }

        // libyaml keeps pointers to the parser itself (the string reader's `read_handler_data`) from
        // `yaml_parser_set_input_string` on: it must stay at one address for every later call, which
        // `&local` does not promise beyond one call. Deinitialised and freed on every path (the defers).
        let parser = UnsafeMutablePointer<yaml_parser_t>.allocate(capacity: 1)
        parser.initialize(to: yaml_parser_t())
        defer {
            parser.deinitialize(count: 1)
            parser.deallocate()
        }
        guard yaml_parser_initialize(parser) == 1 else {
            throw YAMLError(message: "libyaml: out of memory", document: 1, line: 1, column: 1)
        }
        defer { yaml_parser_delete(parser) }
        yaml_parser_set_input_string(parser, input, bytes.count)
        yaml_parser_set_encoding(parser, YAML_UTF8_ENCODING)

        var event = yaml_event_t()
        while true {
            guard yaml_parser_parse(parser, &event) == 1 else { throw parserError(parser) }
            defer { yaml_event_delete(&event) }
            if event.type == YAML_STREAM_END_EVENT { break }
            try handle(&event)
        }
        let trailer = String(decoding: bytes[segmentStart...], as: UTF8.self)
        return (documents, trailer)
    }

    // MARK: events

    private func handle(_ event: inout yaml_event_t) throws(YAMLError) {
        let line = Int(event.start_mark.line) + 1
        let column = Int(event.start_mark.column) + 1
        switch event.type {
        case YAML_DOCUMENT_START_EVENT:
            documentIndex += 1
            inDocument = true
            root = nil
            anchors = []
            explicitStart = event.data.document_start.implicit == 0
            hasDirectives = event.data.document_start.version_directive != nil
                || event.data.document_start.tag_directives.start != event.data.document_start.tag_directives.end
            documentLine = line
        case YAML_DOCUMENT_END_EVENT:
            let end = byteOffset(ofCharacter: Int(event.end_mark.index))
            let source = String(decoding: bytes[segmentStart..<end], as: UTF8.self)
            segmentStart = end
            var documentRoot = root
            if let r = documentRoot, r.tag == nil, r.anchor == nil, case .scalar("", .plain) = r.kind {
                documentRoot = nil  // libyaml's empty node for a document with no content
            }
            documents.append(YAMLDocument(root: documentRoot, explicitStart: explicitStart,
                                          explicitEnd: event.data.document_end.implicit == 0,
                                          hasDirectives: hasDirectives, index: documentIndex,
                                          line: documentLine, source: source))
            inDocument = false
        case YAML_SCALAR_EVENT:
            try countNode(line: line, column: column)
            let s = event.data.scalar
            let value = s.value.map { String(decoding: UnsafeBufferPointer(start: $0, count: s.length), as: UTF8.self) } ?? ""
            let anchor = YAMLStreamReader.string(s.anchor)
            defineAnchor(anchor)
            add(YAMLNode(kind: .scalar(value, YAMLStreamReader.style(s.style)), tag: YAMLStreamReader.string(s.tag),
                         anchor: anchor, line: line, column: column))
        case YAML_ALIAS_EVENT:
            try countNode(line: line, column: column)
            let name = YAMLStreamReader.string(event.data.alias.anchor) ?? ""
            guard anchors.contains(name) else {
                throw YAMLError(message: "found undefined alias \"\(name)\" (no anchor &\(name) before it in this document)",
                                document: documentIndex, line: line, column: column)
            }
            add(YAMLNode(kind: .alias(name), line: line, column: column))
        case YAML_SEQUENCE_START_EVENT:
            try countNode(line: line, column: column)
            let s = event.data.sequence_start
            try push(Frame(isMapping: false, flow: s.style == YAML_FLOW_SEQUENCE_STYLE, tag: YAMLStreamReader.string(s.tag),
                           anchor: YAMLStreamReader.string(s.anchor), line: line, column: column))
        case YAML_MAPPING_START_EVENT:
            try countNode(line: line, column: column)
            let s = event.data.mapping_start
            try push(Frame(isMapping: true, flow: s.style == YAML_FLOW_MAPPING_STYLE, tag: YAMLStreamReader.string(s.tag),
                           anchor: YAMLStreamReader.string(s.anchor), line: line, column: column))
        case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
            guard let f = stack.popLast() else { return }
            let kind: YAMLNode.Kind = f.isMapping ? .mapping(f.pairs, flow: f.flow) : .sequence(f.items, flow: f.flow)
            add(YAMLNode(kind: kind, tag: f.tag, anchor: f.anchor, line: f.line, column: f.column))
        default:
            break
        }
    }

    private func countNode(line: Int, column: Int) throws(YAMLError) {
        nodeCount += 1
        if nodeCount > YAML.maxNodes {
            throw YAMLError(message: "more than \(YAML.maxNodes) nodes in the stream", document: documentIndex, line: line, column: column)
        }
    }

    /// An anchor counts from its node's start, so a collection may hold an alias to itself (kept, never expanded).
    private func defineAnchor(_ anchor: String?) {
        if let anchor { anchors.insert(anchor) }
    }

    private func push(_ frame: Frame) throws(YAMLError) {
        if stack.count >= YAML.maxDepth {
            throw YAMLError(message: "nested deeper than \(YAML.maxDepth) levels", document: documentIndex,
                            line: frame.line, column: frame.column)
        }
        defineAnchor(frame.anchor)
        stack.append(frame)
    }

    private func add(_ node: YAMLNode) {
        guard !stack.isEmpty else {
            root = node
            return
        }
        let top = stack.count - 1
        if stack[top].isMapping {
            if let key = stack[top].pendingKey {
                stack[top].pairs.append(YAMLPair(key: key, value: node))
                stack[top].pendingKey = nil
            } else {
                stack[top].pendingKey = node
            }
        } else {
            stack[top].items.append(node)
        }
    }

    // MARK: positions and errors

    /// libyaml's mark index counts characters (Unicode scalars; CR LF is two); marks asked for only grow.
    private func byteOffset(ofCharacter index: Int) -> Int {
        while cursorChars < index && cursorBytes < bytes.count {
            let b = bytes[cursorBytes]
            cursorBytes += b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4
            cursorChars += 1
        }
        return min(cursorBytes, bytes.count)
    }

    /// 1-based line and column (in characters) of a byte offset.
    private func position(ofByte offset: Int) -> (line: Int, column: Int) {
        var line = 1, column = 1
        var i = 0
        let end = min(offset, bytes.count)
        while i < end {
            let b = bytes[i]
            if b == 0x0A || (b == 0x0D && (i + 1 >= bytes.count || bytes[i + 1] != 0x0A)) {
                line += 1
                column = 1
            } else if b & 0xC0 != 0x80 {
                column += 1
            }
            i += 1
        }
        return (line, column)
    }

    private func parserError(_ p: UnsafeMutablePointer<yaml_parser_t>) -> YAMLError {
        let parser = p.pointee  // a copy of the fields only; libyaml still owns what they point to
        let document = inDocument ? documentIndex : documentIndex + 1
        let problem = YAMLStreamReader.cString(parser.problem) ?? "libyaml error"
        switch parser.error {
        case YAML_MEMORY_ERROR:
            return YAMLError(message: "libyaml: out of memory", document: max(document, 1), line: 1, column: 1)
        case YAML_READER_ERROR:
            let (line, column) = position(ofByte: Int(parser.problem_offset))
            var message = problem
            if parser.problem_value >= 0 { message += " (character U+\(String(parser.problem_value, radix: 16, uppercase: true)))" }
            return YAMLError(message: message, document: document, line: line, column: column)
        default:
            let line = Int(parser.problem_mark.line) + 1
            let column = Int(parser.problem_mark.column) + 1
            var message = problem
            if let context = YAMLStreamReader.cString(parser.context) {
                message += " " + context
                let cl = Int(parser.context_mark.line) + 1, cc = Int(parser.context_mark.column) + 1
                if cl != line || cc != column { message += " (started at line \(cl), column \(cc))" }
            }
            return YAMLError(message: message, document: document, line: line, column: column)
        }
    }

    // MARK: C values

    private static func string(_ p: UnsafeMutablePointer<yaml_char_t>?) -> String? {
        guard let p else { return nil }
        return String(cString: p)
    }

    private static func cString(_ p: UnsafePointer<CChar>?) -> String? {
        guard let p else { return nil }
        return String(cString: p)
    }

    private static func style(_ s: yaml_scalar_style_t) -> YAMLScalarStyle {
        switch s {
        case YAML_SINGLE_QUOTED_SCALAR_STYLE: return .singleQuoted
        case YAML_DOUBLE_QUOTED_SCALAR_STYLE: return .doubleQuoted
        case YAML_LITERAL_SCALAR_STYLE: return .literal
        case YAML_FOLDED_SCALAR_STYLE: return .folded
        default: return .plain
        }
    }
}
