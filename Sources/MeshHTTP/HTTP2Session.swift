import CNghttp2
import MeshCore

/// Events of an HTTP/2 connection, delivered while `HTTP2Session.receive` runs. Header names and
/// values point into nghttp2's buffers and are valid only during the call.
public protocol HTTP2SessionDelegate: AnyObject {
    /// A HEADERS block starts on `stream` (a new request on a server, the response or trailers on a client).
    func h2BeginHeaders(stream: Int32)
    /// One header field; return false to reset the stream (e.g. a forbidden header).
    func h2Header(stream: Int32, name: UnsafePointer<UInt8>, nameLength: Int, value: UnsafePointer<UInt8>, valueLength: Int) -> Bool
    /// The HEADERS block is complete; `trailers` when it follows DATA; `endStream` when no body follows.
    func h2HeadersComplete(stream: Int32, trailers: Bool, endStream: Bool)
    /// Body bytes. Flow-control credit returns only when the owner calls `consume`.
    func h2Data(stream: Int32, _ p: UnsafePointer<UInt8>, _ n: Int)
    /// END_STREAM arrived on a DATA frame.
    func h2DataEnd(stream: Int32)
    /// The stream is gone (error 0 = closed normally, else the RST_STREAM/GOAWAY error code).
    func h2StreamClosed(stream: Int32, error: UInt32)
    /// The peer sent GOAWAY: streams above `lastStream` were not processed.
    func h2GoAway(lastStream: Int32, error: UInt32)
    /// The peer sent RST_STREAM (before `h2StreamClosed` for that stream).
    func h2PeerReset(stream: Int32, error: UInt32)
}

extension HTTP2SessionDelegate {
    public func h2PeerReset(stream: Int32, error: UInt32) {}
}

/// An HTTP/2 connection (RFC 9113) on nghttp2, without I/O: bytes read from the socket go into
/// `receive`, bytes to write come out of `produce`. Settings bound what one peer may pin
/// (concurrent streams, header list size, windows); flow control is manual, so a stream's window
/// reopens only as its data is forwarded (back-pressure from the other side of the proxy).
public final class HTTP2Session {
    public enum Role: Sendable { case server, client }

    /// What this side allows the peer (abuse limits of DESIGN §7/§8).
    public struct Settings: Sendable {
        public var maxConcurrentStreams: UInt32 = 1000
        public var initialWindowSize: UInt32 = 1 << 20          // per stream
        public var connectionWindowSize: Int32 = 8 << 20
        public var maxHeaderListSize: UInt32 = 64 * 1024
        public var maxFrameSize: UInt32 = 16 * 1024
        public init() {}
    }

    public let role: Role
    public let settings: Settings
    private var session: OpaquePointer?
    /// nghttp2's allocator for this session (counts its bytes; gives an idle session's frame
    /// buffer pages back, HTTP2Memory.swift). Declared before `session` is created and freed
    /// after it (deinit deletes the session first).
    public let memory = HTTP2Memory()
    /// Size (RFC 9113 §6.5.2: name + value + 32 per field) of the header block being received;
    /// blocks arrive contiguously, so one counter serves the connection.
    fileprivate var headerBlockSize = 0
    /// Streams reset because their header list exceeded the limit.
    public private(set) var oversizedHeaderResets: UInt64 = 0
    /// Unowned without the check: the delegate owns this session and outlives every callback
    /// (the checked `unowned` cost a swift_unownedRetainStrong on each header, frame and chunk).
    public unowned(unsafe) let delegate: HTTP2SessionDelegate
    /// Outgoing bodies by stream (the data provider reads from them).
    private var outgoing: [Int32: StreamOutput] = [:]
    private let nvScratch = ByteBuffer(lazyCapacity: 4096)
    /// Name offset and length, value offset and length, nghttp2_nv flags.
    private var nvOffsets: [(Int, Int, Int, Int, UInt8)] = []
    /// Set when nghttp2 reports a connection-level error; the owner should flush and close.
    public private(set) var failed = false
    public private(set) var lastError = ""
    /// nghttp2's code for the failure in `lastError` (NGHTTP2_ERR_FLOODED for a control-frame or
    /// CONTINUATION flood, others for protocol errors).
    public private(set) var lastErrorCode: Int32 = 0
    /// Grows whenever the connection makes progress: a stream opened, or DATA bytes received or
    /// sent through the flow-control windows. A proxy compares it over time to end connections
    /// whose streams are stalled (a zero-window reader, a client that never sends its body).
    public private(set) var progress: UInt64 = 0
    /// The error code of the GOAWAY this side sent, once it sent one (0 is a graceful GOAWAY):
    /// how a proxy learns that nghttp2 ended the connection for a protocol or compression error.
    public private(set) var goAwaySent: UInt32? = nil
    /// Streams this side reset with PROTOCOL_ERROR. Only nghttp2 does that on its own, for a
    /// malformed message (RFC 9113 §8.1.1, §8.2: forbidden or invalid fields, pseudo-headers out
    /// of place, a body that does not match its content-length); the proxy's resets use other codes.
    public private(set) var protocolErrorResets: UInt64 = 0
    /// True when the session failed because the peer flooded it (ACKs it never read, endless
    /// CONTINUATION frames): a denial-of-service attempt rather than a broken client. nghttp2
    /// reports the CONTINUATION flood (more than 8 after a HEADERS) with its own code.
    public var failedByFlood: Bool {
        lastErrorCode == NGHTTP2_ERR_FLOODED.rawValue || lastErrorCode == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS.rawValue
    }

    /// Spare StreamOutput objects, reused so that a stream costs no allocation.
    private var spare: [StreamOutput] = []

    private func takeOutput() -> StreamOutput {
        if let o = spare.popLast() { return o }
        return StreamOutput()
    }

    /// Frees the spare stream buffers (the connection went idle; streams allocate them again).
    public func releaseSpares() {
        spare.removeAll()
        nvScratch.releaseStorage()
        if nvOffsets.isEmpty { nvOffsets = [] }   // their capacity (reserved again by the next request)
        nva = []
    }

    /// The connection went idle: frees the spare stream buffers and, when nghttp2 has nothing
    /// left to send (so its frame buffer holds nothing live), gives the pages of its large
    /// blocks back (`HTTP2Memory.releaseIdlePages`). Traffic may come back at any time: the
    /// blocks stay allocated and their pages fault back in on the next frame. Returns the bytes
    /// of pages given back.
    @discardableResult
    public func releaseIdleMemory() -> Int {
        releaseSpares()
        if failed || goAwaySent != nil || !outgoing.isEmpty || wantsWrite { return 0 }
        return memory.releaseIdlePages()
    }

    private func recycle(_ o: StreamOutput) {
        if o.buffer.capacity > 64 * 1024 { return }   // do not keep a grown buffer around
        o.buffer.clear()
        o.finished = false
        o.trailerBytes = nil
        o.trailerOffsets.removeAll(keepingCapacity: true)
        o.deferred = false
        if spare.count < 64 { spare.append(o) }
    }

    /// Bytes queued for one stream, with the end-of-stream marker and optional trailers.
    final class StreamOutput {
        let buffer = ByteBuffer(capacity: 4096)
        var finished = false
        /// Trailer fields: bytes and (name offset, name length, value offset, value length).
        var trailerBytes: ByteBuffer? = nil
        var trailerOffsets: [(Int, Int, Int, Int, UInt8)] = []
        var deferred = false
    }

    public init(role: Role, delegate: HTTP2SessionDelegate, settings: Settings = Settings()) {
        self.role = role
        self.delegate = delegate
        self.settings = settings
        var cbs: OpaquePointer?
        nghttp2_session_callbacks_new(&cbs)
        HTTP2Session.installCallbacks(cbs)
        var opt: OpaquePointer?
        nghttp2_option_new(&opt)
        nghttp2_option_set_no_auto_window_update(opt, 1)
        nghttp2_option_set_max_send_header_block_length(opt, 64 * 1024)
        let me = Unmanaged.passUnretained(self).toOpaque()
        var mem = memory.table   // copied into the session by nghttp2
        if role == .server {
            nghttp2_session_server_new3(&session, cbs, me, opt, &mem)
        } else {
            nghttp2_session_client_new3(&session, cbs, me, opt, &mem)
        }
        memory.markSessionBlocks()   // the frame buffer: the one block released while idle
        nghttp2_option_del(opt)
        nghttp2_session_callbacks_del(cbs)
        var iv = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue), value: settings.maxConcurrentStreams),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: settings.initialWindowSize),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue), value: settings.maxHeaderListSize),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_FRAME_SIZE.rawValue), value: settings.maxFrameSize),
        ]
        nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), &iv, iv.count)
        // Open the connection window beyond the 64 KiB default.
        let extra = settings.connectionWindowSize - 65535
        if extra > 0 { nghttp2_submit_window_update(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, extra) }
    }

    deinit {
        nghttp2_session_del(session)
        // Streams still open when the connection goes: their data providers' retains.
        for (_, out) in outgoing { Unmanaged.passUnretained(out).release() }
    }

    // MARK: I/O

    /// Feeds bytes read from the peer; consumes all of `input`. False on a connection error (a
    /// GOAWAY is queued: produce, flush and close).
    public func receive(_ input: ByteBuffer) -> Bool {
        if input.isEmpty { return !failed }
        let n = nghttp2_session_mem_recv(session, input.readPointer, input.readableBytes)
        if n < 0 {
            failed = true
            lastErrorCode = Int32(n)
            lastError = String(cString: nghttp2_strerror(Int32(n)))
            input.clear()
            return false
        }
        input.consume(Int(n))
        return !failed
    }

    /// Appends every frame nghttp2 has ready to `out` (one write for all of them).
    public func produce(into out: ByteBuffer) {
        while true {
            var p: UnsafePointer<UInt8>? = nil
            let n = nghttp2_session_mem_send(session, &p)
            if n <= 0 { if n < 0 { failed = true; lastError = String(cString: nghttp2_strerror(Int32(n))) }; return }
            out.append(p!, n)
        }
    }

    public var wantsWrite: Bool { nghttp2_session_want_write(session) != 0 }
    /// False once both sides are done (GOAWAY exchanged and no stream left).
    public var isAlive: Bool { nghttp2_session_want_read(session) != 0 || nghttp2_session_want_write(session) != 0 }

    // MARK: headers

    /// Adds a header for the next submit (names must be lowercase for HTTP/2).
    /// `flags`: `nghttp2_nv` flags (`KnownHeader.hpackFlags`: per-request values such as trace
    /// context go `NO_INDEX`, out of the HPACK dynamic table).
    public func addHeader(_ name: UnsafePointer<UInt8>, _ nl: Int, _ value: UnsafePointer<UInt8>, _ vl: Int, flags: UInt8 = 0) {
        let ns = nvScratch.writeIndex
        nvScratch.append(name, nl)
        let vs = nvScratch.writeIndex
        nvScratch.append(value, vl)
        nvOffsets.append((ns, nl, vs, vl, flags))
    }

    /// Adds a header whose bytes stay where they are, unchanged, until the next submit call (the
    /// fields of a head being emitted): recorded by address instead of copied to the scratch
    /// buffer first, since nghttp2 copies the block at submit. Marked in the entry's flags with
    /// `inPlace` (no nghttp2_nv flag uses that bit), which `withHeaders` strips.
    public func addHeaderInPlace(_ name: UnsafePointer<UInt8>, _ nl: Int, _ value: UnsafePointer<UInt8>, _ vl: Int, flags: UInt8 = 0) {
        nvOffsets.append((Int(bitPattern: name), nl, Int(bitPattern: value), vl, flags | HTTP2Session.inPlace))
    }

    /// The mark of an `addHeaderInPlace` entry: its offsets are addresses.
    static let inPlace: UInt8 = 0x80

    /// The flags of the headers added so far, in order (tests).
    public var pendingHeaderFlags: [UInt8] { nvOffsets.map { $0.4 & ~HTTP2Session.inPlace } }

    public func addHeader(_ name: StaticString, _ value: UnsafePointer<UInt8>, _ vl: Int) {
        addHeader(name.utf8Start, name.utf8CodeUnitCount, value, vl)
    }

    public func addHeader(_ name: String, _ value: String) {
        var n = name, v = value
        n.withUTF8 { nb in v.withUTF8 { vb in addHeader(nb.baseAddress ?? UnsafePointer(bitPattern: 1)!, nb.count, vb.baseAddress ?? UnsafePointer(bitPattern: 1)!, vb.count) } }
    }

    /// Reused for every header block: submitting a stream allocates nothing once warm.
    private var nva: [nghttp2_nv] = []

    private func withHeaders<R>(_ body: (UnsafePointer<nghttp2_nv>, Int) -> R) -> R {
        nva.removeAll(keepingCapacity: true)
        let base = nvScratch.base
        for (ns, nl, vs, vl, fl) in nvOffsets {
            if fl & HTTP2Session.inPlace != 0 {
                nva.append(nghttp2_nv(name: UnsafeMutablePointer(bitPattern: ns), value: UnsafeMutablePointer(bitPattern: vs),
                                      namelen: nl, valuelen: vl, flags: fl & ~HTTP2Session.inPlace))
            } else {
                nva.append(nghttp2_nv(name: base + ns, value: base + vs, namelen: nl, valuelen: vl, flags: fl))
            }
        }
        defer { nvOffsets.removeAll(keepingCapacity: true); nvScratch.clear() }
        return nva.withUnsafeBufferPointer { body($0.baseAddress!, $0.count) }
    }

    // MARK: submitting

    /// Client: sends the headers added so far as a request; returns the stream id (< 0 on error).
    public func submitRequest(endStream: Bool) -> Int32 {
        let out = takeOutput()
        out.finished = endStream
        let id: Int32 = withHeaders { nva, n in
            if endStream { return nghttp2_submit_request(session, nil, nva, n, nil, nil) }
            var prd = dataProvider(out)
            let r = nghttp2_submit_request(session, nil, nva, n, &prd, nil)
            if r <= 0 { Unmanaged.passUnretained(out).release() }   // the provider was never installed
            return r
        }
        if id > 0 && !endStream { outgoing[id] = out } else { recycle(out) }
        return id
    }

    /// Server: sends the headers added so far as the response of `stream`.
    @discardableResult
    public func submitResponse(stream: Int32, endStream: Bool) -> Bool {
        let out = takeOutput()
        out.finished = endStream
        let rc: Int32 = withHeaders { nva, n in
            if endStream { return nghttp2_submit_response(session, stream, nva, n, nil) }
            var prd = dataProvider(out)
            let r = nghttp2_submit_response(session, stream, nva, n, &prd)
            if r != 0 { Unmanaged.passUnretained(out).release() }
            return r
        }
        if rc == 0 && !endStream { outgoing[stream] = out } else { recycle(out) }
        return rc == 0
    }

    /// Server: sends the headers added so far as an informational (1xx) response.
    public func submitInformational(stream: Int32) {
        _ = withHeaders { nva, n in nghttp2_submit_headers(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream, nil, nva, n, nil) }
    }

    /// Queues body bytes for `stream`.
    public func sendData(stream: Int32, _ p: UnsafeRawPointer, _ n: Int) {
        guard let out = outgoing[stream], !out.finished else { return }
        out.buffer.append(p, n)
        if out.deferred { out.deferred = false; nghttp2_session_resume_data(session, stream) }
    }

    /// Ends the body of `stream`, with trailers (the headers added so far) when `withTrailers`.
    public func finishData(stream: Int32, withTrailers: Bool) {
        guard let out = outgoing[stream] else { _ = withHeaders { _, _ in 0 }; return }
        if withTrailers && !nvOffsets.isEmpty {
            let tb = ByteBuffer(capacity: nvScratch.readableBytes + 16)
            tb.append(from: nvScratch, 0, nvScratch.writeIndex)
            out.trailerBytes = tb
            out.trailerOffsets = nvOffsets
            // Trailers go out later (from the data provider): bytes added in place are copied now.
            for (i, e) in nvOffsets.enumerated() where e.4 & HTTP2Session.inPlace != 0 {
                let ns = tb.writeIndex
                tb.append(UnsafeRawPointer(bitPattern: e.0)!, e.1)
                let vs = tb.writeIndex
                tb.append(UnsafeRawPointer(bitPattern: e.2)!, e.3)
                out.trailerOffsets[i] = (ns, e.1, vs, e.3, e.4 & ~HTTP2Session.inPlace)
            }
        }
        nvOffsets.removeAll(keepingCapacity: true)
        nvScratch.clear()
        out.finished = true
        if out.deferred { out.deferred = false; nghttp2_session_resume_data(session, stream) }
    }

    /// Bytes queued but not yet framed for `stream` (for back-pressure).
    public func pendingData(stream: Int32) -> Int { outgoing[stream]?.buffer.readableBytes ?? 0 }

    /// Returns flow-control credit for `n` bytes of `stream` that were forwarded.
    public func consume(stream: Int32, _ n: Int) {
        if n > 0 { nghttp2_session_consume(session, stream, n) }
    }

    public func reset(stream: Int32, error: UInt32) {
        nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream, error)
    }

    /// Graceful shutdown: GOAWAY with the last stream processed; streams in flight finish.
    public func goAway(error: UInt32 = 0) {
        if error != 0 {
            nghttp2_session_terminate_session(session, error)
            return
        }
        // GOAWAY naming the last stream processed: streams up to it finish, no new ones start.
        let last = nghttp2_session_get_last_proc_stream_id(session)
        nghttp2_submit_goaway(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), last, 0, nil, 0)
    }

    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS.
    public var peerMaxConcurrentStreams: UInt32 {
        nghttp2_session_get_remote_settings(session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)
    }

    // MARK: data provider

    private func dataProvider(_ out: StreamOutput) -> nghttp2_data_provider {
        var prd = nghttp2_data_provider()
        prd.source.ptr = Unmanaged.passRetained(out).toOpaque()
        prd.read_callback = { session, stream, buf, length, flags, source, user in
            guard let src = source?.pointee.ptr, let buf = buf, let flags = flags, user != nil else { return Int(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue) }
            let out = Unmanaged<StreamOutput>.fromOpaque(src).takeUnretainedValue()
            let n = min(length, out.buffer.readableBytes)
            if n > 0 {
                buf.update(from: out.buffer.readPointer, count: n)
                out.buffer.consume(n)
                Unmanaged<HTTP2Session>.fromOpaque(user!).takeUnretainedValue().progress &+= UInt64(n)
            }
            if out.buffer.isEmpty {
                if out.finished {
                    flags.pointee |= UInt32(NGHTTP2_DATA_FLAG_EOF.rawValue)
                    if let tb = out.trailerBytes {
                        flags.pointee |= UInt32(NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue)
                        var nva: [nghttp2_nv] = []
                        for (ns, nl, vs, vl, fl) in out.trailerOffsets {
                            nva.append(nghttp2_nv(name: tb.base + ns, value: tb.base + vs, namelen: nl, valuelen: vl,
                                                  flags: fl))
                        }
                        // nghttp2 copies the header block during submit.
                        nghttp2_submit_trailer(session, stream, nva, nva.count)
                    }
                } else if n == 0 {
                    out.deferred = true
                    return Int(NGHTTP2_ERR_DEFERRED.rawValue)
                }
            }
            return n
        }
        return prd
    }

    // MARK: callbacks

    fileprivate func streamClosed(_ stream: Int32, _ error: UInt32) {
        // Most streams (a request or response without a body) never enter `outgoing`: no hashing then.
        if !outgoing.isEmpty, let out = outgoing.removeValue(forKey: stream) {
            Unmanaged.passUnretained(out).release()   // the data provider's retain
            recycle(out)
        }
        delegate.h2StreamClosed(stream: stream, error: error)
    }

    private static func installCallbacks(_ cbs: OpaquePointer?) {
        nghttp2_session_callbacks_set_on_begin_headers_callback(cbs) { _, frame, user in
            guard let frame = frame, let user = user else { return 0 }
            Unmanaged<HTTP2Session>.fromOpaque(user)._withUnsafeGuaranteedRef { s in
                s.headerBlockSize = 0
                s.progress &+= 1
                s.delegate.h2BeginHeaders(stream: frame.pointee.hd.stream_id)
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_header_callback(cbs) { _, frame, name, nl, value, vl, _, user in
            guard let frame = frame, let user = user, let name = name, let value = value else { return 0 }
            return Unmanaged<HTTP2Session>.fromOpaque(user)._withUnsafeGuaranteedRef { s -> Int32 in
                s.headerBlockSize += nl + vl + 32
                if s.headerBlockSize > Int(s.settings.maxHeaderListSize) {
                    s.oversizedHeaderResets &+= 1
                    return Int32(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)   // resets the stream
                }
                let ok = s.delegate.h2Header(stream: frame.pointee.hd.stream_id, name: name, nameLength: nl, value: value, valueLength: vl)
                return ok ? 0 : Int32(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
            }
        }
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs) { _, frame, user in
            guard let frame = frame, let user = user else { return 0 }
            Unmanaged<HTTP2Session>.fromOpaque(user)._withUnsafeGuaranteedRef { s in
                HTTP2Session.frameReceived(s, frame)
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_frame_send_callback(cbs) { _, frame, user in
            guard let frame = frame, let user = user else { return 0 }
            if frame.pointee.hd.type == UInt8(NGHTTP2_GOAWAY.rawValue) {
                Unmanaged<HTTP2Session>.fromOpaque(user).takeUnretainedValue().goAwaySent = frame.pointee.goaway.error_code
            } else if frame.pointee.hd.type == UInt8(NGHTTP2_RST_STREAM.rawValue),
                      frame.pointee.rst_stream.error_code == UInt32(NGHTTP2_PROTOCOL_ERROR.rawValue) {
                Unmanaged<HTTP2Session>.fromOpaque(user).takeUnretainedValue().protocolErrorResets &+= 1
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs) { _, _, stream, data, len, user in
            guard let user = user, let data = data else { return 0 }
            Unmanaged<HTTP2Session>.fromOpaque(user)._withUnsafeGuaranteedRef { s in
                s.progress &+= UInt64(len) &+ 1
                s.delegate.h2Data(stream: stream, data, len)
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs) { _, stream, error, user in
            guard let user = user else { return 0 }
            Unmanaged<HTTP2Session>.fromOpaque(user)._withUnsafeGuaranteedRef { $0.streamClosed(stream, error) }
            return 0
        }
    }

    /// A frame arrived (on_frame_recv): the delegate hears of complete header blocks, the end
    /// of a body, GOAWAY and RST_STREAM.
    private static func frameReceived(_ s: HTTP2Session, _ frame: UnsafePointer<nghttp2_frame>) {
        let hd = frame.pointee.hd
        let end = hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
        switch Int(hd.type) {
        case Int(NGHTTP2_HEADERS.rawValue):
            // Category HEADERS is a block after the first one on the stream: trailers, or (client
            // side) the final response after a 1xx; the delegate tells them apart by :status.
            let later = frame.pointee.headers.cat == NGHTTP2_HCAT_HEADERS
            s.delegate.h2HeadersComplete(stream: hd.stream_id, trailers: later, endStream: end)
        case Int(NGHTTP2_DATA.rawValue):
            if end { s.delegate.h2DataEnd(stream: hd.stream_id) }
        case Int(NGHTTP2_GOAWAY.rawValue):
            s.delegate.h2GoAway(lastStream: frame.pointee.goaway.last_stream_id, error: frame.pointee.goaway.error_code)
        case Int(NGHTTP2_RST_STREAM.rawValue):
            s.delegate.h2PeerReset(stream: hd.stream_id, error: frame.pointee.rst_stream.error_code)
        default:
            break
        }
    }
}
