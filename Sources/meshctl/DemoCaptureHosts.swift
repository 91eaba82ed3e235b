// The hosts of `meshctl demo --capture`: network namespaces on a bridge, made and removed here.
import MeshCapture
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// setns(2), which Glibc's module map leaves out (it needs _GNU_SOURCE).
@_silgen_name("setns") private func sys_setns(_ fd: Int32, _ nstype: Int32) -> Int32
private let cloneNewNet: Int32 = 0x4000_0000

/// A failed step while building the demo's hosts: the command and what it said.
struct DemoHostsError: Error {
    let message: String
}

/// The capture demo's hosts: one network namespace per host (`mdemo-<pid>-<host>`), each with an
/// `eth0` joined by a veth pair to the bridge `br0` in the namespace `mdemo-<pid>-br`, an address
/// 10.78.0.N/24 and a default route through `eth0` (so the mesh's VIPs, 240.240.0.0/16, are
/// routable and a connection to one reaches the OUTPUT chain that capture redirects). The root
/// namespace is never changed. The pid in the names lets a later run tell the namespaces of a run
/// that was killed (its pid gone) and remove them (`reapStale`).
final class DemoHosts {
    static let prefix = "mdemo-"
    static let subnet = "10.78.0"
    let base: String
    let hosts: [String]
    let ipPath: String
    /// The namespaces made so far, in order (the bridge's first).
    private(set) var created: [String] = []
    /// This thread's own namespace, to come back to after `inside`.
    private let home: Int32

    /// Names the hosts (nothing is made until `build`). `ipPath`: iproute2's `ip`.
    init(hosts: [String], ipPath: String) {
        base = "\(DemoHosts.prefix)\(getpid())"
        self.hosts = hosts
        self.ipPath = ipPath
        home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
    }

    var bridge: String { "\(base)-br" }
    func ns(_ host: String) -> String { "\(base)-\(host)" }
    /// Host `host`'s IPv4 address on the bridge: 10.78.0.1 for the first.
    func address(_ host: String) -> String { "\(DemoHosts.subnet).\((hosts.firstIndex(of: host) ?? 0) + 1)" }

    private func ip(_ args: [String]) throws(DemoHostsError) {
        let r: ProcessRunner.Result
        do { r = try ProcessRunner.run(ipPath, args) } catch { throw DemoHostsError(message: "ip \(args.joined(separator: " ")): \(error.description)") }
        if r.status != 0 { throw DemoHostsError(message: "ip \(args.joined(separator: " ")): \(r.firstErrorLine)") }
    }

    private func addNamespace(_ name: String) throws(DemoHostsError) {
        try ip(["netns", "add", name])
        created.append(name)
        try ip(["-n", name, "link", "set", "lo", "up"])
    }

    /// Makes the bridge and every host. On a failure what was made stays listed in `created`
    /// (`destroy` removes it).
    func build() throws(DemoHostsError) {
        guard home >= 0 else { throw DemoHostsError(message: "cannot open /proc/thread-self/ns/net: \(String(cString: strerror(errno)))") }
        try addNamespace(bridge)
        try ip(["-n", bridge, "link", "add", "br0", "type", "bridge"])
        try ip(["-n", bridge, "link", "set", "br0", "up"])
        for (i, h) in hosts.enumerated() {
            let n = ns(h)
            try addNamespace(n)
            // Both ends are made in the bridge's namespace; one moves to the host as eth0.
            try ip(["-n", bridge, "link", "add", "v\(i)", "type", "veth", "peer", "name", "eth0", "netns", n])
            try ip(["-n", bridge, "link", "set", "v\(i)", "master", "br0"])
            try ip(["-n", bridge, "link", "set", "v\(i)", "up"])
            try ip(["-n", n, "addr", "add", "\(address(h))/24", "dev", "eth0"])
            try ip(["-n", n, "link", "set", "eth0", "up"])
            try ip(["-n", n, "route", "add", "default", "dev", "eth0"])
        }
    }

    /// Runs `body` on this thread inside host namespace `name` (setns; the network namespace is
    /// per thread), then comes back. Sockets made inside stay there. nil if it cannot enter.
    func inside<T>(_ name: String, _ body: () -> T) -> T? {
        let fd = open("/run/netns/\(name)", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        guard sys_setns(fd, cloneNewNet) == 0 else { return nil }
        let result = body()
        if sys_setns(home, cloneNewNet) != 0 {
            // Going on would start processes in the wrong namespace.
            fail("cannot return to meshctl's own network namespace: \(String(cString: strerror(errno)))", code: 1)
        }
        return result
    }

    /// Removes every namespace made (what `build` made, also after a failure halfway): processes
    /// still in one are killed first, and the capture rules there taken back with `capture remove`
    /// when a workload could not (`meshctl` given), which also deletes their state file.
    func destroy(meshctl: String?) {
        for name in created.reversed() {
            DemoHosts.removeNamespace(name, ipPath: ipPath, meshctl: meshctl)
        }
        created = []
    }

    /// Kills what runs in `name`, takes its capture rules back, and deletes it.
    static func removeNamespace(_ name: String, ipPath: String, meshctl: String?) {
        let pids = pidsIn(name)
        for p in pids { kill(p, SIGKILL) }
        // Reaped by init (or by us, for our own children): wait until they are gone.
        let deadline = Clock.monotonicNanos() + 5_000_000_000
        while Clock.monotonicNanos() < deadline && !pidsIn(name).isEmpty { usleep(20_000) }
        if let m = meshctl, !name.hasSuffix("-br"), access("/run/mesh-capture", F_OK) == 0 {
            _ = try? ProcessRunner.run(ipPath, ["netns", "exec", name, m, "capture", "remove"])
        }
        _ = try? ProcessRunner.run(ipPath, ["netns", "del", name])
    }

    /// The processes whose network namespace is `name` (as `ip netns pids` finds them: the same
    /// nsfs inode as /run/netns/NAME). Zombies of our own children count until reaped.
    static func pidsIn(_ name: String) -> [pid_t] {
        var target = stat()
        guard stat("/run/netns/\(name)", &target) == 0 else { return [] }
        var out: [pid_t] = []
        guard let d = opendir("/proc") else { return [] }
        defer { closedir(d) }
        while let e = readdir(d) {
            let n = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard let pid = pid_t(n) else { continue }
            var st = stat()
            if stat("/proc/\(n)/ns/net", &st) == 0 && st.st_ino == target.st_ino && st.st_dev == target.st_dev { out.append(pid) }
        }
        return out
    }

    /// The pid in a name `mdemo-<pid>-...` (namespace) or `meshctl-demo-capture-<pid>-...` (temp
    /// directory) after `prefix`, or nil.
    static func ownerPid(_ name: String, prefix: String) -> pid_t? {
        guard name.hasPrefix(prefix) else { return nil }
        let digits = name.dropFirst(prefix.count).prefix { $0.isASCII && $0.isNumber }
        guard !digits.isEmpty, name.dropFirst(prefix.count + digits.count).hasPrefix("-") else { return nil }
        return pid_t(digits)
    }

    /// Whether pid `p` is gone (its namespaces and files are then left over from a killed run).
    static func isGone(_ p: pid_t) -> Bool { p != getpid() && access("/proc/\(p)", F_OK) != 0 }

    /// Removes the namespaces of earlier demos whose meshctl no longer runs (killed outright),
    /// with their processes and capture rules; returns the names removed.
    static func reapStale(ipPath: String, meshctl: String) -> [String] {
        guard let d = opendir("/run/netns") else { return [] }
        var names: [String] = []
        while let e = readdir(d) {
            let n = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if let p = ownerPid(n, prefix: prefix), isGone(p) { names.append(n) }
        }
        closedir(d)
        // Workloads first, the bridge last (as `destroy` does).
        names.sort { ($0.hasSuffix("-br") ? 1 : 0, $0) < ($1.hasSuffix("-br") ? 1 : 0, $1) }
        for n in names { removeNamespace(n, ipPath: ipPath, meshctl: meshctl) }
        return names
    }
}
