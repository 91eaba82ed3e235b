import MeshControlWire
import MeshPKI
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// `meshctl create secret tls NAME --cert F --key F [--ca F] [--namespace NS]`,
/// `meshctl delete secret [tls] NAME [--namespace NS]` and `meshctl get secrets`: TLS secrets in
/// meshd for gateways' `tls.credentialName` (as `kubectl create secret tls`, with `--ca` as
/// `generic --from-file=ca.crt` adds it). The files are checked here first (the same check meshd
/// runs again before it stores anything); a key is never printed.
func runSecretCommand(_ words: [String], namespace: String?, cert: String?, key: String?, ca: String?) {
    let ns = namespace ?? "default"
    switch (words.first, words.dropFirst().first) {
    case ("create", "secret"):
        guard words.count >= 3, words[2] == "tls" else { fail("create secret: only \"create secret tls NAME --cert F --key F [--ca F]\" is supported") }
        guard words.count == 4 else { fail("create secret tls: expected one NAME (meshctl create secret tls NAME --cert F --key F [--ca F])") }
        guard let cert else { fail("create secret tls: missing --cert FILE (the certificate chain, PEM, leaf first)") }
        guard let key else { fail("create secret tls: missing --key FILE (the private key, PEM)") }
        let c = readBounded("--cert", cert, TLSSecrets.maxFileBytes.cert)
        var k = readBounded("--key", key, TLSSecrets.maxFileBytes.key)
        defer { k.withUnsafeMutableBytes { b in for i in b.indices { b[i] = 0 } } }
        let a = ca.map { (file: $0, bytes: readBounded("--ca", $0, TLSSecrets.maxFileBytes.ca)) }
        var record: [UInt8]
        do {
            let p = try TLSSecrets.prepare(namespace: ns, name: words[3], cert: (cert, c), key: (key, k), ca: a, now: MeshCrypto.now())
            record = p.record
        } catch { fail(error.description) }
        let sources = PEMContext_sources(cert: cert, key: key, ca: ca)
        let answer = call("POST", "\(TLSSecrets.createPath)?\(sources)", body: String(decoding: record, as: UTF8.self), contentType: TLSSecrets.contentType)
        record.withUnsafeMutableBytes { b in for i in b.indices { b[i] = 0 } }
        // `created|configured|unchanged VERSION`, then maybe `warning: ...`.
        var lines = answer.split(separator: "\n").map(String.init)
        let first = lines.isEmpty ? [] : lines.removeFirst().split(separator: " ").map(String.init)
        guard first.count == 2 else { fail("unexpected answer from meshd: \(answer)") }
        show("secret/\(words[3]) \(first[0]) (namespace \(ns), version \(first[1]))\n")
        for l in lines where l.hasPrefix("warning: ") { show("\(l)\n") }
    case ("delete", "secret"):
        let rest = Array(words.dropFirst(2))
        let names = rest.first == "tls" ? Array(rest.dropFirst()) : rest
        guard names.count == 1 else { fail("delete secret: expected one NAME (meshctl delete secret tls NAME [--namespace NS])") }
        _ = call("POST", "\(TLSSecrets.deletePath)?namespace=\(ControlClient.percentEncode(ns))&name=\(ControlClient.percentEncode(names[0]))")
        show("secret/\(names[0]) deleted (namespace \(ns))\n")
    case ("get", "secrets"), ("get", "secret"):
        let rows = call("GET", TLSSecrets.listPath).split(separator: "\n").map { $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init) }
        var table = [["NAMESPACE", "NAME", "SUBJECT", "SANS", "NOT-AFTER", "SHA256", "CA"]]
        for r in rows where r.count == 7 { table.append([r[0], r[1], r[2], r[3], r[4], String(r[5].prefix(16)), r[6]]) }
        let widths = (0..<7).map { i in table.map { $0[i].count }.max() ?? 0 }
        for row in table {
            show(row.enumerated().map { i, c in i == 6 ? c : c + String(repeating: " ", count: widths[i] - c.count + 2) }.joined() + "\n")
        }
    default:
        fail("unknown command \"\(words.joined(separator: " "))\" (see --help)")
    }
}

/// The query naming the files (meshd's errors name them too).
private func PEMContext_sources(cert: String, key: String, ca: String?) -> String {
    "cert=\(ControlClient.percentEncode(cert))&key=\(ControlClient.percentEncode(key))&ca=\(ControlClient.percentEncode(ca ?? "-"))"
}

/// A file's bytes, refused (naming the flag) when it is not a regular file or is larger than `max`.
private func readBounded(_ flag: String, _ path: String, _ max: Int) -> [UInt8] {
    var st = stat()
    guard stat(path, &st) == 0 else { fail("\(flag) \(path): \(String(cString: strerror(errno)))") }
    guard (st.st_mode & S_IFMT) == S_IFREG else { fail("\(flag) \(path): not a regular file") }
    guard Int(st.st_size) <= max else { fail("\(flag) \(path): \(st.st_size) bytes; at most \(max) are taken") }
    do { return try FileStore.readBytes(path) } catch { fail("\(flag) \(path): \(error)") }
}
