import MeshControlWire
import MeshCore
import MeshPKI
#if canImport(Glibc)
import Glibc
#endif

/// The sidecar's side of the config stream (DESIGN §5): registers its workload (when it has an
/// inbound endpoint), long-polls meshd for config newer than what it has, hands each push to
/// `apply` and answers ACK, or NACK with the error (the config in force then stays). While meshd
/// is away it retries with jittered back-off, registering again; the last good config keeps
/// serving meanwhile. Runs on its own thread until the identity stops.
public final class ConfigStreamClient: @unchecked Sendable {
    let identity: WorkloadIdentity
    let registration: ConfigStream.Registration?
    let node: String
    let admin: String
    /// Applies a pushed config and says what was applied; a throw is a NACK.
    let apply: @Sendable (_ text: String, _ version: Int) throws -> String
    /// Called once, when the config in force is the one meshd gives (or meshd keeps none).
    let ready: @Sendable (_ why: String) -> Void

    /// `node`: what tells this sidecar apart from others with its identity (its registered
    /// address, or its admin address for a caller-only workload); `admin`: its admin address.
    public init(identity: WorkloadIdentity, registration: ConfigStream.Registration?, node: String, admin: String,
                apply: @escaping @Sendable (String, Int) throws -> String, ready: @escaping @Sendable (String) -> Void) {
        self.identity = identity
        self.registration = registration
        self.node = node
        self.admin = admin
        self.apply = apply
        self.ready = ready
    }

    public func run() {
        var have = 0
        var digest = ""
        var registered = false
        var isReady = false
        func becomeReady(_ why: String) {
            guard !isReady else { return }
            isReady = true
            ready(why)
        }
        var delay: UInt64 = 500_000
        var rng = FastRandom()
        while !identity.isStopping {
            do {
                if !registered, let reg = registration {
                    let r = try identity.call("POST", "\(ConfigStream.registerPath)?\(reg.query)")
                    guard r.status == 200 else { throw CAError("registration refused (\(r.status)): \(r.body)") }
                }
                registered = true
                let request = ConfigStream.Request(version: have, node: node, admin: admin, digest: digest)
                let r = try identity.call("GET", "\(ConfigStream.configPath)?\(request.query)", timeoutSeconds: 40)
                delay = 500_000
                if r.status == 304 { continue }
                if r.status == 404 {   // a meshd without a config store: nothing to wait for
                    becomeReady("meshd keeps no config; the --route flags are the config")
                    usleep(5_000_000)
                    continue
                }
                guard r.status == 200, let push = ConfigStream.Push(body: r.body) else {
                    throw CAError("unexpected config answer (\(r.status)): \(r.body.prefix(200))")
                }
                var answer = ConfigStream.Answer(version: push.version, node: node, nonce: push.nonce, error: nil)
                do {
                    let applied = try apply(push.text, push.version)
                    Log.info("sidecar", "config version \(push.version) from meshd applied (\(applied))")
                    becomeReady("the first config from meshd (version \(push.version)) is applied")
                } catch {
                    Log.error("sidecar", "config version \(push.version) from meshd refused, the config in force stays: \(error)")
                    answer.error = "\(error)"
                }
                _ = try? identity.call("POST", "\(answer.path)?\(answer.query)", body: answer.body)
                // Answered (ACK or NACK): meshd sends again only a config with another digest.
                have = push.version
                digest = push.digest
            } catch {
                registered = false
                Log.warn("sidecar", "config stream: \(error); retrying in \(delay / 1000) ms")
                usleep(UInt32(delay / 2 + rng.next() % (delay / 2 + 1)))
                delay = min(delay * 2, 10_000_000)
            }
        }
    }
}
