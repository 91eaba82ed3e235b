/// One document of a stream: its tree, its markers, and its exact bytes in the input.
public struct YAMLDocument: Sendable, Equatable {
    /// nil: an empty document (only comments or nothing between markers).
    public var root: YAMLNode? {
        didSet { anchorCache = YAMLAnchorCache() }  // any change, edits in place included
    }
    /// Written with `---`.
    public var explicitStart: Bool
    /// Written with `...`.
    public var explicitEnd: Bool
    /// `%YAML` or `%TAG` present (such documents are best passed through as `source`).
    public var hasDirectives: Bool
    /// 1-based position in the stream.
    public var index: Int
    /// 1-based line where the document starts: its `---`, or for an implicit start its first token.
    public var line: Int
    /// This document's exact text in the input (see `YAML.parse`).
    public var source: String
    /// `root`'s anchor table, built by the first `lookup`/`resolve` that meets an alias.
    private var anchorCache = YAMLAnchorCache()

    public init(root: YAMLNode?, explicitStart: Bool = false, explicitEnd: Bool = false, hasDirectives: Bool = false,
                index: Int = 1, line: Int = 0, source: String = "") {
        self.root = root
        self.explicitStart = explicitStart
        self.explicitEnd = explicitEnd
        self.hasDirectives = hasDirectives
        self.index = index
        self.line = line
        self.source = source
    }

    /// Every anchor defined in the document (last definition wins).
    public var anchors: [String: YAMLNode] {
        var found: [String: YAMLNode] = [:]
        if let root { YAMLDocument.walk(root) { node in if let a = node.anchor { found[a] = node }; return true } }
        return found
    }

    /// Follows an alias to its anchored node, once (the node itself when it is not an alias or the
    /// anchor is not defined). For a parsed alias the definition is the last one before it in the
    /// document, as YAML says; for an alias built in code (line 0), the last one in the document.
    public func resolve(_ node: YAMLNode) -> YAMLNode {
        guard case .alias = node.kind, let root else { return node }
        return anchorCache.table(for: root).resolve(node)
    }

    /// How many times this document's anchor table was built: 0 until an alias is met, then 1 until `root` changes.
    var anchorTableBuilds: Int { anchorCache.builds }

    /// A mapping's value for `key`, following aliases (the mapping's, the value's, merged mappings')
    /// and YAML 1.1 merge keys (`<<: *x`, `<<: [*x, *y]`): the mapping's own keys first, then each
    /// merged mapping in order (the first that has the key wins, merges within it followed too).
    /// nil when absent, or when `mapping` is not a mapping. Each anchored mapping is searched at most
    /// once per call, so alias cycles end and merge fan-out ("billion laughs") stays linear in the
    /// document. The anchor table is built once per document (one walk), by the first call that meets
    /// an alias; each alias then costs a binary search among its name's definitions.
    public func lookup(_ mapping: YAMLNode, _ key: String) -> YAMLNode? {
        var table = LazyTable(cache: anchorCache, root: root)
        var searched = Set<YAMLAnchorTable.Definition>()
        return YAMLDocument.lookup(mapping, key, &table, &searched, 0)
    }

    /// The document's table, asked of the cache (and its lock) once per `lookup`, when the first alias is met.
    private struct LazyTable {
        let cache: YAMLAnchorCache
        let root: YAMLNode?
        private var table: YAMLAnchorTable?

        init(cache: YAMLAnchorCache, root: YAMLNode?) {
            self.cache = cache
            self.root = root
        }

        mutating func get() -> YAMLAnchorTable {
            if let table { return table }
            let t = root.map { cache.table(for: $0) } ?? YAMLAnchorTable()
            table = t
            return t
        }

        /// An alias's anchored node (once), or the node itself (no table needed for that).
        mutating func resolve(_ node: YAMLNode) -> YAMLNode {
            guard case .alias = node.kind else { return node }
            return get().resolve(node)
        }
    }

    /// Searches `node` (a mapping, an alias to one, or, as a merge source, a sequence of them) for `key`.
    private static func lookup(_ node: YAMLNode, _ key: String, _ table: inout LazyTable,
                               _ searched: inout Set<YAMLAnchorTable.Definition>, _ depth: Int) -> YAMLNode? {
        guard depth <= YAML.maxDepth else { return nil }
        var n = node
        if case .alias = node.kind {
            guard let (definition, target) = table.get().definition(for: node),
                  searched.insert(definition).inserted else { return nil }
            n = target
        }
        switch n.kind {
        case .mapping(let pairs, _):
            for pair in pairs where !pair.key.isMergeKey && pair.key.scalar == key {
                return table.resolve(pair.value)
            }
            for pair in pairs where pair.key.isMergeKey {
                if let v = lookup(pair.value, key, &table, &searched, depth + 1) { return v }
            }
            return nil
        case .sequence(let items, _) where depth > 0:
            for item in items {
                if let v = lookup(item, key, &table, &searched, depth + 1) { return v }
            }
            return nil
        default:
            return nil
        }
    }

    /// Visits `node` and its descendants in document order (keys before values) until `visit` answers false.
    /// Returns false when stopped.
    @discardableResult
    static func walk(_ node: YAMLNode, _ visit: (YAMLNode) -> Bool) -> Bool {
        guard visit(node) else { return false }
        switch node.kind {
        case .sequence(let items, _):
            for item in items where !walk(item, visit) { return false }
        case .mapping(let pairs, _):
            for pair in pairs {
                if !walk(pair.key, visit) || !walk(pair.value, visit) { return false }
            }
        case .scalar, .alias:
            break
        }
        return true
    }
}
