import MeshConfig
import MeshCore

/// Rewriting the weights of the route a Canary drives: the VirtualService document in force is
/// read, the two weights of `spec.http[i].route` set, and the document written back as block
/// YAML (every other field as it was; strings that were quoted stay quoted).
public enum CanaryRoute {
    /// `text` (one VirtualService document) with the canary at `weight` and the stable at
    /// `100 - weight` on the target's route.
    public static func rewrite(_ text: String, target t: CanaryTarget, weight: Int) throws(ConfigError) -> String {
        let where_ = "VirtualService \(t.virtualService)"
        guard var root = (try? YAML.parseDocuments(text))?.first?.node else { throw ConfigError(path: where_, message: "cannot read its text") }
        func set(_ n: inout YAMLNode, _ path: [Any], _ value: Int) -> Bool {
            guard let head = path.first else {
                n = .scalar(YAMLScalar(value: String(value), line: n.line))
                return true
            }
            switch n {
            case .mapping(var m):
                guard let k = head as? String else { return false }
                if let i = m.entries.firstIndex(where: { $0.key == k }) {
                    guard set(&m.entries[i].value, Array(path.dropFirst()), value) else { return false }
                } else if path.count == 1 {
                    m.entries.append((key: k, keyLine: m.line, value: .scalar(YAMLScalar(value: String(value), line: m.line))))
                } else { return false }
                n = .mapping(m)
                return true
            case .sequence(var s):
                guard let i = head as? Int, i < s.items.count, set(&s.items[i], Array(path.dropFirst()), value) else { return false }
                n = .sequence(s)
                return true
            case .scalar:
                return false
            }
        }
        for (i, w) in [(t.stableIndex, 100 - weight), (t.canaryIndex, weight)] {
            guard set(&root, ["spec", "http", t.routeIndex, "route", i, "weight"], w) else {
                throw ConfigError(path: "\(where_): spec.http[\(t.routeIndex)].route[\(i)].weight", message: "cannot be set (the document changed shape)")
            }
        }
        return emit(root, indent: 0)
    }

    /// The weights of subsets `stable` and `canary` on `http[route]` of one VirtualService
    /// document (nil: the text or the route cannot be read, or the route is not a split of
    /// exactly those two subsets, e.g. everything to one destination).
    public static func weights(_ text: String, route: Int, stable: String, canary: String, namespace: String) -> (stable: Int, canary: Int)? {
        guard route >= 0, let docs = try? YAML.parseDocuments(text),
              let cfg = try? IstioTraffic.parse(documents: docs, file: "(in force)", defaultNamespace: namespace, skipKinds: [], checkSubsets: false),
              let vs = cfg.virtualServices.first, route < vs.http.count else { return nil }
        let r = vs.http[route].route
        guard r.count == 2, let s = r.first(where: { $0.destination.subset == stable }), let c = r.first(where: { $0.destination.subset == canary }) else { return nil }
        return (s.weight, c.weight)
    }

    static func plainKey(_ k: String) -> Bool {
        !k.isEmpty && k.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 65 && $0 <= 90) || ($0 >= 48 && $0 <= 57) || $0 == 45 || $0 == 95 || $0 == 46 || $0 == 47 }
    }

    static func scalar(_ s: YAMLScalar) -> String {
        if s.isNull { return "null" }
        // Plain scalars that were plain stay plain (numbers, true/false, names); anything that
        // could read otherwise on one line is quoted.
        if !s.quoted && !s.value.contains("\n") && !s.value.hasPrefix(" ") && !s.value.hasSuffix(" ") && !s.value.contains(": ") && !s.value.contains(" #")
            && !s.value.isEmpty, let f = s.value.utf8.first, !"-?:,[]{}#&*!|>'\"%@`".utf8.contains(f) {
            return s.value
        }
        return YAML.quoted(s.value)
    }

    /// Block YAML of `n` at `indent` spaces (a mapping or sequence ends with a newline).
    static func emit(_ n: YAMLNode, indent: Int) -> String {
        let pad = String(repeating: " ", count: indent)
        switch n {
        case .scalar(let s): return scalar(s) + "\n"
        case .mapping(let m):
            if m.entries.isEmpty { return "{}\n" }
            var out = ""
            for e in m.entries {
                let k = plainKey(e.key) ? e.key : YAML.quoted(e.key)
                switch e.value {
                case .scalar(let s): out += "\(pad)\(k): \(scalar(s))\n"
                case .mapping(let mm) where mm.entries.isEmpty: out += "\(pad)\(k): {}\n"
                case .sequence(let ss) where ss.items.isEmpty: out += "\(pad)\(k): []\n"
                case .mapping: out += "\(pad)\(k):\n" + emit(e.value, indent: indent + 2)
                case .sequence: out += "\(pad)\(k):\n" + emit(e.value, indent: indent + 2)
                }
            }
            return out
        case .sequence(let s):
            if s.items.isEmpty { return "[]\n" }
            var out = ""
            for item in s.items {
                switch item {
                case .scalar(let sc): out += "\(pad)- \(scalar(sc))\n"
                case .mapping(let mm) where mm.entries.isEmpty: out += "\(pad)- {}\n"
                case .sequence(let ss) where ss.items.isEmpty: out += "\(pad)- []\n"
                default:
                    // The item's block at indent + 2, its first line after "- ".
                    let body = emit(item, indent: indent + 2)
                    out += "\(pad)- " + body.dropFirst(indent + 2)
                }
            }
            return out
        }
    }
}
