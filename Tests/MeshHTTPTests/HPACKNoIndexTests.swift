import CNghttp2
import XCTest
@testable import MeshCore
@testable import MeshHTTP

/// Trace context and `x-request-id` change on every request: they go out HPACK "literal never
/// indexed" (`NGHTTP2_NV_FLAG_NO_INDEX`), so they never churn a connection's dynamic table.
final class HPACKNoIndexTests: XCTestCase {
    func testTraceHeaderKindsAndFlags() {
        for name in ["traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "TraceParent"] {
            let k = Array(name.utf8).withUnsafeBufferPointer { KnownHeader.classify($0.baseAddress!, $0.count) }
            XCTAssertEqual(k, .traceContext, name)
        }
        for name in ["user-agent", "content-type", "accept", "x-b3-other", "te", "connection"] {
            let k = Array(name.utf8).withUnsafeBufferPointer { KnownHeader.classify($0.baseAddress!, $0.count) }
            XCTAssertNotEqual(k, .traceContext, name)
        }
        XCTAssertEqual(KnownHeader.traceContext.hpackFlags, UInt8(NGHTTP2_NV_FLAG_NO_INDEX.rawValue))
        XCTAssertEqual(KnownHeader.xRequestID.hpackFlags, UInt8(NGHTTP2_NV_FLAG_NO_INDEX.rawValue))
        XCTAssertEqual(KnownHeader.other.hpackFlags, UInt8(NGHTTP2_NV_FLAG_NONE.rawValue))
    }

    private func head() -> MessageHead {
        let h = MessageHead()
        func add(_ n: String, _ v: String) {
            let nb = Array(n.utf8), vb = Array(v.utf8)
            nb.withUnsafeBufferPointer { np in vb.withUnsafeBufferPointer { vp in
                _ = h.addField(np.baseAddress!, np.count, vp.baseAddress!, vp.count, kind: KnownHeader.classify(np.baseAddress!, np.count))
            } }
        }
        add("accept", "*/*")
        add("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        add("x-request-id", "6f1c1d8e-2b39-4a55-9d0e-6a3f2b1c9d7e")
        add("x-b3-traceid", "0af7651916cd43dd8448eb211c80319c")
        return h
    }

    final class Quiet: HTTP2SessionDelegate {
        func h2BeginHeaders(stream: Int32) {}
        func h2Header(stream: Int32, name: UnsafePointer<UInt8>, nameLength: Int, value: UnsafePointer<UInt8>, valueLength: Int) -> Bool { true }
        func h2HeadersComplete(stream: Int32, trailers: Bool, endStream: Bool) {}
        func h2Data(stream: Int32, _ p: UnsafePointer<UInt8>, _ n: Int) {}
        func h2DataEnd(stream: Int32) {}
        func h2StreamClosed(stream: Int32, error: UInt32) {}
        func h2GoAway(lastStream: Int32, error: UInt32) {}
    }

    /// The emitted fields carry the flag, and on the wire a second identical request still
    /// spells the values out (an indexed header would shrink to a byte or two).
    func testEmittedWithNoIndex() {
        let d = Quiet()
        let s = HTTP2Session(role: .client, delegate: d)
        let h = head()
        H2Emitter.fields(h, into: s)
        XCTAssertEqual(s.pendingHeaderFlags, [0, 1, 1, 1])
        _ = s.submitRequest(endStream: true)     // (no pseudo-headers: only the encoding matters)
        let out = ByteBuffer()
        s.produce(into: out)
        out.clear()
        H2Emitter.fields(h, into: s)
        _ = s.submitRequest(endStream: true)
        s.produce(into: out)
        // traceparent, x-request-id and x-b3-traceid again as literals: well over 60 bytes.
        XCTAssertGreaterThan(out.readableBytes, 60)
    }
}
