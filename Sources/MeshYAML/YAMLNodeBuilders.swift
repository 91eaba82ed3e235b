// Builders for nodes made in code: line and column 0, no tag, no anchor.

extension YAMLNode {
    /// A string value: plain when it reads back as the same string under YAML 1.1 and the resolvers
    /// Kubernetes' YAML (go-yaml v2 under sigs.k8s.io/yaml) and PyYAML apply, double-quoted otherwise
    /// (the exact rules: `YAMLPlainScalar.needsQuotes`).
    public static func string(_ s: String) -> YAMLNode {
        YAMLNode(kind: .scalar(s, YAMLPlainScalar.needsQuotes(s) ? .doubleQuoted : .plain))
    }

    /// An integer, plain.
    public static func int(_ v: Int) -> YAMLNode {
        YAMLNode(kind: .scalar(String(v), .plain))
    }

    /// `true` or `false`, plain.
    public static func bool(_ v: Bool) -> YAMLNode {
        YAMLNode(kind: .scalar(v ? "true" : "false", .plain))
    }

    /// A block sequence.
    public static func sequence(_ items: [YAMLNode]) -> YAMLNode {
        YAMLNode(kind: .sequence(items, flow: false))
    }

    /// A block mapping, keys made with `string` (so a key such as "on" or "123" is quoted).
    public static func mapping(_ pairs: [(String, YAMLNode)]) -> YAMLNode {
        YAMLNode(kind: .mapping(pairs.map { YAMLPair(key: .string($0.0), value: $0.1) }, flow: false))
    }

    /// A literal block scalar (`|`), for multi-line text. libyaml writes it double-quoted instead when
    /// the text cannot be a literal block (trailing spaces on a line, control characters).
    public static func literal(_ s: String) -> YAMLNode {
        YAMLNode(kind: .scalar(s, .literal))
    }

    /// A null: a plain `null`.
    public static var null: YAMLNode {
        YAMLNode(kind: .scalar("null", .plain))
    }
}
