import MeshCore
import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// Scrapes the connected sidecars' `/stats/prometheus` for meshd's web page, on a thread of its
/// own (never an event loop or an admin request), only while the page is used: the first
/// `/ui/api` request starts it, a minute without one stops it (and forgets its scrapes, which
/// would be stale by the next start). It keeps the last two scrapes, each reduced to the series
/// the page reads and timestamped per sidecar; the page's figures are their deltas
/// (`MeshTrafficView`).
public final class WebUISampler: @unchecked Sendable {
    /// Seconds between scrapes (the page's window).
    public let interval: Double
    /// Seconds without a page request after which sampling stops.
    public let idle: Double

    private struct State {
        var running = false
        var lastUse: UInt64 = 0
        var previous: MeshScrape?
        var latest: MeshScrape?
        /// Scrapes done since start (for tests and the page's status line).
        var count = 0
        /// The admin addresses to scrape, asked before each scrape (the sidecars connected now).
        var targets: @Sendable () -> [String] = { [] }
    }
    private let state = Locked(State())

    public init(interval: Double = 5, idle: Double = 60) {
        self.interval = interval
        self.idle = idle
    }

    /// Whether the sampling thread runs now.
    public var running: Bool { state.withLock { $0.running } }
    /// Scrapes done since meshd started.
    public var scrapes: Int { state.withLock { $0.count } }

    /// Notes a page request; starts sampling `targets` (the admin addresses to scrape, asked
    /// before each scrape) when it is not running.
    public func touch(targets: @escaping @Sendable () -> [String]) {
        let now = Clock.monotonicNanos()
        let start = state.withLock { s -> Bool in
            s.lastUse = now
            s.targets = targets
            if s.running { return false }
            s.running = true
            return true
        }
        if start {
            if !Threads.trySpawnDetached({ [self] in loop() }) {
                state.withLock { $0.running = false }
                Log.warn("meshd", "web page: no thread for the metrics sampler (a pids limit?); the page shows no traffic")
            }
        }
    }

    /// The last two scrapes (either nil until there are that many).
    public func window() -> (previous: MeshScrape?, latest: MeshScrape?) {
        state.withLock { ($0.previous, $0.latest) }
    }

    private func loop() {
        while true {
            let stop = state.withLock { s -> Bool in
                if Double(Clock.monotonicNanos() &- s.lastUse) / 1e9 > idle {
                    s.running = false
                    s.previous = nil
                    s.latest = nil
                    return true
                }
                return false
            }
            if stop { return }
            let admins = state.withLock { $0.targets }()
            // One sidecar at a time, each timestamped when it answers and reduced at once to the
            // series the page reads (the full text and samples are not kept).
            var sidecars: [MeshScrape.Sidecar] = []
            for a in admins {
                guard let got = PrometheusSamples.scrape([a], timeoutSeconds: max(1, Int(interval))).first else { continue }
                sidecars.append(MeshScrape.Sidecar(admin: a, at: Clock.monotonicNanos(), samples: got.samples))
            }
            let scrape = MeshScrape(at: Clock.monotonicNanos(), scraped: sidecars)
            state.withLock { s in
                s.previous = s.latest
                s.latest = scrape
                s.count += 1
            }
            usleep(UInt32(interval * 1_000_000))
        }
    }
}
