import XCTest
@testable import MeshYAML

/// parse then emit of documents already in libyaml's output style gives the same bytes, and the
/// tree holds what was written (styles, tags, anchors, aliases, merge keys).
final class YAMLRoundTripTests: XCTestCase {
    /// A Deployment using anchors, aliases and merge keys, `!!str 123`, `"0123"`, `'x'`, literal and
    /// folded blocks with chomping, flow collections, empty values, unicode and a line over 200 characters.
    static let deployment = #"""
apiVersion: apps/v1
kind: Deployment
metadata:
  name: reviews
  labels: &labels
    app: reviews
    version: v1
  annotations:
    prometheus.io/port: "9090"
    build: !!str 123
    zip: "0123"
    quoted: 'x'
    empty:
    nothing: ~
defaults: &defaults
  timeout: 5s
  retries: 3
spec:
  <<: *defaults
  selector:
    matchLabels: *labels
  merged:
    <<: [*defaults, *labels]
    extra: {a: 1, b: [x, y]}
  template:
    metadata:
      labels: *labels
    spec:
      containers:
      - name: app
        image: example/reviews:1.0
        command: ["/bin/sh", "-c"]
        args:
        - |
          echo start
          exec /app --port 9080
        - |-
          no trailing newline
        - |+
          keep trailing

        - >
          folded text that continues on one line

          second paragraph
        - >-
          folded, stripped
        env:
        - name: GREETING
          value: "héllo wörld ✓ 日本"
        - name: LONG
          value: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa with words after it
        - name: EMPTYLIST
          value: []

"""#

    func testDeploymentRoundTripsByteForByte() throws {
        let r = parseOK(Self.deployment)
        XCTAssertEqual(r.documents.count, 1)
        XCTAssertEqual(r.trailer, "")
        let out = try YAML.emit(r.documents[0])
        XCTAssertEqual(out, Self.deployment)
        XCTAssertTrue(Self.deployment.split(separator: "\n").contains { $0.count > 200 })
    }

    func testTreeKeepsStylesTagsAnchorsAndAliases() throws {
        let doc = parseOK(Self.deployment).documents[0]
        let root = try XCTUnwrap(doc.root)
        let metadata = try XCTUnwrap(root["metadata"])
        let annotations = try XCTUnwrap(metadata["annotations"])
        XCTAssertEqual(annotations["build"], YAMLNode(kind: .scalar("123", .plain), tag: YAMLTags.str, line: 10, column: 12))
        XCTAssertEqual(annotations["zip"]?.kind, .scalar("0123", .doubleQuoted))
        XCTAssertEqual(annotations["quoted"]?.kind, .scalar("x", .singleQuoted))
        XCTAssertEqual(annotations["empty"]?.isNull, true)
        XCTAssertEqual(annotations["nothing"]?.isNull, true)
        XCTAssertEqual(annotations["zip"]?.isNull, false)
        XCTAssertEqual(metadata["labels"]?.anchor, "labels")
        XCTAssertEqual(root["spec"]?["selector"]?["matchLabels"]?.kind, .alias("labels"))
        XCTAssertEqual(root["spec"]?["selector"]?["matchLabels"]?.scalar, nil)
        XCTAssertEqual(doc.resolve(try XCTUnwrap(root["spec"]?["selector"]?["matchLabels"])), metadata["labels"])
        let args = try XCTUnwrap(root["spec"]?["template"]?["spec"]?["containers"]?.items?[0]["args"]?.items)
        XCTAssertEqual(args.map(\.kind), [
            .scalar("echo start\nexec /app --port 9080\n", .literal),
            .scalar("no trailing newline", .literal),
            .scalar("keep trailing\n\n", .literal),
            .scalar("folded text that continues on one line\nsecond paragraph\n", .folded),
            .scalar("folded, stripped", .folded),
        ])
        let extra = try XCTUnwrap(root["spec"]?["merged"]?["extra"])
        guard case .mapping(let pairs, flow: true) = extra.kind else { return XCTFail("\(extra.kind)") }
        XCTAssertEqual(pairs.count, 2)
        XCTAssertEqual(pairs[1].value.kind, .sequence([YAMLNode(kind: .scalar("x", .plain), line: 24, column: 23),
                                                        YAMLNode(kind: .scalar("y", .plain), line: 24, column: 26)], flow: true))
        XCTAssertEqual(root["kind"]?.line, 2)
        XCTAssertEqual(root["kind"]?.column, 7)
        let env = try XCTUnwrap(root["spec"]?["template"]?["spec"]?["containers"]?.items?[0]["env"]?.items)
        XCTAssertEqual(env[0]["value"]?.scalar, "héllo wörld ✓ 日本")
    }

    func testMergeKeysFollowedByLookup() throws {
        let doc = parseOK(Self.deployment).documents[0]
        let spec = try XCTUnwrap(doc.root?["spec"])
        XCTAssertEqual(doc.lookup(spec, "timeout")?.scalar, "5s")       // <<: *defaults
        XCTAssertNil(spec["timeout"])                                   // the subscript does not merge
        let merged = try XCTUnwrap(spec["merged"])
        XCTAssertEqual(doc.lookup(merged, "retries")?.scalar, "3")      // first of [*defaults, *labels]
        XCTAssertEqual(doc.lookup(merged, "app")?.scalar, "reviews")    // second
        XCTAssertEqual(doc.lookup(merged, "extra")?.pairs?.count, 2)    // its own key
        XCTAssertNil(doc.lookup(merged, "absent"))
        XCTAssertNil(doc.lookup(merged, "<<"))
        // an alias to a mapping is followed, and so is an aliased value
        let selector = try XCTUnwrap(spec["selector"])
        XCTAssertEqual(doc.lookup(try XCTUnwrap(selector["matchLabels"]), "version")?.scalar, "v1")
        XCTAssertEqual(doc.lookup(selector, "matchLabels")?.anchor, "labels")
    }

    func testExplicitKeysWinOverMergedOnesAndEarlierMergesOverLater() throws {
        let doc = parseOK("""
        a: &a {k: from-a, only-a: 1}
        b: &b {k: from-b, only-b: 2}
        m:
          <<: [*a, *b]
          only-b: own
        n:
          <<: *b
          <<: *a
        """).documents[0]
        let m = try XCTUnwrap(doc.root?["m"])
        XCTAssertEqual(doc.lookup(m, "k")?.scalar, "from-a")
        XCTAssertEqual(doc.lookup(m, "only-b")?.scalar, "own")
        XCTAssertEqual(doc.lookup(m, "only-a")?.scalar, "1")
        XCTAssertEqual(doc.lookup(try XCTUnwrap(doc.root?["n"]), "k")?.scalar, "from-b")
    }

    func testMergeCyclesEnd() throws {
        let doc = parseOK("a: &a\n  <<: *a\n  x: 1\nb:\n  <<: *a\n").documents[0]
        XCTAssertEqual(doc.lookup(try XCTUnwrap(doc.root?["b"]), "x")?.scalar, "1")
        XCTAssertNil(doc.lookup(try XCTUnwrap(doc.root?["b"]), "y"))
    }

    func testDocumentMarkersWrittenAsRead() throws {
        let text = "--- &r\na: 1\n...\n---\n- !custom x\n- !<tag:example.com,2024:t> y\n- ! z\n"
        let r = parseOK(text)
        XCTAssertEqual(r.documents.map(\.explicitStart), [true, true])
        XCTAssertEqual(r.documents.map(\.explicitEnd), [true, false])
        XCTAssertEqual(try YAML.emit(r.documents[0]), "--- &r\na: 1\n...\n")
        // libyaml cannot write the non-specific tag `!`; a scalar carrying it (a string) is written `!!str`
        XCTAssertEqual(try YAML.emit(r.documents[1]), "---\n- !custom x\n- !<tag:example.com,2024:t> y\n- !!str z\n")
        XCTAssertEqual(r.documents[1].root?.items?.map(\.tag), ["!custom", "tag:example.com,2024:t", "!"])
        let implicitDoc = parseOK("a: 1\n").documents[0]
        XCTAssertEqual(try YAML.emit(implicitDoc), "a: 1\n")
        XCTAssertEqual(try YAML.emit(implicitDoc, forceStart: true), "---\na: 1\n")
    }

    func testEmptyValuesStayNullInFlowCollectionsAndKeys() throws {
        let doc = try XCTUnwrap(parseOK("a: {x: , y: 1}\nb: [{z: }]\n? \n: v\nc:\n").documents.first)
        let out = try YAML.emit(doc)
        XCTAssertEqual(out, "a: {x: null, y: 1}\nb: [{z: null}]\nnull: v\nc:\n")
        let back = try XCTUnwrap(parseOK(out).documents[0].root)
        XCTAssertEqual(back["a"]?["x"]?.isNull, true)
        XCTAssertEqual(back["b"]?.items?.first?["z"]?.isNull, true)
        XCTAssertEqual(back.pairs?[2].key.isNull, true)
        XCTAssertEqual(back["c"]?.isNull, true)
        // a quoted empty string stays a string
        XCTAssertEqual(try YAML.emit(parseOK("a: {x: ''}\n").documents[0]), "a: {x: ''}\n")
    }

    func testDirectivesSeen() throws {
        let r = parseOK("%YAML 1.1\n%TAG !e! tag:example.com,2024:\n---\n- !e!x 1\n...\n---\nb: 2\n")
        XCTAssertEqual(r.documents.map(\.hasDirectives), [true, false])
        XCTAssertEqual(r.documents[0].root?.items?[0].tag, "tag:example.com,2024:x")
    }

    func testEmptyDocumentWrittenWithItsMarker() throws {
        let r = parseOK("---\n# nothing here\n---\na: 1\n")
        XCTAssertNil(r.documents[0].root)
        XCTAssertEqual(try YAML.emit(r.documents[0]), "---\n")
        // an explicit empty scalar is content, not an empty document
        XCTAssertEqual(parseOK("--- ''\n").documents[0].root?.kind, .scalar("", .singleQuoted))
        XCTAssertNotNil(parseOK("--- !!null\n").documents[0].root)
    }

    func testEveryParsedDocumentReadsBackTheSame() throws {
        // emit of each document of a stream parses back to the same content (style aside)
        let text = Self.deployment + "---\n" + "list: [a, {b: c}, [d]]\nnested:\n- - x\n  - y\n- {}\n- []\n\"multi\\tline\": '' \n? complex\n: key\n"
        for doc in parseOK(text).documents {
            let again = parseOK(try YAML.emit(doc)).documents
            XCTAssertEqual(again.count, 1)
            XCTAssertEqual(shape(try XCTUnwrap(again[0].root)), shape(try XCTUnwrap(doc.root)))
        }
    }
}
