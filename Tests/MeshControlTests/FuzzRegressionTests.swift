import XCTest
import MeshCore
import MeshControl
import MeshCA
import MeshPKI
import MeshControlWire

/// Inputs found by the fuzz targets (fuzz/, scripts/fuzz.sh), kept as regression tests.
final class FuzzRegressionTests: XCTestCase {
    /// FuzzJoinToken: base64url text with non-zero bits after the last whole byte decoded (the
    /// bits were dropped), so one byte string had several spellings. Found as "c-", "r1", "r0z".
    func testBase64URLRefusesNonZeroLeftoverBits() {
        for s in ["c-", "r1", "r0z", "aGl"] {
            XCTAssertNil(Base64URL.decode(s), s)
        }
        XCTAssertEqual(Base64URL.decode("aGk"), Array("hi".utf8))
        XCTAssertEqual(Base64URL.decode("cw"), [0x73])
        for n in 0..<40 {
            let d = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            XCTAssertEqual(Base64URL.decode(Base64URL.encode(d)), d)
        }
    }

    /// FuzzJoinToken: a token whose signature's last character was changed within its unused
    /// low bits verified as well (four spellings of each token); only the minted text verifies.
    func testOnlyTheMintedSpellingOfATokenVerifies() throws {
        let key = Array("fuzz-token-key-0123456789abcdef!".utf8)
        let now: Int64 = 1_800_000_000
        let text = JoinToken(namespace: "default", serviceAccount: "reviews", expires: now + 60, id: "x").encode(key: key)
        XCTAssertNoThrow(try JoinToken.verify(text, key: key, now: now))
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
        var bytes = Array(text.utf8)
        // A 32-byte MAC is 43 characters: the last one carries 4 bits and 2 unused (zero) bits.
        let last = alphabet.firstIndex(of: bytes[bytes.count - 1])!
        for unused in 1..<4 {
            bytes[bytes.count - 1] = alphabet[last | unused]
            let respelled = String(decoding: bytes, as: UTF8.self)
            XCTAssertThrowsError(try JoinToken.verify(respelled, key: key, now: now), respelled)
        }
    }
}

/// FuzzJoinToken, minted fields: a payload field given twice took the last value, so a token
/// minted with an id (or a name) containing "&sa=admin" granted service account "admin".
final class FuzzRegressionPayloadTests: XCTestCase {
    let key = Array("fuzz-token-key-0123456789abcdef!".utf8)
    let now: Int64 = 1_800_000_000

    func testRepeatedPayloadFieldIsRefused() {
        // Found as ns "default", sa "reviews", id "Ac0fbnM9f&sa=ee": verified as sa "ee".
        let cases = [("default", "reviews", "Ac0fbnM9f&sa=ee"), ("default", "web&ns=kube-system", "x"),
                     ("default", "reviews", "x&ns=kube-system&sa=admin")]
        for (ns, sa, id) in cases {
            let text = JoinToken(namespace: ns, serviceAccount: sa, expires: now + 60, id: id).encode(key: key)
            XCTAssertThrowsError(try JoinToken.verify(text, key: key, now: now), "\(ns)/\(sa) id \(id)") {
                XCTAssertTrue("\($0)".contains("repeated"), "\($0)")
            }
        }
        let ok = JoinToken(namespace: "default", serviceAccount: "reviews", expires: now + 60, id: "0123abcd")
        XCTAssertEqual(try JoinToken.verify(ok.encode(key: key), key: key, now: now), ok)
    }
}

/// FuzzJoinToken, minted fields: the payload was split into fields on Characters, so an "="
/// followed by a combining mark (one grapheme) was not a separator and a minted token did not
/// verify. Found as ns "def", sa "ul", id bytes d6 a0 9b 92 69 5b (U+05A0 first).
final class FuzzRegressionPayloadBytesTests: XCTestCase {
    func testPayloadIsSplitOnBytes() throws {
        let key = Array("fuzz-token-key-0123456789abcdef!".utf8)
        let now: Int64 = 1_800_000_000
        let id = String(decoding: [0xd6, 0xa0, 0x9b, 0x92, 0x69, 0x5b] as [UInt8], as: UTF8.self)
        for t in [JoinToken(namespace: "def", serviceAccount: "ul", expires: now + 30, id: id),
                  JoinToken(namespace: "\u{0301}ns", serviceAccount: "\u{05A0}", expires: now + 30, id: "x")] {
            XCTAssertEqual(try JoinToken.verify(t.encode(key: key), key: key, now: now), t)
        }
    }
}
