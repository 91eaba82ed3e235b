import CNghttp2
import MeshCore
import MeshHTTP
import MeshIO
import MeshTLS

/// The HTTP/2 side of a client connection: on the inbound mTLS listener (ALPN `h2`) or h2c from
/// the local app on the outbound listener. It runs the nghttp2 session and its abuse limits
/// (rapid reset, floods, stalled streams, header list size); each stream is an `H2ServerStream`
/// whose `Exchange` does the rest, whatever the upstream speaks. Flow control is the
/// back-pressure: a stream's window reopens only as its body is taken upstream, and response
/// bytes are produced only while the connection's output is below its high watermark.
final class H2ServerHandler: HTTP2SessionDelegate {
    unowned(unsafe) let conn: DownstreamConnection
    unowned(unsafe) let worker: Worker
    private(set) var session: HTTP2Session!
    private var streams: [Int32: H2ServerStream] = [:]
    /// Streams that stopped reading their upstream because the connection was congested.
    private var blocked: [H2ServerStream] = []
    /// Inbound (mTLS from a sidecar) or outbound (h2c from the local app).
    let inbound: Bool
    let peerIndex: Int
    /// Rapid-reset protection (CVE-2023-44487): streams the client ends before their response,
    /// counted per one-second window; past the limit the connection is closed with GOAWAY
    /// ENHANCE_YOUR_CALM.
    private var resetWindowStart: UInt64 = 0
    private var resetsInWindow = 0
    static let maxPrematureResetsPerSecond = 200

    init(conn: DownstreamConnection, worker: Worker, peerIndex: Int, inbound: Bool) {
        self.conn = conn
        self.worker = worker
        self.peerIndex = peerIndex
        self.lastInput = worker.loop.now
        self.inbound = inbound
        var settings = HTTP2Session.Settings()
        settings.maxConcurrentStreams = 1000
        settings.maxHeaderListSize = 64 * 1024
        session = HTTP2Session(role: .server, delegate: self, settings: settings)
        conn.requestFlush()   // our SETTINGS
    }

    var activeStreams: Int { streams.count }

    /// When the connection last received bytes (set by the connection, read at its deadline).
    var lastInput: UInt64 = 0
    /// Stall detection: the session's progress count at the last check, and when it last grew.
    private var progressSeen: UInt64 = 0
    private var progressAt: UInt64 = 0
    private var closingGracefully = false
    /// The connection's failure was counted (as a flood or a protocol error).
    private var errorCounted = false
    /// The session's `protocolErrorResets` already counted as malformed requests.
    private var malformedCounted: UInt64 = 0
    /// The session's `oversizedHeaderResets` already counted as `headersTooLarge`.
    private var oversizedCounted: UInt64 = 0

    /// True when the open streams made no progress (no stream opened, no DATA either way) for
    /// `timeout`. Called at the connection's periodic deadline while streams are open.
    func stalled(now: UInt64, timeout: UInt64) -> Bool {
        if session.progress != progressSeen || progressAt == 0 {
            progressSeen = session.progress
            progressAt = now
            return false
        }
        return now &- progressAt >= timeout
    }

    /// The connection has been idle for a while: free the spare stream buffers and give the
    /// pages of nghttp2's idle frame buffer back (HTTP2Session.releaseIdleMemory).
    func hibernate() { session.releaseIdleMemory() }

    /// Ends the connection gracefully: GOAWAY naming the last stream processed, flushed before
    /// close_notify, then close (streams still in flight are aborted). Used when its streams are
    /// stalled and when it has been idle for the idle timeout, so that a client never has a
    /// request in flight on a connection that just vanished without a GOAWAY.
    func goAwayAndClose() {
        if closingGracefully { return }
        closingGracefully = true
        session.goAway()
        produceFrames()
        conn.closeAfterFlush(lingerNanos: 0)
    }

    // MARK: connection events (forwarded by the DownstreamConnection)

    func onInput() {
        // Closing (a failed session, or GOAWAY ENHANCE_YOUR_CALM sent): the rest is not read.
        if session.failed || goneAway { conn.input.clear(); return }
        if !session.receive(conn.input) {
            errorCounted = true
            if session.failedByFlood {
                worker.stats.inc(.http2Floods)
                worker.logRejection("http2", "HTTP/2 client flooded the connection (\(session.lastError)): closing it")
                // nghttp2 returns floods as fatal errors without queueing a GOAWAY: say why
                // (RFC 9113 §5.4.1) before the close. A client that does not read (SETTINGS and
                // PING floods) gets nothing more: produceFrames holds frames while congested.
                session.goAway(error: UInt32(NGHTTP2_ENHANCE_YOUR_CALM.rawValue))
            } else {
                worker.stats.inc(.http2ProtocolErrors)
                worker.logRejection("http2", "HTTP/2 connection error: \(session.lastError)")
            }
            produceFrames()
            conn.closeAfterFlush()
            return
        }
        if session.wantsWrite { conn.requestFlush() }
    }

    func produceFrames() {
        var closeAfter = false
        if calmedDown && !goneAway {
            goneAway = true
            session.goAway(error: UInt32(NGHTTP2_ENHANCE_YOUR_CALM.rawValue))
            closeAfter = true
        }
        // Once close_notify is queued nothing may follow it (the GOAWAY went out before it).
        if conn.isClosing { return }
        // A client that does not read its socket gets no more frames: they wait inside nghttp2,
        // which counts the ACKs the client never read and fails the session as a flood (SETTINGS
        // and PING floods), so our output stays bounded by the high watermark.
        if conn.isCongested && !goneAway && !closingGracefully { return }
        let out = worker.frameScratch
        out.clear()
        session.produce(into: out)
        if !out.isEmpty { conn.send(out.readPointer, out.readableBytes) }
        if session.protocolErrorResets != malformedCounted {
            // nghttp2 refused a malformed request on its stream (RST_STREAM PROTOCOL_ERROR).
            worker.stats.add(.http2MalformedRequests, session.protocolErrorResets &- malformedCounted)
            malformedCounted = session.protocolErrorResets
            worker.logRejection("http2", "HTTP/2 malformed request: stream reset with PROTOCOL_ERROR")
        }
        if session.oversizedHeaderResets != oversizedCounted {
            // A request header list over SETTINGS_MAX_HEADER_LIST_SIZE: its stream was reset.
            worker.stats.add(.headersTooLarge, session.oversizedHeaderResets &- oversizedCounted)
            oversizedCounted = session.oversizedHeaderResets
            worker.logRejection("http2", "HTTP/2 request header list over the 64 KiB limit: stream reset")
        }
        // GOAWAY first, then close_notify and FIN; what the client still sends is read and dropped
        // for up to the default linger (1 s), so that the kernel does not answer it with a TCP
        // reset that can reach the client before it has read the GOAWAY (a rapid-reset client is
        // typically still writing when the limit trips).
        if closeAfter { conn.closeAfterFlush(); return }
        if !errorCounted, let code = session.goAwaySent, code != 0 {
            // nghttp2 ended the connection for a protocol or compression error of the client.
            errorCounted = true
            if code != UInt32(NGHTTP2_ENHANCE_YOUR_CALM.rawValue) || !calmedDown {
                worker.stats.inc(.http2ProtocolErrors)
                worker.logRejection("http2", "HTTP/2 connection error: sent GOAWAY with error code \(code)")
            }
        }
        if !session.isAlive && streams.isEmpty { conn.closeAfterFlush(); return }
        // Streams that waited for their DATA to be framed may go on once it was.
        if !blocked.isEmpty && !conn.isCongested { onDrained() }
    }

    func onDrained() {
        if session.wantsWrite { conn.requestFlush() }   // frames held back while congested
        if blocked.isEmpty { return }
        let b = blocked
        blocked.removeAll()
        for s in b { s.pumpResponse() }
    }

    func block(_ s: H2ServerStream) { if !blocked.contains(where: { $0 === s }) { blocked.append(s) } }

    /// The connection closed: every exchange in flight ends.
    func connectionClosed() {
        blockStream = nil
        blockStreamID = 0
        let all = Array(streams.values)
        streams.removeAll()
        for s in all { s.abort(flag: .downstreamConnectionTermination) }
        blocked.removeAll()
        for s in all { recycle(s) }
    }

    /// Drain: GOAWAY; streams in flight finish, then the connection closes.
    func drain() {
        session.goAway()
        conn.requestFlush()
    }

    var congested: Bool { conn.isCongested }

    // MARK: HTTP2SessionDelegate

    /// The stream whose header block is being received (blocks arrive contiguously), so each
    /// field reaches it without a dictionary lookup; valid from h2BeginHeaders to the block's end.
    private var blockStream: Unmanaged<H2ServerStream>? = nil
    private var blockStreamID: Int32 = 0

    /// The highest stream id that began a header block: a larger one is a new stream (ids only
    /// grow, RFC 9113 §5.1.1), known to be absent from `streams` without a lookup.
    private var highestStream: Int32 = 0

    func h2BeginHeaders(stream: Int32) {
        if stream <= highestStream, let s = streams[stream] {
            blockStream = Unmanaged.passUnretained(s)
        } else {
            if stream > highestStream { highestStream = stream }
            let s = worker.h2StreamPool.popLast() ?? H2ServerStream(worker: worker)
            s.start(handler: self, id: stream)
            streams[stream] = s
            blockStream = Unmanaged.passUnretained(s)
            worker.stats.inc(.requestsTotal)
        }
        blockStreamID = stream
    }

    func h2Header(stream: Int32, name: UnsafePointer<UInt8>, nameLength: Int, value: UnsafePointer<UInt8>, valueLength: Int) -> Bool {
        if stream == blockStreamID, let s = blockStream {
            return s._withUnsafeGuaranteedRef { $0.header(name, nameLength, value, valueLength) }
        }
        guard let s = streams[stream] else { return true }
        return s.header(name, nameLength, value, valueLength)
    }

    func h2HeadersComplete(stream: Int32, trailers: Bool, endStream: Bool) {
        if stream == blockStreamID, let b = blockStream {
            // The block's stream is still in `streams` (every removal clears `blockStream`); held
            // strongly while the exchange starts (it may close the connection and free the stream).
            let s = b.takeUnretainedValue()
            blockStream = nil
            blockStreamID = 0
            s.headersComplete(endStream: endStream)
            return
        }
        guard let s = streams[stream] else { return }
        s.headersComplete(endStream: endStream)
    }

    func h2Data(stream: Int32, _ p: UnsafePointer<UInt8>, _ n: Int) {
        guard let s = streams[stream] else { session.consume(stream: stream, n); return }
        s.requestData(p, n)
    }

    func h2DataEnd(stream: Int32) { streams[stream]?.requestEnded() }

    func h2StreamClosed(stream: Int32, error: UInt32) {
        if stream == blockStreamID { blockStream = nil; blockStreamID = 0 }
        guard let s = streams.removeValue(forKey: stream) else { return }
        if error != 0 { s.abort(flag: .downstreamConnectionTermination) } else { s.closedNormally() }
        recycle(s)
        if streams.isEmpty { conn.h2WentIdle() }
    }

    /// Rapid-reset accounting: only resets the client sent, for streams it had not received a
    /// complete response on (the proxy's own resets never count).
    func h2PeerReset(stream: Int32, error: UInt32) {
        guard let s = streams[stream], !s.isFinished else { return }
        let now = worker.loop.now
        if now &- resetWindowStart > 1_000_000_000 { resetWindowStart = now; resetsInWindow = 0 }
        resetsInWindow += 1
        if resetsInWindow > H2ServerHandler.maxPrematureResetsPerSecond && !calmedDown {
            calmedDown = true
            worker.stats.inc(.http2RapidResetClosures)
            worker.logRejection("http2", "HTTP/2 client reset \(resetsInWindow) streams within a second: closing the connection (rapid reset)")
            // Acted on at the next flush, outside nghttp2's callbacks.
            conn.requestFlush()
        }
    }

    private func recycle(_ s: H2ServerStream) {
        if !blocked.isEmpty { blocked.removeAll { $0 === s } }
        if worker.h2StreamPool.count < 256 { worker.h2StreamPool.append(s) } else { s.retire() }
    }

    private var calmedDown = false
    private var goneAway = false

    func h2GoAway(lastStream: Int32, error: UInt32) {}
}

