import MeshCore
import MeshIO

/// Leader election on an etcd lease (RESEARCH §3.1). Campaign: a transaction "if the key's
/// create revision is 0 (absent), put(key, id) with my lease". The leader is whoever holds the
/// key. The leader keeps its lease alive every ttl/3 and steps down at once (calls `onLost`)
/// when a keepalive fails (it may take at most ttl/3, failing over between endpoints), answers
/// TTL <= 0, or when no keepalive has succeeded for the lease's TTL by the monotonic clock: the
/// clock is checked before every action, so a process paused past its TTL (SIGSTOP) steps down
/// on waking before it sends anything. `isLeader` needs no I/O and turns false the moment the
/// lease may have expired. Followers hold no lease: they watch the key and campaign when it
/// is deleted (the leader's lease expired or was revoked). `fence` is the compare a
/// leader-only write must carry (the key's create revision is the one this leader won with),
/// so a deposed leader's writes fail inside etcd even while it still believes it leads.
///
/// Everything runs on one thread of its own; `onElected` and `onLost` are called from it, in
/// that order, once per term.
public final class EtcdElection: @unchecked Sendable {
    public let client: EtcdClient
    public let key: String
    public let id: String
    public let ttl: Int

    private struct State {
        var started = false
        var resigned = false
        var leader = false
        var leaseID: Int64 = 0
        /// Monotonic ns until which the lease is surely alive in etcd (the send time of the
        /// last successful grant or keepalive plus the TTL etcd answered).
        var validUntil: UInt64 = 0
        var createRevision: Int64 = 0
        /// Test hook: the thread acts as if stopped until this monotonic time.
        var frozenUntil: UInt64 = 0
        /// Keepalives sent (tests).
        var keepalivesSent = 0
    }
    private let state = Locked(State())

    /// `ttl`: the lease's TTL in seconds (etcd raises it to its minimum, 2 s with default
    /// timings); the leader renews every ttl/3.
    public init(client: EtcdClient, key: String, id: String, ttl: Int) {
        self.client = client
        self.key = key
        self.id = id
        self.ttl = max(ttl, 1)
    }

    /// Starts campaigning on a thread of its own (a second call does nothing).
    public func start(onElected: @escaping @Sendable () -> Void, onLost: @escaping @Sendable () -> Void) {
        let first = state.withLock { s -> Bool in
            if s.started { return false }
            s.started = true
            return true
        }
        guard first else { return }
        Threads.spawnDetached { [self] in run(onElected: onElected, onLost: onLost) }
    }

    /// Whether this process leads now: false as soon as the lease may have expired (by the
    /// monotonic clock), after `resign()`, or before the first election. No I/O.
    public var isLeader: Bool {
        state.withLock { s in s.leader && !s.resigned && Clock.monotonicNanos() < s.validUntil }
    }

    /// The compare a leader-only write must include; nil when not leader.
    public var fence: EtcdCompare? {
        state.withLock { s in
            s.leader && !s.resigned && Clock.monotonicNanos() < s.validUntil ? .createRevision(key, s.createRevision) : nil
        }
    }

    /// The lease this process holds (0: none).
    public var leaseID: Int64 { state.withLock { $0.leaseID } }

    /// The id stored under the key now (nil: no leader).
    public func leader() throws(EtcdError) -> String? {
        try client.get(key).kv?.valueText
    }

    /// Stops campaigning and revokes the lease (on SIGTERM), so another replica takes over at
    /// once. `isLeader` is false when this returns; if this process led, `onLost` follows from
    /// the election's thread.
    public func resign() {
        let lease = state.withLock { s -> Int64 in
            s.resigned = true
            return s.leaseID
        }
        if lease != 0 { try? client.leaseRevoke(lease, timeout: min(client.timeout, 2)) }
    }

    /// Test hook: the election's thread does nothing for `seconds` from its next step, as if
    /// the process were stopped (SIGSTOP), then carries on.
    func freezeForTesting(seconds: Double) {
        state.withLock { $0.frozenUntil = Clock.monotonicNanos() + EtcdClient.nanos(seconds) }
    }

    /// Keepalives sent so far (tests).
    var keepalivesSentForTesting: Int { state.withLock { $0.keepalivesSent } }

    // MARK: the thread

    private var resigned: Bool { state.withLock { $0.resigned } }

    /// Sleeps up to `nanos` in short steps; false when resigned meanwhile.
    private func pause(_ nanos: UInt64) -> Bool {
        let until = Clock.monotonicNanos() + nanos
        while true {
            if resigned { return false }
            let now = Clock.monotonicNanos()
            if now >= until { return true }
            EtcdClient.sleep(nanos: min(until - now, 50_000_000))
        }
    }

    /// Honours the test freeze: blocks while frozen.
    private func frozenWait() {
        while true {
            let until = state.withLock { $0.frozenUntil }
            let now = Clock.monotonicNanos()
            if now >= until { return }
            EtcdClient.sleep(nanos: until - now)
        }
    }

    private func run(onElected: @escaping @Sendable () -> Void, onLost: @escaping @Sendable () -> Void) {
        let retryGap = EtcdClient.nanos(max(0.2, Double(ttl) / 3))
        while !resigned {
            frozenWait()
            // Observe: while someone holds the key, wait for it to go.
            let current: (kv: EtcdKeyValue?, revision: Int64)
            do { current = try client.get(key) } catch { _ = pause(retryGap); continue }
            if current.kv != nil {
                _ = try? client.watchRange(key: Array(key.utf8), rangeEnd: nil, name: key, fromRevision: current.revision + 1,
                                           stop: { [self] in resigned }) { events, _ in
                    !events.contains { if case .delete = $0 { return true }; return false }
                }
                continue
            }
            // Campaign with a fresh lease.
            let sent = Clock.monotonicNanos()
            let lease: (id: Int64, ttl: Int)
            do { lease = try client.leaseGrant(ttl: ttl) } catch { _ = pause(retryGap); continue }
            let keep = state.withLock { s -> Bool in
                if s.resigned { return false }
                s.leaseID = lease.id
                s.validUntil = sent + UInt64(lease.ttl) * 1_000_000_000
                return true
            }
            if !keep { try? client.leaseRevoke(lease.id, timeout: 1); break }
            let won: EtcdTxnResult
            do {
                won = try client.txn(compare: [.createRevision(key, 0)],
                                     success: [.put(key, Array(id.utf8), lease: lease.id)], failure: [])
            } catch {
                dropLease(lease.id)
                _ = pause(retryGap)
                continue
            }
            if !won.succeeded { dropLease(lease.id); continue }
            let elected = state.withLock { s -> Bool in
                if s.resigned || Clock.monotonicNanos() >= s.validUntil { return false }
                s.leader = true
                s.createRevision = won.revision
                return true
            }
            if !elected { dropLease(lease.id); continue }
            onElected()
            lead(leaseID: lease.id, ttl: lease.ttl)
            state.withLock { $0.leader = false }
            onLost()
            dropLease(lease.id)
        }
    }

    /// Revokes a lease this process no longer uses (best effort: it expires anyway).
    private func dropLease(_ id: Int64) {
        try? client.leaseRevoke(id, timeout: 1)
        state.withLock { s in if s.leaseID == id { s.leaseID = 0 } }
    }

    /// Keeps the lease alive every ttl/3 until a keepalive fails, the lease is gone, it may have
    /// expired by the clock, or the election is resigned.
    private func lead(leaseID: Int64, ttl: Int) {
        let interval = UInt64(ttl) * 1_000_000_000 / 3
        var lastSent = Clock.monotonicNanos()
        while true {
            let wake = lastSent + interval
            while true {
                if resigned { return }
                frozenWait()
                let now = Clock.monotonicNanos()
                if now >= wake { break }
                EtcdClient.sleep(nanos: min(wake - now, 50_000_000))
            }
            // The clock first: a process that slept past its lease acts on nothing.
            let now = Clock.monotonicNanos()
            let validUntil = state.withLock { $0.validUntil }
            if now >= validUntil || resigned { return }
            state.withLock { $0.keepalivesSent += 1 }
            let budget = min(validUntil - now, interval)
            let left: Int
            do { left = try client.leaseKeepAlive(leaseID, timeout: Double(budget) / 1e9) } catch { return }
            if left <= 0 { return }
            let stillValid = state.withLock { s -> Bool in
                if Clock.monotonicNanos() >= s.validUntil { return false }
                s.validUntil = now + UInt64(left) * 1_000_000_000
                return true
            }
            if !stillValid { return }
            lastSent = now
        }
    }
}
