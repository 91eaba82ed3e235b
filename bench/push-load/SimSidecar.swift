import MeshControlWire
import MeshCore
import MeshIO
import MeshTLS

/// One simulated sidecar's lasting state (it outlives its connections): node id, namespace,
/// optional registration, the config it has (version and digest, as a sidecar sends them back),
/// and what the measurement of the current apply needs. Touched only on its worker's loop.
final class SimStream {
    let index: Int
    let namespace: Int
    /// The node id meshd knows this sidecar by (IP:PORT, unique per stream).
    let node: String
    let registration: ConfigStream.Registration?
    var version = 0
    var digest = ""
    /// The text digest of the config it has, sent as `base` so meshd may push deltas (the
    /// simulated sidecar keeps no text: it takes meshd's word for a delta's result).
    var base = ""
    var registered = false
    var hasConfig = false
    var conn: SimConnection?
    /// Which API address it dials next (round-robin start, the next one after a failure).
    var addressIndex: Int
    var failures = 0
    var retryAt: UInt64 = 0
    /// ACKs (version, monotonic time) since the current apply's mark.
    var acksSinceMark: [(version: Int, at: UInt64)] = []
    /// Whether the current apply should reach this sidecar, and whether its ACK was counted.
    var expected = false
    var counted = false

    init(index: Int, namespace: Int, node: String, registration: ConfigStream.Registration?, addressIndex: Int) {
        self.index = index
        self.namespace = namespace
        self.node = node
        self.registration = registration
        self.addressIndex = addressIndex
    }
}

/// One connection of a simulated sidecar to meshd's API, speaking the config stream exactly as
/// `MeshAgent.ConfigStreamClient` does, with the same message types: optional register, then a
/// long poll `GET /v1/config` answered 200 with a push (ACKed, then the next GET carries its
/// version and digest) or 304 (GET again). Only the push's first line is kept; the config text
/// is skipped as it arrives.
final class SimConnection: KeepAliveClient {
    enum Phase { case handshake, registering, polling, acking }
    unowned let worker: Worker
    let stream: SimStream
    private(set) var phase = Phase.handshake
    private var push: ConfigStream.Push?
    /// The pushed text's digest, computed as a full push streams past (nil: no push being read).
    private var textDigest: PushTextDigester?
    /// The base the push being answered leaves this sidecar with.
    private var nextBase = ""
    /// When an idle long poll gives its buffers back, and when a request is given up.
    private var hibernateAt: UInt64 = 0
    private var requestDeadline: UInt64 = 0

    /// Time for the TCP and TLS handshakes, and for any one answer (meshd's long poll is 20 s).
    static let handshakeTimeout: UInt64 = 30_000_000_000
    static let answerTimeout: UInt64 = 60_000_000_000

    init(worker: Worker, stream: SimStream, fd: Int32, security: TLSSession) {
        self.worker = worker
        self.stream = stream
        super.init(loop: worker.loop, fd: fd, security: security, keepBodyBytes: 512)
        // Long polls are idle most of the time: small reads are enough.
        inputLimit = 64 * 1024
    }

    func armHandshakeDeadline() {
        requestDeadline = loop.now + SimConnection.handshakeTimeout
        loop.setDeadline(self, requestDeadline)
    }

    override func onEstablished() {
        worker.established(stream)
        if stream.registration != nil && !stream.registered { register() } else { poll() }
    }

    private func register() {
        phase = .registering
        sendRequest("POST", target: "\(ConfigStream.registerPath)?\(stream.registration!.query)")
        armAnswerDeadline(hibernate: false)
    }

    private func poll() {
        phase = .polling
        let r = ConfigStream.Request(version: stream.version, node: stream.node, admin: "", digest: stream.digest, base: stream.base)
        textDigest = nil
        sendRequest("GET", target: "\(ConfigStream.configPath)?\(r.query)")
        armAnswerDeadline(hibernate: true)
    }

    private func armAnswerDeadline(hibernate: Bool) {
        requestDeadline = loop.now + SimConnection.answerTimeout
        // Once the request is written (end of this iteration) the buffers hold nothing until the
        // answer: give them back soon, so thousands of parked long polls cost little memory.
        hibernateAt = hibernate ? loop.now + 50_000_000 : 0
        loop.setDeadline(self, hibernate ? hibernateAt : requestDeadline)
    }

    override func onDeadline(now: UInt64) {
        if hibernateAt != 0 && now >= hibernateAt && now < requestDeadline {
            hibernateAt = 0
            if input.isEmpty && awaiting { hibernate(); worker.hibernated() }
            loop.setDeadline(self, requestDeadline)
            return
        }
        if now >= requestDeadline {
            closeNow()
            worker.failed(stream, phase == .handshake ? "no TLS handshake within 30 s" : "no answer within 60 s")
        } else {
            loop.setDeadline(self, hibernateAt != 0 ? min(hibernateAt, requestDeadline) : requestDeadline)
        }
    }

    override func onResponse(status: Int) {
        switch phase {
        case .handshake:
            closeNow()
            worker.failed(stream, "an answer before any request")
        case .registering:
            guard status == 200 else {
                closeNow()
                worker.failed(stream, "registration refused (\(status)): \(keptText)")
                return
            }
            stream.registered = true
            poll()
        case .polling:
            if status == 304 { poll(); return }
            guard status == 200 else {
                closeNow()
                worker.failed(stream, "config request answered \(status): \(keptText)")
                return
            }
            // The first line is the push's header (`version: V NONCE DIGEST`); the text is not kept.
            guard let nl = kept.firstIndex(of: 10),
                  let p = ConfigStream.Push(body: String(decoding: kept[..<nl], as: UTF8.self) + "\n") else {
                closeNow()
                worker.failed(stream, "a push without its version line: \(keptText)")
                return
            }
            push = p
            // The second line tells a delta (`delta BASE NEW`: the new text's digest) from a full text.
            let second = kept[(nl + 1)...].prefix { $0 != 10 }.split(separator: 32).map { String(decoding: $0, as: UTF8.self) }
            let isDelta = second.count == 3 && second[0] == "delta"
            nextBase = isDelta ? second[2] : textDigest?.finish() ?? ""
            textDigest = nil
            worker.pushed(stream, delta: isDelta, bytes: bodyLength)
            phase = .acking
            let a = ConfigStream.Answer(version: p.version, node: stream.node, nonce: p.nonce, error: nil)
            sendRequest("POST", target: "\(a.path)?\(a.query)")
            armAnswerDeadline(hibernate: false)
        case .acking:
            guard let p = push else { return }
            // As the sidecar does: the answer is given, so the next request carries this config.
            stream.version = p.version
            stream.digest = p.digest
            stream.base = nextBase
            push = nil
            worker.acked(stream, version: p.version, refusal: status == 200 ? nil : "ACK of version \(p.version) answered \(status): \(keptText)")
            poll()
        }
    }

    override func onBody(_ bytes: UnsafeRawBufferPointer) {
        guard phase == .polling else { return }
        if textDigest == nil { textDigest = PushTextDigester() }
        textDigest!.feed(bytes)
    }

    private var keptText: String { Printable.escaped(String(decoding: kept.prefix(160), as: UTF8.self)) }

    override func onFailure(_ why: String) {
        worker.failed(stream, why)
    }
}
