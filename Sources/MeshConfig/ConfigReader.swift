import MeshCore

/// A typed view over a YAML mapping that remembers the field path for errors and refuses keys it
/// was not asked about (unknown fields are errors, DESIGN §3). Control path only.
struct ConfigReader {
    let map: YAMLMapping
    let path: String
    let context: ConfigError
    private var known: [String] = []

    init(_ node: YAMLNode, path: String, context: ConfigError) throws(ConfigError) {
        guard case .mapping(let m) = node else {
            throw Self.error(context, path, node.line, "expected a mapping of fields, got \(Self.describe(node))")
        }
        self.map = m
        self.path = path
        self.context = context
    }

    static func error(_ ctx: ConfigError, _ path: String, _ line: Int, _ msg: String) -> ConfigError {
        var e = ctx
        e.path = path
        e.line = line
        e.message = msg
        return e
    }

    static func describe(_ n: YAMLNode) -> String {
        switch n {
        case .scalar(let s): return s.value.isEmpty && !s.quoted ? "nothing (null)" : "the value \"\(s.value)\""
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        }
    }

    func sub(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    mutating func node(_ key: String) -> YAMLNode? {
        known.append(key)
        for e in map.entries where e.key == key {
            if e.value.isNull { return nil }
            return e.value
        }
        return nil
    }

    mutating func string(_ key: String, required: Bool = false) throws(ConfigError) -> String? {
        guard let n = node(key) else {
            if required { throw Self.error(context, sub(key), map.line, "required field is missing") }
            return nil
        }
        guard case .scalar(let s) = n else { throw Self.error(context, sub(key), n.line, "expected a string, got \(Self.describe(n))") }
        if s.value.isEmpty && required { throw Self.error(context, sub(key), n.line, "must not be empty") }
        return s.value
    }

    mutating func int(_ key: String, min: Int, max: Int) throws(ConfigError) -> Int? {
        guard let n = node(key) else { return nil }
        guard case .scalar(let s) = n, !s.quoted, let v = Int(s.value) else {
            throw Self.error(context, sub(key), n.line, "expected an integer, got \(Self.describe(n))")
        }
        guard v >= min && v <= max else { throw Self.error(context, sub(key), n.line, "must be between \(min) and \(max), got \(v)") }
        return v
    }

    mutating func bool(_ key: String) throws(ConfigError) -> Bool? {
        guard let n = node(key) else { return nil }
        guard case .scalar(let s) = n, s.value == "true" || s.value == "false" else {
            throw Self.error(context, sub(key), n.line, "expected true or false, got \(Self.describe(n))")
        }
        return s.value == "true"
    }

    static let maxDuration: UInt64 = 8760 * 3_600_000_000_000

    /// A duration such as `500ms`, `10s`, `5m`, `24h` (nanoseconds).
    mutating func duration(_ key: String, allowZero: Bool) throws(ConfigError) -> UInt64? {
        guard let n = node(key) else { return nil }
        guard case .scalar(let s) = n, let v = DurationParser.parseNanos(s.value) else {
            throw Self.error(context, sub(key), n.line, "expected a duration such as 500ms, 10s, 5m or 24h, got \(Self.describe(n))")
        }
        if v == 0 && !allowZero { throw Self.error(context, sub(key), n.line, "must be greater than zero") }
        // Deadlines are `now + duration`: keep them far from overflow.
        if v > ConfigReader.maxDuration { throw Self.error(context, sub(key), n.line, "must be at most 8760h (a year), got \(s.value)") }
        return v
    }

    mutating func stringList(_ key: String) throws(ConfigError) -> [String]? {
        guard let n = node(key) else { return nil }
        guard case .sequence(let seq) = n else { throw Self.error(context, sub(key), n.line, "expected a list of strings, got \(Self.describe(n))") }
        var out: [String] = []
        for (i, item) in seq.items.enumerated() {
            guard case .scalar(let s) = item, !(s.value.isEmpty && !s.quoted) else {
                throw Self.error(context, "\(sub(key))[\(i)]", item.line, "expected a string, got \(Self.describe(item))")
            }
            out.append(s.value)
        }
        return out
    }

    mutating func stringMap(_ key: String) throws(ConfigError) -> [(String, String)]? {
        guard let n = node(key) else { return nil }
        guard case .mapping(let m) = n else { throw Self.error(context, sub(key), n.line, "expected a mapping of strings, got \(Self.describe(n))") }
        var out: [(String, String)] = []
        for e in m.entries {
            guard case .scalar(let s) = e.value else {
                throw Self.error(context, "\(sub(key)).\(e.key)", e.value.line, "expected a string, got \(Self.describe(e.value))")
            }
            out.append((e.key, s.value))
        }
        return out
    }

    mutating func object(_ key: String) throws(ConfigError) -> ConfigReader? {
        guard let n = node(key) else { return nil }
        return try ConfigReader(n, path: sub(key), context: context)
    }

    mutating func objectList(_ key: String) throws(ConfigError) -> [ConfigReader]? {
        guard let n = node(key) else { return nil }
        guard case .sequence(let seq) = n else { throw Self.error(context, sub(key), n.line, "expected a list, got \(Self.describe(n))") }
        var out: [ConfigReader] = []
        for (i, item) in seq.items.enumerated() {
            out.append(try ConfigReader(item, path: "\(sub(key))[\(i)]", context: context))
        }
        return out
    }

    /// Refuses `key`, a field of Istio's API that this mesh does not implement yet, by name
    /// (present with any value, even null): never parsed and silently dropped (DESIGN §3).
    mutating func refuse(_ key: String) throws(ConfigError) {
        // Not added to `known`: the "known fields" hint lists only what is honoured.
        for e in map.entries where e.key == key {
            throw Self.error(context, sub(key), e.keyLine, IstioTraffic.notSupported)
        }
    }

    /// Treats every key as known (maps whose keys are data, such as header names).
    mutating func markAllKnown() { for e in map.entries { known.append(e.key) } }

    /// Refuses fields that were never asked for.
    func finish() throws(ConfigError) {
        for e in map.entries where !known.contains(e.key) {
            throw Self.error(context, sub(e.key), e.keyLine, "unknown field (known fields here: \(known.joined(separator: ", ")))")
        }
    }
}
