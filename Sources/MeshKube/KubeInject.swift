import MeshYAML

/// `meshctl kube-inject`: the whole transform of a multi-document manifest. Documents it does
/// not change are written back byte for byte; a changed one is re-emitted by libyaml (key
/// order, styles, tags, anchors kept; comments inside that document are lost, as libyaml has
/// none to give). Nothing is returned on error, so nothing is written.
public enum KubeInject {
    /// The new text and one report line per workload (for stderr).
    public struct Result: Sendable {
        public var output: String
        public var report: [String]
    }

    public static func run(_ text: String, options: KubeInjectOptions, uninject: Bool) throws(KubeError) -> Result {
        let parsed: (documents: [YAMLDocument], trailer: String)
        do { parsed = try YAML.parse(text) } catch {
            throw KubeError(document: error.document, line: error.line, "not valid YAML (column \(error.column)): \(error.message)")
        }
        var out = ""
        var report: [String] = []
        for doc in parsed.documents {
            guard var root = doc.root else { out += doc.source; continue }
            let changed: Bool
            var lines: [String] = []
            changed = try transform(&root, doc: doc, options: options, uninject: uninject, report: &lines, at: "")
            report += lines
            guard changed else { out += doc.source; continue }
            if doc.hasDirectives {
                throw KubeError(document: doc.index, line: doc.line, "a document with %YAML or %TAG directives cannot be rewritten; remove the directives")
            }
            var edited = doc
            edited.root = root
            if !out.isEmpty && !out.hasSuffix("\n") { out += "\n" }
            do { out += try YAML.emit(edited, forceStart: doc.index > 1) } catch {
                throw KubeError(document: doc.index, line: doc.line, "cannot write the document back: \(error.message)")
            }
        }
        out += parsed.trailer
        return Result(output: out, report: report)
    }

    /// Transforms one Kubernetes object (a document's root or a List item) in place; true when
    /// something changed.
    static func transform(_ obj: inout YAMLNode, doc: YAMLDocument, options: KubeInjectOptions, uninject: Bool,
                          report: inout [String], at: String) throws(KubeError) -> Bool {
        let d = doc.index
        guard obj.pairs != nil, let kind = doc.lookup(obj, "kind")?.scalar, let api = doc.lookup(obj, "apiVersion")?.scalar,
              !kind.isEmpty, !api.isEmpty else {
            throw KubeError(document: d, line: obj.line, "\(at.isEmpty ? "" : at + ": ")not a Kubernetes object (expected a mapping with apiVersion and kind)")
        }
        let meta = doc.lookup(obj, "metadata").map { doc.resolve($0) }
        let name = meta.flatMap { doc.lookup($0, "name")?.scalar }
        let ns = meta.flatMap { doc.lookup($0, "namespace")?.scalar }
        let label = "\(kind) \(ns.map { $0 + "/" } ?? "")\(name ?? "(unnamed)")"
        if kind == "List" && api == "v1" {
            guard obj["items"] != nil else { return false }
            var changed = false
            try KubeWorkloads.edit(&obj, ["items"][...], document: d, where: at) { (items: inout YAMLNode) throws(KubeError) in
                guard let list = items.items else { throw KubeError(document: d, line: items.line, "List items: expected a list") }
                for i in 0..<list.count {
                    var item = list[i]
                    if try transform(&item, doc: doc, options: options, uninject: uninject, report: &report, at: "items[\(i)]") {
                        items.withItem(at: i) { $0 = item }
                        changed = true
                    }
                }
            }
            return changed
        }
        guard let (wantAPI, path) = KubeWorkloads.kinds[kind] else { return false }
        guard api == wantAPI else {
            throw KubeError(document: d, line: obj.line, "\(at.isEmpty ? "" : at + ": ")\(kind) apiVersion \(api) is not one kube-inject knows (\(wantAPI))")
        }
        var injector = KubePodInjector(doc: doc, options: options, workloadName: name)
        injector.workloadNamespace = ns
        let before = obj
        let what: String = try KubeWorkloads.edit(&obj, path[...], document: d, where: at) { (t: inout YAMLNode) throws(KubeError) in
            if uninject {
                guard KubePodInjector.statusText(t) != nil else { return "not injected" }
                try injector.uninject(&t)
                return "uninjected"
            }
            return try injector.inject(&t, kind: kind)
        }
        report.append("document \(d)\(at.isEmpty ? "" : " " + at): \(label): \(what)")
        for n in injector.notes { report.append("document \(d)\(at.isEmpty ? "" : " " + at): \(label): note: \(n)") }
        return obj != before
    }
}
