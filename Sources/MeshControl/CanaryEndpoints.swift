import MeshControlWire
import MeshConfig
import MeshCore

extension MeshdServer {
    /// `GET /v1/canaries[?o=json][&namespace=NS&name=NAME]` (the text `meshctl canary status`
    /// prints, or the JSON array of the canary contract) and `POST /v1/canaries/abort|resume
    /// ?namespace=NS&name=NAME`. Abort and resume act on the leader only (a standby answers
    /// 409 naming it).
    func handleCanaries(_ r: ControlRequest) -> ControlResponse {
        guard let canaries else { return ControlResponse(404, "this meshd keeps no config\n") }
        let ns = r.query["namespace"].flatMap { $0.isEmpty ? nil : $0 }
        let name = r.query["name"].flatMap { $0.isEmpty ? nil : $0 }
        if r.method == "GET" {
            switch r.query["o"] ?? "" {
            case "": return ControlResponse(200, CanaryReport.text(canaries.report(), namespace: ns, name: name))
            case "json":
                let list = canaries.report().filter { (name == nil || $0.status.name == name) && (ns == nil || $0.status.namespace == ns) }
                return ControlResponse(200, CanaryReport.json(list), contentType: "application/json")
            case let o: return ControlResponse(400, "o: expected json (or nothing for the text), got \"\(Printable.escaped(o))\"\n")
            }
        }
        guard let name else { return ControlResponse(400, "name is required\n") }
        if let replica, !replica.isLeader {
            return ControlResponse(409, "this replica does not lead (leader: \(replica.leader() ?? "none")); ask the leader\n")
        }
        let a = r.path.hasSuffix("abort") ? canaries.abort(namespace: ns ?? "default", name: name) : canaries.resume(namespace: ns ?? "default", name: name)
        return ControlResponse(a.ok ? 200 : 409, "Canary \(ns ?? "default")/\(name): \(a.message)\n")
    }
}
