import COpenSSL
import MeshCore

/// Content digests for the control plane: a config's digest tells meshd whether a sidecar
/// already has what it would push (SHA-256, first 16 bytes as hex).
extension MeshCrypto {
    /// SHA-256 of `text`, its first 16 bytes as 32 lowercase hex digits.
    public static func digestHex(_ text: String) -> String {
        var md = [UInt8](repeating: 0, count: 32)
        var bytes = Array(text.utf8)
        var n: UInt32 = 0
        let ok = bytes.withUnsafeMutableBytes { b in md.withUnsafeMutableBytes { m in
            EVP_Digest(b.baseAddress, b.count, m.baseAddress!.assumingMemoryBound(to: UInt8.self), &n, EVP_sha256(), nil)
        } }
        precondition(ok == 1, "EVP_Digest(sha256) failed")
        return md.prefix(16).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}
