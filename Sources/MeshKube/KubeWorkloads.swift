import MeshYAML

/// Where each workload kind keeps its pod template, and the apiVersion it must have.
enum KubeWorkloads {
    /// kind -> (apiVersion, path from the object to the pod template; empty: the object is the pod).
    static let kinds: [String: (apiVersion: String, path: [String])] = [
        "Pod": ("v1", []),
        "Deployment": ("apps/v1", ["spec", "template"]),
        "StatefulSet": ("apps/v1", ["spec", "template"]),
        "DaemonSet": ("apps/v1", ["spec", "template"]),
        "ReplicaSet": ("apps/v1", ["spec", "template"]),
        "Job": ("batch/v1", ["spec", "template"]),
        "CronJob": ("batch/v1", ["spec", "jobTemplate", "spec", "template"]),
    ]

    /// Edits the node at `path` under `node` in place. Every step must be a mapping written
    /// directly (not through an alias or a merge key: editing those would change other nodes).
    static func edit<R>(_ node: inout YAMLNode, _ path: ArraySlice<String>, document: Int, where at: String,
                        _ body: (inout YAMLNode) throws(KubeError) -> R) throws(KubeError) -> R {
        if case .alias(let name) = node.kind {
            throw KubeError(document: document, line: node.line, "\(at) is an alias (*\(name)); kube-inject edits only what is written in place: expand the alias")
        }
        guard let key = path.first else { return try body(&node) }
        guard node.pairs != nil else { throw KubeError(document: document, line: node.line, "\(at): expected a mapping") }
        guard node[key] != nil else { throw KubeError(document: document, line: node.line, "\(at): no \(key)") }
        var result: Result<R, KubeError>? = nil
        node.withValue(key) { child in
            do throws(KubeError) {
                result = .success(try edit(&child, path.dropFirst(), document: document, where: at.isEmpty ? key : "\(at).\(key)", body))
            } catch { result = .failure(error) }
        }
        return try result!.get()
    }
}
