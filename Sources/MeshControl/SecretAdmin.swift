import MeshControlWire
import MeshCore
import MeshTLS

/// meshd's admin endpoints for TLS secrets (behind the admin token, as apply is):
/// `POST /v1/secrets?cert=F&key=F&ca=F` with one `TLSSecret.record` (created, configured or
/// unchanged, like apply; a refusal names the flag and file), `POST /v1/secrets/delete?namespace=NS&name=N`
/// (deleted, or 404 not found), `GET /v1/secrets` (one line each, never a key).
extension MeshdServer {
    func handleSecrets(_ r: ControlRequest) -> ControlResponse {
        guard let store else { return ControlResponse(404, "this meshd keeps no config\n") }
        switch (r.method, r.path) {
        case ("POST", TLSSecrets.createPath):
            guard r.headers["content-type"] == TLSSecrets.contentType else {
                return ControlResponse(415, "expected content-type \(TLSSecrets.contentType) (meshctl create secret tls)\n")
            }
            let s: TLSSecret
            do { s = try TLSSecret.readOne(r.body) } catch { return ControlResponse(400, "\(error)\n") }
            do {
                let (outcome, v, info) = try store.putSecret(s, from: TLSSecrets.sources(query: r.query))
                return ControlResponse(200, "\(outcome.rawValue) \(v)\n" + (info.warning.map { "warning: \($0)\n" } ?? ""))
            } catch {
                return ControlResponse(400, error.description + "\n")
            }
        case ("POST", TLSSecrets.deletePath):
            let ns = r.query["namespace"] ?? store.defaultNamespace, name = r.query["name"] ?? ""
            do { try TLSSecret.checkNames(namespace: ns, name: name) } catch { return ControlResponse(400, "\(error)\n") }
            do {
                let outcome = try store.deleteSecret(namespace: ns, name: name)
                if outcome == .notFound { return ControlResponse(404, "secret \(ns)/\(name) not found\n") }
                return ControlResponse(200, "deleted \(store.version)\n")
            } catch {
                return ControlResponse(400, error.description + "\n")
            }
        case ("GET", TLSSecrets.listPath):
            return ControlResponse(200, store.secrets().map(TLSSecrets.listLine).map { $0 + "\n" }.joined())
        default:
            return ControlResponse(405, "\(r.method) \(r.path): expected POST \(TLSSecrets.createPath), POST \(TLSSecrets.deletePath) or GET \(TLSSecrets.listPath)\n")
        }
    }
}
