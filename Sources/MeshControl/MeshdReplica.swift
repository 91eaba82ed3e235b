import MeshEtcd
import MeshCA
import MeshPKI
import MeshCore
import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// One meshd among replicas on etcd (DESIGN §12): it says it is present (a key on a lease of
/// its own, so the leader can tell the replicas that died), campaigns for leadership (an
/// election on a lease with a TTL of a few seconds; singleton work runs only while `isLeader`
/// and its writes carry `fence`), and reads the secrets every replica shares (the join-token
/// signing key and the admin token), which the first replica creates.
public final class MeshdReplica: @unchecked Sendable {
    public let id: String
    public let endpoints: String
    let client: EtcdClient
    let election: EtcdElection
    static let presencePrefix = "/mesh/replicas/"
    static let leaderKey = "/mesh/leader"
    static let secretsPrefix = "/mesh/secrets/"
    /// The presence lease's TTL: a replica gone this long no longer holds its workloads.
    static let presenceTTL = 10

    public init(client: EtcdClient, endpoints: String, id: String, leaderTTL: Int) {
        self.client = client
        self.endpoints = endpoints
        self.id = id
        election = EtcdElection(client: client, key: MeshdReplica.leaderKey, id: id, ttl: leaderTTL)
    }

    /// Whether this replica leads now (false as soon as its lease may have lapsed).
    public var isLeader: Bool { election.isLeader }
    /// The compare every leader-only write carries (nil when not leading).
    public var fence: EtcdCompare? { election.fence }

    /// The leader's id as etcd has it now (nil: none, or etcd unreachable).
    public func leader() -> String? { try? election.leader() }

    /// The replicas present now (nil when etcd cannot say: expire nothing on a guess).
    public func liveReplicas() -> Set<String>? {
        guard let r = try? client.range(prefix: MeshdReplica.presencePrefix) else { return nil }
        return Set(r.kvs.map { String($0.key.dropFirst(MeshdReplica.presencePrefix.count)) })
    }

    /// The secrets every replica shares, created by the first one to ask (a transaction: two
    /// replicas starting together agree on one pair).
    public func sharedSecrets() throws(CAError) -> (tokenKey: String, adminToken: String) {
        let tk = MeshdReplica.secretsPrefix + "token-key", at = MeshdReplica.secretsPrefix + "admin-token"
        do {
            _ = try client.txn(compare: [.createRevision(tk, 0)],
                               success: [.put(tk, Array(MeshCrypto.randomHex(bytes: 32).utf8)), .put(at, Array(MeshCrypto.randomHex(bytes: 24).utf8))])
            let r = try client.txn(compare: [], success: [.get(tk), .get(at)])
            guard r.gets.count == 2, r.gets[0].key == tk, r.gets[1].key == at,
                  FileStore.secretProblem(r.gets[0].valueText, digits: 64) == nil, FileStore.secretProblem(r.gets[1].valueText, digits: 48) == nil else {
                throw CAError("etcd (\(endpoints)): \(tk) and \(at) must hold 64 and 48 hex digits; restore them or remove both")
            }
            return (r.gets[0].valueText, r.gets[1].valueText)
        } catch {
            throw EtcdStateStore.startError(error, endpoints)
        }
    }

    /// The presence lease `claim` took, kept alive by `keepPresent`.
    private let presenceLease = Locked<Int64>(0)

    /// Takes this replica's presence key, which no other live replica may hold: two replicas
    /// with one id would each take the other's sidecars for its own and expire them. A key left
    /// by this id's previous process lapses with its lease (`presenceTTL`); it is waited for.
    public func claim() throws(CAError) {
        let key = MeshdReplica.presencePrefix + id
        let deadline = Clock.monotonicNanos() + UInt64(MeshdReplica.presenceTTL + 2) * 1_000_000_000
        do {
            let lease = try client.leaseGrant(ttl: MeshdReplica.presenceTTL).id
            while true {
                let r = try client.txn(compare: [.createRevision(key, 0)], success: [.put(key, Array(id.utf8), lease: lease)])
                if r.succeeded { presenceLease.withLock { $0 = lease }; return }
                if Clock.monotonicNanos() >= deadline {
                    try? client.leaseRevoke(lease)
                    throw CAError("--replica-id \(id): another meshd holds it (etcd key \(key) is alive); give every replica its own id")
                }
                usleep(500_000)
            }
        } catch {
            throw EtcdStateStore.startError(error, endpoints)
        }
    }

    /// Starts the presence key and the campaign (their own threads).
    public func start() {
        Threads.spawnDetached { [self] in keepPresent() }
        election.start(onElected: { [id] in Log.info("replica", "\(id) is the leader now") },
                       onLost: { [id] in Log.warn("replica", "\(id) is no longer the leader") })
    }

    /// Keeps `/mesh/replicas/ID` on a lease of its own for as long as the process lives,
    /// granting a new lease when the old one lapsed (etcd was away).
    private func keepPresent() {
        var lease: Int64 = presenceLease.withLock { $0 }
        while true {
            do {
                if lease == 0 {
                    lease = try client.leaseGrant(ttl: MeshdReplica.presenceTTL).id
                    _ = try client.put(MeshdReplica.presencePrefix + id, Array(id.utf8), lease: lease)
                }
                if try client.leaseKeepAlive(lease, timeout: 2) <= 0 { lease = 0; continue }
            } catch {
                Log.warn("replica", "presence in etcd (\(endpoints)): \(error.description)")
                lease = 0
            }
            usleep(UInt32(MeshdReplica.presenceTTL) * 1_000_000 / 3)
        }
    }

    /// Gives up leadership at once (SIGTERM), so another replica takes over without waiting
    /// for the lease to lapse.
    public func resign() { election.resign() }

    /// A line for `meshctl status`.
    public var statusLine: String {
        let who: String
        do { who = try election.leader() ?? "none" } catch { who = "unknown (etcd: \(error.description))" }
        return "replica \(id): \(isLeader ? "leader" : "standby") (store etcd \(endpoints); leader \(who))"
    }
}
