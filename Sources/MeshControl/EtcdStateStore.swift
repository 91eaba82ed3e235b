import MeshEtcd
import MeshCA
import MeshPKI
import MeshConfig
import MeshCore
import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// meshd's state in etcd (`meshd --store etcd://...`, DESIGN §12), shared by every replica.
/// Under `/mesh/config/`: one key per document (`docs/KIND/NAMESPACE/NAME`, its text), one per
/// registered workload (`registry/IDENTITY|ADDRESS`, the registry line and the holding replica),
/// the VIP table (`vips`), the documents' order (`order`) and `rev`, which every write puts: a write is one transaction that
/// compares `rev`'s mod revision with the one its change was computed from, so two replicas
/// can never both commit from the same state (the loser re-reads and tries again), and the
/// config version is that revision, the same on every replica. Each replica mirrors the prefix: list, then watch from the next
/// revision, and list again when etcd compacted what it was behind on.
final class EtcdStateStore: @unchecked Sendable {
    static let prefix = "/mesh/config/"
    static let docs = "/mesh/config/docs/"
    static let registry = "/mesh/config/registry/"
    static let vips = "/mesh/config/vips"
    static let rev = "/mesh/config/rev"
    /// The documents' keys in apply order, one a line (documents written in one transaction
    /// share a create revision, so that alone cannot order them).
    static let order = "/mesh/config/order"

    let client: EtcdClient
    /// This replica's id (the holder of the workloads whose streams it serves).
    let replica: String
    /// What the endpoints were given as, for messages.
    let endpoints: String
    /// Every key under the prefix as last seen, and the revision the mirror is at.
    private let mirror = Locked<(kvs: [String: EtcdKeyValue], revision: Int64)>(([:], 0))

    init(client: EtcdClient, replica: String, endpoints: String) {
        self.client = client
        self.replica = replica
        self.endpoints = endpoints
    }

    /// Why a commit did not happen: another replica wrote first (`conflict`, with the revision
    /// to wait for before trying again) or etcd could not be reached (`failed`).
    enum CommitError: Error {
        case conflict(Int64)
        case failed(String)
    }

    /// Reads the whole prefix (creating `rev` when the store is new) and returns the state it
    /// holds; the mirror is then at the revision read.
    func load() throws(CAError) -> ConfigStore.State {
        do {
            _ = try client.txn(compare: [.createRevision(EtcdStateStore.rev, 0)], success: [.put(EtcdStateStore.rev, Array(replica.utf8))])
            let (kvs, revision) = try client.range(prefix: EtcdStateStore.prefix)
            let map = Dictionary(kvs.map { ($0.key, $0) }, uniquingKeysWith: { _, b in b })
            mirror.withLock { $0 = (map, revision) }
            return try EtcdStateStore.state(from: map)
        } catch {
            throw EtcdStateStore.startError(error, endpoints)
        }
    }

    /// An error at start (reading the store, the shared secrets, the replica's id) as meshd
    /// reports it: etcd's own errors name the endpoints given; meshd's pass as they are.
    static func startError(_ error: any Error, _ endpoints: String) -> CAError {
        if let e = error as? CAError { return e }
        if let e = error as? EtcdError { return CAError("etcd (\(endpoints)): \(e.description)") }
        return CAError("etcd (\(endpoints)): \(error)")
    }

    /// Whether a sidecar's version is one this replica should wait for rather than answer with
    /// an older config: its view (the mirror) has not reached that version yet, and etcd does
    /// hold it (a version from another etcd history, or beyond what etcd holds, is not waited for).
    /// Asked on an API loop: no I/O there; etcd's latest version comes from `refreshLatest`,
    /// which the store's background thread calls every 2 s.
    func isBehind(_ version: Int) -> Bool {
        guard Int64(version) > revision else { return false }
        return version <= latest.withLock { $0 }
    }

    /// etcd's latest config version as last read (`refreshLatest`).
    private let latest = Locked<Int>(0)

    /// Reads etcd's latest config version (a linearizable read; kept when etcd cannot say).
    func refreshLatest() {
        if let v = storedVersion() { latest.withLock { $0 = v } }
    }

    /// The revision the mirror is at.
    var revision: Int64 { mirror.withLock { $0.revision } }

    /// The state the keys hold: documents in create order, workloads, VIPs; the version is
    /// `rev`'s mod revision. A key that cannot be read is an error naming it (never a state
    /// with it silently missing).
    static func state(from kvs: [String: EtcdKeyValue]) throws(CAError) -> ConfigStore.State {
        var st = ConfigStore.State()
        st.version = Int(kvs[rev]?.modRevision ?? 0)
        // The stored order first; a document it does not list (written by an older meshd or by
        // hand) after those, by create revision.
        var rank: [String: Int] = [:]
        for (i, k) in (kvs[order]?.valueText ?? "").split(separator: "\n").enumerated() where rank[String(k)] == nil { rank[String(k)] = i }
        let listed = kvs.values.filter { $0.key.hasPrefix(docs) }.sorted { a, b in
            let ra = rank[String(a.key.dropFirst(docs.count))] ?? Int.max, rb = rank[String(b.key.dropFirst(docs.count))] ?? Int.max
            return ra != rb ? ra < rb : a.createRevision != b.createRevision ? a.createRevision < b.createRevision : a.key < b.key
        }
        for kv in listed {
            let where_ = "etcd key \(kv.key)"
            let found: [ConfigStore.Document]
            do { found = try ConfigStore.split(kv.valueText, file: where_) } catch { throw CAError("\(error.description)") }
            guard found.count == 1, var d = found.first, docs + d.key == kv.key else {
                throw CAError("\(where_): expected the one document its name says")
            }
            d.file = ""
            st.documents[d.key] = d
            st.order.append(d.key)
        }
        for kv in kvs.values where kv.key.hasPrefix(registry) {
            let w = try StateFiles.workload(fromLine: Substring(kv.valueText), at: "etcd key \(kv.key)", holder: true)
            guard registry + "\(w.identity)|\(w.address)" == kv.key else { throw CAError("etcd key \(kv.key): holds the workload \(w.identity)|\(w.address)") }
            st.workloads["\(w.identity)|\(w.address)"] = w
        }
        st.secrets = try secrets(from: kvs)
        if let v = kvs[vips] {
            do { st.vips = try VIPAllocator.parse(v.valueText, file: "etcd key \(vips)") } catch { throw CAError(error.description) }
        }
        return st
    }

    /// Commits the change from `current` to `next` in one transaction guarded by `rev` (and by
    /// `fence`, the leader's election key, for leader-only writes); returns the new version.
    func commit(from current: ConfigStore.State, to next: ConfigStore.State, fence: EtcdCompare? = nil) throws(CommitError) -> Int {
        var ops: [EtcdOp] = []
        for k in next.order where next.documents[k]!.text != current.documents[k]?.text {
            ops.append(.put(EtcdStateStore.docs + k, Array(next.documents[k]!.text.utf8)))
        }
        for k in current.order where next.documents[k] == nil { ops.append(.delete(EtcdStateStore.docs + k)) }
        for (k, w) in next.workloads {
            let line = StateFiles.line(of: w) + "\t" + w.holder
            if let o = current.workloads[k], StateFiles.line(of: o) + "\t" + o.holder == line { continue }
            ops.append(.put(EtcdStateStore.registry + k, Array(line.utf8)))
        }
        var compare: [EtcdCompare] = [.modRevision(EtcdStateStore.rev, Int64(current.version))]
        for (k, w) in current.workloads where next.workloads[k] == nil {
            ops.append(.delete(EtcdStateStore.registry + k))
            // Removed only as this view has it: a workload whose sidecar moved to another
            // replica since (a put that does not move `rev`) now names another holder, and the
            // transaction fails instead of removing a live workload.
            compare.append(.value(EtcdStateStore.registry + k, Array((StateFiles.line(of: w) + "\t" + w.holder).utf8)))
        }
        secretOps(from: current, to: next, into: &ops)
        if next.vips != current.vips { ops.append(.put(EtcdStateStore.vips, Array(next.vips.serialized().utf8))) }
        if next.order != current.order { ops.append(.put(EtcdStateStore.order, Array(next.order.joined(separator: "\n").utf8))) }
        // `rev` names the commit: a transaction resent after a broken connection that had in
        // fact landed is recognised by it (the compare then fails on its own write).
        let stamp = "\(replica) \(MeshCrypto.randomHex(bytes: 8))"
        ops.append(.put(EtcdStateStore.rev, Array(stamp.utf8)))
        if let f = fence { compare.append(f) }
        // etcd's limits on one transaction (--max-txn-ops 128, --max-request-bytes 1.5 MiB, and
        // values travel base64): say so rather than fail at etcd on every retry.
        let bytes = ops.reduce(0) { n, op in if case .put(let k, let v, _) = op { return n + k.utf8.count + v.count } else { return n } }
        // etcd bounds the compares and the operations of a transaction each (not their sum).
        if ops.count > EtcdStateStore.maxTxnOps || compare.count > EtcdStateStore.maxTxnOps || bytes > EtcdStateStore.maxTxnBytes {
            throw .failed("this change writes \(ops.count) key(s), \(bytes) bytes, in one etcd transaction; etcd takes at most "
                          + "\(EtcdStateStore.maxTxnOps) operations and about \(EtcdStateStore.maxTxnBytes / 1000) kB: apply it in smaller parts")
        }
        let r: EtcdTxnResult
        do { r = try client.txn(compare: compare, success: ops, failure: [.get(EtcdStateStore.rev)]) } catch {
            throw .failed("etcd (\(endpoints)): \(error.description)")
        }
        guard r.succeeded else {
            if let now = r.gets.first, now.valueText == stamp { return Int(now.modRevision) }   // our own write, resent
            // Another replica wrote first (or this one is no longer the leader): the revision
            // to catch up to before computing the change again.
            throw .conflict(r.gets.first?.modRevision ?? r.revision)
        }
        return Int(r.revision)
    }

    /// Operations and bytes one commit may hold (etcd's defaults, with room for the compares
    /// and the JSON and base64 around the values).
    static let maxTxnOps = 120
    static let maxTxnBytes = 1_000_000

    /// A sidecar that moved to this replica: its registration, unchanged but for the holder,
    /// is put on its own key guarded by that key's mod revision. It does not move `rev`: no new
    /// config version, nothing to validate or render, nothing pushed. Returns false when the
    /// key changed meanwhile (the caller reads again).
    /// Whether the mirror has this workload's registry key (a move can be written on it alone).
    func hasRegistryKey(_ key: String) -> Bool { mirror.withLock { $0.kvs[EtcdStateStore.registry + key] != nil } }

    func moveHolder(key: String, to w: ConfigStore.Workload) throws(CommitError) -> Bool {
        let k = EtcdStateStore.registry + key
        guard let kv = mirror.withLock({ $0.kvs[k] }) else { return false }
        let line = StateFiles.line(of: w) + "\t" + w.holder
        do {
            return try client.txn(compare: [.modRevision(k, kv.modRevision)], success: [.put(k, Array(line.utf8))]).succeeded
        } catch {
            throw .failed("etcd (\(endpoints)): \(error.description)")
        }
    }

    /// The latest revision etcd has for `rev` (a linearizable read), nil when etcd cannot say.
    func storedVersion() -> Int? {
        (try? client.get(EtcdStateStore.rev)).flatMap { $0.kv.map { Int($0.modRevision) } }
    }

    /// Follows the prefix for ever (on its own thread): every batch of events goes to the
    /// mirror, and when `rev` moved, `install` gets the state at the new version. A watch behind
    /// a compaction lists again and goes on from there. Connection errors retry after a second.
    func follow(install: @escaping (ConfigStore.State) -> Void, holders: @escaping ([String: String]) -> Void) {
        while true {
            let from = revision + 1
            do {
                let end = try client.watch(prefix: EtcdStateStore.prefix, fromRevision: from) { events, rev in
                    var registryPuts: [String: String] = [:]
                    let moved = self.mirror.withLock { m -> Bool in
                        var moved = false
                        for e in events {
                            switch e {
                            case .put(let kv):
                                m.kvs[kv.key] = kv
                                if kv.key == EtcdStateStore.rev { moved = true }
                                if kv.key.hasPrefix(EtcdStateStore.registry) {
                                    registryPuts[String(kv.key.dropFirst(EtcdStateStore.registry.count))] = kv.valueText
                                }
                            case .delete(let key, _):
                                m.kvs.removeValue(forKey: key)
                            }
                        }
                        m.revision = max(m.revision, rev)
                        return moved
                    }
                    if moved { self.installMirror(install) }
                    if !registryPuts.isEmpty {
                        // Sidecars that moved between replicas (only their holder changed; also
                        // when a commit came in the same batch and its version was already in
                        // force here): who holds them follows what etcd has.
                        var moves: [String: String] = [:]
                        for (k, line) in registryPuts {
                            if let w = try? StateFiles.workload(fromLine: Substring(line), at: k, holder: true) { moves[k] = w.holder }
                        }
                        holders(moves)
                    }
                    return true
                }
                if case .compacted(let at) = end {
                    Log.warn("store", "etcd compacted revision \(from) away (now at \(at)): listing \(EtcdStateStore.prefix) again")
                    let (kvs, revision) = try client.range(prefix: EtcdStateStore.prefix)
                    mirror.withLock { $0 = (Dictionary(kvs.map { ($0.key, $0) }, uniquingKeysWith: { _, b in b }), revision) }
                    installMirror(install)
                }
            } catch {
                Log.warn("store", "etcd watch (\(endpoints)): \(error); retrying")
                usleep(1_000_000)
            }
        }
    }

    private func installMirror(_ install: (ConfigStore.State) -> Void) {
        let kvs = mirror.withLock { $0.kvs }
        do { install(try EtcdStateStore.state(from: kvs)) } catch {
            // Only a write that bypassed meshd (etcdctl) can get here: keep the config in force.
            Log.error("store", "the state in etcd cannot be read, the config in force stays: \(error.description)")
        }
    }
}
