import XCTest
@testable import MeshCore

/// The protobuf writer against hand-checked bytes (the protobuf encoding guide's examples and
/// OpenTelemetry's KeyValue/AnyValue layout), and its refusal to write a field that does not fit.
final class ProtobufWriterTests: XCTestCase {
    private func encode(_ capacity: Int = 256, _ body: (inout ProtobufWriter) -> Void) -> [UInt8] {
        let p = UnsafeMutablePointer<UInt8>.allocate(capacity: capacity)
        defer { p.deallocate() }
        var w = ProtobufWriter(p, capacity: capacity)
        body(&w)
        return Array(UnsafeBufferPointer(start: p, count: w.count))
    }

    func testFieldThatDoesNotFitIsNotWrittenAtAll() {
        let p = UnsafeMutablePointer<UInt8>.allocate(capacity: 8)
        defer { p.deallocate() }
        var w = ProtobufWriter(p, capacity: 8)
        w.string(2, "testing")          // 9 bytes
        XCTAssertTrue(w.overflow)
        XCTAssertEqual(w.count, 0)
        w.varint(1, 150)                 // 3 bytes: still fits after the refused one
        XCTAssertEqual(Array(UnsafeBufferPointer(start: p, count: w.count)), [0x08, 0x96, 0x01])
        w.fixed64(7, 1)                  // 9 bytes: does not fit in the 5 left
        XCTAssertEqual(w.count, 3)
        var kv = ProtobufWriter(p, capacity: 9)
        kv.stringKeyValue(9, key: "k", value: "v")   // 10 bytes
        XCTAssertEqual(kv.count, 0)
        XCTAssertTrue(kv.overflow)
    }

    func testScalarsAndBytes() {
        XCTAssertEqual(encode { $0.varint(1, 150) }, [0x08, 0x96, 0x01])
        XCTAssertEqual(encode { $0.string(2, "testing") }, [0x12, 0x07, 0x74, 0x65, 0x73, 0x74, 0x69, 0x6e, 0x67])
        XCTAssertEqual(encode { $0.fixed64(7, 0x0102) }, [0x39, 0x02, 0x01, 0, 0, 0, 0, 0, 0])
        XCTAssertEqual(encode { $0.id64(2, 0x0102_0304_0506_0708) }, [0x12, 0x08, 1, 2, 3, 4, 5, 6, 7, 8])
        XCTAssertEqual(encode { $0.id128(1, high: 0x0a0b_0c0d_0e0f_1011, low: 0x1213_1415_1617_1819) },
                       [0x0a, 0x10, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19])
        XCTAssertEqual(encode { $0.varint(15, UInt64.max) }.count, 1 + 10)
        XCTAssertEqual(encode { $0.tag(16, .lengthDelimited) }, [0x82, 0x01])
    }

    func testKeyValues() {
        // KeyValue{key(1)="k", value(2)=AnyValue{string_value(1)="v"}} as Span.attributes (9).
        XCTAssertEqual(encode { $0.stringKeyValue(9, key: "k", value: "v") },
                       [0x4a, 0x08, 0x0a, 0x01, 0x6b, 0x12, 0x03, 0x0a, 0x01, 0x76])
        // AnyValue{int_value(3)=300}.
        XCTAssertEqual(encode { $0.intKeyValue(9, key: "n", value: 300) },
                       [0x4a, 0x08, 0x0a, 0x01, 0x6e, 0x12, 0x03, 0x18, 0xac, 0x02])
        XCTAssertEqual(ProtobufWriter.stringKeyValueSize(keyLength: 1, valueLength: 1) + 2, 10)
        XCTAssertEqual(ProtobufWriter.intKeyValueSize(keyLength: 1, value: 300) + 2, 10)
        // A 200-byte value: two-byte lengths at each level (AnyValue 3+200 = 203, KeyValue 3+3+203 = 209).
        let v = [UInt8](repeating: 0x61, count: 200)
        let out = v.withUnsafeBufferPointer { b in encode(512) { $0.stringKeyValue(9, key: "k", value: b.baseAddress!, 200) } }
        XCTAssertEqual(Array(out.prefix(10)), [0x4a, 0xd1, 0x01, 0x0a, 0x01, 0x6b, 0x12, 0xcb, 0x01, 0x0a])
        XCTAssertEqual(out[10...11], [0xc8, 0x01])
        XCTAssertEqual(out.count, 12 + 200)
        XCTAssertEqual(ProtobufWriter.delimitedSize(9, ProtobufWriter.stringKeyValueSize(keyLength: 1, valueLength: 200)), out.count)
    }

    func testEncodeHelperRefusesOverflow() {
        XCTAssertNil(ProtobufWriter.encode(capacity: 4) { $0.string(1, "toolong") })
        XCTAssertEqual(ProtobufWriter.encode(capacity: 3) { $0.varint(1, 150) }, [0x08, 0x96, 0x01])
    }
}
