// Editing a node in place: order is kept, a new key is appended, and the other nodes (their styles,
// tags, anchors) are left exactly as they were. On a node of the wrong kind every call is a no-op
// answering `false` or nil.

extension YAMLNode {
    /// Replaces the value of the first pair whose key is the scalar `key` (the key node kept as written),
    /// or appends `key` (as `YAMLNode.string`) with `value`. `false` on a non-mapping.
    @discardableResult
    public mutating func set(_ key: String, _ value: YAMLNode) -> Bool {
        guard case .mapping(var pairs, let flow) = kind else { return false }
        kind = .alias("")  // drop our reference so `pairs` is edited without a copy
        if let i = pairs.firstIndex(where: { $0.key.scalar == key }) {
            pairs[i].value = value
        } else {
            pairs.append(YAMLPair(key: .string(key), value: value))
        }
        kind = .mapping(pairs, flow: flow)
        return true
    }

    /// Removes the first pair whose key is the scalar `key` and returns its value (nil when absent or not a mapping).
    @discardableResult
    public mutating func remove(_ key: String) -> YAMLNode? {
        guard case .mapping(var pairs, let flow) = kind,
              let i = pairs.firstIndex(where: { $0.key.scalar == key }) else { return nil }
        kind = .alias("")
        let removed = pairs.remove(at: i)
        kind = .mapping(pairs, flow: flow)
        return removed.value
    }

    /// Runs `body` on the value of `key` in place and returns its result (nil when absent or not a mapping).
    public mutating func withValue<R>(_ key: String, _ body: (inout YAMLNode) throws -> R) rethrows -> R? {
        guard case .mapping(var pairs, let flow) = kind,
              let i = pairs.firstIndex(where: { $0.key.scalar == key }) else { return nil }
        kind = .alias("")
        defer { kind = .mapping(pairs, flow: flow) }
        return try body(&pairs[i].value)
    }

    /// Inserts `item` before position `index` (0...count) of a sequence. `false` on a non-sequence or an index out of range.
    @discardableResult
    public mutating func insert(_ item: YAMLNode, at index: Int) -> Bool {
        guard case .sequence(var items, let flow) = kind, index >= 0, index <= items.count else { return false }
        kind = .alias("")
        items.insert(item, at: index)
        kind = .sequence(items, flow: flow)
        return true
    }

    /// Removes and returns a sequence's item at `index` (nil on a non-sequence or an index out of range).
    @discardableResult
    public mutating func removeItem(at index: Int) -> YAMLNode? {
        guard case .sequence(var items, let flow) = kind, index >= 0, index < items.count else { return nil }
        kind = .alias("")
        let removed = items.remove(at: index)
        kind = .sequence(items, flow: flow)
        return removed
    }

    /// Runs `body` on a sequence's item at `index` in place and returns its result (nil when out of range or not a sequence).
    public mutating func withItem<R>(at index: Int, _ body: (inout YAMLNode) throws -> R) rethrows -> R? {
        guard case .sequence(var items, let flow) = kind, index >= 0, index < items.count else { return nil }
        kind = .alias("")
        defer { kind = .sequence(items, flow: flow) }
        return try body(&items[index])
    }
}
