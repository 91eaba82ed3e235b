import MeshCore
import MeshHTTP
import MeshIO

/// A keep-alive HTTP/1.1 client on one (TLS) connection of an event loop, one request at a time:
/// it reads each response's head with the project's strict parser and its Content-Length body,
/// keeping only the first `keepBodyBytes` of the body in `kept` (the rest is skipped as it
/// arrives, so a large config push costs no memory here). Subclasses send requests with
/// `sendRequest` and get `onResponse(status:)`; a protocol error or a closed connection is
/// `onFailure(_:)`, called once.
class KeepAliveClient: Connection {
    private var parser = HTTP1Parser()
    private var head = HTTPHead(reserve: 8)
    private var inBody = false
    private var bodyLeft = 0
    private var status = 0
    private var failed = false
    /// The first bytes of the body of the response being read (and, in `onResponse`, of the last).
    var kept: [UInt8] = []
    let keepBodyBytes: Int
    /// A request is out and its response not yet read.
    private(set) var awaiting = false
    /// The body length of the response being read (and, in `onResponse`, of the last).
    private(set) var bodyLength = 0

    init(loop: EventLoop, fd: Int32, security: TransportSecurity?, keepBodyBytes: Int) {
        self.keepBodyBytes = keepBodyBytes
        super.init(loop: loop, fd: fd, security: security, connecting: true)
        kept.reserveCapacity(keepBodyBytes)
    }

    /// Queues `GET|POST target` with a Content-Length body (empty: none) and extra header lines
    /// (each `name: value\r\n`).
    func sendRequest(_ method: StaticString, target: String, headerLines: String = "", body: [UInt8] = []) {
        awaiting = true
        send(method.utf8Start, method.utf8CodeUnitCount)
        sendString(" ")
        sendString(target)
        sendString(" HTTP/1.1\r\nhost: meshd\r\ncontent-length: ")
        sendString(String(body.count))
        sendString("\r\n")
        sendString(headerLines)
        sendString("\r\n")
        if !body.isEmpty { body.withUnsafeBytes { send($0.baseAddress!, $0.count) } }
    }

    private func sendString(_ s: String) {
        var s = s
        s.withUTF8 { u in if let p = u.baseAddress { send(p, u.count) } }
    }

    /// A complete response: `status`, the first body bytes in `kept`.
    func onResponse(status: Int) {}
    /// Each piece of a response's body as it arrives (before `onResponse`).
    func onBody(_ bytes: UnsafeRawBufferPointer) {}
    /// The connection ended or broke the protocol (`why` for the log); the connection is closed.
    func onFailure(_ why: String) {}

    private func failWith(_ why: String) {
        if failed { return }
        failed = true
        awaiting = false
        closeNow()
        onFailure(why)
    }

    override func onInput() {
        while !isClosed && !input.isEmpty {
            if !inBody {
                guard awaiting else { failWith("bytes from meshd with no request out"); return }
                switch parser.parseResponse(input.base, start: input.readIndex, end: input.writeIndex, into: &head) {
                case .incomplete: return
                case .error(let e): failWith("bad response head: \(e.reason)"); return
                case .complete: break
                }
                status = head.status
                input.consume(head.headEnd - input.readIndex)
                parser.resetScan()
                if head.chunked { failWith("chunked response (only Content-Length is read)"); return }
                if status == 304 || status == 204 || status < 200 {
                    bodyLeft = 0
                } else if head.contentLength >= 0 {
                    bodyLeft = Int(head.contentLength)
                } else {
                    failWith("response \(status) without Content-Length"); return
                }
                kept.removeAll(keepingCapacity: true)
                bodyLength = bodyLeft
                inBody = true
            }
            let n = min(bodyLeft, input.readableBytes)
            if n > 0 {
                let keep = min(n, keepBodyBytes - kept.count)
                if keep > 0 { kept.append(contentsOf: UnsafeBufferPointer(start: input.readPointer, count: keep)) }
                onBody(UnsafeRawBufferPointer(start: input.readPointer, count: n))
                input.consume(n)
                bodyLeft -= n
            }
            if bodyLeft > 0 { break }
            inBody = false
            awaiting = false
            onResponse(status: status)
        }
        if !isClosed { resumeReading() }
    }

    override func onPeerClosed(error: Int32) {
        if error == 0 {
            failWith(awaiting ? "meshd closed the connection before answering" : "meshd closed the connection")
        } else if error == -1 {
            failWith("TLS: \(security?.failureReason ?? "?")")
        } else {
            failWith("socket: \(Socket.errorText(error))")
        }
    }
}
