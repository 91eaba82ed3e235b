#if canImport(Glibc)
import Glibc
#endif

/// What the capture needs to know about this process and its network namespace, read from /proc
/// and the kernel: the NET_ADMIN capability, the namespace's identity, IPv6, lo's addresses.
public enum SystemProbe {
    static let capNetAdmin = 12
    /// SO_NETNS_COOKIE (Linux 5.14): a namespace's 64-bit id, never reused while the system runs.
    static let soNetnsCookie: Int32 = 71

    /// A small file's text (/proc files report size 0, so read to the end).
    public static func readFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, 16384) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            out.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Whether the effective capability set holds CAP_NET_ADMIN (`CapEff` in /proc/self/status).
    public static func hasNetAdmin() -> Bool {
        guard let status = readFile("/proc/self/status") else { return false }
        for line in status.split(separator: "\n") where line.hasPrefix("CapEff:") {
            let hex = line.dropFirst(7).filter { $0 != " " && $0 != "\t" }
            guard let v = UInt64(hex, radix: 16) else { return false }
            return v & (1 << UInt64(capNetAdmin)) != 0
        }
        return false
    }

    /// The inode of /proc/self/ns/net: names this namespace while it exists.
    public static func netnsInode() -> UInt64 {
        var st = stat()
        return stat("/proc/self/ns/net", &st) == 0 ? UInt64(st.st_ino) : 0
    }

    /// The namespace's cookie (0 when the kernel has none): tells a state file left by a deleted
    /// namespace from one of a new namespace that got the same inode.
    public static func netnsCookie() -> UInt64 {
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return 0 }
        defer { close(fd) }
        var cookie: UInt64 = 0
        var len = socklen_t(MemoryLayout<UInt64>.size)
        return getsockopt(fd, SOL_SOCKET, soNetnsCookie, &cookie, &len) == 0 ? cookie : 0
    }

    /// Whether IPv6 is on in this namespace (the kernel lists IPv6 interface addresses).
    public static func ipv6Enabled() -> Bool { access("/proc/net/if_inet6", F_OK) == 0 }

    /// Whether the legacy (x_tables) backend has a nat table in this namespace. Read from /proc,
    /// because running iptables-legacy-save would create the table it asks about.
    public static func legacyNatLoaded(_ family: IPFamily) -> Bool {
        let text = readFile(family == .ipv4 ? "/proc/net/ip_tables_names" : "/proc/net/ip6_tables_names") ?? ""
        return text.split(separator: "\n").contains("nat")
    }

    /// Whether `lo` holds ::6/128 (from /proc/net/if_inet6: address, index, prefix, scope, flags, name).
    public static func loopbackHasPassthrough6() -> Bool {
        let text = readFile("/proc/net/if_inet6") ?? ""
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            if f.count >= 6, f[0] == "00000000000000000000000000000006", f[5] == "lo", f[2] == "80" { return true }
        }
        return false
    }
}
