import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// A process's CPU time, memory and threads from /proc (no Foundation): for meshd (by pid) and for
/// this tool itself (`self`), so the summary shows who used the machine.
struct ProcSample {
    /// utime + stime, in seconds.
    var cpuSeconds: Double
    var rssMB: Double
    var hwmMB: Double
    var threads: Int
    /// Monotonic time of the sample.
    var at: UInt64

    /// Reads `/proc/PID/stat` and `/proc/PID/status`; nil when the process is gone.
    static func read(_ pid: String) -> ProcSample? {
        guard let stat = readFile("/proc/\(pid)/stat"), let status = readFile("/proc/\(pid)/status") else { return nil }
        // Fields after the command name (which may hold spaces), from the last ')'.
        guard let close = stat.lastIndex(of: ")") else { return nil }
        let f = stat[stat.index(after: close)...].split(separator: " ")
        // f[0] is field 3 (state); utime and stime are fields 14 and 15.
        guard f.count > 13, let ut = Double(f[11]), let st = Double(f[12]) else { return nil }
        let hz = Double(sysconf(Int32(_SC_CLK_TCK)))
        func kb(_ key: String) -> Double {
            for line in status.split(separator: "\n") where line.hasPrefix(key) {
                return Double(line.dropFirst(key.count).split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "0") ?? 0
            }
            return 0
        }
        return ProcSample(cpuSeconds: (ut + st) / hz, rssMB: kb("VmRSS:") / 1024, hwmMB: kb("VmHWM:") / 1024,
                          threads: Int(kb("Threads:")), at: Clock.monotonicNanos())
    }

    static func readFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { return nil }
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, 4096) }
            if n <= 0 { break }
            out.append(contentsOf: buf[0..<n])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// CPU used by a set of processes over a window: the sum of their CPU seconds between two
/// samples, as a percentage of one core.
struct CPUWindow {
    var cpuSeconds = 0.0
    var wallSeconds = 0.0
    var percent: Double { wallSeconds > 0 ? cpuSeconds / wallSeconds * 100 : 0 }

    mutating func add(from a: [ProcSample], to b: [ProcSample]) {
        for (x, y) in zip(a, b) { cpuSeconds += y.cpuSeconds - x.cpuSeconds }
        if let x = a.first, let y = b.first { wallSeconds += Double(y.at - x.at) / 1e9 }
    }
}
