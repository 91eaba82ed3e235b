import MeshConfig
import MeshCore

extension ConfigStore {
    /// Warnings on documents an apply accepted: a RequestAuthentication `jwksUri` over plain
    /// http:// (allowed, as in Istio, but its keys can be substituted on the path), logged at
    /// every apply that gives it, naming the file, line and policy.
    static func plaintextKeySetWarnings(_ docs: [Document]) -> [String] {
        var out: [String] = []
        for d in docs where d.kind == "RequestAuthentication" {
            guard let cfg = try? IstioTraffic.parse(d.text, file: d.file) else { continue }
            for var p in cfg.requestAuthentications {
                p.namespace = d.namespace
                p.name = d.name
                out += p.plaintextKeySetWarnings.map { "\(d.file):\(d.line): \($0)" }
            }
        }
        return out
    }

    static func warnPlaintextKeySets(_ docs: [Document]) {
        for w in plaintextKeySetWarnings(docs) { Log.warn("config", w) }
    }
}
