/// One node of a document, with everything needed to write it back as it was (style, tag, anchor).
public struct YAMLNode: Sendable, Equatable {
    /// What the node is; collections hold their children in order.
    public indirect enum Kind: Sendable, Equatable {
        case scalar(String, YAMLScalarStyle)
        case sequence([YAMLNode], flow: Bool)
        case mapping([YAMLPair], flow: Bool)
        /// `*name`, kept as an alias (never expanded in place).
        case alias(String)
    }

    public var kind: Kind
    /// The explicit tag as resolved by libyaml ("tag:yaml.org,2002:str" for `!!str`, "!" for `!`); nil = none written.
    public var tag: String?
    /// `&name`
    public var anchor: String?
    /// 1-based line of the node's start in the input (0 for nodes built in code).
    public var line: Int
    /// 1-based column of the node's start (0 for nodes built in code).
    public var column: Int

    public init(kind: Kind, tag: String? = nil, anchor: String? = nil, line: Int = 0, column: Int = 0) {
        self.kind = kind
        self.tag = tag
        self.anchor = anchor
        self.line = line
        self.column = column
    }
}

// MARK: Reading

extension YAMLNode {
    /// The text of a scalar (nil otherwise; aliases are not followed here).
    public var scalar: String? {
        if case .scalar(let s, _) = kind { return s }
        return nil
    }

    /// A plain scalar "", "~", "null", "Null", "NULL" with no tag, or any scalar tagged `!!null`.
    public var isNull: Bool {
        guard case .scalar(let s, let style) = kind else { return false }
        if tag == YAMLTags.null { return true }
        guard tag == nil, style == .plain else { return false }
        return s.isEmpty || s == "~" || s == "null" || s == "Null" || s == "NULL"
    }

    /// A sequence's items (nil for anything else).
    public var items: [YAMLNode]? {
        if case .sequence(let items, _) = kind { return items }
        return nil
    }

    /// A mapping's pairs, in order (nil for anything else).
    public var pairs: [YAMLPair]? {
        if case .mapping(let pairs, _) = kind { return pairs }
        return nil
    }

    /// The alias name of an alias node (nil otherwise).
    public var aliasName: String? {
        if case .alias(let name) = kind { return name }
        return nil
    }

    /// The value of the first pair whose key is a scalar equal to `key` (nil when absent or not a mapping).
    /// Neither aliases nor merge keys are followed: `YAMLDocument.lookup` does that.
    public subscript(key: String) -> YAMLNode? {
        guard case .mapping(let pairs, _) = kind else { return nil }
        for pair in pairs where pair.key.scalar == key { return pair.value }
        return nil
    }

    /// Whether this node is a YAML 1.1 merge key: a plain untagged `<<`, or any scalar tagged `!!merge`.
    public var isMergeKey: Bool {
        guard case .scalar(let s, let style) = kind else { return false }
        if tag == YAMLTags.merge { return true }
        return tag == nil && style == .plain && s == "<<"
    }
}

/// The YAML 1.1 tags MeshYAML looks at, as libyaml resolves them.
public enum YAMLTags {
    public static let str = "tag:yaml.org,2002:str"
    public static let null = "tag:yaml.org,2002:null"
    public static let merge = "tag:yaml.org,2002:merge"
}
