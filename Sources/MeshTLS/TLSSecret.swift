import COpenSSL
import CMeshShims
#if canImport(Glibc)
import Glibc
#endif

/// Bytes that hold secret material (a private key's PEM): one copy, zeroed with
/// `OPENSSL_cleanse` and freed when the last reference goes (a replaced secret's key does not
/// linger in the heap).
public final class SecretBytes: @unchecked Sendable {
    public let count: Int
    private let base: UnsafeMutableRawPointer

    public init<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        count = bytes.count
        base = .allocate(byteCount: max(count, 1), alignment: 1)
        var i = 0
        for b in bytes { base.storeBytes(of: b, toByteOffset: i, as: UInt8.self); i += 1 }
    }

    deinit {
        OPENSSL_cleanse(base, max(count, 1))
        base.deallocate()
    }

    /// The bytes, for the duration of `f` only.
    public func withBytes<R>(_ f: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try f(UnsafeRawBufferPointer(start: base, count: count))
    }

    /// Whether both hold the same bytes (constant time in the length).
    public func same(as other: SecretBytes) -> Bool {
        guard count == other.count else { return false }
        return withBytes { a in other.withBytes { b in CRYPTO_memcmp(a.baseAddress, b.baseAddress, count) == 0 } }
    }
}

/// A TLS secret as `kubectl create secret tls` makes it (`tls.crt`, `tls.key`, and `ca.crt`
/// as `generic --from-file` adds it), stored in meshd and served by gateways whose servers name
/// it in `tls.credentialName` (DESIGN §15). The key lives in `SecretBytes`.
public struct TLSSecret: Sendable, Equatable {
    public var namespace: String
    public var name: String
    /// The certificate chain, PEM, leaf first.
    public var certChain: String
    /// The private key, PEM (PKCS#8, or the traditional RSA/EC forms), unencrypted.
    public var key: SecretBytes
    /// The CA that client certificates must chain to (MUTUAL), PEM; empty when none was given.
    public var caCert: String

    public init(namespace: String, name: String, certChain: String, key: SecretBytes, caCert: String) {
        self.namespace = namespace; self.name = name; self.certChain = certChain; self.key = key; self.caCert = caCert
    }

    /// `NAMESPACE/NAME`, how stores and gateways key it.
    public var id: String { "\(namespace)/\(name)" }

    /// Bounds on what one secret may hold (a chain of a few certificates, one key, a CA bundle).
    public static let maxCertBytes = 64 * 1024
    public static let maxKeyBytes = 16 * 1024
    public static let maxCABytes = 256 * 1024

    public static func == (a: TLSSecret, b: TLSSecret) -> Bool { a.same(as: b) }

    /// Whether two secrets hold the same material (name, namespace, certificates and key).
    public func same(as o: TLSSecret) -> Bool {
        namespace == o.namespace && name == o.name && certChain == o.certChain && caCert == o.caCert && key.same(as: o.key)
    }

    // MARK: the record both ends and the stores use

    /// One secret as bytes: the line `tls-secret NAMESPACE NAME CERT_BYTES KEY_BYTES CA_BYTES`,
    /// then the certificate chain, the key and the CA, each exactly as long as the line says.
    /// The caller zeroes the array when it is done with it (it holds the key).
    public var record: [UInt8] {
        var out = Array("tls-secret \(namespace) \(name) \(certChain.utf8.count) \(key.count) \(caCert.utf8.count)\n".utf8)
        out.reserveCapacity(out.count + certChain.utf8.count + key.count + caCert.utf8.count)
        out += certChain.utf8
        key.withBytes { out += $0 }
        out += caCert.utf8
        return out
    }

    /// Reads one record from `bytes` at `start`; returns the secret and where the next record
    /// starts. Everything is checked: the line's shape, names, lengths within the bounds, the
    /// text being UTF-8. What is malformed is an error saying what, never a partial secret.
    public static func read(_ bytes: UnsafeRawBufferPointer, at start: Int) throws(TLSSecretError) -> (TLSSecret, Int) {
        var nl = start
        while nl < bytes.count && nl - start < 600 && bytes[nl] != 10 { nl += 1 }
        guard nl < bytes.count, bytes[nl] == 10 else { throw TLSSecretError("a TLS secret record's first line is missing or too long") }
        let words = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<nl]), as: UTF8.self).split(separator: " ", omittingEmptySubsequences: false)
        guard words.count == 6, words[0] == "tls-secret" else {
            throw TLSSecretError("expected \"tls-secret NAMESPACE NAME CERT_BYTES KEY_BYTES CA_BYTES\"")
        }
        let ns = String(words[1]), name = String(words[2])
        try checkNames(namespace: ns, name: name)
        guard let c = Int(words[3]), let k = Int(words[4]), let a = Int(words[5]),
              c > 0, c <= maxCertBytes, k > 0, k <= maxKeyBytes, a >= 0, a <= maxCABytes else {
            throw TLSSecretError("TLS secret \(ns)/\(name): lengths out of bounds")
        }
        let body = nl + 1
        guard bytes.count - body >= c + k + a else { throw TLSSecretError("TLS secret \(ns)/\(name): cut short") }
        func text(_ from: Int, _ n: Int) throws(TLSSecretError) -> String {
            guard let s = String(validating: UnsafeRawBufferPointer(rebasing: bytes[from..<(from + n)]), as: UTF8.self) else {
                throw TLSSecretError("TLS secret \(ns)/\(name): not UTF-8 text")
            }
            return s
        }
        let chain = try text(body, c)
        let key = SecretBytes(UnsafeRawBufferPointer(rebasing: bytes[(body + c)..<(body + c + k)]))
        let ca = try text(body + c + k, a)
        return (TLSSecret(namespace: ns, name: name, certChain: chain, key: key, caCert: ca), body + c + k + a)
    }

    /// Reads records end to end (a file, a stream section), each secret once.
    public static func readAll(_ bytes: UnsafeRawBufferPointer) throws(TLSSecretError) -> [TLSSecret] {
        var out: [TLSSecret] = []
        var at = 0
        var seen: Set<String> = []
        while at < bytes.count {
            let (s, next) = try read(bytes, at: at)
            guard seen.insert(s.id).inserted else { throw TLSSecretError("TLS secret \(s.id) is given twice") }
            out.append(s)
            at = next
        }
        return out
    }

    /// `readAll` over an array.
    public static func readAll(_ bytes: [UInt8]) throws(TLSSecretError) -> [TLSSecret] {
        let r = bytes.withUnsafeBytes { b in Result { () throws(TLSSecretError) in try readAll(b) } }
        return try r.get()
    }

    /// Exactly one record, filling `bytes` (an etcd key's value).
    public static func readOne(_ bytes: [UInt8]) throws(TLSSecretError) -> TLSSecret {
        let all = try readAll(bytes)
        guard all.count == 1 else { throw TLSSecretError("expected one TLS secret record, found \(all.count)") }
        return all[0]
    }

    /// Kubernetes' rules: the namespace a DNS label, the name a DNS subdomain (253 at most).
    public static func checkNames(namespace: String, name: String) throws(TLSSecretError) {
        func label(_ s: Substring) -> Bool {
            let u = Array(s.utf8)
            guard !u.isEmpty, u.count <= 63, u.first != 45, u.last != 45 else { return false }
            return u.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 }
        }
        guard label(Substring(namespace)) else {
            throw TLSSecretError("namespace \"\(namespace)\": expected a DNS label (lowercase letters, digits, '-', at most 63)")
        }
        guard name.utf8.count <= 253, name.split(separator: ".", omittingEmptySubsequences: false).allSatisfy(label) else {
            throw TLSSecretError("secret name \"\(name)\": expected a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253)")
        }
    }
}

/// Why a TLS secret was refused: the text names the flag and file (or the record) at fault.
public struct TLSSecretError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ d: String) { description = d }
}

/// What can be shown of a secret (never the key): the leaf's subject, DNS and URI SANs, serial,
/// validity, its SHA-256 fingerprint, and whether a CA for client certificates is present.
public struct TLSSecretInfo: Sendable, Equatable {
    public var subject: String
    public var sans: [String]
    public var serialHex: String
    public var notBefore: Int64
    public var notAfter: Int64
    /// SHA-256 of the leaf's DER, lowercase hex.
    public var fingerprint: String
    public var hasCA: Bool
    /// Set when the leaf expires within 7 days (the secret is still taken).
    public var warning: String?
}
