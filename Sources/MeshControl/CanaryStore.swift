import MeshConfig
import MeshEtcd
import MeshCA
import MeshPKI
import MeshCore
import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// The canary controller's environment in meshd: the config store's documents, VirtualService
/// writes through `ConfigStore.apply` (the normal push), figures scraped from the sidecars'
/// admin ports, and the statuses recorded in the state directory (`canaries.yaml`) or in etcd
/// (`/mesh/canaries/NAMESPACE/NAME`).
public final class StoreCanaryEnvironment: CanaryEnvironment, @unchecked Sendable {
    let store: ConfigStore
    static let file = "canaries.yaml"
    static let etcdPrefix = "/mesh/canaries/"

    /// Replicas on etcd: whether this meshd leads and its election compare, which every write
    /// of the controller carries (a deposed leader writes nothing). nil: the only meshd.
    let leadership: (@Sendable () -> EtcdCompare?)?

    public init(store: ConfigStore, leadership: (@Sendable () -> EtcdCompare?)? = nil) {
        self.store = store
        self.leadership = leadership
    }

    /// The compare the controller's writes carry; throws when this replica does not lead.
    private func fence() throws(ConfigError) -> EtcdCompare? {
        guard let leadership else { return nil }
        guard let f = leadership() else { throw ConfigError(path: CanaryController.notLeading, message: "this meshd no longer leads") }
        return f
    }

    public func monotonicNanos() -> UInt64 { Clock.monotonicNanos() }
    public func wallSeconds() -> Int64 { MeshCrypto.now() }

    /// The documents in force parsed once per config version (the controller asks every 200 ms).
    private let parsed = Locked<(version: Int, cfg: IstioTraffic.Config?)>((-1, nil))

    private func current() -> IstioTraffic.Config? {
        // The version first: a change while parsing leaves a stale version cached, parsed again next time.
        let v = store.version
        if let c = parsed.withLock({ $0.version == v ? $0 : nil }) { return c.cfg }
        let cfg = store.parsedConfig()
        parsed.withLock { $0 = (v, cfg) }
        return cfg
    }

    public func canaries() -> [(canary: Canary, hash: String)]? {
        guard store.hasCanaries() else { return [] }
        guard let cfg = current() else { return nil }
        return cfg.canaries.map { c in
            (c, MeshCrypto.digestHex(store.documentText(kind: Canary.kind, namespace: c.namespace, name: c.name) ?? ""))
        }
    }

    public func config() -> IstioTraffic.Config? { current() }

    public func virtualServiceText(namespace: String, name: String) -> String? {
        store.documentText(kind: "VirtualService", namespace: namespace, name: name)
    }

    public func updateVirtualService(namespace: String, name: String, by canary: String,
                                     _ change: (String?) throws(ConfigError) -> String?) throws(ConfigError) -> String? {
        try store.update(kind: "VirtualService", namespace: namespace, name: name, file: "(canary controller: Canary \(canary))",
                         fence: try fence(), change)
    }

    /// The sidecars whose streams this meshd holds, as `ADMIN\tNODE IDENTITY` lines: one per
    /// sidecar, never collapsed by address (sidecars in two network namespaces may both report
    /// 127.0.0.1:15000; meshd reaches at most one of them, and says so).
    func ownAdmins() -> [String] { StoreCanaryEnvironment.sidecars(store.proxies()) }

    static func sidecars(_ proxies: [ConfigStore.ProxyStatus]) -> [String] {
        Array(Set(proxies.filter { $0.connected && !$0.admin.isEmpty }.map { "\($0.admin)\t\($0.node) \($0.identity)" })).sorted()
    }

    /// Of `sidecars` (`ownAdmins` lines), how many were scraped and how many could not be: an
    /// address that did not answer, or one another sidecar already answered for.
    static func reach(_ sidecars: [String], answered: Set<String>) -> (scraped: Int, unreachable: Int) {
        var seen: Set<String> = [], scraped = 0
        for s in sidecars {
            let admin = String(s.prefix { $0 != "\t" })
            if answered.contains(admin) && seen.insert(admin).inserted { scraped += 1 }
        }
        return (scraped, sidecars.count - scraped)
    }

    static let adminsPrefix = "/mesh/canary-admins/"
    private let lastPublished = Locked<(text: String, at: UInt64)>(("", 0))

    /// Replicas on etcd: says which sidecars this replica holds (`/mesh/canary-admins/REPLICA`,
    /// when it changed or every 10 s), so that the leader scrapes every sidecar, not only its own.
    public func publishAdmins() {
        guard let etcd = store.etcd else { return }
        let text = ownAdmins().joined(separator: "\n"), now = Clock.monotonicNanos()
        let due = lastPublished.withLock { $0.text != text || now - $0.at > 10_000_000_000 }
        guard due else { return }
        do {
            _ = try etcd.client.put(StoreCanaryEnvironment.adminsPrefix + etcd.replica, Array(text.utf8))
            lastPublished.withLock { $0 = (text, now) }
        } catch {
            Log.warn("canary", "cannot publish this replica's sidecars in etcd: \(error)")
        }
    }

    /// Every sidecar to scrape (`ownAdmins` lines): this meshd's, and on etcd those the live replicas published.
    func allAdmins() -> [String] {
        var admins = Set(ownAdmins())
        if let etcd = store.etcd, let live = try? etcd.client.range(prefix: MeshdReplica.presencePrefix),
           let published = try? etcd.client.range(prefix: StoreCanaryEnvironment.adminsPrefix) {
            let replicas = Set(live.kvs.map { String($0.key.dropFirst(MeshdReplica.presencePrefix.count)) })
            for kv in published.kvs where replicas.contains(String(kv.key.dropFirst(StoreCanaryEnvironment.adminsPrefix.count))) {
                for a in kv.valueText.split(separator: "\n") where !a.isEmpty { admins.insert(String(a)) }
            }
        }
        return admins.sorted()
    }

    public func sample(service: String, namespace: String, versions: Set<String>) -> CanarySample {
        samples([(service, namespace, versions)])[0]
    }

    /// One scrape of every sidecar for all the canaries due.
    public func samples(_ wants: [(service: String, namespace: String, versions: Set<String>)]) -> [CanarySample] {
        let sidecars = allAdmins()
        let addresses = Array(Set(sidecars.map { String($0.prefix { $0 != "\t" }) })).sorted()
        let scrapes = PrometheusSamples.scrape(addresses, timeoutSeconds: 2)
        let time = Clock.monotonicNanos()
        let r = StoreCanaryEnvironment.reach(sidecars, answered: Set(scrapes.map(\.admin)))
        return wants.map {
            var s = CanaryAnalysis.sample(time: time, scrapes: scrapes, service: $0.service, namespace: $0.namespace, versions: $0.versions)
            (s.sidecars, s.scraped) = (sidecars.count, r.scraped)
            return s
        }
    }

    /// nil when the statuses cannot be read (etcd unreachable, a damaged file): the controller
    /// then waits rather than restart every canary from step 0.
    public func loadStatuses() -> [CanaryStatus]? {
        if let etcd = store.etcd {
            guard let r = try? etcd.client.range(prefix: StoreCanaryEnvironment.etcdPrefix) else { return nil }
            let list = r.kvs.compactMap { CanaryStatus.parse($0.valueText) }
            return list.count == r.kvs.count ? list : nil
        }
        let p = "\(store.stateDir)/\(StoreCanaryEnvironment.file)"
        var st = stat()
        if lstat(p, &st) != 0 && errno == ENOENT { return [] }
        guard let bytes = try? FileStore.readBytes(p), let text = String(validating: bytes, as: UTF8.self) else { return nil }
        let parts = text.components(separatedByLine: "---")
        let list = parts.compactMap { CanaryStatus.parse($0) }
        return list.count == parts.count ? list : nil
    }

    /// Checks the recorded statuses at start: a file (or etcd key) that exists but cannot be
    /// read is an error naming it (meshd stops rather than restart every canary from step 1).
    public func checkStored() throws(CAError) {
        if let etcd = store.etcd {
            guard let r = try? etcd.client.range(prefix: StoreCanaryEnvironment.etcdPrefix) else { return }
            for kv in r.kvs where CanaryStatus.parse(kv.valueText) == nil {
                throw CAError("etcd key \(kv.key): not a canary status this meshd can read; fix or remove the key (the Canary then starts again)")
            }
            return
        }
        let p = "\(store.stateDir)/\(StoreCanaryEnvironment.file)"
        var st = stat()
        if lstat(p, &st) != 0 && errno == ENOENT { return }
        let bytes: [UInt8]
        do { bytes = try FileStore.readBytes(p) } catch { throw CAError("\(p): \(error)") }
        guard let text = String(validating: bytes, as: UTF8.self) else { throw CAError("\(p): not UTF-8 text; the file is damaged") }
        for (i, part) in text.components(separatedByLine: "---").enumerated() where CanaryStatus.parse(part) == nil {
            throw CAError("\(p): status \(i + 1) cannot be read; fix or remove the file (its Canaries then start again)")
        }
    }

    public func saveStatuses(_ statuses: [CanaryStatus]) {
        if let etcd = store.etcd {
            let keep = Set(statuses.map { StoreCanaryEnvironment.etcdPrefix + "\($0.namespace)/\($0.name)" })
            // Fenced on the election: a replica that no longer leads records nothing.
            let f: EtcdCompare?
            do { f = try fence() } catch { return }
            let compare = f.map { [$0] } ?? []
            for s in statuses {
                do {
                    let r = try etcd.client.txn(compare: compare, success: [.put(StoreCanaryEnvironment.etcdPrefix + "\(s.namespace)/\(s.name)", Array(s.serialized.utf8))])
                    if !r.succeeded { return }
                } catch {
                    Log.warn("canary", "cannot record Canary \(s.namespace)/\(s.name) in etcd: \(error)")
                }
            }
            if let r = try? etcd.client.range(prefix: StoreCanaryEnvironment.etcdPrefix) {
                for kv in r.kvs where !keep.contains(kv.key) { _ = try? etcd.client.txn(compare: compare, success: [.delete(kv.key)]) }
            }
            return
        }
        let text = statuses.map(\.serialized).joined(separator: "---\n")
        do { try FileStore.writeAtomically("\(store.stateDir)/\(StoreCanaryEnvironment.file)", text, mode: 0o600) } catch {
            Log.warn("canary", "cannot record the canaries in \(store.stateDir)/\(StoreCanaryEnvironment.file): \(error)")
        }
    }
}

extension String {
    /// The parts of a text between lines that are exactly `marker`.
    func components(separatedByLine marker: String) -> [String] {
        var out: [String] = [], cur: [Substring] = []
        for l in split(separator: "\n", omittingEmptySubsequences: false) {
            if l == marker { out.append(cur.joined(separator: "\n")); cur = [] } else { cur.append(l) }
        }
        out.append(cur.joined(separator: "\n"))
        return out.filter { !$0.allSatisfy { $0 == "\n" || $0 == " " } }
    }
}

/// How canaries are shown: `meshctl canary status` text, the JSON of `GET /v1/canaries?o=json`
/// (the contract with meshd's web page) and meshd's `/metrics` series.
public enum CanaryReport {
    static func clock(_ t: Int64) -> String {
        let d = Int(t % 86400)
        func two(_ n: Int) -> String { n < 10 ? "0\(n)" : String(n) }
        return "\(two(d / 3600)):\(two(d / 60 % 60)):\(two(d % 60))"
    }

    /// The text of `meshctl canary status [NAME]` (`name` nil: every Canary).
    public static func text(_ list: [(status: CanaryStatus, canary: Canary?)], namespace: String?, name: String?) -> String {
        let chosen = list.filter { (name == nil || $0.status.name == name) && (namespace == nil || $0.status.namespace == namespace) }
        if chosen.isEmpty { return name.map { "no Canary \(namespace ?? "default")/\($0)\n" } ?? "no canaries\n" }
        var out = ""
        for (s, c) in chosen {
            out += "\(s.namespace)/\(s.name)\tphase \(s.phase.rawValue)\tcanary weight \(s.weight)%"
            if let c { out += "\thost \(c.host) \(c.stable) -> \(c.canary)\tmax \(c.analysis.maxWeight)%\tfailed checks \(s.failedChecks)/\(c.analysis.threshold)" }
            out += "\n  \(s.message)\n"
            if !s.checks.isEmpty { out += "  last checks:\n" + s.checks.map { "    \($0)\n" }.joined() }
            if !s.events.isEmpty {
                out += "  events (UTC):\n" + s.events.map { e -> String in
                    let parts = e.split(separator: " ", maxSplits: 1)
                    // A stored event may be anything (a hand-edited file): never index into it.
                    guard let first = parts.first else { return "    (an empty event)\n" }
                    return "    \(Int64(first).map(clock) ?? String(first)) \(parts.count > 1 ? String(parts[1]) : "")\n"
                }.joined()
            }
        }
        return out
    }

    /// `GET /v1/canaries?o=json`: an array, one object per Canary (prompts' canary-contract).
    public static func json(_ list: [(status: CanaryStatus, canary: Canary?)]) -> String {
        var w = JSONWriter()
        w.beginArray()
        for (s, c) in list {
            w.beginObject()
            w.string("namespace", s.namespace)
            w.string("name", s.name)
            w.string("host", c?.host ?? "")
            w.string("stable", c?.stable ?? "")
            w.string("canary", c?.canary ?? "")
            w.string("phase", s.phase.rawValue)
            w.number("canaryWeight", Int64(s.weight))
            w.number("maxWeight", Int64(c?.analysis.maxWeight ?? 0))
            w.number("failedChecks", Int64(s.failedChecks))
            w.number("threshold", Int64(c?.analysis.threshold ?? 0))
            w.string("message", s.message)
            w.number("lastTransition", s.lastTransition)
            w.endObject()
        }
        w.endArray()
        return w.text + "\n"
    }

    /// meshd's canary series (DESIGN §6 style: HELP and TYPE once per family).
    public static func metrics(_ list: [(status: CanaryStatus, canary: Canary?)]) -> String {
        func l(_ s: CanaryStatus) -> String { "namespace=\"\(Printable.escaped(s.namespace))\",name=\"\(Printable.escaped(s.name))\"" }
        var out = "# HELP mesh_canary_weight The canary's weight (percent) on the route its Canary drives.\n# TYPE mesh_canary_weight gauge\n"
        for (s, _) in list { out += "mesh_canary_weight{\(l(s))} \(s.weight)\n" }
        out += "# HELP mesh_canary_phase The Canary's phase (1 for the current one).\n# TYPE mesh_canary_phase gauge\n"
        for (s, _) in list {
            for p in CanaryStatus.Phase.allCases { out += "mesh_canary_phase{\(l(s)),phase=\"\(p.rawValue)\"} \(p == s.phase ? 1 : 0)\n" }
        }
        out += "# HELP mesh_canary_checks_total Canary checks by result since meshd first ran the Canary (kept with its recorded state).\n# TYPE mesh_canary_checks_total counter\n"
        for (s, _) in list {
            out += "mesh_canary_checks_total{\(l(s)),result=\"pass\"} \(s.passed)\n"
            out += "mesh_canary_checks_total{\(l(s)),result=\"fail\"} \(s.failed)\n"
            out += "mesh_canary_checks_total{\(l(s)),result=\"held\"} \(s.held)\n"
        }
        return out
    }
}
