import XCTest
@testable import MeshYAML

/// `YAMLNode.string`: plain exactly when the text reads back as that string, checked both by the
/// table and by parsing what libyaml writes.
final class YAMLQuotingTests: XCTestCase {
    static let quoted = [
        // numbers and number-like (YAML 1.1 and go-yaml v2)
        "1337", "0123", "0128", "1e3", "1E3", ".5", "0x1F", "0o17", "0b101", "1_000", "-1", "+1", "12:30", "1:20:30.5",
        "3.14", "-.inf", ".Inf", ".nan", "1.", "9223372036854775808",
        // booleans, nulls, merge and value keys
        "true", "True", "TRUE", "false", "yes", "Yes", "no", "NO", "on", "On", "off", "OFF", "y", "Y", "n", "N",
        "null", "Null", "NULL", "~", "", "<<", "=",
        // timestamps
        "2024-01-02", "2001-12-14t21:59:43.10-05:00",
        // spaces, comments, mapping indicators, newlines, control characters
        " lead", "trail ", "a: b", "a #b", "ends:", "line\nbreak", "tab\there", "bell\u{07}", "\u{FEFF}bom", "del\u{7F}",
        // leading indicators
        "?x", ":x", ",x", "[x", "]x", "{x", "}x", "#x", "&x", "*x", "!x", "|x", ">x", "'x", "\"x", "%x", "@x", "`x",
        "- x", "-", "---", "---x", "...", "...x",
        // conservative: four digits and `-` are taken for a timestamp
        "2024-1",
    ]
    static let plain = [
        "mesh-proxy", "/ready", "reviews", "v1", "http://reviews:9080/path", "a:b", "a#b", "a,b", "x[0]", "1.2.3",
        "10.0.0.0/8", "1a", "0x", "0b2", "12:60", "e3", "NaN", "Inf", "+inf", "_1", "1-2", "202-1", "é", "日本",
        "a b", "key=value", "yesterday", "nothing", "Tru", ".", ".a", "x.5", "v0123", "app.kubernetes.io/name",
        "-x", "--proxy-uid", "--exclude-inbound-ports", "-v",
    ]

    func testQuotedTable() {
        for s in Self.quoted {
            XCTAssertEqual(YAMLNode.string(s).kind, .scalar(s, .doubleQuoted), "\(s.debugDescription) should be quoted")
        }
    }

    func testPlainTable() {
        for s in Self.plain {
            XCTAssertEqual(YAMLNode.string(s).kind, .scalar(s, .plain), "\(s.debugDescription) should stay plain")
        }
    }

    func testResolverMatchesPyYAMLOnTheQuotedNumbers() {
        // each number-like value is a non-string on its own, so quoting is needed for that reason alone
        for s in ["1337", "0123", "1e3", ".5", "0x1F", "12:30", "1_000", "-.inf", ".nan", "3.14", "0o17", "0128", "2024-01-02", "y"] {
            XCTAssertTrue(YAMLPlainScalar.resolvesToNonString(s), s)
        }
        for s in ["mesh-proxy", "/ready", "1a", "12:60", "NaN", "+inf", "0x", "1.2.3", "e3", "Tru"] {
            XCTAssertFalse(YAMLPlainScalar.resolvesToNonString(s), s)
        }
    }

    func testEveryValueReadsBackAsTheSameString() throws {
        var root = YAMLNode.mapping([])
        for (i, s) in (Self.quoted + Self.plain).enumerated() { root.set("k\(i)", .string(s)) }
        let text = try YAML.emit(YAMLDocument(root: root))
        let back = try XCTUnwrap(parseOK(text).documents.first?.root)
        for (i, s) in (Self.quoted + Self.plain).enumerated() {
            let node = try XCTUnwrap(back["k\(i)"], "k\(i)")
            XCTAssertEqual(node.scalar, s)
            // plain values read back plain, so a YAML 1.1 reader applies its resolvers to exactly these
            XCTAssertEqual(node.kind, YAMLNode.string(s).kind, "\(s.debugDescription) written as \(text.split(separator: "\n")[i])")
        }
    }

    func testBuilders() throws {
        XCTAssertEqual(YAMLNode.int(-42).kind, .scalar("-42", .plain))
        XCTAssertEqual(YAMLNode.bool(true).kind, .scalar("true", .plain))
        XCTAssertEqual(YAMLNode.bool(false).kind, .scalar("false", .plain))
        XCTAssertEqual(YAMLNode.literal("a\nb\n").kind, .scalar("a\nb\n", .literal))
        let m = YAMLNode.mapping([("on", .int(1)), ("name", .string("x"))])
        XCTAssertEqual(m.pairs?.map(\.key.kind), [.scalar("on", .doubleQuoted), .scalar("name", .plain)])
        let doc = YAMLDocument(root: .mapping([
            ("script", .literal("set -e\nexec app\n")),
            ("ports", .sequence([.int(80), .string("443")])),
            ("enabled", .bool(true)),
        ]))
        XCTAssertEqual(try YAML.emit(doc), "script: |\n  set -e\n  exec app\nports:\n- 80\n- \"443\"\nenabled: true\n")
    }
}
