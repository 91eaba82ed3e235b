import MeshControlWire
import MeshCore
import MeshPKI

/// meshd's web page on its admin port (DESIGN §14): `/ui/` serves a page, a script and a
/// stylesheet from constants (`WebUIAssets`; no data in them, no token needed), and
/// `/ui/api/...` serves the data as JSON to admin-token holders only: `mesh` (graph, routes,
/// proxies) and `canaries` (meshd's `/v1/canaries?o=json`, `[]` when it has none or no such
/// endpoint). Every answer carries strict headers (a CSP without inline script, nosniff, no
/// framing, no caching of data).
public enum WebUI {
    /// Headers on every `/ui` answer.
    static let securityHeaders: [(String, String)] = [
        ("content-security-policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
            + "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
    ]

    static func answer(_ status: Int, _ body: String, contentType: String, cache: String) -> ControlResponse {
        var r = ControlResponse(status, body, contentType: contentType)
        r.headers = securityHeaders + [("cache-control", cache)]
        return r
    }

    /// The answer to a `/ui` request; `authorized`: whether it carries the admin token.
    static func handle(_ r: ControlRequest, authorized: Bool, server: MeshdServer) -> ControlResponse {
        guard r.method == "GET" else { return answer(405, "method not allowed\n", contentType: "text/plain", cache: "no-store") }
        switch r.path {
        case "/ui":
            var a = answer(301, "", contentType: "text/plain", cache: "no-cache")
            a.headers.append(("location", "/ui/"))
            return a
        case "/ui/", "/ui/index.html":
            return answer(200, WebUIAssets.html, contentType: "text/html; charset=utf-8", cache: "no-cache")
        case "/ui/app.js":
            return answer(200, WebUIAssets.script, contentType: "text/javascript; charset=utf-8", cache: "no-cache")
        case "/ui/app.css":
            return answer(200, WebUIAssets.stylesheet, contentType: "text/css; charset=utf-8", cache: "no-cache")
        case "/ui/icon.svg":
            return answer(200, WebUIAssets.icon, contentType: "image/svg+xml", cache: "no-cache")
        default:
            break
        }
        guard r.path.hasPrefix("/ui/api/") else { return answer(404, "no such page: \(r.path)\n", contentType: "text/plain", cache: "no-store") }
        guard authorized else {
            return answer(401, "{\"error\":\"admin token required (authorization: Bearer <STATE-DIR/admin-token>)\"}",
                          contentType: "application/json", cache: "no-store")
        }
        switch r.path {
        case "/ui/api/mesh":
            server.webUISampler.touch { [weak server] in
                // The sidecars connected now that named their admin address.
                server?.store?.proxies().filter { $0.connected && !$0.admin.isEmpty }.map(\.admin) ?? []
            }
            return answer(200, meshJSON(server), contentType: "application/json", cache: "no-store")
        case "/ui/api/canaries":
            return answer(200, canaries(r, server: server), contentType: "application/json", cache: "no-store")
        default:
            return answer(404, "{\"error\":\"no such endpoint\"}", contentType: "application/json", cache: "no-store")
        }
    }

    /// meshd's canaries as JSON (the `canary` contract: an array); `[]` when the endpoint is not
    /// there or answers anything but an array.
    static func canaries(_ r: ControlRequest, server: MeshdServer) -> String {
        let a = server.handleAdmin(ControlRequest(method: "GET", path: "/v1/canaries", query: ["o": "json"],
                                                  headers: r.headers, body: [], peerIdentity: nil))
        let body = a.body.trimmingCharacters
        return a.status == 200 && body.hasPrefix("[") && body.hasSuffix("]") ? body : "[]"
    }

    /// A number, or null when there is none (or it is not finite).
    static func number(_ j: inout JSONWriter, _ k: String, _ v: Double?) {
        guard let v, v.isFinite else { j.raw(k, "null"); return }
        j.number(k, (v * 100).rounded() / 100)
    }

    static func figures(_ j: inout JSONWriter, _ f: MeshTrafficView.Figures, seconds: Double) {
        number(&j, "rps", f.requests / seconds)
        number(&j, "requests", f.requests)
        number(&j, "success", f.successPercent)
        number(&j, "p50", f.quantile(0.5))
        number(&j, "p99", f.quantile(0.99))
    }

    /// The page's data: the sampling state, the graph (nodes, edges), the route rows and the
    /// proxies, from the sampler's last two scrapes and the config store.
    static func meshJSON(_ server: MeshdServer) -> String {
        let w = server.webUISampler.window()
        let view = w.previous.flatMap { p in w.latest.flatMap { MeshTrafficView(before: p, after: $0) } }
        // Certificate expiry from the latest scrape alone (no window needed).
        let expiry = w.latest.flatMap { MeshTrafficView(before: MeshScrape(at: 0, sidecars: []), after: $0) }?.certificateExpiry ?? [:]
        return meshJSON(view: view, sidecarsScraped: w.latest?.sidecars.count ?? 0, store: server.store, expiry: expiry)
    }

    /// The JSON for a view (nil: still collecting the first two scrapes).
    static func meshJSON(view: MeshTrafficView?, sidecarsScraped: Int, store: ConfigStore?, expiry: [String: Int64]) -> String {
        var j = JSONWriter()
        j.beginObject()
        j.beginObject("sampling")
        j.string("state", view == nil ? "collecting" : "ready")
        number(&j, "windowSeconds", view?.seconds)
        j.number("sidecars", Int64(sidecarsScraped))
        j.number("now", MeshCrypto.now())
        j.endObject()
        // Nodes: every registered workload's service and version, and every end of an edge.
        var nodes = Set<MeshTrafficView.Node>()
        for w in store?.workloads() ?? [] {
            nodes.insert(.init(service: w.service, namespace: w.namespace, version: w.labels.first { $0.0 == "version" }?.1 ?? "unknown"))
        }
        for e in view?.edges ?? [] { nodes.insert(e.source); nodes.insert(e.destination) }
        j.beginArray("nodes")
        for n in nodes.sorted() {
            j.beginObject()
            j.string("id", n.id)
            j.string("service", n.service)
            j.string("namespace", n.namespace)
            j.string("version", n.version)
            j.endObject()
        }
        j.endArray()
        j.beginArray("edges")
        for e in view?.edges ?? [] {
            j.beginObject()
            j.string("source", e.source.id)
            j.string("destination", e.destination.id)
            j.string("protocol", e.tcp ? "tcp" : "http")
            figures(&j, e.figures, seconds: view!.seconds)
            if e.tcp {
                number(&j, "connectionsPerSecond", e.figures.connections / view!.seconds)
                number(&j, "bytesPerSecond", e.figures.bytes / view!.seconds)
            }
            if let m = e.mtls { j.bool("mtls", m) } else { j.raw("mtls", "null") }
            j.endObject()
        }
        j.endArray()
        j.beginArray("routes")
        for r in view?.routes ?? [] {
            j.beginObject()
            j.string("route", r.route)
            j.string("service", r.service)
            j.string("version", r.version)
            figures(&j, r.figures, seconds: view!.seconds)
            j.endObject()
        }
        j.endArray()
        j.beginArray("proxies")
        if let store {
            for p in store.proxies() {
                j.beginObject()
                j.string("identity", p.identity)
                j.string("node", p.node)
                j.bool("connected", p.connected)
                j.number("sentVersion", Int64(p.sentVersion))
                j.number("ackedVersion", Int64(p.ackedVersion))
                // The same states as `GET /v1/proxies` (meshctl status).
                let state = p.nack != nil ? "NACK" : store.isCurrent(p) ? "ACK" : p.ackedVersion > 0 ? "ACK \(p.ackedVersion) (behind)" : "pending"
                j.string("state", state)
                if let e = p.nack { j.string("error", e) } else { j.raw("error", "null") }
                // A gateway's TLS secrets meshd withholds (as `meshctl status` shows them).
                if let w = store.withheldSecrets(identity: p.identity, node: p.node) { j.string("note", w) } else { j.raw("note", "null") }
                j.string("admin", p.admin)
                if let x = expiry[p.admin], !p.admin.isEmpty { j.number("certificateExpiry", x) } else { j.raw("certificateExpiry", "null") }
                j.endObject()
            }
        }
        j.endArray()
        j.number("configVersion", Int64(store?.version ?? 0))
        j.endObject()
        return j.text
    }
}
