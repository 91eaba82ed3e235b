import MeshCore
import MeshHTTP

/// The trace state of one exchange: the trace it belongs to, its span (the server span inbound,
/// the current attempt's client span outbound), the caller's span (the parent), whether the
/// request is sampled, and where the span id sits in the headers written for the next hop (so
/// a retry writes its own span id in place). Plain values, reset per request.
struct ExchangeTrace {
    /// Trace headers were rewritten for this request (a collector is known).
    var active = false
    /// Sampled and reported: spans are built.
    var recording = false
    var traceHigh: UInt64 = 0
    var traceLow: UInt64 = 0
    var parent: UInt64 = 0
    var span: UInt64 = 0
    var sampling: TraceContext.Sampling = .unset
    /// The span's start (wall clock, ns) and the monotonic time it stands for.
    var startWall: UInt64 = 0
    var startMono: UInt64 = 0
    /// The caller's address (`peer.address`).
    var peer: IPEndpoint? = nil
    /// The request came over TLS to a gateway's port (`http.url` says `https`).
    var https = false
    /// Offsets in the request's buffer of the 16 span-id hex digits written in `traceparent`,
    /// `x-b3-spanid` and `b3` (-1: not written).
    var w3cSpanAt = -1
    var b3SpanAt = -1
    var b3SingleSpanAt = -1
}

extension Exchange {
    /// Reads the caller's trace headers, decides sampling, and rewrites the headers for the next
    /// hop so that its parent is this sidecar's span (outbound: the client span of the attempt;
    /// inbound: the server span). Runs first thing in `runInbound`/`runOutbound`, as soon as
    /// the request head is in and before routing, authorisation or a local reply (a request
    /// answered here, e.g. no route or denied, still gets its span). Without a collector it does
    /// nothing (the headers pass through as they came).
    func startTrace() {
        trace.active = false
        trace.recording = false
        let t = snapshot.tracing
        guard t.enabled, worker.spans != nil else { return }
        let r = request
        var inc = IncomingTrace()
        var i = 0
        while i < r.fields.count {
            let f = r.fields[i]
            if f.forwarded && f.kind.isOrdinary && f.name.length <= 17 {
                inc.note(TraceHeaderName.classify(r.pointer(f.name), Int(f.name.length)), i)
            }
            i += 1
        }
        var res = IncomingTrace.Result()
        if inc.any {
            res = inc.resolve { j in (r.pointer(r.fields[j].value), Int(r.fields[j].value.length)) }
            // Every trace header the caller sent is replaced; `tracestate` stays as received when
            // its `traceparent` was valid (and it is not oversized or repeated).
            let keepState = res.w3cValid && inc.tracestate >= 0 && !inc.duplicateTraceState
                && r.fields[inc.tracestate].value.length <= TraceHeaders.maxTraceState
            @inline(__always) func drop(_ j: Int) { if j >= 0 { r.drop(j) } }
            drop(inc.traceparent); drop(inc.b3); drop(inc.b3TraceID); drop(inc.b3SpanID)
            drop(inc.b3ParentSpanID); drop(inc.b3Sampled); drop(inc.b3Flags)
            if !keepState { drop(inc.tracestate) }
            if inc.duplicateW3C || inc.duplicateB3 || inc.duplicateB3Multi || inc.duplicateTraceState {
                dropRepeatedTraceHeaders(keeping: keepState ? inc.tracestate : -1)
            }
        }
        var ctx = res.context
        if !ctx.hasIDs {
            ctx.traceHigh = nonZeroRandom(); ctx.traceLow = nonZeroRandom(); ctx.spanID = 0; ctx.trace64 = false
        }
        trace.sampling = TraceHeaders.decide(ctx.sampling, ppm: t.samplePPM, &worker.rng)
        let sampled = trace.sampling != .notSampled
        trace.traceHigh = ctx.traceHigh
        trace.traceLow = ctx.traceLow
        trace.parent = ctx.spanID
        trace.span = nonZeroRandom()
        trace.active = true
        trace.recording = sampled && t.reportSpans
        trace.w3cSpanAt = -1; trace.b3SpanAt = -1; trace.b3SingleSpanAt = -1
        if trace.recording {
            // The span starts with the exchange (its head complete), on the loop's clock.
            trace.startMono = startTime
            trace.startWall = Clock.wallNanos() &- (loop.now &- startTime)
            trace.peer = down?.callerAddress
            trace.https = !inbound && down?.callerTLS != nil
        }
        writeTraceHeaders(b3Multi: res.b3Multi, b3Single: res.b3Single, trace64: ctx.trace64)
    }

    /// Stops forwarding every field named like a trace header but `keeping` (a repeated header
    /// makes its family invalid; none of its copies is forwarded).
    private func dropRepeatedTraceHeaders(keeping: Int) {
        let r = request
        for j in 0..<r.fields.count where j != keeping && r.fields[j].forwarded && r.fields[j].kind.isOrdinary
            && TraceHeaderName.classify(r.pointer(r.fields[j].name), Int(r.fields[j].name.length)) != .none {
            r.drop(j)
        }
    }

    /// Writes `traceparent` always, and B3 in the form the caller used, for this hop's span.
    private func writeTraceHeaders(b3Multi: Bool, b3Single: Bool, trace64: Bool) {
        let r = request
        let b = r.bytes
        let flagsOn = trace.sampling != .notSampled
        r.beginField("traceparent", kind: .traceContext)
        b.append("00-")
        appendHex(b, trace.traceHigh, 16)
        appendHex(b, trace.traceLow, 16)
        b.append(UInt8(ascii: "-"))
        trace.w3cSpanAt = b.writeIndex
        appendHex(b, trace.span, 16)
        b.append(flagsOn ? "-01" : "-00")
        r.endField()
        if b3Multi {
            r.beginField("x-b3-traceid", kind: .traceContext)
            if !trace64 { appendHex(b, trace.traceHigh, 16) }
            appendHex(b, trace.traceLow, 16)
            r.endField()
            r.beginField("x-b3-spanid", kind: .traceContext)
            trace.b3SpanAt = b.writeIndex
            appendHex(b, trace.span, 16)
            r.endField()
            if trace.parent != 0 {
                r.beginField("x-b3-parentspanid", kind: .traceContext)
                appendHex(b, trace.parent, 16)
                r.endField()
            }
            if trace.sampling == .debug {
                r.beginField("x-b3-flags", kind: .traceContext); b.append(UInt8(ascii: "1")); r.endField()
            } else {
                r.beginField("x-b3-sampled", kind: .traceContext); b.append(UInt8(ascii: flagsOn ? "1" : "0")); r.endField()
            }
        }
        if b3Single {
            r.beginField("b3", kind: .traceContext)
            if !trace64 { appendHex(b, trace.traceHigh, 16) }
            appendHex(b, trace.traceLow, 16)
            b.append(UInt8(ascii: "-"))
            trace.b3SingleSpanAt = b.writeIndex
            appendHex(b, trace.span, 16)
            b.append(UInt8(ascii: "-"))
            b.append(UInt8(ascii: trace.sampling == .debug ? "d" : flagsOn ? "1" : "0"))
            if trace.parent != 0 {
                b.append(UInt8(ascii: "-"))
                appendHex(b, trace.parent, 16)
            }
            r.endField()
        }
    }

    /// A random id, never zero (zero means "none" in both formats).
    @inline(__always) private func nonZeroRandom() -> UInt64 {
        var x: UInt64 = 0
        while x == 0 { x = worker.rng.next() }
        return x
    }

    @inline(__always) private func appendHex(_ b: ByteBuffer, _ v: UInt64, _ width: Int) {
        b.reserve(width)
        TraceHeaders.writeHex(v, width: width, b.writePointer)
        b.commit(width)
    }

    /// An outbound attempt ended and another follows (a retry): its client span is recorded
    /// with `status` (0: no response), and the next attempt gets its own span id, written in
    /// place into the headers it will send.
    func traceRetry(status st: Int, flag f: ResponseFlag) {
        guard trace.recording, !inbound else { return }
        emitSpan(status: st, flag: f, local: false, endMono: loop.now)
        let x = nonZeroRandom()
        trace.span = x
        trace.startWall = trace.startWall &+ (loop.now &- trace.startMono)
        trace.startMono = loop.now
        let base = request.bytes.base
        if trace.w3cSpanAt >= 0 { TraceHeaders.writeHex(x, width: 16, base + trace.w3cSpanAt) }
        if trace.b3SpanAt >= 0 { TraceHeaders.writeHex(x, width: 16, base + trace.b3SpanAt) }
        if trace.b3SingleSpanAt >= 0 { TraceHeaders.writeHex(x, width: 16, base + trace.b3SingleSpanAt) }
    }

    /// The exchange ended: its span (the server span inbound, the last attempt's client span
    /// outbound) goes to the worker's queue for the exporter.
    func traceFinished() {
        guard trace.recording else { return }
        trace.recording = false
        emitSpan(status: status, flag: flag, local: localReason != nil, endMono: loop.now)
    }

    /// Encodes one span straight into a slot of the worker's queue (dropped and counted when
    /// the queue is full).
    private func emitSpan(status st: Int, flag f: ResponseFlag, local: Bool, endMono: UInt64) {
        guard let q = worker.spans, let slot = q.reserve() else { return }
        var w = ProtobufWriter(slot, capacity: SpanQueue.slotSize - 4)
        SpanEncoder.encode(self, into: &w, status: st, flag: f, local: local,
                           endWall: trace.startWall &+ (endMono &- trace.startMono))
        q.publish(length: w.count)
    }
}
