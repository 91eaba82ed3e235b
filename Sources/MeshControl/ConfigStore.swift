import MeshControlWire
import MeshEtcd
import MeshCA
import MeshPKI
import MeshConfig
import MeshCore
import MeshIO
import MeshTLS
#if canImport(Glibc)
import Glibc
#endif

/// meshd's config store (DESIGN §3, §5): the Istio documents in force, keyed by kind, namespace
/// and name (apply upserts, delete removes, like kubectl), the workloads registered by sidecars,
/// and a version that moves on every change. A change is validated as a whole before it is
/// committed; refused input leaves the config in force untouched. What was applied and the
/// registry are kept in the state directory (written atomically) and survive a restart.
/// Waiting config streams are woken on every change. Thread-safe.
public final class ConfigStore: @unchecked Sendable {
    /// One stored document: its identity, its text (re-parsed when the set is validated), and
    /// where it came from, so that an error found in the whole set names the operator's file.
    struct Document: Sendable {
        var kind: String
        var namespace: String
        var name: String
        var text: String
        /// Where it came from: a `--config-dir` file owns its documents (a removed file removes them).
        var source = ""
        /// The file it was applied from, its 1-based number there and the line it starts on.
        var file = ""
        var index = 0
        var line = 1
        var key: String { "\(kind)/\(namespace)/\(name)" }
    }

    /// A workload registered by its sidecar.
    public struct Workload: Sendable {
        public var identity: String
        public var service: String
        public var namespace: String
        public var labels: [(String, String)]
        /// Where other sidecars reach its inbound listener.
        public var address: String
        /// Last time its sidecar was seen (config stream), Unix seconds.
        public var lastSeen: Int64
        public var connected: Bool
        /// What the service speaks (HTTP, HTTP2, GRPC or TCP) and the port callers use (nil:
        /// not given by the sidecar); every workload of one service registers the same.
        public var serviceProtocol: String = "HTTP"
        public var servicePort: Int? = nil
        /// The meshd replica that holds its sidecar's stream and expires it (etcd store; empty
        /// on the file store, where this meshd holds every one).
        public var holder = ""
    }

    /// A sidecar's config stream as `meshctl status` shows it.
    public struct ProxyStatus: Sendable {
        public var identity: String
        public var connected: Bool
        public var sentVersion = 0
        public var ackedVersion = 0
        public var nack: String?
        public var lastSeen: Int64 = 0
        public var node = ""
        /// The nonce of the last config sent; an ACK or NACK must carry it.
        public var nonce = ""
        /// The sidecar's admin address (metrics for `meshctl top`).
        public var admin = ""
        /// The digest of the config last sent, and of the one it last ACKed: a sidecar whose
        /// scope a change did not touch has the config in force without the new version.
        public var sentDigest = ""
        public var ackedDigest = ""
        /// A gateway proxy's labels (it names them on every config request); nil for a sidecar.
        public var gatewayLabels: [(String, String)]? = nil
    }

    struct State {
        var documents: [String: Document] = [:]
        var order: [String] = []
        var workloads: [String: Workload] = [:]   // by identity + address
        var proxies: [String: ProxyStatus] = [:]  // by identity
        var version = 1
        /// When meshd started: registered workloads it knew are kept at least this long.
        var startedAt: Int64 = 0
        /// When each recent version came to be (monotonic ns), for push convergence.
        var versionTimes: [Int: UInt64] = [:]
        /// Apply-to-ACK times (ms) in Prometheus buckets, and their sum and count.
        var convergence = [UInt64](repeating: 0, count: ConfigStore.convergenceBuckets.count + 1)
        var convergenceSum: Double = 0
        /// The rendered proxy config of the current version (every sidecar gets the same).
        var rendered: (version: Int, text: String)?
        /// Config streams open now, by identity|node: their sidecars are alive.
        var streams: [String: Int] = [:]
        /// `--outbound-traffic-policy`: what captured connections to destinations outside the
        /// mesh get (Istio's MeshConfig `outboundTrafficPolicy.mode`), pushed to every sidecar.
        var outboundTrafficPolicy = Bootstrap.OutboundTrafficPolicy.allowAny
        /// The virtual IPs meshd gave to mesh hosts (`vips.txt`), kept for good.
        var vips = VIPAllocator()
        /// TLS secrets by NAMESPACE/NAME (`meshctl create secret tls`; SecretStore.swift).
        var secrets: [String: TLSSecret] = [:]
    }

    let state = Locked(State())
    /// One change at a time: read, validate, persist and commit form one critical section.
    let applyLock = PlainLock()
    private let changed = Condition()
    private let observers = Locked<[@Sendable () -> Void]>([])
    /// Each scope's config, rendered once per version (ProxyConfigScope.swift).
    let scoped = ScopedRenders()
    let stateDir: String
    public let defaultNamespace = "default"
    /// How long a workload whose sidecar went away stays registered (and, after a meshd restart,
    /// how long every known workload stays until its sidecar reconnects).
    public let grace: Int64

    /// The trust domain, for the identities of ServiceEntry endpoints.
    let trustDomain: String

    /// The shared store of meshd replicas (nil: the state directory's files).
    let etcd: EtcdStateStore?
    /// `meshd --gateway-service-account` grants, and what was withheld for want of one (GatewayGrants.swift).
    let gatewayGrants = Locked(GatewayGrants())

    /// `etcd`: keep the state there instead of in `stateDir` (replicas, DESIGN §12).
    public convenience init(stateDir: String, trustDomain: String = "cluster.local", grace: Int64 = 30,
                            outboundTrafficPolicy: Bootstrap.OutboundTrafficPolicy = .allowAny) throws(CAError) {
        try self.init(stateDir: stateDir, trustDomain: trustDomain, grace: grace, outboundTrafficPolicy: outboundTrafficPolicy, etcd: nil)
    }

    init(stateDir: String, trustDomain: String, grace: Int64, outboundTrafficPolicy: Bootstrap.OutboundTrafficPolicy,
         etcd: EtcdStateStore?) throws(CAError) {
        self.stateDir = stateDir
        self.trustDomain = trustDomain
        self.grace = grace
        self.etcd = etcd
        var st: State
        if let etcd { st = try etcd.load() } else {
            st = try StateFiles(stateDir: stateDir).load()
            st.secrets = try StateFiles(stateDir: stateDir).loadSecrets()
        }
        st.outboundTrafficPolicy = outboundTrafficPolicy
        st.startedAt = MeshCrypto.now()
        let stored = st
        do { try ConfigStore.allocateVIPs(&st) } catch {
            throw CAError("\(etcd == nil ? "\(stateDir)/\(StateFiles.vips)" : "etcd key \(EtcdStateStore.vips)"): the stored config cannot keep these addresses: \(error.description); fix or remove \(etcd == nil ? "the file" : "the key")")
        }
        if st.vips != stored.vips {
            if let etcd {
                // Written like any change (guarded on the version read), so every replica
                // serves the same addresses; another replica's write first means it allocated them.
                if let v = try? etcd.commit(from: stored, to: st) { st.version = v }
            } else {
                try StateFiles(stateDir: stateDir).saveVIPs(st)
            }
        }
        for k in st.workloads.keys { st.workloads[k]!.lastSeen = st.startedAt }
        // What was stored must still be what a sidecar accepts (this meshd may check more than the
        // one that stored it): refuse to start rather than push a config every sidecar refuses.
        do { try ConfigStore.check(st, trustDomain: trustDomain) } catch {
            // The documents alone are good, the registry breaks them: start without the registry
            // (sidecars register again; one that breaks the config is then refused by name).
            var bare = st
            bare.workloads = [:]
            if etcd != nil {
                // Shared with running replicas that accept it: this one must not serve another.
                throw CAError("the config stored in etcd (/mesh/config/) is refused by this meshd: \(error.description); fix it through a replica that accepts it, or run the same meshd version as the others")
            } else if !st.workloads.isEmpty, (try? ConfigStore.check(bare, trustDomain: trustDomain)) != nil {
                Log.warn("registry", "\(stateDir)/\(StateFiles.registry): dropped: with it the stored config is refused (\(error.description)); sidecars register again")
                st = bare
            } else {
                throw CAError("\(stateDir)/\(StateFiles.applied): the stored config is refused: \(error.description); fix or remove the file")
            }
        }
        let kinds = Dictionary(grouping: st.order.compactMap { st.documents[$0]?.kind }, by: { $0 }).map { "\($0.value.count) \($0.key)" }.sorted()
        Log.info("config", "loaded \(st.order.count) document(s)\(kinds.isEmpty ? "" : " (\(kinds.joined(separator: ", ")))") and \(st.workloads.count) workload(s) from \(etcd.map { "etcd (\($0.endpoints)) at version \(st.version)" } ?? stateDir)")
        state.withLock { $0 = st }
    }

    /// Opens the state kept in etcd by every replica (`meshd --store etcd://...`); `replica`
    /// names this meshd there. Follow the store with `followStore()`.
    public static func shared(client: EtcdClient, endpoints: String, replica: String, stateDir: String, trustDomain: String = "cluster.local",
                              grace: Int64 = 30, outboundTrafficPolicy: Bootstrap.OutboundTrafficPolicy = .allowAny) throws(CAError) -> ConfigStore {
        try ConfigStore(stateDir: stateDir, trustDomain: trustDomain, grace: grace, outboundTrafficPolicy: outboundTrafficPolicy,
                        etcd: EtcdStateStore(client: client, replica: replica, endpoints: endpoints))
    }

    /// Follows the shared store for ever (on the calling thread): what other replicas commit
    /// becomes the config in force here. Returns at once on the file store.
    public func followStore() {
        etcd?.follow(install: { [weak self] st in self?.install(st) }, holders: { [weak self] moves in self?.moved(moves) })
    }

    /// Sidecars that moved between replicas (registry keys whose holder changed without a new
    /// version): this replica's view of who holds them follows.
    func moved(_ holders: [String: String]) {
        state.withLock { s in
            for (k, h) in holders where s.workloads[k] != nil { s.workloads[k]!.holder = h }
        }
    }

    /// Puts a state read from the store in force when it is newer than the one in force. What
    /// this replica knows about its own sidecars (when each was last seen) stays.
    func install(_ st: State, checked: Bool = false, base: State? = nil) {
        if !checked {
            // What another replica committed was checked there; this replica checks documents
            // again (it may be newer and stricter, or the keys were written by hand). The check
            // leaves out what only this replica knows (its callers' namespaces), so every replica
            // decides alike. A set it refuses is not put in force: this replica stops serving
            // (`refusal`: /ready and config streams answer 503, sidecars move to another) rather
            // than serve a config the others have left.
            var candidate = state.withLock { $0 }
            guard st.version > candidate.version else { return }
            let documentsChanged = st.order != candidate.order || st.vips != candidate.vips
                || st.order.contains { st.documents[$0]?.text != candidate.documents[$0]?.text }
            if documentsChanged {
                candidate.documents = st.documents
                candidate.order = st.order
                candidate.workloads = st.workloads
                candidate.vips = st.vips
                candidate.proxies = [:]
                do { try ConfigStore.check(candidate, trustDomain: trustDomain) } catch {
                    let why = "version \(st.version) from etcd is refused by this replica: \(error.description)"
                    if refusal.withLock({ r -> Bool in defer { r = why }; return r != why }) {
                        Log.error("store", "\(why); it stops serving until a version it accepts (the config in force, version \(version), is not served either)")
                    }
                    notifyChanged()
                    return
                }
            }
        }
        refusal.withLock { $0 = nil }
        let v = state.withLock { s -> Int? in
            guard st.version > s.version else { return nil }
            let now = MeshCrypto.now()
            var workloads = st.workloads
            for k in workloads.keys {
                // This replica's own commit did not change who holds it: a move that came in
                // meanwhile (`moved`) stays.
                if let b = base, let o = s.workloads[k], b.workloads[k]?.holder == workloads[k]!.holder { workloads[k]!.holder = o.holder }
                if let o = s.workloads[k] { workloads[k]!.lastSeen = o.lastSeen; workloads[k]!.connected = o.connected } else {
                    workloads[k]!.lastSeen = now
                    workloads[k]!.connected = true
                }
            }
            s.documents = st.documents
            s.order = st.order
            s.workloads = workloads
            s.vips = st.vips
            s.secrets = st.secrets
            s.version = st.version
            s.versionTimes[s.version] = Clock.monotonicNanos()
            if s.versionTimes.count > 64, let oldest = s.versionTimes.keys.min() { s.versionTimes.removeValue(forKey: oldest) }
            return s.version
        }
        if let v {
            Log.debug("store", "version \(v) from etcd")
            notifyChanged()
        }
    }

    /// Commits `next` (computed from `current`) to the store and puts it in force; returns the
    /// new version, or nil when another replica committed first (`conflictAt` is then the
    /// version to wait for before computing the change again). `fence`: the leader's compare.
    func commit(_ current: State, _ next: State, conflictAt: inout Int, fence: EtcdCompare? = nil) throws(ConfigError) -> Int? {
        guard let etcd else { preconditionFailure("commit is for the shared store") }
        let v: Int
        do { v = try etcd.commit(from: current, to: next, fence: fence) } catch {
            switch error {
            case .conflict(let at):
                // A leader-only write whose election compare failed: this replica no longer
                // leads. Said at once (retrying would spin on a stale fence).
                if let fence, let r = try? etcd.client.txn(compare: [fence], success: [], failure: []), !r.succeeded {
                    throw ConfigError(path: CanaryController.notLeading, message: "this meshd no longer leads")
                }
                conflictAt = Int(at); return nil
            case .failed(let why): throw ConfigError(file: "(the store)", message: "cannot persist: \(why)")
            }
        }
        var installed = next
        installed.version = v
        install(installed, checked: true, base: current)
        return v
    }

    /// Waits (at most 2 s) until the version in force is at least `version`: the store's watch
    /// caught up with a commit another replica made.
    func waitForVersion(_ version: Int) {
        let deadline = Clock.monotonicNanos() + 2_000_000_000
        while self.version < version {
            let now = Clock.monotonicNanos()
            if now >= deadline { return }
            changed.wait(nanos: min(deadline - now, 50_000_000))
        }
    }

    /// Runs a change against the shared store until it commits: `attempt` computes it from the
    /// state in force (nil: conflict at the version it set, try again once caught up).
    func retrying<R>(_ what: String, _ attempt: (inout Int) throws(ConfigError) -> R?) throws(ConfigError) -> R {
        // Bounded in time, not only in tries: a registration holds the store's lock on a worker
        // thread, and other requests wait behind it.
        let deadline = Clock.monotonicNanos() + 8_000_000_000
        while Clock.monotonicNanos() < deadline {
            var at = 0
            if let r = try attempt(&at) { return r }
            waitForVersion(at)
        }
        if let why = refusal.withLock({ $0 }) { throw ConfigError(file: "(the store)", message: "\(what): \(why)") }
        throw ConfigError(file: "(the store)", message: "\(what): other replicas kept changing the config for 8 s (or this replica's view of etcd is behind); try again")
    }

    public var version: Int { state.withLock { $0.version } }

    // MARK: documents

    static let storedKinds: Set<String> = ["VirtualService", "DestinationRule", "AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication",
                                           "ServiceEntry", "WorkloadEntry", "Sidecar", LocalRateLimit.kind, "Gateway", Telemetry.kind, Canary.kind]

    /// Splits one file's YAML text into documents with their identities (kind, namespace, name)
    /// and their place in the file. Each document is validated on its own here, with the file's
    /// own line numbers; how the documents fit the rest is checked on the whole set.
    /// `validate: false` (a delete) needs only each document's identity.
    static func split(_ text: String, file: String, validate: Bool = true) throws(ConfigError) -> [Document] {
        let docs: [(node: YAMLNode, line: Int)]
        do { docs = try YAML.parseDocuments(text) } catch { throw ConfigError(file: file, line: error.line, message: "YAML: \(error.message)") }
        if validate {
            _ = try IstioTraffic.parse(documents: docs, file: file, defaultNamespace: "default", skipKinds: [], checkSubsets: false)
        }
        var out: [Document] = []
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        let starts = docs.map(\.line)
        for (i, d) in docs.enumerated() {
            guard let m = d.node.asMapping, case .scalar(let kind)? = m["kind"], let meta = m["metadata"]?.asMapping,
                  case .scalar(let name)? = meta["name"] else {
                if validate { continue }
                throw ConfigError(file: file, document: i + 1, line: d.line, message: "a document to delete needs kind and metadata.name")
            }
            var ns = "default"
            if case .scalar(let n)? = meta["namespace"] { ns = n.value }
            // The document's own lines, from its first line up to the next document's marker.
            let from = min(max(0, starts[i] - 1), lines.count)
            var to = i + 1 < starts.count ? min(max(from, starts[i + 1] - 1), lines.count) : lines.count
            while to > from, lines[to - 1].hasPrefix("---") || lines[to - 1].hasPrefix("...") { to -= 1 }
            var body = lines[from..<to].joined(separator: "\n")
            while body.hasSuffix("\n") { body.removeLast() }
            out.append(Document(kind: kind.value, namespace: ns, name: name.value, text: body, file: file, index: i + 1, line: starts[i]))
        }
        return out
    }

    /// One input file of an apply or delete.
    public struct Input: Sendable {
        public var file: String
        public var text: String
        /// Set by `--config-dir` (the file that owns the documents); empty for meshctl.
        public var source: String
        public init(file: String, text: String, source: String = "") { self.file = file; self.text = text; self.source = source }
    }

    /// What an apply or delete did, document by document.
    public struct Result: Sendable {
        public enum Outcome: String, Sendable { case created, configured, unchanged, deleted, notFound = "not found" }
        /// The version in force afterwards (the same as before when nothing changed).
        public var version: Int
        public var changed: Bool
        public var documents: [(kind: String, namespace: String, name: String, outcome: Outcome)]
    }

    /// Validates the inputs merged into the documents in force (upsert by kind/namespace/name,
    /// or removal with `delete`) and commits them when the whole set is one every sidecar would
    /// accept: the config meshd would push is checked with the sidecar's own code
    /// (`Bootstrap.checkPushed`). Nothing changes, no version moves and nothing is pushed when
    /// the documents in force are already what the input says. `replacing`: sources whose every
    /// document is replaced by what the inputs hold (a `--config-dir` file removed or rewritten).
    public func apply(_ inputs: [Input], delete: Bool = false, replacing: Set<String> = [], fence: EtcdCompare? = nil) throws(ConfigError) -> Result {
        applyLock.lock()
        defer { applyLock.unlock() }
        return try retrying("apply") { (at: inout Int) throws(ConfigError) -> Result? in try applyOnce(inputs, delete: delete, replacing: replacing, conflictAt: &at, fence: fence) }
    }

    /// Reads one document's text in force and applies what `change` makes of it (nil: nothing
    /// to write), in one step under the apply lock: the commit happens only while the text in
    /// force is still the one `change` saw; otherwise `change` runs again on the new text.
    /// Returns the text in force after it.
    func update(kind: String, namespace: String, name: String, file: String, fence: EtcdCompare?,
                _ change: (String?) throws(ConfigError) -> String?) throws(ConfigError) -> String? {
        applyLock.lock()
        defer { applyLock.unlock() }
        let key = "\(kind)/\(namespace)/\(name)"
        return try retrying("apply") { (at: inout Int) throws(ConfigError) -> String?? in
            let seen = state.withLock { $0.documents[key]?.text }
            guard let text = try change(seen) else { return .some(seen) }
            guard try applyOnce([Input(file: file, text: text)], delete: false, replacing: [], conflictAt: &at, fence: fence,
                                expect: (key, seen)) != nil else { return nil }
            return .some(state.withLock { $0.documents[key]?.text })
        }
    }

    private func applyOnce(_ inputs: [Input], delete: Bool, replacing: Set<String>, conflictAt: inout Int, fence: EtcdCompare? = nil,
                           expect: (key: String, text: String?)? = nil) throws(ConfigError) -> Result? {
        var incoming: [Document] = []
        for input in inputs {
            var docs = try ConfigStore.split(input.text, file: input.file, validate: !delete)
            for i in docs.indices { docs[i].source = input.source }
            for d in docs where !ConfigStore.storedKinds.contains(d.kind) {
                throw ConfigError(file: input.file, document: d.index, line: d.line, message: "kind \(d.kind) is not stored by meshd yet (supported: \(ConfigStore.storedKinds.sorted().joined(separator: ", ")))")
            }
            for d in docs {
                if let prev = incoming.first(where: { $0.key == d.key }) {
                    throw ConfigError(file: d.file, document: d.index, line: d.line,
                                      message: "\(d.kind) \(d.namespace)/\(d.name) is given twice (also \(prev.file):\(prev.line))")
                }
            }
            incoming += docs
        }
        let current = state.withLock { $0 }
        // `update`: the document changed since it was read; read it again.
        if let expect, current.documents[expect.key]?.text != expect.text { conflictAt = 0; return nil }
        var next = current
        for (k, d) in next.documents where !d.source.isEmpty && replacing.contains(d.source) && !incoming.contains(where: { $0.key == k }) {
            next.documents.removeValue(forKey: k)
            next.order.removeAll { $0 == k }
        }
        var outcomes: [(String, String, String, Result.Outcome)] = []
        for d in incoming {
            let old = current.documents[d.key]
            if delete {
                outcomes.append((d.kind, d.namespace, d.name, old == nil ? .notFound : .deleted))
                next.documents.removeValue(forKey: d.key)
                next.order.removeAll { $0 == d.key }
            } else {
                outcomes.append((d.kind, d.namespace, d.name, old == nil ? .created : old!.text == d.text ? .unchanged : .configured))
                if next.documents[d.key] == nil { next.order.append(d.key) }
                var d = d
                // The same text from meshctl leaves a --config-dir file's document its own.
                if let o = old, o.text == d.text, d.source.isEmpty { d.source = o.source }
                next.documents[d.key] = d
            }
        }
        let same = next.order == current.order && next.order.allSatisfy { k in
            next.documents[k]!.text == current.documents[k]!.text && next.documents[k]!.source == current.documents[k]!.source
        }
        if same {
            // Unchanged on this replica's view: etcd may hold a newer config the watch has not
            // brought yet (a change through another replica just now); then read again.
            if let etcd, let stored = etcd.storedVersion(), stored > current.version {
                conflictAt = stored
                return nil
            }
            return Result(version: current.version, changed: false, documents: outcomes)
        }
        do { try ConfigStore.allocateVIPs(&next) } catch {
            throw ConfigStore.locate(error, in: ConfigStore.renderDocuments(next.order.compactMap { next.documents[$0] }).placed)
        }
        try ConfigStore.check(next, trustDomain: trustDomain)
        if !delete {
            // Only gateways whose identity meshd grants count: a claimed label set blocks nothing.
            let td = trustDomain
            try ConfigStore.checkAppliedPolicies(next, incoming: incoming, trusted: { id in
                guard let ns = ProxyScope.namespace(ofIdentity: id) else { return false }
                return self.gatewayGrants.withLock { $0.accounts.grants(identity: id, namespace: ns, trustDomain: td) }
            })
        }
        if !delete { ConfigStore.warnPlaintextKeySets(incoming) }
        if !delete { try ConfigStore.checkAppliedCanaries(next, incoming: incoming) }
        if etcd != nil {
            guard let v = try commit(current, next, conflictAt: &conflictAt, fence: fence) else { return nil }
            let files = Set(inputs.map(\.file)).sorted().joined(separator: ", ")
            Log.info("config", "\(outcomes.filter { $0.3 != .unchanged && $0.3 != .notFound }.map { "\($0.0) \($0.1)/\($0.2) \($0.3.rawValue)" }.joined(separator: ", ")) from \(files): version \(v)")
            return Result(version: v, changed: true, documents: outcomes)
        }
        do {
            // The addresses first: a document in force always has its VIP on disk.
            if next.vips != current.vips { try StateFiles(stateDir: stateDir).saveVIPs(next) }
            try StateFiles(stateDir: stateDir).saveDocuments(next)
        } catch {
            throw ConfigError(file: inputs.first?.file ?? "", message: "cannot persist: \(error)")
        }
        let v = state.withLock { s -> Int in
            s.documents = next.documents
            s.order = next.order
            s.vips = next.vips
            s.version += 1
            s.versionTimes[s.version] = Clock.monotonicNanos()
            if s.versionTimes.count > 64, let oldest = s.versionTimes.keys.min() { s.versionTimes.removeValue(forKey: oldest) }
            return s.version
        }
        notifyChanged()
        let files = Set(inputs.map(\.file)).sorted().joined(separator: ", ")
        Log.info("config", "\(outcomes.filter { $0.3 != .unchanged && $0.3 != .notFound }.map { "\($0.0) \($0.1)/\($0.2) \($0.3.rawValue)" }.joined(separator: ", ")) from \(files): version \(v)")
        return Result(version: v, changed: true, documents: outcomes)
    }

    /// The sources that own documents in force (`--config-dir` files).
    func documentSources() -> Set<String> { state.withLock { Set($0.documents.values.map(\.source).filter { !$0.isEmpty }) } }

    /// The documents in force, in the order they were applied.
    public func documents() -> [(kind: String, namespace: String, name: String, text: String)] {
        state.withLock { s in s.order.compactMap { s.documents[$0] }.map { ($0.kind, $0.namespace, $0.name, $0.text) } }
    }

    // MARK: registry

    /// A sidecar (identity from its certificate) registers its workload; a new or changed
    /// registration moves the version.
    /// A new or changed registration is checked like an apply: the config it would make must be
    /// one every sidecar accepts, or it is refused (the error says why) and nothing changes, so
    /// one workload cannot break the config of all the others.
    public func register(identity: String, service: String, namespace: String, labels: [(String, String)], address: String,
                         serviceProtocol: String = "HTTP", servicePort: Int? = nil) throws(ConfigError) {
        applyLock.lock()
        defer { applyLock.unlock() }
        try retrying("registration") { (at: inout Int) throws(ConfigError) -> Bool? in
            try registerOnce(identity: identity, service: service, namespace: namespace, labels: labels, address: address,
                             serviceProtocol: serviceProtocol, servicePort: servicePort, conflictAt: &at) ? true : nil
        }
    }

    /// One attempt at a registration; false when another replica committed first.
    private func registerOnce(identity: String, service: String, namespace: String, labels: [(String, String)], address: String,
                              serviceProtocol: String, servicePort: Int?, conflictAt: inout Int) throws(ConfigError) -> Bool {
        let now = MeshCrypto.now()
        let key = "\(identity)|\(address)"
        var w = Workload(identity: identity, service: service, namespace: namespace, labels: labels, address: address, lastSeen: now, connected: true)
        w.serviceProtocol = serviceProtocol
        w.servicePort = servicePort
        w.holder = etcd?.replica ?? ""
        let current = state.withLock { $0 }
        var next = current
        var peers = 0
        var peersOnPort = 0
        // One service, one protocol and one service port: a workload that disagrees with the
        // others of its service is refused by name (callers could not know which to speak).
        for (k, o) in next.workloads where k != key && o.service == service && o.namespace == namespace {
            peers += 1
            if o.servicePort == servicePort { peersOnPort += 1 }
            if o.serviceProtocol != serviceProtocol {
                throw ConfigError(path: "register \(service).\(namespace) at \(address)",
                                  message: "protocol \(serviceProtocol) differs from \(o.serviceProtocol), registered by \(o.address) for the same service")
            }
            // The port matters to TCP services only (callers CONNECT to host:port; HTTP routes
            // by host): versions of an HTTP service may register different app ports.
            if serviceProtocol == "TCP", let a = o.servicePort, let b = servicePort, a != b {
                throw ConfigError(path: "register \(service).\(namespace) at \(address)",
                                  message: "service port \(b) differs from \(a), registered by \(o.address) for the same service")
            }
        }
        let old = next.workloads[key]
        // A sidecar that moved to this replica: the same registration, a new holder.
        let moved = old.map { $0.holder != w.holder } ?? false
        let same = old.map { $0.service == service && $0.namespace == namespace && $0.labels.map { "\($0.0)=\($0.1)" } == labels.map { "\($0.0)=\($0.1)" }
            && $0.serviceProtocol == serviceProtocol && $0.servicePort == servicePort } ?? false
        if !same, ConfigStore.onlyAddsAnEndpoint(next, service: service, namespace: namespace, labels: labels, address: address, old: old,
                                                 peers: peers, peersOnPort: peersOnPort) {
            if etcd != nil {
                next.workloads[key] = w
                guard try commit(current, next, conflictAt: &conflictAt) != nil else { return false }
                state.withLock { $0.workloads[key]?.lastSeen = now }
            } else {
                state.withLock { s in s.workloads[key] = w; s.version += 1 }
                persistRegistry()
                notifyChanged()
            }
            Log.info("registry", "registered \(service).\(namespace) at \(address) (\(identity))")
            return true
        }
        next.workloads[key] = w
        let vipsBefore = next.vips
        if !same {
            // The documents may say what the service speaks before it registers (a tcp route
            // to it): a workload that speaks otherwise is refused naming both.
            let all = ConfigStore.renderDocuments(next.order.compactMap { next.documents[$0] }).text
            if let cfg = try? IstioTraffic.parse(all, file: "(stored)"),
               let d = DeclaredProtocol.all(in: cfg)["\(service).\(namespace)"], d.tcp != (serviceProtocol == "TCP") {
                throw ConfigError(path: "register \(service).\(namespace) at \(address)",
                                  message: "protocol \(serviceProtocol) conflicts with \(d.by), which routes \(service).\(namespace) with "
                                      + (d.tcp ? "a tcp route (register it with --app-protocol tcp, or route it with http routes)"
                                               : "http routes (register it as an HTTP service, or route it with a tcp route)"))
            }
            try ConfigStore.allocateVIPs(&next)
            try ConfigStore.check(next, trustDomain: trustDomain)
            if next.vips != vipsBefore && etcd == nil {
                do { try StateFiles(stateDir: stateDir).saveVIPs(next) } catch {
                    throw ConfigError(file: "(registration)", message: "cannot persist the service addresses: \(error)")
                }
            }
        }
        if let etcd, same && moved && etcd.hasRegistryKey(key) {
            // Only the holder changed: its own key, no new version (EtcdStateStore.moveHolder).
            var ok = false
            do { ok = try etcd.moveHolder(key: key, to: w) } catch {
                if case .failed(let why) = error { throw ConfigError(file: "(the store)", message: "cannot persist: \(why)") }
            }
            guard ok else { usleep(50_000); conflictAt = 0; return false }   // the key moved meanwhile: read again shortly
            state.withLock { s in s.workloads[key]?.holder = w.holder; s.workloads[key]?.lastSeen = now; s.workloads[key]?.connected = true }
            return true
        }
        if etcd != nil && !same {
            guard try commit(current, next, conflictAt: &conflictAt) != nil else { return false }
            state.withLock { $0.workloads[key]?.lastSeen = now }
            if !same { Log.info("registry", "registered \(service).\(namespace) at \(address) (\(identity))") }
            return true
        }
        state.withLock { s in
            s.workloads[key] = w
            if !same { s.version += 1; s.vips = next.vips }
        }
        if !same {
            persistRegistry()
            notifyChanged()
            Log.info("registry", "registered \(service).\(namespace) at \(address) (\(identity))")
        }
        return true
    }

    /// Marks a sidecar's stream alive (called while it waits for config). `node` tells apart
    /// sidecars sharing an identity (its registered address, or its own id for a caller-only one).
    /// `digest`: the config the sidecar says it has (its last answered one); taken as its ACKed
    /// config when this meshd sent it nothing yet (after a restart, or from another replica).
    /// `request`: a config request, whose `gateway` labels (nil: not a gateway) replace the
    /// entry's, so a later sidecar with the same identity and node is not scoped as a gateway.
    public func seen(identity: String, node: String, admin: String = "", digest: String = "", nacked: Bool = false,
                     gateway: [(String, String)]? = nil, request: Bool = true) {
        let now = MeshCrypto.now()
        state.withLock { s in
            let k = "\(identity)|\(node)"
            if s.workloads[k] != nil { s.workloads[k]!.lastSeen = now; s.workloads[k]!.connected = true }
            if s.proxies[k] == nil { s.proxies[k] = ProxyStatus(identity: identity, connected: true, node: node) }
            s.proxies[k]!.connected = true
            s.proxies[k]!.lastSeen = now
            if !admin.isEmpty { s.proxies[k]!.admin = admin }
            if request { s.proxies[k]!.gatewayLabels = gateway }
            if !digest.isEmpty && s.proxies[k]!.sentDigest.isEmpty { s.proxies[k]!.ackedDigest = digest }
            if nacked && s.proxies[k]!.sentDigest.isEmpty && s.proxies[k]!.nack == nil {
                s.proxies[k]!.nack = "the config it has was refused (NACKed) where it was sent: at another replica or before meshd restarted"
            }
        }
    }

    /// Drops workloads not seen for the grace period (and never before meshd's own grace after a
    /// restart); marks quiet proxies disconnected.
    public func expire() {
        if etcd != nil { return expireShared(fence: nil, live: nil) }
        let now = MeshCrypto.now()
        let removed = state.withLock { s -> [String] in
            var gone: [String] = []
            for (k, w) in s.workloads where now - w.lastSeen > grace && now - s.startedAt > grace && s.streams[k] == nil {
                s.workloads.removeValue(forKey: k)
                gone.append("\(w.service).\(w.namespace) at \(w.address)")
            }
            // A stream re-polls at least every 20 s: silence beyond that means the sidecar is away.
            for (k, p) in s.proxies where now - p.lastSeen > min(40, grace) && s.streams[k] == nil { s.proxies[k]!.connected = false }
            // A sidecar away longer than the grace period leaves meshd's status (and its metrics).
            for (k, p) in s.proxies where !p.connected && s.streams[k] == nil && now - p.lastSeen > grace { s.proxies.removeValue(forKey: k) }
            if !gone.isEmpty { s.version += 1 }
            return gone
        }
        if !removed.isEmpty {
            persistRegistry()
            notifyChanged()
            for r in removed { Log.info("registry", "removed \(r): its sidecar is gone") }
        }
    }

    /// Why this replica refuses the config in etcd (nil: it accepts it and serves).
    public let refusal = Locked<String?>(nil)

    /// Whether a sidecar at `version` must wait here rather than be sent an older config
    /// (shared store: this replica's view is behind etcd; see `EtcdStateStore.isBehind`).
    public func shouldWait(forVersion version: Int) -> Bool {
        guard let etcd, version > self.version else { return false }
        return etcd.isBehind(version)
    }

    /// When the leader first saw each workload whose holder replica is gone (shared store).
    private let orphanSince = Locked<[String: Int64]>([:])

    /// Expiry on the shared store, run by every replica: it drops the workloads it holds whose
    /// sidecars are gone (as `expire` does on the file store); the leader (`fence`: its election
    /// compare, which etcd checks in the same transaction, so a deposed leader removes nothing;
    /// `live`: the replicas present now) also drops workloads whose holder has been gone for the
    /// grace period and were not picked up by another replica meanwhile. A commit that loses to
    /// another replica's is left for the next round.
    public func expireShared(fence: EtcdCompare?, live: Set<String>?) {
        guard let etcd else { return expire() }
        etcd.refreshLatest()
        let now = MeshCrypto.now()
        state.withLock { s in
            for (k, p) in s.proxies where now - p.lastSeen > min(40, grace) && s.streams[k] == nil { s.proxies[k]!.connected = false }
            // A sidecar away longer than the grace period leaves meshd's status (and its metrics).
            for (k, p) in s.proxies where !p.connected && s.streams[k] == nil && now - p.lastSeen > grace { s.proxies.removeValue(forKey: k) }
        }
        applyLock.lock()
        defer { applyLock.unlock() }
        let current = state.withLock { $0 }
        var own: [String] = [], orphans: [String] = []
        let orphaned = orphanSince.withLock { since -> [String: Int64] in
            var next: [String: Int64] = [:]
            for (k, w) in current.workloads where w.holder != etcd.replica {
                if let live, fence != nil, !live.contains(w.holder) { next[k] = since[k] ?? now }
            }
            since = next
            return next
        }
        for (k, w) in current.workloads {
            if w.holder == etcd.replica {
                if now - w.lastSeen > grace && now - current.startedAt > grace && current.streams[k] == nil { own.append(k) }
            } else if let t = orphaned[k], now - t > grace {
                orphans.append(k)
            }
        }
        // At most 100 removals a transaction (etcd's limit on operations).
        let batches = stride(from: 0, to: own.count, by: 100).map { (Array(own[$0..<min($0 + 100, own.count)]), nil as EtcdCompare?, "its sidecar is gone") }
            + stride(from: 0, to: orphans.count, by: 100).map { (Array(orphans[$0..<min($0 + 100, orphans.count)]), fence, "its replica is gone and its sidecar did not come back") }
        for (chosen, f, why) in batches {
            let base = state.withLock { $0 }
            // Chosen on an earlier view: a sidecar that came back or moved meanwhile stays.
            let keys = chosen.filter { k in
                guard let w = base.workloads[k], base.streams[k] == nil else { return false }
                return f == nil ? (w.holder == etcd.replica && now - w.lastSeen > grace) : w.holder != etcd.replica
            }
            if keys.isEmpty { continue }
            var next = base
            for k in keys { next.workloads.removeValue(forKey: k) }
            var at = 0
            do {
                if try commit(base, next, conflictAt: &at, fence: f) != nil {
                    for k in keys { if let w = base.workloads[k] { Log.info("registry", "removed \(w.service).\(w.namespace) at \(w.address): \(why)") } }
                }
            } catch {
                Log.warn("registry", "expiry: \(error.description)")
            }
        }
    }

    private func persistRegistry() {
        let st = state.withLock { $0 }
        do { try StateFiles(stateDir: stateDir).saveRegistry(st) } catch {
            Log.error("registry", "cannot persist the registry: \(error)")
        }
    }

    public func workloads() -> [Workload] { state.withLock { Array($0.workloads.values) }.sorted { $0.address < $1.address } }

    // MARK: per-proxy config and the stream

    /// The config for one sidecar: every registered service as a cluster (mTLS, HTTP/2; endpoints
    /// labelled by workload), a default route for services without a VirtualService, and the
    /// documents in force.
    public func proxyConfig() -> (version: Int, text: String) {
        if let r = state.withLock({ s in s.rendered.flatMap { $0.version == s.version ? $0 : nil } }) { return r }
        let r = render()
        state.withLock { s in if s.version == r.version { s.rendered = r } }
        return r
    }

    /// What meshd would push to one sidecar now: the version in force, its scope's config and
    /// the digest of that (`MeshCrypto.digestHex`). A sidecar whose config already has this
    /// digest gets nothing. `identity` and `node` name the sidecar: its namespace and its
    /// registered labels choose its scope (ProxyConfigScope.swift).
    public func proxyConfig(identity: String, node: String) -> ProxyConfigSnapshot {
        var snap = scopedConfig(identity: identity, node: node)
        addSecrets(&snap, identity: identity, node: node)
        let (pem, digest) = bundle.withLock { $0 }
        if !pem.isEmpty {
            snap.bundle = pem
            snap.digest = MeshCrypto.digestHex(snap.digest + digest)
        }
        return snap
    }

    /// The trust bundle every sidecar is sent with its config, and its digest.
    private let bundle = Locked<(pem: String, digest: String)>(("", ""))

    /// Sets the trust bundle that travels with the config (meshd's roots in force): a new one
    /// reaches every sidecar at once, a root rotation step does not wait for renewals.
    public func setTrustBundle(_ pem: String) {
        let changed = bundle.withLock { b -> Bool in
            guard b.pem != pem else { return false }
            b = (pem, MeshCrypto.digestHex(pem))
            return true
        }
        if changed { notifyChanged() }
    }

    /// Calls `f` after every change of the version (an apply, a registration, an expiry), on the
    /// thread that made it; `f` must be quick (post to a loop).
    public func onChange(_ f: @escaping @Sendable () -> Void) {
        observers.withLock { $0.append(f) }
    }

    func notifyChanged() {
        changed.broadcast()
        for f in observers.withLock({ $0 }) { f() }
    }

    private func render() -> (version: Int, text: String) {
        let s = currentState()
        return (s.version, ConfigStore.renderProxyConfig(s, trustDomain: trustDomain).text)
    }

    /// The state in force (a copy; its collections are shared until written).
    func currentState() -> State { state.withLock { $0 } }

    /// Every mesh host in force with its addresses (allocated, or a ServiceEntry's own), sorted.
    public func serviceAddresses() -> [(host: String, addresses: [String])] {
        let st = state.withLock { $0 }
        guard let h = try? ConfigStore.meshHosts(st) else { return [] }
        return (h.auto.map { ($0, ConfigStore.vipTexts(st.vips, $0)) } + h.explicit).sorted { $0.host < $1.host }
    }

    /// Changes arriving within this window go out as one push (a burst of applies and
    /// registrations makes one new config, not many).
    static let debounce: UInt32 = 20_000

    /// A config stream opened (`streamOpened`) or closed (`streamClosed`) for a sidecar
    /// (identity and node): while one is open the sidecar counts as connected and its workload
    /// is never expired.
    public func streamOpened(identity: String, node: String) {
        state.withLock { $0.streams["\(identity)|\(node)", default: 0] += 1 }
    }

    public func streamClosed(identity: String, node: String) {
        let k = "\(identity)|\(node)"
        state.withLock { s in
            s.streams[k, default: 1] -= 1
            if s.streams[k]! <= 0 {
                // Its last stream here ended: it is away from this replica (moved or gone).
                s.streams.removeValue(forKey: k)
                s.proxies[k]?.connected = false
            }
        }
    }

    /// Records what a sidecar was sent and its answer.
    /// Records a config sent to a sidecar; returns the nonce its answer must carry.
    public func sent(identity: String, node: String, version: Int, digest: String = "") -> String {
        let nonce = MeshCrypto.randomHex(bytes: 6)
        state.withLock { s in
            let k = "\(identity)|\(node)"
            if s.proxies[k] == nil { s.proxies[k] = ProxyStatus(identity: identity, connected: true, node: node) }
            s.proxies[k]!.sentVersion = version
            s.proxies[k]!.sentDigest = digest
            s.proxies[k]!.nonce = nonce
        }
        return nonce
    }

    /// A sidecar's ACK (error nil) or NACK; false when the nonce is not the one last sent to it
    /// (a stale or foreign answer, ignored).
    @discardableResult
    public func answered(identity: String, node: String, version: Int, nonce: String, error: String?) -> Bool {
        state.withLock { s -> Bool in
            let k = "\(identity)|\(node)"
            guard let p = s.proxies[k], p.nonce == nonce, p.sentVersion == version else { return false }
            if let e = error { s.proxies[k]!.nack = "version \(version): \(e)" } else {
                if version > s.proxies[k]!.ackedVersion, let t0 = s.versionTimes[version] {
                    // Convergence: from the apply that made this version to this proxy's ACK.
                    let ms = Double(Clock.monotonicNanos() - t0) / 1e6
                    let i = ConfigStore.convergenceBuckets.firstIndex { ms <= $0 } ?? ConfigStore.convergenceBuckets.count
                    s.convergence[i] += 1
                    s.convergenceSum += ms
                }
                s.proxies[k]!.ackedVersion = max(s.proxies[k]!.ackedVersion, version)
                s.proxies[k]!.ackedDigest = p.sentDigest
                s.proxies[k]!.nack = nil
            }
            if let e = error { Log.warn("config", "\(identity) NACKed version \(version): \(e)") }
            return true
        }
    }

    static let convergenceBuckets: [Double] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]

    /// The push convergence histogram as Prometheus text.
    public func convergenceMetrics() -> String {
        let (counts, sum) = state.withLock { ($0.convergence, $0.convergenceSum) }
        var out = "# HELP meshd_config_push_convergence_milliseconds From an apply to each proxy's ACK of it.\n"
        out += "# TYPE meshd_config_push_convergence_milliseconds histogram\n"
        var cum: UInt64 = 0
        for (i, le) in ConfigStore.convergenceBuckets.enumerated() {
            cum += counts[i]
            out += "meshd_config_push_convergence_milliseconds_bucket{le=\"\(Int(le))\"} \(cum)\n"
        }
        cum += counts[ConfigStore.convergenceBuckets.count]
        out += "meshd_config_push_convergence_milliseconds_bucket{le=\"+Inf\"} \(cum)\n"
        out += "meshd_config_push_convergence_milliseconds_sum \(sum)\nmeshd_config_push_convergence_milliseconds_count \(cum)\n"
        return out
    }

    public func proxies() -> [ProxyStatus] { state.withLock { Array($0.proxies.values) }.sorted { ($0.identity, $0.node) < ($1.identity, $1.node) } }
}

/// What meshd would push to one sidecar: the version in force, the config and its digest.
public struct ProxyConfigSnapshot: Sendable, Equatable {
    public var version: Int
    /// The digest of the text and the trust bundle together.
    public var digest: String
    public var text: String
    /// The trust bundle (PEM) that travels with the config (empty: none given to the store).
    public var bundle: String = ""
    /// The digest of the text alone (a delta push names it; DeltaPushes.swift).
    public var textDigest: String = ""
    /// The TLS secrets this sidecar serves (a gateway's `credentialName`s; SecretStore.swift).
    public var secrets: [TLSSecret] = []
}

/// A condition variable for waiting config streams.
final class Condition: @unchecked Sendable {
    private var m = pthread_mutex_t()
    private var c = pthread_cond_t()
    private var generation = 0
    init() { pthread_mutex_init(&m, nil); pthread_cond_init(&c, nil) }
    deinit { pthread_cond_destroy(&c); pthread_mutex_destroy(&m) }

    func broadcast() {
        pthread_mutex_lock(&m)
        generation += 1
        pthread_cond_broadcast(&c)
        pthread_mutex_unlock(&m)
    }

    func wait(nanos: UInt64) {
        pthread_mutex_lock(&m)
        let g = generation
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let total = UInt64(ts.tv_nsec) + nanos
        ts.tv_sec += Int(total / 1_000_000_000)
        ts.tv_nsec = Int(total % 1_000_000_000)
        while generation == g {
            if pthread_cond_timedwait(&c, &m, &ts) != 0 { break }
        }
        pthread_mutex_unlock(&m)
    }
}
