#if canImport(Glibc)
import Glibc
#endif

/// Every anchor definition of a document in document order, to follow aliases without walking the
/// document for each one. Built in one walk (O(nodes)); an alias is found by binary search among
/// the definitions of its name (O(log definitions)).
struct YAMLAnchorTable: Sendable {
    /// Where an anchored node is defined (its name and position; position 0 for nodes built in code).
    struct Definition: Hashable {
        let name: String
        let order: Int
    }

    /// One definition: its position in the walk, the node, and `reach`: the greatest (line, column)
    /// of this and every earlier definition of the name with a position ((0, 0) when none has one).
    /// `reach` never decreases along the list, even where an edited tree holds parsed nodes out of
    /// their input order or nodes built in code (line 0), so it can be searched by halves.
    private struct Entry: Sendable {
        let order: Int
        let node: YAMLNode
        let reach: (line: Int, column: Int)
    }

    /// Per name, the definitions in document order.
    private var byName: [String: [Entry]] = [:]

    init() {}

    init(_ root: YAMLNode) {
        var order = 0
        var table: [String: [Entry]] = [:]
        YAMLDocument.walk(root) { node in
            order += 1
            if let name = node.anchor {
                var reach = table[name]?.last?.reach ?? (0, 0)
                if node.line > 0 && (node.line, node.column) > reach { reach = (node.line, node.column) }
                table[name, default: []].append(Entry(order: order, node: node, reach: reach))
            }
            return true
        }
        byName = table
    }

    /// The definition an alias refers to: for a parsed alias the last one before the first definition
    /// (in document order) at or after the alias's (line, column), ignoring definitions built in code
    /// when finding that first one; for an alias built in code (line 0) the last one in the document.
    /// nil for a node that is not an alias or an undefined name.
    func definition(for alias: YAMLNode) -> (Definition, YAMLNode)? {
        guard case .alias(let name) = alias.kind, let defs = byName[name], !defs.isEmpty else { return nil }
        var end = defs.count
        if alias.line > 0 {
            // the first definition whose reach is at or after the alias: the first positioned one there
            let at = (alias.line, alias.column)
            var low = 0
            var high = defs.count
            while low < high {
                let mid = (low + high) / 2
                if defs[mid].reach >= at { high = mid } else { low = mid + 1 }
            }
            end = low
        }
        guard end > 0 else { return nil }
        let chosen = defs[end - 1]
        return (Definition(name: name, order: chosen.order), chosen.node)
    }

    /// An alias's anchored node (once), or the node itself.
    func resolve(_ node: YAMLNode) -> YAMLNode {
        definition(for: node)?.1 ?? node
    }
}

/// A document's anchor table, built at most once, by the first `lookup`/`resolve` that meets an
/// alias (never for a document without one). Copies of a document share it; setting or editing
/// `root` gives the document a new, empty one. Equal whatever it holds, so documents compare by content.
struct YAMLAnchorCache: Sendable, Equatable {
    private let box = Box()

    static func == (_: YAMLAnchorCache, _: YAMLAnchorCache) -> Bool { true }

    /// The table of `root` (the document's root this cache was made for), built on the first call.
    func table(for root: YAMLNode) -> YAMLAnchorTable {
        box.table(for: root)
    }

    /// How many times the table was built (0 or 1): for the tests.
    var builds: Int { box.builds }

    /// The table behind a pthread mutex: documents are Sendable, so two threads may ask at once.
    private final class Box: @unchecked Sendable {
        private let mutex: UnsafeMutablePointer<pthread_mutex_t>
        private var table: YAMLAnchorTable?
        private var buildCount = 0

        init() {
            mutex = .allocate(capacity: 1)
            mutex.initialize(to: pthread_mutex_t())
            pthread_mutex_init(mutex, nil)
        }

        deinit {
            pthread_mutex_destroy(mutex)
            mutex.deinitialize(count: 1)
            mutex.deallocate()
        }

        func table(for root: YAMLNode) -> YAMLAnchorTable {
            pthread_mutex_lock(mutex)
            defer { pthread_mutex_unlock(mutex) }
            if let table { return table }
            let built = YAMLAnchorTable(root)
            table = built
            buildCount += 1
            return built
        }

        var builds: Int {
            pthread_mutex_lock(mutex)
            defer { pthread_mutex_unlock(mutex) }
            return buildCount
        }
    }
}
