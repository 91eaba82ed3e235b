// Fuzz target: join tokens (MeshCA/JoinToken.swift), as meshd checks them on
// `POST /v1/certificate`, and the base64url codec under them.
//
// Input layout: byte 0 is a mode.
//   - mode even: the rest is a token text given to `JoinToken.verify` under a fixed key. A token
//     that verifies must be exactly the one meshd would have minted for what it grants (one
//     text per token: no second spelling of a signature or payload passes).
//     The rest is also decoded as base64url; a decoded text must re-encode to itself.
//   - mode odd: the rest is split at 0x00 bytes into namespace, service account and id, minted
//     (signed) with the key and verified: signed payloads with any bytes reach the payload
//     parser, and a token for DNS-label names must come back with exactly those names.
// Seeds made by GenSeeds use the same key, so that valid tokens are in the corpus.
import CFuzzDriver
import MeshCA
import MeshPKI
import MeshCore

/// Stops the process the way libFuzzer notices (a crash), naming the broken invariant.
func check(_ ok: @autoclosure () -> Bool, _ what: String) {
    if !ok() { fatalError("FuzzJoinToken invariant: \(what)") }
}

/// The signing key of the fuzz runs (GenSeeds mints the seed tokens with it).
let fuzzKey = Array("fuzz-token-key-0123456789abcdef!".utf8)
/// "now" for expiry checks: seed tokens expire in 2100, and some are already expired.
let fuzzNow: Int64 = 1_800_000_000

/// Names meshd mints tokens for (`POST /v1/token` checks them the same way).
func isDNSLabel(_ s: String) -> Bool {
    !s.isEmpty && s.utf8.count <= 63 && s.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzJoinToken(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size >= 1 else { return 0 }
    let rest = UnsafeBufferPointer(start: data + 1, count: size - 1)
    if data[0] & 1 == 0 {
        let text = String(decoding: rest, as: UTF8.self)
        if let t = try? JoinToken.verify(text, key: fuzzKey, now: fuzzNow) {
            check(t.expires > fuzzNow, "an expired token verified")
            check(t.encode(key: fuzzKey) == text, "a token verified in a spelling meshd never mints: \(text)")
        }
        if let bytes = Base64URL.decode(text) {
            check(Base64URL.encode(bytes) == text, "base64url text decoded that does not re-encode to itself: \(text)")
        }
        let raw = Array(rest)
        check(Base64URL.decode(Base64URL.encode(raw)) == raw, "base64url round trip")
        return 0
    }
    let fields = rest.split(separator: 0, maxSplits: 3, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    guard fields.count >= 3 else { return 0 }
    let expires = fuzzNow + Int64(fields.count > 3 ? fields[3].utf8.count : 60) - 30
    let minted = JoinToken(namespace: fields[0], serviceAccount: fields[1], expires: expires, id: fields[2])
    let text = minted.encode(key: fuzzKey)
    let verified = try? JoinToken.verify(text, key: fuzzKey, now: fuzzNow)
    if expires <= fuzzNow { check(verified == nil, "an expired token verified") }
    if isDNSLabel(minted.namespace), isDNSLabel(minted.serviceAccount), !minted.id.isEmpty,
       minted.id.utf8.allSatisfy({ $0 != 38 && $0 != 61 }), expires > fuzzNow {
        check(verified == minted, "a token for \(minted.namespace)/\(minted.serviceAccount) did not verify as itself")
    }
    if let v = verified, isDNSLabel(minted.namespace), isDNSLabel(minted.serviceAccount) {
        check(v.namespace == minted.namespace && v.serviceAccount == minted.serviceAccount, "a token granted another identity")
    }
    // Another key never verifies it.
    check((try? JoinToken.verify(text, key: Array("another-key".utf8), now: fuzzNow)) == nil, "a token verified under another key")
    return 0
}

/// The process entry: SwiftPM links `main` as `FuzzJoinToken_main`; libFuzzer's driver takes over.
@_cdecl("FuzzJoinToken_main")
public func fuzzerMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> Int32 {
    mesh_fuzz_main(argc, argv)
}
