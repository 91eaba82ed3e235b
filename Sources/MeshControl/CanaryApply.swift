import MeshConfig
import MeshCore

extension ConfigStore {
    /// The cross-document checks of an apply that brings Canary documents (Canary.swift): each
    /// resolves against the whole set (the host's DestinationRule and its subsets, the
    /// VirtualService route it drives), refused naming the Canary's file, line and field.
    static func checkAppliedCanaries(_ next: State, incoming: [Document]) throws(ConfigError) {
        let canaries = incoming.filter { $0.kind == Canary.kind }
        if canaries.isEmpty { return }
        let stored = renderDocuments(next.order.compactMap { next.documents[$0] })
        let cfg: IstioTraffic.Config
        do { cfg = try IstioTraffic.parse(stored.text, file: "(the config that would result)") } catch { throw locate(error, in: stored.placed) }
        do { try Canary.checkApplied(cfg, applied: canaries.map { ($0.namespace, $0.name, $0.file) }) } catch {
            throw locate(ConfigError(file: error.file, path: error.path, message: error.message), in: stored.placed)
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
