import MeshCore
import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// One app probe in flight on the status loop (`sidecar --app-probe`, Istio's probe rewrite): an
/// HTTP/1.1 GET from the sidecar to `127.0.0.1:PORT` (the sidecar's own uid, so capture never
/// redirects it), non-blocking. Only the status line is read: 200-399 from the app answers 200,
/// another status is passed on, and an app that cannot be reached, closes without a status line,
/// answers something that is not HTTP/1.x, or does not answer within the probe timeout gets 503
/// with a one-line reason. Ends exactly once (`finish`), giving back its slot.
final class StatusProbe: Connection {
    unowned let server: StatusServer
    /// Which of the server's probes (its slot count).
    let index: Int
    /// The status-port client waiting for the answer (nil once it went away).
    private weak var client: StatusConnection?
    let app: SocketAddress
    let isHead: Bool
    private var done = false
    /// The status line is looked for in at most this many bytes.
    static let maxStatusLine = 4096

    init(server: StatusServer, index: Int, client: StatusConnection, fd: Int32, app: SocketAddress, target: String, head: Bool) {
        self.server = server
        self.index = index
        self.client = client
        self.app = app
        self.isHead = head
        super.init(loop: server.loop, fd: fd, security: nil, connecting: true)
        output.append("GET ")
        output.append(string: target)
        output.append(" HTTP/1.1\r\nhost: ")
        output.append(string: app.text)
        output.append("\r\nuser-agent: mesh-sidecar-probe\r\naccept: */*\r\nconnection: close\r\n\r\n")
    }

    override func onEstablished() { requestFlush() }

    override func onInput() {
        if done { return }
        // The status line: "HTTP/1.x NNN" up to the first LF.
        var lf = -1
        var i = input.readIndex
        while i < input.writeIndex { if input.base[i] == 10 { lf = i; break }; i += 1 }
        if lf < 0 {
            if input.readableBytes > StatusProbe.maxStatusLine { finish(503, "app at \(app) answered no HTTP status line\n") }
            return
        }
        let n = lf - input.readIndex
        let p = input.readPointer
        let digit = { (c: UInt8) in c >= 48 && c <= 57 }
        guard n >= 12, p[0] == 72, p[1] == 84, p[2] == 84, p[3] == 80, p[4] == 47, p[5] == 49, p[6] == 46, digit(p[7]),
              p[8] == 32, digit(p[9]), digit(p[10]), digit(p[11]), n == 12 || p[12] == 32 || p[12] == 13 else {
            finish(503, "app at \(app) answered something that is not HTTP/1.x\n")
            return
        }
        let status = Int(p[9] - 48) * 100 + Int(p[10] - 48) * 10 + Int(p[11] - 48)
        switch status {
        case 200...399: finish(200, "app answered \(status)\n")
        case 400...599: finish(status, "app answered \(status)\n")
        default: finish(503, "app at \(app) answered status \(status)\n")
        }
    }

    override func onPeerClosed(error: Int32) {
        if done { return }
        if error == 0 {
            onInput()
            if !done { finish(503, "app at \(app) closed the connection without an answer\n") }
        } else {
            finish(503, "app at \(app) cannot be reached: \(Socket.errorText(error))\n")
        }
    }

    override func onDeadline(now: UInt64) {
        finish(503, "app at \(app) did not answer within \(server.probeTimeout / 1_000_000_000) s\n")
    }

    /// The waiting client went away: end without an answer.
    func cancel() {
        client = nil
        finish(0, "")
    }

    /// Ends the probe once: closes the app connection, gives back the slot, answers the client.
    private func finish(_ status: Int, _ body: String) {
        if done { return }
        done = true
        server.probesInFlight[index] -= 1
        loop.setDeadline(self, 0)
        closeNow()
        if status > 0, let c = client {
            client = nil
            c.probeDone(status: status, body: body, head: isHead)
        }
    }
}
