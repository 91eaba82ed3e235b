import MeshCore

/// Istio's `security.istio.io/v1` PeerAuthentication: how a workload's inbound listener treats
/// callers. STRICT (the mesh's default, DESIGN §4) accepts only mutual TLS; PERMISSIVE accepts
/// mutual TLS and plaintext on the same port; DISABLE accepts plaintext only. A policy with a
/// `selector` applies to the workloads it selects and wins over a namespace-wide one.
public struct PeerAuthentication: Sendable {
    public enum Mode: String, Sendable { case strict = "STRICT", permissive = "PERMISSIVE", disable = "DISABLE" }
    public var name: String
    public var namespace: String
    public var selector: [(String, String)]?
    /// nil: UNSET (inherit).
    public var mode: Mode?
    /// `portLevelMtls`: the mode of one workload (target) port, overriding `mode` there; nil
    /// values are UNSET (the workload's mode). Only with a `selector`, as in Istio.
    public var portLevelMtls: [(port: Int, mode: Mode?)] = []

    static func parse(_ spec: inout ConfigReader, name: String, namespace: String, ctx: ConfigError) throws(ConfigError) -> PeerAuthentication {
        var selector: [(String, String)]? = nil
        if var sel = try spec.object("selector") {
            selector = try sel.stringMap("matchLabels") ?? []
            try sel.finish()
        }
        var mode: Mode? = nil
        if var m = try spec.object("mtls") {
            if let t = try m.string("mode"), t != "UNSET" {
                guard let v = Mode(rawValue: t) else {
                    throw ConfigReader.error(ctx, "spec.mtls.mode", m.map.line, "expected STRICT, PERMISSIVE, DISABLE or UNSET, got \"\(t)\"")
                }
                mode = v
            }
            try m.finish()
        }
        let ports = try parsePortLevelMtls(&spec, ctx: ctx)
        if !ports.isEmpty && (selector ?? []).isEmpty {
            throw ConfigReader.error(ctx, "spec.portLevelMtls", spec.map.line, "portLevelMtls needs a selector (Istio applies it only to the workloads a policy selects)")
        }
        try spec.finish()
        return PeerAuthentication(name: name, namespace: namespace, selector: selector, mode: mode, portLevelMtls: ports)
    }

    /// The mode for a workload: a selecting policy's, else the namespace-wide one's, else STRICT.
    public static func mode(for namespace: String, labels: [(String, String)], in policies: [PeerAuthentication]) -> Mode {
        let mine = policies.filter { $0.namespace == namespace }
        let selecting = mine.first { p in
            guard let sel = p.selector, !sel.isEmpty else { return false }
            return sel.allSatisfy { s in labels.contains { $0.0 == s.0 && $0.1 == s.1 } }
        }
        if let m = selecting?.mode { return m }
        if let m = mine.first(where: { $0.selector == nil || $0.selector!.isEmpty })?.mode { return m }
        return .strict
    }
}
