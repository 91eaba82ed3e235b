import MeshControlWire
import MeshCA
import MeshPKI
import MeshConfig
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// The config store's files in the state directory: `applied.yaml` (the documents in force,
/// under a header line that counts them), `sources.txt` (which `--config-dir` file owns which
/// document) and `registry.txt` (the registered workloads, one a line: identity, service,
/// namespace, labels, address, protocol, service port). Written atomically. A file that
/// exists but cannot be read or parsed is an error naming it and its line: meshd never starts
/// from an empty or partial view of what was stored.
struct StateFiles {
    static let applied = "applied.yaml"
    static let sources = "sources.txt"
    static let registry = "registry.txt"
    /// The virtual IPs meshd gave to mesh hosts (`VIPAllocator.serialized`).
    static let vips = "vips.txt"
    static let header = "# meshd: the config in force, documents: "

    let stateDir: String

    private func path(_ name: String) -> String { "\(stateDir)/\(name)" }

    /// The file's text, nil when it does not exist; an error when it exists but cannot be read.
    private func read(_ name: String) throws(CAError) -> String? {
        let p = path(name)
        var st = stat()
        if lstat(p, &st) != 0 {
            if errno == ENOENT { return nil }
            throw CAError("\(p): cannot read it: \(String(cString: strerror(errno)))")
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw CAError("\(p): not a regular file; meshd keeps its state there") }
        let bytes: [UInt8]
        do { bytes = try FileStore.readBytes(p) } catch { throw CAError("\(p): \(error)") }
        guard let text = String(validating: bytes, as: UTF8.self) else { throw CAError("\(p): not UTF-8 text; the file is damaged") }
        return text
    }

    /// The stored state: documents, their sources and the registry.
    func load() throws(CAError) -> ConfigStore.State {
        var st = ConfigStore.State()
        if let text = try read(StateFiles.applied) {
            let p = path(StateFiles.applied)
            // A file meshd wrote always starts with its header; a legacy one (no header) has documents.
            var expected: Int? = nil
            if text.hasPrefix(StateFiles.header) {
                let n = text.dropFirst(StateFiles.header.count).prefix { $0 != "\n" }
                guard let v = Int(n) else { throw CAError("\(p):1: damaged header line (expected \"\(StateFiles.header)N\")") }
                expected = v
            } else if text.isEmpty {
                throw CAError("\(p): the file is empty (meshd always writes a header line); it was damaged: restore it, or remove it to start with no config")
            } else if text.allSatisfy({ $0 == "\n" || $0 == " " }) {
                // What a meshd without the header wrote once every document was deleted.
                Log.info("config", "\(p): no document (written by an earlier meshd)")
                expected = 0
            }
            let docs: [ConfigStore.Document]
            do { docs = try ConfigStore.split(text, file: p) } catch { throw CAError("\(error.description)") }
            if let n = expected, n != docs.count {
                throw CAError("\(p): the header counts \(n) document(s) but \(docs.count) were read; the file is damaged")
            }
            if expected == nil && docs.isEmpty {
                throw CAError("\(p): no document could be read from it; restore it, or remove it to start with no config")
            }
            for var d in docs {
                guard st.documents[d.key] == nil else { throw CAError("\(p):\(d.line): \(d.key) is stored twice; the file is damaged") }
                d.file = ""   // in force since an earlier apply; errors name it by kind and name
                st.documents[d.key] = d
                st.order.append(d.key)
            }
        }
        if let text = try read(StateFiles.sources) {
            for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() where !line.isEmpty {
                let f = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
                guard f.count == 2, !f[1].isEmpty else {
                    throw CAError("\(path(StateFiles.sources)):\(i + 1): expected KIND/NAMESPACE/NAME<tab>SOURCE")
                }
                st.documents[f[0]]?.source = f[1]
            }
        }
        if let text = try read(StateFiles.registry) {
            let p = path(StateFiles.registry)
            for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() where !line.isEmpty {
                // Known before the restart: kept through the grace period even if it never returns.
                let w = try StateFiles.workload(fromLine: line, at: "\(p):\(i + 1)")
                st.workloads["\(w.identity)|\(w.address)"] = w
            }
        }
        if let text = try read(StateFiles.vips) {
            do { st.vips = try VIPAllocator.parse(text, file: path(StateFiles.vips)) } catch { throw CAError("\(error.description); the file is damaged: restore it (removing it gives hosts new addresses)") }
        }
        return st
    }

    /// Writes the VIP table.
    func saveVIPs(_ s: ConfigStore.State) throws(CAError) {
        try FileStore.writeAtomically(path(StateFiles.vips), s.vips.serialized(), mode: 0o600)
    }

    /// Writes the documents in force and their sources.
    func saveDocuments(_ s: ConfigStore.State) throws(CAError) {
        let docs = s.order.compactMap { s.documents[$0] }
        let text = "\(StateFiles.header)\(docs.count)\n" + (docs.isEmpty ? "" : ConfigStore.renderDocuments(docs).text)
        try FileStore.writeAtomically(path(StateFiles.applied), text, mode: 0o600)
        let sources = docs.compactMap { $0.source.isEmpty ? nil : "\($0.key)\t\($0.source)" }
        try FileStore.writeAtomically(path(StateFiles.sources), sources.joined(separator: "\n") + "\n", mode: 0o600)
    }

    /// Writes the registry.
    func saveRegistry(_ s: ConfigStore.State) throws(CAError) {
        let text = s.workloads.values.sorted { $0.address < $1.address }.map(StateFiles.line(of:)).joined(separator: "\n") + "\n"
        try FileStore.writeAtomically(path(StateFiles.registry), text, mode: 0o600)
    }

    /// A registered workload as one line: identity, service, namespace, labels, address, protocol
    /// and service port, tab-separated (the holder replica, in etcd, follows as an eighth field).
    static func line(of w: ConfigStore.Workload) -> String {
        "\(w.identity)\t\(w.service)\t\(w.namespace)\t\(w.labels.map { "\($0.0)=\($0.1)" }.joined(separator: ","))\t\(w.address)"
            + "\t\(w.serviceProtocol)\t\(w.servicePort.map(String.init) ?? "-")"
    }

    /// Reads one registry line (`line(of:)`), with the checks a registration gets: a damaged or
    /// edited file (or etcd key) cannot inject config. `at` names where it was read. A line
    /// written before the protocol and the service port has 5 fields (HTTP, port unknown);
    /// `holder` (etcd): an eighth field is the replica holding the workload's stream.
    static func workload(fromLine line: Substring, at: String, holder: Bool = false) throws(CAError) -> ConfigStore.Workload {
        let f = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
        guard f.count == 5 || f.count == 7 || (holder && f.count == 8) else {
            throw CAError("\(at): expected 5 tab-separated fields, got \(f.count) (or 7: with the protocol and service port this meshd saves)")
        }
        var proto = "HTTP"
        var port: Int? = nil
        if f.count >= 7 {
            guard ["HTTP", "HTTP2", "GRPC", "TCP"].contains(f[5]) else {
                throw CAError("\(at): expected a protocol (HTTP, HTTP2, GRPC or TCP), got \"\(f[5])\"")
            }
            proto = f[5]
            if f[6] != "-" {
                guard let n = Int(f[6]), n >= 1, n <= 65535 else { throw CAError("\(at): expected a service port (1-65535 or -), got \"\(f[6])\"") }
                port = n
            }
        }
        guard f[0].hasPrefix("spiffe://"), f[0].utf8.allSatisfy({ $0 > 32 && $0 < 127 && $0 != 34 && $0 != 92 }) else {
            throw CAError("\(at): expected a SPIFFE ID, got \"\(f[0])\"")
        }
        guard Names.isDNSLabel(f[1]), Names.isDNSLabel(f[2]) else {
            throw CAError("\(at): expected a service and a namespace (DNS labels), got \"\(f[1])\" and \"\(f[2])\"")
        }
        guard SocketAddress(f[4]) != nil else { throw CAError("\(at): expected IP:PORT, got \"\(f[4])\"") }
        var labels: [(String, String)] = []
        for kv in f[3].split(separator: ",") {
            let l = kv.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            guard l.count == 2, Names.isLabelKey(l[0]), Names.isLabelValue(l[1]) else {
                throw CAError("\(at): expected labels as key=value,..., got \"\(kv)\"")
            }
            labels.append((l[0], l[1]))
        }
        var w = ConfigStore.Workload(identity: f[0], service: f[1], namespace: f[2], labels: labels, address: f[4], lastSeen: 0,
                                     connected: false, serviceProtocol: proto, servicePort: port)
        if f.count == 8 { w.holder = f[7] }
        return w
    }
}
