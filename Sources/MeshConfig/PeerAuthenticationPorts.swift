import MeshCore

/// PeerAuthentication `portLevelMtls` (Istio): a map from a workload port (the target port the
/// app listens on, not a service port) to `{mode: ...}`, overriding the workload's mode on that
/// port, on HTTP and TCP inbound alike.
extension PeerAuthentication {
    static func parsePortLevelMtls(_ spec: inout ConfigReader, ctx: ConfigError) throws(ConfigError) -> [(port: Int, mode: Mode?)] {
        guard let node = spec.node("portLevelMtls") else { return [] }
        guard case .mapping(let m) = node else {
            throw ConfigReader.error(ctx, "spec.portLevelMtls", node.line, "expected a mapping from port numbers to {mode: ...}, got \(ConfigReader.describe(node))")
        }
        var out: [(port: Int, mode: Mode?)] = []
        for e in m.entries {
            let path = "spec.portLevelMtls.\(e.key)"
            guard let port = Int(e.key), port >= 1, port <= 65535 else {
                throw ConfigReader.error(ctx, path, e.keyLine, "expected a port number from 1 to 65535 as the key, got \"\(e.key)\"")
            }
            guard !out.contains(where: { $0.port == port }) else { throw ConfigReader.error(ctx, path, e.keyLine, "port \(port) is given twice") }
            var r = try ConfigReader(e.value, path: path, context: ctx)
            var mode: Mode? = nil
            if let t = try r.string("mode"), t != "UNSET" {
                guard let v = Mode(rawValue: t) else {
                    throw ConfigReader.error(ctx, "\(path).mode", r.map.line, "expected STRICT, PERMISSIVE, DISABLE or UNSET, got \"\(t)\"")
                }
                mode = v
            }
            try r.finish()
            out.append((port, mode))
        }
        return out
    }

    /// The mode on workload port `port`: the selecting policy's `portLevelMtls` entry for it
    /// when set, else `mode(for:labels:in:)`.
    public static func mode(for namespace: String, labels: [(String, String)], port: Int, in policies: [PeerAuthentication]) -> Mode {
        let selecting = policies.first { p in
            guard p.namespace == namespace, let sel = p.selector, !sel.isEmpty else { return false }
            return sel.allSatisfy { s in labels.contains { $0.0 == s.0 && $0.1 == s.1 } }
        }
        if let m = selecting?.portLevelMtls.first(where: { $0.port == port })?.mode { return m }
        return mode(for: namespace, labels: labels, in: policies)
    }

    /// Every workload port with a mode of its own for this workload (the snapshot's table).
    public static func portModes(for namespace: String, labels: [(String, String)], in policies: [PeerAuthentication]) -> [(port: Int, mode: Mode)] {
        let selecting = policies.first { p in
            guard p.namespace == namespace, let sel = p.selector, !sel.isEmpty else { return false }
            return sel.allSatisfy { s in labels.contains { $0.0 == s.0 && $0.1 == s.1 } }
        }
        return (selecting?.portLevelMtls ?? []).compactMap { e in e.mode.map { (e.port, $0) } }
    }
}
