import MeshConfig
import MeshCore
import MeshIO

/// Where the canary controller reads and writes (ConfigStore in meshd, CanaryStore.swift; a fake
/// in tests): the Canaries and documents in force, the VirtualService it drives, the sidecars'
/// figures, its own recorded statuses, and the clock.
public protocol CanaryEnvironment: AnyObject {
    func monotonicNanos() -> UInt64
    func wallSeconds() -> Int64
    /// The Canaries in force, each with the digest of its document text (nil: the documents in
    /// force cannot be read now; the controller then changes nothing).
    func canaries() -> [(canary: Canary, hash: String)]?
    /// The documents in force, parsed.
    func config() -> IstioTraffic.Config?
    func virtualServiceText(namespace: String, name: String) -> String?
    /// Reads the VirtualService text in force and applies what `change` makes of it (nil: nothing
    /// to write) through the store (the normal push), in one step: the write commits only while
    /// the text in force is still the one `change` saw (a change meanwhile is read again).
    /// Returns the text stored.
    func updateVirtualService(namespace: String, name: String, by canary: String,
                              _ change: (String?) throws(ConfigError) -> String?) throws(ConfigError) -> String?
    /// One scrape of the sidecars, reduced to the host's series for the two versions.
    func sample(service: String, namespace: String, versions: Set<String>) -> CanarySample
    /// One scrape of the sidecars for several canaries at once (one sample per entry).
    func samples(_ wants: [(service: String, namespace: String, versions: Set<String>)]) -> [CanarySample]
    /// The recorded statuses (nil: they cannot be read now; the controller waits and reads again).
    func loadStatuses() -> [CanaryStatus]?
    func saveStatuses(_ statuses: [CanaryStatus])
}

extension CanaryEnvironment {
    public func samples(_ wants: [(service: String, namespace: String, versions: Set<String>)]) -> [CanarySample] {
        wants.map { sample(service: $0.service, namespace: $0.namespace, versions: $0.versions) }
    }
}

/// meshd's canary controller (DESIGN §13, docs/canary.md): every `analysis.interval` it judges
/// each active Canary's figures and moves its weight one step, promotes it at `maxWeight`, or
/// rolls it back after `threshold` failed checks. It runs on the leader only (`tick` is called
/// while leading; `standby` when not), records its state through the environment so that
/// another leader or a restarted meshd resumes at the same step, and never fights a person: a
/// VirtualService changed by someone else pauses the canary until `resume`.
public final class CanaryController: @unchecked Sendable {
    let env: CanaryEnvironment
    /// One tick's decisions, abort or resume at a time (never held across a scrape).
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
    /// The path of the error a write throws when the route's weights in force are not the
    /// controller's: the canary pauses.
    static let changedBySomeoneElse = "(changed by someone else)"
    /// Samples kept per canary at most (`Canary.maxSamples` bounds the window at apply).
    static let maxRing = Canary.maxSamples + 3

    static func key(_ ns: String, _ name: String) -> String { "\(ns)/\(name)" }

    /// Not leading: forget what is only in memory; the next leader reads the recorded state.
    public func standby() {
        lock.lock()
        loaded = false
        rings = [:]
        nextCheck = [:]
        lock.unlock()
        // What a follower shows (status, metrics) is the recorded state, read here on the
        // controller's thread about once a second, never on a request: a store that is slow or
        // unreachable delays only this copy, not meshd's /metrics or `meshctl canary status`.
        standbyTicks &+= 1
        if standbyTicks % 5 == 1 { showRecorded() }
    }
    /// Calls of `standby` since start (the follower's refresh runs on every fifth).
    private var standbyTicks = 0

    /// Publishes the recorded statuses for `report` (a follower's view; meshd also calls it once
    /// at start, so a restarted meshd shows where its canaries stand before its first tick).
    /// Reads the store: never call it on a request.
    public func showRecorded() {
        guard let list = env.loadStatuses() else { return }
        let docs = (list.isEmpty ? [] : env.canaries() ?? []).map(\.canary)
        let sorted = list.sorted { ($0.namespace, $0.name) < ($1.namespace, $1.name) }
        published.withLock { $0 = sorted.map { s in (status: s, canary: docs.first { $0.namespace == s.namespace && $0.name == s.name }) } }
    }

    /// Reads the recorded statuses once per leadership (lock held); false: they cannot be read
    /// now (nothing restarts from step 0; the next tick reads again).
    private func load() -> Bool {
        if loaded { return true }
        guard let list = env.loadStatuses() else {
            Log.warn("canary", "cannot read the recorded canary statuses; the canaries wait and the next tick reads them again")
            return false
        }
        statuses = Dictionary(list.map { (CanaryController.key($0.namespace, $0.name), $0) }, uniquingKeysWith: { a, _ in a })
        loaded = true
        return true
    }

    /// One round over every Canary in force (call it often, e.g. every 200 ms: a Canary is
    /// checked when its interval is due). The sidecars are scraped once for every canary due,
    /// outside the lock.
    public func tick() {
        lock.lock()
        let fresh = !loaded
        guard load(), let docs = env.canaries() else { lock.unlock(); return }
        // A new leader shows the recorded statuses at once, not only after its first scrape.
        if fresh { publish(docs.map(\.canary)) }
        var cfg: IstioTraffic.Config? = nil
        var due: [(key: String, want: (service: String, namespace: String, versions: Set<String>))] = []
        if !docs.isEmpty {
            cfg = env.config()
            let now = env.monotonicNanos()
            for (c, hash) in docs {
                let k = CanaryController.key(c.namespace, c.name)
                // Due: a check, the first sample of a run (re)started now or resumed.
                let s = statuses[k]
                let starts = s == nil || s!.specHash != hash
                guard starts || (s!.phase.active && nextCheck[k].map({ now >= $0 }) ?? true),
                      let cfg, let t = try? c.target(in: cfg, file: "(in force)") else { continue }
                due.append((k, (t.serviceName, t.serviceNamespace, [t.stableVersion, t.canaryVersion])))
            }
        }
        lock.unlock()
        let taken = due.isEmpty ? [] : env.samples(due.map(\.want))
        var samples: [String: CanarySample] = [:]
        for (d, smp) in zip(due, taken) { samples[d.key] = smp }

        lock.lock()
        defer { lock.unlock() }
        guard loaded else { return }   // standby meanwhile
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
            step(c, hash: hash, cfg: cfg, sample: samples[k], &s)
            if s != before {
                statuses[k] = s
                dirty = true
                logEvents(k, before, s)
            }
        }
        if dirty { env.saveStatuses(statuses.keys.sorted().map { statuses[$0]! }) }
        publish(docs.map(\.canary))
    }

    private func logEvents(_ k: String, _ before: CanaryStatus, _ s: CanaryStatus) {
        for e in s.events where !before.events.contains(e) {
            Log.info("canary", "\(k): \(e.split(separator: " ", maxSplits: 1).dropFirst().first.map(String.init) ?? e)")
        }
    }

    private func publish(_ canaries: [Canary]) {
        let list = statuses.keys.sorted().map { k in (status: statuses[k]!, canary: canaries.first { CanaryController.key($0.namespace, $0.name) == k }) }
        published.withLock { $0 = list }
    }

    /// The canary weights the route may have without anyone else having changed it: the one
    /// recorded, the next the controller was about to write (a crash or a new leader between
    /// its write and the record), and 0 when the next failed check rolls back.
    static func expected(_ c: Canary, _ s: CanaryStatus) -> [Int] {
        var w = [s.weight, s.step + 1 < c.analysis.steps.count ? c.analysis.steps[s.step + 1] : 100]
        if s.failedChecks + 1 >= c.analysis.threshold { w.append(0) }
        return w
    }

    /// Why the route's weights in `text` are not the controller's (nil: they are).
    static func changed(_ c: Canary, route: Int, expected: [Int], text: String) -> String? {
        let ws = CanaryRoute.weights(text, route: route, stable: c.stable, canary: c.canary, namespace: c.namespace)
        if let ws, expected.contains(ws.canary) && ws.stable == 100 - ws.canary { return nil }
        guard let ws else { return "its route http[\(route)] no longer splits \(c.stable) and \(c.canary)" }
        return "its route http[\(route)] now gives canary \(c.canary) \(ws.canary)% and stable \(c.stable) \(ws.stable)%"
    }

    private func pause(_ c: Canary, vs: String, _ why: String, _ s: inout CanaryStatus) {
        let wall = env.wallSeconds(), k = CanaryController.key(c.namespace, c.name)
        s.move(to: .paused, now: wall)
        s.message = "paused: VirtualService \(c.namespace)/\(vs) was changed by someone else (\(why), the controller wrote \(s.weight)%); run `meshctl canary resume \(c.name)` to continue from \(s.weight)%, or apply a changed Canary to restart"
        s.event(s.message, now: wall)
        rings.removeValue(forKey: k)
        nextCheck.removeValue(forKey: k)
    }

    private func step(_ c: Canary, hash: String, cfg: IstioTraffic.Config?, sample: CanarySample?, _ s: inout CanaryStatus) {
        let k = CanaryController.key(c.namespace, c.name)
        let now = env.monotonicNanos(), wall = env.wallSeconds()
        // The weights it wrote first, on the VirtualService the status names: a person's change
        // pauses the canary even when the route no longer resolves as a target.
        if s.specHash == hash, s.phase.active, !s.virtualService.isEmpty, s.route >= 0,
           let cur = env.virtualServiceText(namespace: c.namespace, name: s.virtualService),
           let why = CanaryController.changed(c, route: s.route, expected: CanaryController.expected(c, s), text: cur) {
            pause(c, vs: s.virtualService, why, &s)
            return
        }
        guard let cfg else { return }
        let t: CanaryTarget
        do {
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
            write(c, t, w, &s, expected: nil, cfg: cfg)
            rings.removeValue(forKey: k)
            nextCheck.removeValue(forKey: k)
            if let sample, s.phase.active {
                rings[k] = [sample]
                nextCheck[k] = now + c.analysis.interval
            }
            return
        }
        guard s.phase.active, let sample else { return }
        guard let due = nextCheck[k] else {
            // Started or resumed (a restart, a new leader): a first sample, checks from the next interval.
            rings[k] = [sample]
            nextCheck[k] = now + c.analysis.interval
            return
        }
        guard now >= due else { return }
        nextCheck[k] = now + c.analysis.interval
        var ring = rings[k] ?? []
        ring.append(sample)
        let keep = (c.analysis.metrics.map(\.interval).max() ?? 0) + 2 * c.analysis.interval
        if let last = ring.last { ring.removeAll { $0.time + keep < last.time } }
        if ring.count > CanaryController.maxRing { ring.removeFirst(ring.count - CanaryController.maxRing) }
        rings[k] = ring
        let label = c.analysis.iterations != nil ? "check \(s.iterations + 1) of \(c.analysis.iterations!) at \(s.weight)%" : "step \(s.step + 1) (\(s.weight)%)"
        var v = CanaryMachine.judge(c, stableVersion: t.stableVersion, canaryVersion: t.canaryVersion, step: label) { version, window in
            CanaryAnalysis.figures(ring, version: version, window: window)
        }
        if sample.sidecars > 0 {
            v.line += "; sidecars scraped \(sample.scraped) of \(sample.sidecars)"
                + (sample.scraped < sample.sidecars ? " (\(sample.sidecars - sample.scraped) could not be reached)" : "")
        }
        let expected = CanaryController.expected(c, s)
        if let w = CanaryMachine.apply(v, c, &s, now: wall) { write(c, t, w, &s, expected: expected, cfg: cfg) }
    }

    /// Writes weight `w` on the Canary's route. The text in force at the write decides: with
    /// `expected`, a route whose weights someone else changed pauses the canary instead; the
    /// route is found again in that same text. A write that fails fails the canary by name.
    private func write(_ c: Canary, _ t: CanaryTarget, _ w: Int, _ s: inout CanaryStatus, expected: [Int]?, cfg: IstioTraffic.Config) {
        let wall = env.wallSeconds()
        let recordedRoute = s.virtualService == t.virtualService && s.route >= 0 ? s.route : t.routeIndex
        var route = t.routeIndex
        do throws(ConfigError) {
            _ = try env.updateVirtualService(namespace: c.namespace, name: t.virtualService, by: "\(c.namespace)/\(c.name)") { (cur: String?) throws(ConfigError) -> String? in
                guard let cur else { throw ConfigError(path: "VirtualService \(c.namespace)/\(t.virtualService)", message: "not in force") }
                if let expected, let why = CanaryController.changed(c, route: recordedRoute, expected: expected, text: cur) {
                    throw ConfigError(path: CanaryController.changedBySomeoneElse, message: why)
                }
                // The route as that text has it (a person may have moved it since `cfg`).
                var now = cfg
                if let vs = (try? IstioTraffic.parse(documents: YAML.parseDocuments(cur), file: "(in force)", defaultNamespace: c.namespace,
                                                      skipKinds: [], checkSubsets: false))?.virtualServices.first,
                   let i = now.virtualServices.firstIndex(where: { $0.namespace == vs.namespace && $0.name == vs.name }) {
                    now.virtualServices[i] = vs
                }
                let target = try c.target(in: now, file: "(in force)")
                route = target.routeIndex
                return try CanaryRoute.rewrite(cur, target: target, weight: w)
            }
            s.virtualService = t.virtualService
            s.route = route
            s.weight = w
        } catch {
            if error.path == CanaryController.notLeading { return }
            if error.path == CanaryController.changedBySomeoneElse {
                // Nothing of this step is kept: the weights in force are the person's.
                let before = statuses[CanaryController.key(c.namespace, c.name)] ?? s
                if before.specHash == s.specHash { s = before }
                pause(c, vs: t.virtualService, error.message, &s)
                return
            }
            s.move(to: .failed, now: wall)
            s.message = "cannot set canary \(c.canary) to \(w)%: \(error.description)"
            s.event(s.message, now: wall)
        }
    }

    /// `meshctl canary abort NAME`: 100% stable at once, phase `Aborted`. Only an active or
    /// paused canary: a finished one (promoted, failed, aborted) keeps its weights.
    public func abort(namespace: String, name: String) -> (ok: Bool, message: String) {
        act(namespace, name) { c, t, s, wall, cfg in
            guard s.phase.active || s.phase == .paused else {
                return "not running (phase \(s.phase.rawValue)): abort stops an active or paused canary; apply the VirtualService to change its weights"
            }
            write(c, t, 0, &s, expected: nil, cfg: cfg)
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
        act(namespace, name) { c, t, s, wall, cfg in
            guard s.phase == .paused else { return "not paused (phase \(s.phase.rawValue)); apply a changed Canary to restart it" }
            s.move(to: .progressing, now: wall)
            write(c, t, s.weight, &s, expected: nil, cfg: cfg)
            if s.phase == .failed { return s.message }
            s.message = "resumed by meshctl at \(s.weight)%"
            s.event(s.message, now: wall)
            // A first sample at the next tick, checks from the interval after.
            rings.removeValue(forKey: CanaryController.key(namespace, name))
            nextCheck.removeValue(forKey: CanaryController.key(namespace, name))
            return s.message
        }
    }

    private func act(_ ns: String, _ name: String, _ f: (Canary, CanaryTarget, inout CanaryStatus, Int64, IstioTraffic.Config) -> String) -> (ok: Bool, message: String) {
        lock.lock()
        defer { lock.unlock() }
        let k = CanaryController.key(ns, name)
        guard load() else { return (false, "Canary \(k): the recorded canary statuses cannot be read now; try again") }
        guard let docs = env.canaries() else { return (false, "Canary \(k): the documents in force cannot be read now; try again") }
        guard let c = docs.first(where: { $0.canary.namespace == ns && $0.canary.name == name })?.canary, var s = statuses[k] else {
            return (false, "no Canary \(k)")
        }
        guard let cfg = env.config(), let t = try? c.target(in: cfg, file: "(in force)") else {
            return (false, "Canary \(k): \(s.message)")
        }
        let before = s
        let msg = f(c, t, &s, env.wallSeconds(), cfg)
        if s != before {
            statuses[k] = s
            logEvents(k, before, s)
            env.saveStatuses(statuses.keys.sorted().map { statuses[$0]! })
            publish(docs.map(\.canary))
        }
        return (s != before, msg)
    }

    /// The statuses to show, each with its Canary's spec when it is in force: this
    /// controller's as of its last tick (leading) or the recorded ones as of the last refresh
    /// in `standby` (a follower). Never reads the store: metrics and status never wait on it.
    public func report() -> [(status: CanaryStatus, canary: Canary?)] {
        published.withLock { $0 }
    }
}
