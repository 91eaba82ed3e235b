// Fuzz target: the certificate signing request path of meshd's CA
// (`CertificateAuthority.sign` -> `MeshCrypto.verifyCSR` -> `MeshCrypto.issue`), as
// `POST /v1/certificate` runs it with a valid join token for spiffe://cluster.local/ns/fuzz/sa/app.
//
// Input layout: byte 0 is a mode. Mode even: the rest is the request body (PEM text). Mode odd:
// the rest is DER, wrapped in `-----BEGIN CERTIFICATE REQUEST-----` armour first (so that the
// fuzzer mutates the ASN.1 itself, not its base64). A CA is created once, in a temporary state
// directory removed at exit. An issued certificate must carry exactly the granted identity and
// verify against the CA's root.
import CFuzzDriver
import MeshCA
import MeshPKI
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// Stops the process the way libFuzzer notices (a crash), naming the broken invariant.
func check(_ ok: @autoclosure () -> Bool, _ what: String) {
    if !ok() { fatalError("FuzzCSR invariant: \(what)") }
}

/// The identity the fuzz token grants.
let granted = "spiffe://cluster.local/ns/fuzz/sa/app"

/// The CA's temporary state directory (removed at exit).
nonisolated(unsafe) var stateDir = ""

/// The CA and a join token, made once per process.
nonisolated(unsafe) var ca: CertificateAuthority! = nil
nonisolated(unsafe) var token = ""

/// Removes the temporary CA state (keys included) when the fuzzer exits.
func removeStateDir() {
    guard !stateDir.isEmpty, let d = opendir(stateDir) else { return }
    while let e = readdir(d) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if name != "." && name != ".." { unlink("\(stateDir)/\(name)") }
    }
    closedir(d)
    rmdir(stateDir)
}

@_cdecl("LLVMFuzzerInitialize")
public func fuzzCSRInit(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> Int32 {
    Log.minimum = .error
    var template = Array("/tmp/fuzz-csr-ca.XXXXXX".utf8CString)
    guard let p = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else { fatalError("mkdtemp failed") }
    stateDir = String(cString: p)
    atexit { removeStateDir() }
    do {
        ca = try CertificateAuthority(stateDir: stateDir, caDir: nil, trustDomain: "cluster.local", certTTL: 3600)
    } catch { fatalError("CA: \(error)") }
    token = ca.mintToken(namespace: "fuzz", serviceAccount: "app", ttl: 24 * 3600)
    return 0
}

/// PEM armour around DER bytes (base64, 64 columns), as `openssl req -outform PEM` writes it.
func pem(_ der: UnsafeBufferPointer<UInt8>) -> String {
    let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    var b64: [UInt8] = []
    var i = 0
    while i < der.count {
        let n = min(3, der.count - i)
        var v = UInt32(der[i]) << 16
        if n > 1 { v |= UInt32(der[i + 1]) << 8 }
        if n > 2 { v |= UInt32(der[i + 2]) }
        for k in 0..<4 { b64.append(k <= n ? alphabet[Int((v >> UInt32(18 - 6 * k)) & 63)] : 61) }
        i += 3
    }
    var out = "-----BEGIN CERTIFICATE REQUEST-----\n"
    var at = 0
    while at < b64.count {
        out += String(decoding: b64[at..<min(at + 64, b64.count)], as: UTF8.self) + "\n"
        at += 64
    }
    return out + "-----END CERTIFICATE REQUEST-----\n"
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCSR(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size >= 1 else { return 0 }
    let rest = UnsafeBufferPointer(start: data + 1, count: size - 1)
    let body = data[0] & 1 == 0 ? String(decoding: rest, as: UTF8.self) : pem(rest)
    do {
        let issued = try ca.sign(csrPEM: body, token: token, peer: nil)
        let chain = try MeshCrypto.Certificate.loadAll(pem: issued.chainPEM)
        check(chain.count == 1 && chain[0].info.identity == granted, "issued for another identity: \(chain.first?.info.identity ?? "-")")
        check(MeshCrypto.verify(chainPEM: issued.chainPEM, rootsPEM: ca.trustBundlePEM), "an issued certificate does not verify")
    } catch let r as CertificateAuthority.Refusal {
        check(r.status == 400 || r.status == 403, "refused with \(r.status): \(r.message)")
    } catch {
        check(false, "unexpected error \(error)")
    }
    return 0
}

/// The process entry: SwiftPM links `main` as `FuzzCSR_main`; libFuzzer's driver takes over.
@_cdecl("FuzzCSR_main")
public func fuzzerMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> Int32 {
    mesh_fuzz_main(argc, argv)
}
