#if canImport(Glibc)
import Glibc
#endif

/// What `apply` changed besides its chains and jumps, so `remove` undoes exactly that: the nft
/// nat tables it created and the ::6/128 it added to lo. Kept in /run/mesh-capture/<netns inode>
/// with the namespace's cookie: a file left by a deleted namespace whose inode was reused is
/// recognised as foreign and ignored.
public struct CaptureState: Equatable, Sendable {
    public static let directory = "/run/mesh-capture"

    public var cookie: UInt64
    public var backend: CaptureBackend
    /// Families whose nft nat table did not exist before apply.
    public var createdTables: [IPFamily] = []
    /// Whether apply added ::6/128 to lo.
    public var addedPassthrough6 = false

    public init(cookie: UInt64, backend: CaptureBackend) {
        self.cookie = cookie
        self.backend = backend
    }

    public static var path: String { "\(directory)/\(SystemProbe.netnsInode())" }

    /// The file's text: one `key value` per line.
    public var text: String {
        var lines = ["# meshctl capture state for this network namespace; read by meshctl capture remove",
                     "netns-cookie \(cookie)", "backend \(backend.rawValue)"]
        for f in createdTables { lines.append("created-nat-table \(f == .ipv4 ? "ip" : "ip6")") }
        if addedPassthrough6 { lines.append("added-lo-address ::6/128") }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Parses the file's text; nil when it is not one of ours.
    public init?(text: String) {
        var cookie: UInt64?, backend: CaptureBackend?
        var created: [IPFamily] = [], added = false
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let f = line.split(separator: " ")
            guard f.count == 2 else { return nil }
            switch (f[0], f[1]) {
            case ("netns-cookie", let v): cookie = UInt64(v)
            case ("backend", let v): backend = CaptureBackend(rawValue: String(v))
            case ("created-nat-table", "ip"): created.append(.ipv4)
            case ("created-nat-table", "ip6"): created.append(.ipv6)
            case ("added-lo-address", "::6/128"): added = true
            default: return nil
            }
        }
        guard let c = cookie, let b = backend else { return nil }
        self.init(cookie: c, backend: b)
        createdTables = created
        addedPassthrough6 = added
    }

    /// This namespace's state, or nil (none, unreadable, or left by another namespace).
    public static func load() -> CaptureState? {
        guard let text = SystemProbe.readFile(path), let s = CaptureState(text: text) else { return nil }
        return s.cookie == SystemProbe.netnsCookie() ? s : nil
    }

    /// Writes the file atomically (a temporary file renamed over it).
    public func save() throws(CaptureError) {
        mkdir(CaptureState.directory, 0o700)
        let tmp = CaptureState.path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CaptureError("cannot write \(tmp): \(String(cString: strerror(errno)))") }
        let bytes = Array(text.utf8)
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, bytes.count) }
        close(fd)
        guard n == bytes.count, rename(tmp, CaptureState.path) == 0 else {
            unlink(tmp)
            throw CaptureError("cannot write \(CaptureState.path): \(String(cString: strerror(errno)))")
        }
    }

    public static func delete() { unlink(path) }
}
