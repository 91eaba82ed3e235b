/// The machine-readable summary: `key=value` lines in the order they were put (push.sh reads
/// them), numbers with fixed decimals (no Foundation formatting here).
struct Summary {
    private(set) var text = ""

    mutating func put(_ key: String, _ value: Int) { text += "\(key)=\(value)\n" }
    mutating func put(_ key: String, _ value: String) { text += "\(key)=\(value)\n" }
    mutating func put(_ key: String, _ value: Double, _ decimals: Int) { text += "\(key)=\(Summary.fixed(value, decimals))\n" }

    /// CPU (percent of one core over `cpu`'s window, and seconds), RSS summed and threads summed
    /// over the sampled processes, as `PREFIX_cpu_percent`, `PREFIX_rss_mb`, `PREFIX_threads`.
    mutating func putProcs(_ prefix: String, _ samples: [ProcSample], cpu: CPUWindow, watched: Int) {
        if watched == 0 { return }
        put("\(prefix)_processes", samples.count)
        put("\(prefix)_cpu_percent", cpu.percent, 1)
        put("\(prefix)_cpu_seconds", cpu.cpuSeconds, 2)
        put("\(prefix)_window_seconds", cpu.wallSeconds, 2)
        put("\(prefix)_rss_mb", samples.reduce(0) { $0 + $1.rssMB }, 1)
        put("\(prefix)_threads", samples.reduce(0) { $0 + $1.threads })
    }

    /// `x` with `decimals` digits after the point (rounded half away from zero).
    static func fixed(_ x: Double, _ decimals: Int) -> String {
        if !x.isFinite { return "nan" }
        var scale = 1.0
        for _ in 0..<decimals { scale *= 10 }
        let neg = x < 0
        let n = Int64((abs(x) * scale).rounded())
        var s = String(n / Int64(scale))
        if decimals > 0 {
            var frac = String(n % Int64(scale))
            while frac.count < decimals { frac = "0" + frac }
            s += "." + frac
        }
        return neg && n != 0 ? "-" + s : s
    }

    /// Nearest-rank percentile of sorted values (0 when empty): the smallest value with at least
    /// `p` of the values at or below it.
    static func percentile(_ sorted: [Double], _ p: Double) -> Double {
        if sorted.isEmpty { return 0 }
        var rank = Int((p * Double(sorted.count)).rounded(.up))
        rank = min(max(rank, 1), sorted.count)
        return sorted[rank - 1]
    }
}
