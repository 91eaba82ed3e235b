import CMeshShims
import MeshConfig
import MeshCore
import MeshIO
import MeshStats
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The span exporter: one thread off the worker loops that drains every worker's `SpanQueue`
/// and sends the spans in batches to the OTLP/HTTP collector (`POST /v1/traces`, an
/// `ExportTraceServiceRequest` in protobuf). A batch goes when `batchSize` spans wait or
/// `flushInterval` passed. One export has 5 s in all (connect, send, answer; the answer is
/// read up to its `Content-Length` body, the collector may keep the connection); a failed
/// export is counted, its spans are dropped, and the next waits a back-off (0.5 s doubling to
/// 30 s) while the workers' queues fill and then drop: a slow or dead collector never blocks a
/// worker and never grows memory.
final class TraceExporter: @unchecked Sendable {
    /// Process-wide counts for /stats/prometheus (one exporter per process).
    static let exported = Atomic<UInt64>(0)
    static let failures = Atomic<UInt64>(0)
    /// Spans lost with a failed export (the queues count their own drops).
    static let lostInFailures = Atomic<UInt64>(0)
    /// The exporter of this process, for the admin thread's counts.
    static let current = Mutex<TraceExporter?>(nil)

    let queues: [SpanQueue]
    let options: TraceExportOptions
    /// The collector and the resource of the snapshot in force.
    private let target = Mutex<(endpoint: OTLPEndpoint?, resource: [UInt8])>((nil, []))
    private let stopping = Atomic<Bool>(false)
    private var thread: pthread_t?
    /// Wakes the sleeping thread for `stop`.
    private let wakeFd: Int32
    /// While stopping: the last batch's post ends by then (`stop` waits at most the post deadline).
    private let stopDeadline = Atomic<UInt64>(0)
    /// Turns of the thread's loop (tests: an idle exporter wakes once per flush interval).
    let wakeups = Atomic<UInt64>(0)
    /// The queue a batch is taken from first (turns with each batch).
    private var firstQueue = 0
    /// All of one export (connect, send, answer) happens within this.
    static let postTimeoutNanos: UInt64 = 5_000_000_000
    /// One address's connect gets at most this much of it (the next address is tried after).
    static let connectTimeoutNanos: UInt64 = 2_000_000_000

    init(workers: Int, options: TraceExportOptions) {
        self.options = options
        queues = (0..<workers).map { _ in SpanQueue(capacity: options.queueSize) }
        wakeFd = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
    }

    deinit { if wakeFd >= 0 { close(wakeFd) } }

    /// The snapshot in force changed: its collector and resource are used from the next batch.
    func update(_ s: ProxySnapshot) {
        setTarget(endpoint: s.tracing.endpoint, resource: s.tracing.resource)
    }

    func setTarget(endpoint: OTLPEndpoint?, resource: [UInt8]) {
        target.withLock { $0 = (endpoint, resource) }
    }

    /// How the thread is made (tests replace it with one that fails, as a pids limit would).
    nonisolated(unsafe) static var spawnThread: (@escaping @Sendable () -> Void) -> pthread_t? = {
        Threads.trySpawn(name: "trace-export", $0)
    }

    /// Starts the thread; false when the system refuses one.
    func start() -> Bool {
        guard let t = TraceExporter.spawnThread({ [self] in run() }) else { return false }
        thread = t
        return true
    }

    /// The exporter for `s` on `workers`: made (and each worker given its queue) the first time
    /// a snapshot names a collector, then told of every snapshot. `running`: the workers' loops
    /// run (their queue is handed over on their thread, before the snapshot that uses it).
    static func attach(_ existing: inout TraceExporter?, _ s: ProxySnapshot, workers: [Worker], running: Bool) {
        if existing == nil && s.tracing.enabled && !workers.isEmpty {
            let e = TraceExporter(workers: workers.count, options: s.tracing.export)
            e.update(s)
            // No thread (a pids limit): tracing stays off (no span is queued), tried again
            // with the next snapshot.
            guard e.start() else {
                Log.warn("tracing", "cannot start the span exporter thread: tracing stays disabled (spans are not recorded)")
                return
            }
            for (w, q) in zip(workers, e.queues) {
                if running { w.loop.post { [w] in w.spans = q } } else { w.spans = q }
            }
            existing = e
            current.withLock { $0 = e }
            return
        }
        existing?.update(s)
    }

    /// Sends what waits (one last batch, best effort) and stops the thread.
    func stop() {
        stopDeadline.store(Clock.monotonicNanos() &+ TraceExporter.postTimeoutNanos, ordering: .relaxed)
        stopping.store(true, ordering: .releasing)
        var one: UInt64 = 1
        _ = write(wakeFd, &one, 8)
        if let t = thread { Threads.join(t); thread = nil }
    }

    /// Spans dropped at the workers (full queues) and with failed exports.
    var dropped: UInt64 {
        queues.reduce(0) { $0 &+ $1.dropped } &+ TraceExporter.lostInFailures.load(ordering: .relaxed)
    }

    /// The tracing counters in /stats/prometheus (admin thread).
    static func render(_ p: inout PrometheusText) {
        let dropped = current.withLock { $0?.dropped } ?? 0
        p.family("mesh_tracing_spans_exported_total", type: "counter", help: "Spans sent to the OTLP collector (accepted with a 2xx).")
        p.sample("mesh_tracing_spans_exported_total", [], exported.load(ordering: .relaxed))
        p.family("mesh_tracing_spans_dropped_total", type: "counter", help: "Spans dropped: a worker's queue was full, or their export failed.")
        p.sample("mesh_tracing_spans_dropped_total", [], dropped)
        p.family("mesh_tracing_export_failures_total", type: "counter", help: "Export requests to the OTLP collector that failed (connect, timeout, non-2xx).")
        p.sample("mesh_tracing_export_failures_total", [], failures.load(ordering: .relaxed))
    }

    private func run() {
        var spans = ByteBuffer(capacity: 64 * 1024)
        var body = ByteBuffer(capacity: 64 * 1024)
        var lastFlush = Clock.monotonicNanos()
        var backoff: UInt64 = 0
        var notBefore: UInt64 = 0
        var resolved: (endpoint: OTLPEndpoint, addresses: [ResolvedAddress])? = nil
        while true {
            wakeups.add(1, ordering: .relaxed)
            let stop = stopping.load(ordering: .acquiring)
            let now = Clock.monotonicNanos()
            var pending = 0
            for q in queues { pending += q.pending }
            if stop {
                if pending == 0 || now < notBefore { return }
            } else if pending == 0 {
                // Idle: one wake-up per flush interval (a quiet sidecar stays quiet).
                lastFlush = now
                sleep(options.flushInterval)
                continue
            } else if now < notBefore {
                sleep(min(notBefore &- now, options.flushInterval))
                continue
            } else if pending < options.batchSize && now &- lastFlush < options.flushInterval {
                // A partial batch: look again when its flush is due, or sooner (it may fill).
                sleep(min(options.flushInterval &- (now &- lastFlush), 50_000_000))
                continue
            }
            // A full batch (or a due one) goes at once: no sleep while one waits.
            let n = collect(into: spans, release: pending < options.batchSize)
            lastFlush = now
            let (endpoint, resource) = target.withLock { $0 }
            guard let endpoint else { TraceExporter.lostInFailures.add(UInt64(n), ordering: .relaxed); continue }
            // The collector's addresses: resolved once, again after a failure or a new endpoint
            // (never while stopping: getaddrinfo has no timeout of ours).
            if resolved?.endpoint != endpoint && !stop { resolved = (endpoint, TraceExporter.resolve(endpoint)) }
            TraceExporter.encodeRequest(body, resource: resource, spans: spans)
            var deadline = Clock.monotonicNanos() &+ TraceExporter.postTimeoutNanos
            if stop { deadline = min(deadline, stopDeadline.load(ordering: .relaxed)) }
            if let r = resolved, r.endpoint == endpoint, TraceExporter.post(endpoint, body, r.addresses, deadline: deadline) {
                TraceExporter.exported.add(UInt64(n), ordering: .relaxed)
                backoff = 0
            } else {
                TraceExporter.failures.add(1, ordering: .relaxed)
                TraceExporter.lostInFailures.add(UInt64(n), ordering: .relaxed)
                backoff = min(max(backoff * 2, 500_000_000), 30_000_000_000)
                notBefore = Clock.monotonicNanos() &+ backoff
                resolved = nil
                if stop { return }
            }
            // A large batch's buffers are not kept.
            if spans.capacity > 256 * 1024 { spans = ByteBuffer(capacity: 64 * 1024) }
            if body.capacity > 256 * 1024 { body = ByteBuffer(capacity: 64 * 1024) }
        }
    }

    /// Sleeps `nanos` or until `stop` wakes the thread.
    private func sleep(_ nanos: UInt64) {
        var p = pollfd(fd: wakeFd, events: Int16(POLLIN), revents: 0)
        _ = poll(&p, 1, Int32(min(nanos / 1_000_000 + 1, 60_000)))
    }

    /// Takes up to `batchSize` spans from the queues, each as a `ScopeSpans.spans` field. The
    /// first queue looked at turns with each batch (no worker is always served first).
    /// `release`: a partial batch (a low rate), the drained slots' pages go back to the system.
    func collect(into out: ByteBuffer, release: Bool) -> Int {
        out.clear()
        var taken = 0
        let count = queues.count
        for i in 0..<count where taken < options.batchSize {
            taken += queues[(firstQueue + i) % count].drain(max: options.batchSize - taken, release: release) { p, n in
                TraceExporter.appendDelimited(out, field: 2, p, n)
            }
        }
        firstQueue = count == 0 ? 0 : (firstQueue + 1) % count
        return taken
    }

    /// `ExportTraceServiceRequest { resource_spans(1): ResourceSpans { resource(1): Resource,
    /// scope_spans(2): ScopeSpans { scope(1): InstrumentationScope { name(1) }, spans(2)... } } }`.
    static func encodeRequest(_ out: ByteBuffer, resource: [UInt8], spans: ByteBuffer) {
        out.clear()
        let scopeName: StaticString = "swift-mesh"
        let scope = ProtobufWriter.delimitedSize(1, scopeName.utf8CodeUnitCount)
        let scopeSpans = ProtobufWriter.delimitedSize(1, scope) + spans.readableBytes
        let rs = ProtobufWriter.delimitedSize(1, resource.count) + ProtobufWriter.delimitedSize(2, scopeSpans)
        appendHeader(out, field: 1, length: rs)
        resource.withUnsafeBufferPointer { appendDelimited(out, field: 1, $0.baseAddress ?? UnsafePointer(bitPattern: 1)!, $0.count) }
        appendHeader(out, field: 2, length: scopeSpans)
        appendHeader(out, field: 1, length: scope)
        appendDelimited(out, field: 1, scopeName.utf8Start, scopeName.utf8CodeUnitCount)
        out.append(spans.readPointer, spans.readableBytes)
    }

    static func appendHeader(_ out: ByteBuffer, field: Int, length: Int) {
        // Room for the payload too: `beginDelimited` checks the whole field fits, then writes
        // only the tag and length (the caller appends the payload next).
        out.reserve(ProtobufWriter.delimitedSize(field, length))
        var w = ProtobufWriter(out.writePointer, capacity: ProtobufWriter.delimitedSize(field, length))
        w.beginDelimited(field, length: length)
        out.commit(w.count)
    }

    static func appendDelimited(_ out: ByteBuffer, field: Int, _ p: UnsafePointer<UInt8>, _ n: Int) {
        appendHeader(out, field: field, length: n)
        out.append(p, n)
    }

    /// One address of the collector, as `getaddrinfo` gave it.
    struct ResolvedAddress {
        var family: Int32
        var storage: sockaddr_storage
        var length: socklen_t
    }

    /// Every address of `e`'s host, in `getaddrinfo`'s order (empty when it does not resolve).
    static func resolve(_ e: OTLPEndpoint) -> [ResolvedAddress] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>? = nil
        guard getaddrinfo(e.host, String(e.port), &hints, &res) == 0 else { return [] }
        defer { freeaddrinfo(res) }
        var out: [ResolvedAddress] = []
        var a = res
        while let ai = a {
            if let sa = ai.pointee.ai_addr, Int(ai.pointee.ai_addrlen) <= MemoryLayout<sockaddr_storage>.size {
                var st = sockaddr_storage()
                withUnsafeMutableBytes(of: &st) { $0.copyMemory(from: UnsafeRawBufferPointer(start: sa, count: Int(ai.pointee.ai_addrlen))) }
                out.append(ResolvedAddress(family: ai.pointee.ai_family, storage: st, length: ai.pointee.ai_addrlen))
            }
            a = ai.pointee.ai_next
        }
        return out
    }

    /// One `POST` of `body` with a fresh resolution and the whole post deadline (tests).
    static func post(_ e: OTLPEndpoint, _ body: ByteBuffer) -> Bool {
        post(e, body, resolve(e), deadline: Clock.monotonicNanos() &+ postTimeoutNanos)
    }

    /// One `POST` of `body` (HTTP/1.1, a connection per batch), all of it before `deadline`
    /// (connect, send, answer): true on a 2xx answer. Each address is tried in turn until one
    /// connects (a connect gets at most 2 s of the time left).
    static func post(_ e: OTLPEndpoint, _ body: ByteBuffer, _ addresses: [ResolvedAddress], deadline: UInt64) -> Bool {
        for a in addresses {
            let now = Clock.monotonicNanos()
            if now >= deadline { return false }
            let fd = socket(a.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            if fd < 0 { continue }
            var st = a.storage
            let rc = withUnsafePointer(to: &st) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, a.length) } }
            if rc != 0 {
                guard errno == EINPROGRESS, wait(fd, Int16(POLLOUT), deadline: min(deadline, now &+ connectTimeoutNanos)),
                      Socket.pendingError(fd) == 0 else { close(fd); continue }
            }
            let ok = exchange(fd, e, body, deadline: deadline)
            close(fd)
            return ok
        }
        return false
    }

    /// Sends the request on the connected `fd` and reads the answer: its status line, headers
    /// and `Content-Length` body (at most 64 KiB), no more (the collector may keep the
    /// connection open). The status line must be `HTTP/1.x 2..`.
    private static func exchange(_ fd: Int32, _ e: OTLPEndpoint, _ body: ByteBuffer, deadline: UInt64) -> Bool {
        let host = e.host.contains(":") ? "[\(e.host)]" : e.host
        let head = "POST \(e.path) HTTP/1.1\r\nHost: \(host):\(e.port)\r\nContent-Type: application/x-protobuf\r\nContent-Length: \(body.readableBytes)\r\nConnection: close\r\nUser-Agent: swift-mesh-sidecar\r\n\r\n"
        let h = Array(head.utf8)
        guard h.withUnsafeBufferPointer({ sendAll(fd, UnsafeRawPointer($0.baseAddress!), $0.count, deadline) }),
              sendAll(fd, UnsafeRawPointer(body.readPointer), body.readableBytes, deadline) else { return false }
        let size = 2048
        var answer = [UInt8](repeating: 0, count: size)
        var got = 0
        var bodyLeft = -1          // -1: the head is not complete yet
        while bodyLeft != 0 {
            guard wait(fd, Int16(POLLIN), deadline: deadline) else { return false }
            let n = answer.withUnsafeMutableBytes { b in
                bodyLeft < 0 ? recv(fd, b.baseAddress! + got, size - got, 0) : recv(fd, b.baseAddress! + 16, min(size - 16, bodyLeft), 0)
            }
            if n < 0 { if errno == EINTR || errno == EAGAIN { continue }; return false }
            if n == 0 { break }
            if bodyLeft >= 0 { bodyLeft -= n; continue }
            got += n
            if let end = headEnd(answer, got) {
                let length = contentLength(answer, end) ?? 0
                bodyLeft = length > 65536 ? 0 : max(0, length - (got - end))
            } else if got == size {
                break              // a head this long: judged by its status line
            }
        }
        return got >= 12 && answer[0] == UInt8(ascii: "H") && answer[8] == UInt8(ascii: " ") && answer[9] == UInt8(ascii: "2")
    }

    /// The offset after the head's blank line, when it is in.
    private static func headEnd(_ a: [UInt8], _ n: Int) -> Int? {
        var i = 3
        while i < n {
            if a[i] == 10 && a[i - 1] == 13 && a[i - 2] == 10 && a[i - 3] == 13 { return i + 1 }
            i += 1
        }
        return nil
    }

    /// The head's `Content-Length` (nil when absent or not a number).
    private static func contentLength(_ a: [UInt8], _ end: Int) -> Int? {
        let name = Array("content-length:".utf8)
        var line = 0
        while line < end {
            var eol = line
            while eol < end && a[eol] != 10 { eol += 1 }
            if eol - line > name.count {
                var match = true
                for k in 0..<name.count where a[line + k] | 0x20 != name[k] { match = false; break }   // '-' and ':' keep 0x20
                if match {
                    var v = 0, digits = 0
                    for k in (line + name.count)..<eol {
                        let c = a[k]
                        if c >= 48 && c <= 57 { v = v * 10 + Int(c - 48); digits += 1; if v > 1 << 40 { return nil } }
                        else if c != 32 && c != 9 && c != 13 { return nil }
                    }
                    return digits > 0 ? v : nil
                }
            }
            line = eol + 1
        }
        return nil
    }

    /// Waits for `events` on `fd` until `deadline` (monotonic nanoseconds).
    private static func wait(_ fd: Int32, _ events: Int16, deadline: UInt64) -> Bool {
        while true {
            let now = Clock.monotonicNanos()
            if now >= deadline { return false }
            var p = pollfd(fd: fd, events: events, revents: 0)
            let r = poll(&p, 1, Int32(min((deadline - now) / 1_000_000 + 1, 60_000)))
            if r < 0 && errno == EINTR { continue }
            if r == 0 { continue }           // the deadline is checked above
            return r == 1 && p.revents & events != 0
        }
    }

    private static func sendAll(_ fd: Int32, _ p: UnsafeRawPointer, _ n: Int, _ deadline: UInt64) -> Bool {
        var off = 0
        while off < n {
            let w = send(fd, p + off, n - off, Int32(MSG_NOSIGNAL))
            if w > 0 { off += w; continue }
            if w < 0 && (errno == EAGAIN || errno == EINTR) {
                if !wait(fd, Int16(POLLOUT), deadline: deadline) { return false }
                continue
            }
            return false
        }
        return true
    }
}
