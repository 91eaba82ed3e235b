import MeshConfig
import MeshControl
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// `meshctl analyze -f FILE|DIR [--service NAME.NAMESPACE]... [--use-meshd]
/// [--failure-threshold Error|Warning|Info] [-o json]`: the files checked offline as meshd would
/// check an apply of them (the same code), then looked at for what is accepted but probably not
/// meant (ConfigAnalysis). Exit 0 when nothing reaches the threshold, 79 when something does
/// (istioctl analyze's code), 2 on a usage error.
func runAnalyze(files: [(name: String, text: String)], flags: Flags, registry: () -> String) -> Never {
    var threshold = ConfigFinding.Level.error
    if let t = flags.string("failure-threshold") {
        guard let l = ConfigFinding.Level(name: t) else { fail("--failure-threshold: expected Error, Warning or Info, got \"\(t)\"") }
        threshold = l
    }
    let format = flags.string("o") ?? flags.string("output")
    if let f = format, f != "json" { fail("-o: expected json, got \"\(f)\"") }
    var known: [ConfigAnalysis.KnownWorkload] = []
    for s in flags.all("service") {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2, Names.isDNSLabel(parts[0]), Names.isDNSLabel(parts[1]) else {
            fail("--service: expected NAME.NAMESPACE (a service your workloads register), got \"\(s)\"")
        }
        known.append(.init(service: parts[0], namespace: parts[1]))
    }
    if flags.has("use-meshd") {
        // meshd's registry: SERVICE.NAMESPACE<tab>ADDRESS<tab>k=v,k=v<tab>STATE<tab>VIPS.
        for line in registry().split(separator: "\n") {
            let cols = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            guard cols.count >= 4, cols[3] != "no workload", let dot = cols[0].firstIndex(of: ".") else { continue }
            let labels = cols[2] == "-" ? [] : cols[2].split(separator: ",").compactMap { kv -> (String, String)? in
                guard let eq = kv.firstIndex(of: "=") else { return nil }
                return (String(kv[..<eq]), String(kv[kv.index(after: eq)...]))
            }
            known.append(.init(service: String(cols[0][..<dot]), namespace: String(cols[0][cols[0].index(after: dot)...]), labels: labels))
        }
    }
    let findings = ConfigAnalysis.analyze(files.map { ConfigStore.Input(file: $0.name, text: $0.text) }, known: known)
    if format == "json" {
        var j = JSONWriter()
        j.beginArray()
        for f in findings {
            j.beginObject()
            j.string("level", f.level.name); j.string("code", f.code); j.string("resource", f.resource)
            j.string("file", f.file); j.number("line", Int64(f.line)); j.string("message", f.message)
            j.endObject()
        }
        j.endArray()
        print(j.text)
    } else if findings.isEmpty {
        print("No validation issues found when analyzing \(files.count) file(s).")
    } else {
        for f in findings { print(f.text) }
    }
    exit(findings.contains { $0.level >= threshold } ? 79 : 0)
}
