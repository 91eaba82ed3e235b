import MeshCore
import MeshYAML

/// The `sidecar.mesh.io/status` annotation: a JSON record of exactly what the injection added to a
/// pod template (container, init-container, volume and annotation names, the keys it had to
/// create, and each rewritten probe's original `httpGet`), so that injecting again replaces
/// instead of doubling and `--uninject` restores the input.
struct KubeInjectStatus: Equatable {
    static let annotation = "sidecar.mesh.io/status"

    /// One app probe rewritten to the sidecar's status port.
    struct Probe: Equatable {
        var container: String
        var probe: String
        /// The original `httpGet` mapping, as one line of flow YAML (scalar styles kept).
        var httpGet: String
        /// It was written in block style.
        var block: Bool
    }

    var mode = "classic"
    var initContainers: [String] = []
    var containers: [String] = []
    var volumes: [String] = []
    var annotations: [String] = []
    /// Keys the injection created because the pod had none ("metadata", "metadata.annotations",
    /// "spec.initContainers", "spec.volumes"), removed again by uninject when left empty.
    var created: [String] = []
    var probes: [Probe] = []

    var json: String {
        var j = JSONWriter()
        j.beginObject()
        j.string("mode", mode)
        for (k, list) in [("initContainers", initContainers), ("containers", containers), ("volumes", volumes),
                          ("annotations", annotations), ("created", created)] {
            j.beginArray(k)
            for v in list { j.string(nil, v) }
            j.endArray()
        }
        j.beginArray("probes")
        for p in probes {
            j.beginObject()
            j.string("container", p.container)
            j.string("probe", p.probe)
            j.string("httpGet", p.httpGet)
            j.bool("block", p.block)
            j.endObject()
        }
        j.endArray()
        j.endObject()
        return j.text
    }

    /// Reads the annotation's JSON (written by `json`); the error says what is wrong with it.
    static func parse(_ text: String) throws(KubeError) -> KubeInjectStatus {
        func bad(_ what: String) -> KubeError { KubeError(document: 0, line: 0, "annotation \(annotation): \(what)") }
        let root: YAMLNode
        do {
            guard let r = try YAML.parse(text).documents.first?.root else { throw bad("empty") }
            root = r
        } catch let e as YAMLError { throw bad("not JSON: \(e.message)") } catch let e as KubeError { throw e } catch { throw bad("\(error)") }
        guard root.pairs != nil else { throw bad("expected a JSON object") }
        var s = KubeInjectStatus()
        func list(_ key: String) throws(KubeError) -> [String] {
            guard let n = root[key] else { return [] }
            guard let items = n.items else { throw bad("\(key): expected a list of names") }
            var out: [String] = []
            for i in items {
                guard let v = i.scalar else { throw bad("\(key): expected a list of names") }
                out.append(v)
            }
            return out
        }
        s.mode = root["mode"]?.scalar ?? "classic"
        s.initContainers = try list("initContainers")
        s.containers = try list("containers")
        s.volumes = try list("volumes")
        s.annotations = try list("annotations")
        s.created = try list("created")
        for p in root["probes"]?.items ?? [] {
            guard let c = p["container"]?.scalar, let k = p["probe"]?.scalar, let h = p["httpGet"]?.scalar else {
                throw bad("probes: each needs container, probe and httpGet")
            }
            s.probes.append(Probe(container: c, probe: k, httpGet: h, block: p["block"]?.scalar != "false"))
        }
        return s
    }
}
