import MeshCore

/// The text of a generated x-request-id: a UUID version 4 made from two random words.
enum RequestID {
    /// Appends the UUID of the 128 bits `a`, `c` (little-endian bytes, version 4 in byte 6's high
    /// nibble, the RFC 4122 variant in byte 8's top bits): 36 characters, formatted on the stack
    /// and appended at once (one append per character cost ~1,300 instructions a request).
    static func append(_ a: UInt64, _ c: UInt64, into out: ByteBuffer) {
        let hex: StaticString = "0123456789abcdef"
        var bytes: (UInt64, UInt64) = ((a & ~(UInt64(0xf0) << 48)) | (UInt64(0x40) << 48), (c & ~UInt64(0xc0)) | 0x80)
        var text: (UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0)   // 40 bytes, 36 used
        withUnsafeBytes(of: &bytes) { raw in
            withUnsafeMutableBytes(of: &text) { t in
                var j = 0
                for i in 0..<16 {
                    if i == 4 || i == 6 || i == 8 || i == 10 { t[j] = UInt8(ascii: "-"); j += 1 }
                    t[j] = hex.utf8Start[Int(raw[i] >> 4)]
                    t[j + 1] = hex.utf8Start[Int(raw[i] & 15)]
                    j += 2
                }
                out.append(t.baseAddress!, j)
            }
        }
    }
}
