import MeshCore
import MeshIO
import CMeshShims
#if canImport(Glibc)
import Glibc
#endif

/// A captured connection to a service whose protocol is not declared (`serviceProtocol: AUTO`),
/// waiting for its first bytes: they are peeked (`MSG_PEEK`, never consumed) and given to
/// `ProtocolSniffer`; HTTP/1.1 or h2c goes to the HTTP path, anything else to the TCP proxy, with
/// the socket untouched either way. A client that sends nothing within `timeout` (a server-first
/// protocol: SMTP, MySQL) is TCP. Edge-triggered, so bytes that do not decide yet wait for the
/// next ones without spinning. One per connection in detection, alive for at most `timeout`.
final class ProtocolDetector: Pollable {
    unowned(unsafe) let worker: Worker
    /// Where the connection was going: looked up again in the snapshot in force at the decision.
    let original: IPEndpoint
    private var done = false

    /// Istio's default protocol detection timeout.
    static let timeout: UInt64 = 100_000_000

    init(worker: Worker, fd: Int32, original: IPEndpoint) {
        self.worker = worker
        self.original = original
        super.init(fd: fd)
    }

    /// Starts watching the socket; false (the socket closed) when the loop cannot.
    func start() -> Bool {
        let ev = EPOLLIN.rawValue | EPOLLRDHUP.rawValue | EPOLLET.rawValue
        guard worker.loop.register(self, events: ev) else { Glibc.close(fd); return false }
        worker.loop.setDeadline(self, worker.loop.now &+ ProtocolDetector.timeout)
        return true
    }

    override func onEvents(_ events: UInt32) {
        if done { return }
        let buf = worker.peekBuffer
        let n = recv(fd, buf.baseAddress, buf.count, Int32(MSG_PEEK))
        if n == 0 { finish(nil); return }                 // closed before a byte: nothing to carry
        if n < 0 {
            let e = mesh_errno()
            if e == EAGAIN || e == EWOULDBLOCK || e == EINTR { return }
            finish(nil)
            return
        }
        switch ProtocolSniffer.classify(UnsafeRawBufferPointer(start: buf.baseAddress, count: n)) {
        case .http1, .h2c: finish(true)
        case .tcp: finish(false)
        case .needMore:
            // Still inside what could be a request line: wait for more, unless the buffer is full.
            if n >= buf.count { finish(false) }
        }
    }

    override func onTimer(now: UInt64) {
        if !done { finish(false) }   // nothing (decisive) from the client: a server-first protocol
    }

    /// Hands the socket on: `http` true to the HTTP path, false to the TCP proxy, nil: closed.
    private func finish(_ http: Bool?) {
        done = true
        worker.loop.setDeadline(self, 0)
        worker.loop.deregister(self)
        // The connection is handed on before the detection counts as ended, so a drain waiting
        // for the last connection waits for it too.
        if let http {
            worker.stats.inc(http ? .detectedHTTP : .detectedTCP)
            worker.dispatchCaptured(fd, original: original, detected: http)
        } else {
            Glibc.close(fd)
        }
        worker.detectionEnded()
    }
}
