import XCTest
import MeshAgent

/// The downward-API labels file (`--labels-file`): refusals first, each naming the file, the line
/// and what is wrong; then the kubelet's own output read back exactly.
final class LabelsFileTests: XCTestCase {
    func refused(_ text: String, line: Int, _ fragment: String, file: StaticString = #filePath, at: UInt = #line) {
        do {
            let got = try LabelsFile.parse(Array(text.utf8), file: "/pod/labels")
            XCTFail("accepted \(text.debugDescription) as \(got)", file: file, line: at)
        } catch {
            XCTAssertTrue(error.description.hasPrefix("--labels-file /pod/labels:\(line): "), error.description, file: file, line: at)
            XCTAssertTrue(error.description.contains(fragment), error.description, file: file, line: at)
            XCTAssertFalse(error.description.contains("\n"), error.description, file: file, line: at)
        }
    }

    func testMalformedLinesAreRefusedNamingTheLine() {
        refused("app=\"a\"\nversion", line: 2, "no '='")
        refused("app=reviews", line: 1, "double quotes")
        refused("app='reviews'", line: 1, "double quotes")
        refused("app=\"reviews", line: 1, "closing '\"' is missing")
        refused("app=\"reviews\\\"", line: 1, "closing '\"' is missing")
        refused("app=\"reviews\" ", line: 1, "text after the closing")
        refused("app=\"rev\"iews\"", line: 1, "text after the closing")
        refused("app=\"a\"\r\nb=\"c\"", line: 1, "text after the closing")
        refused("app=\"re\tviews\"", line: 1, "raw control character")
        refused("\n\napp=\"a\\q\"", line: 3, "unknown escape \\q")
        refused("app=\"a\\'\"", line: 1, "unknown escape \\'")
        refused("app=\"a\\x4\"", line: 1, "\\x needs 2 hex digits")
        refused("app=\"a\\xZZ\"", line: 1, "\\x needs 2 hex digits")
        refused("app=\"a\\u12\"", line: 1, "\\u needs 4 hex digits")
        refused("app=\"a\\uD800\"", line: 1, "not a Unicode scalar value")
        refused("app=\"a\\U00110000\"", line: 1, "not a Unicode scalar value")
        refused("app=\"a\\400\"", line: 1, "above \\377")
        refused("app=\"a\\12\"", line: 1, "octal escape needs 3 digits")
        refused("app=\"a\\xff\"", line: 1, "not valid UTF-8")
        refused("app=\"a\\", line: 1, "closing '\"' is missing")
    }

    func testKeysAsKubernetesAllowsThem() {
        refused("=\"v\"", line: 1, "empty")
        refused("a b=\"v\"", line: 1, "label key \"a b\"")
        refused("-app=\"v\"", line: 1, "starts and ends with a letter or digit")
        refused("app_=\"v\"", line: 1, "starts and ends with a letter or digit")
        refused("/app=\"v\"", line: 1, "empty prefix")
        refused("a/b/c=\"v\"", line: 1, "more than one '/'")
        refused("Example.com/app=\"v\"", line: 1, "not a DNS subdomain")
        refused("example..com/app=\"v\"", line: 1, "not a DNS subdomain")
        refused("example.com/=\"v\"", line: 1, "empty name")
        refused(String(repeating: "a", count: 64) + "=\"v\"", line: 1, "longer than 63")
        refused(String(repeating: "a.", count: 127) + "b/app=\"v\"", line: 1, "prefix longer than 253")
        refused("app=\"a\"\nversion=\"v1\"\napp=\"b\"", line: 3, "app given twice (first on line 1)")
    }

    func testValuesAsKubernetesAllowsThem() {
        refused("app=\"a b\"", line: 1, "value \"a b\"")
        refused("app=\"line\\nbreak\"", line: 1, "value \"line\\nbreak\"")
        refused("app=\"-a\"", line: 1, "starts and ends")
        refused("app=\"" + String(repeating: "v", count: 64) + "\"", line: 1, "longer than 63")
        refused("app=\"caf\\u00e9\"", line: 1, "value \"café\"")
    }

    func testTheKubeletsOutputIsReadExactly() throws {
        // Sorted keys, `%q` values, no newline after the last line (pkg/fieldpath FormatMap).
        let text = "app=\"reviews\"\napp.kubernetes.io/name=\"reviews\"\nempty=\"\"\npod-template-hash=\"7d4b9c5f6d\"\nsecurity.istio.io/tlsMode=\"istio\"\nversion=\"v1.2_rc-3\""
        let got = try LabelsFile.parse(Array(text.utf8), file: "f")
        XCTAssertEqual(got.map { "\($0.0)=\($0.1)" }, ["app=reviews", "app.kubernetes.io/name=reviews", "empty=", "pod-template-hash=7d4b9c5f6d",
                                                    "security.istio.io/tlsMode=istio", "version=v1.2_rc-3"])
        // Escapes decoded (what they spell must still be a label value), empty lines and a trailing newline skipped.
        let esc = try LabelsFile.parse(Array("a=\"b\\x6c\\u0075\\U00000065\\056x\"\n\nz=\"\"\n".utf8), file: "f")
        XCTAssertEqual(esc.map { "\($0.0)=\($0.1)" }, ["a=blue.x", "z="])
        XCTAssertEqual(try LabelsFile.parse([], file: "f").count, 0)
    }

    func testFlagLabelsWinOverTheFile() {
        let merged = LabelsFile.merge(file: [("app", "reviews"), ("version", "v1"), ("team", "blue")], flags: [("version", "v2")])
        XCTAssertEqual(merged.map { "\($0.0)=\($0.1)" }, ["app=reviews", "team=blue", "version=v2"])
    }

    func testAnUnreadableFileIsNamed() {
        XCTAssertThrowsError(try LabelsFile.read("/nonexistent/labels")) { e in
            XCTAssertEqual("\(e)", "--labels-file /nonexistent/labels: cannot read it (No such file or directory)")
        }
    }
}
