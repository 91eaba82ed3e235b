import CYAML

/// One document written through libyaml's emitter as a stream of its own (indent 2, no line
/// folding, unicode kept), event for event from the tree.
final class YAMLStreamWriter {
    /// The bytes libyaml hands to its write handler.
    private final class Output {
        var bytes: [UInt8] = []
    }

    private let documentIndex: Int
    private let output = Output()
    /// At one address for the writer's life, like the reader's parser: libyaml keeps its state in it
    /// from call to call (`&storedProperty` promises an address for one call only). Only `write`
    /// initialises and deletes libyaml's state in it.
    private let emitter: UnsafeMutablePointer<yaml_emitter_t>
    /// The node being written, for the position of an emit error.
    private var line = 0, column = 0

    init(document: Int) {
        documentIndex = document
        emitter = .allocate(capacity: 1)
        emitter.initialize(to: yaml_emitter_t())
    }

    deinit {
        emitter.deinitialize(count: 1)
        emitter.deallocate()
    }

    func write(_ document: YAMLDocument, forceStart: Bool) throws(YAMLError) -> String {
        guard yaml_emitter_initialize(emitter) == 1 else { throw error("libyaml: out of memory") }
        defer { yaml_emitter_delete(emitter) }
        // The handler's data is `output` itself (a class, unretained): a `let` of self, alive for the whole call.
        let context = Unmanaged.passUnretained(output).toOpaque()
        yaml_emitter_set_output(emitter, { data, buffer, size in
            guard let data, let buffer else { return 1 }
            let out = Unmanaged<Output>.fromOpaque(data).takeUnretainedValue()
            out.bytes.append(contentsOf: UnsafeBufferPointer(start: buffer, count: size))
            return 1
        }, context)
        yaml_emitter_set_indent(emitter, 2)
        yaml_emitter_set_width(emitter, -1)
        yaml_emitter_set_unicode(emitter, 1)
        yaml_emitter_set_break(emitter, YAML_LN_BREAK)

        var event = yaml_event_t()
        yaml_stream_start_event_initialize(&event, YAML_UTF8_ENCODING)
        try emit(&event)
        let implicitStart = !(document.explicitStart || forceStart || document.root == nil)
        yaml_document_start_event_initialize(&event, nil, nil, nil, implicitStart ? 1 : 0)
        try emit(&event)
        try node(document.root ?? YAMLNode(kind: .scalar("", .plain)), depth: 0, flow: false, key: false)
        yaml_document_end_event_initialize(&event, document.explicitEnd ? 0 : 1)
        try emit(&event)
        yaml_stream_end_event_initialize(&event)
        try emit(&event)
        guard yaml_emitter_flush(emitter) == 1 else { throw emitterError() }
        var text = String(decoding: output.bytes, as: UTF8.self)
        if !text.hasSuffix("\n") { text += "\n" }
        return text
    }

    /// Writes `n` and its descendants; `flow` when inside a flow collection, `key` for a mapping key.
    private func node(_ n: YAMLNode, depth: Int, flow inFlow: Bool, key: Bool) throws(YAMLError) {
        line = n.line
        column = n.column
        if depth >= YAML.maxDepth { throw error("nested deeper than \(YAML.maxDepth) levels") }
        // libyaml cannot write the non-specific tag `!` (it writes `!<%21>`): on a scalar it means a
        // string, written `!!str`; on a collection it changes nothing, so it is left out.
        var tagText = n.tag
        if tagText == "!" {
            if case .scalar = n.kind { tagText = YAMLTags.str } else { tagText = nil }
        }
        let anchor = YAMLStreamWriter.cString(n.anchor)
        let tag = YAMLStreamWriter.cString(tagText)
        defer { anchor?.deallocate(); tag?.deallocate() }
        let implicit: Int32 = tagText == nil ? 1 : 0
        var event = yaml_event_t()
        switch n.kind {
        case .alias(let name):
            let p = YAMLStreamWriter.cString(name)
            defer { p?.deallocate() }
            guard yaml_alias_event_initialize(&event, p) == 1 else { throw error("cannot write alias *\(name)") }
            try emit(&event)
        case .scalar(var text, let style):
            // libyaml writes an empty plain scalar in a flow collection or as a key as '' (a string);
            // an untagged one is a null, so it is written `null` there to keep its meaning.
            if text.isEmpty && style == .plain && tagText == nil && (inFlow || key) { text = "null" }
            var value = Array(text.utf8)
            let ok = value.withUnsafeMutableBufferPointer { buf in
                // libyaml copies the value; a non-nil pointer is needed even for ""
                var empty: UInt8 = 0
                return withUnsafeMutablePointer(to: &empty) { e in
                    yaml_scalar_event_initialize(&event, anchor, tag, buf.baseAddress ?? e, Int32(buf.count),
                                                 implicit, implicit, YAMLStreamWriter.style(style))
                }
            }
            guard ok == 1 else { throw error("cannot write a scalar (tag or anchor not valid UTF-8)") }
            try emit(&event)
        case .sequence(let items, let flow):
            guard yaml_sequence_start_event_initialize(&event, anchor, tag, implicit,
                                                       flow ? YAML_FLOW_SEQUENCE_STYLE : YAML_BLOCK_SEQUENCE_STYLE) == 1
            else { throw error("cannot write a sequence") }
            try emit(&event)
            for item in items { try node(item, depth: depth + 1, flow: inFlow || flow, key: false) }
            yaml_sequence_end_event_initialize(&event)
            try emit(&event)
        case .mapping(let pairs, let flow):
            guard yaml_mapping_start_event_initialize(&event, anchor, tag, implicit,
                                                      flow ? YAML_FLOW_MAPPING_STYLE : YAML_BLOCK_MAPPING_STYLE) == 1
            else { throw error("cannot write a mapping") }
            try emit(&event)
            for pair in pairs {
                try node(pair.key, depth: depth + 1, flow: inFlow || flow, key: true)
                try node(pair.value, depth: depth + 1, flow: inFlow || flow, key: false)
            }
            yaml_mapping_end_event_initialize(&event)
            try emit(&event)
        }
    }

    /// Hands an initialised event to the emitter (which owns it from then on, also on failure).
    private func emit(_ event: inout yaml_event_t) throws(YAMLError) {
        guard yaml_emitter_emit(emitter, &event) == 1 else { throw emitterError() }
    }

    private func emitterError() -> YAMLError {
        let problem = emitter.pointee.problem.map { String(cString: $0) } ?? "libyaml emitter error"
        return error(problem)
    }

    private func error(_ message: String) -> YAMLError {
        YAMLError(message: message, document: documentIndex, line: line, column: column)
    }

    /// A NUL-terminated copy for libyaml (which copies it again); the caller deallocates it.
    private static func cString(_ s: String?) -> UnsafeMutablePointer<yaml_char_t>? {
        guard let s else { return nil }
        let u = Array(s.utf8)
        let p = UnsafeMutablePointer<yaml_char_t>.allocate(capacity: u.count + 1)
        p.initialize(from: u, count: u.count)
        p[u.count] = 0
        return p
    }

    private static func style(_ s: YAMLScalarStyle) -> yaml_scalar_style_t {
        switch s {
        case .plain: return YAML_PLAIN_SCALAR_STYLE
        case .singleQuoted: return YAML_SINGLE_QUOTED_SCALAR_STYLE
        case .doubleQuoted: return YAML_DOUBLE_QUOTED_SCALAR_STYLE
        case .literal: return YAML_LITERAL_SCALAR_STYLE
        case .folded: return YAML_FOLDED_SCALAR_STYLE
        }
    }
}
