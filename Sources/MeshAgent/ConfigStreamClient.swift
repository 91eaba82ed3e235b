import MeshControlWire
import MeshCore
import MeshPKI
import MeshTLS
#if canImport(Glibc)
import Glibc
#endif

/// The sidecar's side of the config stream (DESIGN §5, §12): one kept-alive mTLS connection to
/// meshd carries the registration (when the workload has an inbound endpoint), each long poll
/// for config other than what the sidecar has (its version and digest), and each ACK or NACK;
/// every push goes to `apply`, and a throw is a NACK (the config in force then stays). A new
/// connection is opened only when the last one failed or meshd closed it, and when the
/// certificate was renewed. With several meshd addresses a failed stream moves to the next one
/// after a jittered back-off (first retry within 100-300 ms) and registers there; a stream meshd
/// closed at its maximum age moves to a random one at once. The sidecar's version and digest go
/// along, so a replica with the same config sends nothing. The last good config keeps serving
/// meanwhile. A push may come as a delta against the text last applied or answered (the
/// request names its digest as `base`): applied to that text and checked against the new text's
/// digest; one that does not apply is not answered, and the next request names no base, so
/// meshd sends the whole text. Runs on its own thread until the identity stops.
public final class ConfigStreamClient: @unchecked Sendable {
    let identity: WorkloadIdentity
    let registration: ConfigStream.Registration?
    let node: String
    let admin: String
    /// Applies a pushed config and says what was applied; a throw is a NACK.
    let apply: @Sendable (_ text: String, _ version: Int) throws -> String
    /// Called once, when the config in force is the one meshd gives (or meshd keeps none).
    let ready: @Sendable (_ why: String) -> Void
    /// A gateway's TLS secrets from each push, taken before the config text is applied (the
    /// listeners find them there); returns how to put back what it replaced when the text is
    /// refused. Nil: this sidecar is not a gateway, and a push that carries secrets is refused.
    let secrets: (@Sendable (_ secrets: [TLSSecret]) throws -> @Sendable () -> Void)?
    /// A gateway proxy's labels, `k=v,k=v`, named on every config request; nil for a sidecar.
    public var gatewayLabels: String? = nil

    /// `node`: what tells this sidecar apart from others with its identity (its registered
    /// address, or its admin address for a caller-only workload); `admin`: its admin address.
    public init(identity: WorkloadIdentity, registration: ConfigStream.Registration?, node: String, admin: String,
                apply: @escaping @Sendable (String, Int) throws -> String, ready: @escaping @Sendable (String) -> Void,
                secrets: (@Sendable ([TLSSecret]) throws -> @Sendable () -> Void)? = nil) {
        self.identity = identity
        self.registration = registration
        self.node = node
        self.admin = admin
        self.apply = apply
        self.ready = ready
        self.secrets = secrets
    }

    /// Gives a push's TLS secrets to `take` (a gateway; what it returns puts them back), or
    /// refuses a push that carries any when there is no `take` (a sidecar never holds one).
    static func take(_ pushed: [TLSSecret], _ take: (@Sendable ([TLSSecret]) throws -> @Sendable () -> Void)?) throws -> (@Sendable () -> Void)? {
        if let take { return try take(pushed) }
        guard pushed.isEmpty else {
            throw CAError("the push carries \(pushed.count) TLS secret(s), and this sidecar is not a gateway: none is taken")
        }
        return nil
    }

    /// The first retry after a failed stream waits 100-300 ms; each further failure doubles it, up to 10 s.
    static let firstRetry: UInt64 = 200_000_000
    static let maxRetry: UInt64 = 10_000_000_000

    public func run() {
        let addresses = identity.addresses
        var index = identity.preferredAddress % addresses.count
        var connection: ControlConnection? = nil
        var serial = ""
        var have = 0
        var digest = ""
        /// The config with `digest` was NACKed: meshd is told, and a new certificate (which may
        /// be what it lacked: a bundle refused for want of the new root) asks for it again.
        var nacked = false
        // The config text last applied or answered, and its text digest: the base meshd may
        // send the next config as a delta against (ConfigDelta.swift; empty: none).
        var baseText = ""
        var baseDigest = ""
        var registered = false
        var isReady = false
        func becomeReady(_ why: String) {
            guard !isReady else { return }
            isReady = true
            ready(why)
        }
        var delay = ConfigStreamClient.firstRetry
        var rng = FastRandom()
        /// meshd ended the stream after an answer (its maximum age): the next stream goes to a
        /// random address, without waiting.
        func closedByMeshd(_ c: ControlConnection) {
            connection = nil
            let from = c.address
            if addresses.count > 1 { index = Int(rng.next() % UInt64(addresses.count)) }
            Log.info("sidecar", "meshd \(from) ended the config stream; reconnecting to \(addresses[index])")
        }
        /// The open connection, or a new one to the current address (registering there).
        func open() throws(CAError) -> ControlConnection {
            let current = identity.credentials?.serialHex ?? ""
            if let c = connection, !c.isClosed, current == serial { return c }
            connection = nil
            let (c, s) = try identity.connect(addresses[index])
            if nacked && !serial.isEmpty && s != serial { digest = ""; nacked = false }
            connection = c
            serial = s
            registered = false
            return c
        }
        while !identity.isStopping {
            do {
                let c = try open()
                if !registered, let reg = registration {
                    let r = try c.request(method: "POST", path: "\(ConfigStream.registerPath)?\(reg.query)")
                    guard r.status == 200 else { throw CAError("registration refused (\(r.status)): \(r.body)") }
                    // Closed after registering: the next connection (maybe another replica)
                    // registers there first.
                    if r.close { closedByMeshd(c); continue }
                }
                registered = true
                var request = ConfigStream.Request(version: have, node: node, admin: admin, digest: digest, base: baseDigest, nacked: nacked)
                request.gatewayLabels = gatewayLabels
                let r = try c.request(method: "GET", path: "\(ConfigStream.configPath)?\(request.query)", timeoutSeconds: 40)
                delay = ConfigStreamClient.firstRetry
                if r.close { closedByMeshd(c) }
                if r.status == 304 { continue }
                if r.status == 404 {   // a meshd without a config store: nothing to wait for
                    becomeReady("meshd keeps no config; the --route flags are the config")
                    usleep(5_000_000)
                    continue
                }
                if r.status == 200, let why = ConfigStream.Push.deltaRefusal(r.body) {
                    // Nothing applied: the next request names no base, so meshd sends the whole text.
                    Log.warn("sidecar", "a config delta from meshd \(c.address) was refused (\(why)); asking for the whole config")
                    baseText = ""; baseDigest = ""
                    continue
                }
                guard r.status == 200, let push = ConfigStream.Push(body: r.body) else {
                    throw CAError("unexpected config answer from \(c.address) (\(r.status)): \(r.body.prefix(200))")
                }
                let text: String
                if let d = push.delta {
                    do { text = try d.apply(to: baseText, heldDigest: baseDigest) } catch {
                        Log.warn("sidecar", "config version \(push.version) from meshd \(c.address) came as a delta that does not apply (\(error)); asking for the whole config")
                        baseText = ""; baseDigest = ""
                        continue
                    }
                } else {
                    text = push.text
                }
                var answer = ConfigStream.Answer(version: push.version, node: node, nonce: push.nonce, error: nil)
                do {
                    // The roots in force first: a config whose bundle is refused is not applied.
                    if !push.bundle.isEmpty { try identity.adopt(bundle: push.bundle) }
                    let undo = try ConfigStreamClient.take(push.secrets, secrets)
                    let applied: String
                    do { applied = try apply(text, push.version) } catch {
                        undo?()
                        throw error
                    }
                    Log.info("sidecar", "config version \(push.version) from meshd applied (\(applied))")
                    becomeReady("the first config from meshd (version \(push.version)) is applied")
                } catch {
                    Log.error("sidecar", "config version \(push.version) from meshd \(c.address) refused, the config in force stays: \(error)")
                    answer.error = "\(error)"
                }
                // Answered (ACK or NACK): meshd sends again only a config with another digest.
                have = push.version
                digest = push.digest
                nacked = answer.error != nil
                baseText = text
                baseDigest = push.delta?.target ?? MeshCrypto.digestHex(text)
                do {
                    let ac = try open()
                    let a = try ac.request(method: "POST", path: "\(answer.path)?\(answer.query)", body: answer.body)
                    if a.close { closedByMeshd(ac) }
                } catch {
                    // The next request tells: the stream moves on if meshd is gone.
                    connection = nil
                    Log.warn("sidecar", "config stream: the answer to version \(push.version) was not delivered: \(error)")
                }
            } catch {
                connection = nil
                registered = false
                let failed = addresses[index]
                index = (index + 1) % addresses.count
                let wait = delay / 2 + rng.next() % (delay + 1)
                Log.warn("sidecar", "config stream with meshd \(failed): \(error); trying \(addresses[index]) in \(wait / 1_000_000) ms")
                sleepNanos(wait)
                delay = min(delay * 2, ConfigStreamClient.maxRetry)
            }
        }
    }

    private func sleepNanos(_ n: UInt64) {
        var left = n
        while left > 0 && !identity.isStopping {
            let step = min(left, 100_000_000)
            usleep(UInt32(step / 1000))
            left -= step
        }
    }
}
