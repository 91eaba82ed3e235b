import CMeshShims
import MeshCore
import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// What the fake upstream answers to one request, as a test scripts it.
struct UpstreamAnswer: Sendable {
    /// How the body is delimited.
    enum Framing: Sendable { case contentLength, chunked, untilClose }

    var status = 200
    var reason = "OK"
    /// Sent in order, before the framing header the upstream adds.
    var headers: [(String, String)] = []
    var body: [UInt8] = []
    var framing = Framing.contentLength
    /// Waits this long before answering.
    var delayMillis = 0
    /// Closes the connection after the answer (always so with `.untilClose`).
    var close = false
    /// When set, these exact bytes are sent instead of a built response.
    var raw: [UInt8]? = nil

    init(status: Int = 200, reason: String = "OK", headers: [(String, String)] = [], body: String = "",
         framing: Framing = .contentLength, delayMillis: Int = 0, close: Bool = false) {
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = Array(body.utf8)
        self.framing = framing
        self.delayMillis = delayMillis
        self.close = close
    }

    /// Exact bytes to send, then close if `close`.
    static func raw(_ bytes: [UInt8], close: Bool = false) -> UpstreamAnswer {
        var a = UpstreamAnswer(close: close)
        a.raw = bytes
        return a
    }

    /// The bytes on the wire.
    var wire: [UInt8] {
        if let raw { return raw }
        var head = "HTTP/1.1 \(status) \(reason)\r\n"
        for (n, v) in headers { head += "\(n): \(v)\r\n" }
        switch framing {
        case .contentLength: head += "content-length: \(body.count)\r\n"
        case .chunked: head += "transfer-encoding: chunked\r\n"
        case .untilClose: break
        }
        head += "\r\n"
        var out = Array(head.utf8)
        if framing == .chunked {
            if !body.isEmpty { out += Array((String(body.count, radix: 16) + "\r\n").utf8) + body + Array("\r\n".utf8) }
            out += Array("0\r\n\r\n".utf8)
        } else {
            out += body
        }
        return out
    }
}

/// One request the fake upstream received: on which of its connections (numbered from 0 in
/// accept order), the message with its raw bytes, and when it was read and answered.
struct ReceivedRequest {
    let connection: Int
    let message: WireMessage
    let receivedAt: UInt64
    var answeredAt: UInt64 = 0
}

/// A small HTTP/1.1 server on 127.0.0.1 (port chosen by the kernel) standing in for an app:
/// a thread accepts, a thread per connection reads each request whole, records it, and sends the
/// next scripted answer (or the default answer when the script is used up). Keep-alive unless an
/// answer closes. `stop()` (idempotent, and required: the threads hold the object) closes the
/// listener and every connection and joins every thread.
final class FakeUpstream: @unchecked Sendable {
    let port: Int
    private let listenFd: Int32
    private let state = Locked(State())
    private var acceptor: pthread_t?
    private var stopped = false

    /// Everything the threads share, under `state`'s lock.
    private struct State {
        var script: [UpstreamAnswer] = []
        var defaultAnswer = UpstreamAnswer(body: "default answer")
        var requests: [ReceivedRequest] = []
        var connections = 0
        var threads: [pthread_t] = []
        var openFds: Set<Int32> = []
        var stopping = false
    }

    init() throws {
        let fd = Socket.listen(SocketAddress(host: "127.0.0.1", port: 0)!, reusePort: false)
        guard fd >= 0 else { throw WireError.system("fake upstream listen", -fd) }
        listenFd = fd
        port = Socket.localPort(fd)
        acceptor = Threads.spawn(name: "fake upstream") { [self] in acceptLoop() }
    }

    /// Queues answers, used in order by the next requests (on any connection).
    func script(_ answers: UpstreamAnswer...) {
        state.withLock { $0.script += answers }
    }

    /// The answer once the script is used up.
    func setDefault(_ answer: UpstreamAnswer) {
        state.withLock { $0.defaultAnswer = answer }
    }

    /// The requests received so far, in the order they were read.
    var requests: [ReceivedRequest] { state.withLock { $0.requests } }
    /// Connections accepted so far.
    var connections: Int { state.withLock { $0.connections } }

    /// Waits until `n` requests were read (false after `timeoutMillis`).
    func waitForRequests(_ n: Int, timeoutMillis: Int = 3_000) -> Bool {
        let deadline = Clock.monotonicNanos() + UInt64(timeoutMillis) * 1_000_000
        while Clock.monotonicNanos() < deadline {
            if requests.count >= n { return true }
            usleep(1_000)
        }
        return requests.count >= n
    }

    private var stopping: Bool { state.withLock { $0.stopping } }

    private func acceptLoop() {
        var p = pollfd(fd: listenFd, events: Int16(POLLIN), revents: 0)
        while !stopping {
            let rc = poll(&p, 1, 20)
            if rc <= 0 { continue }
            let fd = mesh_accept4(listenFd)
            if fd < 0 { continue }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)   // blocking writes
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            let index: Int? = state.withLock { s in
                if s.stopping { return nil }
                s.connections += 1
                s.openFds.insert(fd)
                return s.connections - 1
            }
            guard let index else { Glibc.close(fd); break }
            let t = Threads.spawn(name: "fake upstream connection") { [self] in serve(fd, index) }
            state.withLock { $0.threads.append(t) }
        }
    }

    private func serve(_ fd: Int32, _ index: Int) {
        let sock = WireSocket(fd: fd)
        defer {
            state.withLock { _ = $0.openFds.remove(fd) }
            sock.close()
        }
        while true {
            let msg: WireMessage?
            do { msg = try sock.readMessage(request: true, timeoutMillis: 60_000, stop: { self.stopping }) } catch { return }
            guard let msg else { return }
            let at = Clock.monotonicNanos()
            let (answer, slot) = state.withLock { s -> (UpstreamAnswer, Int) in
                s.requests.append(ReceivedRequest(connection: index, message: msg, receivedAt: at))
                let a = s.script.isEmpty ? s.defaultAnswer : s.script.removeFirst()
                return (a, s.requests.count - 1)
            }
            var waited = 0
            while waited < answer.delayMillis {
                if stopping { return }
                usleep(5_000)
                waited += 5
            }
            do { try sock.write(answer.wire) } catch { return }
            let sent = Clock.monotonicNanos()
            state.withLock { $0.requests[slot].answeredAt = sent }
            if answer.close || answer.framing == .untilClose { return }
        }
    }

    /// Closes the listener and every connection, and joins every thread. Idempotent.
    func stop() {
        if stopped { return }
        stopped = true
        state.withLock { $0.stopping = true }
        if let a = acceptor { Threads.join(a) }
        acceptor = nil
        // Wake connection threads blocked in a write (a read sees `stopping` within 20 ms). Under
        // the lock: a descriptor still in the set is not closed yet, so its number is not reused.
        state.withLock { s in for fd in s.openFds { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) } }
        for t in state.withLock({ $0.threads }) { Threads.join(t) }
        Glibc.close(listenFd)
    }
}
