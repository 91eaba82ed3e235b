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
/// `flushInterval` passed. Every step has a timeout (connect, send, answer: 2 s); a failed
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
    static let stepTimeoutMillis: Int32 = 2000

    init(workers: Int, options: TraceExportOptions) {
        self.options = options
        queues = (0..<workers).map { _ in SpanQueue(capacity: options.queueSize) }
    }

    /// The snapshot in force changed: its collector and resource are used from the next batch.
    func update(_ s: ProxySnapshot) {
        target.withLock { $0 = (s.tracing.endpoint, s.tracing.resource) }
    }

    func start() {
        thread = Threads.spawn(name: "trace-export") { [self] in run() }
    }

    /// The exporter for `s` on `workers`: made (and each worker given its queue) the first time
    /// a snapshot names a collector, then told of every snapshot. `running`: the workers' loops
    /// run (their queue is handed over on their thread, before the snapshot that uses it).
    static func attach(_ existing: inout TraceExporter?, _ s: ProxySnapshot, workers: [Worker], running: Bool) {
        if existing == nil && s.tracing.enabled && !workers.isEmpty {
            let e = TraceExporter(workers: workers.count, options: s.tracing.export)
            for (w, q) in zip(workers, e.queues) {
                if running { w.loop.post { [w] in w.spans = q } } else { w.spans = q }
            }
            existing = e
            current.withLock { $0 = e }
            e.update(s)
            e.start()
            return
        }
        existing?.update(s)
    }

    /// Sends what waits (one last batch, best effort) and stops the thread.
    func stop() {
        stopping.store(true, ordering: .releasing)
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
        let spans = ByteBuffer(capacity: 64 * 1024)
        let body = ByteBuffer(capacity: 64 * 1024)
        var lastFlush = Clock.monotonicNanos()
        var backoff: UInt64 = 0
        var notBefore: UInt64 = 0
        let tick = min(options.flushInterval, 50_000_000)
        while true {
            let stop = stopping.load(ordering: .acquiring)
            if !stop { usleep(useconds_t(tick / 1000)) }
            let now = Clock.monotonicNanos()
            var pending = 0
            for q in queues { pending += q.pending }
            if pending == 0 {
                lastFlush = now
                if stop { return }
                continue
            }
            if stop && now < notBefore { return }
            if !stop && (now < notBefore || (pending < options.batchSize && now &- lastFlush < options.flushInterval)) { continue }
            let n = collect(into: spans)
            lastFlush = now
            let (endpoint, resource) = target.withLock { $0 }
            guard let endpoint else { TraceExporter.lostInFailures.add(UInt64(n), ordering: .relaxed); continue }
            TraceExporter.encodeRequest(body, resource: resource, spans: spans)
            if TraceExporter.post(endpoint, body) {
                TraceExporter.exported.add(UInt64(n), ordering: .relaxed)
                backoff = 0
            } else {
                TraceExporter.failures.add(1, ordering: .relaxed)
                TraceExporter.lostInFailures.add(UInt64(n), ordering: .relaxed)
                backoff = min(max(backoff * 2, 500_000_000), 30_000_000_000)
                notBefore = Clock.monotonicNanos() &+ backoff
                if stop { return }
            }
        }
    }

    /// Takes up to `batchSize` spans from the queues, each as a `ScopeSpans.spans` field.
    private func collect(into out: ByteBuffer) -> Int {
        out.clear()
        var taken = 0
        for q in queues where taken < options.batchSize {
            taken += q.drain(max: options.batchSize - taken) { p, n in
                TraceExporter.appendDelimited(out, field: 2, p, n)
            }
        }
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

    /// One `POST` of `body` (HTTP/1.1, a connection per batch): true on a 2xx answer.
    static func post(_ e: OTLPEndpoint, _ body: ByteBuffer) -> Bool {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>? = nil
        guard getaddrinfo(e.host, String(e.port), &hints, &res) == 0, let first = res else { return false }
        defer { freeaddrinfo(res) }
        let fd = socket(first.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        if connect(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) != 0 {
            guard errno == EINPROGRESS, wait(fd, Int16(POLLOUT)), Socket.pendingError(fd) == 0 else { return false }
        }
        let host = e.host.contains(":") ? "[\(e.host)]" : e.host
        let head = "POST \(e.path) HTTP/1.1\r\nHost: \(host):\(e.port)\r\nContent-Type: application/x-protobuf\r\nContent-Length: \(body.readableBytes)\r\nConnection: close\r\nUser-Agent: swift-mesh-sidecar\r\n\r\n"
        let h = Array(head.utf8)
        guard h.withUnsafeBufferPointer({ sendAll(fd, UnsafeRawPointer($0.baseAddress!), $0.count) }),
              sendAll(fd, UnsafeRawPointer(body.readPointer), body.readableBytes) else { return false }
        // The answer, read to its end (`Connection: close`; at most 64 KiB looked at): its
        // status line must be `HTTP/1.x 2..`.
        var answer = [UInt8](repeating: 0, count: 512)
        var got = 0, total = 0
        while total < 65536 {
            guard wait(fd, Int16(POLLIN)) else { return false }
            let n = answer.withUnsafeMutableBytes { b in
                got < 12 ? recv(fd, b.baseAddress! + got, 512 - got, 0) : recv(fd, b.baseAddress! + 12, 500, 0)
            }
            if n < 0 { return false }
            if n == 0 { break }
            if got < 12 { got += n }
            total += n
        }
        return got >= 12 && answer[0] == UInt8(ascii: "H") && answer[8] == UInt8(ascii: " ") && answer[9] == UInt8(ascii: "2")
    }

    private static func wait(_ fd: Int32, _ events: Int16) -> Bool {
        var p = pollfd(fd: fd, events: events, revents: 0)
        let r = poll(&p, 1, stepTimeoutMillis)
        return r == 1 && p.revents & events != 0
    }

    private static func sendAll(_ fd: Int32, _ p: UnsafeRawPointer, _ n: Int) -> Bool {
        var off = 0
        while off < n {
            let w = send(fd, p + off, n - off, Int32(MSG_NOSIGNAL))
            if w > 0 { off += w; continue }
            if w < 0 && (errno == EAGAIN || errno == EINTR) {
                if !wait(fd, Int16(POLLOUT)) { return false }
                continue
            }
            return false
        }
        return true
    }
}
