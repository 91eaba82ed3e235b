import XCTest
import MeshCore
@testable import MeshProxy

/// The generated x-request-id's text: exact for known bits, and the same as a byte-by-byte
/// reference formatting for random ones.
final class RequestIDTests: XCTestCase {
    private func text(_ a: UInt64, _ c: UInt64) -> String {
        let b = ByteBuffer(capacity: 64)
        b.append("x")
        RequestID.append(a, c, into: b)
        return b.string(0, b.writeIndex)
    }

    func testKnownBits() {
        XCTAssertEqual(text(0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210), "xefcdab89-6745-4301-9032-547698badcfe")
        XCTAssertEqual(text(0, 0), "x00000000-0000-4000-8000-000000000000")
        XCTAssertEqual(text(.max, .max), "xffffffff-ffff-4fff-bfff-ffffffffffff")
    }

    func testMatchesReferenceFormatting() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<1000 {
            let a = rng.next() as UInt64, c = rng.next() as UInt64
            var bytes: [UInt8] = []
            for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: a >> (8 * UInt64(i)))) }
            for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: c >> (8 * UInt64(i)))) }
            bytes[6] = (bytes[6] & 0x0f) | 0x40
            bytes[8] = (bytes[8] & 0x3f) | 0x80
            var want = "x"
            for (i, v) in bytes.enumerated() {
                if i == 4 || i == 6 || i == 8 || i == 10 { want += "-" }
                want += String(v >> 4, radix: 16) + String(v & 15, radix: 16)
            }
            XCTAssertEqual(text(a, c), want)
        }
    }
}
