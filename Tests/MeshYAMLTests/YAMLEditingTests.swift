import XCTest
@testable import MeshYAML

/// Editing keeps order and every other node's style, tag and anchor; the result is written back.
final class YAMLEditingTests: XCTestCase {
    static let pod = """
    apiVersion: v1
    kind: Pod
    metadata:
      name: reviews
      labels: &l {app: reviews}
      annotations:
        zip: "0123"
        build: !!str 123
    spec:
      containers:
      - name: app
        image: 'example/app:1'
        args: [--port, "9080"]
      - name: helper
        command:
        - |
          echo hi
    selector: *l

    """

    func testSetReplacesInPlaceAndAppendsNewKeys() throws {
        var doc = parseOK(Self.pod).documents[0]
        var root = try XCTUnwrap(doc.root)
        XCTAssertTrue(root.set("kind", .string("Pod")))  // replaced where it was
        XCTAssertTrue(root.set("status", .mapping([("phase", .string("Pending"))])))  // appended
        XCTAssertNotNil(root.withValue("metadata") { md in
            md.withValue("annotations") { $0.set("sidecar.mesh.io/status", .string("{\"v\":1}")) }
        })
        doc.root = root
        XCTAssertEqual(try YAML.emit(doc), Self.pod.replacingOccurrences(of: "selector: *l\n", with: "selector: *l\nstatus:\n  phase: Pending\n")
            .replacingOccurrences(of: "    build: !!str 123\n", with: "    build: !!str 123\n    sidecar.mesh.io/status: \"{\\\"v\\\":1}\"\n"))
    }

    func testInsertAndRemoveItemsKeepOthers() throws {
        var doc = parseOK(Self.pod).documents[0]
        var root = try XCTUnwrap(doc.root)
        let added = root.withValue("spec") { spec in
            spec.withValue("containers") { containers -> Bool in
                containers.insert(.mapping([("name", .string("mesh-proxy")), ("image", .string("mesh/sidecar:1"))]), at: 0)
            }
        }
        XCTAssertEqual(added, true)
        doc.root = root
        let expected = Self.pod.replacingOccurrences(of: "  containers:\n", with: "  containers:\n  - name: mesh-proxy\n    image: mesh/sidecar:1\n")
        XCTAssertEqual(try YAML.emit(doc), expected)

        let removed = root.withValue("spec") { spec in spec.withValue("containers") { $0.removeItem(at: 0) } }
        XCTAssertEqual(removed??.flatMap { $0 }?["name"]?.scalar, "mesh-proxy")
        doc.root = root
        XCTAssertEqual(try YAML.emit(doc), Self.pod)
    }

    func testRemoveKeyAndOrder() throws {
        var root = try XCTUnwrap(parseOK(Self.pod).documents[0].root)
        let md = root.remove("metadata")
        XCTAssertEqual(md?["name"]?.scalar, "reviews")
        XCTAssertNil(root.remove("metadata"))
        XCTAssertEqual(root.pairs?.map { $0.key.scalar }, ["apiVersion", "kind", "spec", "selector"])
        root.set("metadata", try XCTUnwrap(md))
        XCTAssertEqual(root.pairs?.map { $0.key.scalar }, ["apiVersion", "kind", "spec", "selector", "metadata"])
        XCTAssertEqual(root["metadata"]?["annotations"]?["zip"]?.kind, .scalar("0123", .doubleQuoted))
    }

    func testFlowCollectionsStayFlowWhenEdited() throws {
        var doc = parseOK("args: [--a, \"1\"]\nlabels: {app: x}\n").documents[0]
        var root = try XCTUnwrap(doc.root)
        root.withValue("args") { _ = $0.insert(.string("--b"), at: 2) }  // `-` then a non-space: plain
        root.withValue("labels") { _ = $0.set("version", .string("v1")) }
        doc.root = root
        XCTAssertEqual(try YAML.emit(doc), "args: [--a, \"1\", --b]\nlabels: {app: x, version: v1}\n")
    }

    func testNoOpsOnTheWrongKind() throws {
        var scalar = YAMLNode.string("x")
        XCTAssertFalse(scalar.set("a", .int(1)))
        XCTAssertNil(scalar.remove("a"))
        XCTAssertNil(scalar.withValue("a") { _ in 1 })
        XCTAssertFalse(scalar.insert(.int(1), at: 0))
        XCTAssertNil(scalar.removeItem(at: 0))
        XCTAssertNil(scalar.withItem(at: 0) { _ in 1 })
        XCTAssertEqual(scalar, .string("x"))
        var seq = YAMLNode.sequence([.int(1)])
        XCTAssertFalse(seq.insert(.int(2), at: 2))
        XCTAssertFalse(seq.insert(.int(2), at: -1))
        XCTAssertNil(seq.removeItem(at: 1))
        XCTAssertFalse(seq.set("a", .int(1)))
        XCTAssertTrue(seq.insert(.int(0), at: 0))
        XCTAssertEqual(seq.withItem(at: 1) { n -> String? in n = .int(9); return n.scalar }, "9")
        XCTAssertEqual(seq.items?.map(\.scalar), ["0", "9"])
        var map = YAMLNode.mapping([("a", .int(1))])
        XCTAssertNil(map.withValue("b") { _ in 1 })
        XCTAssertEqual(map.withValue("a") { $0.scalar }, "1")
    }

    func testWithValueRestoresTheNodeWhenTheBodyThrows() throws {
        struct Stop: Error {}
        var map = YAMLNode.mapping([("a", .int(1)), ("b", .int(2))])
        XCTAssertThrowsError(try map.withValue("a") { v in v = .int(5); throw Stop() })
        XCTAssertEqual(map.pairs?.map(\.value.scalar), ["5", "2"])
    }
}
