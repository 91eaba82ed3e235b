import MeshControlWire
import MeshCA
import MeshPKI
import MeshConfig
import MeshCore

/// meshd's answers about config, as meshctl prints them: what an apply or delete did document by
/// document, and the documents in force as a table an operator can check (hosts, matches,
/// destinations and weights) or as the stored YAML. Every value from input is escaped.
enum ConfigAnswers {
    /// First line `version N` (a new version is in force) or `unchanged N`; then one line per
    /// document: `KIND<tab>NAMESPACE/NAME<tab>OUTCOME`.
    static func applied(_ r: ConfigStore.Result) -> String {
        var out = "\(r.changed ? "version" : "unchanged") \(r.version)\n"
        for d in r.documents { out += "\(d.kind)\t\(d.namespace)/\(d.name)\t\(d.outcome.rawValue)\n" }
        return Printable.escaped(out, keepNewlines: true)
    }

    /// The stored documents, as applied (comments and all).
    static func routesYAML(_ docs: [(kind: String, namespace: String, name: String, text: String)]) -> String {
        Printable.escaped(docs.map(\.text).joined(separator: "\n---\n") + (docs.isEmpty ? "" : "\n"), keepNewlines: true)
    }

    /// One line per document (kind, namespace/name, what it applies to), then one indented line
    /// per http route of a VirtualService or subset of a DestinationRule.
    static func routesTable(_ docs: [(kind: String, namespace: String, name: String, text: String)]) -> String {
        var rows: [(String, String, String)] = []
        var details: [[String]] = []
        for d in docs {
            let cfg = (try? IstioTraffic.parse(documents: (try? YAML.parseDocuments(d.text)) ?? [], file: "", defaultNamespace: d.namespace,
                                               skipKinds: [], checkSubsets: false)) ?? IstioTraffic.Config()
            var what = ""
            var lines: [String] = []
            if let vs = cfg.virtualServices.first {
                what = "hosts: " + vs.hosts.joined(separator: ", ") + (vs.gateways.isEmpty ? "" : "; gateways: " + vs.gateways.joined(separator: ", "))
                for (i, r) in vs.http.enumerated() { lines.append(httpRoute(r, index: i)) }
            } else if let dr = cfg.destinationRules.first {
                what = "host: \(dr.host)" + (dr.trafficPolicy.map { policy($0) }.map { $0.isEmpty ? "" : "; \($0)" } ?? "")
                for s in dr.subsets {
                    lines.append("subset \(s.name): " + s.labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
                                 + (s.trafficPolicy.map { policy($0) }.map { $0.isEmpty ? "" : "; \($0)" } ?? ""))
                }
            } else if let ap = cfg.authorizationPolicies.first {
                what = "\(ap.action.rawValue); " + selector(ap.selector) + "; \(ap.rules.count) rule(s)"
            } else if let pa = cfg.peerAuthentications.first {
                what = "mtls: \(pa.mode?.rawValue ?? "UNSET"); " + selector(pa.selector)
            } else if let se = cfg.serviceEntries.first {
                what = "hosts: \(se.hosts.joined(separator: ", ")); \(se.meshInternal ? "MESH_INTERNAL" : "MESH_EXTERNAL"); "
                    + "ports: \(se.ports.map { "\($0.number)/\($0.proto)" }.joined(separator: ", ")); \(se.endpoints.count) endpoint(s)"
            } else if let sc = cfg.sidecars.first {
                what = "egress: " + sc.egressHosts.map { h -> String in
                    switch h.namespace {
                    case .any: return "*/\(h.dnsName)"
                    case .own: return "./\(h.dnsName)"
                    case .none: return "~/\(h.dnsName)"
                    case .named(let n): return "\(n)/\(h.dnsName)"
                    }
                }.joined(separator: ", ") + "; " + (sc.selector.map { _ in selector(sc.selector) } ?? "namespace default")
            } else if let g = cfg.gateways.first {
                what = (g.selector.isEmpty ? "every gateway" : selector(g.selector)) + "; servers: " + g.servers.map { sv in
                    "\(sv.port)/\(sv.proto.rawValue)" + (sv.tls?.mode.map { " \($0.rawValue)" } ?? "") + (sv.tls?.httpsRedirect == true ? " httpsRedirect" : "")
                }.joined(separator: ", ")
            } else if let we = cfg.workloadEntries.first {
                what = "address: \(we.endpoint.address); labels: " + we.endpoint.labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
            }
            rows.append((d.kind, "\(d.namespace)/\(d.name)", what))
            details.append(lines)
        }
        let w0 = max(4, rows.map { $0.0.count }.max() ?? 0), w1 = max(4, rows.map { $0.1.count }.max() ?? 0)
        func pad(_ s: String, _ w: Int) -> String { s + String(repeating: " ", count: max(0, w - s.count)) }
        var out = rows.isEmpty ? "" : "\(pad("KIND", w0))  \(pad("NAMESPACE/NAME", w1))  APPLIES TO\n"
        for (i, r) in rows.enumerated() {
            out += "\(pad(r.0, w0))  \(pad(r.1, w1))  \(r.2)\n"
            for l in details[i] { out += "    \(l)\n" }
        }
        return Printable.escaped(out, keepNewlines: true)
    }

    static func httpRoute(_ r: IstioTraffic.HTTPRoute, index: Int) -> String {
        var s = "http[\(index)]" + (r.name.map { " \($0)" } ?? "") + ": "
        let matches = r.match.map { m -> String in
            var parts: [String] = []
            if let u = m.uri { parts.append("uri \(u.kind.rawValue) \(u.value)") }
            if let me = m.method { parts.append("method \(me.kind.rawValue) \(me.value)") }
            for h in m.headers { parts.append("header \(h.name) \(h.match.kind.rawValue) \(h.match.value)") }
            return parts.isEmpty ? "any" : parts.joined(separator: " and ")
        }
        s += "match " + (matches.isEmpty ? "any" : matches.joined(separator: " or "))
        s += " -> " + r.route.map { d in
            "\(d.destination.host)" + (d.destination.subset.map { ":\($0)" } ?? "") + (d.destination.port.map { " port \($0)" } ?? "")
                + (r.route.count > 1 || d.weight != 100 ? " \(d.weight)%" : "")
        }.joined(separator: ", ")
        if let t = r.timeout { s += "; timeout \(millis(t))" }
        if let rt = r.retries {
            s += "; retries \(rt.attempts)" + (rt.perTryTimeout.map { " per try \(millis($0))" } ?? "") + (rt.retryOn.isEmpty ? "" : " on \(rt.retryOn.joined(separator: ","))")
        }
        if let f = r.fault {
            if let p = f.abortPercent, let st = f.abortStatus { s += "; fault abort \(st) at \(p)%" }
            if let p = f.delayPercent, let d = f.fixedDelay { s += "; fault delay \(millis(d)) at \(p)%" }
        }
        if let m = r.mirror { s += "; mirror \(m.host)" + (m.subset.map { ":\($0)" } ?? "") + (r.mirrorPercent.map { " at \($0)%" } ?? "") }
        if let u = r.rewriteURI { s += "; rewrite uri \(u)" }
        return s
    }

    static func policy(_ p: IstioTraffic.TrafficPolicy) -> String {
        var parts: [String] = []
        if let lb = p.loadBalancer { parts.append("loadBalancer \(lb.rawValue)") }
        if let m = p.maxConnections { parts.append("maxConnections \(m)") }
        if let c = p.consecutive5xxErrors { parts.append("outlier after \(c) 5xx") }
        if let c = p.consecutiveGatewayErrors { parts.append("outlier after \(c) gateway errors") }
        return parts.joined(separator: ", ")
    }

    static func selector(_ sel: [(String, String)]?) -> String {
        sel.map { "selector " + $0.map { "\($0.0)=\($0.1)" }.joined(separator: ",") } ?? "whole namespace"
    }

    static func millis(_ nanos: UInt64) -> String {
        nanos % 1_000_000_000 == 0 ? "\(nanos / 1_000_000_000)s" : "\(nanos / 1_000_000)ms"
    }
}
