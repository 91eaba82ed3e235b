import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// meshd's `--config-dir`: every `*.yaml`/`*.yml` file there is applied (as one input, so the
/// files may refer to each other) at start and again whenever a file is added, changed or
/// removed. A refused input is logged with file, document and field; the config in force stays.
public final class ConfigDirectory: @unchecked Sendable {
    let path: String
    let store: ConfigStore
    private var signature = ""

    public init(path: String, store: ConfigStore) {
        self.path = path
        self.store = store
    }

    /// Names, sizes and modification times of the config files, sorted.
    func files() -> [(name: String, stamp: String)] {
        guard let d = opendir(path) else { return [] }
        defer { closedir(d) }
        var out: [(String, String)] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name.hasSuffix(".yaml") || name.hasSuffix(".yml"), !name.hasPrefix(".") else { continue }
            var st = stat()
            guard stat("\(path)/\(name)", &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { continue }
            out.append((name, "\(st.st_size).\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)"))
        }
        return out.sorted { $0.0 < $1.0 }
    }

    public func check() {
        let fs = files()
        let sig = fs.map { "\($0.name)=\($0.stamp)" }.joined(separator: ";")
        if sig == signature { return }
        signature = sig
        var texts: [String] = []
        for f in fs {
            guard let t = try? FileStore.read("\(path)/\(f.name)") else { continue }
            texts.append(t)
        }
        do {
            // The directory owns what it applied: a removed file or document is removed.
            let v = try store.apply(texts.joined(separator: "\n---\n"), file: "\(path) (\(fs.map(\.name).joined(separator: ", ")))",
                                    source: "config-dir:\(path)")
            Log.info("config", "\(path): applied as version \(v)")
        } catch {
            Log.error("config", "\(path) refused, the config in force stays: \(error)")
        }
    }
}
