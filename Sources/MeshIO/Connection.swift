import CMeshShims
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// A non-blocking stream socket on one event loop, with optional transport security under it.
/// It reads into `input` (plaintext) up to `inputLimit` bytes and stops there until the owner
/// consumes and calls `resumeReading()` (back-pressure); `send` queues bytes in `output`, which is
/// flushed once per loop iteration so that a response head and body leave in one write. Subclasses
/// (the HTTP sides of the proxy) override the `on...` hooks. Registered edge-triggered once for
/// in, out and peer hang-up, so no epoll_ctl is needed while it lives.
open class Connection: Pollable {
    public let loop: EventLoop
    public let input: ByteBuffer
    public let output: ByteBuffer
    /// Ciphertext read from the socket, not yet decrypted (TLS only).
    private let raw: ByteBuffer?
    /// Plaintext queued during this loop iteration, encrypted at flush (TLS only).
    private let plainPending: ByteBuffer?
    public let security: TransportSecurity?
    /// Stop reading from the socket while `input` holds this much.
    public var inputLimit = 96 * 1024
    /// `onDrained` is called when `output` falls to `lowWatermark` after exceeding `highWatermark`.
    public var highWatermark = 256 * 1024
    public var lowWatermark = 64 * 1024

    public private(set) var isConnecting = false
    public private(set) var isEstablished = false
    public private(set) var isClosed = false
    /// The peer closed its side (read returned 0 or close_notify arrived).
    public private(set) var peerClosed = false
    private var mayRead = false
    private var writeBlocked = false
    private var flushQueued = false
    private var aboveHigh = false
    private var closeWhenFlushed = false
    private var lingering = false
    /// `shutdownWriteAfterFlush()` was called: no more bytes are queued, and the write side is
    /// shut down (after close_notify, with TLS) once `output` is flushed.
    public private(set) var writeShutdownRequested = false
    /// The write side is shut down (FIN sent).
    public private(set) var writeShutdownDone = false

    public init(loop: EventLoop, fd: Int32, security: TransportSecurity?, connecting: Bool) {
        self.loop = loop
        self.security = security
        // Allocated at first use and given back while idle (`hibernate()`).
        self.input = ByteBuffer(lazyCapacity: 16 * 1024)
        self.output = ByteBuffer(lazyCapacity: 16 * 1024)
        self.raw = security == nil ? nil : ByteBuffer(lazyCapacity: 17 * 1024)
        self.plainPending = security == nil ? nil : ByteBuffer(lazyCapacity: 4 * 1024)
        self.isConnecting = connecting
        super.init(fd: fd)
    }

    /// Registers with the loop. A server-side plain connection is established at once; TLS waits
    /// for its handshake; a client waits for connect.
    public func start() -> Bool {
        let ev = EPOLLIN.rawValue | EPOLLOUT.rawValue | EPOLLRDHUP.rawValue | EPOLLET.rawValue
        guard loop.register(self, events: ev) else { Glibc.close(fd); isClosed = true; return false }
        if !isConnecting {
            if security == nil { isEstablished = true; onEstablished() }
        }
        return true
    }

    // MARK: hooks for subclasses

    /// TCP connected (and, with TLS, before the handshake).
    open func onConnected() {}
    /// The transport is ready for application bytes (after the TLS handshake, if any).
    open func onEstablished() {}
    /// New plaintext is in `input`.
    open func onInput() {}
    /// `output` drained below the low watermark after being above the high one.
    open func onDrained() {}
    /// The connection failed (connect error, reset, TLS failure) or the peer closed it. `error` is an
    /// errno, 0 for a clean end of stream, or -1 for a TLS failure (see `security.failureReason`).
    /// Called once; the connection is already closed when this runs unless `error == 0` and it was
    /// only the peer's half.
    open func onPeerClosed(error: Int32) {}

    // MARK: events

    public override func onEvents(_ events: UInt32) {
        if isClosed { return }
        if isConnecting {
            if events & (EPOLLOUT.rawValue | EPOLLERR.rawValue | EPOLLHUP.rawValue) == 0 { return }
            let err = Socket.pendingError(fd)
            if err != 0 { fail(err); return }
            isConnecting = false
            onConnected()
            if isClosed { return }
            if let sec = security {
                if sec.startHandshake(output: output) == .failed { fail(-1); return }
                flushNow()
            } else {
                isEstablished = true
                onEstablished()
            }
            if isClosed { return }
        }
        if events & EPOLLOUT.rawValue != 0 && writeBlocked {
            writeBlocked = false
            flushNow()
            if isClosed { return }
        }
        if events & (EPOLLIN.rawValue | EPOLLRDHUP.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 {
            mayRead = true
            if events & (EPOLLRDHUP.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 { hangupSeen = true }
            readAvailable(hangup: hangupSeen)
        }
    }

    open override func onFlush() {
        flushQueued = false
        if !isClosed { flushNow() }
        if readDeferred && !isClosed {
            readDeferred = false
            readAvailable(hangup: false)
        }
    }

    /// Reads what the socket has (bounded by `inputLimit`) and hands it to the owner, repeating while
    /// the owner keeps consuming, up to a budget per event so one busy peer cannot starve the others
    /// on this worker (the rest is picked up at the end of the loop iteration).
    private func readAvailable(hangup: Bool) {
        if inReadLoop { return }
        inReadLoop = true
        defer { inReadLoop = false }
        var eofSeen = false
        var err: Int32 = 0
        var budget = 16
        outer: while !isClosed {
            var got = false
            if let sec = security, let raw = raw, !raw.isEmpty, input.readableBytes < inputLimit, !peerClosed {
                if !decryptPending(sec, raw) { return }
                if tlsGotData { tlsGotData = false; got = true }
            }
            while mayRead && !isClosed && !peerClosed {
                if lingering {
                    var scratch: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
                    let n = withUnsafeMutableBytes(of: &scratch) { Glibc.read(fd, $0.baseAddress, 64) }
                    if n > 0 { continue }
                    if n == 0 || (mesh_errno() != EAGAIN && mesh_errno() != EINTR) { closeNow(); return }
                    mayRead = false
                    return
                }
                if input.readableBytes >= inputLimit { break }
                let n: Int
                let want: Int
                if let raw = raw {
                    raw.reserve(4 * 1024)
                    want = min(raw.writableBytes, 256 * 1024)
                    n = Glibc.read(fd, raw.writePointer, want)
                    if n > 0 { raw.commit(n) }
                } else {
                    input.reserve(4 * 1024)
                    want = min(input.writableBytes, 256 * 1024)
                    n = Glibc.read(fd, input.writePointer, want)
                    if n > 0 { input.commit(n) }
                }
                if n > 0 {
                    if let sec = security, let raw = raw {
                        if !decryptPending(sec, raw) { return }
                        if tlsGotData { tlsGotData = false; got = true }
                        if peerClosed { break }
                    } else {
                        got = true
                    }
                    if n < want && !hangup && !hangupSeen { mayRead = false }
                } else if n == 0 {
                    eofSeen = true
                    mayRead = false
                } else {
                    let e = mesh_errno()
                    if e == EAGAIN || e == EWOULDBLOCK { mayRead = false }
                    else if e == EINTR { continue }
                    else { err = e; mayRead = false }
                }
            }
            if got {
                onInput()
                if isClosed { return }
                budget -= 1
                if (mayRead || !(raw?.isEmpty ?? true)) && input.readableBytes < inputLimit && !peerClosed {
                    if budget > 0 { continue outer }
                    readDeferred = true
                    requestFlush()
                }
            }
            break
        }
        if isClosed { return }
        if err != 0 { fail(err); return }
        if eofSeen && !peerClosed {
            peerClosed = true
            onPeerClosed(error: 0)
        }
    }

    private var inReadLoop = false
    private var readDeferred = false
    /// The peer hung up (reported once by edge-triggered epoll): read until end of stream even
    /// across back-pressure pauses, or the EOF would never be seen.
    private var hangupSeen = false

    private var tlsGotData = false

    /// Runs decryption over buffered ciphertext. Returns false if the connection failed.
    private func decryptPending(_ sec: TransportSecurity, _ raw: ByteBuffer) -> Bool {
        let before = input.readableBytes
        let wasEstablished = isEstablished
        let r = sec.decrypt(raw: raw, input: input, output: output, limit: inputLimit)
        if !output.isEmpty { requestFlush() }
        switch r {
        case .failed:
            if !output.isEmpty { flushNow() }
            fail(-1)
            return false
        case .handshakeDone:
            if !wasEstablished {
                isEstablished = true
                onEstablished()
                if isClosed { return false }
            }
        case .closed:
            if !wasEstablished && sec.isEstablished {
                // The handshake's last flight, data and close_notify came in one read (a caller
                // that sends its bytes and closes at once): established first, then the data,
                // then the end; otherwise the owner would wait for a handshake that is done.
                isEstablished = true
                onEstablished()
                if isClosed { return false }
            }
            if input.readableBytes > before { tlsGotData = true }
            peerClosed = true
            mayRead = false
            if tlsGotData { tlsGotData = false; onInput() }
            if !isClosed { onPeerClosed(error: 0) }
            return !isClosed
        case .ok:
            break
        }
        if input.readableBytes > before { tlsGotData = true }
        return true
    }

    /// The owner consumed input: read again (edge-triggered sockets do not report old data twice).
    public func resumeReading() {
        if isClosed || inReadLoop || input.readableBytes >= inputLimit { return }
        if mayRead || !(raw?.isEmpty ?? true) { readAvailable(hangup: false) }
    }

    // MARK: writing

    /// Queues `n` bytes for the peer (encrypting them with TLS). Flushed at the end of the iteration.
    @inline(__always) public func send(_ p: UnsafeRawPointer, _ n: Int) {
        if isClosed || n == 0 || writeShutdownRequested { return }
        if let plain = plainPending {
            // TLS: gather this iteration's plaintext and encrypt it once at flush time, so a
            // response head and its body leave as one record instead of several.
            plain.append(p, n)
            if plain.readableBytes >= 64 * 1024 { sealPending() }
            if output.readableBytes + plain.readableBytes >= highWatermark { aboveHigh = true }
        } else {
            output.append(p, n)
            if output.readableBytes >= highWatermark { aboveHigh = true }
        }
        requestFlush()
    }

    /// Encrypts the gathered plaintext into `output`.
    @inline(__always) private func sealPending() {
        guard let plain = plainPending, !plain.isEmpty, let sec = security else { return }
        if !sec.encrypt(plain.readPointer, plain.readableBytes, output: output) { plain.clear(); fail(-1); return }
        plain.clear()
    }

    /// Queues the readable bytes `[from, to)` of `buffer`.
    @inline(__always) public func send(_ buffer: ByteBuffer, _ from: Int, _ to: Int) {
        send(buffer.base + from, to - from)
    }

    @inline(__always) public func requestFlush() {
        if !flushQueued { flushQueued = true; loop.markDirty(self) }
    }

    /// Bytes queued but not yet written (for back-pressure decisions).
    @inline(__always) public var pendingOutput: Int { output.readableBytes + (plainPending?.readableBytes ?? 0) }
    /// True while the owner should stop feeding this connection.
    @inline(__always) public var isCongested: Bool { pendingOutput >= highWatermark }

    /// Writes as much of `output` as the socket takes now.
    public func flushNow() {
        if isClosed || isConnecting { return }
        if plainPending != nil && isEstablished { sealPending(); if isClosed { return } }
        while !output.isEmpty && !writeBlocked {
            let want = output.readableBytes
            let n = Glibc.write(fd, output.readPointer, want)
            if n > 0 {
                output.consume(n)
                if n < want { writeBlocked = true }
            } else if n < 0 {
                let e = mesh_errno()
                if e == EAGAIN || e == EWOULDBLOCK { writeBlocked = true }
                else if e == EINTR { continue }
                else { fail(e); return }
            } else {
                writeBlocked = true
            }
        }
        if output.readableBytes >= highWatermark {
            aboveHigh = true
        } else if aboveHigh && output.readableBytes <= lowWatermark {
            aboveHigh = false
            onDrained()
            if isClosed { return }
        }
        if output.isEmpty && writeShutdownRequested && !writeShutdownDone && isEstablished {
            writeShutdownDone = true
            Glibc.shutdown(fd, Int32(SHUT_WR))
        }
        if output.isEmpty && closeWhenFlushed { beginLinger() }
    }

    /// Queues `n` bytes for the peer without an intermediate copy where it can: in plain text,
    /// when nothing is queued before them, they are written to the socket straight from `p` (only
    /// what the socket does not take is kept in `output`); with TLS they are encrypted from `p`
    /// into `output`, flushed at the end of the iteration. A relay (the TCP proxy) uses this to
    /// move bytes from one connection's `input` to another's socket.
    public func writeThrough(_ p: UnsafeRawPointer, _ n: Int) {
        if isClosed || n == 0 || writeShutdownRequested { return }
        guard isEstablished, !isConnecting else { send(p, n); return }
        if let sec = security {
            sealPending()
            if isClosed { return }
            if !sec.encrypt(p, n, output: output) { fail(-1); return }
            if output.readableBytes >= highWatermark { aboveHigh = true }
            requestFlush()
            return
        }
        if !output.isEmpty || writeBlocked { send(p, n); return }
        var off = 0
        while off < n {
            let w = Glibc.write(fd, p + off, n - off)
            if w > 0 { off += w; continue }
            if w < 0 {
                let e = mesh_errno()
                if e == EINTR { continue }
                if e != EAGAIN && e != EWOULDBLOCK { fail(e); return }
            }
            writeBlocked = true
            break
        }
        if off < n {
            output.append(p + off, n - off)
            if output.readableBytes >= highWatermark { aboveHigh = true }
        }
    }

    /// Half-close: once every queued byte is written (and, with TLS, close_notify after them),
    /// shuts down the write side (the peer reads end of stream) while reading goes on. Bytes
    /// queued after this are dropped. The connection stays open until the owner closes it.
    public func shutdownWriteAfterFlush() {
        if isClosed || writeShutdownRequested { return }
        writeShutdownRequested = true
        if isEstablished, let sec = security { sealPending(); if isClosed { return }; sec.shutdown(output: output) }
        if isConnecting { return }
        requestFlush()
    }

    /// Closes at once with SO_LINGER 0, so the peer sees a reset (RST), not an end of stream:
    /// how a relay passes on a reset from the other side.
    public func resetNow() {
        if isClosed { return }
        var l = linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
        closeNow()
    }

    /// Takes the socket away from this connection without closing it (a hand-over to another
    /// owner on the same loop, such as an HTTP CONNECT becoming a TCP relay): deregistered from
    /// the loop, buffers cleared, `onClosed` called; the caller owns the returned fd. Unread
    /// `input` must be taken before. -1 if already closed.
    public func detachSocket() -> Int32 {
        if isClosed { return -1 }
        isClosed = true
        loop.deregister(self)
        security?.dispose()
        input.clear()
        output.clear()
        raw?.clear()
        plainPending?.clear()
        onClosed()
        return fd
    }

    // MARK: idle memory

    /// Gives back the memory of buffers that hold nothing (and OpenSSL's record buffers): called
    /// by the owner when the connection has been idle for a while, so that thousands of idle
    /// keep-alive connections cost little. The buffers are allocated again on the next byte.
    public func hibernate() {
        if isClosed || !isEstablished || flushQueued || writeBlocked { return }
        input.releaseStorage()
        output.releaseStorage()
        raw?.releaseStorage()
        plainPending?.releaseStorage()
        security?.releaseBuffers()
    }

    // MARK: closing

    /// Sends what is queued (and close_notify), then closes; unread input is drained for a moment
    /// first so that the kernel does not reset the connection under the last response.
    public func closeAfterFlush(lingerNanos: UInt64 = 1_000_000_000) {
        if isClosed || closeWhenFlushed { return }
        closeWhenFlushed = true
        if isEstablished, let sec = security, !writeShutdownRequested { sealPending(); sec.shutdown(output: output) }
        lingerDeadline = lingerNanos
        if isConnecting { closeNow(); return }
        requestFlush()
    }

    private var lingerDeadline: UInt64 = 1_000_000_000

    private func beginLinger() {
        if lingering || isClosed { return }
        if peerClosed { closeNow(); return }
        lingering = true
        Glibc.shutdown(fd, Int32(SHUT_WR))
        loop.setDeadline(self, loop.now + lingerDeadline)
        mayRead = true
        readAvailable(hangup: false)
    }

    /// True while the connection waits only to finish closing.
    public var isClosing: Bool { closeWhenFlushed || lingering }

    /// Closes at once (no flush).
    public func closeNow() {
        if isClosed { return }
        isClosed = true
        loop.deregister(self)
        Glibc.close(fd)
        security?.dispose()
        input.clear()
        output.clear()
        raw?.clear()
        plainPending?.clear()
        onClosed()
    }

    /// After the socket is closed, for bookkeeping (connection counts, pool removal).
    open func onClosed() {}

    public override func onTimer(now: UInt64) {
        if lingering { closeNow(); return }
        onDeadline(now: now)
    }

    /// The connection's own deadline passed (subclasses decide which wait it was).
    open func onDeadline(now: UInt64) {}

    /// Closes after an error and tells the owner.
    public func fail(_ error: Int32) {
        if isClosed { return }
        closeNow()
        onPeerClosed(error: error)
    }
}
