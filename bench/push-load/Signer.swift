import MeshControlWire
import MeshCore
import MeshIO
import MeshTLS
import Synchronization

/// Counters of the CSR-signing run, shared by every signer (atomics: any loop thread adds).
final class SigningTally: @unchecked Sendable {
    let ready = Atomic<Int>(0)
    let signed = Atomic<Int>(0)
    let refused = Atomic<Int>(0)
    let broken = Atomic<Int>(0)
    let lastError = Locked<String>("")
    /// Monotonic nanoseconds after which no new request is sent (0: not started yet).
    let end = Atomic<UInt64>(0)
}

/// One keep-alive TLS connection posting the same CSR with a join token to `POST /v1/certificate`
/// again and again (as bench/ca.sh's h2load does): each answer is a full signing. A 200 whose
/// body starts with a PEM certificate counts as signed; anything else as refused.
final class Signer: KeepAliveClient {
    let tally: SigningTally
    let body: [UInt8]
    let headerLines: String
    private var started = false

    init(loop: EventLoop, fd: Int32, security: TLSSession, tally: SigningTally, csr: String, token: String) {
        self.tally = tally
        self.body = Array(csr.utf8)
        self.headerLines = "authorization: Bearer \(token)\r\ncontent-type: application/pkcs10\r\n"
        super.init(loop: loop, fd: fd, security: security, keepBodyBytes: 32)
    }

    override func onEstablished() {
        tally.ready.add(1, ordering: .relaxed)
    }

    /// Starts the request loop (loop thread).
    func go() {
        guard !started, isEstablished, !isClosed else { return }
        started = true
        next()
    }

    private func next() {
        let end = tally.end.load(ordering: .relaxed)
        if end != 0 && Clock.monotonicNanos() >= end { closeAfterFlush(); return }
        sendRequest("POST", target: CertificateExchange.path, headerLines: headerLines, body: body)
    }

    override func onResponse(status: Int) {
        let end = tally.end.load(ordering: .relaxed)
        if loop.now <= end {
            let pem = "-----BEGIN CERTIFICATE-----".utf8
            if status == 200 && kept.count >= pem.count && kept.prefix(pem.count).elementsEqual(pem) {
                tally.signed.add(1, ordering: .relaxed)
            } else {
                tally.refused.add(1, ordering: .relaxed)
                let text = Printable.escaped(String(decoding: kept, as: UTF8.self))
                tally.lastError.withLock { $0 = "answered \(status): \(text)" }
            }
        }
        next()
    }

    override func onFailure(_ why: String) {
        if tally.end.load(ordering: .relaxed) == 0 || Clock.monotonicNanos() < tally.end.load(ordering: .relaxed) {
            tally.broken.add(1, ordering: .relaxed)
            tally.lastError.withLock { $0 = why }
        }
    }
}
