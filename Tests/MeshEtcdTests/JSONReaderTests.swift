import XCTest
@testable import MeshEtcd

/// The strict JSON reader, negative cases first: what etcd (or anything on its port) sends is
/// untrusted input.
final class JSONReaderTests: XCTestCase {
    private func refused(_ text: String, _ reason: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try JSONReader.parse(text), "accepted \(text.debugDescription)", file: file, line: line) { e in
            XCTAssertTrue((e as! JSONError).reason.contains(reason), "\(text.debugDescription): \(e) lacks \(reason)", file: file, line: line)
        }
    }

    func testTruncatedInputRefused() {
        refused("", "truncated")
        refused("   ", "truncated")
        refused("{", "truncated")
        refused("{\"a\"", "truncated")
        refused("{\"a\":", "truncated")
        refused("{\"a\":1", "truncated")
        refused("{\"a\":1,", "truncated")
        refused("[1,2", "truncated")
        refused("[", "truncated")
        refused("\"abc", "truncated")
        refused("\"abc\\", "truncated")
        refused("\"\\u12", "truncated")
        refused("tru", "truncated")
        refused("nul", "truncated")
        refused("-", "truncated")
        refused("1.", "truncated")
        refused("1e", "truncated")
        refused("1e+", "truncated")
    }

    func testBadEscapesRefused() {
        refused("\"\\x\"", "bad escape")
        refused("\"\\a\"", "bad escape")
        refused("\"\\'\"", "bad escape")
        refused("\"\\U0041\"", "bad escape")
        refused("\"\\u12G4\"", "bad hex")
        refused("\"\\ud800\"", "unpaired high surrogate")
        refused("\"\\ud800\\u0041\"", "unpaired high surrogate")
        refused("\"\\ud800x\"", "unpaired high surrogate")
        refused("\"\\udc00\"", "unpaired low surrogate")
        refused("\"\\udfff\\ud800\"", "unpaired low surrogate")
    }

    func testControlCharactersAndBadUTF8Refused() {
        refused("\"a\u{01}b\"", "control character")
        refused("\"a\nb\"", "control character")
        refused("\"a\tb\"", "control character")
        refused("\"\u{1F}\"", "control character")
        XCTAssertThrowsError(try JSONReader.parse([0x22, 0xC3, 0x28, 0x22])) { e in
            XCTAssertTrue((e as! JSONError).reason.contains("UTF-8"))
        }
        XCTAssertThrowsError(try JSONReader.parse([0x22, 0xED, 0xA0, 0x80, 0x22])) // an encoded surrogate
        XCTAssertThrowsError(try JSONReader.parse([0x22, 0xFF, 0x22]))
    }

    func testDeepNestingBounded() {
        let ok = String(repeating: "[", count: JSONReader.maxDepth) + String(repeating: "]", count: JSONReader.maxDepth)
        XCTAssertNoThrow(try JSONReader.parse(ok))
        let deep = String(repeating: "[", count: JSONReader.maxDepth + 1) + String(repeating: "]", count: JSONReader.maxDepth + 1)
        refused(deep, "nesting deeper")
        refused(String(repeating: "{\"a\":", count: JSONReader.maxDepth + 1) + "1" + String(repeating: "}", count: JSONReader.maxDepth + 1), "nesting deeper")
        // A hostile depth far past the bound fails early without exhausting the stack.
        refused(String(repeating: "[", count: 1_000_000), "nesting deeper")
    }

    func testNumbersStrictAndHugeOnesRefusedAsInt64() throws {
        refused("01", "leading zero")
        refused("-01", "leading zero")
        refused("+1", "unexpected byte")
        refused(".5", "unexpected byte")
        refused("1.e5", "digit expected")
        refused("0x10", "unexpected bytes after")
        refused("NaN", "unexpected byte")
        refused("Infinity", "unexpected byte")
        refused("1" + String(repeating: "0", count: JSONReader.maxNumberLength), "number longer")
        // Well formed but not a 64-bit integer: parsed, refused when read as one.
        XCTAssertNil(try JSONReader.parse("99999999999999999999").int64Value)
        XCTAssertNil(try JSONReader.parse("9223372036854775808").int64Value)
        XCTAssertNil(try JSONReader.parse("-9223372036854775809").int64Value)
        XCTAssertNil(try JSONReader.parse("\"9223372036854775808\"").int64Value)
        XCTAssertNil(try JSONReader.parse("1e3").int64Value)
        XCTAssertNil(try JSONReader.parse("1.0").int64Value)
        XCTAssertNil(try JSONReader.parse("\"12a\"").int64Value)
        XCTAssertNil(try JSONReader.parse("\"\"").int64Value)
        XCTAssertNil(try JSONReader.parse("\"+5\"").int64Value)
        XCTAssertNil(try JSONReader.parse("\" 5\"").int64Value)
        XCTAssertNil(try JSONReader.parse("true").int64Value)
        XCTAssertEqual(try JSONReader.parse("9223372036854775807").int64Value, Int64.max)
        XCTAssertEqual(try JSONReader.parse("-9223372036854775808").int64Value, Int64.min)
        XCTAssertEqual(try JSONReader.parse("\"7587868497013913608\"").int64Value, 7587868497013913608)
        XCTAssertEqual(try JSONReader.parse("-0").int64Value, 0)
        XCTAssertEqual(try JSONReader.parse("1.25e-3"), .number("1.25e-3"))
    }

    func testStructureErrorsRefused() {
        refused("{} x", "after the value")
        refused("{},", "after the value")
        refused("[1 2]", "',' or ']'")
        refused("[1,]", "unexpected byte")
        refused("{\"a\":1,}", "key must be a string")
        refused("{a:1}", "key must be a string")
        refused("{\"a\" 1}", "':' expected")
        refused("{\"a\":1 \"b\":2}", "',' or '}'")
        refused("{\"a\":1,\"a\":2}", "duplicate key")
        refused("'a'", "unexpected byte")
        refused("truex", "after the value")
        refused("nulL", "bad literal")
    }

    func testEtcdAnswerAndEscapesRead() throws {
        let text = """
        {"header":{"cluster_id":"7801232528081817440","revision":"2","raft_term":"2"},"kvs":[{"key":"YQ==","create_revision":"2","mod_revision":"2","version":"1","value":"MQ=="}],"count":"1","more":false,"x":null,"n":[1,-2.5e3]}
        """
        let v = try JSONReader.parse(" \n\t" + text + " \r\n")
        XCTAssertEqual(v["header"]?["revision"]?.int64Value, 2)
        XCTAssertEqual(v["kvs"]?.arrayValue?.count, 1)
        XCTAssertEqual(v["more"], .bool(false))
        XCTAssertEqual(v["x"], .null)
        XCTAssertEqual(v["n"], .array([.number("1"), .number("-2.5e3")]))
        let kvs = try EtcdWire.keyValues(v["kvs"])
        XCTAssertEqual(kvs, [EtcdKeyValue(key: "a", value: [0x31], createRevision: 2, modRevision: 2, version: 1, lease: 0)])
        XCTAssertEqual(try JSONReader.parse("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u0041\\u00e9\\ud83d\\ude00\""),
                       .string("\"\\/\u{08}\u{0C}\n\r\tAé😀"))
        XCTAssertEqual(try JSONReader.parse("\"é\u{7F}\""), .string("é\u{7F}"))
    }

    func testEtcdFieldsRefusedWhenMalformed() throws {
        // A kv whose key is not base64, whose revision is not an integer, or whose key is not UTF-8.
        XCTAssertThrowsError(try EtcdWire.keyValue(try JSONReader.parse("{\"key\":\"!!\"}")))
        XCTAssertThrowsError(try EtcdWire.keyValue(try JSONReader.parse("{\"key\":\"YQ==\",\"mod_revision\":\"x\"}")))
        XCTAssertThrowsError(try EtcdWire.keyValue(try JSONReader.parse("{\"key\":\"/w==\"}")))
        XCTAssertThrowsError(try EtcdWire.keyValue(try JSONReader.parse("{\"value\":\"YQ==\"}")))
        XCTAssertThrowsError(try EtcdWire.event(try JSONReader.parse("{\"type\":\"EXPIRE\",\"kv\":{\"key\":\"YQ==\"}}")))
        XCTAssertThrowsError(try EtcdWire.keyValues(try JSONReader.parse("{}")))
    }

    func testPrefixEnd() {
        XCTAssertEqual(EtcdWire.prefixEnd(bytes("/mesh/")), bytes("/mesh0"))
        XCTAssertEqual(EtcdWire.prefixEnd([0x61, 0xFF]), [0x62])
        XCTAssertEqual(EtcdWire.prefixEnd([0xFF, 0xFF]), [0])
        XCTAssertEqual(EtcdWire.prefixEnd([]), [0])
    }
}

/// Base64 (standard alphabet, padded), negative cases first.
final class Base64Tests: XCTestCase {
    func testNonCanonicalOrForeignInputRefused() {
        for bad in ["Q", "QQ", "QQ=", "QQ===", "QUJD=", "Q===", "=QQQ", "QQ==QQ==", "Q=Q=", "QQ-_", "QQ/*", "QQ== ", " QQ==",
                    "QQ=\n=", "Zm9v\n", "QR==", "QUI=".replacingOccurrences(of: "I", with: "J"), "////+", "é===", "QUJ\u{0}"] {
            XCTAssertNil(Base64.decode(bad), "accepted \(bad.debugDescription)")
        }
    }

    func testRFC4648VectorsAndRoundTrips() {
        let vectors = ["": "", "f": "Zg==", "fo": "Zm8=", "foo": "Zm9v", "foob": "Zm9vYg==", "fooba": "Zm9vYmE=", "foobar": "Zm9vYmFy"]
        for (plain, encoded) in vectors {
            XCTAssertEqual(Base64.encode(plain), encoded)
            XCTAssertEqual(Base64.decode(encoded), bytes(plain))
        }
        XCTAssertEqual(Base64.encode([0xFB, 0xFF, 0xBF]), "+/+/")
        let all = (0...255).map { UInt8($0) }
        for n in 0...all.count {
            let slice = Array(all[0..<n])
            XCTAssertEqual(Base64.decode(Base64.encode(slice)), slice)
        }
    }
}

/// Endpoint parsing: refusals name the endpoint and what is wrong.
final class EtcdEndpointTests: XCTestCase {
    func testBadEndpointsRefusedByName() {
        let cases: [(String, String)] = [
            ("", "empty"), ("127.0.0.1", "no port"), ("127.0.0.1:", "port"), (":2379", "no host"),
            ("127.0.0.1:0", "port"), ("127.0.0.1:65536", "port"), ("127.0.0.1:23a", "port"), ("127.0.0.1:-1", "port"),
            ("::1:2379", "brackets"), ("[::1:2379", "brackets"), ("[zz]:2379", "not an IPv6"), ("[]:2379", "brackets"),
            ("http://127.0.0.1:2379", "scheme"), ("host name:1", "spaces"), ("bad!host:1", "neither"),
            ("a..b:1", "neither"), ("ètcd:1", "non-ASCII"),
        ]
        for (text, why) in cases {
            XCTAssertThrowsError(try EtcdClient(endpoints: ["127.0.0.1:2379", text]), "accepted \(text.debugDescription)") { e in
                let m = (e as! EtcdError).message
                XCTAssertTrue(m.contains("\"\(text)\""), "\(m) does not name \(text)")
                XCTAssertTrue(m.contains(why), "\(m) lacks \(why)")
            }
        }
        XCTAssertThrowsError(try EtcdClient(endpoints: []))
        XCTAssertThrowsError(try EtcdClient(endpoints: ["127.0.0.1:2379"], timeout: 0))
    }

    func testGoodEndpointsAccepted() throws {
        let c = try EtcdClient(endpoints: ["127.0.0.1:2379", "[::1]:2379", "localhost:22379", "etcd-0.etcd.svc_x:1"])
        XCTAssertEqual(c.endpointNames, ["127.0.0.1:2379", "[::1]:2379", "localhost:22379", "etcd-0.etcd.svc_x:1"])
        XCTAssertEqual(c.endpoints[1].literal?.text, "[::1]:2379")
        XCTAssertNil(c.endpoints[2].literal)
        XCTAssertEqual(try c.endpoints[2].resolve().map { $0.text }.contains("127.0.0.1:22379"), true)
    }
}
