import MeshConfig
import MeshCore

extension ConfigStore {
    /// The cross-document checks of an apply that brings Canary documents (Canary.swift): each
    /// resolves against the whole set (the host's DestinationRule and its subsets, the
    /// VirtualService route it drives), refused naming the Canary's file, line and field.
    ///
    /// A Canary may not drive a VirtualService that a `--config-dir` file owns: meshd re-applies
    /// that file at start and on every change in the directory, which would put the file's
    /// weights back and pause the canary. Refused both ways (the Canary, or the file bringing
    /// the VirtualService a Canary in force drives), naming the file.
    static func checkAppliedCanaries(_ next: State, incoming: [Document]) throws(ConfigError) {
        let canaries = incoming.filter { $0.kind == Canary.kind }
        let owned = incoming.filter { $0.kind == "VirtualService" && !$0.source.isEmpty }
        if canaries.isEmpty && (owned.isEmpty || !next.order.contains { $0.hasPrefix(Canary.kind + "/") }) { return }
        let stored = renderDocuments(next.order.compactMap { next.documents[$0] })
        let cfg: IstioTraffic.Config
        do { cfg = try IstioTraffic.parse(stored.text, file: "(the config that would result)") } catch { throw locate(error, in: stored.placed) }
        if !canaries.isEmpty {
            do { try Canary.checkApplied(cfg, applied: canaries.map { ($0.namespace, $0.name, $0.file) }) } catch {
                throw locate(ConfigError(file: error.file, path: error.path, message: error.message), in: stored.placed)
            }
        }
        for c in cfg.canaries {
            guard let t = try? c.target(in: cfg, file: ""), let vs = next.documents["VirtualService/\(c.namespace)/\(t.virtualService)"], !vs.source.isEmpty else { continue }
            let why = "VirtualService \(c.namespace)/\(t.virtualService) comes from the --config-dir file \(vs.source), which meshd applies again at start and on every change in the directory (its weights would undo the canary's): apply that VirtualService with meshctl instead of the directory (docs/canary.md)"
            if let d = canaries.first(where: { $0.namespace == c.namespace && $0.name == c.name }) {
                throw ConfigError(file: d.file, document: d.index, path: "Canary \(c.namespace)/\(c.name): spec.virtualService", line: d.line, message: why)
            }
            if let d = owned.first(where: { $0.key == vs.key }) {
                throw ConfigError(file: d.file, document: d.index, path: "VirtualService \(c.namespace)/\(t.virtualService)", line: d.line,
                                  message: "driven by Canary \(c.namespace)/\(c.name); a --config-dir file cannot hold it (meshd applies the file again at start and on every change, undoing the canary's weights): delete the Canary first, or apply the VirtualService with meshctl")
            }
        }
    }

    /// The documents in force, parsed (nil when they cannot be: never the case for a set meshd
    /// accepted, but the controller then waits rather than guesses).
    func parsedConfig() -> IstioTraffic.Config? {
        let s = currentState()
        return try? IstioTraffic.parse(ConfigStore.renderDocuments(s.order.compactMap { s.documents[$0] }).text, file: "(in force)")
    }

    /// Whether any Canary is in force (the controller's idle check).
    func hasCanaries() -> Bool { state.withLock { $0.order.contains { $0.hasPrefix(Canary.kind + "/") } } }

    /// The text of one document in force (nil: absent).
    func documentText(kind: String, namespace: String, name: String) -> String? {
        state.withLock { $0.documents["\(kind)/\(namespace)/\(name)"]?.text }
    }
}
