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

/// `MeshCrypto.digestHex` over bytes that arrive in pieces (bench/push-load hashes a pushed text
/// as it streams past, without keeping it).
public final class DigestStream {
    private let ctx: OpaquePointer

    public init() {
        ctx = EVP_MD_CTX_new()!
        precondition(EVP_DigestInit_ex(ctx, EVP_sha256(), nil) == 1, "EVP_DigestInit_ex(sha256) failed")
    }

    deinit { EVP_MD_CTX_free(ctx) }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard let p = bytes.baseAddress, bytes.count > 0 else { return }
        precondition(EVP_DigestUpdate(ctx, p, bytes.count) == 1, "EVP_DigestUpdate failed")
    }

    /// The digest of every byte given, as `MeshCrypto.digestHex` writes it (the stream is done after).
    public func finishHex() -> String {
        var md = [UInt8](repeating: 0, count: 32)
        var n: UInt32 = 0
        precondition(md.withUnsafeMutableBufferPointer { EVP_DigestFinal_ex(ctx, $0.baseAddress, &n) } == 1, "EVP_DigestFinal_ex failed")
        return md.prefix(16).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}
