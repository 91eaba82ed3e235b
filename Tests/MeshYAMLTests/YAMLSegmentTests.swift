import XCTest
@testable import MeshYAML

/// The documents' sources and the trailer give back the input byte for byte; each source is where the
/// documentation says (comments before a document belong to it, a `...` ends it).
final class YAMLSegmentTests: XCTestCase {
    func assertSegments(_ text: String, _ expected: [String], trailer: String, file: StaticString = #filePath, line: UInt = #line) {
        let r = parseOK(text, file: file, line: line)
        XCTAssertEqual(r.documents.map(\.source), expected, file: file, line: line)
        XCTAssertEqual(r.trailer, trailer, file: file, line: line)
        XCTAssertEqual(r.documents.map(\.source).joined() + r.trailer, text, file: file, line: line)
        XCTAssertEqual(r.documents.map(\.index), Array(1...max(1, r.documents.count)).prefix(r.documents.count).map { $0 }, file: file, line: line)
    }

    func testCommentsBeforeBetweenAndAfterDocuments() {
        let text = "# head comment\n\napiVersion: v1\nkind: ConfigMap  # trailing\n---\n# belongs to the second\nkind: Service\n...\n# after the end marker\n--- # on the marker\nkind: Pod\n# last comment\n"
        assertSegments(text, [
            "# head comment\n\napiVersion: v1\nkind: ConfigMap  # trailing\n",
            "---\n# belongs to the second\nkind: Service\n...",
            "\n# after the end marker\n--- # on the marker\nkind: Pod\n# last comment\n",
        ], trailer: "")
    }

    func testTrailerAfterAnExplicitEnd() {
        assertSegments("---\na: 1\n...\n# tail\n\n", ["---\na: 1\n..."], trailer: "\n# tail\n\n")
    }

    func testEmptyDocumentsAndLeadingMarker() throws {
        let text = "---\n---\n# only a comment\n---\nkind: Pod\n---\n"
        assertSegments(text, ["---\n", "---\n# only a comment\n", "---\nkind: Pod\n", "---\n"], trailer: "")
        let docs = parseOK(text).documents
        XCTAssertEqual(docs.map { $0.root == nil }, [true, true, false, true])
        XCTAssertEqual(docs.map(\.line), [1, 2, 4, 6])
        XCTAssertEqual(docs.map(\.explicitStart), [true, true, true, true])
    }

    func testNothingButComments() {
        assertSegments("", [], trailer: "")
        assertSegments("# just a comment\n\n", [], trailer: "# just a comment\n\n")
    }

    func testNoFinalNewlineCRLFAndUnicode() {
        assertSegments("a: é\r\n---\r\nb: 日本\r\n# c", ["a: é\r\n", "---\r\nb: 日本\r\n# c"], trailer: "")
        assertSegments("---\nx: ✓\n...", ["---\nx: ✓\n..."], trailer: "")
        assertSegments("\u{FEFF}a: 1\n---\nb: 2\n", ["\u{FEFF}a: 1\n", "---\nb: 2\n"], trailer: "")
    }

    func testDirectivesStayWithTheirDocument() {
        let text = "a: 1\n...\n%YAML 1.1\n---\nb: 2\n"
        assertSegments(text, ["a: 1\n...", "\n%YAML 1.1\n---\nb: 2\n"], trailer: "")
        XCTAssertEqual(parseOK(text).documents.map(\.hasDirectives), [false, true])
    }

    func testExtraEndMarkersBelongToTheNextSegment() {
        assertSegments("a: 1\n...\n...\n---\nb: 2\n", ["a: 1\n...", "\n...\n---\nb: 2\n"], trailer: "")
    }

    func testDocumentLinesAndIndexes() {
        let docs = parseOK("# c\n\nkind: A\n---\n\nkind: B\n").documents
        XCTAssertEqual(docs.map(\.line), [3, 4])
        XCTAssertEqual(docs.map(\.index), [1, 2])
        XCTAssertEqual(docs.map(\.explicitStart), [false, true])
    }
}
