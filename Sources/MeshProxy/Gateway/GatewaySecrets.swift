import MeshCore
import MeshTLS
import Synchronization

/// The TLS secrets a gateway serves (DESIGN §15), held in memory only: meshd pushes them over the
/// mTLS config stream (never to disk), and each becomes server contexts (PEMContext): SIMPLE, and
/// MUTUAL when the secret has a CA. Gateway listeners look a context up by `NAMESPACE/NAME` when a
/// snapshot is built (not per connection), so a replaced secret reaches new handshakes with the
/// next snapshot while connections already established keep the context they were made with.
/// Nothing of a key is kept here past building its contexts: the pushed `SecretBytes` are
/// released (and zeroed) once the contexts hold the key; a replaced context, and the key OpenSSL
/// holds in it, is freed when its last connection closes. What can be shown (/config_dump):
/// names, fingerprints, serials, expiry. Locked, and never touched on the request path.
public final class GatewaySecrets: Sendable {
    /// The one table of this process (a sidecar is one proxy); tests make their own.
    public static let shared = GatewaySecrets()

    /// One secret's contexts and what may be shown of it.
    public struct Entry: Sendable {
        public var id: String
        /// SHA-256 of the pushed record: the same secret pushed again keeps its contexts.
        var recordDigest: String
        public var info: TLSSecretInfo
        public let simple: TLSContext
        public let mutual: TLSContext?
    }

    private let table = Mutex<[String: Entry]>([:])

    public init() {}

    /// What `adopt` replaced, to put back when the config that came with the secrets is refused.
    public struct Previous: Sendable { fileprivate let table: [String: Entry] }

    /// Makes `secrets` the set served (a secret not in it is dropped); contexts of an unchanged
    /// secret are kept. Every context is built before anything changes: a secret whose contexts
    /// cannot be built is an error naming it, and the table in force stays.
    @discardableResult
    public func adopt(_ secrets: [TLSSecret], alpn: [String] = ["h2", "http/1.1"]) throws -> Previous {
        let current = table.withLock { $0 }
        var next: [String: Entry] = [:]
        for s in secrets {
            var r = s.record
            let digest = PEMContext.sha256Hex(r)
            r.withUnsafeMutableBytes { b in for i in b.indices { b[i] = 0 } }
            if let e = current[s.id], e.recordDigest == digest { next[s.id] = e; continue }
            let simple: TLSContext, mutual: TLSContext?
            do {
                simple = try PEMContext.server(s, mutual: false, alpn: alpn)
                mutual = s.caCert.isEmpty ? nil : try PEMContext.server(s, mutual: true, alpn: alpn)
            } catch {
                throw TLSConfigError("TLS secret \(s.id) from meshd cannot be served: \(error)")
            }
            guard let info = PEMContext.info(s) else { throw TLSConfigError("TLS secret \(s.id) from meshd has no certificate") }
            next[s.id] = Entry(id: s.id, recordDigest: digest, info: info, simple: simple, mutual: mutual)
        }
        let changed = Set(next.keys).symmetricDifference(current.keys).count + next.filter { current[$0.key]?.recordDigest != $0.value.recordDigest }.count
        table.withLock { $0 = next }
        if changed > 0 {
            Log.info("gateway", "TLS secrets from meshd: \(next.keys.sorted().map { "\($0) (serial \(next[$0]!.info.serialHex))" }.joined(separator: ", "))")
        }
        return Previous(table: current)
    }

    /// What the config stream calls with a push's secrets (before its text is applied): adopts
    /// them into `shared`; the closure returned puts back what they replaced.
    public static let fromPush: @Sendable ([TLSSecret]) throws -> @Sendable () -> Void = { secrets in
        let previous = try GatewaySecrets.shared.adopt(secrets)
        return { GatewaySecrets.shared.restore(previous) }
    }

    /// Puts back the table `adopt` replaced.
    public func restore(_ p: Previous) { table.withLock { $0 = p.table } }

    /// The context for a server naming `id` (NAMESPACE/NAME): SIMPLE, or MUTUAL (nil when the
    /// secret has no CA). Nil when no such secret was pushed.
    public func context(_ id: String, mutual: Bool) -> TLSContext? {
        table.withLock { t in t[id].flatMap { mutual ? $0.mutual : $0.simple } }
    }

    /// Why a server naming `id` has no context (said when its connections are refused): the
    /// secret was not delivered, or a MUTUAL server's secret has no CA.
    public func absence(_ id: String, mutual: Bool) -> String {
        let held = table.withLock { $0[id] }
        if let held, mutual && held.mutual == nil {
            return "secret \(id) (tls.credentialName) has no ca.crt for this MUTUAL server (meshctl create secret tls --ca)"
        }
        return held == nil ? "secret \(id) (tls.credentialName) was not delivered by meshd: no such secret (meshctl create secret tls), or this gateway's service account is not granted (meshd --gateway-service-account; meshctl status says which)" : ""
    }

    /// The secrets held, by id.
    public var entries: [Entry] { table.withLock { Array($0.values) }.sorted { $0.id < $1.id } }

    /// `"secrets": [...]` for /config_dump: name, namespace, the leaf's SHA-256, serial, subject,
    /// SANs, not-after and whether a CA is held. Never a key or a certificate.
    public func dump(into j: inout JSONWriter) {
        let all = entries
        guard !all.isEmpty else { return }
        j.beginArray("secrets")
        for e in all {
            let parts = e.id.split(separator: "/", maxSplits: 1).map(String.init)
            j.beginObject()
            j.string("name", parts.count == 2 ? parts[1] : e.id)
            j.string("namespace", parts.count == 2 ? parts[0] : "")
            j.string("sha256", e.info.fingerprint)
            j.string("serial", e.info.serialHex)
            j.string("subject", e.info.subject)
            j.beginArray("sans")
            for s in e.info.sans { j.string(nil, s) }
            j.endArray()
            j.string("not_after", X509Info.rfc3339(e.info.notAfter))
            j.bool("ca", e.mutual != nil)
            j.endObject()
        }
        j.endArray()
    }
}
