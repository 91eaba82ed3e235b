import COpenSSL
import MeshCore

/// Randomness and wall-clock time for the control plane: keys, token ids, nonces and temporary
/// file names come from OpenSSL's CSPRNG; certificate and token lifetimes count Unix seconds.
extension MeshCrypto {
    /// `n` random bytes from OpenSSL's CSPRNG.
    public static func randomBytes(_ n: Int) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: n)
        let ok = b.withUnsafeMutableBytes { RAND_bytes($0.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(n)) }
        // Keys and tokens from a failed generator would be guessable: stop rather than go on.
        guard ok == 1 else { fatalError("RAND_bytes failed: no secure randomness") }
        return b
    }

    /// `bytes` random bytes as lowercase hex (ids, nonces, secrets written to files).
    public static func randomHex(bytes: Int) -> String {
        randomBytes(bytes).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    /// Now, in Unix seconds.
    public static func now() -> Int64 { Int64(Clock.wallNanos() / 1_000_000_000) }
}
