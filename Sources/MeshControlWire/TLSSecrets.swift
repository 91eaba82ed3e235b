import MeshTLS
import MeshCore

/// TLS secrets on the wire (DESIGN §15): meshctl's upload to meshd's admin API, the answers of
/// `create`/`delete`/`get secrets`, and the section of a config push that carries the secrets a
/// gateway serves. One record format (`TLSSecret.record`) everywhere.
public enum TLSSecrets {
    /// The admin paths: create or replace (POST, body: one record), delete (POST), list (GET).
    public static let createPath = "/v1/secrets"
    public static let deletePath = "/v1/secrets/delete"
    public static let listPath = "/v1/secrets"
    public static let contentType = "application/x-mesh-tls-secret"

    /// The query of a create: the names of the files given, so that meshd's errors name them.
    public static func createQuery(_ f: PEMContext.Sources) -> String {
        "cert=\(ControlClient.percentEncode(f.cert))&key=\(ControlClient.percentEncode(f.key))&ca=\(ControlClient.percentEncode(f.ca))"
    }

    /// The file names of a create's query (a name missing is said as such).
    public static func sources(query q: [String: String]) -> PEMContext.Sources {
        PEMContext.Sources(cert: q["cert"] ?? "(cert)", key: q["key"] ?? "(key)", ca: q["ca"] ?? "(ca)")
    }

    /// One line of `get secrets`: namespace, name, subject, SANs, not-after, SHA-256
    /// fingerprint of the leaf, and whether a CA is held; tab-separated. Never the key.
    public static func listLine(_ s: TLSSecret) -> String {
        guard let i = PEMContext.info(s) else { return "\(s.namespace)\t\(s.name)\t-\t-\t-\t-\t-" }
        return "\(s.namespace)\t\(s.name)\t\(i.subject)\t\(i.sans.isEmpty ? "-" : i.sans.joined(separator: ","))\t\(X509Info.rfc3339(i.notAfter))\t\(i.fingerprint)\t\(i.hasCA ? "ca" : "-")"
    }

    // MARK: the push section

    /// What opens the secrets section of a push, right after the push's first line:
    /// `tls-secrets COUNT BYTES`, then BYTES bytes of COUNT records. A config text starts with
    /// `apiVersion:` and a delta with `delta `, so the section cannot be taken for either.
    public static let sectionPrefix = "tls-secrets "

    /// The section for `secrets` (empty when there are none: a push to a sidecar that is not a
    /// gateway looks as it always did).
    public static func section(_ secrets: [TLSSecret]) -> String {
        guard !secrets.isEmpty else { return "" }
        var bytes: [UInt8] = []
        for s in secrets { bytes += s.record }
        defer { bytes.withUnsafeMutableBytes { b in for i in b.indices { b[i] = 0 } } }
        return "\(sectionPrefix)\(secrets.count) \(bytes.count)\n" + String(decoding: bytes, as: UTF8.self)
    }

    /// Reads the section at the start of `rest` (the push after its first line): the secrets and
    /// where the rest of the push starts. No section: none, and `rest` as it is.
    public static func readSection(_ rest: Substring) throws(TLSSecretError) -> ([TLSSecret], Substring) {
        guard rest.hasPrefix(sectionPrefix) else { return ([], rest) }
        let u = rest.utf8
        guard let nl = u.firstIndex(of: 10) else { throw TLSSecretError("the tls-secrets line is cut short") }
        let words = rest[rest.startIndex..<nl].split(separator: " ")
        guard words.count == 3, let n = Int(words[1]), let len = Int(words[2]), n > 0, n <= 1000, len > 0, len <= 64 << 20 else {
            throw TLSSecretError("expected \"tls-secrets COUNT BYTES\"")
        }
        let start = u.index(after: nl)
        guard u.distance(from: start, to: u.endIndex) >= len else { throw TLSSecretError("the tls-secrets section is cut short") }
        let end = u.index(start, offsetBy: len)
        var bytes = Array(u[start..<end])
        defer { bytes.withUnsafeMutableBytes { b in for i in b.indices { b[i] = 0 } } }
        let secrets = try TLSSecret.readAll(bytes)
        guard secrets.count == n else { throw TLSSecretError("the tls-secrets section says \(n) secret(s) and holds \(secrets.count)") }
        return (secrets, rest[end...])
    }

    /// What a sidecar's digest covers of the secrets it is sent: names and the SHA-256 of each
    /// record (a replaced secret changes it, so it is pushed again).
    public static func digestInput(_ secrets: [TLSSecret]) -> String {
        secrets.map { s -> String in
            var r = s.record
            defer { r.withUnsafeMutableBytes { b in for i in b.indices { b[i] = 0 } } }
            return "\(s.id)=\(PEMContext.sha256Hex(r))"
        }.joined(separator: ",")
    }
}

extension TLSSecrets {
    /// What meshctl checks before it uploads (the check meshd runs again as the authority): the
    /// secret from the bytes of the files given, its record, and the warning to show, if any.
    /// `cert`, `key`, `ca` are the file names, for messages.
    public static func prepare(namespace: String, name: String, cert: (file: String, bytes: [UInt8]), key: (file: String, bytes: [UInt8]),
                               ca: (file: String, bytes: [UInt8])?, now: Int64) throws(TLSSecretError) -> (record: [UInt8], warning: String?) {
        func text(_ flag: String, _ f: (file: String, bytes: [UInt8])) throws(TLSSecretError) -> String {
            guard let s = String(validating: f.bytes, as: UTF8.self) else { throw TLSSecretError("\(flag) \(f.file): not PEM text") }
            return s
        }
        let s = TLSSecret(namespace: namespace, name: name, certChain: try text("--cert", cert), key: SecretBytes(key.bytes),
                          caCert: try ca.map { f throws(TLSSecretError) in try text("--ca", f) } ?? "")
        let info = try PEMContext.check(s, from: PEMContext.Sources(cert: cert.file, key: key.file, ca: ca?.file ?? "-"), now: now)
        return (s.record, info.warning)
    }

    /// The largest file `meshctl create secret tls` reads for each flag.
    public static let maxFileBytes = (cert: TLSSecret.maxCertBytes, key: TLSSecret.maxKeyBytes, ca: TLSSecret.maxCABytes)
}
