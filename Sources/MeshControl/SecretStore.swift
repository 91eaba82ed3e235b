import MeshControlWire
import MeshEtcd
import MeshCA
import MeshPKI
import MeshConfig
import MeshCore
import MeshTLS
#if canImport(Glibc)
import Glibc
#endif

/// meshd's TLS secrets (DESIGN §15): `meshctl create secret tls` stores one (validated with
/// `PEMContext.check`, the code meshctl runs too; meshd is the authority), `delete secret tls`
/// removes it, `get secrets` lists them without keys. They live in the config store's state, so
/// a change moves the version and reaches the gateways that serve it, and they are kept where
/// the rest of the state is: `secrets.dat` (mode 0600, written atomically) in the state
/// directory, or one etcd key each under `/mesh/config/secrets/` (etcd keeps them unencrypted,
/// as Kubernetes keeps Secrets without an EncryptionConfiguration).
extension ConfigStore {
    /// What a create or delete did, as `apply` says it.
    public enum SecretOutcome: String, Sendable {
        case created, configured, unchanged, deleted
        case notFound = "not found"
    }

    /// Stores `s` (a new name is created, an existing one replaced: rotation); returns what
    /// happened, the version in force and what can be shown of it. Refused input (named by
    /// `from`'s files) changes nothing.
    public func putSecret(_ s: TLSSecret, from: PEMContext.Sources) throws(ConfigError) -> (SecretOutcome, Int, TLSSecretInfo) {
        let info: TLSSecretInfo
        do { info = try PEMContext.check(s, from: from, now: MeshCrypto.now()) } catch {
            throw ConfigError(file: from.cert, message: error.description)
        }
        let (outcome, v) = try changeSecrets("secret \(s.id)") { secrets in
            let old = secrets[s.id]
            if let old, old.same(as: s) { return .unchanged }
            secrets[s.id] = s
            return old == nil ? .created : .configured
        }
        if outcome != .unchanged { Log.info("config", "TLS secret \(s.id) \(outcome.rawValue) (\(info.subject), not after \(X509Info.rfc3339(info.notAfter)), sha256 \(info.fingerprint)): version \(v)") }
        return (outcome, v, info)
    }

    /// Removes a secret; `.notFound` when there is none by that name.
    public func deleteSecret(namespace: String, name: String) throws(ConfigError) -> SecretOutcome {
        let id = "\(namespace)/\(name)"
        let (outcome, v) = try changeSecrets("secret \(id)") { secrets in
            secrets.removeValue(forKey: id) == nil ? .notFound : .deleted
        }
        if outcome == .deleted { Log.info("config", "TLS secret \(id) deleted: version \(v)") }
        return (outcome)
    }

    /// The secrets stored, by namespace and name.
    public func secrets() -> [TLSSecret] {
        state.withLock { Array($0.secrets.values) }.sorted { $0.id < $1.id }
    }

    /// Runs `change` on the secrets in force and commits the result as one new version (file
    /// store: written before it is in force; etcd: one guarded transaction, retried on conflict).
    private func changeSecrets(_ what: String, _ change: (inout [String: TLSSecret]) -> SecretOutcome) throws(ConfigError) -> (SecretOutcome, Int) {
        applyLock.lock()
        defer { applyLock.unlock() }
        if etcd != nil {
            return try retrying(what) { (conflictAt: inout Int) throws(ConfigError) -> (SecretOutcome, Int)? in
                let current = currentState()
                var next = current
                let outcome = change(&next.secrets)
                if outcome == .unchanged || outcome == .notFound { return (outcome, current.version) }
                guard let v = try commit(current, next, conflictAt: &conflictAt) else { return nil }
                return (outcome, v)
            }
        }
        var secrets = currentState().secrets
        let outcome = change(&secrets)
        if outcome == .unchanged || outcome == .notFound { return (outcome, version) }
        do { try StateFiles(stateDir: stateDir).saveSecrets(secrets) } catch {
            throw ConfigError(file: "(the store)", message: "\(what): cannot persist: \(error)")
        }
        let v = state.withLock { s -> Int in
            s.secrets = secrets
            s.version += 1
            s.versionTimes[s.version] = Clock.monotonicNanos()
            if s.versionTimes.count > 64, let oldest = s.versionTimes.keys.min() { s.versionTimes.removeValue(forKey: oldest) }
            return s.version
        }
        notifyChanged()
        return (outcome, v)
    }

    // MARK: delivery

    /// Puts into `snap` the secrets this proxy serves, when it is a gateway (it names its
    /// labels on its config requests, GatewayScope.swift): those named by `tls.credentialName`
    /// in the SIMPLE and MUTUAL servers of the Gateways whose `selector` matches its labels, each
    /// from the Gateway's own namespace (as Istio resolves it), and only of the gateway's own
    /// namespace (its certificate's: labels are the proxy's word, its identity is not), and only
    /// when its service account is granted that namespace's secrets (`meshd
    /// --gateway-service-account NS/SA`, GatewayGrants.swift: any workload can claim a
    /// gateway's labels, not its identity). The digest then covers them, so a replaced secret
    /// is pushed again. A sidecar gets none. `gateways`: the Gateways in force (nil: parsed from
    /// the stored documents with the proxy's own parser).
    func addSecrets(_ snap: inout ProxyConfigSnapshot, identity: String, node: String, gateways given: [IstioGateway]? = nil) {
        let (labels, docs, secrets) = state.withLock { s in (s.proxies["\(identity)|\(node)"]?.gatewayLabels, s.documents, s.secrets) }
        guard let labels, let ns = ProxyScope.namespace(ofIdentity: identity) else { return }
        let gateways = given ?? docs.values.filter { $0.kind == "Gateway" }.flatMap { d in
            (try? IstioTraffic.parse(d.text, file: d.key, defaultNamespace: d.namespace))?.gateways ?? []
        }
        let ids = GatewaySecretSelection.ids(gateways: gateways, labels: labels).filter { $0.hasPrefix("\(ns)/") }.sorted()
        guard mayDeliverSecrets(identity: identity, node: node, namespace: ns, ids: ids) else { return }
        let mine = ids.compactMap { secrets[$0] }
        guard !mine.isEmpty else { return }
        snap.secrets = mine
        snap.digest = MeshCrypto.digestHex(snap.digest + TLSSecrets.digestInput(mine))
    }
}

/// Which secrets a gateway proxy is sent (DESIGN §15).
enum GatewaySecretSelection {
    /// The secret ids (NAMESPACE/NAME) a gateway proxy with `labels` serves: for every Gateway
    /// that selects it (IstioGateway.selects: an empty selector selects every gateway proxy, as
    /// in Istio), the `credentialName` of each SIMPLE or MUTUAL server, in the Gateway's namespace.
    static func ids(gateways: [IstioGateway], labels: [(String, String)]) -> Set<String> {
        var out: Set<String> = []
        for g in gateways where g.selects(labels: labels) {
            for s in g.servers {
                guard let t = s.tls, t.mode == .simple || t.mode == .mutual, let n = t.credentialName else { continue }
                out.insert("\(g.namespace)/\(n)")
            }
        }
        return out
    }
}

extension StateFiles {
    /// The TLS secrets (`TLSSecret.record`s after a header line counting them), mode 0600.
    static let secrets = "secrets.dat"
    static let secretsHeader = "# meshd: tls secrets: "

    /// The stored secrets; none when the file does not exist. A file that exists but cannot be
    /// read is an error naming it (meshd does not start without secrets it stored).
    func loadSecrets() throws(CAError) -> [String: TLSSecret] {
        let p = "\(stateDir)/\(StateFiles.secrets)"
        var st = stat()
        if lstat(p, &st) != 0 {
            if errno == ENOENT { return [:] }
            throw CAError("\(p): cannot read it: \(String(cString: strerror(errno)))")
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw CAError("\(p): not a regular file; meshd keeps its TLS secrets there") }
        var bytes: [UInt8]
        do { bytes = try FileStore.readBytes(p) } catch { throw CAError("\(p): \(error)") }
        defer { bytes.withUnsafeMutableBytes { b in for i in b.indices { b[i] = 0 } } }
        let header = Array(StateFiles.secretsHeader.utf8)
        guard bytes.count > header.count, bytes.prefix(header.count).elementsEqual(header), let nl = bytes.firstIndex(of: 10),
              let n = Int(String(decoding: bytes[header.count..<nl], as: UTF8.self)) else {
            throw CAError("\(p):1: damaged header line (expected \"\(StateFiles.secretsHeader)N\"); restore the file")
        }
        let list: [TLSSecret]
        do { list = try TLSSecret.readAll(Array(bytes[(nl + 1)...])) } catch {
            throw CAError("\(p): \(error.description); the file is damaged: restore it")
        }
        guard list.count == n else { throw CAError("\(p): the header counts \(n) secret(s) but \(list.count) were read; the file is damaged") }
        return Dictionary(list.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
    }

    /// Writes every secret (atomically, 0600).
    func saveSecrets(_ secrets: [String: TLSSecret]) throws(CAError) {
        var bytes = Array("\(StateFiles.secretsHeader)\(secrets.count)\n".utf8)
        for s in secrets.values.sorted(by: { $0.id < $1.id }) { bytes += s.record }
        defer { bytes.withUnsafeMutableBytes { b in for i in b.indices { b[i] = 0 } } }
        try FileStore.writeAtomically("\(stateDir)/\(StateFiles.secrets)", String(decoding: bytes, as: UTF8.self), mode: 0o600)
    }
}

extension EtcdStateStore {
    /// One key per secret: `/mesh/config/secrets/NAMESPACE/NAME`, its `TLSSecret.record`.
    static let secretsPrefix = "/mesh/config/secrets/"

    /// The secrets under the prefix; a key that cannot be read is an error naming it.
    static func secrets(from kvs: [String: EtcdKeyValue]) throws(CAError) -> [String: TLSSecret] {
        var out: [String: TLSSecret] = [:]
        for kv in kvs.values where kv.key.hasPrefix(secretsPrefix) {
            let s: TLSSecret
            do { s = try TLSSecret.readOne(kv.value) } catch {
                throw CAError("etcd key \(kv.key): \(error.description)")
            }
            guard secretsPrefix + s.id == kv.key else { throw CAError("etcd key \(kv.key): holds the secret \(s.id)") }
            out[s.id] = s
        }
        return out
    }

    /// The puts and deletes that take the secrets from `current` to `next`.
    func secretOps(from current: ConfigStore.State, to next: ConfigStore.State, into ops: inout [EtcdOp]) {
        for (k, s) in next.secrets where !(current.secrets[k]?.same(as: s) ?? false) {
            ops.append(.put(EtcdStateStore.secretsPrefix + k, s.record))
        }
        for k in current.secrets.keys where next.secrets[k] == nil { ops.append(.delete(EtcdStateStore.secretsPrefix + k)) }
    }
}
