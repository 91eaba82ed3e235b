import MeshConfig
import MeshCore
import MeshIO

/// Where the canary controller reads and writes (ConfigStore in meshd, CanaryStore.swift; a fake
/// in tests): the Canaries and documents in force, the VirtualService it drives, the sidecars'
/// figures, its own recorded statuses, and the clock.
public protocol CanaryEnvironment: AnyObject {
    func monotonicNanos() -> UInt64
    func wallSeconds() -> Int64
    /// The Canaries in force, each with the digest of its document text.
    func canaries() -> [(canary: Canary, hash: String)]
    /// The documents in force, parsed.
    func config() -> IstioTraffic.Config?
    func virtualServiceText(namespace: String, name: String) -> String?
    /// Applies a VirtualService document through the store (the normal push); returns the text
    /// stored for it.
    func writeVirtualService(namespace: String, name: String, text: String, by canary: String) throws(ConfigError) -> String
    /// One scrape of the sidecars, reduced to the host's series for the two versions.
    func sample(service: String, namespace: String, versions: Set<String>) -> CanarySample
    func loadStatuses() -> [CanaryStatus]
    func saveStatuses(_ statuses: [CanaryStatus])
}

/// meshd's canary controller (DESIGN §13, docs/canary.md): every `analysis.interval` it judges
/// each active Canary's figures and moves its weight one step, promotes it at `maxWeight`, or
/// rolls it back after `threshold` failed checks. It runs on the leader only (`tick` is called
/// while leading; `standby` when not), records its state through the environment so that
/// another leader or a restarted meshd resumes at the same step, and never fights a person: a
/// VirtualService changed by someone else pauses the canary until `resume`.
public final class CanaryController: @unchecked Sendable {
    let env: CanaryEnvironment
    /// One tick, abort or resume at a time.
    private let lock = PlainLock()
    private var statuses: [String: CanaryStatus] = [:]
    private var rings: [String: [CanarySample]] = [:]
    private var nextCheck: [String: UInt64] = [:]
    private var loaded = false { didSet { isLoaded.withLock { [loaded] in $0 = loaded } } }
    private let isLoaded = Locked(false)
    /// The statuses and specs as of the last tick, for status requests and metrics.
    private let published = Locked<[(status: CanaryStatus, canary: Canary?)]>([])

    public init(env: CanaryEnvironment) { self.env = env }

    /// The path of the error a write throws when this meshd no longer leads: nothing changes.
    public static let notLeading = "(not the leader)"

    static func key(_ ns: String, _ name: String) -> String { "\(ns)/\(name)" }

    /// Not leading: forget what is only in memory; the next leader reads the recorded state.
    public func standby() {
        lock.lock()
        defer { lock.unlock() }
        loaded = false
        rings = [:]
        nextCheck = [:]
    }

    /// One round over every Canary in force (call it often, e.g. every 200 ms: a Canary is
    /// checked when its interval is due).
    public func tick() {
        lock.lock()
        defer { lock.unlock() }
        if !loaded {
            statuses = Dictionary(env.loadStatuses().map { (CanaryController.key($0.namespace, $0.name), $0) }, uniquingKeysWith: { a, _ in a })
            loaded = true
        }
        let docs = env.canaries()
        let cfg = env.config()
        var dirty = false
        for k in statuses.keys where !docs.contains(where: { CanaryController.key($0.canary.namespace, $0.canary.name) == k }) {
            statuses.removeValue(forKey: k)
            rings.removeValue(forKey: k)
            nextCheck.removeValue(forKey: k)
            Log.info("canary", "\(k): the Canary was deleted; the VirtualService keeps the weights it has")
            dirty = true
        }
        for (c, hash) in docs {
            let k = CanaryController.key(c.namespace, c.name)
            let before = statuses[k] ?? CanaryStatus(namespace: c.namespace, name: c.name)
            var s = before
            step(c, hash: hash, cfg: cfg, &s)
            if s != before {
                statuses[k] = s
                dirty = true
                for e in s.events where !before.events.contains(e) {
                    Log.info("canary", "\(k): \(e.split(separator: " ", maxSplits: 1).dropFirst().first.map(String.init) ?? e)")
                }
            }
        }
        if dirty { env.saveStatuses(statuses.keys.sorted().map { statuses[$0]! }) }
        publish(docs.map(\.canary))
    }

    private func publish(_ canaries: [Canary]) {
        let list = statuses.keys.sorted().map { k in (status: statuses[k]!, canary: canaries.first { CanaryController.key($0.namespace, $0.name) == k }) }
        published.withLock { $0 = list }
    }

    private func step(_ c: Canary, hash: String, cfg: IstioTraffic.Config?, _ s: inout CanaryStatus) {
        let k = CanaryController.key(c.namespace, c.name)
        let now = env.monotonicNanos(), wall = env.wallSeconds()
        let t: CanaryTarget
        do {
            guard let cfg else { return }
            t = try c.target(in: cfg, file: "(in force)")
        } catch {
            // Its DestinationRule or VirtualService went away or changed shape since it was applied.
            if s.phase.active || s.specHash != hash {
                s.specHash = hash
                s.move(to: .failed, now: wall)
                s.message = "cannot run: \(error.message) (\(error.path))"
                s.event(s.message, now: wall)
            }
            return
        }
        if s.specHash != hash {
            let w = CanaryMachine.start(c, &s, specHash: hash, now: wall, why: s.specHash.isEmpty ? "started" : "the Canary changed: analysis restarted")
            write(c, t, w, &s)
            baseline(c, t, k, now)
            return
        }
        guard s.phase.active else { return }
        if !s.written.isEmpty, let cur = env.virtualServiceText(namespace: c.namespace, name: t.virtualService), cur != s.written {
            s.move(to: .paused, now: wall)
            s.message = "paused: VirtualService \(c.namespace)/\(t.virtualService) was changed by someone else (its route http[\(t.routeIndex)] now gives canary \(c.canary) \(t.weight)%, the controller wrote \(s.weight)%); run `meshctl canary resume \(c.name)` to continue from \(s.weight)%, or re-apply the Canary to restart"
            s.event(s.message, now: wall)
            rings.removeValue(forKey: k)
            nextCheck.removeValue(forKey: k)
            return
        }
        guard let due = nextCheck[k] else {
            // Resumed (a restart, a new leader): a first sample, checks from the next interval.
            baseline(c, t, k, now)
            return
        }
        guard now >= due else { return }
        nextCheck[k] = now + c.analysis.interval
        var ring = rings[k] ?? []
        ring.append(env.sample(service: t.serviceName, namespace: t.serviceNamespace, versions: [t.stableVersion, t.canaryVersion]))
        let keep = (c.analysis.metrics.map(\.interval).max() ?? 0) + 2 * c.analysis.interval
        if let last = ring.last { ring.removeAll { $0.time + keep < last.time } }
        rings[k] = ring
        let label = c.analysis.iterations != nil ? "check \(s.iterations + 1) of \(c.analysis.iterations!) at \(s.weight)%" : "step \(s.step + 1) (\(s.weight)%)"
        let v = CanaryMachine.judge(c, stableVersion: t.stableVersion, canaryVersion: t.canaryVersion, step: label) { version, window in
            CanaryAnalysis.figures(ring, version: version, window: window)
        }
        if let w = CanaryMachine.apply(v, c, &s, now: wall) { write(c, t, w, &s) }
    }

    private func baseline(_ c: Canary, _ t: CanaryTarget, _ k: String, _ now: UInt64) {
        rings[k] = [env.sample(service: t.serviceName, namespace: t.serviceNamespace, versions: [t.stableVersion, t.canaryVersion])]
        nextCheck[k] = now + c.analysis.interval
    }

    /// Writes weight `w` on the target's route; a write that fails fails the canary by name.
    private func write(_ c: Canary, _ t: CanaryTarget, _ w: Int, _ s: inout CanaryStatus) {
        let wall = env.wallSeconds()
        do throws(ConfigError) {
            guard let cur = env.virtualServiceText(namespace: c.namespace, name: t.virtualService) else {
                throw ConfigError(path: "VirtualService \(c.namespace)/\(t.virtualService)", message: "not in force")
            }
            let text = try CanaryRoute.rewrite(cur, target: t, weight: w)
            s.written = try env.writeVirtualService(namespace: c.namespace, name: t.virtualService, text: text, by: "\(c.namespace)/\(c.name)")
            s.weight = w
        } catch {
            if error.path == CanaryController.notLeading { return }
            s.move(to: .failed, now: wall)
            s.message = "cannot set canary \(c.canary) to \(w)%: \(error.description)"
            s.event(s.message, now: wall)
        }
    }

    /// `meshctl canary abort NAME`: 100% stable at once, phase `Aborted`.
    public func abort(namespace: String, name: String) -> (ok: Bool, message: String) {
        act(namespace, name) { c, t, s, wall in
            guard s.phase != .aborted else { return "already aborted" }
            write(c, t, 0, &s)
            if s.phase == .failed && s.weight != 0 { return s.message }
            s.weight = 0
            s.move(to: .aborted, now: wall)
            s.message = "aborted by meshctl: 100% \(c.stable)"
            s.event(s.message, now: wall)
            return s.message
        }
    }

    /// `meshctl canary resume NAME`: a paused canary continues from its step (its weight is
    /// written again over the change that paused it).
    public func resume(namespace: String, name: String) -> (ok: Bool, message: String) {
        act(namespace, name) { c, t, s, wall in
            guard s.phase == .paused else { return "not paused (phase \(s.phase.rawValue)); re-apply a changed Canary to restart it" }
            s.move(to: .progressing, now: wall)
            write(c, t, s.weight, &s)
            if s.phase == .failed { return s.message }
            s.message = "resumed by meshctl at \(s.weight)%"
            s.event(s.message, now: wall)
            baseline(c, t, CanaryController.key(namespace, name), env.monotonicNanos())
            return s.message
        }
    }

    private func act(_ ns: String, _ name: String, _ f: (Canary, CanaryTarget, inout CanaryStatus, Int64) -> String) -> (ok: Bool, message: String) {
        tick()
        lock.lock()
        defer { lock.unlock() }
        let k = CanaryController.key(ns, name)
        guard let c = env.canaries().first(where: { $0.canary.namespace == ns && $0.canary.name == name })?.canary, var s = statuses[k] else {
            return (false, "no Canary \(k)")
        }
        guard let cfg = env.config(), let t = try? c.target(in: cfg, file: "(in force)") else {
            return (false, "Canary \(k): \(s.message)")
        }
        let before = s
        let msg = f(c, t, &s, env.wallSeconds())
        if s != before {
            statuses[k] = s
            for e in s.events where !before.events.contains(e) { Log.info("canary", "\(k): \(e.split(separator: " ", maxSplits: 1).dropFirst().first.map(String.init) ?? e)") }
            env.saveStatuses(statuses.keys.sorted().map { statuses[$0]! })
            publish(env.canaries().map(\.canary))
        }
        return (s != before, msg)
    }

    /// The statuses to show: this controller's (leading) or the recorded ones (a standby
    /// replica), each with its Canary's spec when it is in force.
    public func report() -> [(status: CanaryStatus, canary: Canary?)] {
        let leading = isLoaded.withLock { $0 }
        if leading { return published.withLock { $0 } }
        let docs = env.canaries().map(\.canary)
        return env.loadStatuses().sorted { ($0.namespace, $0.name) < ($1.namespace, $1.name) }.map { s in
            (status: s, canary: docs.first { $0.namespace == s.namespace && $0.name == s.name })
        }
    }
}
