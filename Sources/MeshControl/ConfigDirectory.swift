import MeshControlWire
import MeshCA
import MeshPKI
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// meshd's `--config-dir`: every `*.yaml`/`*.yml` file there is applied (together, so the files
/// may refer to each other; each keeps its own name and lines in errors) at start and again
/// whenever a file is added, changed or removed. Each file owns the documents it applied: a file
/// removed removes them. A file that cannot be read or is refused on its own is named in the
/// log and its documents in force stay, while the other files are applied; a refused set is
/// logged with file, line and field, and the config in force stays.
public final class ConfigDirectory: @unchecked Sendable {
    let path: String
    let store: ConfigStore
    private var signature = ""

    public init(path: String, store: ConfigStore) {
        self.path = path
        self.store = store
    }

    /// Names, sizes and modification times of the config files, sorted; nil when the directory
    /// cannot be read (a transient error must not look like "every file removed"). A file that
    /// cannot be inspected has an empty stamp (it is then refused, its documents kept).
    func files() -> [(name: String, stamp: String)]? {
        guard let d = opendir(path) else { return nil }
        defer { closedir(d) }
        var out: [(String, String)] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name.hasSuffix(".yaml") || name.hasSuffix(".yml"), !name.hasPrefix(".") else { continue }
            var st = stat()
            guard stat("\(path)/\(name)", &st) == 0 else { out.append((name, "")); continue }
            guard (st.st_mode & S_IFMT) == S_IFREG else { continue }
            out.append((name, "\(st.st_size).\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)"))
        }
        return out.sorted { $0.0 < $1.0 }
    }

    public func check() {
        guard let fs = files() else {
            if signature != "(unreadable)" {
                Log.error("config", "\(path): cannot read the directory (\(String(cString: strerror(errno)))); the config in force stays")
                signature = "(unreadable)"
            }
            return
        }
        let sig = fs.map { "\($0.name)=\($0.stamp)" }.joined(separator: ";")
        if sig == signature { return }
        signature = sig
        let prefix = "config-dir:\(path)/"
        var inputs: [ConfigStore.Input] = []
        var refused: Set<String> = []
        for f in fs {
            let file = "\(path)/\(f.name)"
            let text: String
            do {
                if f.stamp.isEmpty { throw CAError("cannot inspect \(file) (stat failed)") }
                text = try FileStore.read(file)
            } catch {
                Log.error("config", "\(file) refused, its documents in force stay: \(error)")
                refused.insert(prefix + f.name)
                continue
            }
            do { _ = try ConfigStore.split(text, file: file) } catch {
                Log.error("config", "\(file) refused, its documents in force stay: \(error)")
                refused.insert(prefix + f.name)
                continue
            }
            inputs.append(ConfigStore.Input(file: file, text: text, source: prefix + f.name))
        }
        // Every file of the directory that is not refused now, present or removed, is replaced by
        // what it holds now (the whole directory as one source was the older layout).
        let owned = Set(store.documentSources().filter { $0.hasPrefix(prefix) || $0 == "config-dir:\(path)" })
        let replacing = owned.subtracting(refused).union(inputs.map(\.source))
        do {
            let r = try store.apply(inputs, replacing: replacing)
            if r.changed { Log.info("config", "\(path): applied as version \(r.version)") }
        } catch {
            Log.error("config", "\(path) refused, the config in force stays: \(error)")
        }
    }
}
