import XCTest
import MeshCore
import MeshHTTP
@testable import MeshProxy

/// The trace header parsers (W3C Trace Context, B3 multi and single), negative cases first: a
/// header outside its format is absent, never half used; then the resolution of a request's
/// headers, the sampling decision, and the span queue's bound.
final class TraceHeadersTests: XCTestCase {
    private func tp(_ s: String) -> TraceContext? {
        var s = s
        return s.withUTF8 { TraceHeaders.parseTraceparent($0.baseAddress ?? UnsafePointer(bitPattern: 1)!, $0.count) }
    }
    private func single(_ s: String) -> TraceContext? {
        var s = s
        return s.withUTF8 { TraceHeaders.parseB3Single($0.baseAddress ?? UnsafePointer(bitPattern: 1)!, $0.count) }
    }
    private func b3Trace(_ s: String) -> (high: UInt64, low: UInt64, is64: Bool)? {
        var s = s
        return s.withUTF8 { TraceHeaders.parseB3TraceID($0.baseAddress ?? UnsafePointer(bitPattern: 1)!, $0.count) }
    }
    private func b3Span(_ s: String) -> UInt64? {
        var s = s
        return s.withUTF8 { TraceHeaders.parseB3SpanID($0.baseAddress ?? UnsafePointer(bitPattern: 1)!, $0.count) }
    }
    private func b3Sampled(_ s: String) -> TraceContext.Sampling? {
        var s = s
        return s.withUTF8 { TraceHeaders.parseB3Sampled($0.baseAddress ?? UnsafePointer(bitPattern: 1)!, $0.count) }
    }

    static let trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    static let span = "00f067aa0ba902b7"

    func testTraceparentRefusesWhatBreaksTheFormat() {
        let t = TraceHeadersTests.trace, s = TraceHeadersTests.span
        XCTAssertNil(tp(""))
        XCTAssertNil(tp("00-\(t)-\(s)-0"))                          // 54 bytes
        XCTAssertNil(tp("00-\(t)-\(s)-011"))                        // 56 bytes for version 00
        XCTAssertNil(tp("00-\(t)-\(s)-01-x"))                       // version 00 takes nothing after the flags
        XCTAssertNil(tp("00-\(t.uppercased())-\(s)-01"))            // hex is lowercase
        XCTAssertNil(tp("00-\(t)-\(s.uppercased())-01"))
        XCTAssertNil(tp("00-4bf92f3577b34da6a3ce929d0e0e473g-\(s)-01"))   // non-hex
        XCTAssertNil(tp("00-\(t)-\(s)-0g"))
        XCTAssertNil(tp("0g-\(t)-\(s)-01"))
        XCTAssertNil(tp("00-\(String(repeating: "0", count: 32))-\(s)-01"))   // all-zero trace id
        XCTAssertNil(tp("00-\(t)-0000000000000000-01"))             // all-zero parent id
        XCTAssertNil(tp("ff-\(t)-\(s)-01"))                         // version ff is invalid
        XCTAssertNil(tp("00_\(t)_\(s)_01"))
        XCTAssertNil(tp("00-\(t)\(s)--01-"))
        XCTAssertNil(tp("01-\(t)-\(s)-01x"))                        // a later version: '-' after the flags
        XCTAssertNil(tp("01-\(t)-\(s)-01-" + String(repeating: "a", count: TraceHeaders.maxValue)))   // oversized
    }

    func testTraceparentReadsIdsAndFlags() {
        let t = TraceHeadersTests.trace, s = TraceHeadersTests.span
        XCTAssertEqual(tp("00-\(t)-\(s)-01"),
                       TraceContext(traceHigh: 0x4bf92f3577b34da6, traceLow: 0xa3ce929d0e0e4736, spanID: 0x00f067aa0ba902b7, sampling: .sampled))
        XCTAssertEqual(tp("00-\(t)-\(s)-00")?.sampling, .notSampled)
        XCTAssertEqual(tp("00-\(t)-\(s)-03")?.sampling, .sampled)   // other flag bits ignored
        XCTAssertEqual(tp("01-\(t)-\(s)-01-future")?.spanID, 0x00f067aa0ba902b7)   // a later version's extra fields
    }

    func testB3RefusesWhatBreaksTheFormat() {
        XCTAssertNil(b3Trace(""))
        XCTAssertNil(b3Trace("463ac35c9f6413a"))                    // 15
        XCTAssertNil(b3Trace("463ac35c9f6413ad0"))                  // 17
        XCTAssertNil(b3Trace(String(repeating: "a", count: 31)))
        XCTAssertNil(b3Trace(String(repeating: "a", count: 33)))
        XCTAssertNil(b3Trace("463AC35C9F6413AD"))
        XCTAssertNil(b3Trace("463ac35c9f6413az"))
        XCTAssertNil(b3Trace("0000000000000000"))
        XCTAssertNil(b3Trace(String(repeating: "0", count: 32)))
        XCTAssertNil(b3Span("a2fb4a1d1a96d31"))
        XCTAssertNil(b3Span("0000000000000000"))
        XCTAssertNil(b3Span("a2fb4a1d1a96d31x"))
        XCTAssertNil(b3Sampled(""))
        XCTAssertNil(b3Sampled("2"))
        XCTAssertNil(b3Sampled("11"))
        XCTAssertNil(b3Sampled("d"))                                // debug is x-b3-flags, not x-b3-sampled
        let t = "80f198ee56343ba864fe8b2a57d3eff7", s = "e457b5a2e4d86bd1", p = "05e3ac9a4f6e3b90"
        XCTAssertNil(single(""))
        XCTAssertNil(single("x"))
        XCTAssertNil(single("2"))
        XCTAssertNil(single(t))                                     // a trace id needs a span id
        XCTAssertNil(single("\(t)-"))
        XCTAssertNil(single("\(t)-\(s)-"))
        XCTAssertNil(single("\(t)-\(s)-2"))
        XCTAssertNil(single("\(t)-\(s)-1-"))
        XCTAssertNil(single("\(t)-\(s)-1-\(p)x"))
        XCTAssertNil(single("\(t)-\(s)-1-0000000000000000"))
        XCTAssertNil(single("\(t)-0000000000000000-1"))
        XCTAssertNil(single("\(t)-\(s)x"))
        XCTAssertNil(single("\(t.uppercased())-\(s)-1"))
        XCTAssertNil(single(String(repeating: "a", count: 129)))
    }

    func testB3ReadsBothWidthsAndEveryForm() {
        XCTAssertEqual(b3Trace("463ac35c9f6413ad")?.low, 0x463ac35c9f6413ad)
        XCTAssertEqual(b3Trace("463ac35c9f6413ad")?.is64, true)
        XCTAssertEqual(b3Trace("80f198ee56343ba864fe8b2a57d3eff7")?.high, 0x80f198ee56343ba8)
        XCTAssertEqual(b3Sampled("1"), .sampled)
        XCTAssertEqual(b3Sampled("0"), .notSampled)
        XCTAssertEqual(b3Sampled("true"), .sampled)
        XCTAssertEqual(single("0"), TraceContext(sampling: .notSampled))
        XCTAssertEqual(single("d"), TraceContext(sampling: .debug))
        let t = "80f198ee56343ba864fe8b2a57d3eff7", s = "e457b5a2e4d86bd1"
        XCTAssertEqual(single("\(t)-\(s)"),
                       TraceContext(traceHigh: 0x80f198ee56343ba8, traceLow: 0x64fe8b2a57d3eff7, spanID: 0xe457b5a2e4d86bd1, sampling: .unset))
        XCTAssertEqual(single("\(t)-\(s)-1-05e3ac9a4f6e3b90")?.sampling, .sampled)
        XCTAssertEqual(single("463ac35c9f6413ad-\(s)-0")?.trace64, true)
    }

    /// A request head with `fields`, resolved as `startTrace` does.
    private func resolve(_ fields: [(String, String)]) -> (IncomingTrace, IncomingTrace.Result) {
        let h = MessageHead()
        for (n, v) in fields { h.addField(Array(n.utf8), Array(v.utf8)) }
        var inc = IncomingTrace()
        for i in 0..<h.fields.count {
            inc.note(TraceHeaderName.classify(h.pointer(h.fields[i].name), Int(h.fields[i].name.length)), i)
        }
        return (inc, inc.resolve { j in (h.pointer(h.fields[j].value), Int(h.fields[j].value.length)) })
    }

    func testResolutionTreatsABrokenFamilyAsAbsent() {
        let good = "00-\(TraceHeadersTests.trace)-\(TraceHeadersTests.span)-01"
        // A repeated traceparent makes W3C invalid (even when both copies parse).
        var (inc, r) = resolve([("traceparent", good), ("traceparent", good)])
        XCTAssertTrue(inc.duplicateW3C)
        XCTAssertFalse(r.w3cValid)
        XCTAssertFalse(r.context.hasIDs)
        // A repeated tracestate: the traceparent stays valid (the tracestate is not forwarded).
        (inc, r) = resolve([("traceparent", good), ("tracestate", "a=1"), ("tracestate", "b=2")])
        XCTAssertTrue(inc.duplicateTraceState)
        XCTAssertFalse(inc.duplicateW3C)
        XCTAssertTrue(r.w3cValid)
        // A parent span id without the ids, a span id without a trace id, a bad flags value.
        (_, r) = resolve([("x-b3-parentspanid", "05e3ac9a4f6e3b90")])
        XCTAssertFalse(r.b3Multi)
        (_, r) = resolve([("x-b3-spanid", "05e3ac9a4f6e3b90"), ("x-b3-sampled", "1")])
        XCTAssertFalse(r.b3Multi)
        XCTAssertEqual(r.context.sampling, .unset)                  // nothing of the broken set is used
        (_, r) = resolve([("x-b3-traceid", "463ac35c9f6413ad"), ("x-b3-spanid", "a2fb4a1d1a96d312"), ("x-b3-flags", "2")])
        XCTAssertFalse(r.b3Multi)
        XCTAssertFalse(r.context.hasIDs)
        (_, r) = resolve([("x-b3-traceid", "463ac35c9f6413ad"), ("x-b3-spanid", "a2fb4a1d1a96d312"), ("x-b3-parentspanid", "bad")])
        XCTAssertFalse(r.b3Multi)
        // An invalid traceparent next to valid B3: B3 decides.
        (_, r) = resolve([("traceparent", "ff-\(TraceHeadersTests.trace)-\(TraceHeadersTests.span)-01"),
                          ("x-b3-traceid", "463ac35c9f6413ad"), ("x-b3-spanid", "a2fb4a1d1a96d312")])
        XCTAssertFalse(r.w3cValid)
        XCTAssertTrue(r.b3Multi)
        XCTAssertEqual(r.context.traceLow, 0x463ac35c9f6413ad)
        XCTAssertTrue(r.context.trace64)
    }

    func testResolutionPrefersW3CAndKeepsB3Form() {
        let w3c = "00-0000000000000000463ac35c9f6413ad-\(TraceHeadersTests.span)-01"
        // The same trace in both (a previous hop wrote both): W3C's ids, B3's 64-bit width and debug.
        var (_, r) = resolve([("traceparent", w3c), ("x-b3-traceid", "463ac35c9f6413ad"), ("x-b3-spanid", TraceHeadersTests.span),
                              ("x-b3-flags", "1")])
        XCTAssertTrue(r.w3cValid && r.b3Multi)
        XCTAssertTrue(r.context.trace64)
        XCTAssertEqual(r.context.sampling, .debug)
        // Another trace in B3: W3C's context, B3 written back in its form (128-bit).
        (_, r) = resolve([("traceparent", "00-\(TraceHeadersTests.trace)-\(TraceHeadersTests.span)-00"),
                          ("b3", "463ac35c9f6413ad-a2fb4a1d1a96d312-d")])
        XCTAssertTrue(r.w3cValid && r.b3Single)
        XCTAssertFalse(r.context.trace64)
        XCTAssertEqual(r.context.sampling, .notSampled)
        XCTAssertEqual(r.context.traceHigh, 0x4bf92f3577b34da6)
        // B3 sampling only: a decision for a trace that starts here.
        (_, r) = resolve([("x-b3-sampled", "0")])
        XCTAssertTrue(r.b3Multi)
        XCTAssertFalse(r.context.hasIDs)
        XCTAssertEqual(r.context.sampling, .notSampled)
        (_, r) = resolve([("b3", "1")])
        XCTAssertTrue(r.b3Single)
        XCTAssertEqual(r.context.sampling, .sampled)
        // Names are matched exactly (no prefix or near miss).
        let (inc, _) = resolve([("traceparents", "x"), ("x-b3-traceid2", "x"), ("b3x", "x"), ("tracestat", "x")])
        XCTAssertFalse(inc.any)
    }

    func testSamplingDecision() {
        var rng = FastRandom(seed: 42)
        // The caller's decision wins both ways, whatever the percentage.
        XCTAssertEqual(TraceHeaders.decide(.sampled, ppm: 0, &rng), .sampled)
        XCTAssertEqual(TraceHeaders.decide(.debug, ppm: 0, &rng), .debug)
        XCTAssertEqual(TraceHeaders.decide(.notSampled, ppm: 1_000_000, &rng), .notSampled)
        // No decision: the percentage.
        for _ in 0..<1000 {
            XCTAssertEqual(TraceHeaders.decide(.unset, ppm: 0, &rng), .notSampled)
            XCTAssertEqual(TraceHeaders.decide(.unset, ppm: 1_000_000, &rng), .sampled)
        }
        var hits = 0
        for _ in 0..<100_000 where TraceHeaders.decide(.unset, ppm: 10_000, &rng) == .sampled { hits += 1 }
        XCTAssertTrue((800...1200).contains(hits), "1% of 100000 drew \(hits)")
    }

    func testSpanQueueDropsAndCountsWhenFull() {
        let q = SpanQueue(capacity: 10)
        XCTAssertEqual(q.capacity, 16)
        for i in 0..<16 {
            guard let p = q.reserve() else { return XCTFail("slot \(i)") }
            p[0] = UInt8(i)
            q.publish(length: 1)
        }
        XCTAssertNil(q.reserve())
        XCTAssertNil(q.reserve())
        XCTAssertEqual(q.dropped, 2)
        XCTAssertEqual(q.pending, 16)
        var seen: [UInt8] = []
        XCTAssertEqual(q.drain(max: 5) { p, n in XCTAssertEqual(n, 1); seen.append(p[0]) }, 5)
        XCTAssertEqual(seen, [0, 1, 2, 3, 4])
        XCTAssertNotNil(q.reserve())                                  // room again
        q.publish(length: 0)
        seen = []
        XCTAssertEqual(q.drain(max: 100) { p, n in seen.append(n == 0 ? 255 : p[0]) }, 12)
        XCTAssertEqual(seen, [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 255])
        XCTAssertEqual(q.pending, 0)
        XCTAssertEqual(q.dropped, 2)
    }
}

/// Without a collector, tracing is off: trace headers reach the upstream byte for byte as the
/// client sent them, valid or not, and nothing is added (the behaviour before tracing).
final class TracingOffPassThroughTests: XCTestCase {
    func testTraceHeadersPassUnchangedWithoutACollector() throws {
        let h = try startHarness(clusters: [HarnessCluster(name: "web")])
        let up = h.upstream("web")
        up.script(UpstreamAnswer(body: "ok"))
        let c = try h.connect()
        let fields = "traceparent: ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\ntracestate: k=v\r\n"
            + "x-b3-traceid: XYZ\r\nx-b3-spanid: a2fb4a1d1a96d312\r\nx-b3-sampled: 1\r\nb3: 0\r\nx-request-id: id-1\r\n"
        try c.write("GET /t HTTP/1.1\r\nHost: web\r\n" + fields + "\r\n")
        XCTAssertEqual(try c.readResponse().bodyText, "ok")
        let got = try XCTUnwrap(up.requests.first).message
        XCTAssertEqual(String(decoding: got.raw, as: UTF8.self), "GET /t HTTP/1.1\r\nhost: web\r\n" + fields + "\r\n")
        XCTAssertFalse(h.server!.snapshot.tracing.enabled)
    }
}
