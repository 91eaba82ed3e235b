// What `meshctl run --capture` needs from the process it runs in, and whom the app runs as.
import MeshCapture
#if canImport(Glibc)
import Glibc
#endif

/// The privileges `run --capture` checks before starting anything, and the invoking user the
/// app is started as (`SUDO_UID`/`SUDO_GID` under sudo, else meshctl's own uid).
enum CaptureRunPrivileges {
    /// Capabilities needed: NET_ADMIN for the rules, SETUID/SETGID to start the sidecar as the
    /// proxy ids, CHOWN to hand it its files.
    static let needed: [(bit: UInt64, name: String)] = [(12, "NET_ADMIN"), (7, "SETUID"), (6, "SETGID"), (0, "CHOWN")]

    /// The capabilities missing from the effective set (`CapEff` in /proc/self/status), named,
    /// or nil when none is.
    static func missing() -> String? {
        guard let status = SystemProbe.readFile("/proc/self/status") else { return "cannot read /proc/self/status" }
        var eff: UInt64 = 0
        for line in status.split(separator: "\n") where line.hasPrefix("CapEff:") {
            eff = UInt64(line.dropFirst(7).filter { $0 != " " && $0 != "\t" }, radix: 16) ?? 0
        }
        let absent = needed.filter { eff & (1 << $0.bit) == 0 }.map { "CAP_" + $0.name }
        return absent.isEmpty ? nil : "the capabilities \(absent.joined(separator: ", ")) are missing"
    }

    /// The user sudo was invoked by (when meshctl runs as root with `SUDO_UID` set), with that
    /// user's login groups; nil: meshctl's own uid and gid (the app inherits them).
    static func invokingUser() throws(CaptureError) -> Credentials? {
        guard geteuid() == 0, let s = getenv("SUDO_UID").map({ String(cString: $0) }) else { return nil }
        guard let uid = UInt32(s), uid != UInt32.max else { throw CaptureError("SUDO_UID: expected a numeric uid, got \"\(s)\"", exitCode: 2) }
        var gid: gid_t
        if let g = getenv("SUDO_GID").map({ String(cString: $0) }) {
            guard let v = UInt32(g), v != UInt32.max else { throw CaptureError("SUDO_GID: expected a numeric gid, got \"\(g)\"", exitCode: 2) }
            gid = v
        } else if let pw = getpwuid(uid) {
            gid = pw.pointee.pw_gid
        } else {
            throw CaptureError("SUDO_UID \(uid) has no passwd entry and SUDO_GID is not set: give SUDO_GID", exitCode: 2)
        }
        return Credentials.withLoginGroups(uid: uid, gid: gid)
    }
}
