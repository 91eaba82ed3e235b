import MeshControlWire
import MeshCore
import MeshEtcd
#if canImport(Glibc)
import Glibc
#endif

/// `meshctl proxy-config routes|clusters|listeners|secrets|authz|all PROXY [-o json]`, Istio's
/// `istioctl proxy-config` for this mesh: one sidecar's view read from its admin port
/// (`/config_dump`, `/clusters`, `/certs`). PROXY is the admin address (HOST:PORT) or, when meshd
/// is reachable with the admin token, a connected sidecar's SPIFFE identity or service name as
/// `meshctl status` lists them (`proxies` gives that list).
func runProxyConfig(section: String?, target: String?, json: Bool, proxies: () -> String) -> Never {
    let sections = ["routes", "clusters", "listeners", "secrets", "authz", "all"]
    guard let section, sections.contains(section) else {
        fail("proxy-config: expected one of \(sections.joined(separator: ", ")), then the sidecar (admin HOST:PORT or its identity)")
    }
    guard let target else { fail("proxy-config \(section): name the sidecar (its admin HOST:PORT, or its identity or service as meshctl status lists them)") }
    let admin: SocketAddress
    if let a = SocketAddress(target) { admin = a } else {
        // IDENTITY<tab>NODE<tab>connected<tab>...<tab>admin HOST:PORT
        let lines = proxies().split(separator: "\n").filter { $0.contains("\tconnected\t") }
        let matching = lines.filter { l in
            let id = String(l.split(separator: "\t").first ?? "")
            return id == target || id.hasSuffix("/sa/\(target)")
        }
        guard matching.count == 1 else {
            fail(matching.isEmpty ? "proxy-config: no connected sidecar is \"\(target)\" (see meshctl status)"
                                  : "proxy-config: \(matching.count) connected sidecars are \"\(target)\"; give one's admin HOST:PORT", code: 1)
        }
        guard let a = matching[0].split(separator: "\t").first(where: { $0.hasPrefix("admin ") }).map({ String($0.dropFirst(6)) }),
              let addr = SocketAddress(a) else { fail("proxy-config: meshd knows no admin address for \"\(target)\"", code: 1) }
        admin = addr
    }
    func get(_ path: String) -> (text: String, value: JSONValue) {
        let r: (status: Int, body: String)
        do { r = try ControlClient.request(admin, context: nil, method: "GET", path: path, timeoutSeconds: 5) } catch {
            fail("proxy-config: \(admin.text)\(path): \(error)", code: 1)
        }
        guard r.status == 200 else { fail("proxy-config: \(admin.text)\(path) answered \(r.status)", code: 1) }
        do { return (r.body, try JSONReader.parse(r.body)) } catch { fail("proxy-config: \(admin.text)\(path): \(error)", code: 1) }
    }
    let dump = get("/config_dump")
    var out = ""
    func table(_ rows: [[String]]) {
        guard let head = rows.first else { return }
        var widths = head.map(\.count)
        for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
        for r in rows {
            out += r.enumerated().map { i, c in i == r.count - 1 ? c : c + String(repeating: " ", count: widths[i] - c.count + 3) }.joined() + "\n"
        }
    }
    let b = dump.value["bootstrap"] ?? .null
    func strings(_ v: JSONValue?) -> [String] { v?.arrayValue?.compactMap(\.stringValue) ?? [] }
    func num(_ v: JSONValue?) -> String { v?.int64Value.map(String.init) ?? v.flatMap { if case .number(let s) = $0 { return s } else { return nil } } ?? "-" }
    var jsonParts: [String] = []
    if section == "listeners" || section == "all" {
        var rows = [["LISTENER", "ADDRESS", "DETAIL"]]
        for k in ["outbound", "inbound"] {
            guard let l = b[k] else { continue }
            var detail = "header timeout \(num(l["header_timeout_ms"])) ms, idle \(num(l["idle_timeout_ms"])) ms"
            if let a = l["app_address"]?.stringValue { detail += ", app \(a)" }
            rows.append([k, l["address"]?.stringValue ?? "-", detail])
        }
        if let mode = b["peer_authentication"]?["mode"]?.stringValue, rows.count > 1 {
            rows = rows.map { $0[0] == "inbound" ? [$0[0], $0[1], $0[2] + ", mTLS \(mode)"] : $0 }
        }
        for g in b["gateway_servers"]?.arrayValue ?? [] {
            var detail = "\(g["protocol"]?.stringValue ?? "?") \(strings(g["hosts"]).joined(separator: ","))"
            if let m = g["tls_mode"]?.stringValue { detail += ", tls \(m)" }
            if let c = g["credential_name"]?.stringValue { detail += " (\(c))" }
            if g["https_redirect"]?.boolValue == true { detail += ", httpsRedirect" }
            detail += ", " + (g["state"]?.stringValue ?? "-")
            rows.append(["gateway \(g["gateway"]?.stringValue ?? "?")", ":" + num(g["port"]), detail])
        }
        table(rows)
        if let v = b["gateway_servers"] { jsonParts.append("\"gateway_servers\":" + render(v)) }
        if let l = b["outbound"], let v = l.isObject ? l : nil { jsonParts.append("\"outbound\":" + render(v)) }
        if let l = b["inbound"], l.isObject { jsonParts.append("\"inbound\":" + render(l)) }
    }
    if section == "routes" || section == "all" {
        if !out.isEmpty { out += "\n" }
        var rows = [["ROUTE", "SERVICE", "DESTINATIONS", "TIMEOUT", "RETRIES"]]
        let hostsOf = Dictionary((b["routes"]?.arrayValue ?? []).compactMap { r in r["name"]?.stringValue.map { ($0, strings(r["hosts"]).joined(separator: ",")) } },
                                 uniquingKeysWith: { a, _ in a })
        for r in b["virtual_service_routes"]?.arrayValue ?? [] {
            let name = r["route"]?.stringValue ?? "-"
            let dests = (r["destinations"]?.arrayValue ?? []).map { d in "\(d["target"]?.stringValue ?? "?") \(num(d["weight"]))%" }.joined(separator: ", ")
            let t = num(r["timeout_ms"])
            rows.append([name, r["service"]?.stringValue ?? hostsOf[name] ?? "-", dests, t == "0" ? "-" : "\(t) ms", num(r["retries"]?["attempts"])])
        }
        for r in b["routes"]?.arrayValue ?? [] where !(b["virtual_service_routes"]?.arrayValue ?? []).contains(where: { $0["route"] == r["name"] }) {
            let t = num(r["timeout_ms"])
            rows.append([r["name"]?.stringValue ?? "-", strings(r["hosts"]).joined(separator: ","), r["cluster"]?.stringValue ?? "-", t == "0" ? "-" : "\(t) ms", "-"])
        }
        table(rows)
        for k in ["routes", "virtual_service_routes"] { if let v = b[k] { jsonParts.append("\"\(k)\":" + render(v)) } }
    }
    if section == "clusters" || section == "all" {
        if !out.isEmpty { out += "\n" }
        let live = get("/clusters").value
        var rows = [["CLUSTER", "TLS", "ENDPOINT", "HEALTH", "REQUESTS", "ERRORS"]]
        for c in live["clusters"]?.arrayValue ?? [] {
            let name = c["name"]?.stringValue ?? "-", tls = c["tls"]?.stringValue ?? "-"
            let eps = c["endpoints"]?.arrayValue ?? []
            if eps.isEmpty { rows.append([name, tls, "-", "-", "-", "-"]) }
            for e in eps {
                rows.append([name, tls, e["address"]?.stringValue ?? "-", e["health_status"]?.stringValue ?? "-", num(e["rq_total"]), num(e["rq_error"])])
            }
        }
        table(rows)
        jsonParts.append("\"clusters\":" + render(live["clusters"] ?? .array([])))
        if let v = b["cluster_policies"] { jsonParts.append("\"cluster_policies\":" + render(v)) }
    }
    if section == "secrets" || section == "all" {
        if !out.isEmpty { out += "\n" }
        let certs = get("/certs").value
        var rows = [["RESOURCE", "IDENTITY", "SERIAL", "NOT AFTER", "ISSUER"]]
        if certs["identity"] != nil {
            rows.append(["default", certs["identity"]?.stringValue ?? "-", certs["serial"]?.stringValue ?? "-", certs["not_after"]?.stringValue ?? "-", certs["issuer"]?.stringValue ?? "-"])
        }
        for r in certs["roots"]?.arrayValue ?? [] {
            rows.append(["ROOTCA", r["subject"]?.stringValue ?? "-", r["serial"]?.stringValue ?? "-", r["not_after"]?.stringValue ?? "-", r["issuer"]?.stringValue ?? "-"])
        }
        // A gateway's TLS secrets (names, fingerprints, serials; never a key).
        for s in dump.value["secrets"]?.arrayValue ?? [] {
            rows.append(["kubernetes://\(s["namespace"]?.stringValue ?? "?")/\(s["name"]?.stringValue ?? "?")", s["subject"]?.stringValue ?? "-",
                         s["serial"]?.stringValue ?? "-", s["not_after"]?.stringValue ?? "-", "sha256 " + String((s["sha256"]?.stringValue ?? "-").prefix(16))])
        }
        table(rows)
        jsonParts.append("\"certificates\":" + render(certs))
        if let v = dump.value["secrets"] { jsonParts.append("\"secrets\":" + render(v)) }
    }
    if section == "authz" || section == "all" {
        if !out.isEmpty { out += "\n" }
        out += "mTLS (PeerAuthentication): \(b["peer_authentication"]?["mode"]?.stringValue ?? "-")"
        let pas = b["peer_authentication"]?["policies"]?.arrayValue ?? []
        out += pas.isEmpty ? " (the mesh's default)\n" : " from " + pas.map { "\($0["name"]?.stringValue ?? "?") (\($0["scope"]?.stringValue ?? "?") \($0["mode"]?.stringValue ?? "?"))" }.joined(separator: ", ") + "\n"
        var rows = [["POLICY", "ACTION", "RULES"]]
        for p in b["authorization_policies"]?.arrayValue ?? [] {
            rows.append([p["name"]?.stringValue ?? "-", p["action"]?.stringValue ?? "-", String(p["rules"]?.arrayValue?.count ?? 0)])
        }
        if let ports = b["peer_authentication"]?["port_modes"], case .object(let o) = ports, !o.isEmpty {
            out += "per port: " + o.keys.sorted { (Int($0) ?? 0) < (Int($1) ?? 0) }.map { "\($0) \(o[$0]?.stringValue ?? "?")" }.joined(separator: ", ") + "\n"
        }
        for ra in b["request_authentications"]?.arrayValue ?? [] {
            let issuers = (ra["jwt_rules"]?.arrayValue ?? []).map { r in
                (r["issuer"]?.stringValue ?? "?") + (r["jwks_uri"]?.stringValue.map { " (keys from \($0))" } ?? " (inline keys)")
            }
            out += "JWT (RequestAuthentication \(ra["name"]?.stringValue ?? "?")): " + issuers.joined(separator: ", ") + "\n"
        }
        if rows.count == 1 { out += "no AuthorizationPolicy selects this workload: every request allowed\n" } else { table(rows) }
        for k in ["peer_authentication", "request_authentications", "authorization_policies"] { if let v = b[k] { jsonParts.append("\"\(k)\":" + render(v)) } }
    }
    if json { print("{" + jsonParts.joined(separator: ",") + "}") } else { print(Printable.escaped(out, keepNewlines: true), terminator: "") }
    exit(0)
}

/// A JSON value written back as JSON text (for `-o json`).
private func render(_ v: JSONValue) -> String {
    var j = JSONWriter()
    func walk(_ k: String?, _ v: JSONValue) {
        switch v {
        case .null: j.raw(k, "null")
        case .bool(let b): j.bool(k, b)
        case .string(let s): j.string(k, s)
        case .number(let n): j.raw(k, n)
        case .array(let a): j.beginArray(k); for e in a { walk(nil, e) }; j.endArray()
        case .object(let o): j.beginObject(k); for (key, e) in o { walk(key, e) }; j.endObject()
        }
    }
    walk(nil, v)
    return j.text
}
