// Fuzz target: MeshHTTP's HTTP2Session (nghttp2 underneath) fed by a hostile peer.
//
// Input layout: byte 0 is a mode, byte 1 seeds the split points, the rest is what the peer sends.
// Mode bits: 0x01 act as a client (the proxy's upstream side: three requests are submitted first and
// the input is the server's answer), else a server (the client preface is prepended to the input);
// 0x06 how the server answers complete requests (a body with trailers, headers only, a reset, a 100
// then a body); 0x08 small settings (few streams, small windows and header lists); 0x10 consume
// flow-control credit late (after `receive`) instead of inside the data callback; 0x20 send
// GOAWAY halfway. The input is fed in random pieces with `produce` after each, so send paths run
// interleaved with receive paths. Delegate callbacks are checked for the order the proxy relies on.
import CFuzzDriver
import MeshCore
import MeshHTTP

/// Stops the process the way libFuzzer notices (a crash), naming the broken invariant.
func check(_ ok: @autoclosure () -> Bool, _ what: String) {
    if !ok() { fatalError("FuzzHTTP2 invariant: \(what)") }
}

/// A minimal proxy-like delegate: records what each stream received, checks callback order, and
/// queues complete requests for an answer.
final class Peer: HTTP2SessionDelegate {
    weak var session: HTTP2Session?
    var maxHeaderList = 0
    var consumeInline = true
    /// The stream whose header block is open (blocks arrive contiguously), and its size.
    var openBlock: Int32 = -1
    var blockSize = 0
    var began: Set<Int32> = []
    var closed: Set<Int32> = []
    var ready: [Int32] = []
    var owed: [(Int32, Int)] = []
    var dataBytes = 0

    func h2BeginHeaders(stream: Int32) {
        // A block nghttp2 refused halfway (a bad field, a list over the limit) never completes:
        // the next block may begin while the refused one is still "open" here.
        check(!closed.contains(stream), "headers on a closed stream")
        openBlock = stream
        blockSize = 0
        began.insert(stream)
    }

    func h2Header(stream: Int32, name: UnsafePointer<UInt8>, nameLength: Int, value: UnsafePointer<UInt8>, valueLength: Int) -> Bool {
        check(stream == openBlock, "a header outside its block")
        blockSize += nameLength + valueLength + 32
        check(blockSize <= maxHeaderList, "a header list over the advertised limit reached the delegate")
        // Touch every byte, as the proxy copies names and values.
        var x: UInt8 = 0
        for i in 0..<nameLength { x ^= name[i] }
        for i in 0..<valueLength { x ^= value[i] }
        // Refuse one odd name, as the proxy refuses connection-specific headers.
        return !(nameLength == 10 && name[0] == 99 && x == 0)
    }

    func h2HeadersComplete(stream: Int32, trailers: Bool, endStream: Bool) {
        check(stream == openBlock, "a block completes that did not begin")
        openBlock = -1
        if !trailers && session?.role == .server { ready.append(stream) }
    }

    func h2Data(stream: Int32, _ p: UnsafePointer<UInt8>, _ n: Int) {
        check(began.contains(stream) && !closed.contains(stream), "DATA on a stream without headers")
        check(n >= 0, "DATA length")
        if n > 0 { dataBytes &+= Int(p[0]) &+ Int(p[n - 1]) }
        if consumeInline { session?.consume(stream: stream, n) } else { owed.append((stream, n)) }
    }

    func h2DataEnd(stream: Int32) {
        check(began.contains(stream), "END_STREAM on a stream without headers")
    }

    func h2StreamClosed(stream: Int32, error: UInt32) {
        check(!closed.contains(stream), "a stream closed twice")
        closed.insert(stream)
        if openBlock == stream { openBlock = -1 }
    }

    func h2GoAway(lastStream: Int32, error: UInt32) {}
    func h2PeerReset(stream: Int32, error: UInt32) {}
}

/// A tiny deterministic generator for split points and choices, seeded from the input.
struct Splitter {
    var state: UInt32
    init(_ seed: UInt8) { state = UInt32(seed) &* 2_654_435_761 | 1 }
    mutating func next(_ bound: Int) -> Int {
        state ^= state << 13; state ^= state >> 17; state ^= state << 5
        return bound <= 1 ? 0 : Int(state % UInt32(bound))
    }
}

let clientPreface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
let body = [UInt8](repeating: 120, count: 3000)

/// Answers the requests that completed, the way the mode says.
func answer(_ s: HTTP2Session, _ peer: Peer, style: Int, rng: inout Splitter) {
    let ready = peer.ready
    peer.ready.removeAll()
    for stream in ready.prefix(16) {
        switch (style + rng.next(2)) % 4 {
        case 0:
            s.addHeader(":status", "200")
            s.addHeader("content-type", "text/plain")
            if s.submitResponse(stream: stream, endStream: false) {
                body.withUnsafeBytes { s.sendData(stream: stream, $0.baseAddress!, 1 + rng.next(body.count)) }
                s.addHeader("grpc-status", "0")
                s.finishData(stream: stream, withTrailers: rng.next(2) == 0)
            }
        case 1:
            s.addHeader(":status", "204")
            s.submitResponse(stream: stream, endStream: true)
        case 2:
            s.reset(stream: stream, error: 8)
        default:
            s.addHeader(":status", "100")
            s.submitInformational(stream: stream)
            s.addHeader(":status", "503")
            if s.submitResponse(stream: stream, endStream: false) {
                body.withUnsafeBytes { s.sendData(stream: stream, $0.baseAddress!, 17) }
                s.finishData(stream: stream, withTrailers: false)
            }
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP2(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size >= 2 else { return 0 }
    let mode = Int(data[0])
    var rng = Splitter(data[1])
    let client = mode & 1 != 0
    var settings = HTTP2Session.Settings()
    if mode & 8 != 0 {
        settings.maxConcurrentStreams = 3
        settings.initialWindowSize = 100
        settings.connectionWindowSize = 65535
        settings.maxHeaderListSize = 256
    }
    let peer = Peer()
    peer.maxHeaderList = Int(settings.maxHeaderListSize)
    peer.consumeInline = mode & 16 == 0
    let session = HTTP2Session(role: client ? .client : .server, delegate: peer, settings: settings)
    peer.session = session
    let out = ByteBuffer(capacity: 16 * 1024)

    var input = [UInt8]()
    if client {
        for i in 0..<3 {
            session.addHeader(":method", i == 1 ? "POST" : "GET")
            session.addHeader(":scheme", "http")
            session.addHeader(":authority", "reviews.default")
            session.addHeader(":path", "/r/\(i)")
            let id = session.submitRequest(endStream: i != 1)
            if i == 1 && id > 0 {
                body.withUnsafeBytes { session.sendData(stream: id, $0.baseAddress!, 500) }
                session.finishData(stream: id, withTrailers: false)
            }
        }
    } else {
        input = clientPreface
    }
    input.append(contentsOf: UnsafeBufferPointer(start: data + 2, count: size - 2))
    session.produce(into: out)
    out.clear()

    let chunk = ByteBuffer(capacity: input.count + 1)
    var at = 0
    var wentAway = false
    while at < input.count {
        let n = min(input.count - at, 1 + rng.next(64 + input.count / 4))
        chunk.clear()
        input.withUnsafeBytes { chunk.append($0.baseAddress! + at, n) }
        at += n
        let ok = session.receive(chunk)
        check(chunk.isEmpty, "receive consumes all of its input")
        if !ok { check(session.failed, "a refused input marks the session failed"); break }
        for (stream, k) in peer.owed { session.consume(stream: stream, k) }
        peer.owed.removeAll()
        if !client { answer(session, peer, style: (mode >> 1) & 3, rng: &rng) }
        if mode & 32 != 0 && !wentAway && at * 2 >= input.count { session.goAway(); wentAway = true }
        session.produce(into: out)
        out.clear()
    }
    session.produce(into: out)
    _ = session.isAlive
    _ = session.wantsWrite
    withExtendedLifetime(peer) {}   // the session holds its delegate unowned
    return 0
}

/// The process entry: SwiftPM links `main` as `FuzzHTTP2_main`; libFuzzer's driver takes over.
@_cdecl("FuzzHTTP2_main")
public func fuzzerMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> Int32 {
    mesh_fuzz_main(argc, argv)
}
