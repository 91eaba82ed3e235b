import CNghttp2
import Glibc
import XCTest
@testable import MeshCore
@testable import MeshHTTP

/// nghttp2's allocator (`HTTP2Memory`): an idle session gives the pages of its frame buffer
/// back (checked with mincore), keeps working when traffic returns (HPACK dynamic-table state
/// intact across the release), and keeps its pages while frames are still pending.
final class HTTP2MemoryTests: XCTestCase {
    final class Echo: HTTP2SessionDelegate {
        var heads: [Int32: [(String, String)]] = [:]
        var ended: [Int32] = []
        var closed: [Int32] = []
        func h2BeginHeaders(stream: Int32) {}
        func h2Header(stream: Int32, name: UnsafePointer<UInt8>, nameLength: Int, value: UnsafePointer<UInt8>, valueLength: Int) -> Bool {
            let n = String(decoding: UnsafeBufferPointer(start: name, count: nameLength), as: UTF8.self)
            let v = String(decoding: UnsafeBufferPointer(start: value, count: valueLength), as: UTF8.self)
            heads[stream, default: []].append((n, v))
            return true
        }
        func h2HeadersComplete(stream: Int32, trailers: Bool, endStream: Bool) { if endStream { ended.append(stream) } }
        func h2Data(stream: Int32, _ p: UnsafePointer<UInt8>, _ n: Int) {}
        func h2DataEnd(stream: Int32) { ended.append(stream) }
        func h2StreamClosed(stream: Int32, error: UInt32) { closed.append(stream) }
        func h2GoAway(lastStream: Int32, error: UInt32) {}
    }

    let c = Echo(), s = Echo()
    var client: HTTP2Session!, server: HTTP2Session!

    override func setUp() {
        client = HTTP2Session(role: .client, delegate: c)
        server = HTTP2Session(role: .server, delegate: s)
    }

    func pump() {
        let c2s = ByteBuffer(), s2c = ByteBuffer()
        for _ in 0..<100 {
            client.produce(into: c2s)
            let moved = !c2s.isEmpty
            XCTAssertTrue(server.receive(c2s))
            server.produce(into: s2c)
            let back = !s2c.isEmpty
            XCTAssertTrue(client.receive(s2c))
            if !moved && !back { return }
        }
    }

    /// One request and its response, with headers that go into both HPACK dynamic tables
    /// (indexed on the first use, sent as an index afterwards).
    func exchange(_ i: Int) {
        client.addHeader(":method", "GET")
        client.addHeader(":scheme", "https")
        client.addHeader(":authority", "reviews.default.svc.cluster.local")
        client.addHeader(":path", "/item/\(i % 3)")
        client.addHeader("x-tenant", "tenant-with-a-long-name-0123456789")
        client.addHeader("user-agent", "memory-test/1.0")
        let id = client.submitRequest(endStream: true)
        XCTAssertGreaterThan(id, 0)
        pump()
        let req = s.heads[id] ?? []
        XCTAssertEqual(req.first { $0.0 == "x-tenant" }?.1, "tenant-with-a-long-name-0123456789", "request \(i)")
        XCTAssertEqual(req.first { $0.0 == ":path" }?.1, "/item/\(i % 3)", "request \(i)")
        server.addHeader(":status", "200")
        server.addHeader("server", "swift-mesh")
        server.addHeader("x-served-by", "reviews-v2-abcdef")
        server.addHeader("x-count", "\(i)")
        XCTAssertTrue(server.submitResponse(stream: id, endStream: true))
        pump()
        let resp = c.heads[id] ?? []
        XCTAssertEqual(resp.first { $0.0 == ":status" }?.1, "200", "response \(i)")
        XCTAssertEqual(resp.first { $0.0 == "x-served-by" }?.1, "reviews-v2-abcdef", "response \(i)")
        XCTAssertEqual(resp.first { $0.0 == "x-count" }?.1, "\(i)", "response \(i)")
        XCTAssertTrue(c.ended.contains(id) && c.closed.contains(id), "stream \(i) completed")
    }

    /// A response whose header block (15000 bytes of `~`, longer under Huffman coding, so sent
    /// raw) fills the frame buffer past its last interior page.
    func bigResponse() {
        client.addHeader(":method", "GET"); client.addHeader(":scheme", "https")
        client.addHeader(":authority", "a"); client.addHeader(":path", "/big")
        let id = client.submitRequest(endStream: true)
        pump()
        let big = String(repeating: "~", count: 15000)
        server.addHeader(":status", "200")
        server.addHeader("x-big", big)
        XCTAssertTrue(server.submitResponse(stream: id, endStream: true))
        pump()
        XCTAssertEqual(c.heads[id]?.first { $0.0 == "x-big" }?.1, big)
    }

    /// Resident pages among the whole pages inside [addr, addr+size) (mincore).
    func residentInteriorPages(_ addr: UInt, _ size: Int) -> (resident: Int, total: Int) {
        let page = UInt(sysconf(Int32(_SC_PAGESIZE)))
        let lo = (addr + page - 1) & ~(page - 1)
        let hi = (addr + UInt(size)) & ~(page - 1)
        guard hi > lo else { return (0, 0) }
        let n = Int((hi - lo) / page)
        var vec = [UInt8](repeating: 0, count: n)
        XCTAssertEqual(mincore(UnsafeMutableRawPointer(bitPattern: lo), Int(hi - lo), &vec), 0)
        return (vec.filter { $0 & 1 != 0 }.count, n)
    }

    func testIdleSessionGivesFrameBufferPagesBackAndWorksAfterwards() {
        pump()   // connection preface and SETTINGS both ways
        exchange(0)
        bigResponse()   // every page of the frame buffer written
        let m = server.memory
        XCTAssertEqual(m.largeBlocks, 1, "an idle server session holds one large block (the frame buffer): \(m.largeBlockList)")
        guard let (addr, size, mapped) = m.largeBlockList.first else { return }
        XCTAssertTrue(mapped, "the frame buffer has its own mapping")
        XCTAssertEqual(size, 20480, "16394 bytes rounded up to whole pages")
        XCTAssertGreaterThan(m.liveBytes, size, "the counters see the whole session")
        let before = residentInteriorPages(addr, size)
        XCTAssertEqual(before.total, 5)
        XCTAssertEqual(before.resident, 4, "the 15 KB header block went through the first four pages: \(before)")

        let released = server.releaseIdleMemory()
        XCTAssertEqual(released, size, "the whole mapping")
        XCTAssertEqual(residentInteriorPages(addr, size).resident, 0, "the frame buffer's interior pages were given back")
        XCTAssertEqual(m.releases, 1)

        // Traffic returns on the released session, many times, with the dynamic tables in use;
        // a large response header block fills the buffer past the dropped pages.
        for i in 1...40 { exchange(i) }
        bigResponse()
        XCTAssertEqual(m.largeBlockList.first?.0, addr, "the same block serves again")
        XCTAssertEqual(m.largeBlocks, 1, "blocks mapped for the large header block were unmapped: \(m.largeBlockList)")
        XCTAssertGreaterThan(residentInteriorPages(addr, size).resident, 0, "the pages came back on use")

        XCTAssertGreaterThan(server.releaseIdleMemory(), 0, "released again after the next idle period")
        XCTAssertEqual(residentInteriorPages(addr, size).resident, 0)
        XCTAssertEqual(m.releases, 2)
        for i in 41...50 { exchange(i) }
    }

    func testPendingFramesKeepTheirPages() {
        pump()
        exchange(0)
        client.addHeader(":method", "GET"); client.addHeader(":scheme", "https")
        client.addHeader(":authority", "a"); client.addHeader(":path", "/pending")
        let id = client.submitRequest(endStream: true)
        pump()
        server.addHeader(":status", "200")
        XCTAssertTrue(server.submitResponse(stream: id, endStream: true))
        // The response is queued, not yet produced: nothing may be dropped.
        XCTAssertTrue(server.wantsWrite)
        XCTAssertEqual(server.releaseIdleMemory(), 0)
        XCTAssertEqual(server.memory.releases, 0)
        pump()
        XCTAssertEqual(c.heads[id]?.first { $0.0 == ":status" }?.1, "200")
        XCTAssertGreaterThan(server.releaseIdleMemory(), 0)
    }

    /// The client side's session uses the same allocator.
    func testClientSessionIsCounted() {
        pump()
        exchange(0)
        XCTAssertEqual(client.memory.largeBlocks, 1)
        XCTAssertGreaterThan(client.memory.allocations, 0)
        XCTAssertGreaterThan(client.releaseIdleMemory(), 0)
        exchange(1)
    }

    /// A 40 KB header block needs three frame buffer chunks: the two extra ones get their own
    /// mappings while it is sent and are unmapped when nghttp2 resets its buffers; the session
    /// ends up with what it had.
    func testHeaderBlockBeyondOneChunkUnmapsItsExtraChunks() {
        pump()
        exchange(0)
        let m = server.memory
        let live = m.liveBytes, mapped = m.mappedBlocks
        client.addHeader(":method", "GET"); client.addHeader(":scheme", "https")
        client.addHeader(":authority", "a"); client.addHeader(":path", "/huge")
        let id = client.submitRequest(endStream: true)
        pump()
        let huge = String(repeating: "~", count: 40000)
        server.addHeader(":status", "200")
        server.addHeader("x-huge", huge)
        XCTAssertTrue(server.submitResponse(stream: id, endStream: true))
        pump()
        XCTAssertEqual(c.heads[id]?.first { $0.0 == "x-huge" }?.1, huge)
        XCTAssertGreaterThanOrEqual(m.mappedBlocks, mapped + 2, "the extra chunks were mapped")
        XCTAssertEqual(m.largeBlocks, 1, "and unmapped again: \(m.largeBlockList)")
        XCTAssertLessThanOrEqual(m.liveBytes, live + 1024, "nothing large left behind (\(live) -> \(m.liveBytes))")
        XCTAssertGreaterThan(server.releaseIdleMemory(), 0)
        exchange(1)
    }

    /// Only the blocks that existed when the session was created (the frame buffer) give their
    /// pages back: a large block allocated later keeps its contents through an idle release.
    func testOnlyTheSessionsOwnBlocksAreReleased() {
        let m = HTTP2Memory()
        let table = m.table
        let size = 40 * 1024
        guard let early = table.malloc(size, table.mem_user_data) else { return XCTFail("malloc") }
        m.markSessionBlocks()
        guard let late = table.malloc(size, table.mem_user_data) else { return XCTFail("malloc") }
        memset(early, 0x5a, size)
        memset(late, 0x5a, size)
        XCTAssertEqual(m.largeBlocks, 2)
        XCTAssertGreaterThan(m.releaseIdlePages(), 0, "the early block's pages are given back")
        let e = early.assumingMemoryBound(to: UInt8.self), l = late.assumingMemoryBound(to: UInt8.self)
        XCTAssertEqual(e[size / 2], 0, "the early block was dropped (reads back zero-filled)")
        XCTAssertTrue((0..<size).allSatisfy { l[$0] == 0x5a }, "the later block kept every byte")
        table.free(early, table.mem_user_data)
        table.free(late, table.mem_user_data)
        XCTAssertEqual(m.largeBlocks, 0)
        withExtendedLifetime(table) {}
    }
}
