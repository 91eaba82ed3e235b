import MeshCore

/// One `sidecar --app-probe PATH=PORT[/APPPATH]` (Istio's probe rewrite): a GET on the status
/// port at `path` (`/app-health/<container>/readyz|livez|startupz`) is answered by a GET from the
/// sidecar to `127.0.0.1:port` at `target` (default `/`, may carry a query).
public struct AppProbe: Sendable, Equatable {
    public let path: String
    public let port: Int
    public let target: String

    public init(path: String, port: Int, target: String) {
        self.path = path
        self.port = port
        self.target = target
    }

    /// Parses one flag value; the error names `--app-probe` and what is wrong.
    public static func parse(_ s: String) throws(FlagError) -> AppProbe {
        func bad(_ what: String) -> FlagError { FlagError("--app-probe: \(what), in \"\(s)\" (expected /app-health/CONTAINER/readyz|livez|startupz=PORT[/PATH])") }
        guard let eq = s.firstIndex(of: "=") else { throw bad("no '=' between the probe path and the app's port") }
        let path = String(s[..<eq])
        let rest = s[s.index(after: eq)...]
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0].isEmpty, parts[1] == "app-health" else {
            throw bad("the probe path must be /app-health/CONTAINER/readyz, livez or startupz")
        }
        guard isContainerName(parts[2]) else {
            throw bad("\"\(parts[2])\" is not a container name (lowercase letters, digits and '-', 1 to 63, starting and ending with a letter or digit)")
        }
        guard ["readyz", "livez", "startupz"].contains(parts[3]) else {
            throw bad("the probe path must end in readyz, livez or startupz, not \"\(parts[3])\"")
        }
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let portText = rest[..<slash]
        guard !portText.isEmpty, portText.utf8.count <= 5, portText.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
              let port = Int(portText), port >= 1, port <= 65535 else {
            throw bad("the app's port must be a number from 1 to 65535, got \"\(portText)\"")
        }
        let target = slash == rest.endIndex ? "/" : String(rest[slash...])
        guard target.utf8.count <= 2048 else { throw bad("the app's path is longer than 2048 bytes") }
        guard target.utf8.allSatisfy({ $0 >= 0x21 && $0 <= 0x7e && $0 != UInt8(ascii: "#") }) else {
            throw bad("the app's path may hold visible ASCII only (no space, control character, '#' or non-ASCII byte; percent-encode them)")
        }
        return AppProbe(path: path, port: port, target: target)
    }

    /// A Kubernetes container name (DNS-1123 label).
    static func isContainerName(_ s: Substring) -> Bool {
        let an = { (c: UInt8) in (c >= 97 && c <= 122) || (c >= 48 && c <= 57) }
        guard let f = s.utf8.first, let l = s.utf8.last, s.utf8.count <= 63 else { return false }
        return an(f) && an(l) && s.utf8.allSatisfy { an($0) || $0 == 45 }
    }
}
