/// A small command-line parser for the executables (no Foundation): `--name value`,
/// `--name=value`, repeated flags, boolean switches, and a clear one-line error for anything
/// unknown or missing a value.
public struct Flags {
    public struct Spec: Sendable {
        public let name: String
        public let takesValue: Bool
        public init(_ name: String, value: Bool = true) { self.name = name; self.takesValue = value }
    }

    public private(set) var values: [String: [String]] = [:]
    public private(set) var positional: [String] = []

    public init(_ args: [String], specs: [Spec]) throws(FlagError) {
        var i = 0
        while i < args.count {
            let a = args[i]
            if a == "--" { positional.append(contentsOf: args[(i + 1)...]); break }
            if a.hasPrefix("--") {
                var name = String(a.dropFirst(2))
                var inline: String? = nil
                if let eq = name.firstIndex(of: "=") {
                    inline = String(name[name.index(after: eq)...])
                    name = String(name[..<eq])
                }
                guard let spec = specs.first(where: { $0.name == name }) else {
                    throw FlagError("unknown flag --\(name) (see --help)")
                }
                if spec.takesValue {
                    if let v = inline {
                        values[name, default: []].append(v)
                    } else {
                        guard i + 1 < args.count else { throw FlagError("flag --\(name) needs a value") }
                        values[name, default: []].append(args[i + 1])
                        i += 1
                    }
                } else {
                    if inline != nil { throw FlagError("flag --\(name) takes no value") }
                    values[name, default: []].append("true")
                }
            } else if a.hasPrefix("-") && a != "-" {
                let short = String(a.dropFirst())
                if a == "-h" { values["help", default: []].append("true") }
                else if short.count == 1, let spec = specs.first(where: { $0.name == short }), spec.takesValue {
                    // A one-letter flag (`-f FILE`, kubectl style).
                    guard i + 1 < args.count else { throw FlagError("flag \(a) needs a value") }
                    values[short, default: []].append(args[i + 1])
                    i += 1
                }
                else { throw FlagError("unknown flag \(a) (see --help)") }
            } else {
                positional.append(a)
            }
            i += 1
        }
    }

    public func has(_ name: String) -> Bool { values[name] != nil }
    public func string(_ name: String) -> String? { values[name]?.last }
    public func all(_ name: String) -> [String] { values[name] ?? [] }

    public func int(_ name: String, min: Int, max: Int) throws(FlagError) -> Int? {
        guard let s = string(name) else { return nil }
        guard let v = Int(s), v >= min, v <= max else { throw FlagError("--\(name): expected an integer from \(min) to \(max), got \"\(s)\"") }
        return v
    }
}

/// A bad command line, reported as one line.
public struct FlagError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ d: String) { description = d }
}
