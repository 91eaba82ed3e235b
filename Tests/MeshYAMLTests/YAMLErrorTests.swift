import XCTest
@testable import MeshYAML

/// Refusals: libyaml's problem in words with the document, line and column it names; undefined aliases.
final class YAMLErrorTests: XCTestCase {
    func testTabIndentedDocument() throws {
        let text = "a: 1\n---\nkind: Pod\nspec:\n\tname: x\n"
        let e = try XCTUnwrap(parseRefused(text))
        XCTAssertEqual(e.document, 2)
        XCTAssertEqual(e.line, 5)
        XCTAssertEqual(e.column, 1)
        XCTAssertEqual(e.message, "found character that cannot start any token while scanning for the next token")
        XCTAssertEqual(e.description, "document 2, line 5, column 1: found character that cannot start any token while scanning for the next token")
        // a tab after content at a deeper level
        let e2 = try XCTUnwrap(parseRefused("a: 1\n---\nb: 2\n---\nspec:\n  a: 1\n\tb: 2\n"))
        XCTAssertEqual([e2.document, e2.line, e2.column], [3, 7, 1])
        XCTAssertEqual(e2.message, "found a tab character that violates indentation while scanning a plain scalar (started at line 6, column 6)")
    }

    func testUnclosedQuote() throws {
        let text = "# first\nname: ok\n---\nkind: Pod\nmetadata:\n  name: \"reviews\n  labels: {}\n"
        let e = try XCTUnwrap(parseRefused(text))
        XCTAssertEqual(e.document, 2)
        XCTAssertEqual(e.line, 8)  // the end of the stream, where the closing quote was looked for
        XCTAssertEqual(e.column, 1)
        XCTAssertEqual(e.message, "found unexpected end of stream while scanning a quoted scalar (started at line 6, column 9)")
    }

    func testUndefinedAliasInDocumentThree() throws {
        // x is defined in document 1 and aliased in document 3: anchors do not cross documents
        let text = "a: &x 1\n---\nb: &y 2\nc: *y\n---\nc: 3\nd: *x\n"
        let e = try XCTUnwrap(parseRefused(text))
        XCTAssertEqual(e.document, 3)
        XCTAssertEqual(e.line, 7)
        XCTAssertEqual(e.column, 4)
        XCTAssertTrue(e.message.hasPrefix("found undefined alias \"x\""), e.message)
    }

    func testAliasBeforeItsAnchorRefused() throws {
        let e = try XCTUnwrap(parseRefused("a: *later\nb: &later 1\n"))
        XCTAssertEqual(e.document, 1)
        XCTAssertEqual(e.line, 1)
        XCTAssertEqual(e.column, 4)
    }

    func testControlCharacterNamedWithPosition() throws {
        let e = try XCTUnwrap(parseRefused("a: 1\nb: x\u{01}y\n"))
        XCTAssertEqual(e.document, 1)
        XCTAssertEqual(e.line, 2)
        XCTAssertEqual(e.column, 5)
        XCTAssertTrue(e.message.hasPrefix("control characters are not allowed"), e.message)
    }

    func testBadIndentationInLaterDocumentAfterExplicitEnd() throws {
        let e = try XCTUnwrap(parseRefused("a: 1\n...\n---\nb:\n  - x\n - y\n"))
        XCTAssertEqual(e.document, 2)
        XCTAssertEqual(e.line, 6)
    }

    func testDuplicateAnchorsAllowedAndAliasFollowsTheLatest() throws {
        let r = parseOK("a: &x 1\nb: *x\nc: &x 2\nd: *x\n")
        let doc = r.documents[0]
        let root = try XCTUnwrap(doc.root)
        XCTAssertEqual(doc.resolve(try XCTUnwrap(root["b"])).scalar, "1")
        XCTAssertEqual(doc.resolve(try XCTUnwrap(root["d"])).scalar, "2")
        XCTAssertEqual(doc.anchors["x"]?.scalar, "2")
    }
}
