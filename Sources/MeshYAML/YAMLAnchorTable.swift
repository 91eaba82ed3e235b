/// Every anchor definition of a document in document order, to follow aliases without walking the
/// document for each one.
struct YAMLAnchorTable {
    /// Where an anchored node is defined (its name and position; position 0 for nodes built in code).
    struct Definition: Hashable {
        let name: String
        let order: Int
    }

    /// Per name, the definitions in document order: (position in the walk, line, column, node).
    private var byName: [String: [(order: Int, line: Int, column: Int, node: YAMLNode)]] = [:]

    init() {}

    init(_ root: YAMLNode) {
        var order = 0
        var table: [String: [(order: Int, line: Int, column: Int, node: YAMLNode)]] = [:]
        YAMLDocument.walk(root) { node in
            order += 1
            if let name = node.anchor { table[name, default: []].append((order, node.line, node.column, node)) }
            return true
        }
        byName = table
    }

    /// The definition an alias refers to: for a parsed alias the last one before it, for one built
    /// in code (line 0) the last one in the document. nil for a node that is not an alias or an undefined name.
    func definition(for alias: YAMLNode) -> (Definition, YAMLNode)? {
        guard case .alias(let name) = alias.kind, let defs = byName[name] else { return nil }
        var chosen: (order: Int, line: Int, column: Int, node: YAMLNode)?
        for d in defs {
            if alias.line > 0 && d.line > 0 && (d.line, d.column) >= (alias.line, alias.column) { break }
            chosen = d
        }
        guard let c = chosen else { return nil }
        return (Definition(name: name, order: c.order), c.node)
    }

    /// An alias's anchored node (once), or the node itself.
    func resolve(_ node: YAMLNode) -> YAMLNode {
        definition(for: node)?.1 ?? node
    }
}
