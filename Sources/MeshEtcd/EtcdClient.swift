import MeshCore
import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// A client of etcd v3 through its JSON gRPC gateway (`POST /v3/...`, plain HTTP/1.1), for
/// meshd's store and election. Calls block the calling thread; any thread may call (idle
/// connections are kept, up to four per endpoint). Every call has an overall deadline: it
/// starts at the endpoint that last worked and moves to the next one when an endpoint fails
/// (connect refused, reset, timeout, an HTTP 5xx, gRPC UNAVAILABLE, "no leader", "not leader",
/// "leader changed", "request timed out"), until the deadline passes; other etcd errors are
/// thrown at once. Errors name the endpoint.
///
/// A write whose connection broke after it was sent is tried again on the next endpoint (as
/// the brief asks): a put may then be applied twice (same value, one more revision), and a
/// transaction that did apply may report `succeeded: false` on the retry because its compare
/// no longer holds; callers that compare on revisions re-read and see their own write.
public final class EtcdClient: @unchecked Sendable {
    let endpoints: [EtcdEndpoint]
    /// The overall deadline of one call, in seconds.
    public let timeout: Double

    private struct State {
        var preferred = 0
        var idle: [[EtcdHTTPConnection]]
        var watchEpoch: UInt64 = 0
        /// Active watches: id -> endpoint text.
        var watches: [Int: String] = [:]
        var nextWatchID = 0
    }
    private let state: Locked<State>

    /// `endpoints`: `HOST:PORT` (IPv4, `[IPv6]` or a name getaddrinfo resolves); `timeout`: the
    /// overall deadline of one call in seconds. Throws when an endpoint cannot be parsed.
    public init(endpoints: [String], timeout: Double = 5) throws(EtcdError) {
        if endpoints.isEmpty { throw EtcdError("etcd: no endpoint given") }
        guard timeout > 0, timeout.isFinite else { throw EtcdError("etcd: timeout must be positive") }
        var parsed: [EtcdEndpoint] = []
        for e in endpoints {
            switch EtcdEndpoint.parse(e) {
            case .success(let p): parsed.append(p)
            case .failure(let err): throw err
            }
        }
        self.endpoints = parsed
        self.timeout = timeout
        state = Locked(State(idle: Array(repeating: [], count: parsed.count)))
    }

    /// The endpoints as given.
    public var endpointNames: [String] { endpoints.map { $0.text } }

    // MARK: calls

    /// Every key starting with `prefix` (linearizable), and the store's revision they were read at.
    public func range(prefix: String) throws(EtcdError) -> (kvs: [EtcdKeyValue], revision: Int64) {
        var w = JSONWriter()
        w.beginObject()
        w.string("key", Base64.encode(prefix))
        w.string("range_end", Base64.encode(EtcdWire.prefixEnd(Array(prefix.utf8))))
        w.endObject()
        return try call("/v3/kv/range", w.text) { a throws(EtcdError) in (try EtcdWire.keyValues(a["kvs"]), try EtcdWire.revision(a)) }
    }

    /// One key (linearizable), and the store's revision it was read at.
    public func get(_ key: String) throws(EtcdError) -> (kv: EtcdKeyValue?, revision: Int64) {
        var w = JSONWriter()
        w.beginObject(); w.string("key", Base64.encode(key)); w.endObject()
        return try call("/v3/kv/range", w.text) { a throws(EtcdError) in (try EtcdWire.keyValues(a["kvs"]).first, try EtcdWire.revision(a)) }
    }

    /// Writes `key`; returns the store's revision after the write.
    @discardableResult
    public func put(_ key: String, _ value: [UInt8], lease: Int64 = 0) throws(EtcdError) -> Int64 {
        var w = JSONWriter()
        w.beginObject()
        w.string("key", Base64.encode(key)); w.string("value", Base64.encode(value))
        if lease != 0 { w.string("lease", String(lease)) }
        w.endObject()
        return try call("/v3/kv/put", w.text) { a throws(EtcdError) in try EtcdWire.revision(a) }
    }

    /// Deletes `key` (absent is not an error); returns the store's revision after.
    @discardableResult
    public func delete(_ key: String) throws(EtcdError) -> Int64 {
        var w = JSONWriter()
        w.beginObject(); w.string("key", Base64.encode(key)); w.endObject()
        return try call("/v3/kv/deleterange", w.text) { a throws(EtcdError) in try EtcdWire.revision(a) }
    }

    /// If every compare holds, runs `success`, else `failure` (atomically, at one revision).
    public func txn(compare: [EtcdCompare], success: [EtcdOp], failure: [EtcdOp] = []) throws(EtcdError) -> EtcdTxnResult {
        let body = try EtcdWire.txnBody(compare: compare, success: success, failure: failure)
        return try call("/v3/kv/txn", body) { a throws(EtcdError) in
            let ok = a["succeeded"]?.boolValue ?? false
            let results = try EtcdWire.txnGets(a, ops: ok ? success : failure)
            return EtcdTxnResult(succeeded: ok, revision: try EtcdWire.revision(a), gets: results.compactMap { $0 }, getResults: results)
        }
    }

    /// A new lease of `ttl` seconds (etcd may raise a small TTL to its minimum); its id and TTL.
    public func leaseGrant(ttl: Int) throws(EtcdError) -> (id: Int64, ttl: Int) {
        guard ttl > 0 else { throw EtcdError("etcd lease grant: ttl must be positive, got \(ttl)") }
        var w = JSONWriter()
        w.beginObject(); w.string("TTL", String(ttl)); w.string("ID", "0"); w.endObject()
        let a = try call("/v3/lease/grant", w.text) { a throws(EtcdError) in
            (error: a["error"]?.stringValue ?? "", id: try EtcdWire.int64(a["ID"], "ID"), ttl: try EtcdWire.int64(a["TTL"], "TTL"))
        }
        if !a.error.isEmpty { throw EtcdError("etcd lease grant: \(a.error)") }
        guard a.id != 0 else { throw EtcdError("etcd lease grant: answer without a lease ID") }
        return (a.id, Int(a.ttl))
    }

    /// One keepalive round trip; returns the TTL left (0 or less: the lease is gone).
    /// `timeout` bounds this call alone. Each endpoint is tried at most once (no second round
    /// after a pause), so a leader whose etcd is unreachable learns it at once.
    public func leaseKeepAlive(_ id: Int64, timeout: Double) throws(EtcdError) -> Int {
        var w = JSONWriter()
        w.beginObject(); w.string("ID", String(id)); w.endObject()
        return try call("/v3/lease/keepalive", w.text, timeout: timeout, streaming: true, onePass: true) { a throws(EtcdError) in
            Int(try EtcdWire.int64(a["TTL"], "TTL"))
        }
    }

    /// Revokes a lease: its keys are deleted at once. A lease already gone is an error with code 5.
    public func leaseRevoke(_ id: Int64) throws(EtcdError) {
        try leaseRevoke(id, timeout: timeout)
    }

    /// `leaseRevoke` with its own deadline.
    public func leaseRevoke(_ id: Int64, timeout: Double) throws(EtcdError) {
        var w = JSONWriter()
        w.beginObject(); w.string("ID", String(id)); w.endObject()
        _ = try call("/v3/lease/revoke", w.text, timeout: timeout) { $0 }
    }

    /// Compacts the store's history up to `revision` (watches from before it get `.compacted`).
    public func compact(revision: Int64) throws(EtcdError) {
        var w = JSONWriter()
        w.beginObject(); w.string("revision", String(revision)); w.bool("physical", true); w.endObject()
        _ = try call("/v3/kv/compaction", w.text) { $0 }
    }

    /// What one member says of itself (`/v3/maintenance/status`), asked of that endpoint only.
    public func status(endpoint: String, timeout: Double = 2) throws(EtcdError) -> EtcdMemberStatus {
        guard let idx = endpoints.firstIndex(where: { $0.text == endpoint }) else {
            throw EtcdError("etcd status: \(endpoint) is not one of this client's endpoints")
        }
        let deadline = Clock.monotonicNanos() + EtcdClient.nanos(timeout)
        switch attempt(idx, "/v3/maintenance/status", "{}", deadline: deadline, streaming: false) {
        case .ok(let a):
            return EtcdMemberStatus(endpoint: endpoint, version: a["version"]?.stringValue ?? "",
                                    memberID: try EtcdWire.uint64(a["header"]?["member_id"], "header.member_id"),
                                    leaderID: try EtcdWire.uint64(a["leader"], "leader"),
                                    revision: try EtcdWire.revision(a))
        case .retry(let why): throw EtcdError("etcd \(endpoint): /v3/maintenance/status: \(why)")
        case .fail(let e): throw e
        }
    }

    // MARK: the call loop

    enum Attempt {
        case ok(JSONValue)
        /// This endpoint failed in a way another endpoint may not.
        case retry(String)
        case fail(EtcdError)
    }

    static func nanos(_ seconds: Double) -> UInt64 { UInt64(max(0, seconds) * 1e9) }

    var preferredIndex: Int { state.withLock { $0.preferred } }
    func setPreferred(_ i: Int) { state.withLock { $0.preferred = i } }

    /// The deadline of one attempt on one endpoint: a share of the call's time, so one silent
    /// endpoint cannot use all of it.
    func attemptDeadline(now: UInt64, deadline: UInt64, total: Double) -> UInt64 {
        let share = EtcdClient.nanos(max(1.0, total / Double(endpoints.count)))
        return min(deadline, now + share)
    }

    /// Sends `body` to `path`, moving through the endpoints until one answers or `timeout`
    /// passes. `streaming`: the answer is a stream of `{"result": ...}` lines; the first result
    /// is returned. `onePass`: each endpoint once, no second round. `decode` reads the answer;
    /// an answer it refuses counts as that endpoint's failure (named in the error).
    func call<T>(_ path: String, _ body: String, timeout: Double? = nil, streaming: Bool = false, onePass: Bool = false,
                 decode: (JSONValue) throws(EtcdError) -> T) throws(EtcdError) -> T {
        let total = timeout ?? self.timeout
        let deadline = Clock.monotonicNanos() + EtcdClient.nanos(total)
        var lastError = "no attempt made"
        var backoff: UInt64 = 50_000_000
        while true {
            let first = preferredIndex
            for k in 0..<endpoints.count {
                let idx = (first + k) % endpoints.count
                let now = Clock.monotonicNanos()
                if now >= deadline { break }
                switch attempt(idx, path, body, deadline: attemptDeadline(now: now, deadline: deadline, total: total), streaming: streaming) {
                case .ok(let answer):
                    let value: T
                    do { value = try decode(answer) } catch {
                        lastError = "\(endpoints[idx].text): \(path): \(error.message)"
                        continue
                    }
                    if idx != first { setPreferred(idx) }
                    return value
                case .retry(let why):
                    lastError = "\(endpoints[idx].text): \(why)"
                case .fail(let e):
                    throw e
                }
            }
            let now = Clock.monotonicNanos()
            if now >= deadline || onePass { break }
            EtcdClient.sleep(nanos: min(backoff, deadline - now))
            backoff = min(backoff * 2, 500_000_000)
        }
        if onePass && Clock.monotonicNanos() < deadline {
            throw EtcdError("etcd \(path): no endpoint answered (last: \(lastError))", code: 14)
        }
        throw EtcdError("etcd \(path): no endpoint answered within \(EtcdClient.secondsText(total)) (last: \(lastError))", code: 14)
    }

    static func secondsText(_ s: Double) -> String {
        s == s.rounded() ? "\(Int(s)) s" : "\(Int(s * 1000)) ms"
    }

    static func sleep(nanos: UInt64) {
        var ts = timespec(tv_sec: Int(nanos / 1_000_000_000), tv_nsec: Int(nanos % 1_000_000_000))
        var left = timespec()
        while nanosleep(&ts, &left) != 0 && errno == EINTR { ts = left }
    }

    private func takeIdle(_ idx: Int) -> EtcdHTTPConnection? {
        state.withLock { s in s.idle[idx].popLast() }
    }

    private func putIdle(_ idx: Int, _ c: EtcdHTTPConnection) {
        state.withLock { s in if s.idle[idx].count < 4 { s.idle[idx].append(c) } }
    }

    /// One try on one endpoint.
    func attempt(_ idx: Int, _ path: String, _ body: String, deadline: UInt64, streaming: Bool) -> Attempt {
        let ep = endpoints[idx]
        var conn: EtcdHTTPConnection
        var reused = false
        if let c = takeIdle(idx) { conn = c; reused = true }
        else {
            do { conn = try EtcdHTTPConnection.connect(ep, deadline: deadline) } catch { return .retry(error.text) }
        }
        var head: HTTPAnswerHead
        var answer: [UInt8]
        while true {
            do {
                try conn.send(path: path, body: body, deadline: deadline)
                head = try conn.readHead(deadline: deadline)
                answer = try conn.readBody(deadline: deadline)
                break
            } catch {
                // A kept connection the member closed while it was idle: once more on a new one.
                if reused && !conn.responseStarted {
                    if case .timeout = error { return .retry(error.text) }
                    reused = false
                    do { conn = try EtcdHTTPConnection.connect(ep, deadline: deadline) } catch { return .retry(error.text) }
                    continue
                }
                return .retry(error.text)
            }
        }
        if conn.reusable { putIdle(idx, conn) }
        return interpret(status: head.status, body: answer, path: path, endpoint: ep.text, streaming: streaming)
    }

    /// Messages of etcd errors that mean "this member cannot serve now; another may".
    static let retryableMessages = ["no leader", "not leader", "leader changed", "request timed out", "not capable", "too many requests", "stopped"]

    static func isRetryable(message: String, code: Int?, status: Int) -> Bool {
        if status >= 500 || code == 14 || code == 4 { return true }
        return retryableMessages.contains { message.contains($0) }
    }

    func interpret(status: Int, body: [UInt8], path: String, endpoint: String, streaming: Bool) -> Attempt {
        var bytes = body
        if streaming && status == 200 {
            // The first line of the stream.
            if let nl = bytes.firstIndex(of: 10) { bytes = Array(bytes[0..<nl]) }
        }
        let json: JSONValue
        do { json = try JSONReader.parse(bytes) } catch {
            return .retry("\(path): HTTP \(status), \(error.description)")
        }
        if status == 200, let r = json["result"], streaming { return .ok(r) }
        var message: String? = nil
        var code: Int? = nil
        if let e = json["error"] {
            if let s = e.stringValue { message = json["message"]?.stringValue ?? s; code = json["code"]?.int64Value.map { Int($0) } }
            else { message = e["message"]?.stringValue ?? "error"; code = e["grpc_code"]?.int64Value.map { Int($0) } }
        }
        if status == 200 && message == nil {
            if streaming { return .retry("\(path): a stream without a result") }
            return .ok(json)
        }
        let m = message ?? "HTTP \(status)"
        if EtcdClient.isRetryable(message: m, code: code, status: status) { return .retry("\(path): \(m)") }
        return .fail(EtcdError("etcd \(endpoint): \(path): \(m)", code: code))
    }

    // MARK: watches

    /// Watches keys under `prefix` from `fromRevision` (inclusive). Blocks the calling thread:
    /// every response's events (in revision order) go to `onEvents` with a revision through which
    /// every change under the prefix has now been delivered (the last event's revision; for a
    /// progress notification, its header revision: etcd's header revision can run ahead of the
    /// events while a watch catches up in batches, so it is not used for event responses).
    /// Returning false from `onEvents` stops the watch (`.stopped`). A compacted start revision
    /// returns `.compacted(compactRevision)` so the caller lists again. A broken connection moves
    /// to the next endpoint and resumes from the last revision seen + 1 (never skipping an event,
    /// never delivering one twice); it throws only when no endpoint answers within `timeout`.
    /// `stopWatches()` makes it return `.stopped`. Asks for progress notifications and for a
    /// member that has a leader (a member cut off from the others ends the watch and the next
    /// one is used); TCP keepalive notices a member that vanished within about 5 s.
    public func watch(prefix: String, fromRevision: Int64, onEvents: ([EtcdEvent], Int64) -> Bool) throws(EtcdError) -> EtcdWatchEnd {
        let epoch = state.withLock { $0.watchEpoch }
        let key = Array(prefix.utf8)
        return try watchRange(key: key, rangeEnd: EtcdWire.prefixEnd(key), name: prefix, fromRevision: fromRevision,
                              stop: { [state] in state.withLock { $0.watchEpoch } != epoch }, onEvents: onEvents)
    }

    /// Makes every running watch of this client return `.stopped` within about 200 ms (from
    /// any thread). Watches started afterwards run normally.
    /// Whether a member answers a status request within 2 s (nil) or why not.
    private func probe(_ ep: EtcdEndpoint) -> String? {
        do { _ = try status(endpoint: ep.text, timeout: 2); return nil } catch { return error.message }
    }

    /// How long a watch waits without a line before it asks the member whether it is alive.
    static let watchSilence: UInt64 = 5_000_000_000

    public func stopWatches() {
        state.withLock { $0.watchEpoch &+= 1 }
    }

    /// The endpoints the running watches are connected to (diagnostics and tests).
    public var watchEndpoints: [String] {
        state.withLock { s in s.watches.keys.sorted().map { s.watches[$0]! } }
    }

    private func registerWatch(_ endpoint: String) -> Int {
        state.withLock { s in
            let id = s.nextWatchID
            s.nextWatchID += 1
            s.watches[id] = endpoint
            return id
        }
    }

    private func unregisterWatch(_ id: Int) { _ = state.withLock { $0.watches.removeValue(forKey: id) } }

    /// What one watch connection ended with.
    private enum WatchLeg {
        case end(EtcdWatchEnd)
        /// Move on to the next endpoint (why), resuming from `next`.
        case broken(String)
    }

    /// The watch loop over endpoints (`rangeEnd` nil: the one key).
    func watchRange(key: [UInt8], rangeEnd: [UInt8]?, name: String, fromRevision: Int64, stop: @escaping () -> Bool,
                    onEvents: ([EtcdEvent], Int64) -> Bool) throws(EtcdError) -> EtcdWatchEnd {
        var next = max(fromRevision, 0)
        var failingSince: UInt64? = nil
        var lastError = ""
        var idx = preferredIndex
        var failuresInRound = 0
        var backoff: UInt64 = 50_000_000
        while true {
            if stop() { return .stopped }
            let now = Clock.monotonicNanos()
            if let since = failingSince, now - since >= EtcdClient.nanos(timeout) {
                throw EtcdError("etcd watch \(JSONWriter.quote(name)): no endpoint answered within \(EtcdClient.secondsText(timeout)) (last: \(lastError))", code: 14)
            }
            let deadline = failingSince.map { $0 + EtcdClient.nanos(timeout) } ?? (now + EtcdClient.nanos(timeout))
            let ep = endpoints[idx]
            let leg = try watchLeg(ep, key: key, rangeEnd: rangeEnd, next: &next,
                                   connectDeadline: attemptDeadline(now: now, deadline: deadline, total: timeout),
                                   stop: stop, onEvents: onEvents, connected: {
                                       failingSince = nil
                                       failuresInRound = 0
                                       backoff = 50_000_000
                                       self.setPreferred(idx)
                                   })
            switch leg {
            case .end(let e): return e
            case .broken(let why):
                lastError = "\(ep.text): \(why)"
                if failingSince == nil { failingSince = Clock.monotonicNanos() }
                idx = (idx + 1) % endpoints.count
                failuresInRound += 1
                if failuresInRound >= endpoints.count {
                    failuresInRound = 0
                    var left = backoff
                    while left > 0 && !stop() {
                        let step = min(left, 100_000_000)
                        EtcdClient.sleep(nanos: step)
                        left -= step
                    }
                    backoff = min(backoff * 2, 500_000_000)
                }
            }
        }
    }

    /// One watch connection: create the watch from `next`, deliver what comes, until it ends
    /// or breaks. Advances `next` past every event delivered.
    private func watchLeg(_ ep: EtcdEndpoint, key: [UInt8], rangeEnd: [UInt8]?, next: inout Int64, connectDeadline: UInt64,
                          stop: @escaping () -> Bool, onEvents: ([EtcdEvent], Int64) -> Bool,
                          connected: () -> Void) throws(EtcdError) -> WatchLeg {
        var skipped: Int64 = 0
        let conn: EtcdHTTPConnection
        do { conn = try EtcdHTTPConnection.connect(ep, deadline: connectDeadline) } catch { return .broken(error.text) }
        let id = registerWatch(ep.text)
        defer { unregisterWatch(id) }
        var w = JSONWriter()
        w.beginObject()
        w.beginObject("create_request")
        w.string("key", Base64.encode(key))
        if let end = rangeEnd { w.string("range_end", Base64.encode(end)) }
        w.string("start_revision", String(next))
        w.bool("progress_notify", true)
        w.endObject()
        w.endObject()
        do {
            try conn.send(path: "/v3/watch", body: w.text, extraHeaders: "Grpc-Metadata-Hasleader: true\r\n", deadline: connectDeadline)
            let head = try conn.readHead(deadline: connectDeadline, interrupt: stop)
            if head.status != 200 {
                let body = try conn.readBody(deadline: connectDeadline)
                switch interpret(status: head.status, body: body, path: "/v3/watch", endpoint: ep.text, streaming: false) {
                case .ok: return .broken("HTTP \(head.status)")
                case .retry(let why): return .broken(why)
                case .fail(let e): throw e
                }
            }
            var created = false
            while true {
                // A member that hangs (SIGSTOP, a stalled disk) keeps its TCP connection up and
                // its kernel answers keepalives: after `watchSilence` without a line, ask the
                // member itself; one that does not answer within 2 s ends this leg (the watch
                // resumes on the next endpoint from `next`, nothing lost).
                var line: [UInt8]? = nil
                var silent = false
                do {
                    line = try conn.nextLine(deadline: created ? Clock.monotonicNanos() + EtcdClient.watchSilence : connectDeadline, interrupt: stop)
                } catch {
                    guard created, case .timeout = error else { throw error }
                    silent = true
                }
                if silent {
                    if let why = probe(ep) {
                        return .broken("no word on the watch for \(EtcdClient.watchSilence / 1_000_000_000) s and no answer to a status probe: \(why)")
                    }
                    continue
                }
                guard let line else {
                    return .broken("the member ended the watch stream")
                }
                if line.allSatisfy({ $0 == 32 || $0 == 13 || $0 == 9 }) { continue }
                let json: JSONValue
                do { json = try JSONReader.parse(line) } catch { return .broken("watch stream: \(error.description)") }
                if let e = json["error"] {
                    let m = e.stringValue ?? e["message"]?.stringValue ?? "error"
                    let code = e["grpc_code"]?.int64Value.map { Int($0) } ?? json["code"]?.int64Value.map { Int($0) }
                    if EtcdClient.isRetryable(message: m, code: code, status: e["http_code"]?.int64Value.map { Int($0) } ?? 500) { return .broken(m) }
                    throw EtcdError("etcd \(ep.text): /v3/watch: \(m)", code: code)
                }
                guard let r = json["result"], r.isObject else { return .broken("watch stream: a line without result") }
                if r["canceled"]?.boolValue == true {
                    let compact = try EtcdWire.int64(r["compact_revision"], "compact_revision")
                    if compact > 0 { return .end(.compacted(compactRevision: compact)) }
                    let reason = r["cancel_reason"]?.stringValue ?? "canceled"
                    if EtcdClient.isRetryable(message: reason, code: nil, status: 200) { return .broken("watch canceled: \(reason)") }
                    throw EtcdError("etcd \(ep.text): watch canceled: \(reason)")
                }
                if r["created"]?.boolValue == true {
                    created = true
                    connected()
                    continue
                }
                var events: [EtcdEvent] = []
                for e in r["events"]?.arrayValue ?? [] {
                    // An event meshd cannot read (a key written by hand that is not UTF-8) is
                    // logged and passed over: the watch goes on past it rather than stopping on it.
                    let ev: EtcdEvent
                    do { ev = try EtcdWire.event(e) } catch {
                        Log.warn("etcd", "\(ep.text): watch: an event that cannot be read is skipped: \(error.message)")
                        if let rev = e["kv"]?["mod_revision"]?.stringValue.flatMap({ Int64($0) }), rev >= next { skipped = max(skipped, rev) }
                        continue
                    }
                    // Never deliver a revision twice (a resumed watch starts at `next`).
                    if ev.modRevision >= next { events.append(ev) }
                }
                let header = try EtcdWire.revision(r)
                if let last = events.last {
                    next = max(last.modRevision, skipped) + 1
                    if !onEvents(events, last.modRevision) { return .end(.stopped) }
                } else if skipped >= next {
                    next = skipped + 1
                } else if (r["events"]?.arrayValue ?? []).isEmpty, header >= next - 1 {
                    // A progress notification: every change up to `header` has been sent.
                    next = header + 1
                    if !onEvents([], header) { return .end(.stopped) }
                }
            }
        } catch let e as WireFailure {
            if case .interrupted = e { return .end(.stopped) }
            return .broken(e.text)
        } catch let e as EtcdError {
            throw e
        } catch {
            return .broken("\(error)")
        }
    }
}

/// What one etcd member says of itself.
public struct EtcdMemberStatus: Sendable, Equatable {
    public var endpoint: String
    public var version: String
    public var memberID: UInt64
    /// The member it believes leads (0: none).
    public var leaderID: UInt64
    public var revision: Int64
    public var isLeader: Bool { memberID != 0 && memberID == leaderID }
}
